"""hooks/libvirt-qemu run exactly as libvirt runs it, on real qcow2 images made with qemu-img.

Layout as on a Nova compute host: ``instances/_base/<sha1(image_id)>`` (the cached,
converted-to-raw image) and ``instances/<instance uuid>/disk`` (a qcow2 overlay
backed by it), plus imgsign's state directory with the trust records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from imgsign import errors
from imgsign.compute.trust_record import cache_name
from tests.conftest import CERT_UUID, REPO, assert_no_python_warning, cert_of, key_of, release, run_cli
from tests.test_real_images import qemu

HOOK = REPO / "hooks" / "libvirt-qemu"
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"


def domain_xml(instance: str, image_id: str | None, disks: list[tuple[Path, str]], *,
               devices_extra: str = "", os_extra: str = "") -> str:
    """A domain XML as Nova writes it; ``devices_extra``/``os_extra`` are appended to <devices>/<os>."""
    root = f'<nova:root type="image" uuid="{image_id}"/>' if image_id else '<nova:root type="volume"/>'
    devices = "\n".join(
        f"""    <disk type="file" device="disk">
      <driver name="qemu" type="{fmt}" cache="none"/>
      <source file="{path}"/>
      <target dev="vd{chr(ord('a') + i)}" bus="virtio"/>
    </disk>""" for i, (path, fmt) in enumerate(disks))
    return f"""<domain type="kvm">
  <name>instance-0000002a</name>
  <uuid>{instance}</uuid>
  <metadata>
    <nova:instance xmlns:nova="{NOVA_NS}">
      <nova:package version="30.0.0"/>
      <nova:name>test-vm</nova:name>
      <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
      <nova:owner><nova:user uuid="u">demo</nova:user><nova:project uuid="p">demo</nova:project></nova:owner>
      {root}
    </nova:instance>
  </metadata>
  <memory unit="KiB">2097152</memory>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <boot dev="hd"/>{os_extra}
  </os>
  <devices>
{devices}{devices_extra}
  </devices>
</domain>
"""


class Host:
    """A compute host in a temp dir: instances path, state dir, hook config."""

    def __init__(self, tmp: Path, mode: str = "enforce", trusted: str = "") -> None:
        self.tmp = tmp
        self.instances = tmp / "instances"
        self.state = tmp / "state"
        self.log = tmp / "hook.log"
        self.config = tmp / "boot.conf"
        #: Where the hook keeps boot.conf's validated snapshot (root's /run/imgsign outside the tests).
        self.run_dir = tmp / "run"
        self.configure(mode, trusted)

    def configure(self, mode: str, trusted: str = "", allow_unverified: str = "") -> None:
        self.config.write_text(f"[boot]\nmode = {mode}\ntrusted_certificate_ids = {trusted}\n"
                               f"instances_path = {self.instances}\nstate_dir = {self.state}\n"
                               f"log_file = {self.log}\nallow_unverified = {allow_unverified}\n")

    def image(self, signed: bool = True) -> tuple[str, Path]:
        """A signed qcow2 from 'Glance', verified into the cache: (image id, its properties file)."""
        image_id = str(uuid.uuid4())
        source = self.tmp / f"{image_id}.qcow2"
        qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "256M")
        qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x4f 0 3M", "-c", "write -P 0x21 100M 1M", source)
        props = self.tmp / f"{image_id}.json"
        result = run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
        assert result.code == 0, result
        props.write_text(result.stdout)
        if signed:
            cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props,
                             "--cert", cert_of("RSA-PSS"), "--instances-path", self.instances,
                             "--state-dir", self.state)
            assert cached.code == 0, cached
        else:  # what Nova does without verification: just convert into the cache
            (self.instances / "_base").mkdir(parents=True, exist_ok=True)
            qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, self.base(image_id))
        return image_id, props

    def base(self, image_id: str) -> Path:
        return self.instances / "_base" / cache_name(image_id)

    def instance(self, image_id: str, backing: Path | None = None) -> tuple[str, Path]:
        """An instance disk: a qcow2 overlay over the image's base file."""
        instance = str(uuid.uuid4())
        disk = self.instances / instance / "disk"
        disk.parent.mkdir(parents=True)
        qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing or self.base(image_id), "-F", "raw", disk)
        return instance, disk

    def hook(self, instance: str, xml: str | bytes, operation: str = "prepare", sub: str = "begin",
             env: dict[str, str] | None = None):
        """Run the hook as libvirt does: XML bytes on stdin (``env`` replaces the environment's extras)."""
        start = time.monotonic()
        data = xml.encode() if isinstance(xml, str) else xml
        proc = subprocess.run([sys.executable, str(HOOK), f"instance-{instance[:8]}", operation, sub, "-"],
                              input=data, capture_output=True, timeout=120,
                              env={**(os.environ if env is None else env), "IMGSIGN_BOOT_CONFIG": str(self.config),
                                   "IMGSIGN_RUN_DIR": str(self.run_dir)})
        proc.stdout, proc.stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        proc.elapsed = time.monotonic() - start  # type: ignore[attr-defined]
        assert "Traceback" not in proc.stderr, proc.stderr
        assert_no_python_warning(proc.stderr)
        return proc

    def boot(self, image_id: str, disk: Path, instance: str):
        return self.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]))

    def log_entries(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_signed_and_unchanged_boots(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    first = host.boot(image_id, disk, instance)
    assert first.returncode == 0, first.stderr
    again = host.boot(image_id, disk, instance)  # second boot: from the verified-digest cache
    assert again.returncode == 0, again.stderr
    entries = host.log_entries()
    assert [e["allowed"] for e in entries] == [True, True]
    # `boot cache` sealed the base (immutable) and primed the verified-digest cache: no boot reads it.
    assert "unchanged since its last verification" in entries[0]["message"]
    assert "unchanged since its last verification" in entries[1]["message"]
    assert entries[0]["instance"] == instance and entries[0]["image"] == image_id


def test_one_changed_byte_in_the_base_is_refused(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    assert host.boot(image_id, disk, instance).returncode == 0  # cached as verified
    with open(release(host.base(image_id)), "r+b") as handle:  # (root could; nova cannot: sealed)
        handle.seek(1024 * 1024)
        byte = handle.read(1)
        handle.seek(1024 * 1024)
        handle.write(bytes([byte[0] ^ 1]))
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.InvalidSignature.exit_code, refused.stderr
    assert "changed since image" in refused.stderr and instance in refused.stderr and image_id in refused.stderr
    entry = host.log_entries()[-1]
    assert entry["allowed"] is False and entry["reason"] == "invalid-signature"
    assert entry["file"] == str(host.base(image_id))


def test_same_size_and_mtime_restored_is_still_caught(host):
    """An attacker who restores the mtime cannot restore ctime: the cache is bypassed."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    assert host.boot(image_id, disk, instance).returncode == 0
    base = release(host.base(image_id))
    info = base.stat()
    with open(base, "r+b") as handle:
        handle.write(b"\x00\x01")
    os.utime(base, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert host.boot(image_id, disk, instance).returncode == errors.InvalidSignature.exit_code


@pytest.mark.parametrize("mode, expected", [("enforce", errors.UnsignedImage.exit_code), ("warn", 0)])
def test_unsigned_image(host, mode, expected):
    host.configure(mode)
    image_id, _ = host.image(signed=False)
    instance, disk = host.instance(image_id)
    result = host.boot(image_id, disk, instance)
    assert result.returncode == expected, result.stderr
    assert "no trust record" in result.stderr
    if mode == "warn":
        assert "WARNING" in result.stderr and host.log_entries()[-1]["allowed"] is True


def test_signer_not_in_trusted_list_is_refused(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    host.configure("enforce", trusted="6b0b9b1c-0000-4000-8000-000000000001")
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    assert "not among the trusted certificate ids" in refused.stderr
    # The image was cached with --cert: its certificate was fetched under no id, so naming the id it
    # claims (img_signature_certificate_uuid) does not make it trusted (tests/test_compute_hardening.py
    # has the key-manager case that is trusted).
    host.configure("enforce", trusted=f"6b0b9b1c-0000-4000-8000-000000000001, {CERT_UUID}")
    assert host.boot(image_id, disk, instance).returncode == errors.UntrustedCertificate.exit_code


@pytest.mark.parametrize("damage", ["missing", "edited", "garbage", "key-replaced"])
def test_missing_or_corrupt_trust_record_is_refused(host, damage):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    record = host.state / "records" / f"{cache_name(image_id)}.json"
    if damage == "missing":
        record.unlink()
    elif damage == "edited":  # e.g. pointing the record at a tampered file's digest
        document = json.loads(record.read_text())
        document["body"]["cached_file"]["sha256"] = "00" * 32
        record.write_text(json.dumps(document))
    elif damage == "garbage":
        record.write_bytes(b"\x00not json")
    else:
        (host.state / "hmac.key").write_bytes(os.urandom(32))
    result = host.boot(image_id, disk, instance)
    expected = errors.UnsignedImage if damage == "missing" else errors.TrustRecordError
    assert result.returncode == expected.exit_code, result.stderr


def test_damaged_verified_cache_only_costs_a_reverification(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    assert host.boot(image_id, disk, instance).returncode == 0
    for entry in (host.state / "verified").iterdir():
        entry.write_text('{"body": {"identity": {}, "sha256": "00"}, "hmac": "forged"}')
    result = host.boot(image_id, disk, instance)
    assert result.returncode == 0, result.stderr
    assert "read and verified in full" in host.log_entries()[-1]["message"]


def test_qcow2_with_external_data_file_is_refused(host, tmp_path):
    image_id, _ = host.image()
    instance = str(uuid.uuid4())
    disk = host.instances / instance / "disk"
    disk.parent.mkdir(parents=True)
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"root:secret" * 100)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on", disk, "1M")
    result = host.boot(image_id, disk, instance)
    assert result.returncode == errors.UnsafeImage.exit_code, result.stderr
    assert "external data file" in result.stderr


def test_backing_file_outside_the_cache_is_refused(host, tmp_path):
    image_id, _ = host.image()
    elsewhere = tmp_path / "elsewhere.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", elsewhere, "1M")
    instance, disk = host.instance(image_id, backing=elsewhere)
    result = host.boot(image_id, disk, instance)
    assert result.returncode == errors.UnsafeImage.exit_code, result.stderr
    assert "outside the image cache" in result.stderr


def test_backing_file_without_format_is_refused(host):
    """Old qcow2 files may lack the backing-format header extension; probing would be unsafe."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    header = bytearray(disk.read_bytes()[:4096])
    at = header.find(b"\xe2\x79\x2a\xca")  # the backing-format header extension
    assert at > 0
    header[at:at + 4] = b"\x7f\xff\xff\xff"  # an unknown extension: qemu ignores it
    with open(disk, "r+b") as handle:
        handle.write(header)
    result = host.boot(image_id, disk, instance)
    assert result.returncode == errors.UnsafeImage.exit_code and "no recorded format" in result.stderr, result.stderr


@pytest.mark.parametrize("operation, sub", [("started", "begin"), ("stopped", "end"),
                                            ("release", "end"), ("migrate", "begin"), ("restore", "begin"),
                                            ("reconnect", "begin"), ("prepare", "end")])
def test_other_operations_exit_zero_at_once(host, operation, sub):
    result = host.hook(str(uuid.uuid4()), "<not even xml", operation, sub)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize("xml, fragment", [
    ("<domain><name>x</name", "malformed"),
    ("", "malformed"),
    ("<network/>", "expected a <domain>"),
])
def test_bad_xml_is_a_clear_refusal(host, xml, fragment):
    result = host.hook(str(uuid.uuid4()), xml)
    assert result.returncode == errors.InputError.exit_code and fragment in result.stderr


def test_missing_disk_is_a_clear_refusal(host):
    image_id, _ = host.image()
    instance = str(uuid.uuid4())
    result = host.boot(image_id, host.instances / instance / "disk", instance)
    assert result.returncode == errors.InputError.exit_code and "does not exist" in result.stderr


def test_unreadable_base_is_a_clear_refusal(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    release(host.base(image_id)).unlink()
    host.base(image_id).mkdir()  # not a file any more
    result = host.boot(image_id, disk, instance)
    assert result.returncode == errors.InputError.exit_code, result.stderr
    assert f"{host.base(image_id)} is not a regular file" in result.stderr


def test_root_image_not_backing_any_disk_is_refused(host):
    image_id, _ = host.image()
    flat = host.tmp / "flat.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", flat, "1M")
    result = host.hook("i", domain_xml(str(uuid.uuid4()), image_id, [(flat, "qcow2")]))
    assert result.returncode == errors.UnsignedImage.exit_code and "not the base of any disk" in result.stderr


def test_volume_backed_instance_without_image_is_allowed(host):
    flat = host.tmp / "config.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", flat, "1M")
    assert host.hook("i", domain_xml(str(uuid.uuid4()), None, [(flat, "raw")])).returncode == 0


def test_missing_config_refuses(host):
    host.config.unlink()
    result = host.hook("i", domain_xml(str(uuid.uuid4()), None, []))
    assert result.returncode == errors.InputError.exit_code and "boot.conf" in result.stderr


def test_download_that_fails_verification_leaves_nothing(host):
    image_id, props = host.image(signed=False)
    host.base(image_id).unlink()
    source = host.tmp / f"{image_id}.qcow2"
    with open(source, "r+b") as handle:
        handle.seek(5 * 1024 * 1024 // 2)
        handle.write(b"tampered")
    result = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props,
                     "--cert", cert_of("RSA-PSS"), "--instances-path", host.instances, "--state-dir", host.state)
    assert result.code == errors.InvalidSignature.exit_code, result
    assert list((host.instances / "_base").iterdir()) == []
    assert not (host.state / "records").exists() or list((host.state / "records").iterdir()) == []


def test_signer_validated_against_a_trusted_ca_at_download_is_trusted_at_boot(host, tmp_path):
    """The record keeps the trusted CA ids the chain was validated against: the hook's trusted list
    may name the CA instead of every signer certificate."""
    env = {"IMGSIGN_KEYSTORE": str(tmp_path / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(tmp_path)}
    root = run_cli("cert", "store", REPO / "certs-test" / "root-ca.pem", env=env).stdout.strip()
    image_id = str(uuid.uuid4())
    source = host.tmp / "src.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "64M")
    signed = run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"), "--store-cert", env=env)
    props = host.tmp / "p.json"
    props.write_text(signed.stdout)
    untrusted = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props,
                        "--trusted", root, "--instances-path", host.instances, "--state-dir", host.state, env=env)
    assert untrusted.code == errors.UntrustedCertificate.exit_code, untrusted  # intermediate missing
    intermediate = run_cli("cert", "store", REPO / "certs-test" / "intermediate-ca.pem", env=env).stdout.strip()
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props, "--trusted", root,
                     "--trusted", intermediate, "--instances-path", host.instances, "--state-dir", host.state, env=env)
    assert cached.code == 0, cached
    instance, disk = host.instance(image_id)
    host.configure("enforce", trusted=root)
    assert host.boot(image_id, disk, instance).returncode == 0
    host.configure("enforce", trusted=str(uuid.uuid4()))
    assert host.boot(image_id, disk, instance).returncode == errors.UntrustedCertificate.exit_code


def test_warm_boot_loads_nothing_the_fast_path_does_not_use(host, tmp_path):
    """Start-up is most of a warm call (issue 21, "What a boot costs"): a warm boot runs without
    cryptography's serialization package (its ssh and cipher modules), tempfile, or anything for the
    network. Fails on main before this change (serialization and tempfile were loaded at import)."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    assert host.boot(image_id, disk, instance).returncode == 0  # full read; the fast path is primed
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(instance, image_id, [(disk, "qcow2")]))
    heavy = ("cryptography.hazmat.primitives.serialization", "tempfile", "keystoneauth1", "oslo_config",
             "castellan", "requests", "pyasn1", "urllib3", "imgsign.compute.adoption", "imgsign.chain")
    probe = subprocess.run(
        [sys.executable, "-c", "import io, sys\nfrom imgsign.compute.libvirt_hook import main\n"
         f"code = main(['vm', 'prepare', 'begin', '-'], open({str(xml)!r}, 'rb'))\n"
         f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "IMGSIGN_BOOT_CONFIG": str(host.config), "IMGSIGN_RUN_DIR": str(host.run_dir)})
    assert probe.stdout.strip() == "0 []", probe
    assert "unchanged since its last verification" in host.log_entries()[-1]["message"]


def test_a_raw_layer_is_checked_without_qemu_img(host, tmp_path):
    """raw has no header (no backing name, no data file): the chain walk checks the raw base's path
    (regular file, no link, in _base) and does not start qemu-img for it; the qcow2 overlay still goes
    through qemu-img. Fails on main (qemu-img info ran for the base too)."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    calls = tmp_path / "qemu-img-calls"
    wrapper = tmp_path / "qemu-img"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> '{calls}'\nexec qemu-img \"$@\"\n")
    wrapper.chmod(0o755)
    first = host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]),
                      env={**os.environ, "IMGSIGN_QEMU_IMG": str(wrapper)})
    assert first.returncode == 0, first.stderr
    inspected = [line.split()[-1] for line in calls.read_text().splitlines() if line.startswith("info ")]
    assert inspected == [str(disk)], inspected
    # A raw disk whose file is a link, or not a regular file, is still refused before any use.
    link = host.instances / instance / "link.raw"
    link.symlink_to(host.base(image_id))
    refused = host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2"), (link, "raw")]))
    assert refused.returncode == errors.UnsafeImage.exit_code, refused.stderr
    assert "symbolic link" in refused.stderr
