"""Glance's ``upload_image`` policy denies ``PUT /file`` for snapshots and backups: a host without the gateway
fails closed, and the gateway's stage + glance-direct import still works.

A real glance-api 33 behind the real Keystone (tests/servers/glance.py) runs with the rule that
doc/source/admin/compute-signing.md ("Glance settings") documents, read from that page, so that the
documented rule is the tested one.  Nova 34's own upload code (``nova.image.glance``) is what a host
without the gateway runs.  The gateway runs in this process with the libvirt lookup stood in for by
:class:`tests.test_gateway_signing.FakeDomains` (instances of chosen projects "on this host" without
booting guests; tests/test_gateway_libvirt.py checks the real lookup).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.intercept import DomainInfo
from imgsign.gateway.provenance import verify_provenance
from imgsign.keymanager.config import load
from tests.conftest import REPO, cert_of, key_of
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.nova import upload_snapshot
from tests.test_gateway_signing import HOST_KEY_TYPE, FakeDomains, _host, running

pytest.importorskip("aiohttp")
pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

PROJECT = "policy-owner"
OTHER = "policy-other"
INSTANCE = "7c6b5a49-3827-4165-9483-a2b1c0d9e8f7"
DOC = REPO / "doc" / "source" / "admin" / "compute-signing.md"


def documented_rule() -> str:
    """The ``upload_image`` check string of the "Glance settings" section."""
    lines = [line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith('"upload_image":')]
    assert len(lines) == 1, f"{DOC} should show one upload_image rule, not {len(lines)}"
    return str(yaml.safe_load(lines[0])["upload_image"])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("glance-policy")


@pytest.fixture(scope="module")
def glance(root: Path, keystone) -> Iterator[GlanceServer]:
    with glance_server(root / "glance", keystone=keystone, keystore=root / "keystore.sqlite3",
                       policy={"upload_image": documented_rule()}) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(root: Path, glance: GlanceServer) -> Iterator[str]:
    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.gateway.server import Gateway

    conf_path = root / "imgsign.conf"
    conf_path.write_text(glance.castellan_config())
    conf = load(str(conf_path))
    signing = SigningConfig(key=str(key_of(HOST_KEY_TYPE)), certificate=str(cert_of(HOST_KEY_TYPE)),
                            host="compute-policy", import_timeout=120)
    domains = FakeDomains({INSTANCE: DomainInfo(INSTANCE, "running", glance.project_id(PROJECT))})
    with running(Gateway(GatewayConfig(glance_url=glance.url), signer=HostSigner(signing, conf), domains=domains,
                         keys=CastellanProjects(conf))) as url:
        yield url


def _headers(glance: GlanceServer, project: str = PROJECT) -> dict[str, str]:
    return glance.headers(project)


def _create(glance: GlanceServer, **properties: str) -> str:
    response = requests.post(f"{glance.url}/v2/images", headers=_headers(glance), timeout=60,
                             json={"name": "image", "disk_format": "raw", "container_format": "bare", **properties})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _put(url: str, glance: GlanceServer, image_id: str, data: bytes, project: str = PROJECT) -> requests.Response:
    return requests.put(f"{url}/v2/images/{image_id}/file", data=data, timeout=300,
                        headers={**_headers(glance, project), "Content-Type": "application/octet-stream"})


def _image(glance: GlanceServer, image_id: str) -> dict:
    response = requests.get(f"{glance.url}/v2/images/{image_id}", headers=_headers(glance), timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _snapshot(glance: GlanceServer, kind: str = "snapshot") -> str:
    """An image as nova-api creates it for a snapshot (or backup) of INSTANCE."""
    return _create(glance, image_type=kind, instance_uuid=INSTANCE)


@pytest.mark.parametrize("kind", ["snapshot", "backup"])
def test_a_direct_upload_of_a_snapshot_or_backup_is_refused(glance, kind) -> None:
    image_id = _snapshot(glance, kind)
    response = _put(glance.url, glance, image_id, b"unsigned " * 1000)
    assert response.status_code == 403, response.text
    assert "upload_image" in response.text
    image = _image(glance, image_id)
    assert image["status"] == "queued" and image["size"] is None


def test_nova_s_own_upload_straight_to_glance_fails_closed(glance, tmp_path) -> None:
    """A host without the gateway: Nova 34's upload of a snapshot fails, nothing is stored."""
    data = tmp_path / "snapshot.raw"
    data.write_bytes(b"snapshot without the gateway " * 2000)
    image_id = _snapshot(glance)
    result = upload_snapshot(tmp_path / "nova", glance_url=glance.url, token=_headers(glance)["X-Auth-Token"],
                             project_id=glance.project_id(PROJECT), image_id=image_id, data=data)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ImageNotAuthorized" in result.stderr, result.stderr[-3000:]
    assert _image(glance, image_id)["status"] == "queued"


def test_a_plain_image_still_uploads(glance) -> None:
    data = b"a plain image " * 5000
    image_id = _create(glance)
    assert _put(glance.url, glance, image_id, data).status_code == 204
    image = _image(glance, image_id)
    assert image["status"] == "active"
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()


def test_the_rule_keeps_the_default_s_owner_check(glance) -> None:
    """The default part of the rule still holds: a member of another project who can see a plain image
    (community) may not upload its data."""
    image_id = _create(glance, visibility="community")
    response = _put(glance.url, glance, image_id, b"not yours", project=OTHER)
    assert response.status_code == 403, response.text
    assert _image(glance, image_id)["status"] == "queued"


@pytest.mark.parametrize("kind", ["snapshot", "backup"])
def test_the_gateway_still_signs_and_imports_under_the_rule(glance, gateway, kind) -> None:
    data = f"{kind} through the gateway ".encode() * 20000
    image_id = _snapshot(glance, kind)
    response = _put(gateway, glance, image_id, data)
    assert response.status_code == 204, response.text
    image = _image(glance, image_id)
    assert image["status"] == "active" and image["img_signature_key_type"] == HOST_KEY_TYPE
    public, fingerprint = _host()
    provenance = verify_provenance(image, public, fingerprint, image_id=image_id)
    assert provenance.image_digest == hashlib.sha256(data).digest()
    assert provenance.project_id == glance.project_id(PROJECT)
    assert f"Successfully verified signature for image {image_id}" in glance.glance_log_text()
