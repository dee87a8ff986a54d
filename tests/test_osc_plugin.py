"""``openstack image sign|verify|audit``: imgsign[osc] as a plugin of the real ``openstack`` command.

python-openstackclient 10.5.0 and this checkout's imgsign[osc] in a venv of their own
(:func:`tests.servers.openstackclient.openstack_with_imgsign_bin`), against the test cloud of
tests/test_keystone_projects_e2e.py: real Keystone, Barbican (the key manager Glance uses) and
glance-api. The commands take OSC's clouds.yaml and ``OS_CLOUD``, ``-f``/``-c`` and ``--debug``; imgsign.conf
comes from ``--imgsign-config`` or ``$IMGSIGN_CONFIG``. On main (173eb40) there was no plugin: OSC said
"Unknown command ['image', 'verify']".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgsign import errors
from tests.conftest import cert_of, key_of
from tests.test_glance_e2e import make_qcow2
from tests.test_keystone_projects_e2e import Cloud, cloud  # noqa: F401 - the module's cloud fixture

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)


@pytest.fixture(scope="module")
def osc_bin() -> Path:
    from tests.servers.openstackclient import openstack_with_imgsign_bin

    return openstack_with_imgsign_bin()


def openstack(osc_bin: Path, cloud: Cloud, user: str, *args: object, cwd: Path | None = None,
              conf: bool = True) -> subprocess.CompletedProcess[str]:
    """``openstack ARGS`` as ``user`` (``OS_CLOUD``), imgsign.conf from ``$IMGSIGN_CONFIG`` when ``conf``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_", "PYTHON"))}
    env.update(OS_CLIENT_CONFIG_FILE=str(cloud.clouds), OS_CLOUD=user, HOME=str(cloud.root))
    if conf:
        env["IMGSIGN_CONFIG"] = str(cloud.barbican_conf)
    proc = subprocess.run([str(osc_bin / "openstack"), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr or "--debug" in map(str, args), proc.stderr
    return proc


@pytest.fixture(scope="module")
def signed_image(osc_bin, cloud, tmp_path_factory) -> dict:
    """An image signed with ``openstack image sign`` and created with OSC's own ``image create``."""
    work = tmp_path_factory.mktemp("osc-signed")
    image = make_qcow2(work / "disk.qcow2")
    signed = openstack(osc_bin, cloud, "alice", "image", "sign", image, "--key", key_of("ECC_SECP384R1"),
                       "--cert", cert_of("ECC_SECP384R1"), "--store-cert", "--no-raw-digest", "-f", "json")
    assert signed.returncode == 0, signed.stderr
    properties = json.loads(signed.stdout)
    assert properties["img_signature_key_type"] == "ECC_SECP384R1", properties
    assert cloud.project("alice") in signed.stderr, signed.stderr  # stored in (or found in) alice's project
    name = f"osc-signed-{os.getpid()}"
    created = openstack(osc_bin, cloud, "alice", "image", "create", "--disk-format", "qcow2", "--file", image,
                        *[a for k, v in properties.items() for a in ("--property", f"{k}={v}")], name, "-f", "json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["status"] == "active", record
    assert f"Successfully verified signature for image {record['id']}" in cloud.glance.glance_log_text()
    return {"id": record["id"], "name": name, "properties": properties}


def test_openstack_image_verify_by_name_with_osc_formatters(osc_bin, cloud, signed_image):
    verified = openstack(osc_bin, cloud, "alice", "--imgsign-config", cloud.barbican_conf, "image", "verify",
                         signed_image["name"], "-f", "json", conf=False)
    assert verified.returncode == 0, verified.stderr
    result = json.loads(verified.stdout)
    assert result["valid"] is True and result["image"] == signed_image["id"], result  # the name, resolved by OSC
    assert result["img_signature_certificate_uuid"] == signed_image["properties"]["img_signature_certificate_uuid"]
    value = openstack(osc_bin, cloud, "alice", "image", "verify", signed_image["id"], "-f", "value", "-c", "valid",
                      "-c", "reason")
    assert value.returncode == 0 and value.stdout.split() == ["True", "ok"], value
    table = openstack(osc_bin, cloud, "alice", "image", "verify", signed_image["id"])  # OSC's default: a table
    assert table.returncode == 0 and "| certificate_subject" in table.stdout, table


def test_openstack_image_verify_fails_closed_with_imgsigns_exit_code(osc_bin, cloud, tmp_path):
    small = tmp_path / "small.raw"
    small.write_bytes(b"\x00" * 65536)
    name = f"osc-unsigned-{os.getpid()}"
    created = openstack(osc_bin, cloud, "alice", "image", "create", "--disk-format", "raw", "--file", small, name)
    assert created.returncode == 0, created.stderr
    refused = openstack(osc_bin, cloud, "alice", "image", "verify", name, "-f", "json")
    assert refused.returncode == errors.UnsignedImage.exit_code, refused
    result = json.loads(refused.stdout)
    assert result["valid"] is False and result["exit_code"] == errors.UnsignedImage.exit_code, result
    assert "imgsign: error: Glance image" in refused.stderr and "is not signed" in refused.stderr, refused.stderr
    audit = openstack(osc_bin, cloud, "alice", "image", "audit", "-f", "json")
    assert audit.returncode == errors.PolicyViolation.exit_code, audit
    rows = {row["Name"]: row for row in json.loads(audit.stdout)}
    assert rows[name]["Result"] == "FAIL" and rows[name]["Signer"] == "(unsigned)", rows
    assert "fail the audit" in audit.stderr
    allowed = openstack(osc_bin, cloud, "alice", "image", "audit", "--allow-unsigned", "-f", "value", "-c", "Name",
                        "-c", "Result")
    assert allowed.returncode == 0, allowed
    assert f"{name} pass" in allowed.stdout.splitlines(), allowed.stdout


def test_openstack_image_audit_lists_the_signer(osc_bin, cloud, signed_image):
    audit = openstack(osc_bin, cloud, "alice", "image", "audit", "--allow-unsigned", "--download", "-f", "json")
    assert audit.returncode == 0, audit
    [row] = [r for r in json.loads(audit.stdout) if r["ID"] == signed_image["id"]]
    assert row["Result"] == "pass" and row["Data"] == "verified" and row["Signer"], row


def test_openstack_debug_shows_imgsigns_work_without_secrets(osc_bin, cloud, signed_image):
    password = cloud.keystone.auth("alice")["password"]
    debug = openstack(osc_bin, cloud, "alice", "--debug", "image", "verify", signed_image["id"], "-f", "json")
    assert debug.returncode == 0, debug.stderr
    assert "keystoneauth.session" in debug.stderr or "REQ: curl" in debug.stderr, debug.stderr[-2000:]
    assert f"/v2/images/{signed_image['id']}/file" in debug.stderr  # imgsign's own download, logged
    assert password not in debug.stderr and password not in debug.stdout


def test_openstack_image_sign_usage_errors_are_oscs(osc_bin, cloud, tmp_path):
    image = tmp_path / "x.img"
    image.write_bytes(b"x" * 1024)
    missing = openstack(osc_bin, cloud, "alice", "image", "sign", image, "--cert-uuid", "x" * 8)
    assert missing.returncode == 2 and "--key" in missing.stderr, missing  # argparse: required
    bad = openstack(osc_bin, cloud, "alice", "image", "audit", "--jobs", "0")
    assert bad.returncode == 1 and "--jobs" in bad.stderr and "0" in bad.stderr, bad  # click's range check


def test_imgsign_debug_never_logs_the_key_it_stores_in_barbican(cloud):
    """``imgsign --debug key store`` against the real Barbican: keystoneauth's request log is there, the
    private key (PEM lines, its base64 DER as Barbican receives it) and alice's password are not."""
    import base64

    from cryptography.hazmat.primitives import serialization

    key_file = key_of("ECC_SECP384R1")
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
    env.update(OS_CLIENT_CONFIG_FILE=str(cloud.clouds), OS_CLOUD="alice")
    proc = subprocess.run([sys.executable, "-m", "imgsign", "--debug", "-c", str(cloud.barbican_conf), "key",
                           "store", str(key_file)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REQ: curl" in proc.stderr and "/v1/secrets" in proc.stderr, proc.stderr[-3000:]
    assert "<request body omitted by imgsign" in proc.stderr
    pem_lines = [line for line in key_file.read_text().splitlines() if line and not line.startswith("-----")]
    assert not [line for line in pem_lines if line in proc.stderr]
    encoded = base64.b64encode(der).decode()
    assert not [encoded[i:i + 16] for i in range(0, len(encoded) - 16, 16) if encoded[i:i + 16] in proc.stderr]
    assert cloud.keystone.auth("alice")["password"] not in proc.stderr
