"""End to end with a real Glance 33 (tests/servers/glance.py): uploads, imports and imgsign's import plugins.

Everything goes through Glance's HTTP API on 127.0.0.1, as a member of the Keystone
project ``demo`` with a real token (Glance runs behind keystonemiddleware and the
session's Keystone, tests/servers/keystone.py). Glance and the imgsign CLI share one
embedded key manager store (castellan ``[key_manager] backend = imgsign``): the
signer's certificate is stored in ``demo`` (by its Keystone project *id*, which is what
Glance's request context carries) by ``imgsign sign --store-cert``; the deployment's
re-signing key and certificate and the trusted CA live in the project
``imgsign-service`` (by id too).

Glance instances (started on first use, once per pytest-xdist worker):

* ``full``: ``image_import_plugins = ['imgsign_verify', 'image_conversion',
  'imgsign_resign']``, ``output_format = raw``, ``trusted_certificate_ids`` = the
  test PKI's intermediate CA; also serves the plain ``PUT /file`` uploads, which
  no import plugin touches (only Glance's own cursive check runs there);
* ``strict``: ``['imgsign_verify']`` with ``require_signature = True``;
* ``no-verify``: ``['image_conversion', 'imgsign_resign']``, a misconfiguration
  that must not re-sign anything;
* ``to-qcow2``: like ``full`` but ``output_format = qcow2``: the re-signed qcow2 gets a
  raw-digest statement, for the raw conversion Nova makes of it;
* ``no-copy``: like ``full`` (without trusted ids) but ``copy_certificate_to_project =
  False``, so the re-signed image names a certificate the user's project cannot see.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imgsign import errors
from imgsign.compute.trust_record import cache_name
from tests.conftest import REPO, cert_of, key_of, pki, run_cli
from tests.servers.glance import GlanceServer, glance_server, wait_for
from tests.servers.nova import fetch_to_raw
from tests.test_real_images import qemu

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

USER = "demo"
SERVICE = "imgsign-service"
SIGNATURE_PROPERTIES = ("img_signature", "img_signature_hash_method", "img_signature_key_type",
                        "img_signature_certificate_uuid")
TIMEOUT = 30


@dataclass
class Deployment:
    root: Path
    keystore: Path
    user_conf: Path
    service_key_id: str
    service_cert_id: str
    trusted_ca_id: str
    user_project_id: str
    service_project_id: str


def _conf(path: Path, keystore: Path, project: str) -> Path:
    path.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
                    f"[imgsign]\nproject_id = {project}\n")
    return path


def _stored_id(*args: object) -> str:
    result = run_cli(*args)
    assert result.code == 0, result
    return result.stdout.strip()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory, keystone) -> Deployment:
    root = tmp_path_factory.mktemp("glance")
    keystore = root / "keystore.sqlite3"
    user_project_id = keystone.project_user(USER).project_id
    service_project_id = keystone.project_user(SERVICE).project_id
    service_conf = _conf(root / "service.conf", keystore, service_project_id)
    return Deployment(
        root, keystore, _conf(root / "user.conf", keystore, user_project_id),
        service_key_id=_stored_id("-c", service_conf, "key", "store", key_of("ECC_SECP384R1")),
        service_cert_id=_stored_id("-c", service_conf, "cert", "store", cert_of("ECC_SECP384R1")),
        trusted_ca_id=_stored_id("-c", service_conf, "cert", "store", pki("intermediate-ca.pem")),
        user_project_id=user_project_id, service_project_id=service_project_id,
    )


def _import_policy(dep: Deployment) -> Path:
    """A trust policy for the import plugin: the intermediate CA by key-manager id (stored in the service project)
    for every image; the user project's snapshots in audit mode."""
    path = dep.root / "import-policy.yaml"
    path.write_text(json.dumps({
        "version": 1,
        "trustStores": {"ca": {"keyManager": [dep.trusted_ca_id]}},
        "rules": [
            {"name": "user-snapshots", "scope": {"owner": dep.user_project_id, "imageType": "snapshot"},
             "level": "audit", "trustStores": ["ca"], "trustedIdentities": ["*"]},
            {"name": "everything", "scope": "*", "level": "strict", "trustStores": ["ca"],
             "trustedIdentities": ["*"]},
        ]}))
    return path


def _instance_settings(name: str, dep: Deployment) -> tuple[list[str], dict[str, dict[str, str]]]:
    service = {"service_key_id": dep.service_key_id, "service_certificate_id": dep.service_cert_id,
               "service_project_id": dep.service_project_id}
    if name == "full":
        return (["imgsign_verify", "image_conversion", "imgsign_resign"],
                {"image_conversion": {"output_format": "raw"},
                 "imgsign_import": {"trusted_certificate_ids": dep.trusted_ca_id, **service}})
    if name == "no-copy":
        return (["imgsign_verify", "image_conversion", "imgsign_resign"],
                {"image_conversion": {"output_format": "raw"},
                 "imgsign_import": {"copy_certificate_to_project": "False", **service}})
    if name == "to-qcow2":
        return (["imgsign_verify", "image_conversion", "imgsign_resign"],
                {"image_conversion": {"output_format": "qcow2"},
                 "imgsign_import": {"trusted_certificate_ids": dep.trusted_ca_id, **service}})
    if name == "strict":
        return ["imgsign_verify"], {"imgsign_import": {"require_signature": "True"}}
    if name == "policy":
        return ["imgsign_verify"], {"imgsign_import": {"policy_file": str(_import_policy(dep)),
                                                       "service_project_id": dep.service_project_id}}
    if name == "invalid":
        return ["imgsign_verify"], {"imgsign_import": {"require_signature": "sometimes"}}
    if name == "no-verify":
        return ["image_conversion", "imgsign_resign"], {"image_conversion": {"output_format": "raw"},
                                                        "imgsign_import": service}
    raise AssertionError(name)


@pytest.fixture(scope="session")
def glance_instances(deployment, keystone):
    """Start each Glance configuration on first use; stop them all at the end of the session."""
    running: dict[str, GlanceServer] = {}
    with contextlib.ExitStack() as stack:
        def get(name: str) -> GlanceServer:
            if name not in running:
                plugins, options = _instance_settings(name, deployment)
                running[name] = stack.enter_context(glance_server(
                    deployment.root / f"glance-{name}", keystone=keystone, keystore=deployment.keystore,
                    plugins=plugins,
                    import_options=options))
            return running[name]

        yield get


@pytest.fixture
def glance(glance_instances) -> GlanceServer:
    return glance_instances("full")


# --- helpers -----------------------------------------------------------------------------------


def make_qcow2(path: Path) -> Path:
    """A small real qcow2 with guest data written through qemu-io."""
    qemu("qemu-img", "create", "-q", "-f", "qcow2", path, "64M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 2M", "-c", "write -P 0x5c 32M 1M", path)
    return path


def flip_last_byte(path: Path) -> None:
    """Flip one byte of guest data (the last cluster holds the 0x5c pattern): still a valid qcow2."""
    data = bytearray(path.read_bytes())
    assert data[-1] == 0x5C
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def sign(dep: Deployment, image: Path, leaf: str = "RSA-PSS") -> dict[str, str]:
    if leaf in ("RSA-PSS", "ECC_SECP384R1"):
        key, cert = key_of(leaf), cert_of(leaf)
    else:
        key, cert = pki(f"{leaf}.key"), pki(f"{leaf}.pem")
    signed = run_cli("-c", dep.user_conf, "sign", image, "--key", key, "--cert", cert, "--store-cert", "-q")
    assert signed.code == 0, signed
    return signed.json()


class API:
    """The few Glance v2 calls the tests make, as user project ``demo``."""

    def __init__(self, server: GlanceServer, project: str = USER) -> None:
        self.server = server
        self.headers = server.headers(project)

    def _url(self, path: str) -> str:
        return f"{self.server.url}/v2/images{path}"

    def create(self, properties: dict[str, str] | None = None, disk_format: str = "qcow2") -> str:
        body = {"name": "imgsign-e2e", "disk_format": disk_format, "container_format": "bare", **(properties or {})}
        response = requests.post(self._url(""), json=body, headers=self.headers, timeout=TIMEOUT)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def _put(self, image_id: str, what: str, path: Path) -> requests.Response:
        with open(path, "rb") as data:
            return requests.put(self._url(f"/{image_id}/{what}"), data=data, timeout=TIMEOUT,
                                headers={**self.headers, "Content-Type": "application/octet-stream"})

    def upload(self, image_id: str, path: Path) -> requests.Response:
        return self._put(image_id, "file", path)

    def stage(self, image_id: str, path: Path) -> None:
        response = self._put(image_id, "stage", path)
        assert response.status_code == 204, response.text

    def show(self, image_id: str) -> dict:
        response = requests.get(self._url(f"/{image_id}"), headers=self.headers, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return response.json()

    def import_staged(self, image_id: str) -> dict:
        """glance-direct import of the staged data; wait for the import task to end and return it."""
        response = requests.post(self._url(f"/{image_id}/import"), json={"method": {"name": "glance-direct"}},
                                 headers=self.headers, timeout=TIMEOUT)
        assert response.status_code == 202, response.text

        def finished():
            response = requests.get(self._url(f"/{image_id}/tasks"), headers=self.headers, timeout=TIMEOUT)
            assert response.status_code == 200, response.text
            tasks = response.json()["tasks"]
            return tasks[0] if tasks and tasks[0]["status"] in ("success", "failure") else None

        return wait_for(f"the import task of image {image_id}", finished, on_timeout=self.server.dump_threads)

    def import_image(self, path: Path, properties: dict[str, str] | None = None,
                     disk_format: str = "qcow2") -> tuple[str, dict]:
        """Create an image, stage ``path`` and import it: (image id, the finished import task)."""
        image_id = self.create(properties, disk_format)
        self.stage(image_id, path)
        return image_id, self.import_staged(image_id)

    def download(self, image_id: str, dest: Path) -> Path:
        with requests.get(self._url(f"/{image_id}/file"), headers=self.headers, stream=True,
                          timeout=TIMEOUT) as response:
            assert response.status_code == 200, response.text
            with open(dest, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
        return dest


def assert_refused_before_any_store(server: GlanceServer, api: API, image_id: str, task: dict, reason: str) -> None:
    """The import failed in an imgsign plugin: nothing stored, staging cleaned, the reason visible."""
    assert task["status"] == "failure", task
    assert reason in task["message"], task
    image = api.show(image_id)
    assert image["status"] == "queued", image
    assert image["os_glance_failed_import"] == "fs", image
    assert not list(server.images_dir.glob(f"{image_id}*"))
    assert not list(server.staging_dir.glob(f"{image_id}*")), "the staged data was not removed"
    assert task["message"] in server.glance_log_text()


def cursive(dep: Deployment, server: GlanceServer, jobs: list[dict]) -> list[str]:
    """Results of cursive's get_verifier (as Glance and Nova run it) for each job."""
    config = dep.root / "cursive.conf"
    config.write_text(server.castellan_config())
    jobs_file = dep.root / "cursive-jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "cursive_host.py"), str(config), str(jobs_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- uploads: Glance's own cursive check ------------------------------------------------------------


def test_signed_qcow2_uploads_and_goes_active(glance, deployment, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    api = API(glance)
    image_id = api.create(sign(deployment, image))
    response = api.upload(image_id, image)
    assert response.status_code == 204, response.text
    shown = api.show(image_id)
    assert shown["status"] == "active", shown
    assert shown["size"] == image.stat().st_size
    assert f"Successfully verified signature for image {image_id}" in glance.glance_log_text()


def test_one_flipped_byte_is_refused_by_glance(glance, deployment, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    properties = sign(deployment, image)
    flip_last_byte(image)
    api = API(glance)
    image_id = api.create(properties)
    response = api.upload(image_id, image)
    assert response.status_code == 400, response.text
    assert "Signature verification failed" in response.text
    assert api.show(image_id)["status"] != "active"
    assert not list(glance.images_dir.glob(f"{image_id}*"))


# --- imports: imgsign_verify, image_conversion, imgsign_resign ---------------------------------------


def test_import_of_tampered_image_is_refused_before_any_store(glance, deployment, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    properties = sign(deployment, image)
    flip_last_byte(image)
    api = API(glance)
    image_id = api.create(properties)
    api.stage(image_id, image)
    assert (glance.staging_dir / image_id).is_file()
    task = api.import_staged(image_id)
    assert_refused_before_any_store(glance, api, image_id, task,
                                    f"imgsign_verify refused image {image_id}: invalid-signature:")
    # Nothing after imgsign_verify ran: no conversion output, no re-signing.
    assert f"Updated image {image_id}" not in glance.glance_log_text()
    assert api.show(image_id)["img_signature"] == properties["img_signature"]


def test_import_converts_and_resigns_so_glance_imgsign_and_cursive_verify(glance, deployment, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    original = sign(deployment, image)
    api = API(glance)
    image_id, task = api.import_image(image, original)
    assert task["status"] == "success", task

    shown = api.show(image_id)
    assert shown["status"] == "active", shown
    assert shown["disk_format"] == "raw"
    for name in SIGNATURE_PROPERTIES:  # the uploader's signature is kept for the record
        assert shown[f"imgsign_original_{name}"] == original[name]
    # The uploader's raw-digest statement (imgsign sign adds one to a qcow2) bound the uploader's
    # signature, which the converted bytes no longer carry: it is gone.
    assert any(name.startswith("imgsign_raw_v1_") for name in original)
    assert not [name for name in shown if name.startswith("imgsign_raw_v1_")], shown
    assert shown["img_signature_key_type"] == "ECC_SECP384R1"  # the service key's
    assert shown["img_signature_hash_method"] == original["img_signature_hash_method"]
    assert shown["img_signature"] != original["img_signature"]
    # The service certificate, copied into the user's project so user-context checks find it.
    assert shown["img_signature_certificate_uuid"] != deployment.service_cert_id
    log = glance.glance_log_text()
    assert f"imgsign_verify: image {image_id}: signature by" in log
    assert f"imgsign_resign: image {image_id} re-signed" in log
    assert f"Successfully verified signature for image {image_id}" in log  # Glance's cursive check at store time

    raw = api.download(image_id, tmp_path / "downloaded.raw")
    assert raw.stat().st_size == shown["size"] == 64 * 1024 * 1024
    document = tmp_path / "image.json"
    document.write_text(json.dumps(shown))
    verified = run_cli("-c", deployment.user_conf, "verify", raw, "--properties", document, "--json", "-q")
    assert verified.code == 0, verified
    assert "leaf-ecc-secp384r1" in json.dumps(verified.json())

    new_properties = {name: shown[name] for name in SIGNATURE_PROPERTIES}
    assert cursive(deployment, glance, [
        {"image": str(raw), "properties": new_properties, "project_id": deployment.user_project_id},
        {"image": str(raw), "properties": original, "project_id": deployment.user_project_id},  # conversion broke the original
    ]) == ["ok", "InvalidSignature"]


def test_import_converted_to_qcow2_gets_a_raw_statement_that_adopts_novas_raw_conversion(
        glance_instances, deployment, tmp_path):
    """Glance converts a signed raw image to qcow2 and re-signs it; Nova downloads the qcow2 and
    converts it back to raw into ``_base``: ``imgsign boot adopt`` accepts that base with the properties
    Glance reports (the service key's statement), and refuses a tampered statement (33)."""
    server = glance_instances("to-qcow2")
    image = tmp_path / "disk.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", image, "24M")
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 2M", "-c", "write -P 0x7e 20M 1M", image)
    original = sign(deployment, image)
    assert not [name for name in original if name.startswith("imgsign_raw_v1_")]  # a raw image has none
    api = API(server)
    image_id, task = api.import_image(image, original, disk_format="raw")
    assert task["status"] == "success", task
    shown = api.show(image_id)
    assert shown["status"] == "active" and shown["disk_format"] == "qcow2", shown
    assert shown["img_signature_key_type"] == "ECC_SECP384R1"  # the service key's
    statement = {name: shown[name] for name in shown if name.startswith("imgsign_raw_v1_")}
    assert len(statement) == 4, shown
    qcow2 = api.download(image_id, tmp_path / "downloaded.qcow2")
    assert qcow2.read_bytes()[:4] == b"QFI\xfb"

    # Nova 34's own fetch_to_raw (tests/servers/nova.py), force_raw_images on: the qcow2 downloaded with
    # the user's token and converted to raw into _base/<sha1(image id)>. Nova's verify_glance_signatures is
    # on: its cursive check, in the user's context, accepts the service key's signature over the qcow2
    # (the certificate copied into the user's project). It runs as root: its check reads the embedded
    # key store, a root-only file, and this test boots nothing (the nova-owned _base is
    # tests/test_hook_self_adoption.py's).
    instances = tmp_path / "instances"
    base = instances / "_base" / cache_name(image_id)
    base.parent.mkdir(parents=True)
    nova = fetch_to_raw(tmp_path / "nova", glance_url=server.url, token=api.headers["X-Auth-Token"],
                        project_id=deployment.user_project_id, image_id=image_id, dest=base,
                        force_raw_images=True, verify_glance_signatures=True, keystore=deployment.keystore)
    assert nova.returncode == 0, nova.stderr[-3000:]
    assert "Image signature verification succeeded" in nova.stderr, nova.stderr[-3000:]
    assert sorted(os.listdir(base.parent)) == [base.name]  # no .part or .converted left
    assert base.read_bytes() == image.read_bytes()
    document = tmp_path / "image.json"
    document.write_text(json.dumps(shown))

    def adopt(properties: Path, state: str):
        # The certificate comes from the key manager, by the id Glance reports (the user project's copy).
        return run_cli("-c", deployment.user_conf, "boot", "adopt", image_id, "--properties", properties,
                       "--instances-path", instances, "--state-dir", tmp_path / state, "--json")

    tampered = tmp_path / "tampered.json"
    digit = shown["imgsign_raw_v1_sha256"][0]
    tampered.write_text(json.dumps({**shown, "imgsign_raw_v1_sha256": ("1" if digit == "0" else "0")
                                    + shown["imgsign_raw_v1_sha256"][1:]}))
    refused = adopt(tampered, "state-tampered")
    assert refused.code == errors.RawStatementError.exit_code, refused
    adopted = adopt(document, "state")
    assert adopted.code == 0, adopted
    assert adopted.json()["format"] == "raw" and adopted.json()["source_format"] == "qcow2", adopted


def test_import_that_needs_no_conversion_keeps_the_original_signature(glance, deployment, tmp_path):
    image = tmp_path / "disk.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", image, "8M")
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 2M", image)
    original = sign(deployment, image)
    api = API(glance)
    image_id, task = api.import_image(image, original, disk_format="raw")
    assert task["status"] == "success", task
    shown = api.show(image_id)
    assert shown["status"] == "active", shown
    assert {name: shown[name] for name in SIGNATURE_PROPERTIES} == original  # still the uploader's signature
    assert not [name for name in shown if name.startswith("imgsign_original_")], shown
    assert f"imgsign_resign: image {image_id}: the data is unchanged" in glance.glance_log_text()


def test_signer_outside_the_trusted_ids_is_refused_on_import_though_glance_alone_accepts_it(
        glance, deployment, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    properties = sign(deployment, image, "leaf-untrusted")  # a valid signature by an untrusted CA's leaf
    api = API(glance)
    uploaded = api.create(properties)
    assert api.upload(uploaded, image).status_code == 204  # cursive has no notion of trust anchors
    assert api.show(uploaded)["status"] == "active"

    image_id, task = api.import_image(image, properties)
    assert_refused_before_any_store(glance, api, image_id, task,
                                    f"imgsign_verify refused image {image_id}: untrusted-certificate:")


def test_unsigned_image_is_imported_and_converted_unsigned(glance, tmp_path):
    image = make_qcow2(tmp_path / "disk.qcow2")
    api = API(glance)
    image_id, task = api.import_image(image)
    assert task["status"] == "success", task
    shown = api.show(image_id)
    assert shown["status"] == "active" and shown["disk_format"] == "raw", shown
    assert not [name for name in shown if name.startswith(("img_signature", "imgsign_original_"))]


def test_require_signature_refuses_unsigned_images(glance_instances, tmp_path):
    strict = glance_instances("strict")
    image = make_qcow2(tmp_path / "disk.qcow2")
    api = API(strict)
    image_id, task = api.import_image(image)
    assert_refused_before_any_store(strict, api, image_id, task,
                                    f"imgsign_verify refused image {image_id}: {errors.UnsignedImage.reason}:")


def test_an_invalid_plugin_option_refuses_every_import_naming_the_option(glance_instances, deployment, tmp_path):
    """Every [imgsign_import] value is read when a task starts: on main ``require_signature = sometimes`` was never
    read for a signed image (it passed) and failed as an internal error for an unsigned one."""
    broken = glance_instances("invalid")
    api = API(broken)
    for signed in (True, False):
        image = make_qcow2(tmp_path / f"disk-{signed}.qcow2")
        image_id, task = api.import_image(image, sign(deployment, image) if signed else None)
        assert_refused_before_any_store(
            broken, api, image_id, task,
            f"imgsign_verify refused image {image_id}: {errors.InputError.reason}: invalid value for "
            "[imgsign_import] require_signature: expected boolean value")


def test_resign_without_verify_refuses_signed_images(glance_instances, deployment, tmp_path):
    unverified = glance_instances("no-verify")
    image = make_qcow2(tmp_path / "disk.qcow2")
    properties = sign(deployment, image)
    api = API(unverified)
    image_id, task = api.import_image(image, properties)
    assert task["status"] == "failure", task
    assert f"imgsign_resign refused image {image_id}: not-verified: imgsign_verify did not run" in task["message"]
    shown = api.show(image_id)
    assert shown["status"] != "active", shown
    assert shown["img_signature"] == properties["img_signature"]
    assert "imgsign_original_img_signature" not in shown
    assert not list(unverified.images_dir.glob(f"{image_id}*"))


def test_failed_store_upload_after_resigning_restores_the_original_signature(glance_instances, deployment, tmp_path):
    """Without the certificate copy, Glance's own check (user context) cannot find the service certificate:
    the store upload fails after imgsign_resign, which must then put the uploader's signature back."""
    server = glance_instances("no-copy")
    image = make_qcow2(tmp_path / "disk.qcow2")
    properties = sign(deployment, image)
    api = API(server)
    image_id, task = api.import_image(image, properties)
    assert task["status"] == "failure", task
    log = server.glance_log_text()
    assert f"imgsign_resign: image {image_id} re-signed with service certificate {deployment.service_cert_id} " \
           f"(as {deployment.service_cert_id})" in log
    assert f"Signature verification failed for image {image_id}" in log or "SignatureVerificationError" in log
    shown = api.show(image_id)
    assert shown["status"] != "active", shown
    assert {name: shown.get(name) for name in properties} == properties  # the raw-digest statement too
    assert not [name for name in shown if name.startswith("imgsign_original_")], shown
    assert not list(server.images_dir.glob(f"{image_id}*"))


def test_import_under_a_trust_policy_chooses_the_rule_by_owner_and_image_type(glance_instances, deployment, tmp_path):
    server = glance_instances("policy")
    api = API(server)
    image = make_qcow2(tmp_path / "disk.qcow2")
    untrusted = sign(deployment, image, "leaf-untrusted")
    image_id, task = api.import_image(image, untrusted)  # rule everything: strict
    assert_refused_before_any_store(server, api, image_id, task,
                                    f"imgsign_verify refused image {image_id}: untrusted-certificate:")
    image_id, task = api.import_image(image)  # unsigned, strict
    assert_refused_before_any_store(server, api, image_id, task,
                                    f"imgsign_verify refused image {image_id}: unsigned-image:")
    snapshot, task = api.import_image(image, {**untrusted, "image_type": "snapshot"})  # rule user-snapshots: audit
    assert task["status"] == "success", task
    assert api.show(snapshot)["status"] == "active"
    assert (f"imgsign_verify: image {snapshot}: trust policy rule user-snapshots (audit) logs: authenticity"
            in server.glance_log_text())
    trusted, task = api.import_image(image, sign(deployment, image))  # a signer under the intermediate CA
    assert task["status"] == "success", task
