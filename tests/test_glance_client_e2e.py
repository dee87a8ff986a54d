"""``imgsign upload`` and ``imgsign verify --image`` against a real Glance 33 (tests/servers/glance.py).

imgsign authenticates as a real client: keystoneauth's ``password`` plugin against the
session's Keystone (tests/servers/keystone.py), as a member of project ``demo``, from a
clouds.yaml found through ``OS_CLIENT_CONFIG_FILE`` and chosen with
``--os-cloud``/``OS_CLOUD`` (``image_endpoint_override``: each Glance instance has its
own port). Glance validates the token with keystonemiddleware.

Glance instances, each started on first use and kept for the module:

* ``direct``: glance-direct imports with ``imgsign_verify``, ``image_conversion``
  (to raw) and ``imgsign_resign``, as an operator would run them;
* ``bare``: glance-direct without plugins: only Glance's own signature check runs
  on import (one test);
* ``legacy``: no import methods at all (only ``PUT /file``), no plugins: imgsign
  falls back to hashing first and uploading second, and Glance's own signature
  check is the one that runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from imgsign import errors
from tests.conftest import REPO, assert_no_python_warning, cert_of, key_of, pki
from tests.servers.glance import GlanceServer, glance_server, wait_for
from tests.servers.keystone import KeystoneServer
from tests.test_glance_e2e import SERVICE, USER, _conf, _stored_id, make_qcow2
from tests.test_real_images import qemu

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

KEYS = ("RSA-PSS", "ECC_SECP384R1", "DSA")


#: The Glance instances: (import plugins, glance-image-import.conf sections, import methods); see the module doc.
def _settings(name: str, service: dict[str, str]) -> dict[str, object]:
    if name == "direct":
        return {"plugins": ["imgsign_verify", "image_conversion", "imgsign_resign"],
                "import_options": {"image_conversion": {"output_format": "raw"}, "imgsign_import": service}}
    if name == "bare":
        return {}
    if name == "legacy":
        return {"import_methods": ()}
    raise AssertionError(name)


class Env:
    """The deployment: keystore, the user's imgsign.conf, the Glances (each started on first use, then
    kept for the module) and the clouds.yaml naming them."""

    def __init__(self, root: Path, keystore: Path, service: dict[str, str], stack: contextlib.ExitStack,
                 keystone: KeystoneServer, roles: tuple[str, ...] = ("member",)) -> None:
        self.root, self.keystore, self.service, self.stack = root, keystore, service, stack
        self.keystone = keystone
        self.user = keystone.project_user(USER, roles)
        self.user_conf = _conf(root / "user.conf", keystore, self.user.project_id)
        self.clouds = root / "clouds.yaml"
        self.servers: dict[str, GlanceServer] = {}
        self._write_clouds()

    def server(self, name: str) -> GlanceServer:
        if name not in self.servers:
            self.servers[name] = self.stack.enter_context(glance_server(
                self.root / f"glance-{name}", keystone=self.keystone, keystore=self.keystore,
                **_settings(name, self.service)))
            self._write_clouds()
        return self.servers[name]

    @property
    def direct(self) -> GlanceServer:
        return self.server("direct")

    @property
    def legacy(self) -> GlanceServer:
        return self.server("legacy")

    def _write_clouds(self) -> None:
        clouds = {name: self.keystone.cloud(self.user.user, image_endpoint_override=server.url)
                  for name, server in self.servers.items()}
        # A token Keystone never issued, sent straight to Glance: keystonemiddleware refuses it.
        clouds["bad-token"] = _token_cloud(
            self.servers["direct"].url if "direct" in self.servers else "http://127.0.0.1:9", "not-a-valid-token")
        clouds["stopped"] = self.keystone.cloud(self.user.user, image_endpoint_override="http://127.0.0.1:9")
        self.clouds.write_text(json.dumps({"clouds": clouds}))  # JSON is YAML

    def cli_env(self, cloud: str) -> dict[str, str]:
        if cloud in ("direct", "bare", "legacy"):
            self.server(cloud)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_DEBUG"))}
        env.update(OS_CLIENT_CONFIG_FILE=str(self.clouds), OS_CLOUD=cloud, PYTHONPATH=str(REPO))
        return env

    def cli(self, cloud: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "imgsign", "-c", str(self.user_conf), *map(str, args)],
                              capture_output=True, text=True, env=self.cli_env(cloud), timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert_no_python_warning(proc.stderr)
        return proc

    def api(self, server: GlanceServer, method: str, path: str, **kwargs: object) -> requests.Response:
        return requests.request(method, f"{server.url}/v2{path}", headers=server.headers(USER), timeout=30,
                                **kwargs)  # type: ignore[arg-type]


def _token_cloud(url: str, token: str) -> dict[str, object]:
    return {"auth_type": "admin_token", "auth": {"endpoint": url, "token": token}}


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystone) -> Env:
    root = tmp_path_factory.mktemp("glance-client")
    keystore = root / "keystore.sqlite3"
    service_project_id = keystone.project_user(SERVICE).project_id
    service_conf = _conf(root / "service.conf", keystore, service_project_id)
    service = {"service_key_id": _stored_id("-c", service_conf, "key", "store", key_of("ECC_SECP384R1")),
               "service_certificate_id": _stored_id("-c", service_conf, "cert", "store", cert_of("ECC_SECP384R1")),
               "service_project_id": service_project_id}
    with contextlib.ExitStack() as stack:
        yield Env(root, keystore, service, stack, keystone)


def signing_args(key_type: str) -> list[object]:
    return ["--key", key_of(key_type), "--cert", cert_of(key_type), "--store-cert"]


def make_raw(path: Path) -> Path:
    qemu("qemu-img", "create", "-q", "-f", "raw", path, "8M")
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 2M", "-c", "write -P 0x5c 7M 1M", path)
    return path


def upload(env: Env, cloud: str, image: Path, key_type: str = "RSA-PSS", *extra: object) -> subprocess.CompletedProcess[str]:
    return env.cli(cloud, "upload", image, *signing_args(key_type), "--name", f"imgsign-{image.name}", *extra)


def image_ids(env: Env, server: GlanceServer) -> set[str]:
    response = env.api(server, "GET", "/images?limit=1000")
    assert response.status_code == 200, response.text
    return {image["id"] for image in response.json()["images"]}


# --- upload ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEYS)
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload_signs_imports_and_verifies(env, tmp_path, fmt, key_type):
    image = make_qcow2(tmp_path / "disk.qcow2") if fmt == "qcow2" else make_raw(tmp_path / "disk.raw")
    uploaded = upload(env, "direct", image, key_type)
    assert uploaded.returncode == 0, uploaded.stderr
    report = json.loads(uploaded.stdout)
    image_id = report["id"]
    assert report["status"] == "active" and report["import_method"] == "glance-direct", report
    # The report shows the properties Glance holds after the import (issue 20: it showed those imgsign sent): a
    # qcow2 was converted and re-signed by imgsign_resign with the service key, a raw image keeps the uploader's.
    shown = env.api(env.direct, "GET", f"/images/{image_id}").json()
    assert report["properties"] == {k: v for k, v in shown.items() if k.startswith(("img_signature", "imgsign_"))}
    assert report["properties"]["img_signature_key_type"] == ("ECC_SECP384R1" if fmt == "qcow2" else key_type)
    if fmt == "qcow2":
        assert "img_signature" in report["changed_by_glance"], report
        assert ("img_signature_key_type" in report["changed_by_glance"]) == (key_type != "ECC_SECP384R1"), report
        assert "Glance holds other signature properties than imgsign sent" in uploaded.stderr, uploaded.stderr
    else:
        assert report["changed_by_glance"] == [] and "other signature properties" not in uploaded.stderr
    log = env.direct.glance_log_text()
    assert f"imgsign_verify: image {image_id}: signature by" in log
    assert f"Successfully verified signature for image {image_id}" in log  # Glance's own check when storing
    assert not list(env.direct.staging_dir.glob(f"{image_id}*"))

    verified = env.cli("direct", "verify", "--image", image_id, "--json")
    assert verified.returncode == 0, verified.stderr
    result = json.loads(verified.stdout)
    assert result["valid"] is True and result["image"] == image_id
    # a qcow2 was converted and re-signed by the service key; a raw image keeps the uploader's signature
    assert result["img_signature_key_type"] == ("ECC_SECP384R1" if fmt == "qcow2" else key_type)


def test_upload_without_glance_direct_hashes_then_puts_the_file(env, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    uploaded = upload(env, "legacy", image, "ECC_SECP384R1")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "does not offer glance-direct" in uploaded.stderr
    report = json.loads(uploaded.stdout)
    assert report["status"] == "active" and report["import_method"] == "file", report
    assert f"Successfully verified signature for image {report['id']}" in env.legacy.glance_log_text()
    verified = env.cli("legacy", "verify", "--image", report["id"])
    assert verified.returncode == 0, verified.stderr
    shown = env.api(env.legacy, "GET", f"/images/{report['id']}").json()
    assert shown["size"] == image.stat().st_size and shown["disk_format"] == "qcow2"


# --- failures: refusals, interruptions --------------------------------------------------------------


def _upload_in_process(env: Env, cloud: str, image: Path, after_hash) -> errors.ImgsignError:
    """The library's upload_signed with a real client and real signer; ``after_hash(image_id)`` runs at
    the point between the data transfer (or hash pass) and the import: the hook to tamper with."""
    from imgsign._internal.openstack_auth import session_from_cloud
    from imgsign.algorithms import HashMethod
    from imgsign.glance.upload import upload_signed
    from imgsign.keys.loading import load_private_key
    from imgsign.signer import Signer

    env.server(cloud)
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(env.clouds)
    try:
        glance = session_from_cloud(cloud).glance()
    finally:
        del os.environ["OS_CLIENT_CONFIG_FILE"]
    cert_id = _stored_id("-c", env.user_conf, "cert", "store", cert_of("RSA-PSS"))
    signer = Signer(load_private_key(key_of("RSA-PSS").read_bytes()), cert_id, HashMethod.SHA256)

    def make_properties(digest, handle, head):
        after_hash()
        return signer.sign_digest(digest).as_dict()

    with pytest.raises(errors.ImgsignError) as caught:
        upload_signed(glance, str(image), {"name": "tampered", "disk_format": "raw", "container_format": "bare"},
                      HashMethod.SHA256, make_properties, import_timeout=60)
    return caught.value


@pytest.mark.parametrize(("cloud", "refusal"), [
    ("bare", None),  # Glance's own check while storing the import (its task says only "Internal Error")
    ("direct", "imgsign_verify refused image"),  # imgsign's plugin, before anything is stored
])
def test_tampered_stage_is_refused_on_import_and_the_image_deleted(env, tmp_path, cloud, refusal):
    server = env.server(cloud)
    image = make_raw(tmp_path / "disk.raw")
    before = image_ids(env, server)
    staged: list[Path] = []

    def tamper():
        [path] = [p for p in server.staging_dir.iterdir() if p.name not in before]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        staged.append(path)

    error = _upload_in_process(env, cloud, image, tamper)
    assert isinstance(error, errors.ImportFailed), error
    image_id = staged[0].name
    assert "was deleted" in error.message, error.message
    if refusal is not None:
        assert refusal in error.message, error.message
    else:
        log = server.glance_log_text()
        assert f"Signature verification failed for image {image_id}" in log or "SignatureVerificationError" in log
    assert image_ids(env, server) == before
    assert env.api(server, "GET", f"/images/{image_id}").status_code == 404
    assert not staged[0].exists()
    assert not list(server.images_dir.glob(f"{image_id}*"))


def test_file_changed_between_hash_and_put_is_refused_by_glances_own_check(env, tmp_path):
    image = make_raw(tmp_path / "disk.raw")
    before = image_ids(env, env.legacy)

    def tamper():
        with open(image, "r+b") as handle:
            handle.seek(2 * 1024 * 1024)
            handle.write(b"\x00")

    error = _upload_in_process(env, "legacy", image, tamper)
    assert isinstance(error, errors.ImportFailed), error
    assert "Signature verification failed" in error.message and "was deleted" in error.message, error.message
    assert image_ids(env, env.legacy) == before


@pytest.mark.parametrize(("phase", "signum"), [("stage", signal.SIGINT), ("import", signal.SIGTERM)])
def test_interrupted_upload_deletes_the_image(env, tmp_path, phase, signum):
    """Ctrl-C while the data is staged, a stop (SIGTERM) while Glance imports it: the image is deleted."""
    image = tmp_path / "big.raw"
    with open(image, "wb") as handle:
        handle.truncate(3 * 1024 ** 3)  # sparse: quick to read, slow enough to send and import
    before = image_ids(env, env.direct)
    proc = subprocess.Popen([sys.executable, "-m", "imgsign", "-c", str(env.user_conf), "upload", image,
                             *signing_args("RSA-PSS"), "-q"], env=env.cli_env("direct"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def staging_started():
            return [p for p in env.direct.staging_dir.iterdir() if p.stat().st_size > 0 and p.name not in before]

        [staged] = wait_for("the upload to reach the staging area", staging_started, timeout=60, interval=0.05)
        image_id = staged.name
        if phase == "import":
            wait_for(f"image {image_id} to be importing", lambda: env.api(
                env.direct, "GET", f"/images/{image_id}").json()["status"] == "importing", timeout=120, interval=0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == errors.UploadInterrupted.exit_code, err
    assert "the upload was interrupted" in err and f"image {image_id} was deleted" in err, err
    assert "Traceback" not in err
    assert image_ids(env, env.direct) == before
    wait_for("the staged data to go", lambda: not staged.exists(), timeout=30)
    wait_for("no stored data", lambda: not list(env.direct.images_dir.glob(f"{image_id}*")), timeout=60)


# --- verify --image ----------------------------------------------------------------------------------


def test_verify_image_whose_data_was_replaced_behind_glances_back(env, tmp_path):
    image = make_raw(tmp_path / "disk.raw")
    uploaded = upload(env, "direct", image)
    assert uploaded.returncode == 0, uploaded.stderr
    image_id = json.loads(uploaded.stdout)["id"]
    [stored] = env.direct.images_dir.glob(f"{image_id}*")
    data = bytearray(stored.read_bytes())
    data[5 * 1024 * 1024] ^= 0x01
    stored.write_bytes(bytes(data))
    verified = env.cli("direct", "verify", "--image", image_id, "--json")
    assert verified.returncode == errors.InvalidSignature.exit_code, verified.stderr
    assert json.loads(verified.stdout)["reason"] == errors.InvalidSignature.reason


def test_verify_image_errors(env, tmp_path):
    unknown = env.cli("direct", "verify", "--image", "6d0f0a6e-0000-4000-8000-000000000000")
    assert unknown.returncode == errors.ImageNotFound.exit_code, unknown.stderr
    assert "has no image 6d0f0a6e-0000-4000-8000-000000000000" in unknown.stderr

    # A signed record without data: the properties are fine, the data is missing.
    cert_id = _stored_id("-c", env.user_conf, "cert", "store", cert_of("RSA-PSS"))
    signed = env.cli("direct", "sign", make_raw(tmp_path / "disk.raw"), "--key", key_of("RSA-PSS"),
                     "--cert-uuid", cert_id)
    assert signed.returncode == 0, signed.stderr
    created = env.api(env.direct, "POST", "/images", json={"name": "no-data", "disk_format": "raw",
                                                           "container_format": "bare", **json.loads(signed.stdout)})
    assert created.status_code == 201, created.text
    empty = env.cli("direct", "verify", "--image", created.json()["id"], "--json")
    assert empty.returncode == errors.ImageHasNoData.exit_code, empty.stderr
    assert json.loads(empty.stdout)["reason"] == errors.ImageHasNoData.reason

    for cloud in ("stopped", "bad-token"):
        unavailable = env.cli(cloud, "verify", "--image", created.json()["id"])
        assert unavailable.returncode == errors.GlanceUnavailable.exit_code, (cloud, unavailable.stderr)
        before = image_ids(env, env.direct)
        not_uploaded = upload(env, cloud, tmp_path / "disk.raw")
        assert not_uploaded.returncode == errors.GlanceUnavailable.exit_code, (cloud, not_uploaded.stderr)
        assert image_ids(env, env.direct) == before

    unknown_cloud = env.cli("no-such-cloud", "verify", "--image", created.json()["id"])
    assert unknown_cloud.returncode == errors.InputError.exit_code, unknown_cloud.stderr
    assert "no-such-cloud" in unknown_cloud.stderr

    # An image without any img_signature* property is unsigned (60), as audit and the hook call it; one
    # with only some of them is malformed (11).
    bare = env.api(env.direct, "POST", "/images", json={"name": "unsigned", "disk_format": "raw",
                                                        "container_format": "bare"})
    assert bare.status_code == 201, bare.text
    unsigned = env.cli("direct", "verify", "--image", bare.json()["id"], "--json")
    assert unsigned.returncode == errors.UnsignedImage.exit_code, unsigned.stderr
    assert json.loads(unsigned.stdout)["reason"] == errors.UnsignedImage.reason
    partial = env.api(env.direct, "POST", "/images", json={"name": "partial", "disk_format": "raw",
                                                          "container_format": "bare",
                                                          "img_signature_hash_method": "SHA-256"})
    assert partial.status_code == 201, partial.text
    malformed = env.cli("direct", "verify", "--image", partial.json()["id"])
    assert malformed.returncode == errors.PropertiesError.exit_code, malformed.stderr


def test_verify_image_usage(env, tmp_path):
    both = env.cli("direct", "verify", tmp_path / "x", "--image", "abc")
    assert both.returncode == 2 and "either IMAGE" in both.stderr
    with_properties = env.cli("direct", "verify", "--image", "abc", "--properties", tmp_path / "p.json")
    assert with_properties.returncode == 2 and "leave out --properties" in with_properties.stderr


def test_verify_image_streams_without_writing_to_disk(env, tmp_path):
    image = make_raw(tmp_path / "disk.raw")
    uploaded = upload(env, "direct", image)
    assert uploaded.returncode == 0, uploaded.stderr
    image_id = json.loads(uploaded.stdout)["id"]
    script = (
        "import sys, runpy\n"
        "sys.argv = ['imgsign', '-c', sys.argv[1], 'verify', '--image', sys.argv[2], '-q']\n"
        "try:\n    runpy.run_module('imgsign', run_name='__main__')\n"
        "finally:\n"
        "    io = dict(l.split(': ') for l in open('/proc/self/io').read().splitlines())\n"
        "    sys.stderr.write('WCHAR=%s\\n' % io['wchar'])\n"
    )
    env_vars = env.cli_env("direct")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, str(env.user_conf), image_id], capture_output=True,
                          text=True, env=env_vars, timeout=120)
    assert time.monotonic() - start < 120
    wchar = int(proc.stderr.rsplit("WCHAR=", 1)[1].split()[0])
    # Everything written (socket sends included) is far below the image's 8 MiB: nothing went to disk.
    assert wchar < image.stat().st_size // 4, proc.stderr
