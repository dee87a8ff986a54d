"""The boot hook and host-signed snapshots (issue 23, "Verifying", the compute side).

Adoption checks a host-signed image's provenance once, online (:mod:`imgsign.compute.host_signed`), and
the trust record keeps what the hook needs to decide offline: the statement verified, the project, host
and base it names, the base's certificate and the trusted certificates it chained to when the snapshot
was made.  At boot a ``hostSigned`` rule trusts the image only for the project that made it and only when
its base's signer chained to the rule's ``baseTrustStores``; any other rule, and no policy at all, refuse
a compute host's signature.  (The hook through a real libvirtd, Glance and gateway:
tests/test_host_signed_libvirt.py.)
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors, load_private_key, sign
from imgsign._internal.chunked import join_value, split_value
from imgsign.algorithms import HashMethod
from imgsign.chain import TrustAnchors
from imgsign.compute import host_signed
from imgsign.compute.boot import BootPolicy, verify_for_boot
from imgsign.compute.image_cache import add_to_cache
from imgsign.compute.trust_record import ProvenanceRecord, RecordStore, TrustRecord, cache_name
from imgsign.errors import ImgsignError
from imgsign.keymanager.config import load, open_store
from imgsign.policy import Policy
from imgsign.properties import SignatureProperties
from imgsign.provenance import PREFIX, BaseImage, Provenance, sign_provenance
from imgsign.trust_policy import load_policy_text
from tests.policy_pki import Issued, make_ca, make_leaf
from tests.test_fuzz_state import VALID_BODY, json_values

PROJECT_A = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0"
PROJECT_B = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1"
HOST_URI = "openstack://test-cloud/nova-compute/compute-7"
SNAPSHOT_A = {"owner": PROJECT_A, "visibility": "private", "image_type": "snapshot"}
DATA = os.urandom(256 * 1024 + 3)
CREATED = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass
class Pki:
    root: object
    compute_ca: Issued
    image_ca: Issued
    elsewhere_ca: Issued
    host: Issued
    base: Issued
    stranger: Issued  # a base signer the image team's CA did not issue


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("host-signed")
    compute_ca, image_ca, elsewhere_ca = (make_ca(f"CN={n} CA,O=Example") for n in ("Compute", "Image", "Elsewhere"))
    for name, ca in (("compute", compute_ca), ("image", image_ca), ("elsewhere", elsewhere_ca)):
        ca.write(root / "ca", name)
    return Pki(root, compute_ca, image_ca, elsewhere_ca,
               make_leaf(compute_ca, "CN=compute-7,O=Example", uris=(HOST_URI,)),
               make_leaf(image_ca, "CN=image team,O=Example"), make_leaf(elsewhere_ca, "CN=stranger,O=Example"))


def policy_of(pki: Pki, host_rule: dict | None = None, *, base_store: str = "image-team", extra: str = ""):
    """A policy: snapshots are trusted when host-signed (``host_rule`` replaces that rule's hostSigned), and the
    image team signs everything else."""
    rule = {"name": "host-signed-snapshots", "scope": {"imageType": "snapshot"}, "level": "strict",
            "trustStores": ["compute-hosts"], "trustedIdentities": ["*"],
            "hostSigned": {"baseTrustStores": [base_store]}}
    if host_rule is not None:
        rule = {**rule, **host_rule}
        rule = {k: v for k, v in rule.items() if v is not None}
    stores = {"compute-hosts": {"certificates": ["ca/compute.pem"]}, "image-team": {"certificates": ["ca/image.pem"]},
              "elsewhere": {"certificates": ["ca/elsewhere.pem"]}}
    used = {"compute-hosts", "image-team", *rule.get("hostSigned", {}).get("baseTrustStores", [])}
    document = {"version": 1, "trustStores": {name: store for name, store in stores.items() if name in used},
                "rules": [rule, {"name": "default", "scope": "*", "level": "strict", "trustStores": ["image-team"],
                                 "trustedIdentities": ["*"]}]}
    path = pki.root / f"policy{extra}.json"
    path.write_text(json.dumps(document))
    return load_policy_text(path.read_bytes(), str(path))


def base_of(base: Issued, base_id: str = "base-image-1", certificate_id: str = "base-cert-id") -> BaseImage:
    return BaseImage(base_id, hashlib.sha256(b"the base's img_signature").digest(),
                     hashlib.sha256(base.cert.public_bytes(Encoding.DER)).digest(), certificate_id)


def snapshot(pki: Pki, image_id: str, *, project: str = PROJECT_A, base: BaseImage | None = None,
             signer: Issued | None = None) -> dict[str, str]:
    """A snapshot's properties as the gateway sets them: img_signature* and the provenance, by the host key."""
    signer = signer or pki.host
    key = load_private_key(signer.key_pem)
    signed = sign([DATA], key, "host-cert-id", HashMethod.SHA384)
    statement = Provenance(image_id, HashMethod.SHA384, hashlib.sha384(DATA).digest(), base,
                           "0f0e0d0c-0b0a-4909-8807-060504030201", project, "compute-7", CREATED)
    return {**signed.as_dict(), **sign_provenance(key, signed, bytes.fromhex(signer.fingerprint), statement)}


def adopt(tmp_path, pki: Pki, image_id: str, properties: dict[str, str], *, base_cert: Issued | None = None,
          gather: bool = True, facts: dict[str, str] | None = None, signer: Issued | None = None):
    """Record the image as adoption does (the base's certificate "from the key manager" is ``base_cert``)."""
    records = RecordStore(str(tmp_path / "state"))
    signer = signer or pki.host
    found = None
    if gather:
        def base_certificate(certificate_id: str):
            assert certificate_id == "base-cert-id"
            return (base_cert or pki.base).cert

        record = host_signed.record_of(image_id, properties, signer.cert, base_certificate=base_certificate,
                                       base_anchors=lambda: TrustAnchors([pki.image_ca.cert, pki.elsewhere_ca.cert]),
                                       policy=Policy())
        found = host_signed.Found(record)
    add_to_cache([DATA], image_id, SignatureProperties.from_mapping(properties), signer.cert, records,
                 instances_path=str(tmp_path), anchors=TrustAnchors([pki.compute_ca.cert, pki.image_ca.cert]),
                 policy=Policy(), immutable=False, image_facts=facts or SNAPSHOT_A, provenance=found)
    return records, str(tmp_path / "_base" / cache_name(image_id))


def boot(pki: Pki, records, base: str, project: str | None, trust=None):
    policy = BootPolicy(immutable_bases=False, trust=trust or policy_of(pki), trust_dir=str(pki.root))
    return verify_for_boot(base, records, policy, booting_project=project)


# --- the boot decision --------------------------------------------------------------------------------------

def test_the_owner_boots_its_host_signed_snapshot_and_another_project_does_not(tmp_path, pki):
    records, base = adopt(tmp_path, pki, "snap-1", snapshot(pki, "snap-1", base=base_of(pki.base)))
    recorded = records.get("snap-1")
    assert recorded is not None and recorded.provenance is not None
    assert (recorded.provenance.verified, recorded.provenance.project_id, recorded.provenance.base_image_id) == \
        (True, PROJECT_A, "base-image-1")
    assert recorded.provenance.base_anchor_fingerprints == (pki.image_ca.fingerprint,)
    home = boot(pki, records, base, PROJECT_A)
    assert home.allowed and home.code == 0, home
    away = boot(pki, records, base, PROJECT_B)
    assert not away.allowed and away.code == errors.ProvenanceError.exit_code == 90, away
    assert f"project {PROJECT_B} boots an image host-signed for project {PROJECT_A}" in away.message
    nobody = boot(pki, records, base, None)
    assert not nobody.allowed and nobody.code == 90 and "names no Nova owner project" in nobody.message, nobody


def test_a_statement_for_another_project_than_the_owner_is_refused(tmp_path, pki):
    records, base = adopt(tmp_path, pki, "snap-2", snapshot(pki, "snap-2", project=PROJECT_B, base=base_of(pki.base)))
    for project in (PROJECT_A, PROJECT_B):
        decision = boot(pki, records, base, project)
        assert not decision.allowed and decision.code == 90, decision
    assert "a host signature vouches only inside the project that made the image" in decision.message


def test_a_record_without_provenance_is_refused_under_a_host_signed_rule(tmp_path, pki):
    """Recorded before this host had a hostSigned rule (nothing gathered), or an image without statement."""
    records, base = adopt(tmp_path, pki, "snap-3", snapshot(pki, "snap-3", base=base_of(pki.base)), gather=False)
    assert records.get("snap-3").provenance is None
    decision = boot(pki, records, base, PROJECT_A)
    assert not decision.allowed and decision.code == 90, decision
    assert "has none" in decision.message and "rule host-signed-snapshots" in decision.message


def test_a_base_signed_outside_the_base_trust_stores_is_refused(tmp_path, pki):
    props = snapshot(pki, "snap-4", base=base_of(pki.stranger))
    records, base = adopt(tmp_path, pki, "snap-4", props, base_cert=pki.stranger)
    found = records.get("snap-4").provenance
    assert found.base_anchor_fingerprints == (pki.elsewhere_ca.fingerprint,)  # chained, but to another store
    decision = boot(pki, records, base, PROJECT_A)
    assert not decision.allowed and decision.code == 90, decision
    assert "chained to the baseTrustStores of rule host-signed-snapshots (image-team)" in decision.message
    # The very record is trusted by a rule whose baseTrustStores hold the CA it chained to: decided by fingerprint.
    allowed = boot(pki, records, base, PROJECT_A, policy_of(pki, base_store="elsewhere", extra="-elsewhere"))
    assert allowed.allowed and allowed.code == 0, allowed


def test_a_base_certificate_that_is_not_the_one_the_statement_names_is_refused(tmp_path, pki):
    records, base = adopt(tmp_path, pki, "snap-5", snapshot(pki, "snap-5", base=base_of(pki.base)),
                          base_cert=pki.stranger)  # the key manager hands another certificate under that id
    found = records.get("snap-5").provenance
    assert found.base_certificate_der is None and "is not the one that signed the base image" in found.base_error
    decision = boot(pki, records, base, PROJECT_A)
    assert not decision.allowed and decision.code == 90 and "was not trusted when the snapshot was made" in \
        decision.message, decision


def test_a_snapshot_without_a_signed_base_is_refused(tmp_path, pki):
    records, base = adopt(tmp_path, pki, "snap-6", snapshot(pki, "snap-6", base=None))
    decision = boot(pki, records, base, PROJECT_A)
    assert not decision.allowed and decision.code == 90 and "names no signed base image" in decision.message


def test_base_identities_are_matched_against_the_recorded_base_certificate(tmp_path, pki):
    records, base = adopt(tmp_path, pki, "snap-7", snapshot(pki, "snap-7", base=base_of(pki.base)))
    named = policy_of(pki, {"hostSigned": {"baseTrustStores": ["image-team"],
                                           "baseIdentities": [{"subject": "CN=image team,O=Example"}]}}, extra="-id")
    assert boot(pki, records, base, PROJECT_A, named).allowed
    other = policy_of(pki, {"hostSigned": {"baseTrustStores": ["image-team"],
                                           "baseIdentities": [{"subject": "CN=someone else,O=Example"}]}},
                      extra="-other-id")
    decision = boot(pki, records, base, PROJECT_A, other)
    assert not decision.allowed and decision.code == 90 and "not one of the baseIdentities" in decision.message


def test_an_edited_statement_is_recorded_as_unverified_and_refused(tmp_path, pki):
    props = snapshot(pki, "snap-8", base=base_of(pki.base))
    # Another project in the payload, the signature left as it was.
    document = json.loads(join_value(props, PREFIX))
    payload = base64.b64decode(document["payload"]).replace(PROJECT_A.encode(), PROJECT_B.encode())
    document["payload"] = base64.b64encode(payload).decode()
    edited = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
    edited.update(split_value(PREFIX, json.dumps(document, sort_keys=True, separators=(",", ":"))))
    records, base = adopt(tmp_path, pki, "snap-8", edited, facts={**SNAPSHOT_A, "owner": PROJECT_B})
    found = records.get("snap-8").provenance
    assert not found.verified and "does not verify" in found.error
    decision = boot(pki, records, base, PROJECT_B)
    assert not decision.allowed and decision.code == 90 and "did not verify when the image was adopted" in \
        decision.message, decision


def test_a_host_signature_is_refused_under_a_rule_that_is_not_host_signed(tmp_path, pki):
    """Regression: the boot check matched a rule's signer identity only when the rule named identities, so a
    compute host's certificate passed under a plain rule that trusts the compute CA (with ``"*"``)."""
    records, base = adopt(tmp_path, pki, "snap-9", snapshot(pki, "snap-9", base=base_of(pki.base)))
    plain = policy_of(pki, {"hostSigned": None}, extra="-plain")
    decision = boot(pki, records, base, PROJECT_A, plain)
    assert not decision.allowed and decision.code == errors.PolicyRefused.exit_code, decision
    assert "is a compute host" in decision.message and "no hostSigned rule" in decision.message


def test_without_a_trust_policy_a_host_signature_is_refused(tmp_path, pki):
    """Regression: with no policy (trusted ids or none), a host-signed snapshot booted in any project."""
    records, base = adopt(tmp_path, pki, "snap-10", snapshot(pki, "snap-10", base=base_of(pki.base)))
    decision = verify_for_boot(base, records, BootPolicy(immutable_bases=False), booting_project=PROJECT_A)
    assert not decision.allowed and decision.code == errors.PolicyRefused.exit_code, decision
    assert "signed by a compute host" in decision.message
    # An image signed by anyone else boots as before without a policy.
    records_b, base_b = adopt(tmp_path / "b", pki, "img-11", snapshot(pki, "img-11", signer=pki.base),
                              signer=pki.base, gather=False)
    assert verify_for_boot(base_b, records_b, BootPolicy(immutable_bases=False)).allowed


def test_adoption_reads_the_base_and_its_stores_from_the_key_manager(tmp_path, pki):
    """host_signed.fetch against the embedded key manager: the base's certificate by the id the statement names,
    the base store's certificate by its key-manager id, bound (id -> fingerprint) for the boot."""
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'keys.sqlite3'}\n\n"
                    f"[imgsign]\nproject_id = {PROJECT_A}\n")
    store = open_store(load(str(conf)))
    base_cert_id = store.store_certificate(pki.base.cert.public_bytes(Encoding.DER))
    ca_id = store.store_certificate(pki.image_ca.cert.public_bytes(Encoding.DER))
    document = {"version": 1,
                "trustStores": {"compute-hosts": {"certificates": ["ca/compute.pem"]},
                                "image-team": {"keyManager": [ca_id]}},
                "rules": [{"name": "host-signed", "scope": "*", "level": "strict", "trustStores": ["compute-hosts"],
                           "trustedIdentities": [{"sanUri": HOST_URI}],
                           "hostSigned": {"baseTrustStores": ["image-team"]}}]}
    trust = load_policy_text(json.dumps(document).encode(), str(pki.root / "km-policy.json"))
    props = snapshot(pki, "snap-12", base=base_of(pki.base, certificate_id=base_cert_id))
    found = host_signed.fetch("snap-12", props, pki.host.cert, store, trust, str(pki.root), Policy())
    assert found is not None and found.record.verified
    assert found.record.base_anchor_fingerprints == (pki.image_ca.fingerprint,)
    assert found.fetched == ((ca_id, pki.image_ca.cert.public_bytes(Encoding.DER)),)
    assert host_signed.fetch("snap-12", {k: v for k, v in props.items() if not k.startswith(PREFIX)},
                             pki.host.cert, store, trust, str(pki.root), Policy()) is None
    assert host_signed.fetch("snap-12", props, pki.host.cert, store, policy_of(pki, {"hostSigned": None},
                                                                               extra="-none"),
                             str(pki.root), Policy()) is None
    records = RecordStore(str(tmp_path / "state"))
    add_to_cache([DATA], "snap-12", SignatureProperties.from_mapping(props), pki.host.cert, records,
                 instances_path=str(tmp_path), anchors=TrustAnchors([pki.compute_ca.cert]), policy=Policy(),
                 immutable=False, image_facts=SNAPSHOT_A, provenance=found)
    assert records.anchors.fingerprint(ca_id) == pki.image_ca.fingerprint
    base = str(tmp_path / "_base" / cache_name("snap-12"))
    policy = BootPolicy(immutable_bases=False, trust=trust, trust_dir=str(pki.root))
    assert verify_for_boot(base, records, policy, booting_project=PROJECT_A).allowed
    assert verify_for_boot(base, records, policy, booting_project=PROJECT_B).code == 90
    # An unknown base certificate id: the key manager's error fails the adoption (tried again at the next boot).
    missing = snapshot(pki, "snap-13", base=base_of(pki.base, certificate_id="no-such-certificate"))
    with pytest.raises(ImgsignError, match="of base image base-image-1, which the provenance of image snap-13 names"):
        host_signed.fetch("snap-13", missing, pki.host.cert, store, trust, str(pki.root), Policy())


# --- the record format ----------------------------------------------------------------------------------------

PROVENANCE_BODY = {"verified": True, "error": None, "project_id": PROJECT_A, "host": "compute-7",
                   "base_image_id": "base-1", "created_at": "2026-12-01T12:00:00Z",
                   "base_certificate_der": "MAo=", "base_anchor_fingerprints": ["ab" * 32], "base_error": None}


def test_the_provenance_round_trips_and_changes_the_record_digest():
    plain = TrustRecord.from_body(copy.deepcopy(VALID_BODY))
    record = TrustRecord.from_body({**copy.deepcopy(VALID_BODY), "provenance": PROVENANCE_BODY})
    assert record.provenance == ProvenanceRecord(True, None, PROJECT_A, "compute-7", "base-1", "2026-12-01T12:00:00Z",
                                                 b"0\n", ("ab" * 32,))
    assert TrustRecord.from_body(record.to_body()) == record
    assert record.digest() != dataclasses.replace(record, recorded_at=plain.recorded_at, provenance=None).digest()
    assert "provenance" not in plain.to_body()  # records without one keep their old form (and digest)


@pytest.mark.parametrize("change", [
    {"verified": "yes"}, {"verified": True, "error": "but also an error"}, {"verified": False},
    {"verified": False, "error": "bad"},  # unverified, yet keeping what it stated
    {"project_id": None}, {"base_image_id": None}, {"base_certificate_der": None},
    {"base_anchor_fingerprints": ["AB" * 32]}, {"base_certificate_der": "not base64!"}, {"host": 7},
])
def test_inconsistent_provenance_bodies_are_refused(change):
    body = {**copy.deepcopy(VALID_BODY), "provenance": {**PROVENANCE_BODY, **change}}
    with pytest.raises(errors.TrustRecordError):
        TrustRecord.from_body(body)
    extra = {**copy.deepcopy(VALID_BODY), "provenance": {**PROVENANCE_BODY, "more": 1}}
    with pytest.raises(errors.TrustRecordError):
        TrustRecord.from_body(extra)


FUZZ = settings(max_examples=int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(json_values, st.fixed_dictionaries({k: st.one_of(json_values, st.just(v))
                                                     for k, v in PROVENANCE_BODY.items()})))
def test_a_recorded_provenance_parses_or_is_a_trust_record_error(value):
    try:
        record = TrustRecord.from_body({**copy.deepcopy(VALID_BODY), "provenance": value})
    except errors.TrustRecordError:
        return
    assert record.provenance is None or TrustRecord.from_body(record.to_body()) == record


@FUZZ
@given(st.dictionaries(st.sampled_from([f"{PREFIX}0", f"{PREFIX}1", f"{PREFIX}x"]),
                       st.one_of(st.text(max_size=300), json_values), min_size=1),
       st.sampled_from(["payload", "sig", "keyid", None]))
def test_any_provenance_property_is_recorded_as_unverified_never_a_traceback(pki, properties, mutate):
    """Whatever Glance says the statement is: an unverified record with the reason (the base is never read)."""
    genuine = snapshot(pki, "snap-fuzz", base=base_of(pki.base))
    given_props = {k: v for k, v in genuine.items() if not k.startswith(PREFIX)}
    if mutate is None:
        given_props.update(properties)
    else:  # the genuine envelope with one member replaced
        document = json.loads(join_value(genuine, PREFIX))
        target = document if mutate == "payload" else document["signatures"][0]
        target[mutate] = next(iter(properties.values()))
        given_props.update(split_value(PREFIX, json.dumps(document)))

    def unreachable(*_args):
        raise AssertionError("the base is read only for a verified statement")

    record = host_signed.record_of("snap-fuzz", given_props, pki.host.cert, base_certificate=unreachable,
                                   base_anchors=unreachable, policy=Policy())
    assert not record.verified and record.error and record == ProvenanceRecord(False, record.error)
    assert ProvenanceRecord.from_body(record.to_body()) == record
