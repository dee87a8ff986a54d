"""The uploader's project, with real Keystone, Barbican and glance-api (tests/servers/).

Glance and Barbican run behind keystonemiddleware; Glance's key manager is Barbican, which it
calls with the uploader's token (castellan ``[key_manager] backend = barbican``), as most clouds
run it. imgsign gets its credentials as the ``openstack`` CLI does: a clouds.yaml and ``OS_CLOUD``
(``alice``: a member of project ``alpha``; ``bob``: of ``beta``). The user's imgsign.conf names
no project: the key-manager project is the token's.

Each test here fails on main (commit 08393ff): there the CLI's castellan context was a bare
``RequestContext(project_id=[imgsign] project_id or "default")`` without credentials (Barbican:
"missing auth_token", exit 50), and the embedded store filed certificates under ``default``,
where Glance (which reads as the token's project id) never looks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imgsign import errors
from tests.conftest import REPO, cert_of, key_of
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.keystone import KeystoneServer
from tests.test_glance_e2e import make_qcow2

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)


@dataclass
class Cloud:
    root: Path
    keystone: KeystoneServer
    glance: GlanceServer
    clouds: Path
    #: imgsign.conf with Barbican (Glance's key manager) and no project.
    barbican_conf: Path

    def conf(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def cli(self, user: str, conf: Path, *args: object, cloud: bool = True,
            clouds_file: bool = False) -> subprocess.CompletedProcess[str]:
        """imgsign as ``user`` (``OS_CLOUD``); ``cloud=False``: no OS_* at all, unless ``clouds_file``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
        env["PYTHONPATH"] = str(REPO)
        if cloud:
            env.update(OS_CLIENT_CONFIG_FILE=str(self.clouds), OS_CLOUD=user)
        elif clouds_file:
            env.update(OS_CLIENT_CONFIG_FILE=str(self.clouds))
        proc = subprocess.run([sys.executable, "-m", "imgsign", "-c", str(conf), *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        # Only imgsign's own lines: no stray log lines of castellan or its clients ("missing auth_token",
        # "4xx Client error: Forbidden", "Error retrieving object").
        stray = [line for line in proc.stderr.splitlines()
                 if line and not line.startswith(("imgsign: ", "stored certificate ", "identical certificate ",
                                                  "deleted "))]
        assert not stray, proc.stderr
        return proc

    def project(self, user: str) -> str:
        """How imgsign names a user's project: by name and id."""
        account = self.keystone.accounts[user]
        return f"project {account.project} ({account.project_id})"

    def images(self, user: str) -> list[dict]:
        token = self.keystone.token(user)
        response = requests.get(f"{self.glance.url}/v2/images", headers={"X-Auth-Token": token}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["images"]

    def openstack_image_create(self, user: str, args: list[str], image: Path, name: str) -> dict:
        """What ``xargs openstack image create --disk-format qcow2 --file IMAGE NAME`` does with
        ``imgsign sign --format openstack``'s output: POST /v2/images with the properties, PUT the file."""
        properties = {}
        assert args[::2] == ["--property"] * (len(args) // 2), args
        for value in args[1::2]:
            key, _, text = value.partition("=")
            properties[key] = text
        headers = {"X-Auth-Token": self.keystone.token(user)}
        created = requests.post(f"{self.glance.url}/v2/images", headers=headers, timeout=30, json={
            "name": name, "disk_format": "qcow2", "container_format": "bare", **properties})
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        with open(image, "rb") as data:
            uploaded = requests.put(f"{self.glance.url}/v2/images/{image_id}/file", data=data, timeout=60,
                                    headers={**headers, "Content-Type": "application/octet-stream"})
        assert uploaded.status_code == 204, uploaded.text  # main: 400, "Certificate not found with ID"
        shown = requests.get(f"{self.glance.url}/v2/images/{image_id}", headers=headers, timeout=30).json()
        return shown


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone, barbican_server):
    root = tmp_path_factory.mktemp("keystone-projects")
    with glance_server(root / "glance", keystone=keystone, keystore=root / "glance-unused.sqlite3",
                       key_manager=barbican_server.castellan_config()) as glance:
        clouds = root / "clouds.yaml"
        clouds.write_text(json.dumps({"clouds": {
            user: keystone.cloud(user, image_endpoint_override=glance.url) for user in ("alice", "bob")}}))
        conf = root / "barbican.conf"
        conf.write_text(barbican_server.castellan_config())
        yield Cloud(root, keystone, glance, clouds, conf)


def test_flagship_sign_store_cert_into_openstack_image_create(cloud, tmp_path):
    """README: ``imgsign sign ... --store-cert --format openstack | xargs openstack image create ...``."""
    image = make_qcow2(tmp_path / "disk.qcow2")
    signed = cloud.cli("alice", cloud.barbican_conf, "sign", image, "--key", key_of("RSA-PSS"),
                       "--cert", cert_of("RSA-PSS"), "--store-cert", "--format", "openstack")
    assert signed.returncode == 0, signed.stderr
    assert f"in the barbican key manager ({cloud.glance.url}" not in signed.stderr  # Barbican's, not Glance's
    assert cloud.project("alice") in signed.stderr, signed.stderr  # "stored certificate ... project alpha (id)"
    shown = cloud.openstack_image_create("alice", shlex.split(signed.stdout), image, "flagship")
    assert shown["status"] == "active", shown
    assert f"Successfully verified signature for image {shown['id']}" in cloud.glance.glance_log_text()


def test_flagship_journey_as_written_with_the_openstack_command(cloud, tmp_path):
    """The README's example, run as written by a shell: ``imgsign sign disk.qcow2 --key signer.key --cert
    signer.pem --store-cert --format openstack | xargs openstack image create --disk-format qcow2 --file
    disk.qcow2 my-image``, with the real ``openstack`` command (python-openstackclient) and ``OS_CLOUD``."""
    from tests.servers.openstackclient import openstack_bin

    image = make_qcow2(tmp_path / "disk.qcow2")
    # A signer no other test here stores, so this run stores it (and says where).
    for name, source in (("signer.key", key_of("ECC_SECP521R1")), ("signer.pem", cert_of("ECC_SECP521R1"))):
        (tmp_path / name).write_bytes(source.read_bytes())
    name = f"my-image-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
    env.update(OS_CLIENT_CONFIG_FILE=str(cloud.clouds), OS_CLOUD="alice", IMGSIGN_CONFIG=str(cloud.barbican_conf),
               PYTHONPATH=str(REPO), HOME=str(tmp_path),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), str(openstack_bin()), env.get("PATH", "")]))
    script = ("set -o pipefail; imgsign sign disk.qcow2 --key signer.key --cert signer.pem --store-cert "
              "--format openstack | xargs openstack image create --disk-format qcow2 --file disk.qcow2 " + name)
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert cloud.project("alice") in run.stderr, run.stderr  # stored in alpha, named by name and id
    created = [i for i in cloud.images("alice") if i["name"] == name]
    assert len(created) == 1 and created[0]["status"] == "active", created
    assert created[0]["img_signature_key_type"] == "ECC_SECP521R1"
    assert f"Successfully verified signature for image {created[0]['id']}" in cloud.glance.glance_log_text()


def test_upload_stores_the_certificate_in_the_token_project_and_glance_verifies(cloud, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    uploaded = cloud.cli("alice", cloud.barbican_conf, "upload", image, "--key", key_of("ECC_SECP384R1"),
                         "--cert", cert_of("ECC_SECP384R1"), "--store-cert", "--name", "uploaded")
    assert uploaded.returncode == 0, uploaded.stderr
    record = json.loads(uploaded.stdout)
    assert record["status"] == "active", record
    assert cloud.project("alice") in uploaded.stderr, uploaded.stderr
    assert f"Successfully verified signature for image {record['id']}" in cloud.glance.glance_log_text()


def test_barbican_cert_commands_with_keystone_auth_and_projects_isolated(cloud):
    stored = cloud.cli("alice", cloud.barbican_conf, "cert", "store", cert_of("DSA"))
    assert stored.returncode == 0, stored.stderr
    cert_id = stored.stdout.strip()
    listed = cloud.cli("alice", cloud.barbican_conf, "cert", "list")
    assert listed.returncode == 0, listed.stderr
    assert cert_id in listed.stdout
    # bob (project beta) can neither see, read nor delete alpha's certificate through imgsign.
    assert cert_id not in cloud.cli("bob", cloud.barbican_conf, "cert", "list").stdout
    shown = cloud.cli("bob", cloud.barbican_conf, "cert", "show", cert_id)
    assert shown.returncode in (errors.ObjectNotFound.exit_code, errors.KeyManagerError.exit_code), shown.stderr
    assert cloud.project("bob") in shown.stderr, shown.stderr
    deleted = cloud.cli("bob", cloud.barbican_conf, "cert", "delete", cert_id)
    assert deleted.returncode != 0, deleted.stderr
    assert cloud.cli("alice", cloud.barbican_conf, "cert", "show", cert_id).returncode == 0


def test_a_project_name_for_an_id_is_refused_naming_both_before_glance_is_touched(cloud, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    keystore = tmp_path / "keystore.sqlite3"
    conf = cloud.conf("by-name.conf", f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
                                      "[imgsign]\nproject_id = alpha\n")
    before = {image["id"] for image in cloud.images("alice")}
    refused = cloud.cli("alice", conf, "upload", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                        "--store-cert", "--name", "mixed-up")
    assert refused.returncode == errors.InputError.exit_code, refused.stderr
    alpha = cloud.keystone.accounts["alice"].project_id
    assert "project alpha ([imgsign] project_id" in refused.stderr, refused.stderr
    assert f"project alpha ({alpha})" in refused.stderr and "is that project's name" in refused.stderr
    assert {image["id"] for image in cloud.images("alice")} == before  # no Glance 400: nothing created
    # sign for the openstack CLI: the same refusal.
    signed = cloud.cli("alice", conf, "sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                       "--store-cert", "--format", "openstack", "-q")
    assert signed.returncode == errors.InputError.exit_code and signed.stdout == "", signed.stderr
    # Another project's id: refused too, naming both.
    beta = cloud.keystone.accounts["bob"].project_id
    other = cloud.conf("other.conf", conf.read_text().replace("project_id = alpha", f"project_id = {beta}"))
    refused = cloud.cli("alice", other, "sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                        "--store-cert", "--format", "openstack", "-q")
    assert refused.returncode == errors.InputError.exit_code, refused.stderr
    assert f"project {beta}" in refused.stderr and f"project alpha ({alpha})" in refused.stderr


def test_barbican_with_another_configured_project_is_refused(cloud):
    beta = cloud.keystone.accounts["bob"].project_id
    conf = cloud.conf("barbican-beta.conf", cloud.barbican_conf.read_text() + f"\n[imgsign]\nproject_id = {beta}\n")
    refused = cloud.cli("alice", conf, "cert", "list")
    assert refused.returncode == errors.KeyManagerError.exit_code, refused.stderr
    assert f"project {beta}" in refused.stderr and cloud.project("alice") in refused.stderr


def test_embedded_store_with_a_cloud_uses_the_token_project_and_warns(cloud, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    keystore = tmp_path / "keystore.sqlite3"
    conf = cloud.conf("embedded.conf", f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n")
    signed = cloud.cli("alice", conf, "sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                       "--store-cert", "--format", "openstack", "-q")
    assert signed.returncode == 0, signed.stderr
    assert cloud.project("alice") in signed.stderr, signed.stderr
    assert "warning: the embedded key manager" in signed.stderr and "Glance and Nova cannot read" in signed.stderr
    assert "backend = barbican" in signed.stderr
    cert_id = next(value.partition("=")[2] for value in shlex.split(signed.stdout)
                   if value.startswith("img_signature_certificate_uuid="))
    # Filed under alpha's id (main: under "default"), where Glance, given this store, would look.
    alpha = cloud.keystone.accounts["alice"].project_id
    by_id = cloud.conf("by-id.conf", conf.read_text() + f"\n[imgsign]\nproject_id = {alpha}\n")
    assert cert_id in cloud.cli("alice", by_id, "cert", "list", cloud=False).stdout
    default = cloud.conf("default.conf", conf.read_text() + "\n[imgsign]\nproject_id = default\n")
    assert cert_id not in cloud.cli("alice", default, "cert", "list", cloud=False).stdout


def test_barbican_with_castellan_keystone_options_in_the_config_file(cloud):
    """A service's way (no clouds.yaml): castellan's ``[key_manager] auth_type = keystone_password`` and
    keystoneauth options in the config file. main: a bare context, "missing auth_token", exit 50."""
    auth = cloud.keystone.auth("alice")
    conf = cloud.conf("service-style.conf", cloud.barbican_conf.read_text().replace(
        "[key_manager]\nbackend = barbican\n",
        "[key_manager]\nbackend = barbican\nauth_type = keystone_password\n"
        + "".join(f"{key} = {value}\n" for key, value in auth.items())))
    stored = cloud.cli("alice", conf, "cert", "store", cert_of("ECC_SECP521R1"), cloud=False)
    assert stored.returncode == 0, stored.stderr
    listed = cloud.cli("alice", conf, "cert", "list", cloud=False)
    assert listed.returncode == 0 and stored.stdout.strip() in listed.stdout, listed.stderr
    # The same secret through the user's clouds.yaml session: the same project.
    assert cloud.cli("alice", cloud.barbican_conf, "cert", "show", stored.stdout.strip()).returncode == 0
    deleted = cloud.cli("alice", conf, "cert", "delete", stored.stdout.strip(), cloud=False)
    assert deleted.returncode == 0 and "project alpha" in deleted.stderr, deleted.stderr


def test_sign_with_os_cloud_stores_in_that_clouds_project(cloud, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    keystore = tmp_path / "keystore.sqlite3"
    conf = cloud.conf("embedded-bob.conf",
                      f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n")
    signed = cloud.cli("bob", conf, "sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                       "--store-cert", "--os-cloud", "bob", "-q", cloud=False, clouds_file=True)
    assert signed.returncode == 0, signed.stderr
    assert cloud.project("bob") in signed.stderr, signed.stderr
    unscoped = cloud.cli("bob", conf, "sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                         "-q", cloud=False)  # no session: project "default", where nothing was stored
    assert unscoped.returncode == errors.ObjectNotFound.exit_code, unscoped.stderr
    assert "project default" in unscoped.stderr, unscoped.stderr


def test_verify_reads_the_certificate_from_barbican_with_the_users_token(cloud, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    signed = cloud.cli("alice", cloud.barbican_conf, "sign", image, "--key", key_of("ECC_SECP384R1"),
                       "--cert", cert_of("ECC_SECP384R1"), "--store-cert", "-o", tmp_path / "props.json", "-q")
    assert signed.returncode == 0, signed.stderr
    verified = cloud.cli("alice", cloud.barbican_conf, "verify", image, "--properties", tmp_path / "props.json")
    assert verified.returncode == 0 and verified.stdout.startswith("OK: "), verified.stderr
    # bob's token cannot read alpha's certificate: refused, naming bob's project.
    refused = cloud.cli("bob", cloud.barbican_conf, "verify", image, "--properties", tmp_path / "props.json")
    assert refused.returncode == errors.KeyManagerError.exit_code, refused.stderr
    assert cloud.project("bob") in refused.stderr, refused.stderr


def test_glance_import_plugin_reads_the_certificate_from_barbican_with_the_users_token(
        cloud, keystone, barbican_server, tmp_path):
    """``imgsign_verify`` inside Glance fetches the uploader's certificate from Barbican through castellan
    with the request context Glance builds from the user's token (``[barbican] auth_endpoint``)."""
    with glance_server(tmp_path / "glance-verify", keystone=keystone, keystore=tmp_path / "unused.sqlite3",
                       plugins=["imgsign_verify"], import_options={"imgsign_import": {"require_signature": "True"}},
                       key_manager=barbican_server.castellan_config()) as verifying:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(json.dumps({"clouds": {"alice": keystone.cloud("alice",
                                                                          image_endpoint_override=verifying.url)}}))
        image = make_qcow2(tmp_path / "disk.qcow2")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
        env.update(PYTHONPATH=str(REPO), OS_CLIENT_CONFIG_FILE=str(clouds), OS_CLOUD="alice")
        argv = [sys.executable, "-m", "imgsign", "-c", str(cloud.barbican_conf), "upload", str(image),
                "--key", str(key_of("RSA-PSS")), "--cert", str(cert_of("RSA-PSS")), "--store-cert",
                "--name", "plugin-checked"]
        uploaded = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert uploaded.returncode == 0, uploaded.stderr
        image_id = json.loads(uploaded.stdout)["id"]
        log = verifying.glance_log_text()
        assert f"imgsign_verify: image {image_id}: signature by" in log, log[-3000:]
