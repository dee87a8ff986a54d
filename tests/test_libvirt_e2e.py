"""imgsign's hook under a real libvirtd 9.0 starting real qemu 7.2 (TCG) guests: run, not read.

The other boot tests feed hooks/libvirt-qemu the XML libvirt would pass. Here libvirt
itself calls the installed hook (tests/servers/libvirt.py): ``virsh define`` of a domain
XML shaped as Nova 34 writes it (``<nova:instance>`` metadata, a qcow2 overlay in the
instance directory on a raw base in ``_base``), ``dynamic_ownership`` on, then
``virsh start``. The guests have no operating system (a blank disk): a running qemu
process is the proof that libvirt went ahead. Memory is 64 MiB and each test boots one
or two guests. Bases are prepared as in tests/test_boot_hook.py (``imgsign boot cache``
seals them).
"""

from __future__ import annotations

import os
import pwd
import re
import time
import uuid
from pathlib import Path

import pytest

from imgsign import errors
from imgsign.compute.protection import is_immutable
from tests.conftest import release
from tests.servers.libvirt import Libvirt, libvirt_daemon, unavailable
from tests.test_boot_hook import Host

pytestmark = pytest.mark.libvirt

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
#: The qemu user of Debian's libvirt (its build default; the harness's qemu.conf keeps it).
QEMU_USER = "libvirt-qemu"


def nova_domain_xml(name: str, instance: str, image_id: str, disk: Path) -> str:
    """A domain as Nova 34's libvirt driver writes it for an image-backed instance (qcow2 images_type,
    ``virt_type = qemu``), with the devices a guest without display needs."""
    directory = disk.parent
    return f"""<domain type="qemu">
  <uuid>{instance}</uuid>
  <name>{name}</name>
  <memory>65536</memory>
  <vcpu>1</vcpu>
  <metadata>
    <nova:instance xmlns:nova="{NOVA_NS}">
      <nova:package version="34.0.0"/>
      <nova:name>vm-{name}</nova:name>
      <nova:creationTime>2026-12-06 00:00:00</nova:creationTime>
      <nova:flavor name="m1.nano" id="42">
        <nova:memory>64</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="6f1ec1b4e5c84d6c9f0e3c33f1b2a001">demo</nova:user>
        <nova:project uuid="0b0c1a4b1f0d4f7a8c5e2d3f4a5b6c7d">demo</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="{image_id}"/>
      <nova:ports/>
    </nova:instance>
  </metadata>
  <sysinfo type="smbios">
    <system>
      <entry name="manufacturer">OpenStack Foundation</entry>
      <entry name="product">OpenStack Nova</entry>
      <entry name="version">34.0.0</entry>
      <entry name="serial">{instance}</entry>
      <entry name="uuid">{instance}</entry>
      <entry name="family">Virtual Machine</entry>
    </system>
  </sysinfo>
  <os>
    <type machine="pc">hvm</type>
    <boot dev="hd"/>
    <smbios mode="sysinfo"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset="utc"/>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" cache="none"/>
      <source file="{disk}"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <serial type="pty">
      <log file="{directory}/console.log" append="off"/>
    </serial>
    <memballoon model="virtio">
      <stats period="10"/>
    </memballoon>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def libvirt():
    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    with libvirt_daemon() as server:
        yield server


@pytest.fixture
def host(libvirt: Libvirt):
    """A compute host whose instances path qemu (the qemu user) can reach; its boot.conf is the hook's."""
    root = libvirt.workdir / f"host-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    host = Host(root)
    host.config = libvirt.boot_config
    host.configure("enforce")
    return host


class Guest:
    def __init__(self, libvirt: Libvirt, host: Host, image_id: str, disk: Path | None = None) -> None:
        if disk is None:
            self.instance, disk = host.instance(image_id)
        else:
            self.instance = disk.parent.name
        self.libvirt, self.host, self.image_id, self.disk = libvirt, host, image_id, disk
        # Nova's instance-%08x; random, as harnesses of parallel workers share the machine's process list.
        self.name = f"instance-{uuid.uuid4().hex[:8]}"
        xml = disk.parent / "libvirt.xml"  # where Nova keeps its copy
        xml.write_text(nova_domain_xml(self.name, self.instance, image_id, disk))
        libvirt.virsh("define", str(xml))

    def start(self):
        return self.libvirt.virsh("start", self.name, check=False)

    def entries(self) -> list[dict]:
        return [entry for entry in self.host.log_entries() if entry["instance"] == self.instance] \
            if self.host.log.exists() else []

    def calls(self) -> list[tuple[str, str]]:
        return [(operation, sub) for operation, sub, _ in self.libvirt.hook_calls(self.name)]

    def xml_at(self, operation: str, sub: str) -> str:
        return next(xml for op, s, xml in self.libvirt.hook_calls(self.name) if (op, s) == (operation, sub))


def assert_running(guest: Guest) -> int:
    assert guest.libvirt.state(guest.name) == "running"
    pid = guest.libvirt.qemu_pid(guest.name)
    assert pid is not None, f"no qemu process for {guest.name}"
    return pid


def test_signed_image_boots_and_its_base_stays_sealed(libvirt, host):
    """The hook runs at prepare and start (then with the chain libvirt resolved), libvirt's chown of the
    sealed base fails and is ignored, the guest runs on the base, a second guest on it takes the fast path."""
    image_id, _ = host.image()
    base = host.base(image_id)
    before = base.stat()
    first = Guest(libvirt, host, image_id)
    started = first.start()
    assert started.returncode == 0, started.stderr
    pid = assert_running(first)
    # qemu was handed the base itself: libvirt resolved the chain and passes it with -blockdev.
    assert str(base) in " ".join(libvirt.qemu_cmdline(pid))
    # libvirt called the hook at prepare begin and start begin (then started, which it ignores) and
    # it allowed the base twice.
    assert first.calls()[:3] == [("prepare", "begin"), ("start", "begin"), ("started", "begin")]
    entries = first.entries()
    assert [(e["file"], e["allowed"]) for e in entries] == [(str(base), True)] * 2, entries
    # Nova's XML names no backing chain; at start begin libvirt hands the hook the chain it resolved.
    assert "<backingStore" not in first.xml_at("prepare", "begin")
    resolved = first.xml_at("start", "begin")
    assert re.search(r"<backingStore type='file' index='\d+'>\s*<format type='raw'/>\s*"
                     rf"<source file='{re.escape(str(base))}'/>\s*<backingStore/>", resolved), resolved

    # DAC: the overlay now belongs to the qemu user; the sealed base could not be chowned (libvirt
    # tries: see test_owner_sealed_base_is_handed_to_the_qemu_user) and the guest started anyway; the
    # base is root's, 0644 and immutable.
    qemu_uid = pwd.getpwnam(QEMU_USER).pw_uid
    assert first.disk.stat().st_uid == qemu_uid
    after = base.stat()
    assert (after.st_uid, after.st_gid, after.st_mode & 0o7777) == (0, 0, 0o644)
    fd = os.open(base, os.O_RDONLY)
    try:
        assert is_immutable(fd) is True
    finally:
        os.close(fd)
    # Not even metadata changed: the fast path's identity (ctime included) still holds.
    assert (after.st_ino, after.st_ctime_ns, after.st_mtime_ns) == (before.st_ino, before.st_ctime_ns,
                                                                    before.st_mtime_ns)

    # A second guest on the same base, the first still running: both checks take the fast path.
    second = Guest(libvirt, host, image_id)
    started = second.start()
    assert started.returncode == 0, started.stderr
    assert_running(second)
    assert_running(first)
    entries = second.entries()
    assert len(entries) == 2 and all(e["allowed"] for e in entries), entries
    assert all("unchanged since its last verification" in e["message"] for e in entries), entries


def test_header_rewritten_between_prepare_and_start_is_refused(libvirt, host):
    """nova rewrites the overlay's backing name after the prepare check: libvirt resolves the new chain,
    and the start begin check refuses it; qemu never starts."""
    image_id, _ = host.image()
    other_id, _ = host.image(signed=False)  # a base Nova downloaded without imgsign: no trust record
    guest = Guest(libvirt, host, image_id)
    libvirt.on_hook("prepare", "begin", f"qemu-img rebase -u -f qcow2 -b '{host.base(other_id)}' -F raw "
                                        f"'{guest.disk}'\n")
    try:
        refused = guest.start()
    finally:
        libvirt.on_hook("prepare", "begin", None)
    assert refused.returncode != 0
    assert "Hook script execution failed" in refused.stderr, refused.stderr
    assert f"{guest.name} start begin -) unexpected exit status {errors.UnsignedImage.exit_code}" \
        in refused.stderr, refused.stderr
    assert str(host.base(other_id)) in refused.stderr and "no trust record" in refused.stderr
    entries = guest.entries()
    # prepare: the signed base allowed; start: the base the rewritten header names refused, and the
    # root image no longer the base of the disk.
    assert [(e["file"], e["allowed"]) for e in entries] == [(str(host.base(image_id)), True),
                                                            (str(host.base(other_id)), False),
                                                            (str(host.base(image_id)), False)], entries
    assert str(host.base(other_id)) in guest.xml_at("start", "begin")
    assert libvirt.state(guest.name) == "shut off"
    assert libvirt.qemu_processes(guest.name) == []


@pytest.mark.parametrize("case", ["tampered", "unsigned", "untrusted"])
def test_refused_base_stops_the_start(libvirt, host, case):
    """virsh start fails naming the hook, its exit status and its reason; no qemu process is left."""
    image_id, _ = host.image(signed=case != "unsigned")
    if case == "tampered":  # (root could; nova cannot: sealed)
        with open(release(host.base(image_id)), "r+b") as handle:
            handle.seek(1024 * 1024)
            byte = handle.read(1)
            handle.seek(1024 * 1024)
            handle.write(bytes([byte[0] ^ 1]))
        error, reason = errors.InvalidSignature, "changed since image"
    elif case == "unsigned":
        error, reason = errors.UnsignedImage, "no trust record"
    else:
        host.configure("enforce", trusted="6b0b9b1c-0000-4000-8000-000000000001")
        error, reason = errors.UntrustedCertificate, "not among the trusted certificate ids"
    guest = Guest(libvirt, host, image_id)
    refused = guest.start()
    assert refused.returncode != 0
    assert "Hook script execution failed" in refused.stderr, refused.stderr
    assert f"{guest.name} prepare begin -) unexpected exit status {error.exit_code}" in refused.stderr, \
        refused.stderr
    assert reason in refused.stderr and guest.instance in refused.stderr, refused.stderr
    assert libvirt.state(guest.name) == "shut off"
    assert libvirt.qemu_processes(guest.name) == []
    # Refused at prepare begin: libvirt never got as far as start begin.
    assert guest.calls()[0] == ("prepare", "begin") and ("start", "begin") not in guest.calls()
    assert [e["allowed"] for e in guest.entries()] == [False]


def test_destroy_and_libvirtd_restart(libvirt, host):
    """A libvirtd restart reconnects to the running guest (the hook's reconnect call does nothing, the
    guest is not killed); virsh destroy stops qemu and leaves the base sealed; it starts again."""
    image_id, _ = host.image()
    guest = Guest(libvirt, host, image_id)
    assert guest.start().returncode == 0
    pid = assert_running(guest)
    logged = len(guest.entries())
    libvirt.restart_libvirtd()
    assert assert_running(guest) == pid
    assert ("reconnect", "begin") in guest.calls()
    assert len(guest.entries()) == logged  # reconnect is not checked (a failure there would kill the guest)

    libvirt.virsh("destroy", guest.name)
    assert libvirt.state(guest.name) == "shut off"
    deadline = time.monotonic() + 10
    while libvirt.qemu_processes(guest.name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert libvirt.qemu_processes(guest.name) == []
    base = host.base(image_id)
    assert base.stat().st_uid == 0
    fd = os.open(base, os.O_RDONLY)
    try:
        assert is_immutable(fd) is True
    finally:
        os.close(fd)
    restarted = guest.start()
    assert restarted.returncode == 0, restarted.stderr
    assert_running(guest)
    assert [e["allowed"] for e in guest.entries()] == [True] * (logged + 2)


def test_owner_sealed_base_is_handed_to_the_qemu_user_after_start_begin(libvirt, host):
    """seal_bases = owner (SELinux hosts): without the immutable flag libvirt's DAC driver chowns the
    base to the qemu user, after the start begin hook (the base is still root's during that call), so
    the next boot's prepare check reads it in full (the fast path needs a root-owned file). The
    contrast to the sealed case above: libvirt does try to chown every layer of the chain."""
    image_id, _ = host.image()
    base = release(host.base(image_id))
    host.config.write_text(host.config.read_text().replace("[boot]\n", "[boot]\nseal_bases = owner\n"))
    owner_at_start = libvirt.workdir / "owner-at-start-begin"
    libvirt.on_hook("start", "begin", f"stat -c %U '{base}' > '{owner_at_start}'\n")
    try:
        first = Guest(libvirt, host, image_id)
        started = first.start()
    finally:
        libvirt.on_hook("start", "begin", None)
    assert started.returncode == 0, started.stderr
    assert_running(first)
    assert owner_at_start.read_text().strip() == "root"
    assert base.stat().st_uid == pwd.getpwnam(QEMU_USER).pw_uid
    second = Guest(libvirt, host, image_id)
    started = second.start()
    assert started.returncode == 0, started.stderr
    assert_running(second)
    entries = second.entries()
    assert [e["allowed"] for e in entries] == [True, True], entries
    # prepare: re-sealed (root's again) and read in full; start begin: still root's, unchanged.
    assert "read and verified in full" in entries[0]["message"], entries
    assert "unchanged since its last verification" in entries[1]["message"], entries
    assert base.stat().st_uid == pwd.getpwnam(QEMU_USER).pw_uid


def test_save_and_restore_are_checked_again(libvirt, host):
    """``virsh restore`` (what a migration-style restore does): libvirt passes the saved XML through the
    hook's ``restore`` call, whose output would replace it (the hook prints nothing), then checks at
    prepare and start as for a boot; a base changed while the guest was saved is refused."""
    image_id, _ = host.image()
    guest = Guest(libvirt, host, image_id)
    assert guest.start().returncode == 0
    saved = host.tmp / "saved.img"
    libvirt.virsh("save", guest.name, str(saved))
    assert libvirt.state(guest.name) == "shut off"
    logged = len(guest.entries())
    libvirt.virsh("restore", str(saved))
    assert_running(guest)
    calls = guest.calls()
    restore = calls.index(("restore", "begin"))
    assert calls[restore + 1:restore + 3] == [("prepare", "begin"), ("start", "begin")], calls
    assert [e["allowed"] for e in guest.entries()[logged:]] == [True, True]

    libvirt.virsh("save", guest.name, str(saved))
    with open(release(host.base(image_id)), "r+b") as handle:  # (root could; nova cannot: sealed)
        handle.seek(1024 * 1024)
        byte = handle.read(1)
        handle.seek(1024 * 1024)
        handle.write(bytes([byte[0] ^ 1]))
    refused = libvirt.virsh("restore", str(saved), check=False)
    assert refused.returncode != 0
    assert f"{guest.name} prepare begin -) unexpected exit status {errors.InvalidSignature.exit_code}" \
        in refused.stderr, refused.stderr
    assert libvirt.state(guest.name) == "shut off"
    assert libvirt.qemu_processes(guest.name) == []
