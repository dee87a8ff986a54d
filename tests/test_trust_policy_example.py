"""The issue's example sentences, as ONE policy file (doc/source/user/trust-policy.example.yaml, shown
verbatim in the README), proven sentence by sentence: through the engine with the example file's own
trust stores, and through ``imgsign verify --policy`` on signed files (sentence 3 with a real host-signed
snapshot: a compute host's certificate with the URI SAN openstack://<cloud>/nova-compute/<host> and the
provenance statement the gateway signs, from a base the image team signed; sentence 5 with timestamps from a
real RFC 3161 TSA, ``openssl ts`` on 127.0.0.1)."""

from __future__ import annotations

import base64

import datetime
import json
import re
import shutil
import time

import pytest

from imgsign import errors, trust_evidence, trust_policy
from imgsign.keymanager.anchors import base_anchors, rule_anchors
from imgsign.trust_policy import ImageFacts
from tests.conftest import REPO, pki, run_cli
from tests.host_signing import base_image, host_signed, make_host, sign_image
from tests.policy_pki import make_ca, make_leaf
from tests.servers.tsa import issue_tsa, tsa

EXAMPLE = REPO / "doc" / "source" / "user" / "trust-policy.example.yaml"
PROJECT_A = "8f3a1c0e5b7d4e2f9a6b1c3d5e7f9a0b"
PROJECT_X = "c4e2a9b7d1f34a8e9b0c2d4f6a8b0c1e"
PROJECT_B = "0b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e"
SNAPSHOT_ID = "5f1c2a8e-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
BASE_ID = "1d2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6"
DISK = b"an image of the example cloud\n" * 1000


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
               "compute": make_host(cas["compute-hosts"], "compute-7.example.net"),
               "outsider": make_leaf(cas["outsider"], "CN=Image Team Release Signing,O=Example Cloud")}
    for name, leaf in signers.items():
        leaf.write(root / "signers", name)
    policy = trust_policy.load_policy_text((root / "policy.yaml").read_bytes(), str(root / "policy.yaml"))
    return root, policy, signers


def snapshot(world, base: str = "release", project: str = PROJECT_A) -> dict[str, str]:
    """What the gateway sets on project A's snapshot SNAPSHOT_ID of DISK: signed by compute host 7, with the
    provenance naming the base image BASE_ID, signed by ``base`` (its certificate stored as cert-<base>)."""
    _, _, signers = world
    return host_signed(DISK, signers["compute"], "cert-compute", image_id=SNAPSHOT_ID, project=project,
                       base=base_image(BASE_ID, signers[base], f"cert-{base}"), host_name="compute-7")


def decide(world, signer: str, properties: dict[str, str] | None = None, **facts) -> trust_policy.Decision:
    """The decision on an image signed by ``signer`` (``properties``: its Glance properties, for the
    provenance; the base certificates come from the signers, by the id cert-<name>)."""
    root, policy, signers = world
    selection = trust_policy.select(policy, ImageFacts(**facts))
    rule = selection.rule
    properties = properties or {}
    evidence = trust_evidence.image_evidence(
        properties, base64.b64decode(properties.get("img_signature", "")), signers[signer].cert, rule,
        rule_anchors(rule, str(root), None), (), base_anchors=base_anchors(rule, str(root), None),
        image_id=facts.get("image_id"),
        base_certificate=lambda cert_id: signers[cert_id.removeprefix("cert-")].cert).evidence
    return trust_policy.decide(selection, evidence)


def test_the_example_file_is_valid_and_every_rule_is_reachable(world):
    _, policy, _ = world
    assert [r.name for r in policy.rules] == ["public-images", "project-a-private", "host-snapshots",
                                              "project-x-audit", "default"]
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
    facts = {"owner": PROJECT_A, "visibility": "private", "image_type": "snapshot", "image_id": SNAPSHOT_ID}
    # Booted by its owner, or checked outside a boot (Glance's import, audit): trusted.
    for booting in (PROJECT_A, None):
        home = decide(world, "compute", snapshot(world), **facts, booting_project=booting)
        assert home.rule.name == "host-snapshots" and home.rule.host_signed is not None
        assert home.allowed and home.trusted, home
        assert any(r.startswith(f"host-signed on compute-7 for project {PROJECT_A} from base {BASE_ID}")
                   for r in home.reasons)
    # Booted by another project: refused, exit 90.
    away = decide(world, "compute", snapshot(world), **{**facts, "visibility": "shared"}, booting_project=PROJECT_B)
    assert away.rule.name == "host-snapshots" and not away.allowed, away
    assert isinstance(away.error, errors.ProvenanceError) and "boots an image host-signed for project" in \
        away.error.message
    # Not host-signed for its owner: project B's snapshot claimed for A, a base signed outside the image
    # team's CA, no statement at all: refused, exit 90.
    claimed = decide(world, "compute", snapshot(world, project=PROJECT_B), **facts, booting_project=PROJECT_A)
    assert not claimed.allowed and isinstance(claimed.error, errors.ProvenanceError)
    assert claimed.error.exit_code == 90 and "a host signature vouches only inside the project" in claimed.error.message
    foreign_base = decide(world, "compute", snapshot(world, base="outsider"), **facts, booting_project=PROJECT_A)
    assert not foreign_base.allowed and "did not chain to the baseTrustStores" in foreign_base.error.message
    bare = decide(world, "compute", sign_image(DISK, world[2]["compute"], "cert-compute"), **facts,
                  booting_project=PROJECT_A)
    assert not bare.allowed and isinstance(bare.error, errors.ProvenanceError)
    # A host-signed image under the public or the default rule: refused.
    for other in ({"visibility": "public"}, {"owner": PROJECT_B, "image_type": "image"}):
        elsewhere = decide(world, "compute", snapshot(world), **{**facts, **other}, booting_project=PROJECT_A)
        assert elsewhere.rule.name in ("public-images", "default") and not elsewhere.allowed, elsewhere
    # A private snapshot someone signed outside a compute host (the image team, say) has no provenance: refused;
    # a public snapshot falls under public-images, where the image team's signature is what counts.
    assert not decide(world, "release", owner=PROJECT_A, visibility="shared", image_type="snapshot",
                      booting_project=PROJECT_A).allowed
    assert decide(world, "release", owner=PROJECT_A, visibility="public", image_type="snapshot",
                  booting_project=PROJECT_B).allowed


def test_sentence_3_a_host_signature_vouches_under_no_other_rule(world):
    """The default rule with the compute hosts' CA added is still no hostSigned rule: a host's signature is
    refused there, its provenance valid or not (81)."""
    root, policy, signers = world
    default = policy.catch_all
    stores = (*default.trust_stores, next(s for s in policy.rules[2].trust_stores if s.name == "compute-hosts"))
    widened = trust_policy.Rule("default", default.scope, default.level, stores, None)
    properties = snapshot(world)
    evidence = trust_evidence.image_evidence(properties, base64.b64decode(properties["img_signature"]),
                                             signers["compute"].cert, widened,
                                             rule_anchors(widened, str(root), None), ()).evidence
    refused = trust_policy.decide(trust_policy.select(trust_policy.TrustPolicy((widened,)), ImageFacts()), evidence)
    assert not refused.allowed and isinstance(refused.error, errors.PolicyRefused)
    assert refused.error.exit_code == 81 and "is a compute host" in refused.error.message


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
    image.write_bytes(DISK)
    env = {"IMGSIGN_KEYSTORE": str(root / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(root)}
    props = {"compute": root / "compute.json"}
    props["compute"].write_text(json.dumps(snapshot(world)))  # what the gateway sets: signature and provenance
    for name in ("release", "project-a", "outsider"):
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
                   "--base-certificate", root / "signers" / "release.pem", "--policy", root / "policy.yaml", "--json",
                   *facts, env=env)


def test_verify_cli_applies_each_sentence(world, signed):
    ok = verify(world, signed, "release", "--visibility", "public")
    assert ok.code == 0, ok
    assert ok.json()["policy"]["rule"] == "public-images" and ok.json()["policy"]["verdict"] == "trusted"
    refused = verify(world, signed, "project-a", "--visibility", "public", "--owner", PROJECT_A)
    assert refused.code == errors.UntrustedCertificate.exit_code, refused
    assert refused.json()["policy"]["verdict"] == "refused"
    assert verify(world, signed, "project-a", "--visibility", "private", "--owner", PROJECT_A).code == 0
    snapshot = ("--visibility", "private", "--owner", PROJECT_A, "--image-type", "snapshot")
    home = verify(world, signed, "compute", *snapshot, "--booting-project", PROJECT_A)
    assert home.code == 0 and home.json()["policy"]["verdict"] == "trusted", home
    assert any("host-signed on compute-7" in r for r in home.json()["policy"]["reasons"])
    away = verify(world, signed, "compute", *snapshot, "--booting-project", PROJECT_B)
    assert away.code == errors.ProvenanceError.exit_code and away.json()["policy"]["rule"] == "host-snapshots"
    public = verify(world, signed, "compute", "--visibility", "public", "--owner", PROJECT_A, "--image-type",
                    "snapshot")
    assert public.code != 0 and public.json()["policy"]["rule"] == "public-images", public
    audit = verify(world, signed, "outsider", "--visibility", "private", "--owner", PROJECT_X)
    assert audit.code == 0, audit
    assert "warning: trust policy rule project-x-audit (audit) logs: authenticity" in audit.stderr
    assert audit.json()["policy"]["verdict"] == "allowed-with-warnings"


def test_verify_cli_takes_the_facts_from_the_image_show_document(world, signed):
    root, _, _ = world
    image, props, env = signed
    document = {"id": SNAPSHOT_ID, "owner": PROJECT_A, "visibility": "private",
                "properties": {**json.loads(props["compute"].read_text()), "image_type": "snapshot"}}
    shown = root / "show.json"
    shown.write_text(json.dumps(document))
    base = ("verify", image, "--properties", shown, "--cert", root / "signers" / "compute.pem",
            "--base-certificate", root / "signers" / "release.pem", "--policy", root / "policy.yaml", "--json")
    unbooted = run_cli(*base, env=env)  # as Glance's import and audit see it: its owner made it
    assert unbooted.code == 0 and unbooted.json()["policy"]["rule"] == "host-snapshots", unbooted
    away = run_cli(*base, "--booting-project", PROJECT_B, env=env)
    assert away.code == errors.ProvenanceError.exit_code and away.json()["policy"]["rule"] == "host-snapshots"
    home = run_cli(*base, "--booting-project", PROJECT_A, env=env)
    assert home.code == 0 and home.json()["policy"]["rule"] == "host-snapshots", home
    # The statement names image SNAPSHOT_ID: under another image's id it is refused.
    shown.write_text(json.dumps({**document, "id": "img-1"}))
    moved = run_cli(*base, "--booting-project", PROJECT_A, env=env)
    assert moved.code == errors.ProvenanceError.exit_code and "belongs to another image" in moved.json()["message"]
    # A base certificate that is not the one the statement names.
    shown.write_text(json.dumps(document))
    wrong = run_cli(*[root / "signers" / "outsider.pem" if a == root / "signers" / "release.pem" else a for a in base],
                    "--booting-project", PROJECT_A, env=env)
    assert wrong.code == errors.ProvenanceError.exit_code and "is not the one that signed" in wrong.json()["message"]


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
