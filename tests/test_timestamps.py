"""RFC 3161 timestamps: `sign --tsa` against a real TSA (``openssl ts -reply`` on 127.0.0.1), `verify --tsa-ca`."""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import attachments, errors, timestamp
from tests.conftest import pki, run_cli
from tests.servers.hostile import Route, hostile_server
from tests.servers.tsa import issue, issue_tsa, tsa

NOW = datetime.datetime.now(datetime.timezone.utc)
#: How long the short-lived signing certificate is valid after the module starts (signed, then expired).
SHORT_LIFE = 25
TRUST = ("--trusted-file", pki("root-ca.pem"), "--intermediate", pki("intermediate-ca.pem"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """TSAs (one under the test root CA, one under the untrusted root), signing certificates, an image."""
    work = tmp_path_factory.mktemp("tsa")
    ca_key, ca = pki("intermediate-ca.key"), pki("intermediate-ca.pem")
    tsa_key, tsa_cert = issue_tsa(work, "tsa", pki("root-ca.key"), pki("root-ca.pem"))
    rogue_key, rogue_cert = issue_tsa(work, "rogue-tsa", pki("untrusted-root-ca.key"), pki("untrusted-root-ca.pem"))
    short = issue(work, "short-lived", ca_key, ca, not_after=datetime.datetime.now(datetime.timezone.utc)
                  + datetime.timedelta(seconds=SHORT_LIFE))
    expired = issue(work, "expired-signer", ca_key, ca, not_before=NOW - datetime.timedelta(days=2),
                    not_after=NOW - datetime.timedelta(days=1))
    valid = issue(work, "signer", ca_key, ca)
    image = work / "disk.img"
    image.write_bytes(os.urandom(256 * 1024 + 3))
    other = work / "other.img"
    other.write_bytes(os.urandom(1000))
    env = {"IMGSIGN_KEYSTORE": str(work / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(work)}
    with tsa(tsa_key, tsa_cert, work / "tsa-run") as url, tsa(rogue_key, rogue_cert, work / "rogue-run") as rogue:
        world = {"work": work, "url": url, "rogue": rogue, "short": short, "expired": expired, "valid": valid,
                 "image": image, "other": other, "env": env, "tsa_cert": tsa_cert}
        # Signed at once, while the short-lived certificate is valid; verified once it has expired.
        world["short_props"] = sign(world, short, image, "--tsa", url, "--tsa-ca", pki("root-ca.pem"))
        yield world


def sign(world, signer, image, *args, code=0):
    key, cert = signer
    result = run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", "c0ffee", *args, env=world["env"])
    assert result.code == code, result
    return result.json() if code == 0 else result


def verify(world, signer, image, props, *args, trust=TRUST):
    path = world["work"] / f"props-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(props))
    return run_cli("verify", image, "--properties", path, "--cert", signer[1], "--json", *trust, *args,
                   env=world["env"])


def token_of(props):
    return attachments.decode(timestamp.PROPERTY, props, errors.TimestampError, "token")


def without_token(props):
    return {k: v for k, v in props.items() if not k.startswith(timestamp.PROPERTY)}


def wait_until_expired(world):
    cert = x509.load_pem_x509_certificate(world["short"][1].read_bytes())
    left = (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if left > -1:
        time.sleep(left + 1.5)


# --- signing ---------------------------------------------------------------------------------------------------


def test_sign_adds_a_token_over_the_signature_value(world):
    props = sign(world, world["valid"], world["image"], "--tsa", world["url"])
    token = token_of(props)
    assert token is not None
    # What the TSA was asked to imprint: SHA-256 of the decoded img_signature bytes.
    stamp = timestamp.verify(token, base64.b64decode(props["img_signature"]),
                             [x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())], now=NOW
                             + datetime.timedelta(minutes=10))
    assert stamp.hash_method == "SHA-256" and "tsa" in stamp.tsa
    # Stored split: every value fits in Glance's documented (and Nova's metadata) 255 characters.
    parts = [k for k in props if k.startswith(timestamp.PROPERTY)]
    assert parts == [f"{timestamp.PROPERTY}_{i}" for i in range(len(parts))] and len(parts) > 1
    assert all(len(props[k]) <= 255 for k in parts)
    ok = verify(world, world["valid"], world["image"], props, "--tsa-ca", pki("root-ca.pem"))
    assert ok.code == 0, ok
    assert ok.json()["timestamp"]["status"] == "valid"
    assert ok.json()["timestamp"]["certificate_judged_at"] is None  # valid now: judged now


def test_sign_with_sha512_imprint_and_config_file(world):
    conf = world["work"] / "imgsign.conf"
    conf.write_text(f"[imgsign]\ntsa_url = {world['url']}\ntsa_hash = SHA-512\ntsa_ca_file = {pki('root-ca.pem')}\n")
    env = {**world["env"], "IMGSIGN_CONFIG": str(conf)}
    key, cert = world["valid"]
    result = run_cli("sign", world["image"], "--key", key, "--cert", cert, "--cert-uuid", "c0ffee", env=env)
    assert result.code == 0, result
    props = result.json()
    assert token_of(props) is not None
    path = world["work"] / "sha512.json"
    path.write_text(json.dumps(props))
    ok = run_cli("verify", world["image"], "--properties", path, "--cert", cert, "--json", *TRUST, env=env)
    assert ok.code == 0, ok
    assert ok.json()["timestamp"]["hash_method"] == "SHA-512"


def test_sign_refuses_a_token_from_a_tsa_it_does_not_trust(world):
    out = world["work"] / "never.json"
    result = sign(world, world["valid"], world["image"], "--tsa", world["rogue"], "--tsa-ca", pki("root-ca.pem"),
                  "-o", out, code=errors.TimestampError.exit_code)
    assert result.stdout == "" and not out.exists()


@pytest.mark.parametrize("behaviour", ["silent", "huge", "redirect", "5xx", "trickle"])
def test_tsa_hostile_at_sign_time_is_a_clear_error_and_nothing_is_emitted(world, tmp_path, behaviour):
    conf = tmp_path / "imgsign.conf"
    conf.write_text("[imgsign]\ntsa_timeout = 2\n")
    env = {**world["env"], "IMGSIGN_CONFIG": str(conf)}
    out = tmp_path / "props.json"
    key, cert = world["valid"]
    with hostile_server([Route("POST", "/tsa", 200, b"\x30\x03\x02\x01\x00",
                               {"Content-Type": "application/timestamp-reply"})], tmp_path) as server:
        started = time.monotonic()
        result = run_cli("sign", world["image"], "--key", key, "--cert", cert, "--cert-uuid", "c0ffee",
                         "--tsa", f"{server.url(behaviour)}/tsa", "-o", out, env=env)
    assert result.code == errors.TimestampUnavailable.exit_code, result
    assert "TSA" in result.stderr and result.stdout == "" and not out.exists()
    assert time.monotonic() - started < 30


def test_tsa_unreachable_or_not_a_tsa(world, tmp_path):
    out = tmp_path / "props.json"
    refused = sign(world, world["valid"], world["image"], "--tsa", "http://127.0.0.1:9/tsa", "-o", out,
                   code=errors.TimestampUnavailable.exit_code)
    assert "cannot connect" in refused.stderr and not out.exists()
    with hostile_server([Route("POST", "/tsa", 200, b"<html>hello</html>")], tmp_path) as server:
        garbage = sign(world, world["valid"], world["image"], "--tsa", f"{server.url()}/tsa",
                       code=errors.TimestampUnavailable.exit_code)
    assert "no usable timestamp" in garbage.stderr
    bad_url = run_cli("sign", world["image"], "--key", world["valid"][0], "--cert-uuid", "x", "--tsa", "file:///etc")
    assert bad_url.code == 2


# --- verifying -------------------------------------------------------------------------------------------------


def test_expired_signer_timestamped_while_valid_verifies_and_without_token_is_refused(world):
    wait_until_expired(world)
    props = world["short_props"]
    ok = verify(world, world["short"], world["image"], props, "--tsa-ca", pki("root-ca.pem"))
    assert ok.code == 0, ok
    judged = ok.json()["timestamp"]["certificate_judged_at"]
    assert judged is not None and ok.json()["timestamp"]["status"] == "valid"
    # Without a chain to validate, the certificate alone: judged at the timestamp too.
    alone = verify(world, world["short"], world["image"], props, "--tsa-ca", pki("root-ca.pem"), trust=())
    assert alone.code == 0, alone
    # The same signature without its token: refused exactly as today (the chain, or the certificate, expired).
    bare = verify(world, world["short"], world["image"], without_token(props), "--tsa-ca", pki("root-ca.pem"))
    assert bare.code == errors.UntrustedCertificate.exit_code, bare
    bare_alone = verify(world, world["short"], world["image"], without_token(props), trust=())
    assert bare_alone.code == errors.CertificateExpired.exit_code, bare_alone
    # With the token but no TSA trusted: the token is not honoured, refused as today.
    unchecked = verify(world, world["short"], world["image"], props)
    assert unchecked.code == errors.UntrustedCertificate.exit_code, unchecked
    assert unchecked.json()["timestamp"]["status"] == "not-checked"
    warned = verify(world, world["short"], world["image"], props, trust=())
    assert warned.code == errors.CertificateExpired.exit_code, warned
    # A valid token does not make a tampered image verify.
    assert verify(world, world["short"], world["other"], props, "--tsa-ca", pki("root-ca.pem")).code == \
        errors.InvalidSignature.exit_code


def test_token_from_an_untrusted_tsa_is_refused(world):
    props = sign(world, world["valid"], world["image"], "--tsa", world["rogue"])
    refused = verify(world, world["valid"], world["image"], props, "--tsa-ca", pki("root-ca.pem"))
    assert refused.code == errors.TimestampError.exit_code, refused
    assert refused.json()["reason"] == "timestamp-invalid"


def test_token_over_another_signature_is_refused(world):
    wait_until_expired(world)
    mine = world["short_props"]
    theirs = sign(world, world["valid"], world["other"], "--tsa", world["url"])
    transplanted = {**without_token(mine), **{k: v for k, v in theirs.items() if k.startswith(timestamp.PROPERTY)}}
    refused = verify(world, world["short"], world["image"], transplanted, "--tsa-ca", pki("root-ca.pem"))
    assert refused.code == errors.TimestampError.exit_code, refused
    assert "does not verify" in refused.json()["message"]


def test_token_made_after_the_certificate_expired_is_refused(world):
    props = sign(world, world["expired"], world["image"], "--tsa", world["url"], "--ignore-cert-dates")
    refused = verify(world, world["expired"], world["image"], props, "--tsa-ca", pki("root-ca.pem"))
    assert refused.code == errors.CertificateExpired.exit_code, refused
    assert "is not inside its validity" in refused.json()["message"]


def test_malformed_and_truncated_tokens_are_refused(world):
    props = sign(world, world["valid"], world["image"], "--tsa", world["url"])
    parts = sorted((k for k in props if k.startswith(timestamp.PROPERTY)), key=lambda k: int(k.rsplit("_", 1)[1]))
    truncated = {k: v for k, v in props.items() if k != parts[-1]}
    gap = {k: v for k, v in props.items() if k != parts[1]}
    both = {**props, timestamp.PROPERTY: props[parts[0]]}
    flipped = dict(props)
    raw = bytearray(base64.b64decode("".join(props[k] for k in parts)))
    raw[len(raw) // 2] ^= 0x01
    flipped = {**without_token(props), **timestamp.properties(bytes(raw))}
    for bad in (truncated, gap, both, flipped, {**without_token(props), timestamp.PROPERTY: "!!"}):
        refused = verify(world, world["valid"], world["image"], bad, "--tsa-ca", pki("root-ca.pem"))
        assert refused.code == errors.TimestampError.exit_code, refused


# --- the pure parts ----------------------------------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=5000))
def test_attachments_round_trip(blob):
    props = attachments.encode("imgsign_x_v1", blob)
    assert all(len(v) <= attachments.MAX_VALUE for v in props.values())
    assert attachments.decode("imgsign_x_v1", props, errors.PropertiesError, "x") == blob


_keys = st.one_of(st.just(timestamp.PROPERTY), st.builds(lambda i: f"{timestamp.PROPERTY}_{i}", st.integers(-2, 70)),
                  st.builds(lambda s: f"{timestamp.PROPERTY}_{s}", st.text(max_size=4)), st.text(max_size=8))
_values = st.one_of(st.text(max_size=300), st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
                    st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_fuzz_token_properties_never_crash(props):
    try:
        token = timestamp.token_from_properties(props)
    except errors.TimestampError:
        return
    if token is not None:
        with pytest.raises(errors.TimestampError):
            timestamp.verify(token, b"sig", [x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())],
                             now=NOW)


@pytest.fixture(scope="module")
def real_token(world):
    return token_of(sign(world, world["valid"], world["image"], "--tsa", world["url"]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_real_tokens_never_crash(real_token, data):
    """Truncations, bit flips and splices of a real token: a TimestampError or (unchanged token) success."""
    token = bytearray(real_token)
    action = data.draw(st.sampled_from(["truncate", "flip", "splice", "extend"]))
    if action == "truncate":
        token = token[:data.draw(st.integers(0, len(token) - 1))]
    elif action == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(token) - 1))
            token[i] ^= data.draw(st.integers(1, 255))
    elif action == "splice":
        i = data.draw(st.integers(0, len(token)))
        token[i:i] = data.draw(st.binary(min_size=1, max_size=40))
    else:
        token += data.draw(st.binary(min_size=1, max_size=40))
    root = x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())
    try:
        timestamp.verify(bytes(token), b"sig", [root], now=NOW)
    except errors.TimestampError:
        return
    pytest.fail("a mutated token over another signature verified")


def test_layout_of_the_property_names():
    assert attachments.names(timestamp.PROPERTY, {"imgsign_tst_v1_0": "", "img_signature": "", "imgsign_tst_v10": ""}) \
        == ["imgsign_tst_v1_0"]
    assert Path(timestamp.__file__).name == "timestamp.py"


def test_verify_image_from_glance_honours_the_timestamp(world, tmp_path):
    """`verify --image`: the token comes from the image record.  Glance here is a stand-in (the record and the
    data, served by tests.conftest.serving) because the real glance-api harness is a `servers` test; what is
    under test is that the properties of a record reach the timestamp check, not Glance."""
    from http.server import BaseHTTPRequestHandler

    from tests.conftest import serving

    wait_until_expired(world)
    image_id = "5f1b7c2e-55d2-4a43-9a8e-0d9c1f0b6a11"
    data = world["image"].read_bytes()
    record = {"id": image_id, "status": "active", "size": len(data), **world["short_props"]}

    class Glance(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = ((data, "application/octet-stream") if self.path.endswith("/file")
                          else (json.dumps(record).encode(), "application/json"))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Glance) as url:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(json.dumps({"clouds": {"stand-in": {"auth_type": "admin_token",
                                                              "auth": {"endpoint": url, "token": "t"}}}}))
        env = {**world["env"], "OS_CLIENT_CONFIG_FILE": str(clouds), "OS_CLOUD": "stand-in"}
        args = ("verify", "--image", image_id, "--cert", world["short"][1], "--json", *TRUST)
        ok = run_cli(*args, "--tsa-ca", pki("root-ca.pem"), env=env)
        assert ok.code == 0, ok
        assert ok.json()["timestamp"]["certificate_judged_at"] is not None
        for key in [k for k in record if k.startswith(timestamp.PROPERTY)]:
            del record[key]
        refused = run_cli(*args, "--tsa-ca", pki("root-ca.pem"), env=env)
        assert refused.code == errors.UntrustedCertificate.exit_code, refused


def _cert_valid(not_before, not_after):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dates")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(not_before).not_valid_after(not_after).sign(key, hashes.SHA256()))


def test_signing_time_boundaries():
    base = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    second = datetime.timedelta(seconds=1)
    stamp = timestamp.Timestamp(base, base - second, base + second, "tsa", "SHA-256", 1)
    inside = _cert_valid(base - 2 * second, base + 2 * second)
    assert timestamp.signing_time(stamp, inside) == base
    # notAfter falls inside the accuracy interval: the signature may have been made after expiry.
    assert timestamp.signing_time(stamp, _cert_valid(base - 2 * second, base)) is None
    assert timestamp.signing_time(stamp, _cert_valid(base, base + 2 * second)) is None
    assert timestamp.signing_time(stamp, _cert_valid(base + 2 * second, base + 10 * second)) is None


def test_check_judges_an_expired_certificate_at_gen_time(world):
    """The pure decision, with the verifier's clock moved past the signer's expiry (a real token)."""
    props = sign(world, world["valid"], world["image"], "--tsa", world["url"])
    signature = base64.b64decode(props["img_signature"])
    cert = x509.load_pem_x509_certificate(world["valid"][1].read_bytes())
    roots = [x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())]
    now = datetime.datetime.now(datetime.timezone.utc)
    assert timestamp.check(props, signature, cert, roots, now=now).judge_at is None
    later = cert.not_valid_after_utc + datetime.timedelta(days=1)
    checked = timestamp.check(props, signature, cert, roots, now=later)
    assert checked.status == "valid" and checked.timestamp is not None
    assert checked.judge_at == checked.timestamp.gen_time
    assert timestamp.check(props, signature, cert, [], now=later).status == "not-checked"
    assert timestamp.check(without_token(props), signature, cert, roots, now=later).status == "absent"
    # A verifier whose clock is far behind the TSA's: a genTime in the future is refused.
    with pytest.raises(errors.TimestampError, match="future"):
        timestamp.check(props, signature, cert, roots, now=now - datetime.timedelta(hours=1))


@pytest.mark.parametrize(("text", "code"), [
    ("tsa_url = ftp://tsa.example/\n", errors.InputError.exit_code),
    ("tsa_url = http://127.0.0.1:9/\ntsa_hash = MD5\n", errors.InputError.exit_code),
    ("tsa_url = http://127.0.0.1:9/\ntsa_timeout = 0\n", errors.InputError.exit_code),
    ("ocsp = sometimes\n", errors.InputError.exit_code),
])
def test_invalid_timestamp_and_ocsp_settings_are_refused_at_start(world, tmp_path, text, code):
    conf = tmp_path / "imgsign.conf"
    conf.write_text("[imgsign]\n" + text)
    key, cert = world["valid"]
    result = run_cli("sign", world["image"], "--key", key, "--cert", cert, "--cert-uuid", "c0ffee",
                     env={**world["env"], "IMGSIGN_CONFIG": str(conf)})
    assert result.code == code, result
    assert result.stdout == ""


def test_tsa_options_without_a_tsa_are_a_usage_error(world):
    key = world["valid"][0]
    result = run_cli("sign", world["image"], "--key", key, "--cert-uuid", "c0ffee", "--tsa-ca", pki("root-ca.pem"),
                     env=world["env"])
    assert result.code == 2 and "--tsa" in result.stderr, result


def test_a_replayed_or_refused_tsa_answer_gives_no_token(world, tmp_path):
    """A real, valid answer to an earlier request (another nonce and imprint), and a rejection (status 2)."""
    import requests as http

    request = timestamp.make_request(b"an earlier signature")
    earlier = http.post(world["url"], data=request.der, headers={"Content-Type": "application/timestamp-query"},
                        timeout=30).content
    assert timestamp.token_from_response(earlier, request)  # a good answer to its own request
    rejection = b"\x30\x05\x30\x03\x02\x01\x02"
    routes = [Route("POST", "/replay", 200, earlier, {"Content-Type": "application/timestamp-reply"}),
              Route("POST", "/reject", 200, rejection, {"Content-Type": "application/timestamp-reply"})]
    with hostile_server(routes, tmp_path) as server:
        replayed = sign(world, world["valid"], world["image"], "--tsa", f"{server.url()}/replay",
                        code=errors.TimestampUnavailable.exit_code)
        rejected = sign(world, world["valid"], world["image"], "--tsa", f"{server.url()}/reject",
                        code=errors.TimestampUnavailable.exit_code)
    assert "another nonce" in replayed.stderr
    assert "did not grant" in rejected.stderr


def test_a_sha384_imprint_is_accepted(world, tmp_path):
    """rfc3161-client builds requests with SHA-256 or SHA-512; a token made over SHA-384 (openssl ts -query)
    still verifies, and only over its own signature."""
    import subprocess

    import requests as http
    from rfc3161_client import decode_timestamp_response

    from tests.servers.tsa import OPENSSL

    signature = os.urandom(256)
    (tmp_path / "sig").write_bytes(signature)
    subprocess.run([OPENSSL, "ts", "-query", "-data", tmp_path / "sig", "-sha384", "-cert", "-out",
                    tmp_path / "q.tsq"], check=True, capture_output=True)
    reply = http.post(world["url"], data=(tmp_path / "q.tsq").read_bytes(),
                      headers={"Content-Type": "application/timestamp-query"}, timeout=30).content
    token = decode_timestamp_response(reply).time_stamp_token()
    root = x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())
    later = datetime.datetime.now(datetime.timezone.utc)
    assert timestamp.verify(token, signature, [root], now=later).hash_method == "SHA-384"
    with pytest.raises(errors.TimestampError):
        timestamp.verify(token, signature[::-1], [root], now=later)


def test_boot_cache_honours_the_timestamp_with_the_tsa_trust_of_imgsign_conf(world, tmp_path):
    """The compute side (`boot cache`, and adoption through the same judgement): an expired signer verifies into
    the image cache when its token checks against [imgsign] tsa_ca_file; without that trust it is refused."""
    import uuid

    wait_until_expired(world)
    props = tmp_path / "props.json"
    props.write_text(json.dumps(world["short_props"]))
    args = ("boot", "cache", world["image"], "--image-id", str(uuid.uuid4()), "--properties", props,
            "--cert", world["short"][1], "--instances-path", tmp_path / "instances", "--state-dir", tmp_path / "state")
    refused = run_cli(*args, env=world["env"])
    assert refused.code == errors.CertificateExpired.exit_code, refused
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[imgsign]\ntsa_ca_file = {pki('root-ca.pem')}\n")
    cached = run_cli(*args, env={**world["env"], "IMGSIGN_CONFIG": str(conf)})
    assert cached.code == 0, cached
    rogue = tmp_path / "rogue.conf"
    rogue.write_text(f"[imgsign]\ntsa_ca_file = {pki('untrusted-root-ca.pem')}\n")
    untrusted = run_cli(*args, env={**world["env"], "IMGSIGN_CONFIG": str(rogue)})
    assert untrusted.code == errors.TimestampError.exit_code, untrusted


def test_boot_adopt_honours_the_timestamp(world, tmp_path):
    """`boot adopt` (the path the hook's self-adoption and `--all` share: compute.adoption.adopt)."""
    import hashlib
    import shutil
    import uuid

    wait_until_expired(world)
    image_id = str(uuid.uuid4())
    base = tmp_path / "instances" / "_base"
    base.mkdir(parents=True)
    shutil.copyfile(world["image"], base / hashlib.sha1(image_id.encode()).hexdigest())  # noqa: S324 - Nova's name
    props = tmp_path / "props.json"
    props.write_text(json.dumps(world["short_props"]))
    args = ("boot", "adopt", image_id, "--properties", props, "--cert", world["short"][1],
            "--instances-path", tmp_path / "instances", "--state-dir", tmp_path / "state")
    refused = run_cli(*args, env=world["env"])
    assert refused.code == errors.CertificateExpired.exit_code, refused
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[imgsign]\ntsa_ca_file = {pki('root-ca.pem')}\n")
    adopted = run_cli(*args, env={**world["env"], "IMGSIGN_CONFIG": str(conf)})
    assert adopted.code == 0, adopted


# --- under a trust policy: the rule's tsa stores feed timestamp verification ------------------------------------


def _policy(tmp_path, *, tsa_store):
    stores = {"ca": {"type": "ca", "certificates": [str(pki("root-ca.pem"))], "intermediates": [str(pki("intermediate-ca.pem"))]}}
    if tsa_store:
        stores["tsa"] = {"type": "tsa", "certificates": [str(pki("root-ca.pem"))]}
    policy = {"version": 1, "trustStores": stores,
              "rules": [{"name": "all", "scope": "*", "level": "strict", "trustStores": sorted(stores),
                        "trustedIdentities": ["*"]}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    return path


def test_under_a_policy_the_rules_tsa_store_checks_the_timestamp(world, tmp_path):
    """The rule's `tsa` trust store is what the token is checked against (no --tsa-ca): an expired signer
    timestamped while valid is trusted by the rule; without the store the token is not checked and the expired
    chain is refused; a token from a TSA outside the store fails the rule's timestamp check."""
    wait_until_expired(world)
    props = world["short_props"]
    with_tsa = ("--policy", str(_policy(tmp_path, tsa_store=True)))
    ok = verify(world, world["short"], world["image"], props, trust=with_tsa)
    assert ok.code == 0, ok
    assert ok.json()["timestamp"]["status"] == "valid"
    assert ok.json()["policy"]["rule"] == "all" and ok.json()["policy"]["allowed"] is True
    (tmp_path / "plain").mkdir()
    without = ("--policy", str(_policy(tmp_path / "plain", tsa_store=False)))
    refused = verify(world, world["short"], world["image"], props, trust=without)
    assert refused.code != 0, refused
    assert refused.json()["timestamp"]["status"] == "not-checked"
    assert refused.json()["valid"] is False
    rogue = sign(world, world["valid"], world["image"], "--tsa", world["rogue"])
    forged = verify(world, world["valid"], world["image"], rogue, trust=with_tsa)
    assert forged.code == errors.TimestampError.exit_code, forged
    assert forged.json()["timestamp"]["status"] == "invalid"
    assert forged.json()["policy"]["allowed"] is False
