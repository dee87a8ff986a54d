"""Glance's policy denies ``PUT /file`` (``upload_image``) and added locations (``add_image_location``,
``set_image_location``) for snapshots and backups: a host without the gateway fails closed, and the
gateway's stage + glance-direct import still works.

A real glance-api 33 behind the real Keystone (tests/servers/glance.py) runs with the rule that
doc/source/admin/compute-signing.md ("Glance settings") documents, read from that page, so that the
documented rules are the tested ones.  Nova 34's own upload code (``nova.image.glance``) is what a host
without the gateway runs.  The gateway runs in this process with the libvirt lookup stood in for by
:class:`tests.test_gateway_signing.FakeDomains` (instances of chosen projects "on this host" without
booting guests; tests/test_gateway_libvirt.py checks the real lookup).
"""

from __future__ import annotations

import hashlib
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.intercept import DomainInfo
from imgsign.provenance import verify_provenance
from imgsign.keymanager.config import load
from tests.conftest import REPO, cert_of, key_of
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.nova import add_location, upload_snapshot
from tests.test_gateway_signing import HOST_KEY_TYPE, FakeDomains, _host, running

pytest.importorskip("aiohttp")
pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

PROJECT = "policy-owner"
OTHER = "policy-other"
INSTANCE = "7c6b5a49-3827-4165-9483-a2b1c0d9e8f7"
DOC = REPO / "doc" / "source" / "admin" / "compute-signing.md"


RULES = ("upload_image", "add_image_location", "set_image_location")


def documented_rules() -> dict[str, str]:
    """The rules of the "Glance settings" section's policy block (name -> check string)."""
    text = DOC.read_text()
    section = text[text.index("## Glance settings"):]
    section = section[:section.index("\n## ")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"{DOC}: 'Glance settings' should show one yaml block, not {len(blocks)}"
    rules = yaml.safe_load(textwrap.dedent(blocks[0]))
    assert isinstance(rules, dict) and sorted(rules) == sorted(RULES), rules
    return {str(name): str(check) for name, check in rules.items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("glance-policy")


@pytest.fixture(scope="module")
def glance(root: Path, keystone) -> Iterator[GlanceServer]:
    with glance_server(root / "glance", keystone=keystone, keystore=root / "keystore.sqlite3",
                       policy=documented_rules()) as server:
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
    domains = FakeDomains({INSTANCE: DomainInfo(INSTANCE, "running", _project_id(glance))})
    with running(Gateway(GatewayConfig(glance_url=glance.url), signer=HostSigner(signing, conf), domains=domains,
                         keys=CastellanProjects(conf))) as url:
        yield url


def _project_id(glance: GlanceServer) -> str:
    return glance.keystone.project_user(PROJECT).project_id


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
                             project_id=_project_id(glance), image_id=image_id, data=data)
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
    assert provenance.project_id == _project_id(glance)
    assert f"Successfully verified signature for image {image_id}" in glance.glance_log_text()


def _location_url(image_id: str) -> str:
    return f"rbd://d4c1e7a2-0f3b-4c5d-8e9f-a0b1c2d3e4f5/images/{image_id}/snap"


def test_a_location_added_to_a_snapshot_is_refused_by_the_rules(glance) -> None:
    """Both location APIs, as an RBD direct snapshot would use them.  This Glance has no RBD or http store
    and hides locations, so it refuses a plain image's location too, but later and for that reason: the
    snapshot's refusal names the rule."""
    answers = {}
    for kind in ("snapshot", "plain"):
        image_id = _snapshot(glance) if kind == "snapshot" else _create(glance)
        post = requests.post(f"{glance.url}/v2/images/{image_id}/locations", headers=_headers(glance), timeout=60,
                             json={"url": _location_url(image_id)})
        patch = requests.patch(f"{glance.url}/v2/images/{image_id}", timeout=60, headers={
            **_headers(glance), "Content-Type": "application/openstack-images-v2.1-json-patch"},
            json=[{"op": "add", "path": "/locations/-", "value": {"url": _location_url(image_id), "metadata": {}}}])
        answers[kind] = (post.status_code, post.text, patch.status_code, patch.text)
        assert _image(glance, image_id)["status"] == "queued"
    post_status, post_text, patch_status, patch_text = answers["snapshot"]
    assert post_status == 403 and "add_image_location" in post_text, post_text
    assert patch_status == 403 and "set_image_location" in patch_text, patch_text
    _, plain_post, _, plain_patch = answers["plain"]
    assert "add_image_location" not in plain_post and "set_image_location" not in plain_patch


def test_nova_does_not_fall_back_to_an_upload_when_a_snapshot_s_location_is_refused(glance, gateway,
                                                                                    tmp_path) -> None:
    """Nova 34's own ``_add_location`` (what its RBD direct snapshot calls), refused by the gateway and by
    Glance's rules: Nova raises ``ImageNotAuthorized``, which ``LibvirtDriver.snapshot()`` does not catch
    (it falls back to the standard snapshot only after the classes its ``except`` clause names, read
    from Nova's source): the snapshot fails closed, it is not uploaded and signed instead.  Documented
    in compute-signing.md, "What remains"."""
    for url in (gateway, glance.url):
        image_id = _snapshot(glance)
        result = add_location(tmp_path / f"nova-{image_id}", glance_url=url, token=_headers(glance)["X-Auth-Token"],
                              project_id=_project_id(glance), image_id=image_id, url=_location_url(image_id))
        assert result["error"] == "nova.exception.ImageNotAuthorized", result
        assert result["fallback_on"] == ["NotImplementedError", "ImageUnacceptable", "Forbidden"], result
        assert result["falls_back"] is False, result
        assert _image(glance, image_id)["status"] == "queued"
