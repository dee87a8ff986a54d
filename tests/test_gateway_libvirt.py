"""The gateway's real libvirt lookup (``virsh --readonly``) against a private libvirtd, and a snapshot
signed because libvirt, not a stand-in, says its instance is defined here for the image's project.

Domains are defined, not started: a defined, shut-off domain is what a shelve leaves while Nova
uploads its snapshot, and it spares the ~48 s each guest start costs here.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import pytest

from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.domains import VirshDomains
from imgsign.keymanager.config import load
from imgsign.provenance import verify_provenance
from tests.conftest import cert_of, key_of
from tests.servers.glance import glance_server
from tests.servers.libvirt import libvirt_daemon, unavailable
from tests.test_gateway_signing import HOST_KEY_TYPE, PROJECT, Env, _create, _host, _image, _put, running

pytest.importorskip("aiohttp")
pytestmark = [pytest.mark.libvirt, pytest.mark.servers]


def _domain_xml(instance: str, project: str | None) -> str:
    owner = (f'<nova:owner><nova:project uuid="{project}">p</nova:project></nova:owner>' if project else "")
    return f"""<domain type='qemu'>
  <name>instance-{instance[:8]}</name>
  <uuid>{instance}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">{owner}</nova:instance>
  </metadata>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, keystone):
    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    env = Env(tmp_path_factory.mktemp("gateway-libvirt"), keystone)
    with libvirt_daemon() as libvirt, glance_server(env.root / "glance", keystone=keystone,
                                                    keystore=env.keystore) as glance:
        yield libvirt, glance, env


def _define(libvirt, tmp_path: Path, instance: str, project: str | None) -> None:
    xml = tmp_path / f"{instance}.xml"
    xml.write_text(_domain_xml(instance, project))
    libvirt.virsh("define", str(xml))


def test_virsh_lookup(stack, tmp_path: Path) -> None:
    libvirt, _glance, env = stack
    instance = str(uuid.uuid4())
    _define(libvirt, tmp_path, instance, env.project_id)
    lookup = VirshDomains(libvirt.uri)
    found = asyncio.run(lookup.find(instance))
    assert found is not None
    assert (found.uuid, found.state, found.project_id) == (instance, "shut off", env.project_id)
    assert asyncio.run(lookup.find(str(uuid.uuid4()))) is None
    assert asyncio.run(lookup.find("not-a-uuid; rm -rf /")) is None


def test_a_snapshot_is_signed_on_libvirt_s_word(stack, tmp_path: Path) -> None:
    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.gateway.server import Gateway

    libvirt, glance, env = stack
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    _define(libvirt, tmp_path, mine, env.project_id)
    _define(libvirt, tmp_path, theirs, env.other_id)
    conf = load(str(env.conf))
    signing = SigningConfig(key=str(key_of(HOST_KEY_TYPE)), certificate=str(cert_of(HOST_KEY_TYPE)),
                            host="compute-test", libvirt_uri=libvirt.uri,
                            import_timeout=120)
    gateway = Gateway(GatewayConfig(glance_url=glance.url), signer=HostSigner(signing, conf),
                      domains=VirshDomains(libvirt.uri), keys=CastellanProjects(conf))
    with running(gateway) as url:
        data = b"snapshot on libvirt's word " * 10000
        image_id = _create(url, glance, image_type="snapshot", instance_uuid=mine)
        response = _put(url, glance, image_id, data)
        assert response.status_code == 204, response.text
        image = _image(glance, image_id)
        public, fingerprint = _host()
        provenance = verify_provenance(image, public, fingerprint, image_id=image_id)
        assert provenance.image_digest == hashlib.sha256(data).digest() and provenance.base is None
        assert provenance.project_id == env.project_id == glance.project_id(PROJECT)

        refused = _create(url, glance, image_type="snapshot", instance_uuid=theirs)
        response = _put(url, glance, refused, b"another project's instance")
        assert response.status_code == 403, response.text
        assert "img_signature" not in _image(glance, refused)
