"""The trust policy on the compute side: the boot hook chooses the rule by the image facts recorded at download
and the booting project in the domain's Nova metadata (issue 22's third sentence, at boot)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as case
from hypothesis import strategies as st

from imgsign import errors, load_certificate, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.chain import TrustAnchors
from imgsign.compute.boot import BootPolicy, verify_for_boot
from imgsign.compute.boot_policy import check_record
from imgsign.compute.image_cache import add_to_cache
from imgsign.compute.libvirt_hook import load_config, parse_domain
from imgsign.compute.trust_record import RecordStore, TrustRecord, cache_name
from imgsign.errors import ImgsignError
from imgsign.policy import Policy
from imgsign.trust_policy import load_policy_text
from tests.conftest import CERT_UUID, cert_of, run_cli
from tests.policy_pki import make_ca, make_leaf
from tests.test_boot_hook import Host, domain_xml
from tests.test_fuzz_state import VALID_BODY, json_values
from tests.test_trust_policy_example import EXAMPLE, PROJECT_A, PROJECT_B, PROJECT_X

DATA = os.urandom(1024 * 1024 + 5)
SNAPSHOT_A = {"owner": PROJECT_A, "visibility": "private", "image_type": "snapshot"}
PRIVATE_A = {"owner": PROJECT_A, "visibility": "private", "image_type": "image"}
OUTSIDER_CA = make_ca("CN=Elsewhere CA")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("boot-example")
    shutil.copyfile(EXAMPLE, root / "policy.yaml")
    cas = {name: make_ca(f"CN={name} CA,O=Example") for name in ("image-team", "project-a", "compute-hosts")}
    for name, ca in cas.items():
        ca.write(root / "ca", name)
    leaves = {"compute": make_leaf(cas["compute-hosts"], "CN=compute-7,O=Example"),
              "project-a": make_leaf(cas["project-a"], "CN=Project A builds,O=Example"),
              "outsider": make_leaf(OUTSIDER_CA, "CN=someone")}
    policy = load_policy_text((root / "policy.yaml").read_bytes(), str(root / "policy.yaml"))
    return root, policy, cas, leaves


def cache(tmp_path, example, leaf, image_id, facts, anchored=True):
    _, _, cas, leaves = example
    records = RecordStore(str(tmp_path / "state"))
    props = sign([DATA], load_private_key(leaves[leaf].key_pem), CERT_UUID, HashMethod.SHA384)
    anchors = TrustAnchors([ca.cert for ca in cas.values()]) if anchored else None  # every CA store of the policy
    add_to_cache([DATA], image_id, props, leaves[leaf].cert, records, instances_path=str(tmp_path), anchors=anchors,
                 policy=Policy(), immutable=False, image_facts=facts)
    return records, str(tmp_path / "_base" / cache_name(image_id))


def test_the_booting_project_chooses_the_snapshot_rule(tmp_path, example):
    """Booted by its owner a snapshot falls under own-snapshots (hostSigned: one the compute CA signed with
    no provenance is refused, 90); booted by another project, or by none, under other-snapshots (the compute
    CA is not trusted there at all).  A host-signed snapshot's own boots: tests/test_host_signed_boot.py."""
    root, policy, _, _ = example
    records, base = cache(tmp_path, example, "compute", "snap-1", SNAPSHOT_A)
    boot = BootPolicy(immutable_bases=False, trust=policy, trust_dir=str(root))
    home = verify_for_boot(base, records, boot, booting_project=PROJECT_A)
    assert not home.allowed and home.code == errors.ProvenanceError.exit_code, home
    assert "own-snapshots trusts only host-signed images" in home.message
    for other in (PROJECT_B, None):
        away = verify_for_boot(base, records, boot, booting_project=other)
        assert not away.allowed and away.code == errors.UntrustedCertificate.exit_code, away
        assert "rule other-snapshots" in away.message


def test_a_record_without_the_facts_is_refused(tmp_path, example):
    root, policy, _, _ = example
    records, base = cache(tmp_path, example, "compute", "snap-2", None)
    decision = verify_for_boot(base, records, BootPolicy(immutable_bases=False, trust=policy, trust_dir=str(root)),
                               booting_project=PROJECT_A)
    assert not decision.allowed and decision.code == errors.PolicyRefused.exit_code
    assert "does not say its image_type, owner, visibility" in decision.message


def test_audit_mode_at_boot_logs_the_untrusted_signer(tmp_path, example):
    root, policy, _, _ = example
    records, base = cache(tmp_path, example, "outsider", "x-1",
                          {"owner": PROJECT_X, "visibility": "private", "image_type": "image"}, anchored=False)
    decision = verify_for_boot(base, records, BootPolicy(immutable_bases=False, trust=policy, trust_dir=str(root)),
                               booting_project=PROJECT_X)
    assert decision.allowed and decision.code == 0
    assert "trust policy rule project-x-audit (audit) logs: authenticity" in decision.message
    records_b, base_b = cache(tmp_path / "b", example, "outsider", "y-1",
                              {"owner": PROJECT_B, "visibility": "private", "image_type": "image"}, anchored=False)
    assert not verify_for_boot(base_b, records_b, BootPolicy(immutable_bases=False, trust=policy,
                                                             trust_dir=str(root))).allowed


def test_boot_conf_policy_file(tmp_path, example):
    root, _, _, _ = example
    conf = tmp_path / "boot.conf"
    conf.write_text(f"[boot]\npolicy_file = {root / 'policy.yaml'}\n")
    loaded = load_config(str(conf))
    assert loaded.policy.trust is not None and loaded.policy.trust_dir == str(root)
    conf.write_text(f"[boot]\npolicy_file = {root / 'policy.yaml'}\ntrusted_certificate_ids = a\n")
    with pytest.raises(errors.InputError, match="both policy_file and trusted_certificate_ids"):
        load_config(str(conf))
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [{name: a, scope: '*', level: skip}]\n")
    conf.write_text(f"[boot]\npolicy_file = {bad}\n")
    with pytest.raises(errors.TrustPolicyError, match=r"rules\[0\].level"):
        load_config(str(conf))


def test_the_hook_trusts_only_policy_and_store_files_no_one_but_root_can_change(tmp_path, example):
    root, policy, _, _ = example
    copy = tmp_path / "policy.yaml"
    shutil.copyfile(root / "policy.yaml", copy)
    conf = tmp_path / "boot.conf"
    conf.write_text(f"[boot]\npolicy_file = {copy}\n")
    assert load_config(str(conf)).policy.trust is not None
    os.chmod(copy, 0o666)
    with pytest.raises(errors.InsecureState, match="someone other than root"):
        load_config(str(conf))
    os.chmod(copy, 0o644)
    os.chown(copy, 65534, 65534)  # nova's, say
    with pytest.raises(errors.InsecureState):
        load_config(str(conf))
    # A trust store's certificate file the nova user could replace is refused at boot, too.
    stores = tmp_path / "stores"
    shutil.copytree(root / "ca", stores / "ca")
    os.chown(stores / "ca" / "compute-hosts.pem", 65534, 65534)
    records, base = cache(tmp_path, example, "compute", "snap-3", SNAPSHOT_A)
    decision = verify_for_boot(base, records, BootPolicy(immutable_bases=False, trust=policy, trust_dir=str(stores)),
                               booting_project=PROJECT_A)
    assert not decision.allowed and decision.code == errors.InsecureState.exit_code, decision


def test_the_domain_names_the_booting_project():
    xml = domain_xml("i-1", "img", [])
    assert parse_domain(xml).project_id == "p"
    two = xml.replace("</nova:owner>", '<nova:project uuid="q">x</nova:project></nova:owner>')
    with pytest.raises(errors.InputError, match="2 different owner projects"):
        parse_domain(two)


def test_the_hook_applies_the_policy_by_the_booting_project(tmp_path):
    """Through the real hook process: `boot cache` records the facts of an `openstack image show` document;
    the rule trusting the signer applies only when the domain's project owns the image."""
    host = Host(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({
        "version": 1,
        "trustStores": {"signer": {"certificates": [str(cert_of("RSA-PSS"))]},
                        "nobody": {"certificates": [str(cert_of("ECC_SECP384R1"))]}},
        "rules": [
            {"name": "own-snapshots", "scope": {"imageType": "snapshot", "bootingProject": "owner"},
             "level": "strict", "trustStores": ["signer"], "trustedIdentities": ["*"]},
            {"name": "default", "scope": "*", "level": "strict", "trustStores": ["nobody"],
             "trustedIdentities": ["*"]}]}))
    host.configure("enforce")
    host.config.write_text(host.config.read_text().replace("trusted_certificate_ids = \n",
                                                           f"policy_file = {policy}\n"))
    image_id, props = host.image(signed=False)
    os.unlink(host.base(image_id))
    shown = tmp_path / "show.json"
    shown.write_text(json.dumps({"id": image_id, "owner": "p", "visibility": "private",
                                 "properties": {**json.loads(props.read_text()), "image_type": "snapshot"}}))
    source = tmp_path / f"{image_id}.qcow2"
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", shown, "--cert",
                     cert_of("RSA-PSS"), "--instances-path", host.instances, "--state-dir", host.state)
    assert cached.code == 0, cached
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    home = host.hook(instance, xml)
    assert home.returncode == 0, home.stderr
    away = host.hook(instance, xml.replace('<nova:project uuid="p">', '<nova:project uuid="q">'))
    assert away.returncode == errors.UntrustedCertificate.exit_code, away.stderr
    assert "rule default" in away.stderr
    assert load_certificate(cert_of("RSA-PSS").read_bytes())  # the signer the store names


# --- fuzzing the recorded facts and the boot decision -----------------------------------------------------

FUZZ = settings(max_examples=int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FACT = st.one_of(st.sampled_from([PROJECT_A, PROJECT_B, PROJECT_X, "private", "public", "shared", "snapshot", "image"]),
                 st.text(max_size=8))


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["owner", "visibility", "image_type"]), FACT)),
       st.one_of(st.none(), st.sampled_from([PROJECT_A, PROJECT_B, PROJECT_X])),
       st.lists(st.sampled_from(["ab" * 32, "cd" * 32]), max_size=2))
@case({"owner": PROJECT_X, "visibility": "private", "image_type": "image"}, None, [])
@case({"owner": PROJECT_A, "visibility": "private", "image_type": "snapshot"}, PROJECT_A, ["ab" * 32])
def test_recorded_facts_give_a_decision_or_an_imgsign_error(tmp_path_factory, example, facts, booting, anchors):
    root, policy, _, _ = example
    body = {**VALID_BODY, "image": facts, "anchor_fingerprints": anchors}
    try:
        record = TrustRecord.from_body(body)
    except ImgsignError:
        return
    records = RecordStore(str(tmp_path_factory.mktemp("fuzz-state")))
    try:
        logged = check_record(record, records, policy, str(root), booting)
    except ImgsignError:
        return
    # Allowed: the rule is audit (logged), or one of its stores holds what the download validated against.
    # The recorded signer (the test PKI's RSA leaf) and these anchors are in none of the example's stores.
    assert logged is not None and "(audit) logs: authenticity" in logged, (facts, booting, logged)


def test_the_servers_own_certificates_narrow_what_the_policy_allows(tmp_path, example):
    """Nova's per-server list and the trust policy compose: a base boots only if the policy's rule trusts its
    signer AND the signer (or an anchor its chain was validated against) is one of the server's certificates."""
    from cryptography.hazmat.primitives.serialization import Encoding

    root, policy, cas, _ = example
    records, base = cache(tmp_path, example, "project-a", "img-n", PRIVATE_A)
    records.anchors.bind("project-a-ca", cas["project-a"].cert.public_bytes(Encoding.DER))
    records.anchors.bind("team-ca", cas["image-team"].cert.public_bytes(Encoding.DER))

    def boot(records, base, server_ids, project):
        return verify_for_boot(base, records, BootPolicy(immutable_bases=False, trust=policy, trust_dir=str(root),
                                                         server_certificate_ids=server_ids, server_id="srv-1"),
                               booting_project=project)

    allowed = boot(records, base, ("project-a-ca",), PROJECT_A)
    assert allowed.allowed and allowed.code == 0, allowed
    narrowed = boot(records, base, ("team-ca",), PROJECT_A)  # the policy trusts it; the server's own list does not
    assert not narrowed.allowed and narrowed.code == errors.UntrustedCertificate.exit_code, narrowed
    assert "of server srv-1 in Nova" in narrowed.message
    # The server's list cannot widen the policy: a signer the rule does not trust stays refused.
    records_o, base_o = cache(tmp_path / "o", example, "outsider", "img-o", PRIVATE_A, anchored=False)
    records_o.anchors.bind("outsider-ca", OUTSIDER_CA.cert.public_bytes(Encoding.DER))
    widened = boot(records_o, base_o, ("outsider-ca",), PROJECT_A)
    assert not widened.allowed and "rule project-a-private" in widened.message, widened
