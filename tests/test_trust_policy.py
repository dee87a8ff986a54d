"""The trust policy parser and engine (imgsign.trust_policy): strict validation with the place of each
mistake, the one-rule precedence, the levels and overrides, and the built-in policy of the flat options."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from imgsign import errors, trust_evidence, trust_policy
from imgsign.chain import TrustAnchors, load_crl
from imgsign.policy import Policy
from imgsign.trust_policy import Action, Check, Evidence, ImageFacts, Level, Status, TimestampEvidence
from tests.conftest import run_cli
from tests.policy_pki import make_ca, make_crl, make_leaf

BASE = {
    "version": 1,
    "trustStores": {"team": {"certificates": ["team.pem"]}, "other": {"keyManager": ["id-1"]}},
    "rules": [
        {"name": "public", "scope": {"visibility": "public"}, "level": "strict", "trustStores": ["team"],
         "trustedIdentities": ["*"]},
        {"name": "all", "scope": "*", "level": "permissive", "trustStores": ["team", "other"],
         "trustedIdentities": [{"subject": "CN=a,O=b"}, {"sanUri": "spiffe://x/y"}, {"sanDns": "Host.Example"},
                               {"fingerprint": "sha256:" + ":".join(["ab"] * 32)}]},
    ],
}


def parse(document):
    return trust_policy.parse_policy(document, "p.yaml")


def refused(document) -> str:
    with pytest.raises(errors.TrustPolicyError) as caught:
        parse(document)
    assert caught.value.exit_code == 80
    return caught.value.message


def changed(edit) -> dict:
    document = copy.deepcopy(BASE)
    edit(document)
    return document


def test_a_valid_policy_parses_with_its_identities_normalised():
    policy = parse(BASE)
    assert [r.name for r in policy.rules] == ["public", "all"] and policy.catch_all.name == "all"
    kinds = {i.kind: i.value for i in policy.rules[1].trusted_identities}
    assert kinds["fingerprint"] == "ab" * 32 and kinds["sanDns"] == "host.example"
    assert policy.rules[1].actions == {"integrity": Action.ENFORCE, "authenticity": Action.ENFORCE,
                                       "expiry": Action.LOG, "revocation": Action.LOG, "timestamp": Action.LOG}


@pytest.mark.parametrize(("edit", "where", "what"), [
    (lambda d: d.update(extra=1), "extra", "unknown key"),
    (lambda d: d["rules"][0].update(levle="strict"), "rules[0].levle", "unknown key"),
    (lambda d: d["rules"][0]["scope"].update(region="x"), "rules[0].scope.region", "unknown key"),
    (lambda d: d["trustStores"]["team"].update(crl="x"), "trustStores.team.crl", "unknown key"),
    (lambda d: d["rules"][0].update(level="paranoid"), "rules[0].level", "is not a level"),
    (lambda d: d["rules"][1].update(level="skip", trustStores=None) or d["rules"][1].pop("trustStores")
     or d["rules"][1].pop("trustedIdentities"), "rules[1].level", "catch-all"),
    (lambda d: d["rules"].append({"name": "p2", "scope": {"owner": "p1"}, "level": "audit", "trustStores": ["team"],
                                  "trustedIdentities": ["*"]}), "rules[2].scope", "overlaps the scope of rules[0]"),
    (lambda d: d["rules"].append({"name": "p2", "scope": {"visibility": ["public"]}, "level": "audit",
                                  "trustStores": ["team"], "trustedIdentities": ["*"]}),
     "rules[2].scope", "same scope as rules[0]"),
    (lambda d: d["rules"][1].update(name="public"), "rules[1].name", "also the name"),
    (lambda d: d["rules"][0].update(trustStores=["nope"]), "rules[0].trustStores[0]", "no trust store"),
    (lambda d: d["rules"][0]["scope"].update(visibility="publik"), "rules[0].scope.visibility[0]", "is not one of"),
    (lambda d: d["rules"][0].update(override={"integrity": "skip"}), "rules[0].override.integrity", "unknown key"),
    (lambda d: d["rules"][0].update(override={"expiry": "maybe"}), "rules[0].override.expiry", "not enforce"),
    (lambda d: d["rules"][0].update(trustedIdentities=[{"subject": "not a name"}]),
     "rules[0].trustedIdentities[0].subject", "RFC 4514"),
    (lambda d: d["rules"][0].update(trustedIdentities=[{"fingerprint": "abc"}]),
     "rules[0].trustedIdentities[0].fingerprint", "SHA-256"),
    (lambda d: d["rules"][0].update(trustedIdentities=[{"subject": "CN=a", "sanDns": "b"}]),
     "rules[0].trustedIdentities[0]", "exactly one"),
    (lambda d: d["rules"][0].update(trustedIdentities=[]), "rules[0].trustedIdentities", "must not be empty"),
    (lambda d: d["rules"][0].update(scope={}), "rules[0].scope", "write \"*\""),
    (lambda d: d["trustStores"].update(unused={"certificates": ["u.pem"]}), "trustStores.unused", "used by no rule"),
    (lambda d: d["trustStores"]["team"].pop("certificates"), "trustStores.team", "names no certificate"),
    (lambda d: d.update(version=2), "version", "must be 1"),
    (lambda d: d.update(version=True), "version", "must be 1"),
    (lambda d: d["trustStores"]["team"].update(maxChainDepth=300), "trustStores.team.maxChainDepth", "0 to 255"),
    (lambda d: d["trustStores"]["team"].update(type="tsa"), "rules[0].trustStores", "no trust store of type ca"),
])
def test_each_mistake_is_named_with_its_place(edit, where, what):
    message = refused(changed(edit))
    assert f"trust policy p.yaml: {where}:" in message and what in message, message


def test_skip_takes_no_trust_settings_and_overrides_do_not_apply_to_it():
    skip = {"name": "s", "scope": {"owner": "p", "visibility": "private"}, "level": "skip"}
    policy = parse(changed(lambda d: d["rules"].append(skip)))
    assert set(policy.rules[2].actions.values()) == {Action.SKIP}
    message = refused(changed(lambda d: d["rules"].append({**skip, "trustStores": ["team"]})))
    assert "rules[2].trustStores" in message


def test_yaml_duplicate_keys_aliases_and_garbage_are_refused():
    with pytest.raises(errors.TrustPolicyError, match="duplicate key 'level'.*line 3"):
        trust_policy.load_policy_text("version: 1\nrules:\n- {name: a, level: strict, level: skip, scope: '*'}\n")
    with pytest.raises(errors.TrustPolicyError, match="aliases"):
        trust_policy.load_policy_text("version: 1\nx: &a [1]\nrules: *a\n")
    for text in (b"\xff\xfe", "!!python/object:os.system x", "version: [", "- 1", "", "version: 1\nrules: []\n"):
        with pytest.raises(errors.TrustPolicyError):
            trust_policy.load_policy_text(text)
    assert trust_policy.load_policy_text(json.dumps(BASE)).rules[0].name == "public"  # JSON is YAML


def test_nested_scopes_select_the_most_specific_and_explain_why():
    document = changed(lambda d: d["rules"].extend([
        {"name": "proj", "scope": {"owner": ["p1", "p2"], "visibility": ["private"]}, "level": "audit",
         "trustStores": ["team"], "trustedIdentities": ["*"]},
        {"name": "proj-snap", "scope": {"owner": "p1", "visibility": ["private"], "imageType": "snapshot"},
         "level": "strict", "trustStores": ["team"], "trustedIdentities": ["*"]},
        {"name": "proj-own", "scope": {"owner": "p1", "visibility": "private", "imageType": "snapshot",
                                       "bootingProject": "owner"},
         "level": "strict", "trustStores": ["team"], "trustedIdentities": ["*"]}]))
    policy = parse(document)

    def rule(**facts):
        return trust_policy.select(policy, ImageFacts(**facts))

    assert rule(owner="p1", visibility="public").rule.name == "public"
    assert rule(owner="p2", visibility="private").rule.name == "proj"
    assert rule(owner="p1", visibility="private", image_type="snapshot").rule.name == "proj-snap"
    own = rule(owner="p1", visibility="private", image_type="snapshot", booting_project="p1")
    assert own.rule.name == "proj-own" and set(own.also_matching) == {"proj-snap", "proj", "all"}
    assert "more specific than" in " ".join(own.reasons)
    assert rule(owner="p1", visibility="private", image_type="snapshot", booting_project="p9").rule.name == "proj-snap"
    assert rule().rule.name == "all"  # nothing known: only the catch-all selects it


def test_no_catch_all_refuses_what_no_scope_selects():
    policy = parse(changed(lambda d: d["rules"].pop(1) and d["trustStores"].pop("other")))
    with pytest.raises(errors.PolicyRefused, match="no rule"):
        trust_policy.select(policy, ImageFacts(visibility="private"))


def test_booting_owner_overlapping_a_project_list_is_refused_conservatively():
    message = refused(changed(lambda d: d["rules"].extend([
        {"name": "a", "scope": {"bootingProject": "owner"}, "level": "strict", "trustStores": ["team"],
         "trustedIdentities": ["*"]},
        {"name": "b", "scope": {"bootingProject": "p1"}, "level": "strict", "trustStores": ["team"],
         "trustedIdentities": ["*"]}])))
    assert "overlaps" in message


# --- decisions: levels, overrides, evidence from real certificates ----------------------------------------

CA = make_ca("CN=Team CA,O=T", start=dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc))
LEAF = make_leaf(CA, "CN=a,O=b", uris=("spiffe://x/y",), dns=("host.example",))
OTHER_CA = make_ca("CN=Other CA,O=T")
STRANGER = make_leaf(OTHER_CA, "CN=a,O=b")
EXPIRED = make_leaf(CA, "CN=a,O=b", start=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                    end=dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc))
REVOKED = make_leaf(CA, "CN=a,O=b")
ANCHORS = TrustAnchors([CA.cert])
CRL_ANCHORS = TrustAnchors([CA.cert], crls=[load_crl(make_crl(CA, [REVOKED]))])


def one_rule(level: str, **extra) -> trust_policy.TrustPolicy:
    return parse({"version": 1, "trustStores": {"team": {"certificates": ["t.pem"]}},
                  "rules": [{"name": "r", "scope": "*", "level": level, "trustStores": ["team"],
                             "trustedIdentities": ["*"], **extra}]})


def decide(policy, leaf, anchors=ANCHORS, timestamp=None):
    selection = trust_policy.select(policy, ImageFacts())
    return trust_policy.decide(selection, trust_evidence.gather(leaf.cert, anchors, selection.rule, Policy(),
                                                                timestamp))


def test_levels_on_an_untrusted_signer():
    assert not decide(one_rule("strict"), STRANGER).allowed
    assert not decide(one_rule("permissive"), STRANGER).allowed
    audit = decide(one_rule("audit"), STRANGER)
    assert audit.allowed and not audit.trusted and audit.verify_integrity and audit.verdict == "allowed-with-warnings"


def test_expiry_override():
    strict = decide(one_rule("strict"), EXPIRED)
    assert not strict.allowed and strict.findings[0].check == "expiry"
    assert isinstance(strict.error, errors.UntrustedCertificate)  # as verify --trusted has always said it
    logged = decide(one_rule("strict", override={"expiry": "log"}), EXPIRED)
    assert logged.allowed and [f.check for f in logged.warnings] == ["expiry"]
    assert decide(one_rule("strict", override={"expiry": "skip"}), EXPIRED).trusted
    assert not decide(one_rule("permissive", override={"expiry": "enforce"}), EXPIRED).allowed
    # An expired certificate from another CA is untrusted, whatever the expiry action.
    assert not decide(one_rule("strict", override={"expiry": "skip"}),
                      make_leaf(OTHER_CA, "CN=x", end=dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc),
                                start=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))).allowed


def test_revocation_override():
    strict = decide(one_rule("strict"), REVOKED, CRL_ANCHORS)
    assert not strict.allowed and isinstance(strict.error, errors.CertificateRevoked)
    assert decide(one_rule("strict"), LEAF, CRL_ANCHORS).trusted
    logged = decide(one_rule("strict", override={"revocation": "log"}), REVOKED, CRL_ANCHORS)
    assert logged.allowed and [f.check for f in logged.warnings] == ["revocation"]
    skipped = trust_evidence.gather(REVOKED.cert, CRL_ANCHORS, one_rule("strict", override={"revocation": "skip"})
                                    .rules[0])
    assert skipped.revocation.status is Status.NOT_CHECKED


def test_timestamp_hook_lets_an_expired_certificate_pass_only_with_a_valid_timestamp():
    policy = one_rule("strict")
    when = dt.datetime(2020, 6, 1, tzinfo=dt.timezone.utc)
    good = TimestampEvidence(Check.passed(), when, within_validity=True)
    assert decide(policy, EXPIRED, timestamp=good).allowed
    bad = TimestampEvidence(Check.failed(errors.PolicyRefused("token does not verify")))
    refused_ = decide(policy, EXPIRED, timestamp=bad)
    assert not refused_.allowed and refused_.findings[0].check == "timestamp"
    assert decide(one_rule("strict", override={"timestamp": "skip"}), EXPIRED, timestamp=good).allowed is False


@pytest.mark.parametrize(("identity", "ok"), [
    ({"subject": "O=b,CN=a"}, True),  # attribute order does not matter
    ({"subject": "CN=a"}, False),  # all attributes must match
    ({"sanUri": "spiffe://x/y"}, True), ({"sanUri": "spiffe://x/z"}, False),
    ({"sanDns": "HOST.example"}, True), ({"fingerprint": LEAF.fingerprint}, True),
    ({"fingerprint": STRANGER.fingerprint}, False),
])
def test_trusted_identities(identity, ok):
    decision = decide(one_rule("strict", trustedIdentities=[identity]), LEAF)
    assert decision.allowed is ok
    if not ok:
        assert isinstance(decision.error, errors.PolicyRefused) and decision.error.exit_code == 81


def test_unsigned_images_and_skip():
    policy = parse(changed(lambda d: d["rules"].append({"name": "s", "scope": {"owner": "p", "visibility": "shared"},
                                                        "level": "skip"})))
    unsigned = trust_policy.decide(trust_policy.select(policy, ImageFacts()), Evidence(signed=False))
    assert not unsigned.allowed and isinstance(unsigned.error, errors.UnsignedImage)
    skipped = trust_policy.verify(policy, ImageFacts(owner="p", visibility="shared"), lambda rule: pytest.fail("no evidence under skip"))
    assert skipped.allowed and not skipped.verify_integrity and skipped.verdict == "skipped"
    with pytest.raises(errors.UnsignedImage):
        trust_policy.verify(policy, ImageFacts(), lambda rule: Evidence(signed=False))


def test_builtin_policy_is_one_catch_all_strict_rule():
    trusted = trust_policy.builtin_policy(True)
    assert len(trusted.rules) == 1 and trusted.rules[0].scope.catch_all
    assert trusted.rules[0].level is Level.STRICT and trusted.rules[0].ca_stores
    signature_only = trust_policy.builtin_policy(False).rules[0]
    evidence = trust_evidence.gather(STRANGER.cert, None, signature_only)
    decision = trust_policy.decide(trust_policy.select(trust_policy.builtin_policy(False), ImageFacts()), evidence)
    assert decision.allowed and decision.trusted  # no --trusted: any valid signer, as before
    expired = trust_evidence.gather(EXPIRED.cert, None, signature_only)
    assert expired.dates.status is Status.FAILED and isinstance(expired.dates.error, errors.CertificateExpired)


# --- the CLI -----------------------------------------------------------------------------------------------

def test_policy_check_cli(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(BASE))
    ok = run_cli("policy", "check", good, "--json")
    assert ok.code == 0 and ok.json()["valid"] and ok.json()["catch_all"] == "all", ok
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    scope: '*'\n    level: skip\n")
    result = run_cli("policy", "check", bad)
    assert result.code == errors.TrustPolicyError.exit_code and "rules[0].level" in result.stderr, result
    stores = run_cli("policy", "check", good, "--stores", env={"IMGSIGN_CONFIG": "",
                                                               "IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3")})
    assert stores.code == errors.InputError.exit_code and "team.pem" in stores.stderr, stores


def test_policy_explain_cli(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps(BASE))
    shown = tmp_path / "show.json"
    shown.write_text(json.dumps({"id": "i1", "owner": "p1", "visibility": "public", "properties": {}}))
    words = run_cli("policy", "explain", "--policy", policy, "--properties", shown)
    assert words.code == 0 and "rule public (rules[0]) applies" in words.stdout, words
    as_json = run_cli("policy", "explain", "--policy", policy, "--properties", shown, "--visibility", "private",
                      "--json").json()
    assert as_json["rule"]["name"] == "all" and as_json["facts"]["visibility"] == "private"
    builtin = run_cli("policy", "explain", "--visibility", "public", "--json", env={"IMGSIGN_CONFIG": ""})
    assert builtin.code == 0 and builtin.json()["rule"]["name"] == "built-in", builtin


def test_verify_refuses_policy_with_flat_options(tmp_path, sample_image):
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps(BASE))
    result = run_cli("verify", sample_image, "--properties", policy, "--policy", policy, "--trusted", "x")
    assert result.code == 2 and "--policy replaces" in result.stderr


def _signed_file(tmp_path, leaf):
    image = tmp_path / "disk.img"
    image.write_bytes(b"data" * 1000)
    leaf.write(tmp_path / "signer", "leaf")
    result = run_cli("sign", image, "--key", tmp_path / "signer" / "leaf.key", "--cert",
                     tmp_path / "signer" / "leaf.pem", "--cert-uuid", "cert-1")
    assert result.code == 0, result
    props = tmp_path / "props.json"
    props.write_text(result.stdout)
    return image, props


def test_verify_under_config_policy_file_and_a_skip_rule(tmp_path):
    CA.write(tmp_path, "ca")
    image, props = _signed_file(tmp_path, STRANGER)
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps({"version": 1, "trustStores": {"team": {"certificates": ["ca.pem"]}},
                                  "rules": [{"name": "lab", "scope": {"owner": "lab"}, "level": "skip"},
                                            {"name": "all", "scope": "*", "level": "strict",
                                             "trustStores": ["team"], "trustedIdentities": ["*"]}]}))
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[imgsign]\npolicy_file = {policy}\n")
    env = {"IMGSIGN_CONFIG": str(conf), "IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3")}
    base = ("verify", image, "--properties", props, "--cert", tmp_path / "signer" / "leaf.pem")
    refused = run_cli(*base, "--json", env=env)  # the stranger does not chain to the team CA
    assert refused.code == errors.UntrustedCertificate.exit_code and refused.json()["policy"]["rule"] == "all"
    skipped = run_cli(*base, "--owner", "lab", "--json", env=env)
    assert skipped.code == 0 and skipped.json()["reason"] == "not-verified", skipped
    assert skipped.json()["policy"]["verdict"] == "skipped" and not skipped.json()["valid"]
    conf.write_text(f"[imgsign]\npolicy_file = {policy}\ntrusted_certificate_ids = x\n")
    both = run_cli(*base, env=env)
    assert both.code == errors.InputError.exit_code and "set one" in both.stderr, both
    # --trusted-file replaces the configured policy (the flat options, as before).
    conf.write_text(f"[imgsign]\npolicy_file = {policy}\n")
    OTHER_CA.write(tmp_path, "other-ca")
    flat = run_cli(*base, "--trusted-file", tmp_path / "other-ca.pem", "--json", env=env)
    assert flat.code == 0 and flat.json()["policy"] is None, flat


def test_the_online_revocation_hook_answers_first_and_the_crls_decide_when_it_does_not():
    rule = one_rule("strict").rules[0]
    asked = []

    def revoked(path):
        asked.append([c.subject.rfc4514_string() for c in path])
        return Check.failed(errors.CertificateRevoked("revoked by OCSP"))

    evidence = trust_evidence.gather(LEAF.cert, ANCHORS, rule, online_revocation=revoked)
    assert evidence.revocation.status is Status.FAILED and asked == [["CN=a,O=b", "CN=Team CA,O=T"]]
    unknown = trust_evidence.gather(REVOKED.cert, CRL_ANCHORS, rule, online_revocation=lambda path: Check())
    assert isinstance(unknown.revocation.error, errors.CertificateRevoked)  # fell back to the CRL
    skipping = one_rule("strict", override={"revocation": "skip"}).rules[0]
    trust_evidence.gather(LEAF.cert, ANCHORS, skipping, online_revocation=lambda path: pytest.fail("asked"))
