"""Fuzzing the trust policy: any text or document gives a policy or the one error (TrustPolicyError, 80),
never a traceback; and the engine never allows an image that no rule trusts (``hostSigned`` rules and
provenance evidence included: a host-signed image whose provenance fails is never allowed under a strict or
permissive hostSigned rule, and a compute host's signature never under another rule).

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200).
"""

from __future__ import annotations

import copy
import json
import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imgsign import errors, trust_policy
from imgsign.trust_policy import (
    IMAGE_TYPES,
    VISIBILITIES,
    Action,
    Check,
    Evidence,
    ImageFacts,
    Level,
    ProvenanceEvidence,
    SignerIdentity,
    Status,
    TimestampEvidence,
)

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PROJECTS = ("p1", "p2", "p3")
KEYS = ("version", "rules", "trustStores", "name", "scope", "level", "trustedIdentities", "override", "owner",
        "visibility", "imageType", "bootingProject", "certificates", "keyManager", "type", "subject", "sanUri",
        "sanDns", "fingerprint", "expiry", "revocation", "timestamp", "requireCrls", "maxChainDepth", "*",
        "hostSigned", "baseTrustStores", "baseIdentities")
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 300), st.floats(allow_nan=True),
                    st.sampled_from([*KEYS, *PROJECTS, *VISIBILITIES, *IMAGE_TYPES, "strict", "audit", "skip",
                                     "permissive", "enforce", "log", "owner", "CN=a", "a" * 70, "\x00", "ü"]),
                    st.text(max_size=12))
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner,
                                                 max_size=5)), max_leaves=30)

VALID = {
    "version": 1,
    "trustStores": {"a": {"certificates": ["a.pem"]}, "b": {"keyManager": ["id"]}},
    "rules": [
        {"name": "pub", "scope": {"visibility": "public"}, "level": "strict", "trustStores": ["a"],
         "trustedIdentities": ["*"]},
        {"name": "all", "scope": "*", "level": "audit", "trustStores": ["a", "b"],
         "trustedIdentities": [{"subject": "CN=x"}]},
        {"name": "snap", "scope": {"imageType": "snapshot"}, "level": "strict", "trustStores": ["a"],
         "trustedIdentities": ["*"], "hostSigned": {"baseTrustStores": ["b"], "baseIdentities": [{"subject": "CN=y"}]}},
    ],
}


def outcome(call) -> str:
    try:
        call()
    except errors.TrustPolicyError as exc:
        assert exc.exit_code == 80 and exc.message.startswith("trust policy ")
        return "invalid"
    return "valid"


@FUZZ
@given(DOCUMENTS)
def test_any_document_is_a_policy_or_the_one_error(document):
    outcome(lambda: trust_policy.parse_policy(document, "fuzz"))


@FUZZ
@given(st.data())
def test_a_valid_policy_mutated_is_a_policy_or_the_one_error(data):
    """Walk into the valid policy to a random place and replace, delete or add something there."""
    document = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        target = document
        while True:
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            child = target[key]
            if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
                target = child
                continue
            change = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if change == "replace":
                target[key] = data.draw(DOCUMENTS)
            elif change == "delete":
                del target[key]
            elif isinstance(target, dict):
                target[data.draw(st.sampled_from(KEYS))] = data.draw(DOCUMENTS)
            else:
                target.append(copy.deepcopy(target[0]) if data.draw(st.booleans()) else data.draw(DOCUMENTS))
            break
    outcome(lambda: trust_policy.parse_policy(document, "fuzz"))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 DOCUMENTS.map(lambda d: json.dumps(d, default=str)),
                 st.builds(lambda a, b: a + b, st.sampled_from(["version: 1\nrules:\n", "a: &x [1]\nb: *x\n",
                                                                "{a: 1, a: 2}", "!!python/name:os.system ''",
                                                                "[[[[[[[[[[", "? [a]\n: 1\n", "x: !!binary 'AA=='"]),
                           st.text(max_size=50))))
def test_any_text_is_a_policy_or_the_one_error(text):
    outcome(lambda: trust_policy.load_policy_text(text, "fuzz"))


def test_deep_nesting_is_the_one_error():
    assert outcome(lambda: trust_policy.load_policy_text("[" * 100_000, "deep")) == "invalid"
    assert outcome(lambda: trust_policy.load_policy_text("a:\n" + "".join(" " * i + "- \n" for i in range(3000)),
                                                         "deep")) == "invalid"


# --- the engine's invariant --------------------------------------------------------------------------------

def scopes():
    field = {
        "owner": st.lists(st.sampled_from(PROJECTS), min_size=1, max_size=2, unique=True),
        "visibility": st.lists(st.sampled_from(VISIBILITIES), min_size=1, max_size=2, unique=True),
        "imageType": st.lists(st.sampled_from(IMAGE_TYPES), min_size=1, max_size=2, unique=True),
        "bootingProject": st.lists(st.sampled_from([*PROJECTS, "owner"]), min_size=1, max_size=2, unique=True),
    }
    return st.one_of(st.just("*"), st.fixed_dictionaries({}, optional=field).filter(bool))


IDENTITIES = st.one_of(st.just(["*"]), st.lists(st.sampled_from([
    {"subject": "CN=good"}, {"subject": "CN=bad"}, {"sanDns": "good.example"}, {"sanUri": "spiffe://good"},
    {"fingerprint": "aa" * 32}, {"fingerprint": "bb" * 32}]), min_size=1, max_size=3, unique_by=json.dumps))
HOST_SIGNED = st.fixed_dictionaries({
    "baseTrustStores": st.lists(st.sampled_from(["a", "b", "base", "tsa"]), min_size=1, max_size=2, unique=True),
}, optional={"baseIdentities": IDENTITIES})
RULES = st.lists(st.fixed_dictionaries({
    "scope": scopes(), "level": st.sampled_from([lvl.value for lvl in Level]),
    "trustStores": st.lists(st.sampled_from(["a", "b", "tsa"]), min_size=1, max_size=3, unique=True),
    "trustedIdentities": IDENTITIES,
}, optional={"override": st.fixed_dictionaries({}, optional={
    k: st.sampled_from([a.value for a in Action]) for k in ("expiry", "revocation", "timestamp")}),
    "hostSigned": HOST_SIGNED}),
    min_size=1, max_size=5)


def policy_of(rules) -> trust_policy.TrustPolicy | None:
    document = {"version": 1, "trustStores": {"a": {"certificates": ["a.pem"]}, "b": {"keyManager": ["b"]},
                                              "base": {"certificates": ["base.pem"]},
                                              "tsa": {"type": "tsa", "certificates": ["t.pem"]}},
                "rules": []}
    for i, rule in enumerate(rules):
        rule = {"name": f"r{i}", **rule}
        if rule["level"] == "skip":
            rule = {k: v for k, v in rule.items() if k in ("name", "scope", "level")}
        document["rules"].append(rule)
    used = {s for r in document["rules"] for s in r.get("trustStores", ())}
    used |= {s for r in document["rules"] for s in r.get("hostSigned", {}).get("baseTrustStores", ())}
    document["trustStores"] = {k: v for k, v in document["trustStores"].items() if k in used}
    try:
        return trust_policy.parse_policy(document, "generated")
    except errors.TrustPolicyError:
        return None


def checks():
    return st.one_of(st.just(Check()), st.just(Check.passed()),
                     st.just(Check.failed(errors.UntrustedCertificate("no path"))),
                     st.just(Check.failed(errors.CertificateRevoked("revoked"))))


FACTS = st.builds(ImageFacts, owner=st.one_of(st.none(), st.sampled_from(PROJECTS)),
                  visibility=st.one_of(st.none(), st.sampled_from(VISIBILITIES)),
                  image_type=st.sampled_from(IMAGE_TYPES),
                  booting_project=st.one_of(st.none(), st.sampled_from(PROJECTS)))
HOST_URI = "openstack://cloud/nova-compute/host-1"
SIGNERS = st.one_of(st.none(), st.builds(
    SignerIdentity, st.sampled_from(["CN=good", "CN=bad"]),
    st.sampled_from([frozenset({("2.5.4.3", "good")}), frozenset({("2.5.4.3", "bad")})]),
    st.sampled_from([frozenset(), frozenset({"spiffe://good"}), frozenset({HOST_URI}),
                     frozenset({"spiffe://good", HOST_URI})]),
    st.sampled_from([frozenset(), frozenset({"good.example"})]), st.sampled_from(["", "aa" * 32, "cc" * 32])))
PROVENANCE = st.one_of(st.none(), st.builds(
    ProvenanceEvidence, st.one_of(checks(), st.just(Check.failed(errors.ProvenanceError("edited")))),
    st.one_of(st.none(), st.sampled_from(PROJECTS)), st.sampled_from([None, "host-1"]),
    st.sampled_from([None, "base-1"]), st.one_of(checks(), st.just(Check.failed(errors.ProvenanceError("base")))),
    SIGNERS))
EVIDENCE = st.builds(Evidence, st.booleans(), SIGNERS, checks(), checks(), checks(),
                     st.one_of(st.none(), st.builds(TimestampEvidence, checks(), st.none(), st.booleans())),
                     provenance=PROVENANCE)


def provenance_passes(rule: trust_policy.Rule, facts: ImageFacts, evidence: Evidence) -> bool:
    """Every hostSigned check, restated: a verified statement of the owner's project (the booting project's at
    boot), a signed base that chained to the base stores when the snapshot was made, by a base identity."""
    host, proof = rule.host_signed, evidence.provenance
    assert host is not None
    if proof is None or proof.check.status is not Status.PASSED or proof.project_id is None:
        return False
    if proof.project_id != facts.owner or facts.booting_project not in (None, proof.project_id):
        return False
    if proof.base_image_id is None or proof.base.status is not Status.PASSED:
        return False
    return host.base_identities is None or (proof.base_signer is not None and any(
        trust_policy.identity_matches(i, proof.base_signer) for i in host.base_identities))


def trusted_by(rule: trust_policy.Rule, evidence: Evidence, facts: ImageFacts) -> bool:
    """Does ``rule`` trust the image outright: signed, chained to its stores, a trusted identity, a host's
    signature only under a hostSigned rule whose provenance checks all pass, and neither dates nor
    revocation failing where the rule enforces them (or a valid timestamp covers dates)?"""
    actions = rule.actions
    if not evidence.signed or evidence.chain.status is not Status.PASSED:
        return False
    if rule.host_signed is None and evidence.signer is not None and HOST_URI in evidence.signer.san_uris:
        return False
    if rule.host_signed is not None and not provenance_passes(rule, facts, evidence):
        return False
    if rule.trusted_identities is not None and (evidence.signer is None or not any(
            trust_policy.identity_matches(i, evidence.signer) for i in rule.trusted_identities)):
        return False
    stamped = evidence.timestamp is not None and evidence.timestamp.check.status is Status.PASSED \
        and evidence.timestamp.within_validity and actions["timestamp"] is not Action.SKIP
    if actions["expiry"] is Action.ENFORCE and evidence.dates.status is Status.FAILED and not stamped:
        return False
    if actions["timestamp"] is Action.ENFORCE and evidence.timestamp is not None \
            and evidence.timestamp.check.status is Status.FAILED:
        return False
    return not (actions["revocation"] is Action.ENFORCE and evidence.revocation.status is Status.FAILED)


@FUZZ
@given(RULES, FACTS, EVIDENCE)
def test_the_engine_never_allows_an_image_no_rule_trusts(rules, facts, evidence):
    policy = policy_of(rules)
    assume(policy is not None)
    assert policy.catch_all is None or policy.catch_all.level is not Level.SKIP
    matching = [r for r in policy.rules if trust_policy._matches(r.scope, facts)]
    try:
        selection = trust_policy.select(policy, facts)
    except errors.PolicyRefused:
        assert not matching  # refused for want of a rule only when none selects the image
        return
    rule = selection.rule
    # Exactly one rule: the selected one selects the image and lies within every other that does.
    assert rule in matching and all(rule.scope.within(other.scope) for other in matching)
    decision = trust_policy.decide(selection, evidence)
    if decision.allowed:
        assert rule.level in (Level.AUDIT, Level.SKIP) or trusted_by(rule, evidence, facts), (rule, evidence, decision)
        assert rule.level is Level.SKIP or decision.verify_integrity or not evidence.signed
    else:
        assert decision.error is not None and decision.error in [f.error for f in decision.findings]
    assert decision.trusted == (decision.allowed and not decision.findings and rule.level is not Level.SKIP)
    if rule.level is Level.STRICT and decision.allowed:
        assert trusted_by(rule, evidence, facts) and decision.trusted == (not decision.findings)
    if rule.host_signed is not None and rule.level in (Level.STRICT, Level.PERMISSIVE) and evidence.signed \
            and not provenance_passes(rule, facts, evidence):
        assert not decision.allowed and any(f.check == "authenticity" and f.action is Action.ENFORCE
                                            for f in decision.findings)
    if decision.trusted and rule.host_signed is not None:
        assert provenance_passes(rule, facts, evidence)
