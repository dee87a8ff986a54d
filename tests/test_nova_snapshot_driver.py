"""Nova 34's own ``LibvirtDriver.snapshot()`` on a host running the gateway: the snapshot comes out host-signed,
and a new instance of its owner boots from it under the hook's ``enforce`` while another project's is refused.

What is real: Nova 34 from PyPI (its own venv, ``tests/servers/nova.py``) with libvirt's Python binding
built for the machine's libvirt; a private libvirtd 9.0 running a qemu 7.2 TCG guest
(``tests/servers/libvirt.py``) booted from a qcow2 overlay on a raw base in ``_base``, as Nova lays an
image-backed instance out; the gateway (in this process, its libvirt lookup the real ``virsh
--readonly`` one) in front of a real glance-api 33 (glance-direct, its own signature check,
imgsign_verify); Keystone tokens; the base image signed by its owner and uploaded to Glance.
``nova_app/snapshot.py`` runs nova-api's ``compute.utils.create_image`` (the queued snapshot record,
with ``instance_uuid``/``base_image_ref``) and then ``LibvirtDriver(...).snapshot()`` with
``[glance] endpoint_override`` = the gateway and ``[libvirt] connection_uri`` = the private daemon.

- **live**: the guest runs, so Nova (QEMU, ``disable_libvirt_livesnapshot`` off) takes the live path:
  it undefines the domain, mirrors the disk into a qcow2 delta with ``blockRebase(COPY|REUSE_EXT|
  SHALLOW)``, aborts the job, redefines the domain, and extracts the delta with ``qemu-img convert``;
- **cold**: the guest is shut off (``power_state`` SHUTDOWN: what a shelve or a stopped server
  gives), so Nova extracts the disk itself with ``qemu-img convert``.

The host certificate comes from a "compute image attestation" CA (tests/policy_pki.py, URI SAN
``openstack://test-cloud/nova-compute/compute-test``); the CA's certificate, and another CA's, are
stored in the owner's project, so that Nova 34's download (``fetch_to_raw`` with
``enable_certificate_validation`` and ``default_trusted_certificate_ids``) can be run with either.

imgsign's boot hook is installed in the libvirtd (tests/hook_guests.py), as on a compute host: ``enforce``,
a trust policy whose snapshot rule is ``hostSigned`` (trust store: the compute CA, this host's URI SAN;
``baseTrustStores``: the CA that issued the base's signer) and whose default rule trusts that CA, and
self-adoption from Glance and the key manager (``adopt_by_conversion``: the gateway signs the qcow2 Nova
uploads, and Nova's ``force_raw_images`` caches it as raw). Every guest here starts through it: the source
guest of the live snapshot (its base adopted on the first start), then, closing the loop, a new instance
on each snapshot (cold and live): Nova 34's ``fetch_to_raw`` downloads the snapshot into ``_base`` as the
nova user, the hook adopts it (the provenance checked online and recorded), the owner's instance runs, and
an instance of another project on the same snapshot is refused (exit 90, ``ProvenanceError``: the
provenance's project is not the booting project); libvirt starts nothing for it.

Stand-ins, each because nova-compute's other machinery is not running here:

- the instance is an ``objects.Instance`` built in memory (never saved: there is no Nova DB), with
  the fields snapshot() reads: uuid = the libvirt domain's uuid, project and user ids of the Keystone
  user whose token the ``RequestContext`` carries, ``image_ref`` and the base image's record as
  system metadata (what nova-api stores at boot);
- ``update_task_state`` records the task states instead of saving them on the instance (no DB); the
  driver is started with ``init_host()`` as nova-compute starts it, whose connection-event callback
  cannot update the compute service's DB record (it logs a warning and carries on);
- the ``VirtAPI`` is Nova's base class (snapshot() never calls it; the compute manager's needs a
  running manager);
- the driver runs as root, not as the nova user, with its privsep daemon started directly
  (``[nova_sys_admin] helper_command``: no sudo/rootwrap on this machine); the live path's only
  privileged call is privsep's ``chown`` of the delta back to the driver's uid;
- the guests have no operating system: nothing writes to their disk while they run, so the disk read
  with ``qemu-img -U`` is what a snapshot must hold, and a "booted" instance is a qemu process libvirt
  started after the hook allowed it;
- the new instances are defined by the test as Nova 34 defines them (below), not by nova-compute's
  ``spawn()``: the base is fetched with Nova's own ``fetch_to_raw`` into ``_base`` as the nova user, the
  overlay made with ``qemu-img create`` as Nova's ``Qcow2`` image backend makes it;
- the base image itself is written into ``_base`` by the test (root's), not downloaded by Nova (the
  snapshot's download is the one this module is about; tests/test_host_signed_libvirt.py downloads a
  base with Nova's code);
- the hook reads Glance as an admin user of the owner's project, as the hook's other tests do (an admin
  may read any project's image, which a compute host's hook must); a compute host gives the hook a
  service user of its own with that right;
- the domain XML is the one tests/test_libvirt_e2e.py writes as Nova 34 does, owned by the project.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from imgsign import HashMethod, Signer, load_private_key
from imgsign.certificates import certificate_public_key
from imgsign.compute.trust_record import RecordStore
from imgsign.errors import ProvenanceError
from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.domains import VirshDomains
from imgsign.keymanager.config import load
from imgsign.provenance import verify_provenance
from tests.conftest import key_of, pki
from tests.hook_guests import boot_guest, configure_adopting_hook, define_guest, new_disk, write_host_signed_policy
from tests.policy_pki import make_ca, make_leaf
from tests.servers.glance import glance_server
from tests.servers.libvirt import libvirt_daemon, unavailable
from tests.servers.nova import fetch_to_raw, snapshot_instance
from tests.test_boot_hook import Host
from tests.test_compute_hardening import NOBODY, nova_writable_cache
from tests.test_gateway_signing import BASE_KEY_TYPE, HOST_KEY_TYPE, PROJECT, Env, running

pytest.importorskip("aiohttp")
pytestmark = [pytest.mark.libvirt, pytest.mark.servers]

MIB = 1024 * 1024
HOST = "compute-test"
HOST_URI = f"openstack://test-cloud/nova-compute/{HOST}"
#: The CA (certs-test) that issued the base image's signer, cert_of(BASE_KEY_TYPE).
BASE_CA = "intermediate-ca.pem"


def _qemu(*args: object) -> str:
    return subprocess.run([str(arg) for arg in args], check=True, capture_output=True, text=True,
                          timeout=300).stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory, keystone):
    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    env = Env(tmp_path_factory.mktemp("nova-snapshot"), keystone)
    # The host's certificate comes from a compute image attestation CA (ECDSA P-384: HOST_KEY_TYPE), with
    # the host in its subject and its URI SAN; another CA stands for any other trust anchor.
    compute_ca = make_ca("CN=imgsign test compute image attestation CA,O=imgsign test")
    host = make_leaf(compute_ca, f"CN={HOST},O=imgsign test", uris=(HOST_URI,))
    other_ca = make_ca("CN=imgsign test other CA,O=imgsign test")
    host_cert, host_key = host.write(env.root / "pki", "host")
    compute_ca_pem = compute_ca.write(env.root / "pki", "compute-ca")[0]
    cas = {"compute": env._stored("cert", "store", compute_ca_pem),
           "other": env._stored("cert", "store", other_ca.write(env.root / "pki", "other-ca")[0])}
    # The CA that issued the base's signer (certs-test's intermediate), a trust store of the hook's policy.
    image_ca_pem = env.root / "pki" / "image-ca.pem"
    shutil.copyfile(pki(BASE_CA), image_ca_pem)
    with libvirt_daemon() as libvirt, \
            glance_server(env.root / "glance", keystone=keystone, keystore=env.keystore) as glance:
        # imgsign's hook in this libvirtd, as on a compute host: enforce, the trust policy (hostSigned
        # rule for snapshots), adoption from Glance and the key manager; every guest here starts under it.
        compute = Host(libvirt.workdir)
        policy = write_host_signed_policy(env.root / "policy.yaml", compute_ca=compute_ca_pem,
                                          image_ca=image_ca_pem, host_uri=HOST_URI)
        configure_adopting_hook(libvirt, compute, policy=policy, glance=glance, keystore=env.keystore,
                                project=PROJECT, project_id=env.project_id, extra="adopt_by_conversion = true\n")
        from imgsign.gateway.host_key import CastellanProjects, HostSigner
        from imgsign.gateway.server import Gateway

        signing = SigningConfig(key=str(host_key), certificate=str(host_cert), host=HOST, libvirt_uri=libvirt.uri,
                                import_timeout=180)
        conf = load(str(env.conf))
        gateway = Gateway(GatewayConfig(glance_url=glance.url), signer=HostSigner(signing, conf),
                          domains=VirshDomains(libvirt.uri), keys=CastellanProjects(conf))
        with running(gateway) as url:
            yield {"libvirt": libvirt, "glance": glance, "env": env, "gateway": url, "host": host, "cas": cas,
                   "compute": compute, "image_ca": image_ca_pem}


@pytest.fixture(scope="module")
def base(stack) -> dict:
    """A signed raw base image: uploaded by its owner to Glance, and cached as Nova's ``_base`` file."""
    glance, env = stack["glance"], stack["env"]
    data = b"".join(hashlib.sha256(b"base %d" % index).digest() * 64 for index in range(2 * MIB // 2048))
    signed = Signer(load_private_key(key_of(BASE_KEY_TYPE).read_bytes()), env.base_cert_id,
                    HashMethod.SHA256).sign(iter([data]))
    headers = glance.headers(PROJECT)
    response = requests.post(f"{glance.url}/v2/images", headers=headers, timeout=60,
                             json={"name": "base", "disk_format": "raw", "container_format": "bare",
                                   **signed.as_dict()})
    assert response.status_code == 201, response.text
    image_id = response.json()["id"]
    response = requests.put(f"{glance.url}/v2/images/{image_id}/file", data=data, timeout=60,
                            headers={**headers, "Content-Type": "application/octet-stream"})
    assert response.status_code == 204, response.text
    record = requests.get(f"{glance.url}/v2/images/{image_id}", headers=headers, timeout=60).json()
    compute = stack["compute"]
    nova_writable_cache(compute.instances)  # root's, writable by nova's group, as the install guide sets it up
    path = compute.base(image_id)  # Nova names a _base file after the SHA-1 of the image id
    path.write_bytes(data)
    return {"id": image_id, "record": record, "path": path, "instances": compute.instances}


def _instance(stack, base: dict, *, start: bool) -> tuple[str, Path]:
    """A Nova-shaped instance of the owner's project: qcow2 overlay (with writes of its own) on the base."""
    libvirt, env = stack["libvirt"], stack["env"]
    disk = new_disk(base["instances"], base["path"])
    _qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 0x{disk.parent.name[:2]} 64k 192k", "-c",
          "write -P 0x5a 1536k 64k", disk)
    name = define_guest(libvirt, disk, base["id"], env.project_id)
    if start:  # through imgsign's hook (enforce): the base is adopted on the first start
        libvirt.virsh("start", name)
        assert libvirt.state(name) == "running"
    return name, disk


def _raw_digest(path: Path, fmt: str, tmp_path: Path) -> str:
    """SHA-256 of what a guest reads from ``path`` (``-U``: a running guest's qemu holds the disk's lock;
    these guests have no operating system, so nothing writes to it)."""
    out = tmp_path / f"{path.name}.{fmt}.raw"
    _qemu("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, out)
    with open(out, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    out.unlink()
    return digest


def _snapshot(stack, base: dict, instance: str, tmp_path: Path):
    glance, env, libvirt = stack["glance"], stack["env"], stack["libvirt"]
    user = glance.keystone.project_user(PROJECT)
    request = {"instance_uuid": instance, "project_id": env.project_id, "user_id": user.user_id,
               "base_image_id": base["id"], "base_image": base["record"], "name": f"snap-{instance[:8]}"}
    result = snapshot_instance(tmp_path / "nova", libvirt_uri=libvirt.uri, glance_url=stack["gateway"],
                               token=glance.headers(PROJECT)["X-Auth-Token"], request=request,
                               snapshots_directory=libvirt.workdir / "snapshots",
                               instances_path=base["instances"])
    (tmp_path / "nova" / "nova-compute.log").write_text(result.stderr)  # Nova's log, kept with the test's files
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _check_signed(stack, base: dict, image_id: str, instance: str, disk: Path, tmp_path: Path) -> bytes:
    """The image is active, host-signed with a valid provenance, checked by Glance, and is the disk."""
    glance, env = stack["glance"], stack["env"]
    headers = glance.headers(PROJECT)
    image = requests.get(f"{glance.url}/v2/images/{image_id}", headers=headers, timeout=60).json()
    assert image["status"] == "active"
    assert (image["image_type"], image["instance_uuid"], image["base_image_ref"]) == ("snapshot", instance,
                                                                                     base["id"])
    assert image["owner"] == env.project_id
    assert image["disk_format"] == "qcow2"  # Nova's choice for a qcow2 disk (snapshot_image_format unset)
    # Nova's create_image dropped the base's img_signature*; the gateway set the host's.
    assert image["img_signature_key_type"] == HOST_KEY_TYPE
    assert image["img_signature"] != base["record"]["img_signature"]
    assert f"Successfully verified signature for image {image_id}" in glance.glance_log_text()

    data = requests.get(f"{glance.url}/v2/images/{image_id}/file", headers=headers, timeout=120).content
    host = stack["host"].cert
    public, fingerprint = certificate_public_key(host), bytes.fromhex(stack["host"].fingerprint)
    provenance = verify_provenance(image, public, fingerprint, image_id=image_id)
    assert provenance.image_digest == hashlib.sha256(data).digest()
    assert (provenance.instance_uuid, provenance.project_id, provenance.host) == (instance, env.project_id, HOST)
    assert provenance.base is not None and provenance.base.image_id == base["id"]
    assert provenance.base.signature_sha256 == \
        hashlib.sha256(base64.b64decode(base["record"]["img_signature"])).digest()

    # The uploaded qcow2 holds what the instance's disk holds (overlay over the base), flattened.
    uploaded = tmp_path / "uploaded.qcow2"
    uploaded.write_bytes(data)
    info = json.loads(_qemu("qemu-img", "info", "--output=json", "-f", "qcow2", uploaded))
    assert "backing-filename" not in info
    assert _raw_digest(uploaded, "qcow2", tmp_path) == _raw_digest(disk, "qcow2", tmp_path)
    return data


@pytest.fixture(scope="module")
def live(stack, base, tmp_path_factory) -> dict:
    """A live snapshot, taken once: the guest (started through imgsign's hook, under enforce) running."""
    tmp_path = tmp_path_factory.mktemp("live")
    name, disk = _instance(stack, base, start=True)
    outcome, log = _snapshot(stack, base, disk.parent.name, tmp_path)
    return {"name": name, "disk": disk, "outcome": outcome, "log": log}


def test_live_snapshot_of_a_running_guest(stack, base, live, tmp_path: Path) -> None:
    libvirt, outcome, name, disk = stack["libvirt"], live["outcome"], live["name"], live["disk"]
    # The guest was started by libvirt through imgsign's hook, which adopted its base (signed by the
    # image team, the policy's default rule) under enforce.
    started = [e for e in stack["compute"].log_entries() if e["image"] == base["id"]]
    assert started and started[0]["reason"] == "adopted" and all(e["allowed"] for e in started), started
    assert outcome["live"] is True
    assert "Beginning live snapshot process" in live["log"], live["log"][-4000:]
    assert outcome["task_states"] == ["image_pending_upload", "image_uploading", "image_pending_upload",
                                      "image_uploading"]
    # Nova redefined the domain after the block copy, and the guest kept running throughout.
    assert libvirt.state(name) == "running"
    assert libvirt.virsh("dominfo", name).stdout.split("Persistent:")[1].split()[0] == "yes"
    _check_signed(stack, base, outcome["image_id"], disk.parent.name, disk, tmp_path)


@pytest.fixture(scope="module")
def cold(stack, base, tmp_path_factory) -> dict:
    """A cold snapshot, taken once: the guest shut off, ``power_state`` SHUTDOWN."""
    libvirt = stack["libvirt"]
    tmp_path = tmp_path_factory.mktemp("cold")
    name, disk = _instance(stack, base, start=False)
    assert libvirt.state(name) == "shut off"
    outcome, log = _snapshot(stack, base, disk.parent.name, tmp_path)
    return {"name": name, "disk": disk, "outcome": outcome, "log": log}


def test_cold_snapshot_of_a_shut_off_guest(stack, base, cold, tmp_path: Path) -> None:
    outcome, disk = cold["outcome"], cold["disk"]
    assert outcome["live"] is False
    assert "Beginning cold snapshot process" in cold["log"], cold["log"][-4000:]
    data = _check_signed(stack, base, outcome["image_id"], disk.parent.name, disk, tmp_path)
    # Cold: Nova's extract is `qemu-img convert -f qcow2 -O qcow2` of the disk; the same convert here
    # gives the very bytes Glance stored (and the host signed).
    expected = tmp_path / "expected.qcow2"
    _qemu("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", disk, expected)
    assert hashlib.sha256(expected.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert stack["libvirt"].state(cold["name"]) == "shut off"


def test_nova_s_download_trusts_it_under_the_compute_ca_only(stack, cold, tmp_path: Path) -> None:
    """Nova 34's ``fetch_to_raw`` with ``verify_glance_signatures``, ``enable_certificate_validation`` and
    ``default_trusted_certificate_ids``: the compute CA accepts the host-signed snapshot, another CA
    refuses it (cursive's certificate check, the certificates read from the owner's project)."""
    glance, env = stack["glance"], stack["env"]
    image_id, disk = cold["outcome"]["image_id"], cold["disk"]

    def fetch(name: str, trusted: str):
        dest = tmp_path / name / "base"
        result = fetch_to_raw(tmp_path / name, glance_url=glance.url, token=glance.headers(PROJECT)["X-Auth-Token"],
                              project_id=env.project_id, image_id=image_id, dest=dest, force_raw_images=True,
                              verify_glance_signatures=True, keystore=env.keystore,
                              trusted_certificate_ids=(stack["cas"][trusted],))
        (tmp_path / name / "nova-compute.log").write_text(result.stderr)
        return result, dest

    accepted, dest = fetch("compute-ca", "compute")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "Image signature verification succeeded" in accepted.stderr, accepted.stderr[-3000:]
    with open(dest, "rb") as handle:  # converted to raw by Nova (force_raw_images): what the guest read
        assert hashlib.file_digest(handle, "sha256").hexdigest() == _raw_digest(disk, "qcow2", tmp_path)

    refused, dest = fetch("other-ca", "other")
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "CertificateValidationFailed" in refused.stderr, refused.stderr[-3000:]
    assert "Could not locate the signing certificate" in refused.stderr, refused.stderr[-3000:]
    assert not dest.exists() and not dest.with_name("base.part").exists()


@pytest.mark.parametrize("kind", ["cold", "live"])
def test_the_snapshot_boots_under_enforce_for_its_owner_and_not_for_another_project(stack, base, kind: str, request,
                                                                                   tmp_path: Path) -> None:
    """The loop closed (issue 23's "Done means"): the snapshot Nova's own ``LibvirtDriver.snapshot()`` made
    on this host is downloaded by Nova 34's ``fetch_to_raw`` into ``_base`` as the nova user (what
    nova-compute does for a new instance: the qcow2 converted to raw under ``force_raw_images``), and a
    new instance started on it by the private libvirtd through imgsign's hook under ``enforce``. The hook
    adopts the base by itself (Glance's record, the certificates from the key manager, the qcow2 from
    Glance converted again: ``adopt_by_conversion``, as the gateway signs the qcow2 Nova uploads) and the
    policy's hostSigned rule trusts it: signed by a host of the compute CA, a provenance naming this image,
    its owner and a base whose signer chained to the image team's CA. The owner's instance runs; an
    instance of another project on the same snapshot is refused (the provenance's project is not the
    booting project) and libvirt does not start it."""
    glance, env, libvirt, compute = stack["glance"], stack["env"], stack["libvirt"], stack["compute"]
    snapshot = request.getfixturevalue(kind)
    image_id = snapshot["outcome"]["image_id"]
    cached = compute.base(image_id)
    # Nova's state directory must be reachable by the nova user (pytest's tmp_path is root's alone).
    nova = fetch_to_raw(libvirt.workdir / f"nova-fetch-{kind}", glance_url=glance.url,
                        token=glance.headers(PROJECT)["X-Auth-Token"], project_id=env.project_id, image_id=image_id,
                        dest=cached, force_raw_images=True, verify_glance_signatures=False, user=NOBODY)
    (tmp_path / "nova-compute.log").write_text(nova.stderr)
    assert nova.returncode == 0, nova.stderr[-3000:]
    assert cached.stat().st_uid == NOBODY  # Nova's file, as on a compute host
    with open(cached, "rb") as handle:  # raw: what the snapshotted guest's disk holds
        assert hashlib.file_digest(handle, "sha256").hexdigest() == _raw_digest(snapshot["disk"], "qcow2", tmp_path)
    seen = len(compute.log_entries()) if compute.log.exists() else 0

    mine, started = boot_guest(libvirt, compute.instances, cached, image_id, env.project_id)
    assert started.returncode == 0, started.stderr
    assert libvirt.state(mine) == "running" and libvirt.qemu_pid(mine) is not None
    entries = compute.log_entries()[seen:]
    # Adopted at "prepare", then the offline check of each later hook call of this start.
    assert (entries[0]["image"], entries[0]["reason"]) == (image_id, "adopted"), entries
    assert "(raw, converted from qcow2; properties from Glance)" in entries[0]["message"], entries
    assert all(e["image"] == image_id and e["allowed"] and e["reason"] == "ok" for e in entries[1:]), entries
    record = RecordStore(str(compute.state)).get(image_id)
    assert record is not None and record.provenance is not None and record.image_facts is not None
    assert (record.source_format, record.cached_format) == ("qcow2", "raw")
    assert (record.image_facts["owner"], record.image_facts["image_type"]) == (env.project_id, "snapshot")
    assert (record.provenance.verified, record.provenance.project_id, record.provenance.host,
            record.provenance.base_image_id) == (True, env.project_id, HOST, base["id"])
    image_ca = x509.load_pem_x509_certificate(stack["image_ca"].read_bytes())
    assert record.provenance.base_anchor_fingerprints == (image_ca.fingerprint(hashes.SHA256()).hex(),)

    # Another project's instance on the same snapshot: the hostSigned rule refuses it, libvirt starts nothing.
    theirs, refused = boot_guest(libvirt, compute.instances, cached, image_id, env.other_id)
    assert refused.returncode != 0, refused.stderr
    assert f"{theirs} prepare begin -) unexpected exit status {ProvenanceError.exit_code}" in refused.stderr, \
        refused.stderr
    assert f"project {env.other_id} boots an image host-signed for project {env.project_id}" in refused.stderr, \
        refused.stderr
    assert libvirt.state(theirs) == "shut off" and not libvirt.qemu_processes(theirs)
    assert libvirt.state(mine) == "running"
    last = compute.log_entries()[-1]
    assert (last["allowed"], last["reason"], last["image"]) == (False, "provenance-error", image_id), last
