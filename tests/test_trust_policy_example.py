"""The issue's example sentences, as ONE policy file (doc/source/user/trust-policy.example.yaml, shown
verbatim in the README), proven sentence by sentence: through the engine with the example file's own
trust stores, and through ``imgsign verify --policy`` on signed files (sentence 5 with timestamps from a
real RFC 3161 TSA, ``openssl ts`` on 127.0.0.1)."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import time

import pytest

from imgsign import errors, trust_evidence, trust_policy
from imgsign.keymanager.anchors import rule_anchors
from imgsign.trust_policy import ImageFacts
from tests.conftest import REPO, pki, run_cli
from tests.policy_pki import make_ca, make_leaf
from tests.servers.tsa import issue_tsa, tsa

EXAMPLE = REPO / "doc" / "source" / "user" / "trust-policy.example.yaml"
PROJECT_A = "8f3a1c0e5b7d4e2f9a6b1c3d5e7f9a0b"
PROJECT_X = "c4e2a9b7d1f34a8e9b0c2d4f6a8b0c1e"
PROJECT_B = "0b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The example file copied as it is beside the CAs it names (ca/*.pem), and signers under each CA."""
    root = tmp_path_factory.mktemp("example")
    shutil.copyfile(EXAMPLE, root / "policy.yaml")
    cas = {"image-team": make_ca("CN=Image Team CA,O=Example Cloud"),
           "project-a": make_ca("CN=Project A CA,O=Project A"),
           "compute-hosts": make_ca("CN=Compute Hosts CA,O=Example Cloud"),
           "outsider": make_ca("CN=Someone Else CA,O=Elsewhere")}
    for name, ca in cas.items():
        ca.write(root / "ca", name)
    shutil.copyfile(pki("root-ca.pem"), root / "ca" / "tsa.pem")  # our-tsa: the test PKI's root issues the TSA
    signers = {"release": make_leaf(cas["image-team"], "CN=Image Team Release Signing,O=Example Cloud"),
               "team-test": make_leaf(cas["image-team"], "CN=Image Team Test,O=Example Cloud"),
               "project-a": make_leaf(cas["project-a"], "CN=Project A builds,O=Project A"),
               "compute": make_leaf(cas["compute-hosts"], "CN=compute-7.example.net,O=Example Cloud"),
               "outsider": make_leaf(cas["outsider"], "CN=Image Team Release Signing,O=Example Cloud")}
    for name, leaf in signers.items():
        leaf.write(root / "signers", name)
    policy = trust_policy.load_policy_text((root / "policy.yaml").read_bytes(), str(root / "policy.yaml"))
    return root, policy, signers


def decide(world, signer: str, **facts) -> trust_policy.Decision:
    root, policy, signers = world
    selection = trust_policy.select(policy, ImageFacts(**facts))
    rule = selection.rule
    evidence = trust_evidence.gather(signers[signer].cert, rule_anchors(rule, str(root), None), rule)
    return trust_policy.decide(selection, evidence)


def test_the_example_file_is_valid_and_every_rule_is_reachable(world):
    _, policy, _ = world
    assert [r.name for r in policy.rules] == ["public-images", "project-a-private", "own-snapshots",
                                              "other-snapshots", "project-x-audit", "default"]
    assert policy.catch_all is not None and policy.catch_all.name == "default"
    assert run_cli("policy", "check", EXAMPLE).code == 0


def test_sentence_1_public_images_must_be_signed_by_the_image_teams_ca(world):
    for signer in ("release", "team-test"):
        ok = decide(world, signer, owner=PROJECT_A, visibility="public")
        assert ok.rule.name == "public-images" and ok.allowed and ok.trusted, ok
    for signer in ("project-a", "compute", "outsider"):  # even project A's own public image, even a snapshot
        for image_type in ("image", "snapshot"):
            refused = decide(world, signer, owner=PROJECT_A, visibility="public", image_type=image_type,
                             booting_project=PROJECT_A)
            assert refused.rule.name == "public-images" and not refused.allowed, refused
            assert isinstance(refused.error, errors.UntrustedCertificate)


def test_sentence_2_a_projects_private_images_may_be_signed_by_its_own_ca(world):
    for visibility in ("private", "shared"):
        ok = decide(world, "project-a", owner=PROJECT_A, visibility=visibility)
        assert ok.rule.name == "project-a-private" and ok.allowed and ok.trusted
        assert decide(world, "release", owner=PROJECT_A, visibility=visibility).allowed  # the image team too
        other = decide(world, "project-a", owner=PROJECT_B, visibility=visibility)  # not for another project
        assert other.rule.name == "default" and not other.allowed
    assert not decide(world, "outsider", owner=PROJECT_A, visibility="private").allowed


def test_sentence_3_compute_signed_snapshots_are_trusted_only_in_their_own_project(world):
    home = decide(world, "compute", owner=PROJECT_A, visibility="private", image_type="snapshot",
                  booting_project=PROJECT_A)
    assert home.rule.name == "own-snapshots" and home.allowed and home.trusted
    for booting in (PROJECT_B, None):  # another project boots it, or it is checked outside a boot
        away = decide(world, "compute", owner=PROJECT_A, visibility="shared", image_type="snapshot",
                      booting_project=booting)
        assert away.rule.name == "other-snapshots" and not away.allowed, away
        assert isinstance(away.error, errors.UntrustedCertificate)
    # Image-team-signed snapshots stay trusted everywhere.
    assert decide(world, "release", owner=PROJECT_A, visibility="shared", image_type="snapshot",
                  booting_project=PROJECT_B).allowed


def test_sentence_4_project_x_is_in_audit_mode(world):
    logged = decide(world, "outsider", owner=PROJECT_X, visibility="private")
    assert logged.rule.name == "project-x-audit" and logged.allowed and not logged.trusted
    assert [f.check for f in logged.warnings] == ["authenticity"] and logged.verify_integrity
    # Only project X: the same image of another project is refused.
    assert not decide(world, "outsider", owner=PROJECT_B, visibility="private").allowed


def test_the_catch_all_trusts_only_the_release_identity(world):
    assert decide(world, "release", owner=PROJECT_B, visibility="private").allowed
    team_test = decide(world, "team-test", owner=PROJECT_B, visibility="private")
    assert not team_test.allowed and isinstance(team_test.error, errors.PolicyRefused)
    assert "trusted identities" in team_test.error.message
    # A certificate with the same subject from another CA is no substitute.
    assert not decide(world, "outsider", owner=PROJECT_B, visibility="private").allowed


# --- the same, through `imgsign verify --policy` --------------------------------------------------------


@pytest.fixture(scope="module")
def signed(world, tmp_path_factory):
    root, _, _ = world
    image = tmp_path_factory.mktemp("images") / "disk.img"
    image.write_bytes(b"an image of the example cloud\n" * 1000)
    env = {"IMGSIGN_KEYSTORE": str(root / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(root)}
    props = {}
    for name in ("release", "project-a", "compute", "outsider"):
        result = run_cli("sign", image, "--key", root / "signers" / f"{name}.key", "--cert",
                         root / "signers" / f"{name}.pem", "--cert-uuid", f"cert-{name}", env=env)
        assert result.code == 0, result
        props[name] = root / f"{name}.json"
        props[name].write_text(result.stdout)
    return image, props, env


def verify(world, signed, signer, *facts):
    root, _, _ = world
    image, props, env = signed
    return run_cli("verify", image, "--properties", props[signer], "--cert", root / "signers" / f"{signer}.pem",
                   "--policy", root / "policy.yaml", "--json", *facts, env=env)


def test_verify_cli_applies_each_sentence(world, signed):
    ok = verify(world, signed, "release", "--visibility", "public")
    assert ok.code == 0, ok
    assert ok.json()["policy"]["rule"] == "public-images" and ok.json()["policy"]["verdict"] == "trusted"
    refused = verify(world, signed, "project-a", "--visibility", "public", "--owner", PROJECT_A)
    assert refused.code == errors.UntrustedCertificate.exit_code, refused
    assert refused.json()["policy"]["verdict"] == "refused"
    assert verify(world, signed, "project-a", "--visibility", "private", "--owner", PROJECT_A).code == 0
    snapshot = ("--visibility", "private", "--owner", PROJECT_A, "--image-type", "snapshot")
    assert verify(world, signed, "compute", *snapshot, "--booting-project", PROJECT_A).code == 0
    away = verify(world, signed, "compute", *snapshot, "--booting-project", PROJECT_B)
    assert away.code == errors.UntrustedCertificate.exit_code and away.json()["policy"]["rule"] == "other-snapshots"
    audit = verify(world, signed, "outsider", "--visibility", "private", "--owner", PROJECT_X)
    assert audit.code == 0, audit
    assert "warning: trust policy rule project-x-audit (audit) logs: authenticity" in audit.stderr
    assert audit.json()["policy"]["verdict"] == "allowed-with-warnings"


def test_verify_cli_takes_the_facts_from_the_image_show_document(world, signed):
    root, _, _ = world
    image, props, env = signed
    document = {"id": "img-1", "owner": PROJECT_A, "visibility": "private",
                "properties": {**json.loads(props["compute"].read_text()), "image_type": "snapshot"}}
    shown = root / "show.json"
    shown.write_text(json.dumps(document))
    base = ("verify", image, "--properties", shown, "--cert", root / "signers" / "compute.pem",
            "--policy", root / "policy.yaml", "--json")
    away = run_cli(*base, env=env)
    assert away.code == errors.UntrustedCertificate.exit_code and away.json()["policy"]["rule"] == "other-snapshots"
    home = run_cli(*base, "--booting-project", PROJECT_A, env=env)
    assert home.code == 0 and home.json()["policy"]["rule"] == "own-snapshots", home


def test_an_image_signed_with_a_valid_signature_still_must_match_its_data_under_audit(world, signed, tmp_path):
    root, _, _ = world
    _, props, env = signed
    other = tmp_path / "other.img"
    other.write_bytes(b"not the signed image")
    result = run_cli("verify", other, "--properties", props["outsider"], "--cert",
                     root / "signers" / "outsider.pem", "--policy", root / "policy.yaml", "--owner", PROJECT_X,
                     "--visibility", "private", env=env)
    assert result.code == errors.InvalidSignature.exit_code, result


def test_the_readme_shows_the_example_file_verbatim():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert EXAMPLE.read_text() in blocks, "README.md's trust policy must be doc/source/user/trust-policy.example.yaml"


# --- sentence 5: "a signature made while the certificate was valid stays valid after it expires" --------

#: Seconds the short-lived release certificate lives: long enough to sign with a timestamp, then it expires.
SHORT_LIFE = 12


def test_sentence_5_a_timestamped_signature_outlives_its_certificate(world, signed, tmp_path):
    root, _, _ = world
    image, _, env = signed
    now = datetime.datetime.now(datetime.timezone.utc)
    image_team = make_ca("CN=Image Team CA,O=Example Cloud")  # the same file the policy names, re-read below
    image_team.write(tmp_path / "ca", "image-team")
    policy_dir = tmp_path
    shutil.copyfile(EXAMPLE, policy_dir / "policy.yaml")
    shutil.copyfile(pki("root-ca.pem"), policy_dir / "ca" / "tsa.pem")
    for name in ("project-a", "compute-hosts"):
        shutil.copyfile(root / "ca" / f"{name}.pem", policy_dir / "ca" / f"{name}.pem")
    short = make_leaf(image_team, "CN=Image Team Release Signing,O=Example Cloud",
                      start=now - datetime.timedelta(minutes=1), end=now + datetime.timedelta(seconds=SHORT_LIFE))
    cert, key = short.write(tmp_path / "signers", "short")
    tsa_key, tsa_cert = issue_tsa(tmp_path, "tsa", pki("root-ca.key"), pki("root-ca.pem"))
    with tsa(tsa_key, tsa_cert, tmp_path / "tsa-run") as url:
        stamped = run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", "cert-short", "--tsa", url,
                          env=env)
        assert stamped.code == 0, stamped
        bare = run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", "cert-short", env=env)
        assert bare.code == 0, bare
    (tmp_path / "stamped.json").write_text(stamped.stdout)
    (tmp_path / "bare.json").write_text(bare.stdout)
    assert datetime.datetime.now(datetime.timezone.utc) < short.cert.not_valid_after_utc, "signing took too long"
    time.sleep(max(0.0, (short.cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc))
                   .total_seconds()) + 1.5)

    def check(props: str, *facts: str):
        return run_cli("verify", image, "--properties", tmp_path / props, "--cert", cert, "--policy",
                       policy_dir / "policy.yaml", "--json", *facts, env=env)

    for facts in (("--visibility", "public"), ("--visibility", "private", "--owner", PROJECT_B)):
        ok = check("stamped.json", *facts)
        assert ok.code == 0, ok
        assert ok.json()["policy"]["verdict"] == "trusted" and ok.json()["timestamp"]["status"] == "valid", ok
        refused = check("bare.json", *facts)
        assert refused.code != 0 and refused.json()["policy"]["verdict"] == "refused", refused
        assert [f["check"] for f in refused.json()["policy"]["findings"]] == ["expiry"], refused
