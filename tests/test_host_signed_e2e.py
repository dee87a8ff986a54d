"""Host-signed snapshots under a hostSigned trust policy rule, end to end: a real glance-api 33 (with
``imgsign_verify`` under the policy for glance-direct imports), real Keystone tokens and the embedded key manager.

The snapshots carry what ``imgsign gateway`` sets (tests/test_gateway_signing.py drives the gateway itself): the
host's signature and the DSSE provenance statement, made by the library's own signing code
(tests/host_signing.py) with a host certificate that has the compute URI SAN, from a base image the image team
signed.  They are uploaded with ``PUT /file`` (Glance's own signature check runs; no import plugin does) and
with glance-direct (``imgsign_verify`` decides by the policy at ingest: no booting project, the owner from
Glance).  Then ``imgsign verify --image``, ``verify FILE``, ``audit`` and ``policy explain`` under the policy:
trusted for the owner, refused (90) for another booting project and when the base's signer is outside
``baseTrustStores``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from imgsign import errors
from tests.host_signing import base_image, host_signed, make_host, sign_image
from tests.policy_pki import make_ca, make_leaf
from tests.servers.glance import GlanceServer, glance_server
from tests.test_glance_client_e2e import Env
from tests.test_glance_e2e import API, USER, make_qcow2

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

OTHER = "0b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e"
DISK = b"the snapshot of an instance of project demo\n" * 20000
BASE_DISK = b"the image team's base image\n" * 20000


@dataclass
class Cloud:
    env: Env
    server: GlanceServer
    api: API
    owner: str
    policy: Path
    #: Glance image ids: base, snapshot (base by the image team), foreign-base (base outside baseTrustStores)
    ids: dict[str, str]
    #: The snapshot's properties, as set in Glance.
    snapshot: dict[str, str]
    root: Path
    #: The properties the gateway would set on snapshot ``image_id`` of DISK: (image_id, project, foreign base)
    snapshot_for: Callable[..., dict[str, str]]

    def cli(self, *args: object):
        return self.env.cli("bare", *args)


def _store(env: Env, path: Path) -> str:
    stored = env.cli("bare", "cert", "store", path)
    assert stored.returncode == 0, stored.stderr
    return stored.stdout.strip()


def _uploaded(api: API, root: Path, name: str, data: bytes, properties: dict[str, str]) -> str:
    """An image created with ``properties`` (its id among them, if given) and its data sent with PUT /file:
    Glance's own (cursive) signature check accepts it."""
    path = root / f"{name}.raw"
    path.write_bytes(data)
    image_id = api.create({"name": name, **properties}, disk_format="raw")
    uploaded = api.upload(image_id, path)
    assert uploaded.status_code == 204, uploaded.text
    return image_id


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone) -> Cloud:
    root = tmp_path_factory.mktemp("host-signed")
    compute, team, outsider = (make_ca("CN=Compute Image Attestation CA,O=Example Cloud"),
                               make_ca("CN=Image Team CA,O=Example Cloud"), make_ca("CN=Someone Else CA,O=Elsewhere"))
    compute.write(root / "ca", "compute-hosts")
    team.write(root / "ca", "image-team")
    host = make_host(compute, "compute-7")
    release = make_leaf(team, "CN=Image Team Release Signing,O=Example Cloud")
    stranger = make_leaf(outsider, "CN=Image Team Release Signing,O=Example Cloud")
    files = {name: leaf.write(root / "signers", name)[0] for name, leaf in
             (("host", host), ("release", release), ("stranger", stranger))}
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "version": 1,
        "trustStores": {"compute-hosts": {"certificates": ["ca/compute-hosts.pem"]},
                        "image-team": {"certificates": ["ca/image-team.pem"]}},
        "rules": [
            {"name": "snapshots", "scope": {"imageType": "snapshot"}, "level": "strict",
             "trustStores": ["compute-hosts"], "trustedIdentities": ["*"],
             "hostSigned": {"baseTrustStores": ["image-team"]}},
            {"name": "default", "scope": "*", "level": "strict", "trustStores": ["image-team"],
             "trustedIdentities": ["*"]}]}))
    with contextlib.ExitStack() as stack:
        env = Env(root, root / "keystore.sqlite3", {}, stack, keystone)
        # One Glance: PUT /file uploads pass no import plugin; glance-direct imports run imgsign_verify under
        # the policy (no booting project at ingest).
        env.servers["bare"] = stack.enter_context(glance_server(
            root / "glance", keystone=keystone, keystore=env.keystore, plugins=["imgsign_verify"],
            import_options={"imgsign_import": {"policy_file": str(policy)}}))
        env._write_clouds()
        server = env.servers["bare"]
        api = API(server)
        owner = server.project_id(USER)
        ids = {name: _store(env, path) for name, path in files.items()}  # key-manager ids of the certificates
        base_properties = sign_image(BASE_DISK, release, ids["release"])
        base_id = _uploaded(api, root, "base", BASE_DISK, base_properties)

        def snapshot(image_id: str, project: str = owner, foreign: bool = False, data: bytes = DISK
                     ) -> dict[str, str]:
            base_signer, base_cert_id = (stranger, ids["stranger"]) if foreign else (release, ids["release"])
            return {"image_type": "snapshot", "instance_uuid": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
                    **host_signed(data, host, ids["host"], image_id=image_id, project=project, host_name="compute-7",
                                  base=base_image(base_id, base_signer, base_cert_id, base_properties))}

        snapshot_id, foreign_id = str(uuid.uuid4()), str(uuid.uuid4())
        props = snapshot(snapshot_id)
        _uploaded(api, root, "snapshot", DISK, {"id": snapshot_id, **props})
        _uploaded(api, root, "foreign-base", DISK, {"id": foreign_id, **snapshot(foreign_id, foreign=True)})
        yield Cloud(env, server, api, owner, policy, {"base": base_id, "snapshot": snapshot_id,
                                                      "foreign-base": foreign_id}, props, root, snapshot)


def test_verify_image_trusts_a_host_signed_snapshot_for_its_owner_only(cloud):
    trusted = cloud.cli("verify", "--image", cloud.ids["snapshot"], "--policy", cloud.policy, "--json")
    assert trusted.returncode == 0, trusted.stderr
    result = json.loads(trusted.stdout)
    assert result["valid"] and result["policy"]["rule"] == "snapshots" and result["policy"]["verdict"] == "trusted"
    assert any(f"host-signed on compute-7 for project {cloud.owner}" in r for r in result["policy"]["reasons"])
    home = cloud.cli("verify", "--image", cloud.ids["snapshot"], "--policy", cloud.policy, "--booting-project",
                     cloud.owner)
    assert home.returncode == 0, home.stderr
    away = cloud.cli("verify", "--image", cloud.ids["snapshot"], "--policy", cloud.policy, "--booting-project", OTHER,
                     "--json")
    assert away.returncode == errors.ProvenanceError.exit_code == 90, away.stderr
    assert json.loads(away.stdout)["reason"] == "provenance-error"
    assert f"project {OTHER} boots an image host-signed for project {cloud.owner}" in away.stderr


def test_verify_image_refuses_a_base_outside_the_base_trust_stores(cloud):
    refused = cloud.cli("verify", "--image", cloud.ids["foreign-base"], "--policy", cloud.policy)
    assert refused.returncode == errors.ProvenanceError.exit_code, refused.stderr
    assert "did not chain to the baseTrustStores of rule snapshots when the snapshot was made" in refused.stderr


def test_verify_file_reads_the_base_certificate_from_the_key_manager(cloud):
    shown = cloud.root / "show.json"
    shown.write_text(json.dumps(cloud.api.show(cloud.ids["snapshot"])))
    image = cloud.root / "snapshot.raw"
    trusted = cloud.cli("verify", image, "--properties", shown, "--policy", cloud.policy)
    assert trusted.returncode == 0, trusted.stderr
    away = cloud.cli("verify", image, "--properties", shown, "--policy", cloud.policy, "--booting-project", OTHER)
    assert away.returncode == errors.ProvenanceError.exit_code, away.stderr
    # Without a policy (the flat options) a host's signature is refused, even trusting the compute CA.
    flat = cloud.cli("verify", image, "--properties", shown, "--trusted-file", cloud.root / "ca" / "compute-hosts.pem")
    assert flat.returncode == errors.PolicyRefused.exit_code and "is a compute host" in flat.stderr, flat.stderr


def test_audit_by_policy_passes_the_owner_s_snapshot_and_fails_the_foreign_base(cloud):
    audited = cloud.cli("audit", "--policy", cloud.policy, "--download", "--json")
    assert audited.returncode == errors.PolicyViolation.exit_code, audited.stderr
    images = {image["id"]: image for image in json.loads(audited.stdout)["images"]}
    snapshot, foreign = images[cloud.ids["snapshot"]], images[cloud.ids["foreign-base"]]
    assert snapshot["passed"] and (snapshot["rule"], snapshot["verdict"]) == ("snapshots", "trusted"), snapshot
    assert snapshot["data"]["status"] == "verified"
    assert not foreign["passed"] and foreign["verdict"] == "refused"
    assert [f["reason"] for f in foreign["failures"]] == ["provenance-error"]
    assert images[cloud.ids["base"]]["passed"]
    # --compare: under a policy that trusts the compute CA without hostSigned, the snapshot failed.
    old = cloud.root / "old.yaml"
    old.write_text(yaml.safe_dump({
        "version": 1, "trustStores": {"all": {"certificates": ["ca/compute-hosts.pem", "ca/image-team.pem"]}},
        "rules": [{"name": "everything", "scope": "*", "level": "strict", "trustStores": ["all"],
                   "trustedIdentities": ["*"]}]}))
    compared = cloud.cli("audit", "--policy", cloud.policy, "--compare", old, "--json")
    comparison = json.loads(compared.stdout)["compare"]
    assert cloud.ids["snapshot"] in comparison["newly_passing"], comparison
    assert cloud.ids["foreign-base"] not in comparison["newly_passing"] + comparison["newly_failing"]
    (before,) = [i for i in comparison["images"] if i["id"] == cloud.ids["snapshot"]]
    assert before["old_rule"] == "everything" and [f["reason"] for f in before["old_failures"]] == ["policy-refused"]
    # Without a policy the host's signature fails the audit.
    flat = cloud.cli("audit", "--trusted-file", cloud.root / "ca" / "compute-hosts.pem", "--json")
    flat_images = {image["id"]: image for image in json.loads(flat.stdout)["images"]}
    assert "policy-refused" in [f["reason"] for f in flat_images[cloud.ids["snapshot"]]["failures"]]


def test_policy_explain_shows_the_requirement_and_the_provenance_verdict(cloud):
    explained = cloud.cli("policy", "explain", "--image", cloud.ids["snapshot"], "--policy", cloud.policy)
    assert explained.returncode == 0, explained.stderr
    assert "hostSigned: only an image a compute host signed" in explained.stdout
    assert f"provenance: passed: host-signed on compute-7 for project {cloud.owner}" in explained.stdout
    away = cloud.cli("policy", "explain", "--image", cloud.ids["snapshot"], "--policy", cloud.policy,
                     "--booting-project", OTHER, "--json")
    assert away.returncode == 0, away.stderr
    provenance = json.loads(away.stdout)["provenance"]
    assert (provenance["verdict"], provenance["reason"], provenance["project"]) == ("refused", "provenance-error",
                                                                                    cloud.owner)
    foreign = cloud.cli("policy", "explain", "--image", cloud.ids["foreign-base"], "--policy", cloud.policy, "--json")
    assert json.loads(foreign.stdout)["provenance"]["verdict"] == "refused"


def test_glance_s_import_plugin_decides_by_the_policy_at_ingest(cloud):
    """glance-direct: imgsign_verify takes the owner from Glance and no booting project; it imports the owner's
    host-signed snapshot and refuses one whose statement names another project, a foreign base, or none."""
    path = cloud.root / "snapshot.raw"
    image_id = str(uuid.uuid4())
    imported, task = cloud.api.import_image(path, {"id": image_id, **cloud.snapshot_for(image_id)}, disk_format="raw")
    assert task["status"] == "success", task
    assert cloud.api.show(imported)["status"] == "active"
    assert f"image {imported}: signature by CN=compute-7" in cloud.server.api_log.read_text()
    for case, expected in (({"project": OTHER}, "a host signature vouches only inside the project"),
                           ({"foreign": True}, "did not chain to the baseTrustStores"),
                           ({"drop": True}, "no provenance statement")):
        image_id = str(uuid.uuid4())
        drop = case.pop("drop", False)
        properties = cloud.snapshot_for(image_id, **case)
        if drop:
            properties = {k: v for k, v in properties.items() if not k.startswith("imgsign_provenance_v1_")}
        refused, task = cloud.api.import_image(path, {"id": image_id, **properties}, disk_format="raw")
        assert task["status"] == "failure" and "imgsign_verify refused image" in task["message"], task
        assert "provenance-error" in task["message"] and expected in task["message"], task
        assert cloud.api.show(refused)["status"] == "queued"


@pytest.fixture(scope="module")
def converting(cloud, keystone) -> Iterator[API]:
    """A second Glance: imgsign_verify under the policy, image_conversion to raw, imgsign_resign (no service key:
    it must refuse a host-signed image before it would need one)."""
    with glance_server(cloud.root / "glance-converting", keystone=keystone, keystore=cloud.env.keystore,
                       plugins=["imgsign_verify", "image_conversion", "imgsign_resign"],
                       import_options={"image_conversion": {"output_format": "raw"},
                                       "imgsign_import": {"policy_file": str(cloud.policy)}}) as server:
        yield API(server)


def test_imgsign_resign_never_re_signs_a_host_signed_snapshot(cloud, converting):
    """A converted host-signed snapshot would be re-signed with the service key and trusted beyond its project:
    refused; a snapshot that needs no conversion keeps the host's signature."""
    qcow2 = make_qcow2(cloud.root / "snapshot.qcow2")
    image_id = str(uuid.uuid4())
    properties = cloud.snapshot_for(image_id, data=qcow2.read_bytes())
    refused, task = converting.import_image(qcow2, {"id": image_id, **properties}, disk_format="qcow2")
    assert task["status"] == "failure", task
    assert f"imgsign_resign refused image {refused}: policy-refused: the image was signed by a compute host" \
        in task["message"], task
    assert converting.show(refused)["status"] != "active"
    image_id = str(uuid.uuid4())
    raw_properties = cloud.snapshot_for(image_id)
    kept, task = converting.import_image(cloud.root / "snapshot.raw", {"id": image_id, **raw_properties},
                                         disk_format="raw")
    assert task["status"] == "success", task
    shown = converting.show(kept)
    assert shown["status"] == "active", shown
    assert {name: shown.get(name) for name in raw_properties} == raw_properties  # the host's signature, as it was
    assert not [name for name in shown if name.startswith("imgsign_original_")], shown
