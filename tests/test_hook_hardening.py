"""The boot hook against an attacker who can write what the nova user, a guest's qemu or a shared
``_base`` can write (never imgsign's state or configuration), with real qemu-img images and the
real ``hooks/libvirt-qemu`` run as libvirt runs it.

Where it matters, a test first shows with qemu-img itself (``qemu-img convert`` opens a chain
exactly as qemu does) that the planted image really makes qemu read the host file.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from imgsign import errors
from tests.conftest import CERT_UUID, cert_of, key_of, run_cli
from tests.test_boot_hook import Host, domain_xml
from tests.test_real_images import qemu

SECRET = b"root:$6$host-secret$\n" * 4096


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


@pytest.fixture
def secret(tmp_path) -> Path:
    """A host file no signer signed, which the guest must never read."""
    path = tmp_path / "host-secret"
    path.write_bytes(SECRET)
    return path


def expect(result, error: type[errors.ImgsignError] | None, *fragments: str) -> None:
    """The hook exited with ``error``'s code (0 for None) and printed every fragment."""
    code = error.exit_code if error is not None else 0
    assert result.returncode == code, f"exit {result.returncode}, expected {code}; stderr: {result.stderr!r}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr {result.stderr!r}"


def qemu_reads(disk: Path, fmt: str = "qcow2", length: int = len(SECRET)) -> bytes:
    """The first ``length`` bytes a guest reads from ``disk`` (qemu-img opens the chain like qemu)."""
    out = disk.parent / f".read-{uuid.uuid4().hex}"
    qemu("qemu-img", "convert", "-f", fmt, "-O", "raw", disk, out)
    try:
        with open(out, "rb") as handle:
            return handle.read(length)
    finally:
        out.unlink()


def overlay(disk: Path, backing: str | Path, backing_format: str = "raw", size: str = "256M") -> Path:
    """A qcow2 overlay whose header names ``backing`` verbatim (``-u``: not opened)."""
    disk.parent.mkdir(parents=True, exist_ok=True)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing), "-u", disk, size)
    return disk


def file_disk(path: Path | str, fmt: str, target: str, source_inner: str = "", inner: str = "",
              device: str = "disk") -> str:
    return f"""
    <disk type="file" device="{device}">
      <driver name="qemu" type="{fmt}"/>
      <source file="{path}">{source_inner}</source>{inner}
      <target dev="{target}" bus="virtio"/>
    </disk>"""


def raw_image(host: Host, data: bytes) -> str:
    """A signed raw image (e.g. a kernel) verified into the cache; its image id."""
    image_id = str(uuid.uuid4())
    source = host.tmp / f"{image_id}.raw"
    source.write_bytes(data)
    signed = run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
    assert signed.code == 0, signed
    props = host.tmp / f"{image_id}.json"
    props.write_text(signed.stdout)
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props,
                     "--cert", cert_of("RSA-PSS"), "--instances-path", host.instances, "--state-dir", host.state)
    assert cached.code == 0, cached
    return image_id


# --- class 3: host files reached through the backing chain ---------------------------------------

def protocol_names(secret: Path) -> dict[str, str]:
    return {
        "json": 'json:' + json.dumps({"file": {"driver": "file", "filename": str(secret)}}),
        "file": f"file:{secret}",
        "nbd": "nbd:localhost:10809",
        "host_device": f"host_device:{secret}",
    }


@pytest.mark.parametrize("protocol", ["json", "file", "nbd", "host_device"])
def test_protocol_backing_name_with_planted_symlink_is_refused(host, secret, protocol):
    """qemu opens ``json:{...}``/``file:``/``nbd:``... as a protocol; a link planted at the same name,
    read as a relative path, used to lead the check to the genuine base."""
    image_id, _ = host.image()
    name = protocol_names(secret)[protocol]
    instance = str(uuid.uuid4())
    disk = overlay(host.instances / instance / "disk", name)
    planted = disk.parent / name
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(host.base(image_id))
    if protocol in ("json", "file"):
        assert qemu_reads(disk) == SECRET  # what the guest would see: the host file
    result = host.boot(image_id, disk, instance)
    expect(result, errors.UnsafeImage, "not a plain file name")


def test_symlink_in_the_cache_is_refused(host, secret):
    """A link in _base passes a check and is retargeted before qemu opens it: links are refused."""
    image_id, _ = host.image()
    alias = host.instances / "_base" / ("a" * 40)
    alias.symlink_to(host.base(image_id))
    instance = str(uuid.uuid4())
    disk = overlay(host.instances / instance / "disk", alias)
    result = host.boot(image_id, disk, instance)
    expect(result, errors.UnsafeImage, "is a symbolic link")
    alias.unlink()
    alias.symlink_to(secret)  # the retarget the attacker makes after the check
    assert qemu_reads(disk) == SECRET


def test_backing_name_that_is_not_utf8_is_refused(host):
    """qemu-img prints undecodable bytes of a backing name as U+FFFD: the hook would check the file
    named with U+FFFD (a genuine copy planted there) while qemu opens the one with the raw bytes."""
    kernel_id = raw_image(host, os.urandom(65536))
    base = host.base(kernel_id)
    genuine = host.instances / "_base" / "\ufffd" / base.name
    genuine.parent.mkdir()
    shutil.copyfile(base, genuine)
    other = Path(os.fsdecode(bytes(host.instances / "_base") + b"/\xff")) / base.name
    other.parent.mkdir()
    other.write_bytes(b"\x99" * 65536)  # what qemu would really read
    instance = str(uuid.uuid4())
    disk = overlay(host.instances / instance / "disk", other, size="64K")
    assert qemu_reads(disk, length=4) == b"\x99" * 4
    expect(host.hook(instance, domain_xml(instance, None, [(disk, "qcow2")])), errors.UnsafeImage, "not valid UTF-8")


def test_cache_directory_replaced_by_a_symlink_is_refused(host, tmp_path):
    """nova owns instances_path: it can move _base away and leave a link to a directory it controls."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    elsewhere = tmp_path / "nova-controlled"
    shutil.move(host.instances / "_base", elsewhere)
    (host.instances / "_base").symlink_to(elsewhere)
    expect(host.boot(image_id, disk, instance), errors.UnsafeImage, f"{host.instances / '_base'} is a symbolic link")


def test_symlink_swapped_during_the_check_never_passes(host, secret):
    """A second thread flips a link in the chain between the genuine base and a host file while the
    hook runs: no run may allow the start."""
    image_id, _ = host.image()
    alias = host.instances / "_base" / ("b" * 40)
    instance = str(uuid.uuid4())
    disk = overlay(host.instances / instance / "disk", alias)
    stop = threading.Event()

    def flip() -> None:
        targets = (host.base(image_id), secret)
        n = 0
        while not stop.is_set():
            temp = alias.with_name(f".flip-{n % 2}")
            temp.symlink_to(targets[n % 2])
            os.replace(temp, alias)
            n += 1

    alias.symlink_to(host.base(image_id))
    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        codes = [host.boot(image_id, disk, instance).returncode for _ in range(8)]
    finally:
        stop.set()
        thread.join()
    assert 0 not in codes and set(codes) <= {errors.UnsafeImage.exit_code, errors.InputError.exit_code}, codes


def test_disk_file_that_is_a_symlink_to_a_host_file_is_refused(host, secret):
    """The config drive (no backing file, not in _base) replaced by a link to a host file."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    config = disk.parent / "disk.config"
    config.symlink_to(secret)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")],
                     devices_extra=file_disk(config, "raw", "sda", device="cdrom"))
    result = host.hook(instance, xml)
    expect(result, errors.UnsafeImage, "symbolic link")


def test_dotdot_in_a_backing_name_is_refused(host):
    image_id, _ = host.image()
    instance = str(uuid.uuid4())
    disk = overlay(host.instances / instance / "disk", f"../_base/{host.base(image_id).name}")
    result = host.boot(image_id, disk, instance)
    expect(result, errors.UnsafeImage, "'..'")


def test_every_layer_in_the_cache_is_verified(host):
    """overlay -> unsigned qcow2 in _base -> genuine base: the middle layer's data shadows the base."""
    image_id, _ = host.image()
    middle = overlay(host.instances / "_base" / ("c" * 40), host.base(image_id))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x66 0 1M", middle)
    instance = str(uuid.uuid4())
    disk = overlay(host.instances / instance / "disk", middle, "qcow2")
    assert qemu_reads(disk, length=4) == b"\x66" * 4
    result = host.boot(image_id, disk, instance)
    expect(result, errors.UnsignedImage, f"{middle} has no trust record")


def test_base_in_a_subdirectory_of_the_cache_is_verified_not_skipped(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    hidden = host.instances / "_base" / "sub" / ("d" * 40)
    hidden.parent.mkdir()
    hidden.write_bytes(b"\x90" * 65536)
    second = overlay(disk.parent / "disk.eph0", hidden, size="1M")
    xml = domain_xml(instance, image_id, [(disk, "qcow2"), (second, "qcow2")])
    result = host.hook(instance, xml)
    expect(result, errors.UnsignedImage, f"{hidden} has no trust record")


def test_ephemeral_base_is_logged_and_a_disguised_one_refused(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    ephemeral = host.instances / "_base" / "ephemeral_1_0706d66"
    qemu("qemu-img", "create", "-q", "-f", "raw", ephemeral, "1M")
    eph0 = overlay(disk.parent / "disk.eph0", ephemeral, size="1M")
    xml = domain_xml(instance, image_id, [(disk, "qcow2"), (eph0, "qcow2")])
    allowed = host.hook(instance, xml)
    expect(allowed, None)
    assert any(e["file"] == str(ephemeral) and e["reason"] == "not-verified" for e in host.log_entries())
    # an 'ephemeral' qcow2 carrying data over the genuine base is an image layer in disguise
    disguised = overlay(host.instances / "_base" / "ephemeral_2_0706d66", host.base(image_id))
    instance2 = str(uuid.uuid4())
    disk2 = overlay(host.instances / instance2 / "disk", disguised, "qcow2")
    refused = host.boot(image_id, disk2, instance2)
    expect(refused, errors.UnsafeImage, "ephemeral/swap")


# --- libvirt's own <backingStore> and <dataStore> ------------------------------------------------

def backing_store(path: Path | str, fmt: str = "raw", kind: str = "file", complete: bool = True) -> str:
    source = f'<source file="{path}"/>' if kind == "file" else \
        '<source protocol="nbd" name="export"><host name="192.0.2.1" port="10809"/></source>'
    end = "<backingStore/>" if complete else ""
    return f'\n      <backingStore type="{kind}"><format type="{fmt}"/>{source}{end}</backingStore>'


def test_xml_backing_store_outside_the_cache_is_refused(host, secret):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [], devices_extra=file_disk(disk, "qcow2", "vda", inner=backing_store(secret)))
    result = host.hook(instance, xml)
    expect(result, errors.UnsafeImage, "outside the image cache")


def test_xml_backing_store_layer_in_the_cache_is_verified(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    unsigned = host.instances / "_base" / ("e" * 40)
    unsigned.write_bytes(b"\xcc" * 65536)
    xml = domain_xml(instance, image_id, [], devices_extra=file_disk(disk, "qcow2", "vda",
                                                                     inner=backing_store(unsigned)))
    result = host.hook(instance, xml)
    expect(result, errors.UnsignedImage, f"{unsigned} has no trust record")
    genuine = domain_xml(instance, image_id, [], devices_extra=file_disk(disk, "qcow2", "vda",
                                                                         inner=backing_store(host.base(image_id))))
    expect(host.hook(instance, genuine), None)


@pytest.mark.parametrize("mode, expected", [("enforce", errors.UnsafeImage), ("warn", None)])
def test_xml_network_backing_store(host, mode, expected):
    host.configure(mode)
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [], devices_extra=file_disk(disk, "qcow2", "vda",
                                                                     inner=backing_store("", kind="network")))
    result = host.hook(instance, xml)
    expect(result, expected, "<backingStore type='network'>", "WARNING" if mode == "warn" else "refusing")


def test_xml_data_store_is_refused(host, secret):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    store = f'<dataStore type="file"><format type="raw"/><source file="{secret}"/></dataStore>'
    xml = domain_xml(instance, image_id, [], devices_extra=file_disk(disk, "qcow2", "vda", source_inner=store))
    result = host.hook(instance, xml)
    expect(result, errors.UnsafeImage, "<dataStore>")


# --- class 4: parts of a guest the hook used to skip ---------------------------------------------

def kernel_xml(instance_dir: Path, initrd: bool = True) -> str:
    ramdisk = f"\n    <initrd>{instance_dir / 'ramdisk'}</initrd>" if initrd else ""
    return (f"\n    <kernel>{instance_dir / 'kernel'}</kernel>{ramdisk}"
            "\n    <cmdline>root=/dev/vda console=ttyS0</cmdline>")


@pytest.fixture
def kernel_host(host):
    """An instance booted with Nova's kernel_id/ramdisk_id: copies of the cached images in its directory."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    kernel_id = raw_image(host, os.urandom(300_000))
    ramdisk_id = raw_image(host, os.urandom(200_000))
    shutil.copyfile(host.base(kernel_id), disk.parent / "kernel")
    shutil.copyfile(host.base(ramdisk_id), disk.parent / "ramdisk")
    xml = domain_xml(instance, image_id, [(disk, "qcow2")], os_extra=kernel_xml(disk.parent))
    return host, instance, disk.parent, xml, kernel_id, ramdisk_id


def test_kernel_and_ramdisk_copies_of_signed_images_boot(kernel_host):
    host, instance, _, xml, kernel_id, ramdisk_id = kernel_host
    result = host.hook(instance, xml)
    expect(result, None)
    images = {e["file"].rsplit("/", 1)[-1]: e["image"] for e in host.log_entries()}
    assert images["kernel"] == kernel_id and images["ramdisk"] == ramdisk_id


@pytest.mark.parametrize("part, change, expected", [
    ("ramdisk", "replace", errors.UnsignedImage), ("kernel", "flip", errors.InvalidSignature)])
def test_unsigned_or_changed_kernel_or_ramdisk_is_refused(kernel_host, part, change, expected):
    host, instance, directory, xml, _, _ = kernel_host
    path = directory / part
    if change == "replace":
        path.write_bytes(os.urandom(123_457))
    else:
        with open(path, "r+b") as handle:
            byte = handle.read(1)
            handle.seek(0)
            handle.write(bytes([byte[0] ^ 1]))
    result = host.hook(instance, xml)
    expect(result, expected, str(path))
    host.configure("warn")
    expect(host.hook(instance, xml), None, "WARNING")


FIRMWARE_XML = {
    "loader": ('\n    <loader readonly="yes" type="pflash">{path}</loader>\n    <nvram>{nvram}</nvram>', ""),
    "acpi-table": ('\n    <acpi><table type="slic">{path}</table></acpi>', ""),
    "fw_cfg": ("", '\n  <sysinfo type="fwcfg"><entry name="opt/com.example/blob" file="{path}"/></sysinfo>'),
}


@pytest.mark.parametrize("role", sorted(FIRMWARE_XML))
def test_host_firmware_only_root_can_change(host, tmp_path, role):
    """<loader>, ACPI tables and fw_cfg files are host files the guest reads: allowed (and logged) only
    when no user but root can change them; <nvram> is logged as instance state."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    firmware = tmp_path / "firmware"
    firmware.mkdir(mode=0o755)
    code = firmware / "OVMF_CODE.fd"
    code.write_bytes(b"\xff" * 4096)
    code.chmod(0o644)
    nvram = tmp_path / f"{instance}_VARS.fd"
    nvram.write_bytes(b"\x00" * 4096)

    def boot(path: Path):
        os_extra, top = FIRMWARE_XML[role]
        xml = domain_xml(instance, image_id, [(disk, "qcow2")], os_extra=os_extra.format(path=path, nvram=nvram))
        return host.hook(instance, xml.replace("\n  <devices>", top.format(path=path) + "\n  <devices>", 1))

    expect(boot(code), None)
    reasons = {e["file"]: e["reason"] for e in host.log_entries()}
    assert reasons[str(code)] == "not-verified"
    assert role != "loader" or reasons[str(nvram)] == "not-verified"
    code.chmod(0o666)  # anyone may rewrite the firmware
    expect(boot(code), errors.UnverifiableDevice, "can be changed by a user other than root")
    code.chmod(0o644)
    os.chown(firmware, 65534, 65534)  # a directory another user owns: it may swap the file
    expect(boot(code), errors.UnverifiableDevice, "not root")
    in_instance = disk.parent / "OVMF_CODE.fd"  # the nova user can replace anything there
    shutil.copyfile(code, in_instance)
    in_instance.chmod(0o644)
    expect(boot(in_instance), errors.UnverifiableDevice, "Nova can write")


def test_qemu_commandline_passthrough_is_never_allowed_under_enforce(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")]).replace(
        "</domain>", '  <qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">'
                     '<qemu:arg value="-drive"/><qemu:arg value="file=/etc/shadow,if=virtio"/>'
                     "</qemu:commandline>\n</domain>")
    expect(host.hook(instance, xml), errors.UnverifiableDevice, "file=/etc/shadow", "never allowed")
    host.configure("enforce", allow_unverified="qemu:commandline")
    expect(host.hook(instance, xml), errors.InputError, "allow_unverified")
    host.configure("warn")
    expect(host.hook(instance, xml), None, "WARNING")


UNVERIFIABLE = {
    "block": ("block", '<disk type="block" device="disk"><driver name="qemu" type="raw"/>'
                       '<source dev="/dev/disk/by-path/ip-192.0.2.1:3260-iscsi-iqn.2010-10.org.openstack:v1-lun-1"/>'
                       '<target dev="vdb" bus="virtio"/><serial>6d4c2a1e-volume</serial></disk>'),
    "lun": ("block", '<disk type="block" device="lun"><driver name="qemu" type="raw"/><source dev="/dev/sdz"/>'
                     '<target dev="sdb" bus="scsi"/></disk>'),
    "rbd": ("network", '<disk type="network" device="disk"><driver name="qemu" type="raw"/>'
                       '<source protocol="rbd" name="volumes/volume-1"><host name="192.0.2.2" port="6789"/></source>'
                       '<target dev="vdb" bus="virtio"/></disk>'),
    "volume": ("volume", '<disk type="volume" device="disk"><driver name="qemu" type="raw"/>'
                         '<source pool="default" volume="vol1"/><target dev="vdb" bus="virtio"/></disk>'),
    "dir": ("dir", '<disk type="dir" device="floppy"><source dir="/etc"/><target dev="fda" bus="fdc"/></disk>'),
    "scsi-hostdev": ("hostdev", '<hostdev mode="subsystem" type="scsi"><source><adapter name="scsi_host7"/>'
                                '<address bus="0" target="0" unit="0"/></source></hostdev>'),
    "vpmem": ("memory", '<memory model="nvdimm" access="shared"><source><path>/dev/dax0.0</path></source>'
                        '<target><size unit="KiB">1048576</size><node>0</node></target></memory>'),
    "virtiofs": ("filesystem", '<filesystem type="mount" accessmode="passthrough"><driver type="virtiofs"/>'
                               '<source dir="/var/lib/nova/mnt/share"/><target dir="share"/></filesystem>'),
}


@pytest.mark.parametrize("device", sorted(UNVERIFIABLE))
def test_devices_imgsign_cannot_verify_are_never_silently_passed(host, device):
    kind, element = UNVERIFIABLE[device]
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")], devices_extra="\n    " + element)
    refused = host.hook(instance, xml)
    expect(refused, errors.UnverifiableDevice, "cannot be verified")
    host.configure("warn")
    expect(host.hook(instance, xml), None, "WARNING (mode=warn)")
    host.configure("enforce", allow_unverified=kind)
    expect(host.hook(instance, xml), None, "WARNING (mode=enforce)")
    assert host.log_entries()[-1]["reason"] == "unverifiable-device"


def test_floppy_over_an_unsigned_base_is_verified(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    unsigned = host.instances / "_base" / ("f" * 40)
    unsigned.write_bytes(b"\xeb\x3c" * 32768)
    floppy = overlay(disk.parent / "floppy", unsigned, size="64K")
    xml = domain_xml(instance, image_id, [(disk, "qcow2")],
                     devices_extra=file_disk(floppy, "qcow2", "fda", device="floppy"))
    result = host.hook(instance, xml)
    expect(result, errors.UnsignedImage, str(unsigned))


def test_config_drive_is_logged_as_not_verified(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    config = disk.parent / "disk.config"
    qemu("qemu-img", "create", "-q", "-f", "raw", config, "1M")
    xml = domain_xml(instance, image_id, [(disk, "qcow2")],
                     devices_extra=file_disk(config, "raw", "sda", device="cdrom"))
    expect(host.hook(instance, xml), None)
    entry = next(e for e in host.log_entries() if e["file"] == str(config))
    assert entry["allowed"] and entry["reason"] == "not-verified" and "config drive" in entry["message"]


# --- the domain XML as libvirt passes it: bytes, C locale ----------------------------------------

C_LOCALE = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
            "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def test_domain_xml_that_is_not_utf8_is_a_clean_refusal(host):
    instance = str(uuid.uuid4())
    xml = domain_xml(instance, None, []).encode().replace(b"instance-0000002a", b"instance-\xff\xfe")
    result = host.hook(instance, xml, env=C_LOCALE)
    expect(result, errors.InputError, "the domain XML is malformed")
    assert "internal error" not in result.stderr


def test_domain_xml_in_its_declared_encoding_is_read_in_the_c_locale(host):
    instance = str(uuid.uuid4())
    xml = domain_xml(instance, None, []).replace("<nova:name>test-vm</nova:name>", "<nova:name>café</nova:name>")
    latin1 = ('<?xml version="1.0" encoding="ISO-8859-1"?>\n' + xml).encode("latin-1")
    expect(host.hook(instance, latin1, env=C_LOCALE), None)

