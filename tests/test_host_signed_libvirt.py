"""A host-signed snapshot through the real pieces, end to end: the hook boots it for the owner's project and
refuses it for another project (issue 23, "Tests against real components").

* Glance 33 (tests/servers/glance.py, glance-direct, its own cursive check), Keystone tokens, the embedded
  key manager Glance shares;
* a base image signed by the "image team" (its own CA), uploaded by its owner;
* the snapshot: a qcow2 overlay on that base, written to and converted to raw with ``qemu-img convert`` (as
  Nova's ``extract_snapshot``), uploaded with ``PUT /file`` through ``imgsign gateway`` (in this process),
  which asks the private libvirtd (tests/servers/libvirt.py) whether the instance runs here for the image's
  project, signs it with the host's key (a certificate of the "compute hosts" CA with the URI SAN
  ``openstack://<cloud>/nova-compute/<host>``), states its provenance and imports it;
* Nova 34's own ``fetch_to_raw`` downloads it into ``_base`` as the nova user;
* libvirtd starts guests through the installed hook, whose ``boot.conf`` names a trust policy with a
  ``hostSigned`` rule and lets it adopt from Glance and the key manager: the first boot adopts the base
  (the provenance checked online, recorded), then the owner's guest runs and another project's is refused.
"""

from __future__ import annotations

import sys
import uuid

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import HashMethod, Signer, load_private_key
from imgsign.compute.trust_record import RecordStore
from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.domains import VirshDomains
from imgsign.keymanager.config import load, open_store
from tests.hook_guests import boot_guest, configure_adopting_hook, define_guest, new_disk, write_host_signed_policy
from tests.policy_pki import make_ca, make_leaf
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.libvirt import libvirt_daemon, unavailable
from tests.servers.nova import fetch_to_raw
from tests.test_boot_hook import Host
from tests.test_compute_hardening import NOBODY, nova_writable_cache
from tests.test_gateway_signing import running
from tests.test_real_images import qemu

pytest.importorskip("aiohttp")
pytestmark = [pytest.mark.libvirt, pytest.mark.servers]
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 and Nova 34 need Python 3.11 or later", allow_module_level=True)

OWNER = "host-signed-owner"
OTHER = "host-signed-other"
HOST = "compute-test"
HOST_URI = f"openstack://test-cloud/nova-compute/{HOST}"
TIMEOUT = 60


@pytest.fixture(scope="module")
def stack(keystone):
    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    with libvirt_daemon() as libvirt:
        keystore = libvirt.workdir / "keystore.sqlite3"
        with glance_server(libvirt.workdir / "glance", keystone=keystone, keystore=keystore) as glance:
            yield libvirt, glance, keystore


def _upload(glance: GlanceServer, data: bytes, properties: dict[str, str]) -> str:
    headers = glance.headers(OWNER)
    created = requests.post(f"{glance.url}/v2/images", headers=headers, timeout=TIMEOUT,
                            json={"name": "base", "disk_format": "raw", "container_format": "bare", **properties})
    assert created.status_code == 201, created.text
    image_id = str(created.json()["id"])
    put = requests.put(f"{glance.url}/v2/images/{image_id}/file", data=data, timeout=TIMEOUT,
                       headers={**headers, "Content-Type": "application/octet-stream"})
    assert put.status_code == 204, put.text
    return image_id


def test_a_host_signed_snapshot_boots_for_its_owner_and_not_for_another_project(stack):
    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.gateway.server import Gateway

    libvirt, glance, keystore = stack
    owner_id, other_id = (glance.keystone.project_user(p).project_id for p in (OWNER, OTHER))
    root = libvirt.workdir / f"host-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)

    # The PKI: the image team signs bases, the compute hosts' CA issued this host's certificate.
    image_ca, compute_ca = make_ca("CN=Image Team CA,O=Example"), make_ca("CN=Compute Hosts CA,O=Example")
    image_ca.write(root, "image-ca")
    compute_ca.write(root, "compute-ca")
    base_signer = make_leaf(image_ca, "CN=image team,O=Example")
    host_cert, host_key = make_leaf(compute_ca, f"CN={HOST},O=Example", uris=(HOST_URI,)).write(root / "host", "host")
    conf = root / "owner.conf"
    conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
                    f"[imgsign]\nproject_id = {owner_id}\n")
    base_cert_id = open_store(load(str(conf))).store_certificate(base_signer.cert.public_bytes(Encoding.DER))

    # The base image (raw), signed by the image team and uploaded by its owner; the snapshot made from it.
    base_raw = root / "base.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", base_raw, "16M")
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x4f 0 2M", base_raw)
    signed = Signer(load_private_key(base_signer.key_pem), base_cert_id, HashMethod.SHA256).sign(
        iter([base_raw.read_bytes()]))
    base_id = _upload(glance, base_raw.read_bytes(), signed.as_dict())
    overlay, snapshot = root / "overlay.qcow2", root / "snapshot.raw"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", base_raw, "-F", "raw", overlay)
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x21 4M 1M", overlay)
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", overlay, snapshot)

    # The instance runs here (defined in libvirt) for the owner; its snapshot goes through the gateway.
    host = Host(root)
    disk = new_disk(host.instances, base_raw)
    source = define_guest(libvirt, disk, base_id, owner_id)
    signing = SigningConfig(key=str(host_key), certificate=str(host_cert), host=HOST, libvirt_uri=libvirt.uri,
                            import_timeout=120)
    keys = load(str(conf))
    gateway = Gateway(GatewayConfig(glance_url=glance.url), signer=HostSigner(signing, keys),
                      domains=VirshDomains(libvirt.uri), keys=CastellanProjects(keys))
    with running(gateway) as url:
        headers = glance.headers(OWNER)
        created = requests.post(f"{url}/v2/images", headers=headers, timeout=TIMEOUT, json={
            "name": "snapshot", "disk_format": "raw", "container_format": "bare", "image_type": "snapshot",
            "instance_uuid": disk.parent.name, "base_image_ref": base_id})
        assert created.status_code == 201, created.text
        snapshot_id = str(created.json()["id"])
        with open(snapshot, "rb") as data:
            put = requests.put(f"{url}/v2/images/{snapshot_id}/file", data=data, timeout=300,
                               headers={**headers, "Content-Type": "application/octet-stream"})
        assert put.status_code == 204, put.text
    libvirt.virsh("undefine", source)
    shown = requests.get(f"{glance.url}/v2/images/{snapshot_id}", headers=headers, timeout=TIMEOUT).json()
    assert shown["status"] == "active" and shown["owner"] == owner_id and "imgsign_provenance_v1_0" in shown, shown

    # Nova downloads it into the image cache as the nova user.
    nova_writable_cache(host.instances)
    base = host.base(snapshot_id)
    nova = fetch_to_raw(root / "nova", glance_url=glance.url, token=headers["X-Auth-Token"], project_id=owner_id,
                        image_id=snapshot_id, dest=base, force_raw_images=True, verify_glance_signatures=False,
                        user=NOBODY)
    assert nova.returncode == 0, nova.stderr[-3000:]
    assert base.read_bytes() == snapshot.read_bytes()

    # The hook: this policy, adoption from Glance (a user of the owner's project) and the key manager.
    policy = write_host_signed_policy(root / "policy.yaml", compute_ca=root / "compute-ca.pem",
                                      image_ca=root / "image-ca.pem", host_uri=HOST_URI,
                                      base_subject="CN=image team,O=Example")
    configure_adopting_hook(libvirt, host, policy=policy, glance=glance, keystore=keystore, project=OWNER,
                            project_id=owner_id)

    def boot(project: str):
        return boot_guest(libvirt, host.instances, base, snapshot_id, project)

    mine, started = boot(owner_id)
    assert started.returncode == 0, started.stderr
    assert libvirt.state(mine) == "running" and libvirt.qemu_pid(mine) is not None
    entries = host.log_entries()
    assert entries[0]["reason"] == "adopted" and entries[0]["image"] == snapshot_id, entries
    assert all(e["allowed"] and e["reason"] in ("adopted", "ok") for e in entries), entries
    record = RecordStore(str(host.state)).get(snapshot_id)
    assert record is not None and record.provenance is not None and record.image_facts is not None
    assert (record.image_facts["owner"], record.image_facts["image_type"]) == (owner_id, "snapshot")
    assert (record.provenance.verified, record.provenance.project_id, record.provenance.host,
            record.provenance.base_image_id) == (True, owner_id, HOST, base_id)
    assert record.provenance.base_anchor_fingerprints == (image_ca.fingerprint,)

    # Another project's guest on the same base: refused by the hostSigned rule, libvirt does not start it.
    theirs, refused = boot(other_id)
    assert refused.returncode != 0, refused.stderr
    assert f"project {other_id} boots an image host-signed for project {owner_id}" in refused.stderr, refused.stderr
    assert libvirt.state(theirs) == "shut off" and libvirt.state(mine) == "running"
    last = host.log_entries()[-1]
    assert (last["allowed"], last["reason"], last["image"]) == (False, "provenance-error", snapshot_id), last
