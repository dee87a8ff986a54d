"""The gateway in front of a real glance-api 33 (tests/servers/glance.py), with real Keystone tokens.

A 1 GiB sparse image goes up and comes back through the gateway while its peak memory is read from
``/proc``; several uploads run at once; Glance's own refusals come back as Glance gave them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import uuid
from pathlib import Path

import pytest
import requests

from tests.servers.gateway import GatewayProcess, gateway_process
from tests.servers.glance import GlanceServer, glance_server

pytest.importorskip("aiohttp")
pytestmark = pytest.mark.servers

MIB = 1024 * 1024
PROJECT = "gateway-demo"


@pytest.fixture(scope="module")
def glance(tmp_path_factory, keystone):
    root = tmp_path_factory.mktemp("gateway-glance")
    with glance_server(root / "glance", keystone=keystone, keystore=root / "keys.sqlite") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(glance: GlanceServer):
    with gateway_process(glance.url) as process:
        yield process


def _create(gateway: GatewayProcess, headers: dict[str, str], name: str) -> str:
    response = requests.post(f"{gateway.url}/v2/images", headers=headers, timeout=60,
                             json={"name": name, "disk_format": "raw", "container_format": "bare"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _upload(gateway: GatewayProcess, headers: dict[str, str], image_id: str, path: Path) -> None:
    with open(path, "rb") as data:
        response = requests.put(f"{gateway.url}/v2/images/{image_id}/file", data=data, timeout=600,
                                headers={**headers, "Content-Type": "application/octet-stream"})
    assert response.status_code == 204, response.text


def _sha512(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha512").hexdigest()


def _image(gateway: GatewayProcess, headers: dict[str, str], image_id: str) -> dict:
    response = requests.get(f"{gateway.url}/v2/images/{image_id}", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _sparse(path: Path, size: int, marks: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
        for index in range(marks):
            handle.seek(index * (size // marks))
            handle.write(b"imgsign gateway %d " % index * 100)
    return path


def test_a_large_image_streams_both_ways_in_constant_memory(glance: GlanceServer, gateway: GatewayProcess,
                                                             tmp_path: Path) -> None:
    headers = glance.headers(PROJECT)
    small = _sparse(tmp_path / "small.raw", 16 * MIB, 4)
    _upload(gateway, headers, _create(gateway, headers, "warm-up"), small)
    before = gateway.memory_kib()

    large = _sparse(tmp_path / "large.raw", 1024 * MIB, 64)
    image_id = _create(gateway, headers, "large")
    _upload(gateway, headers, image_id, large)
    image = _image(gateway, headers, image_id)
    assert (image["status"], image["size"], image["os_hash_value"]) == ("active", 1024 * MIB, _sha512(large))

    digest = hashlib.sha512()
    with requests.get(f"{gateway.url}/v2/images/{image_id}/file", headers=headers, stream=True, timeout=600) as down:
        assert down.status_code == 200
        for chunk in down.iter_content(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == image["os_hash_value"]
    grown = gateway.memory_kib() - before
    assert grown < 24 * 1024, f"the gateway's peak memory grew by {grown} KiB for a 1 GiB image"


def test_concurrent_uploads(glance: GlanceServer, gateway: GatewayProcess, tmp_path: Path) -> None:
    headers = glance.headers(PROJECT)
    files = []
    for index in range(4):
        path = tmp_path / f"image-{index}.raw"
        path.write_bytes(os.urandom(MIB) * 24 + bytes([index]))
        files.append(path)
    ids = [_create(gateway, headers, f"concurrent-{index}") for index in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pair: _upload(gateway, headers, *pair), zip(ids, files, strict=True)))
    for image_id, path in zip(ids, files, strict=True):
        image = _image(gateway, headers, image_id)
        assert (image["status"], image["os_hash_value"]) == ("active", _sha512(path))


def test_glance_refusals_come_back_as_glance_gave_them(glance: GlanceServer, gateway: GatewayProcess) -> None:
    missing = f"/v2/images/{uuid.uuid4()}"
    through = requests.get(gateway.url + missing, headers=glance.headers(PROJECT), timeout=60)
    direct = requests.get(glance.url + missing, headers=glance.headers(PROJECT), timeout=60)
    assert through.status_code == direct.status_code == 404
    assert through.content == direct.content
    unauthenticated = requests.get(f"{gateway.url}/v2/images", timeout=60)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers.get("WWW-Authenticate") == \
        requests.get(f"{glance.url}/v2/images", timeout=60).headers.get("WWW-Authenticate")


def test_discovery_through_the_gateway_leads_back_to_the_gateway(glance: GlanceServer,
                                                                 gateway: GatewayProcess) -> None:
    """A client that discovers Glance's versions (keystoneauth's version discovery, as openstacksdk does)
    follows the ``href`` of Glance's version document: passed through as Glance wrote it, that link
    would lead it around the gateway to Glance itself.  (Nova 34's glanceclient path uses
    ``endpoint_override`` as it is, with no discovery; the rewrite keeps any other path honest too.)"""
    from keystoneauth1 import adapter, noauth, session

    direct = requests.get(glance.url + "/", timeout=60).json()
    assert all(link["href"].startswith(glance.url) for v in direct["versions"] for link in v["links"])
    for path in ("/", "/versions"):
        answer = requests.get(gateway.url + path, timeout=60, headers={"Accept-Encoding": "gzip"})
        assert answer.status_code in (200, 300), answer.text
        hrefs = [link["href"] for v in answer.json()["versions"] for link in v["links"]]
        assert hrefs and all(href.startswith(gateway.url + "/") for href in hrefs), hrefs
        assert [v["id"] for v in answer.json()["versions"]] == [v["id"] for v in direct["versions"]]

    def endpoint(override: str) -> str:
        data = adapter.Adapter(session.Session(auth=noauth.NoAuth()), service_type="image",
                               endpoint_override=override, min_version="2.0",
                               max_version="2.latest").get_endpoint_data()
        assert data is not None
        return str(data.url)

    assert endpoint(glance.url).startswith(glance.url + "/v2")
    assert endpoint(gateway.url).startswith(gateway.url + "/v2"), endpoint(gateway.url)
