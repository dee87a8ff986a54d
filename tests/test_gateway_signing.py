"""The gateway signs snapshots: a real glance-api 33 (glance-direct, its own cursive check), real Keystone
tokens, the embedded key manager, and Nova 34's own upload code (``nova.image.glance``).

The gateway runs in this process (aiohttp in a thread) so that the libvirt lookup can be a stand-in
(:class:`FakeDomains`): these tests need instances of chosen projects "on this host" without booting
guests; tests/test_gateway_libvirt.py checks the real lookup against a real libvirtd.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import HashMethod, Signer, load_certificate, load_private_key
from imgsign.certificates import certificate_public_key
from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.domains import DomainLookup
from imgsign.gateway.intercept import DomainInfo
from imgsign.keymanager.config import load, open_store
from imgsign.provenance import PAYLOAD_TYPE, PREFIX, pae, verify_provenance
from tests.conftest import cert_of, key_of, run_cli
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.nova import fetch_to_raw, upload_snapshot

pytest.importorskip("aiohttp")
pytestmark = pytest.mark.servers

PROJECT = "gateway-owner"
OTHER = "gateway-other"
HOST_KEY_TYPE = "ECC_SECP384R1"
BASE_KEY_TYPE = "RSA-PSS"
INSTANCE = "0f0e0d0c-0b0a-4909-8807-060504030201"
FOREIGN_INSTANCE = "1f1e1d1c-1b1a-4919-8817-161514131211"


class FakeDomains(DomainLookup):
    """Instances "defined on this host" by uuid (a stand-in: see the module docstring)."""

    def __init__(self, domains: dict[str, DomainInfo]) -> None:
        self.domains = domains

    async def find(self, instance_uuid: str) -> DomainInfo | None:
        return self.domains.get(instance_uuid)


@contextlib.contextmanager
def running(gateway) -> Iterator[str]:
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(gateway.application())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


class Env:
    def __init__(self, root: Path, keystone) -> None:
        self.root = root
        self.keystore = root / "keystore.sqlite3"
        self.project_id = keystone.project_user(PROJECT).project_id
        self.other_id = keystone.project_user(OTHER).project_id
        self.conf = root / "owner.conf"
        self.conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {self.keystore}\n\n"
                             f"[imgsign]\nproject_id = {self.project_id}\n")
        self.base_cert_id = self._stored("cert", "store", cert_of(BASE_KEY_TYPE))
        self.host_cert_ids: set[str] = set()

    def _stored(self, *args: object) -> str:
        result = run_cli("-c", self.conf, *args)
        assert result.code == 0, result
        return result.stdout.strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystone) -> Env:
    return Env(tmp_path_factory.mktemp("gateway-signing"), keystone)


@pytest.fixture(scope="module")
def glance(env: Env, keystone) -> Iterator[GlanceServer]:
    # show_image_direct_url: the records name their store location, as an RBD deployment's do.
    with glance_server(env.root / "glance", keystone=keystone, keystore=env.keystore, show_direct_url=True) as server:
        yield server


@pytest.fixture(scope="module")
def signing(env: Env, glance: GlanceServer) -> Iterator[dict]:
    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.gateway.server import Gateway

    config = GatewayConfig(glance_url=glance.url)
    # No certificate_id: the gateway copies the host certificate into the owner's project when first needed.
    signing_config = SigningConfig(key=str(key_of(HOST_KEY_TYPE)), certificate=str(cert_of(HOST_KEY_TYPE)),
                                   host="compute-test", import_timeout=120)
    conf = load(str(env.conf))
    domains = FakeDomains({INSTANCE: DomainInfo(INSTANCE, "running", env.project_id),
                           FOREIGN_INSTANCE: DomainInfo(FOREIGN_INSTANCE, "running", env.other_id)})
    signer = HostSigner(signing_config, conf)
    gateway = Gateway(config, signer=signer, domains=domains, keys=CastellanProjects(conf))
    with running(gateway) as url:
        yield {"url": url, "signer": signer}


def _headers(glance: GlanceServer) -> dict[str, str]:
    return glance.headers(PROJECT)


def _create(url: str, glance: GlanceServer, **properties: str) -> str:
    response = requests.post(f"{url}/v2/images", headers=_headers(glance), timeout=60,
                             json={"name": "image", "disk_format": "raw", "container_format": "bare", **properties})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _image(glance: GlanceServer, image_id: str) -> dict:
    response = requests.get(f"{glance.url}/v2/images/{image_id}", headers=_headers(glance), timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def base_id(env: Env, glance: GlanceServer) -> str:
    """A signed base image, uploaded by its owner straight to Glance (Glance checks it)."""
    data = b"base image " * 5000
    signed = Signer(load_private_key(key_of(BASE_KEY_TYPE).read_bytes()), env.base_cert_id,
                    HashMethod.SHA256).sign(iter([data]))
    image_id = _create(glance.url, glance, **signed.as_dict())
    response = requests.put(f"{glance.url}/v2/images/{image_id}/file", data=data, timeout=60,
                            headers={**_headers(glance), "Content-Type": "application/octet-stream"})
    assert response.status_code == 204, response.text
    return image_id


def _snapshot(url: str, glance: GlanceServer, base: str, instance: str = INSTANCE, kind: str = "snapshot") -> str:
    return _create(url, glance, image_type=kind, instance_uuid=instance, base_image_ref=base)


def _put(url: str, glance: GlanceServer, image_id: str, data: bytes) -> requests.Response:
    return requests.put(f"{url}/v2/images/{image_id}/file", data=data, timeout=300,
                        headers={**_headers(glance), "Content-Type": "application/octet-stream"})


def _host():
    certificate = load_certificate(cert_of(HOST_KEY_TYPE).read_bytes())
    return certificate_public_key(certificate), hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


@pytest.mark.parametrize("kind", ["snapshot", "backup"])
def test_a_snapshot_comes_out_host_signed_and_checked_by_glance(env, glance, signing, base_id, kind) -> None:
    data = b"snapshot of the instance " * 40000
    image_id = _snapshot(signing["url"], glance, base_id, kind=kind)
    response = _put(signing["url"], glance, image_id, data)
    assert response.status_code == 204, response.text
    image = _image(glance, image_id)
    assert image["status"] == "active"
    # The host certificate, stored in the owner's project (once: every snapshot names the same copy).
    stored = open_store(load(str(env.conf))).get_certificate(image["img_signature_certificate_uuid"])
    assert stored == load_certificate(cert_of(HOST_KEY_TYPE).read_bytes()).public_bytes(Encoding.DER)
    env.host_cert_ids.add(image["img_signature_certificate_uuid"])
    assert len(env.host_cert_ids) == 1
    assert image["img_signature_key_type"] == HOST_KEY_TYPE
    public, fingerprint = _host()
    provenance = verify_provenance(image, public, fingerprint, image_id=image_id)
    assert provenance.image_digest == hashlib.sha256(data).digest()
    assert (provenance.instance_uuid, provenance.project_id, provenance.host) == (INSTANCE, env.project_id,
                                                                                  "compute-test")
    base = _image(glance, base_id)
    base_der = load_certificate(cert_of(BASE_KEY_TYPE).read_bytes()).public_bytes(Encoding.DER)
    assert provenance.base is not None
    assert provenance.base.image_id == base_id
    assert provenance.base.certificate_sha256 == hashlib.sha256(base_der).digest()
    assert provenance.base.signature_sha256 == hashlib.sha256(base64.b64decode(base["img_signature"])).digest()
    # Glance's own check ran on the import (glance-direct), not on a PUT /file.
    assert f"Successfully verified signature for image {image_id}" in glance.glance_log_text()


def test_nova_s_own_upload_code_through_the_gateway(env, glance, signing, base_id, tmp_path) -> None:
    data = tmp_path / "snapshot.raw"
    data.write_bytes(b"nova snapshot " * 70000)
    image_id = _snapshot(signing["url"], glance, base_id)
    result = upload_snapshot(tmp_path / "nova", glance_url=signing["url"], token=_headers(glance)["X-Auth-Token"],
                             project_id=env.project_id, image_id=image_id, data=data)
    assert result.returncode == 0, result.stderr
    image = _image(glance, image_id)
    assert image["status"] == "active" and image["img_signature_key_type"] == HOST_KEY_TYPE
    public, fingerprint = _host()
    assert verify_provenance(image, public, fingerprint, image_id=image_id).image_digest == \
        hashlib.sha256(data.read_bytes()).digest()


def test_nova_s_download_code_accepts_a_host_signed_snapshot(env, glance, signing, base_id, tmp_path) -> None:
    """Nova 34's fetch_to_raw with verify_glance_signatures (cursive, the certificate from the owner's project)."""
    data = b"boot me " * 50000
    image_id = _snapshot(signing["url"], glance, base_id)
    assert _put(signing["url"], glance, image_id, data).status_code == 204
    dest = tmp_path / "base"
    nova = fetch_to_raw(tmp_path / "nova", glance_url=glance.url, token=_headers(glance)["X-Auth-Token"],
                        project_id=env.project_id, image_id=image_id, dest=dest, force_raw_images=True,
                        verify_glance_signatures=True, keystore=env.keystore)
    assert nova.returncode == 0, nova.stderr[-3000:]
    assert "Image signature verification succeeded" in nova.stderr, nova.stderr[-3000:]
    assert dest.read_bytes() == data


def test_an_instance_not_on_this_host_passes_unsigned(glance, signing, base_id) -> None:
    image_id = _snapshot(signing["url"], glance, base_id, instance="2f2e2d2c-2b2a-4929-8827-262524232221")
    assert _put(signing["url"], glance, image_id, b"elsewhere").status_code == 204
    image = _image(glance, image_id)
    assert image["status"] == "active"
    assert not [name for name in image if name.startswith(("img_signature", PREFIX))]


def test_an_instance_of_another_project_is_refused(glance, signing, base_id) -> None:
    image_id = _snapshot(signing["url"], glance, base_id, instance=FOREIGN_INSTANCE)
    response = _put(signing["url"], glance, image_id, b"not yours")
    assert response.status_code == 403 and "belongs to project" in response.text
    image = _image(glance, image_id)
    assert image["status"] == "queued" and "img_signature" not in image


def test_data_that_looks_like_a_dsse_pae_is_never_signed(glance, signing, base_id) -> None:
    image_id = _snapshot(signing["url"], glance, base_id)
    response = _put(signing["url"], glance, image_id, pae(PAYLOAD_TYPE, b"{}") + b"\0" * 100)
    assert response.status_code == 403 and "pre-authentication" in response.text
    image = _image(glance, image_id)
    assert image["status"] != "active" and "img_signature" not in image


def test_a_byte_changed_after_hashing_fails_the_import(glance, signing, base_id, monkeypatch) -> None:
    """The staged file changes between the gateway's hash and Glance's import: nothing becomes active."""
    signer = signing["signer"]
    real_sign = signer.sign
    image_id = _snapshot(signing["url"], glance, base_id)

    def flip_then_sign(digest: bytes, certificate_id: str):
        staged = glance.staging_dir / image_id
        content = bytearray(staged.read_bytes())
        content[100] ^= 1
        staged.write_bytes(bytes(content))
        return real_sign(digest, certificate_id)

    monkeypatch.setattr(signer, "sign", flip_then_sign)
    response = _put(signing["url"], glance, image_id, b"x" * 100000)
    assert response.status_code == 502 and "import" in response.text
    image = _image(glance, image_id)
    # Glance's own check refused the changed data: no store got it, the image is not active.
    assert image["status"] != "active" and image["os_glance_failed_import"] == "fs"
    assert "Signature verification failed" in glance.glance_log_text()


def test_a_location_added_to_a_snapshot_is_refused(glance, signing, base_id) -> None:
    image_id = _snapshot(signing["url"], glance, base_id)
    patch = [{"op": "add", "path": "/locations/-", "value": {"url": "rbd://fsid/pool/img/snap", "metadata": {}}}]
    response = requests.patch(f"{signing['url']}/v2/images/{image_id}", json=patch, timeout=60, headers={
        **_headers(glance), "Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert response.status_code == 403 and "locations" in response.text
    response = requests.post(f"{signing['url']}/v2/images/{image_id}/locations", timeout=60,
                             headers=_headers(glance), json={"url": "rbd://fsid/pool/img/snap"})
    assert response.status_code == 403
    # A metadata PATCH of the same snapshot passes (Nova's update sends one before the data).
    response = requests.patch(f"{signing['url']}/v2/images/{image_id}", timeout=60, headers={
        **_headers(glance), "Content-Type": "application/openstack-images-v2.1-json-patch"},
        json=[{"op": "add", "path": "/note", "value": "x"}])
    assert response.status_code == 200, response.text


def test_a_large_patch_of_another_image_passes_whole(glance, signing) -> None:
    """A PATCH longer than the gateway reads to look for locations is replayed to Glance in full."""
    value = "v" * 100_000
    answers = []
    for url in (signing["url"], glance.url):
        image_id = _create(glance.url, glance)
        response = requests.patch(f"{url}/v2/images/{image_id}", timeout=60, headers={
            **_headers(glance), "Content-Type": "application/openstack-images-v2.1-json-patch"},
            json=[{"op": "add", "path": "/note", "value": value}])
        answers.append(response.status_code)
        if response.status_code == 200:
            assert _image(glance, image_id)["note"] == value
    assert answers[0] == answers[1], answers


def test_nova_reads_no_location_through_the_gateway(env, glance, signing, base_id, tmp_path) -> None:
    """Nova's RBD paths (``Rbd.clone`` to boot, ``direct_snapshot``'s parent pool to snapshot) read an image's
    locations; with none, both fall back (download, verified by the hook; upload, signed here).  Glance
    names its store location; Nova 34's own ``API().get(include_locations=True)`` through the gateway sees
    none, and the records have neither ``locations`` nor ``direct_url``."""
    from tests.servers.nova import image_locations

    token = _headers(glance)["X-Auth-Token"]
    direct = image_locations(tmp_path / "direct", glance_url=glance.url, token=token, project_id=env.project_id,
                             image_id=base_id)
    assert direct and all(url.startswith("file://") for url in direct), direct
    through = image_locations(tmp_path / "through", glance_url=signing["url"], token=token,
                              project_id=env.project_id, image_id=base_id)
    assert through == []
    record = requests.get(f"{signing['url']}/v2/images/{base_id}", headers=_headers(glance), timeout=60)
    listed = requests.get(f"{signing['url']}/v2/images", headers=_headers(glance), timeout=60)
    assert record.status_code == listed.status_code == 200
    assert "direct_url" in requests.get(f"{glance.url}/v2/images/{base_id}", headers=_headers(glance),
                                        timeout=60).json()
    for image in (record.json(), *listed.json()["images"]):
        assert "direct_url" not in image and "locations" not in image, image
    assert record.json()["id"] == base_id and record.headers["Content-Type"].startswith("application/json")
