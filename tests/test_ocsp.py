"""OCSP beside CRLs, against a real responder (``openssl ocsp -port`` on 127.0.0.1, an index from the test PKI)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time

import pytest
from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors, ocsp
from imgsign._internal import ocsp_client
from imgsign._internal.binary_post import post
from imgsign._internal.deadline import Deadline
from tests.conftest import pki, run_cli
from tests.servers.ocsp import free_port, index_line, responder
from tests.servers.tsa import issue

CA_KEY, CA = pki("intermediate-ca.key"), pki("intermediate-ca.pem")
TRUST = ("--trusted-file", pki("root-ca.pem"), "--intermediate", CA)


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Signers that name the responder (good, revoked, unknown to it, one naming a dead port), the responder."""
    work = tmp_path_factory.mktemp("ocsp")
    port, dead = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/"
    good = issue(work, "ocsp-good", CA_KEY, CA, ocsp_url=url)
    revoked = issue(work, "ocsp-revoked", CA_KEY, CA, ocsp_url=url)
    unknown = issue(work, "ocsp-unknown", CA_KEY, CA, ocsp_url=url)
    unreachable = issue(work, "ocsp-unreachable", CA_KEY, CA, ocsp_url=f"http://127.0.0.1:{dead}/")
    signer = issue(work, "ocsp-responder", CA_KEY, CA, eku=[ExtendedKeyUsageOID.OCSP_SIGNING], eku_critical=False)
    index = work / "index.txt"
    index.write_text(index_line(good[1]) + index_line(unreachable[1]) + index_line(
        revoked[1], datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1), "keyCompromise"))
    image = work / "disk.img"
    image.write_bytes(os.urandom(100_000))
    env = {"IMGSIGN_KEYSTORE": str(work / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(work)}
    world = {"work": work, "port": port, "good": good, "revoked": revoked, "unknown": unknown,
             "unreachable": unreachable, "signer": signer, "index": index, "image": image, "env": env}
    with responder(index, CA, signer[1], signer[0], port, log=work / "ocsp.log") as running:
        world["url"] = running
        yield world


def sign(world, who, *args, code=0):
    key, cert = world[who]
    result = run_cli("sign", world["image"], "--key", key, "--cert", cert, "--cert-uuid", "c0ffee", *args,
                     env=world["env"])
    assert result.code == code, result
    return result.json() if code == 0 else result


def verify(world, who, props, *args, env=None):
    path = world["work"] / f"props-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(props))
    return run_cli("verify", world["image"], "--properties", path, "--cert", world[who][1], "--json", *TRUST, *args,
                   env=env or world["env"])


def test_good(world):
    ok = verify(world, "good", sign(world, "good"))
    assert ok.code == 0, ok
    answers = ok.json()["ocsp"]
    assert [a["status"] for a in answers] == ["good"] and answers[0]["source"] == "responder"
    assert "ocsp-responder" in answers[0]["responder"]  # the delegated responder signed it


def test_revoked_is_refused_with_no_crl(world):
    refused = verify(world, "revoked", sign(world, "revoked"))
    assert refused.code == errors.CertificateRevoked.exit_code, refused
    assert "OCSP" in refused.json()["message"] and "key_compromise" in refused.json()["message"]
    assert refused.json()["ocsp"][0]["status"] == "revoked"


def test_unknown_is_refused(world):
    refused = verify(world, "unknown", sign(world, "unknown"))
    assert refused.code == errors.OCSPStatusUnknown.exit_code, refused


def test_unreachable_falls_back_to_a_crl_else_is_refused(world):
    props = sign(world, "unreachable")
    refused = verify(world, "unreachable", props)
    assert refused.code == errors.OCSPUnavailable.exit_code, refused
    assert "no complete CRL" in refused.json()["message"]
    # The intermediate's complete, current CRL (certs-test) covers it: the CRL decides.
    fallback = verify(world, "unreachable", props, "--crl", pki("intermediate-ca.crl.pem"))
    assert fallback.code == 0, fallback
    # OCSP off in imgsign.conf: CRLs only, as before.
    conf = world["work"] / "ocsp-off.conf"
    conf.write_text("[imgsign]\nocsp = off\n")
    off = verify(world, "unreachable", props, env={**world["env"], "IMGSIGN_CONFIG": str(conf)})
    assert off.code == 0, off


def test_stale_response_is_refused(world):
    """A real answer judged after its nextUpdate (openssl ocsp -ndays 1): the verdict is 'unknown' (29)."""
    cert, issuer = load(world["good"][1]), load(CA)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1, hours=1)
    with pytest.raises(errors.OCSPStatusUnknown, match="stale"):
        ocsp_client.fetch(cert, issuer, now=later)
    der, result = ocsp_client.fetch(cert, issuer)
    assert result.status == "good" and result.next_update is not None
    with pytest.raises(ocsp.Stale):
        ocsp.check_response(der, cert, issuer, now=later)
    # Stored with a signature: used while current, ignored once stale (then, offline, nothing answers for it).
    assert ocsp_client.OcspClient([der], network=False).status(cert, issuer, datetime.datetime.now(
        datetime.timezone.utc)).source == "stored"
    with pytest.raises(errors.OCSPUnavailable, match="offline"):
        ocsp_client.OcspClient([der], network=False).status(cert, issuer, later)


def test_stapled_response_verifies_offline(world, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    key, cert = issue(tmp_path, "stapled", CA_KEY, CA, ocsp_url=url)
    index = tmp_path / "index.txt"
    index.write_text(index_line(cert))
    world = {**world, "stapled": (key, cert)}
    with responder(index, CA, CA, CA_KEY, port):  # the CA itself signs the answers
        props = sign(world, "stapled", "--ocsp-staple", CA)
    assert any(k.startswith(ocsp.PROPERTY) for k in props)
    # The responder is gone: the stored answer decides, with no network.
    ok = verify(world, "stapled", props)
    assert ok.code == 0, ok
    assert ok.json()["ocsp"][0]["source"] == "stored" and ok.json()["ocsp"][0]["status"] == "good"
    without = verify(world, "stapled", {k: v for k, v in props.items() if not k.startswith(ocsp.PROPERTY)})
    assert without.code == errors.OCSPUnavailable.exit_code, without
    # ocsp = offline: the stored answer, and never the network (a CRL would be needed without it).
    conf = tmp_path / "offline.conf"
    conf.write_text("[imgsign]\nocsp = offline\n")
    offline_env = {**world["env"], "IMGSIGN_CONFIG": str(conf)}
    assert verify(world, "stapled", props, env=offline_env).code == 0
    assert verify(world, "good", sign(world, "good"), env=offline_env).code == errors.OCSPUnavailable.exit_code
    crl = ("--crl", pki("intermediate-ca.crl.pem"))
    assert verify(world, "good", sign(world, "good"), *crl, env=offline_env).code == 0
    # A stored answer that was tampered with is refused, not ignored.
    der = bytearray(ocsp.response_from_properties(props))
    signature = x509_ocsp.load_der_ocsp_response(bytes(der)).signature
    der[der.index(signature) + 10] ^= 0x01  # a byte of the responder's signature
    forged = {**{k: v for k, v in props.items() if not k.startswith(ocsp.PROPERTY)}, **ocsp.properties(bytes(der))}
    refused = verify(world, "stapled", forged)
    assert refused.code == errors.OCSPStatusUnknown.exit_code, refused


def test_signing_refuses_to_staple_a_revoked_or_unknown_certificate(world):
    assert sign(world, "revoked", "--ocsp-staple", CA, code=errors.CertificateRevoked.exit_code).stdout == ""
    assert sign(world, "unknown", "--ocsp-staple", CA, code=errors.OCSPStatusUnknown.exit_code).stdout == ""
    assert sign(world, "unreachable", "--ocsp-staple", CA, code=errors.OCSPUnavailable.exit_code).stdout == ""


def test_responder_signature_rules(world, tmp_path):
    """A responder certificate without id-kp-OCSPSigning, or issued by another CA, is not believed."""
    cert, issuer = load(world["good"][1]), load(CA)
    no_eku = issue(tmp_path, "no-eku-responder", CA_KEY, CA)
    foreign = issue(tmp_path, "foreign-responder", pki("untrusted-root-ca.key"), pki("untrusted-root-ca.pem"),
                    eku=[ExtendedKeyUsageOID.OCSP_SIGNING], eku_critical=False)
    for key, signer in (no_eku, foreign):
        port = free_port()
        with responder(world["index"], CA, signer, key, port):
            der = post(f"http://127.0.0.1:{port}/", ocsp.make_request(cert, issuer, b"0123456789abcdef"),
                       content_type="application/ocsp-request", accept="application/ocsp-response",
                       deadline=Deadline(10, "test"), error=errors.OCSPUnavailable, service="test responder",
                       max_body=65536)
        with pytest.raises(errors.OCSPStatusUnknown, match=r"OCSPSigning|not issued by"):
            ocsp.check_response(der, cert, issuer, now=datetime.datetime.now(datetime.timezone.utc),
                                nonce=b"0123456789abcdef")


def test_nonce_mismatch_is_refused(world):
    cert, issuer = load(world["good"][1]), load(CA)
    der, _ = ocsp_client.fetch(cert, issuer)
    with pytest.raises(errors.OCSPStatusUnknown, match="nonce"):
        ocsp.check_response(der, cert, issuer, now=datetime.datetime.now(datetime.timezone.utc), nonce=b"x" * 16)
    with pytest.raises(ocsp.NotAbout):
        ocsp.check_response(der, load(world["revoked"][1]), issuer, now=datetime.datetime.now(datetime.timezone.utc))


@pytest.fixture(scope="module")
def real_response(world):
    return ocsp_client.fetch(load(world["good"][1]), load(CA))[0]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_responses_never_crash(world, real_response, data):
    der = bytearray(real_response)
    action = data.draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if action == "truncate":
        der = der[:data.draw(st.integers(0, len(der) - 1))]
    elif action == "flip":
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] ^= data.draw(st.integers(1, 255))
    elif action == "splice":
        i = data.draw(st.integers(0, len(der)))
        der[i:i] = data.draw(st.binary(min_size=1, max_size=30))
    else:
        der = bytearray(data.draw(st.binary(max_size=400)))
    cert, issuer = load(world["good"][1]), load(CA)
    try:
        result = ocsp.check_response(bytes(der), cert, issuer, now=datetime.datetime.now(datetime.timezone.utc))
    except (errors.OCSPStatusUnknown, ocsp.NotAbout, ocsp.Stale):
        return
    # Only a change outside what the signature covers (e.g. the certificates carried) may still pass.
    assert result.status == "good"


@given(st.dictionaries(st.sampled_from([ocsp.PROPERTY, f"{ocsp.PROPERTY}_0", f"{ocsp.PROPERTY}_1", "x"]),
                       st.one_of(st.text(max_size=50), st.integers(), st.none())))
def test_fuzz_stored_property_parser(props):
    with contextlib.suppress(errors.OCSPStatusUnknown):
        ocsp.response_from_properties(props)
