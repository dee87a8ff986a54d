"""The boot hook adopts a base whose certificate lives in Barbican, read with the hook's own service user.

Real Keystone, Barbican and glance-api (tests/servers/); Glance's key manager is Barbican, which it
calls with the uploader's token. ``alice`` (project ``alpha``) signs with ``imgsign sign --store-cert``
through her clouds.yaml, so the certificate is a secret of ``alpha``, and uploads the image. The hook
reads certificates as ``imgsign-hook``, a user of project ``service`` with no role in ``alpha``,
from castellan's own credential options in its configuration (``[key_manager] auth_type =
keystone_password``...), as a service is configured.

The least grant that lets it read another project's certificate is a Barbican ACL: ``read`` on that
one secret for that one user (``PUT /v1/secrets/<id>/acl``, Barbican's ``secret_acl_read`` rule); no
role in ``alpha``. Without it the hook is refused (Barbican's ``secret:get``/``secret:decrypt`` need a
role in the secret's project or an ACL), and so is the boot; another service user stays refused with
it. In its own project the hook needs ``member``: listing the deployment's stored CRLs is Barbican's
``secrets:get``, which takes that role.

Fails on main (08393ff): the hook's castellan context was a bare ``RequestContext`` without
credentials, so Barbican behind the hook was impossible (README: "Barbican behind the hook would need
a Keystone token").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imgsign import errors
from tests.conftest import REPO, cert_of, key_of, pki
from tests.servers.glance import glance_server
from tests.test_hook_self_adoption import Cloud, Compute, assert_refused_and_nothing_recorded
from tests.test_real_images import qemu

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

HOOK = "imgsign-hook"
OPERATOR = "hook-operator"


def _run(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "imgsign", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


class BarbicanCloud(Cloud):
    """test_hook_self_adoption's Cloud, with Barbican as everybody's key manager and alice as the uploader."""

    def __init__(self, root: Path, glance, keystone, barbican) -> None:
        self.keystone, self.barbican = keystone, barbican
        self.clouds = root / "clouds.yaml"
        self.clouds.write_text(json.dumps({"clouds": {
            "alice": keystone.cloud("alice", image_endpoint_override=glance.url)}}))
        user_conf = root / "alice.conf"
        user_conf.write_text(barbican.castellan_config())
        self.hook_key_manager = barbican.castellan_config().replace(
            "[key_manager]\nbackend = barbican\n",
            "[key_manager]\nbackend = barbican\nauth_type = keystone_password\n"
            + "".join(f"{key} = {value}\n" for key, value in keystone.auth(HOOK).items()))
        # Listing the deployment's CRLs (secrets of the hook's own project) takes Barbican's member role
        # there (secrets:get); a project of its own would keep that from other services' secrets.
        keystone.grant(HOOK, "member")
        # The trusted CA, stored by an operator (a member of project service) and readable by the hook
        # through a read ACL as well.
        keystone.account(OPERATOR, "service", ("member",))
        ops_conf = root / "ops.conf"
        ops_conf.write_text(self.hook_key_manager.replace(
            "".join(f"{key} = {value}\n" for key, value in keystone.auth(HOOK).items()),
            "".join(f"{key} = {value}\n" for key, value in keystone.auth(OPERATOR).items())))
        env = self.env()
        del env["OS_CLOUD"]
        stored = _run(env, "-c", ops_conf, "cert", "store", pki("intermediate-ca.pem"))
        assert stored.returncode == 0, stored.stderr
        self.grant_read(stored.stdout.strip(), HOOK, owner=OPERATOR)
        super().__init__(root, glance, user_conf, stored.stdout.strip())
        self.headers = {"X-Auth-Token": keystone.token("alice")}  # the uploader's (and Nova's, for her VM)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
        env.update(PYTHONPATH=str(REPO), OS_CLIENT_CONFIG_FILE=str(self.clouds), OS_CLOUD="alice")
        return env

    def signed_upload(self, path: Path) -> tuple[str, str]:
        """alice signs (certificate into alpha's Barbican) and uploads; Glance checks with Barbican: (image, cert)."""
        signed = _run(self.env(), "-c", self.user_conf, "sign", path, "--key", key_of("RSA-PSS"), "--cert",
                      cert_of("RSA-PSS"), "--store-cert", "-q")
        assert signed.returncode == 0, signed.stderr
        properties = json.loads(signed.stdout)
        image_id = self.image(path, "raw", properties)
        return image_id, properties["img_signature_certificate_uuid"]

    def grant_read(self, secret_id: str, user: str, owner: str = "alice") -> None:
        """``owner``'s Barbican ACL: ``read`` of that secret for ``user`` alone."""
        response = requests.put(f"{self.barbican.url}/v1/secrets/{secret_id}/acl", timeout=30,
                                headers={"X-Auth-Token": self.keystone.token(owner)},
                                json={"read": {"users": [self.keystone.accounts[user].user_id],
                                               "project-access": True}})
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone, barbican_server) -> Iterator[BarbicanCloud]:
    root = tmp_path_factory.mktemp("hook-barbican")
    os.chmod(root, 0o755)
    with glance_server(root / "glance", keystone=keystone, keystore=root / "unused.sqlite3", import_methods=(),
                       key_manager=barbican_server.castellan_config()) as glance:
        yield BarbicanCloud(root, glance, keystone, barbican_server)


@pytest.fixture
def compute(cloud) -> Iterator[Compute]:
    path = Path(tempfile.mkdtemp(prefix="imgsign-hook-barbican-", dir="/tmp"))
    os.chmod(path, 0o755)
    host = Compute(path, cloud)
    host.configure(key_manager=cloud.hook_key_manager)
    yield host
    shutil.rmtree(path, ignore_errors=True)


def _raw_image(directory: Path, pattern: str) -> Path:
    path = directory / f"{uuid.uuid4()}.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", path, "16M")
    qemu("qemu-io", "-f", "raw", "-c", f"write -P {pattern} 0 3M", path)
    return path


def test_hook_adopts_with_a_read_acl_for_its_service_user_and_is_refused_without(compute, cloud):
    refused_id, refused_cert = cloud.signed_upload(_raw_image(compute.tmp, "0x4f"))
    compute.nova_download(refused_id)
    refused = compute.boot_image(refused_id)  # no ACL: imgsign-hook has no right to alpha's secret
    assert_refused_and_nothing_recorded(compute, refused, refused_id, errors.KeyManagerError.exit_code, "Forbidden")

    cloud.grant_read(refused_cert, HOOK)
    compute.configure(key_manager=cloud.hook_key_manager)
    adopted = compute.boot_image(refused_id)
    assert adopted.returncode == 0, adopted.stderr
    assert compute.record(refused_id) is not None
    # The ACL is for that user alone: another service user (the gateway's) still cannot read it.
    gateway = cloud.hook_key_manager.replace(f"username = {HOOK}\n", "username = imgsign-gateway\n").replace(
        f"password = {cloud.keystone.accounts[HOOK].password}\n",
        f"password = {cloud.keystone.accounts['imgsign-gateway'].password}\n")
    conf = compute.tmp / "gateway.conf"
    conf.write_text(gateway)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
    env["PYTHONPATH"] = str(REPO)
    shown = _run(env, "-c", conf, "cert", "show", refused_cert)
    assert shown.returncode == errors.KeyManagerError.exit_code, shown.stderr
    assert "forbidden" in shown.stderr.lower() and "project service" in shown.stderr, shown.stderr
