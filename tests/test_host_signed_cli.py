"""``imgsign boot cache`` and ``boot adopt`` (one image, and ``--all``) record a host-signed image's provenance
and its image facts, as the hook's own adoption does, so that boot.conf's ``hostSigned`` rule can decide at
boot.  The key manager is imgsign's embedded one (the base's certificate and the base store's CA by id).
Nova's download is tests/test_adoption.py's stand-in (no Glance here); the hook itself, Glance and the
gateway: tests/test_host_signed_libvirt.py."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import errors
from imgsign.compute.boot import BootPolicy, verify_for_boot
from imgsign.compute.trust_record import RecordStore
from imgsign.keymanager.config import load, open_store
from imgsign.trust_policy import load_policy_text
from tests.conftest import run_cli
from tests.test_adoption import nova_download
from tests.test_boot_hook import Host
from tests.test_compute_hardening import nova_writable_cache
from tests.test_host_signed_boot import DATA, HOST_URI, PROJECT_A, PROJECT_B, base_of, snapshot
from tests.test_host_signed_boot import pki as pki  # noqa: F401  (the module's fixture)


@pytest.fixture
def world(tmp_path, pki):  # noqa: F811
    path = Path(tempfile.mkdtemp(prefix="imgsign-hostcli-", dir="/tmp"))
    path.chmod(0o755)
    host = Host(path)
    nova_writable_cache(host.instances)
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'keys.sqlite3'}\n\n"
                    f"[imgsign]\nproject_id = {PROJECT_A}\n")
    store = open_store(load(str(conf)))
    base_cert_id = store.store_certificate(pki.base.cert.public_bytes(Encoding.DER))
    ca_id = store.store_certificate(pki.image_ca.cert.public_bytes(Encoding.DER))
    shutil.copytree(pki.root / "ca", tmp_path / "ca")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "version": 1,
        "trustStores": {"compute-hosts": {"certificates": ["ca/compute.pem"]}, "image-team": {"keyManager": [ca_id]}},
        "rules": [{"name": "host-snapshots", "scope": {"imageType": "snapshot"},
                   "level": "strict", "trustStores": ["compute-hosts"], "trustedIdentities": [{"sanUri": HOST_URI}],
                   "hostSigned": {"baseTrustStores": ["image-team"]}},
                  {"name": "default", "scope": "*", "level": "strict", "trustStores": ["image-team"],
                   "trustedIdentities": ["*"]}]}))
    boot_conf = tmp_path / "boot.conf"
    boot_conf.write_text(f"[boot]\npolicy_file = {policy}\n")
    host_pem = tmp_path / "host.pem"
    host_pem.write_bytes(pki.host.pem)
    image = host.tmp / "snapshot.raw"  # where the nova user can read it
    image.write_bytes(DATA)
    image.chmod(0o644)
    yield {"host": host, "env": {"IMGSIGN_CONFIG": str(conf)}, "boot_conf": boot_conf, "policy": policy,
           "base_cert_id": base_cert_id, "host_pem": host_pem, "image": image}
    shutil.rmtree(path, ignore_errors=True)


def show(world, pki, image_id: str) -> dict:  # noqa: F811
    props = snapshot(pki, image_id, base=base_of(pki.base, certificate_id=world["base_cert_id"]))
    return {"id": image_id, "owner": PROJECT_A, "visibility": "private", "properties": {**props,
                                                                                      "image_type": "snapshot"}}


def boots(world, image_id: str, project: str):
    host = world["host"]
    policy = load_policy_text(world["policy"].read_bytes(), str(world["policy"]))
    return verify_for_boot(str(host.base(image_id)), RecordStore(str(host.state)),
                           BootPolicy(immutable_bases=False, trust=policy, trust_dir=str(world["policy"].parent)),
                           booting_project=project)


def common(world) -> tuple:
    return ("--cert", world["host_pem"], "--instances-path", world["host"].instances, "--state-dir",
            world["host"].state, "--seal", "owner")


@pytest.mark.parametrize("command", ["cache", "adopt", "adopt --all"])
def test_cli_adoption_records_the_provenance_and_the_facts(world, pki, tmp_path, command):  # noqa: F811
    host, image_id = world["host"], str(uuid.uuid4())
    shown = tmp_path / "shown" / f"{image_id}.json"
    shown.parent.mkdir()
    shown.write_text(json.dumps(show(world, pki, image_id)))
    config = ("--boot-config", world["boot_conf"])
    if command == "cache":
        result = run_cli("boot", *config, "cache", world["image"], "--image-id", image_id, "--properties", shown,
                         *common(world), env=world["env"])
    elif command == "adopt":
        nova_download(host, image_id, world["image"])
        result = run_cli("boot", *config, "adopt", image_id, "--properties", shown, *common(world), env=world["env"])
    else:
        nova_download(host, image_id, world["image"])
        result = run_cli("boot", *config, "adopt", "--all", "--properties", shown.parent, *common(world),
                         env=world["env"])
    assert result.code == 0, result
    record = RecordStore(str(host.state)).get(image_id)
    assert record is not None and record.provenance is not None and record.provenance.verified, record
    assert record.provenance.base_anchor_fingerprints == (pki.image_ca.fingerprint,)
    home = boots(world, image_id, PROJECT_A)
    assert home.allowed and home.code == 0, home
    away = boots(world, image_id, PROJECT_B)
    assert not away.allowed and away.code == errors.ProvenanceError.exit_code, away


def test_without_a_host_signed_rule_nothing_is_fetched(world, pki, tmp_path):  # noqa: F811
    """No policy_file: the statement is not checked (and no key manager is asked for the base)."""
    host, image_id = world["host"], str(uuid.uuid4())
    shown = tmp_path / "shown.json"
    shown.write_text(json.dumps(show(world, pki, image_id)))
    nova_download(host, image_id, world["image"])
    plain = tmp_path / "boot-plain.conf"
    plain.write_text("[boot]\n")
    result = run_cli("boot", "--boot-config", plain, "adopt", image_id, "--properties", shown, *common(world),
                     env={"IMGSIGN_CONFIG": ""})  # no key manager at all
    assert result.code == 0, result
    record = RecordStore(str(host.state)).get(image_id)
    assert record is not None and record.provenance is None


def test_a_policy_or_store_file_others_can_change_is_refused_as_the_hook_refuses_it(world, pki, tmp_path):  # noqa: F811
    """The commands read boot.conf's policy as the hook does: a policy or trust-store file someone other than
    root could change is refused before anything is recorded."""
    host, image_id = world["host"], str(uuid.uuid4())
    shown = tmp_path / "shown.json"
    shown.write_text(json.dumps(show(world, pki, image_id)))
    nova_download(host, image_id, world["image"])
    for path in (world["policy"], world["policy"].parent / "ca" / "compute.pem"):
        path.chmod(0o666)
        try:
            result = run_cli("boot", "--boot-config", world["boot_conf"], "adopt", image_id, "--properties", shown,
                             *common(world), env=world["env"])
        finally:
            path.chmod(0o644)
        assert result.code == errors.InsecureState.exit_code, result
        assert "can be changed by someone other than root" in result.stderr
        assert RecordStore(str(host.state)).get(image_id) is None
