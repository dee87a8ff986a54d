"""Timestamps and OCSP count at every verification point, not only `imgsign verify` (issue 22): `audit` and the
compute side (`boot adopt`, the record it writes, the hook's boot check under a trust policy).  The Glance
import plugin: tests/test_evidence_glance.py.

A real TSA (``openssl ts -reply`` behind HTTP on 127.0.0.1, tests/servers/tsa.py) and a real OCSP responder
(``openssl ocsp``, tests/servers/ocsp.py) answer for the test PKI's intermediate CA; no CRL is anywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import hashes

from imgsign import audit, errors, ocsp
from imgsign._internal import ocsp_client
from imgsign.compute import trust_checks
from imgsign.compute.trust_record import RecordStore
from imgsign.trust_policy import load_policy_text
from tests.conftest import pki, run_cli
from tests.servers.ocsp import responder
from tests.evidence_pki import CA, CA_KEY, evidence_pki
from tests.servers.tsa import tsa
from tests.test_boot_hook import Host, domain_xml

#: Seconds the short-lived signer is valid after the module starts: signed (and timestamped), then expired.
SHORT_LIFE = 20


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def without(props: dict, prefix: str) -> dict:
    return {k: v for k, v in props.items() if not k.startswith(prefix)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The TSA, the responder (signing its answers with the CA's own key), and signers: one short-lived
    (timestamped while valid), one revoked per OCSP, one good with a stapled response."""
    work = tmp_path_factory.mktemp("evidence")
    made = evidence_pki(work, SHORT_LIFE, good_name="ocsp-stapled", revocation_reason="keyCompromise")
    port, tsa_key, tsa_cert, index = made.port, made.tsa_key, made.tsa_cert, made.index
    short, revoked, stapled = made.short, made.revoked, made.good
    image = work / "disk.img"
    image.write_bytes(os.urandom(300_000))
    env = {"IMGSIGN_KEYSTORE": str(work / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(work)}
    stored = run_cli("cert", "store", CA, env=env)
    assert stored.code == 0, stored
    world = {"work": work, "image": image, "env": env, "short": short, "revoked": revoked, "stapled": stapled,
             "ca_id": stored.stdout.strip()}

    def sign(signer, *args):
        key, cert = signer
        result = run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", "c0ffee", *args, env=env)
        assert result.code == 0, result
        return result.json()

    with tsa(tsa_key, tsa_cert, work / "tsa-run") as tsa_url, responder(index, CA, CA, CA_KEY, port):
        world["short_props"] = sign(short, "--tsa", tsa_url)
        world["revoked_props"] = sign(revoked)
        world["stapled_props"] = sign(stapled, "--ocsp-staple", CA)
        # What an air-gapped host may carry for a revoked signer: the responder's (signed) answer "revoked".
        answer, result = ocsp_client.fetch(load(revoked[1]), load(CA))
        assert result.status == "revoked"
        world["revoked_stapled_props"] = {**world["revoked_props"], **ocsp.properties(answer)}
        left = (load(short[1]).not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        time.sleep(max(0.0, left + 1.5))  # the short-lived signer has expired from here on
        yield world


def conf(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / f"imgsign-{uuid.uuid4().hex[:8]}.conf"
    path.write_text(text)
    return {"IMGSIGN_CONFIG": str(path)}


# --- compute: `boot adopt` and the record it writes ---------------------------------------------------------


def adopt(world, host: Host, props: dict, signer, env: dict | None = None, image_id: str | None = None):
    """`boot adopt` of the image Nova put into _base (a raw file: the signed bytes), trusting the intermediate CA."""
    image_id = image_id or str(uuid.uuid4())
    base = host.instances / "_base"
    base.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(world["image"], base / hashlib.sha1(image_id.encode()).hexdigest())  # noqa: S324 - Nova's name
    path = host.tmp / f"{image_id}.json"
    path.write_text(json.dumps(props))
    result = run_cli("boot", "adopt", image_id, "--properties", path, "--cert", signer[1], "--trusted",
                     world["ca_id"], "--instances-path", host.instances, "--state-dir", host.state,
                     env={**world["env"], **(env or {})})
    return image_id, result


def test_adoption_checks_revocation_from_the_stapled_response_with_no_network(world, tmp_path):
    """An air-gapped compute host (`[imgsign] ocsp = offline`: never a responder): the stapled response decides
    revocation, with no CRL anywhere, and what was checked is in the trust record."""
    host = Host(tmp_path)
    offline = conf(tmp_path, "[imgsign]\nocsp = offline\n")
    _, revoked = adopt(world, host, world["revoked_stapled_props"], world["revoked"], offline)
    assert revoked.code == errors.CertificateRevoked.exit_code, revoked
    assert "OCSP" in revoked.stderr and "stored" in revoked.stderr
    # Nothing stapled, no network, no CRL: revocation cannot be checked, so it is refused.
    _, unknown = adopt(world, host, world["revoked_props"], world["revoked"], offline)
    assert unknown.code == errors.OCSPUnavailable.exit_code, unknown
    image_id, good = adopt(world, host, world["stapled_props"], world["stapled"], offline)
    assert good.code == 0, good
    record = RecordStore(str(host.state)).get(image_id)
    assert record is not None and record.checks is not None
    assert [(a["status"], a["source"]) for a in record.checks.ocsp_dicts()] == [("good", "stored")]


def test_adoption_refuses_a_signer_revoked_per_its_ocsp_responder_with_no_crl(world, tmp_path):
    host = Host(tmp_path)
    image_id, refused = adopt(world, host, world["revoked_props"], world["revoked"])
    assert refused.code == errors.CertificateRevoked.exit_code, refused
    assert "says its OCSP responder" in refused.stderr
    assert RecordStore(str(host.state)).get(image_id) is None


def _boot_policy(directory: Path, *, tsa_store: bool) -> Path:
    """A catch-all strict trust policy for the hook (root's files only: the hook trusts nothing else)."""
    directory.mkdir(mode=0o755)
    shutil.copyfile(CA, directory / "ca.pem")
    stores = {"ca": {"certificates": ["ca.pem"]}}
    if tsa_store:
        shutil.copyfile(pki("root-ca.pem"), directory / "tsa.pem")
        stores["tsa"] = {"type": "tsa", "certificates": ["tsa.pem"]}
    path = directory / "policy.json"
    path.write_text(json.dumps({"version": 1, "trustStores": stores, "rules": [
        {"name": "all", "scope": "*", "level": "strict", "trustStores": sorted(stores), "trustedIdentities": ["*"]}]}))
    load_policy_text(path.read_bytes())
    return path


def test_an_expired_signer_adopted_on_its_timestamp_boots_only_under_a_rule_whose_tsa_store_made_it(world, tmp_path):
    """The record says the signer had expired and was judged at the timestamp, and which TSA certificate the
    token verified against: the boot check (offline) counts that only under a rule whose tsa store holds it."""
    host = Host(tmp_path)
    trusting = conf(tmp_path, f"[imgsign]\ntsa_ca_file = {pki('root-ca.pem')}\n")
    image_id, bare = adopt(world, host, without(world["short_props"], "imgsign_tst_v1"), world["short"], trusting)
    assert bare.code == errors.UntrustedCertificate.exit_code, bare  # expired, no timestamp: refused
    image_id, adopted = adopt(world, host, world["short_props"], world["short"], trusting)
    assert adopted.code == 0, adopted
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    boot_conf = host.config.read_text().replace("trusted_certificate_ids = \n", "")
    for name, with_tsa in (("with-tsa", True), ("without-tsa", False)):
        policy = _boot_policy(tmp_path / name, tsa_store=with_tsa)
        host.config.write_text(boot_conf + f"policy_file = {policy}\n")
        booted = host.hook(instance, xml)
        if with_tsa:
            assert booted.returncode == 0, booted.stderr
        else:
            assert booted.returncode == errors.CertificateExpired.exit_code, booted.stderr
            assert "not in the tsa trust stores of rule all" in booted.stderr
    record = RecordStore(str(host.state)).get(image_id)
    assert record is not None and record.checks is not None and record.checks.judged_at is not None
    assert record.checks.tsa_fingerprints == (load(pki("root-ca.pem")).fingerprint(hashes.SHA256()).hex(),)


# --- audit ------------------------------------------------------------------------------------------------------


def _record(props: dict) -> dict:
    return {"id": str(uuid.uuid4()), "name": "evidence", "status": "active", "owner": "p1", "visibility": "public",
            **props}


def _assess(world, props, signer, policy: audit.AuditPolicy) -> audit.ImageReport:
    data = signer[1].read_bytes()
    return audit.assess(_record(props), lambda _id: data, policy).report


def _ocsp_for(mode: str):
    return lambda record: ocsp_client.for_document(record, mode)


def _anchors():
    from imgsign.chain import TrustAnchors

    return TrustAnchors([load(CA)])


def test_audit_honours_timestamps_and_ocsp_without_a_trust_policy(world):
    """The flat options (the built-in policy): [imgsign] tsa_ca_file's TSA certificates, OCSP as `verify`."""
    tsa_roots = [load(pki("root-ca.pem"))]
    policy = audit.AuditPolicy(_anchors(), expiry_days=0, tsa_roots=tsa_roots, ocsp_for=_ocsp_for("strict"))
    expired = _assess(world, world["short_props"], world["short"], policy)
    assert expired.passed, expired
    bare = _assess(world, without(world["short_props"], "imgsign_tst_v1"), world["short"], policy)
    assert not bare.passed and "certificate-expired" in [p.reason for p in bare.failures], bare
    revoked = _assess(world, world["revoked_props"], world["revoked"], policy)
    assert revoked.chain.status is audit.ChainStatus.REVOKED and not revoked.passed, revoked
    offline = audit.AuditPolicy(_anchors(), expiry_days=0, ocsp_for=_ocsp_for("offline"))
    stapled = _assess(world, world["stapled_props"], world["stapled"], offline)
    assert stapled.passed, stapled
    stapled_revoked = _assess(world, world["revoked_stapled_props"], world["revoked"], offline)
    assert stapled_revoked.chain.status is audit.ChainStatus.REVOKED, stapled_revoked


def test_audit_by_policy_takes_the_rules_tsa_stores_and_ocsp(world, tmp_path):
    from imgsign.chain import TrustAnchors
    from imgsign.trust_policy import parse_policy

    def policy_of(tsa_store: bool) -> audit.AuditPolicy:
        stores = {"ca": {"certificates": [str(CA)]}}
        if tsa_store:
            stores["tsa"] = {"type": "tsa", "certificates": [str(pki("root-ca.pem"))]}
        trust = parse_policy({"version": 1, "trustStores": stores, "rules": [
            {"name": "all", "scope": "*", "level": "strict", "trustStores": sorted(stores),
             "trustedIdentities": ["*"]}]})
        return audit.AuditPolicy(None, expiry_days=0, trust=trust, anchors_for=lambda rule: TrustAnchors([load(CA)]),
                                 tsa_roots_for=lambda rule: [load(pki("root-ca.pem"))] if rule.tsa_stores else [],
                                 ocsp_for=_ocsp_for("strict"))

    with_tsa, without_tsa = policy_of(True), policy_of(False)
    expired = _assess(world, world["short_props"], world["short"], with_tsa)
    assert expired.passed and expired.verdict == "trusted", expired
    refused = _assess(world, world["short_props"], world["short"], without_tsa)
    assert not refused.passed and refused.verdict == "refused", refused
    revoked = _assess(world, world["revoked_props"], world["revoked"], with_tsa)
    assert revoked.chain.status is audit.ChainStatus.REVOKED and revoked.verdict == "refused", revoked


# --- the recorded checks: parsed strictly ------------------------------------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
                     max_leaves=20)
_MOMENT = st.datetimes(timezones=st.just(datetime.timezone.utc)).map(lambda m: m.isoformat())
_ANSWER = st.fixed_dictionaries({k: st.text(max_size=30) for k in trust_checks.OCSP_KEYS})
_BODY = st.fixed_dictionaries({
    "timestamp": st.none() | _MOMENT | _JSON, "judged_at": st.none() | _MOMENT | _JSON,
    "tsa_fingerprints": st.lists(st.text("0123456789abcdef", min_size=64, max_size=64) | _JSON, max_size=3),
    "ocsp": st.lists(_ANSWER | _JSON, max_size=3)})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_BODY, _JSON))
def test_fuzz_recorded_checks_parse_or_are_refused_and_round_trip(body):
    try:
        checks = trust_checks.TrustChecks.from_body(body)
    except (TypeError, ValueError):
        return
    assert trust_checks.TrustChecks.from_body(checks.to_body()) == checks
    assert all(len(f) == 64 for f in checks.tsa_fingerprints)
    assert checks.judged_at is None or checks.judged_at.tzinfo is not None


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_BODY, _JSON))
def test_fuzz_a_record_with_malformed_checks_is_damaged_never_trusted(body):
    from imgsign.compute.image_cache import new_record
    from imgsign.properties import SignatureProperties
    from imgsign.errors import TrustRecordError
    from imgsign.compute.trust_record import TrustRecord

    signed = SignatureProperties.from_mapping({"img_signature": "AAAA", "img_signature_hash_method": "SHA-256",
                                               "img_signature_key_type": "RSA-PSS",
                                               "img_signature_certificate_uuid": "c0ffee"})
    record = new_record("img", signed, load(CA), bytes(32), None, (), cached_format="raw", cached_sha256=bytes(32),
                        cached_size=1, source_format="raw")
    document = {**record.to_body(), "checks": body}
    try:
        parsed = TrustRecord.from_body(document)
    except TrustRecordError:
        return
    assert parsed.checks is None or parsed.checks.to_body() == body


def test_boot_adopt_under_boot_confs_policy_takes_its_tsa_stores(world, tmp_path):
    """`boot adopt` under boot.conf's trust policy (no --trusted): the chain against its CA stores and the
    timestamp against its tsa stores, as the hook's own adoption; [imgsign] tsa_ca_file plays no part."""
    host = Host(tmp_path)
    base_conf = host.config.read_text().replace("trusted_certificate_ids = \n", "")
    for name, with_tsa in (("with-tsa", True), ("without-tsa", False)):
        host.config.write_text(base_conf + f"policy_file = {_boot_policy(tmp_path / name, tsa_store=with_tsa)}\n")
        image_id = str(uuid.uuid4())
        base = host.instances / "_base"
        base.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(world["image"], base / hashlib.sha1(image_id.encode()).hexdigest())  # noqa: S324
        props = host.tmp / f"{image_id}.json"
        props.write_text(json.dumps(world["short_props"]))
        result = run_cli("boot", "adopt", image_id, "--properties", props, "--cert", world["short"][1],
                         "--instances-path", host.instances, "--state-dir", host.state,
                         env={**world["env"], "IMGSIGN_BOOT_CONFIG": str(host.config)})
        if with_tsa:
            assert result.code == 0, result
            record = RecordStore(str(host.state)).get(image_id)
            assert record is not None and record.checks is not None and record.checks.judged_at is not None
        else:
            assert result.code == errors.UntrustedCertificate.exit_code, result
