"""Trust policy ``hostSigned`` rules: the parser's errors, and every decision of the engine on real
host-signed images (a host certificate with the compute URI SAN, a real provenance statement, real base
certificates), gathered by the one evidence path every verifier uses (``trust_evidence.evidence_for``)."""

from __future__ import annotations


import copy
import datetime as dt
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imgsign import errors, trust_evidence, trust_policy
from imgsign.chain import TrustAnchors
from imgsign.properties import SignatureProperties
from imgsign.trust_policy import ImageFacts, Status
from tests.host_signing import CREATED, base_image, edit_statement, host_signed, make_host, sign_image
from tests.policy_pki import make_ca, make_leaf

OWNER = "8f3a1c0e5b7d4e2f9a6b1c3d5e7f9a0b"
OTHER = "0b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e"
IMAGE = "5f1c2a8e-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
BASE_ID = "1d2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6"
DATA = b"a snapshot of the instance's disk\n" * 500

COMPUTE = make_ca("CN=Compute Image Attestation CA,O=Example Cloud")
TEAM = make_ca("CN=Image Team CA,O=Example Cloud")
OUTSIDER = make_ca("CN=Someone Else CA,O=Elsewhere")
HOST = make_host(COMPUTE, "compute-7")
RELEASE = make_leaf(TEAM, "CN=Image Team Release Signing,O=Example Cloud")
TEAM_TEST = make_leaf(TEAM, "CN=Image Team Test,O=Example Cloud")
STRANGER = make_leaf(OUTSIDER, "CN=Image Team Release Signing,O=Example Cloud")
#: Valid only from after the snapshot was made: it was not trusted then.
LATE = make_leaf(TEAM, "CN=Image Team Release Signing,O=Example Cloud", start=CREATED + dt.timedelta(days=1))
#: Expired now, valid when the snapshot was made: it was trusted then.
GONE = make_leaf(TEAM, "CN=Image Team Release Signing,O=Example Cloud", end=CREATED + dt.timedelta(days=1))
#: Base certificates in the "key manager", by id.
BASE_CERTS = {"cert-release": RELEASE, "cert-team-test": TEAM_TEST, "cert-stranger": STRANGER, "cert-late": LATE,
              "cert-gone": GONE}

DOCUMENT = {
    "version": 1,
    "trustStores": {"compute-hosts": {"certificates": ["compute.pem"]}, "image-team": {"certificates": ["team.pem"]}},
    "rules": [
        {"name": "snapshots", "scope": {"imageType": "snapshot"}, "level": "strict", "trustStores": ["compute-hosts"],
         "trustedIdentities": [{"sanUri": "openstack://example-cloud/nova-compute/compute-7"}],
         "hostSigned": {"baseTrustStores": ["image-team"],
                        "baseIdentities": [{"subject": "CN=Image Team Release Signing,O=Example Cloud"}]}},
        {"name": "default", "scope": "*", "level": "strict", "trustStores": ["image-team", "compute-hosts"],
         "trustedIdentities": ["*"]},
    ],
}
ANCHORS = {"compute-hosts": TrustAnchors([COMPUTE.cert]), "image-team": TrustAnchors([TEAM.cert])}


def parse(document) -> trust_policy.TrustPolicy:
    return trust_policy.parse_policy(document, "p.yaml")


POLICY = parse(DOCUMENT)


def snapshot(base_cert: str | None = "cert-release", **options) -> dict[str, str]:
    base = None if base_cert is None else base_image(BASE_ID, BASE_CERTS[base_cert], base_cert)
    return host_signed(DATA, HOST, "cert-host", image_id=options.pop("image_id", IMAGE),
                       project=options.pop("project", OWNER), base=base, **options)


def fetch_base(cert_id: str):
    if cert_id not in BASE_CERTS:
        raise errors.ObjectNotFound(f"no certificate {cert_id}")
    return BASE_CERTS[cert_id].cert


def decide(properties: dict[str, str], *, owner: str | None = OWNER, booting: str | None = OWNER,
           image_type: str = "snapshot", signer=HOST, policy=POLICY, base_certificate=fetch_base,
           image_id: str | None = IMAGE) -> trust_policy.Decision:
    selection = trust_policy.select(policy, ImageFacts(owner, "private", image_type, booting, image_id))
    rule = selection.rule
    stores = [s.name for s in rule.ca_stores]
    anchors = TrustAnchors([c for name in stores for c in ANCHORS[name].trusted])
    base = None
    if rule.host_signed is not None:
        base = TrustAnchors([c for s in rule.host_signed.base_trust_stores for c in ANCHORS[s.name].trusted])
    evidence = trust_evidence.image_evidence(properties, signature_of(properties), signer.cert, rule, anchors, (),
                                             base_anchors=base, base_certificate=base_certificate,
                                             image_id=image_id).evidence
    return trust_policy.decide(selection, evidence)


def signature_of(properties) -> bytes:
    """The decoded img_signature (empty when the properties have none that parses: the engine then refuses)."""
    try:
        return SignatureProperties.from_mapping(properties).signature
    except errors.ImgsignError:
        return b""


def refusal(decision: trust_policy.Decision, error=errors.ProvenanceError) -> str:
    assert not decision.allowed and not decision.trusted, decision
    assert isinstance(decision.error, error), decision.error
    assert [f.check for f in decision.findings] == ["authenticity"]
    return decision.error.message


# --- the engine ---------------------------------------------------------------------------------------------


def test_a_host_signed_snapshot_is_trusted_for_its_owner():
    decision = decide(snapshot())
    assert decision.rule.name == "snapshots" and decision.allowed and decision.trusted, decision.reasons
    assert any(r.startswith(f"host-signed on compute-7 for project {OWNER} from base {BASE_ID}")
               for r in decision.reasons)
    # Outside a boot (verify, audit, Glance's import): the owner's own snapshot.
    assert decide(snapshot(), booting=None).trusted


def test_a_snapshot_without_a_statement_is_refused():
    unsigned_provenance = {k: v for k, v in snapshot().items() if not k.startswith("imgsign_provenance_v1_")}
    assert "no provenance statement" in refusal(decide(unsigned_provenance))
    # An image signed by the host the ordinary way (no gateway): the same.
    assert "no provenance statement" in refusal(decide(sign_image(DATA, HOST, "cert-host")))


def test_a_forged_statement_is_refused():
    """Signed by another key under the host certificate's keyid: it does not verify with the host's key."""
    forged = snapshot(provenance_key=make_host(COMPUTE, "compute-7"))
    assert "provenance signature does not verify" in refusal(decide(forged))


@pytest.mark.parametrize("edit", [
    lambda s: s["predicate"].__setitem__("projectId", OTHER),
    lambda s: s["predicate"]["baseImage"].__setitem__("certificateId", "cert-stranger"),
    lambda s: s["predicate"].__setitem__("host", "compute-8"),
    lambda s: s["subject"][0].__setitem__("name", "another-image"),
])
def test_an_edited_statement_is_refused(edit):
    assert "provenance signature does not verify" in refusal(decide(edit_statement(snapshot(), edit)))


def test_a_statement_of_another_image_is_refused():
    assert "belongs to another image" in refusal(decide(snapshot(image_id="another-image")))


def test_the_statement_s_project_must_be_the_owner():
    message = refusal(decide(snapshot(project=OTHER), booting=OTHER))
    assert f"the provenance says project {OTHER} made the image, but its owner is {OWNER}" in message
    assert "but its owner is unknown" in refusal(decide(snapshot(), owner=None, booting=None))


def test_the_booting_project_must_be_the_owner():
    message = refusal(decide(snapshot(), booting=OTHER))
    assert f"project {OTHER} boots an image host-signed for project {OWNER}" in message
    assert errors.ProvenanceError.exit_code == 90


def test_a_snapshot_without_a_signed_base_is_refused():
    assert "names no signed base image" in refusal(decide(snapshot(base_cert=None)))


def test_the_base_certificate_must_be_the_one_the_statement_names():
    """The key manager answers the id with another certificate (a hostile key manager, or a reused id)."""
    message = refusal(decide(snapshot(), base_certificate=lambda cert_id: TEAM_TEST.cert))
    assert "is not the one that signed the base image" in message
    unreachable = refusal(decide(snapshot(), base_certificate=lambda cert_id: fetch_base("cert-missing")))
    assert "cannot be read" in unreachable
    assert "cannot be checked here" in refusal(decide(snapshot(), base_certificate=None))


def test_the_base_must_have_chained_to_the_base_trust_stores_when_the_snapshot_was_made():
    message = refusal(decide(snapshot(base_cert="cert-stranger")))
    assert "did not chain to the baseTrustStores of rule snapshots when the snapshot was made" in message
    assert "did not chain" in refusal(decide(snapshot(base_cert="cert-late")))  # not valid yet at createdAt
    # Expired since, but valid when the snapshot was made: the base was trusted then.
    assert decide(snapshot(base_cert="cert-gone")).trusted


def test_the_base_signer_must_be_one_of_the_base_identities():
    message = refusal(decide(snapshot(base_cert="cert-team-test")))
    assert "signed by CN=Image Team Test" in message and "not one of the baseIdentities" in message
    anyone = copy.deepcopy(DOCUMENT)
    del anyone["rules"][0]["hostSigned"]["baseIdentities"]
    assert decide(snapshot(base_cert="cert-team-test"), policy=parse(anyone)).trusted


def test_the_host_certificate_must_chain_to_the_rule_s_stores_and_be_a_trusted_identity():
    other_host = make_host(COMPUTE, "compute-8")
    properties = host_signed(DATA, other_host, "cert-host", image_id=IMAGE, project=OWNER,
                             base=base_image(BASE_ID, RELEASE, "cert-release"))
    assert "trusted identities" in refusal(decide(properties, signer=other_host), errors.PolicyRefused)
    rogue = make_host(OUTSIDER, "compute-7")
    properties = host_signed(DATA, rogue, "cert-host", image_id=IMAGE, project=OWNER,
                             base=base_image(BASE_ID, RELEASE, "cert-release"))
    assert not decide(properties, signer=rogue).allowed


def test_a_host_certificate_vouches_under_no_other_rule():
    """The catch-all trusts the compute CA too, but is no hostSigned rule: a host signature is refused there,
    even on an image that is not a snapshot and even with a valid provenance."""
    for properties in (snapshot(), sign_image(DATA, HOST, "cert-host")):
        decision = decide(properties, image_type="image")
        assert decision.rule.name == "default"
        assert "is a compute host" in refusal(decision, errors.PolicyRefused)
    assert errors.PolicyRefused.exit_code == 81
    # The image team's own signatures pass there.
    assert decide(sign_image(DATA, RELEASE, "cert-release"), image_type="image", signer=RELEASE).trusted


def test_an_image_team_signature_is_no_host_signature():
    """Under the hostSigned rule even a trusted CA's ordinary signature needs the provenance."""
    team_signed = sign_image(DATA, RELEASE, "cert-release")
    assert not decide(team_signed, signer=RELEASE).allowed


@pytest.mark.parametrize(("level", "allowed"), [("strict", False), ("permissive", False), ("audit", True)])
def test_provenance_failures_are_authenticity_failures(level, allowed):
    document = copy.deepcopy(DOCUMENT)
    document["rules"][0]["level"] = level
    decision = decide(snapshot(), booting=OTHER, policy=parse(document))
    assert decision.allowed is allowed and not decision.trusted
    assert [(f.check, f.reason) for f in decision.findings] == [("authenticity", "provenance-error")]


def test_the_provenance_evidence_says_what_was_found():
    rule = POLICY.rules[0]
    found = trust_evidence.provenance_evidence(snapshot(), HOST.cert, rule, image_id=IMAGE,
                                               base_certificate=fetch_base, base_anchors=ANCHORS["image-team"])
    assert found is not None and found.check.status is Status.PASSED and found.base.status is Status.PASSED
    assert (found.project_id, found.host, found.base_image_id) == (OWNER, "compute-7", BASE_ID)
    assert found.base_signer is not None and found.base_signer.fingerprint == RELEASE.fingerprint
    assert trust_evidence.provenance_evidence(snapshot(), HOST.cert, POLICY.rules[1], image_id=IMAGE,
                                              base_certificate=fetch_base, base_anchors=None) is None


def test_without_a_policy_a_host_signature_is_refused():
    with pytest.raises(errors.PolicyRefused, match="only under a trust policy rule with hostSigned"):
        trust_evidence.refuse_host_certificate(HOST.cert)
    trust_evidence.refuse_host_certificate(RELEASE.cert)


# --- the parser ---------------------------------------------------------------------------------------------


def refused(edit) -> str:
    document = copy.deepcopy(DOCUMENT)
    edit(document)
    with pytest.raises(errors.TrustPolicyError) as caught:
        parse(document)
    assert caught.value.exit_code == 80
    return caught.value.message


def host_of(document) -> dict:
    return document["rules"][0]["hostSigned"]


def test_a_host_signed_rule_parses():
    rule = POLICY.rules[0]
    assert rule.host_signed is not None and [s.name for s in rule.host_signed.base_trust_stores] == ["image-team"]
    assert [i.describe() for i in rule.host_signed.base_identities] == [
        "subject CN=Image Team Release Signing,O=Example Cloud"]
    assert rule.as_dict()["host_signed"] == {"base_trust_stores": ["image-team"], "base_identities": [
        "subject CN=Image Team Release Signing,O=Example Cloud"]}
    assert POLICY.rules[1].host_signed is None


@pytest.mark.parametrize(("edit", "where", "what"), [
    (lambda d: host_of(d).update(baseStores=["image-team"]), "rules[0].hostSigned.baseStores", "unknown key"),
    (lambda d: host_of(d).pop("baseTrustStores"), "rules[0].hostSigned", "lacks the required key 'baseTrustStores'"),
    (lambda d: host_of(d).update(baseTrustStores=[]), "rules[0].hostSigned.baseTrustStores", "must not be empty"),
    (lambda d: host_of(d).update(baseTrustStores=["nope"]), "rules[0].hostSigned.baseTrustStores[0]",
     "no trust store is named 'nope'"),
    (lambda d: d["trustStores"].update(tsa={"type": "tsa", "certificates": ["tsa.pem"]})
     or host_of(d).update(baseTrustStores=["image-team", "tsa"]), "rules[0].hostSigned.baseTrustStores",
     "names a tsa store"),
    (lambda d: host_of(d).update(baseIdentities=[]), "rules[0].hostSigned.baseIdentities", "must not be empty"),
    (lambda d: host_of(d).update(baseIdentities=[{"subject": "not a name"}]),
     "rules[0].hostSigned.baseIdentities[0].subject", "RFC 4514"),
    (lambda d: d["rules"][0].update(hostSigned=["image-team"]), "rules[0].hostSigned", "must be a mapping"),
    (lambda d: d["rules"][0].update(level="skip", scope={"imageType": "snapshot"}) or [
        d["rules"][0].pop(k) for k in ("trustStores", "trustedIdentities")], "rules[0].hostSigned",
     "means nothing under level skip"),
    (lambda d: d["trustStores"].update(unused={"certificates": ["u.pem"]}), "trustStores.unused",
     "is used by no rule"),
])
def test_host_signed_mistakes_name_their_place(edit, where, what):
    message = refused(edit)
    assert message.startswith(f"trust policy p.yaml: {where}: "), message
    assert what in message, message


def test_a_store_used_only_as_a_base_store_is_used():
    document = copy.deepcopy(DOCUMENT)
    document["trustStores"]["bases"] = {"certificates": ["bases.pem"]}
    host_of(document)["baseTrustStores"] = ["bases"]
    assert [s.name for s in parse(document).rules[0].host_signed.base_trust_stores] == ["bases"]


# --- untrusted properties ------------------------------------------------------------------------------------

SNAPSHOT = snapshot()
PROVENANCE_KEYS = sorted(k for k in SNAPSHOT if k.startswith("imgsign_provenance_v1_"))


@settings(max_examples=int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([*PROVENANCE_KEYS, "imgsign_provenance_v1_9", "img_signature"]),
                          st.one_of(st.none(), st.text(max_size=300), st.integers(), st.binary(max_size=20))),
                min_size=1, max_size=3))
def test_any_change_to_the_statement_s_properties_is_refused_never_a_traceback(changes):
    """Glance's properties are anyone's: each changed, removed or added provenance property gives a refusal
    (the evidence path never raises), never a trusted image."""
    properties: dict[str, object] = dict(SNAPSHOT)
    for name, value in changes:
        if value is None:
            properties.pop(name, None)
        else:
            properties[name] = value
    assume(properties != SNAPSHOT)
    decision = decide(properties)  # type: ignore[arg-type]
    assert not decision.allowed and decision.error is not None


# --- the pipeline library call (Glance's imgsign_verify) ------------------------------------------------------


def test_the_pipeline_decides_by_the_host_signed_rule_at_ingest():
    """No booting project at ingest: the owner's snapshot imports; another project's statement, or no
    policy at all (the flat trusted ids), refuses it before a byte is read."""
    from imgsign.glance.pipeline import verify_image
    from tests.test_pipeline import DictStore

    store = DictStore({"cert-host": HOST.pem, **{k: v.pem for k, v in BASE_CERTS.items()},
                       "compute-ca": COMPUTE.pem})

    def anchors(rule):
        return TrustAnchors([c for s in rule.ca_stores for c in ANCHORS[s.name].trusted])

    def base(rule):
        return TrustAnchors([c for s in rule.host_signed.base_trust_stores for c in ANCHORS[s.name].trusted])

    def ingest(properties, owner=OWNER):
        selection = trust_policy.select(POLICY, ImageFacts(owner, "private", "snapshot", None, IMAGE))
        return verify_image([DATA], properties, store, selection=selection, rule_anchors=anchors, base_anchors=base,
                            image_id=IMAGE)

    verified = ingest(snapshot())
    assert verified.decision is not None and verified.decision.trusted and verified.size == len(DATA)
    with pytest.raises(errors.ProvenanceError, match="a host signature vouches only inside the project"):
        ingest(snapshot(), owner=OTHER)
    with pytest.raises(errors.ProvenanceError, match="did not chain to the baseTrustStores"):
        ingest(snapshot(base_cert="cert-stranger"))
    with pytest.raises(errors.PolicyRefused, match="is a compute host"):
        verify_image([DATA], snapshot(), store, trusted_ids=("compute-ca",))
