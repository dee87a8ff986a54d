"""Images parsed the way Nova 34 and Glance 33 parse them (imgsign.compute.image_format).

Each case is a real file (made with qemu-img where qemu-img can make it, by hand where the point is
that no tool would) and Glance's ``disk_format`` for it.  imgsign's verdict must be Nova's: the
cross-check runs Nova 34's own ``fetch_to_raw`` on the same files (tests/servers/nova.py).  On main,
imgsign told formats by the qcow2 magic and read them with ``qemu-img info -f <that>``, so several of
these (a VMDK descriptor pointing at a host file, a qcow2/MBR polyglot, extended L2 entries, a qcow2
registered as raw) were adopted where Nova refuses them.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.compute import image_format
from tests.test_real_images import qemu

MiB = 1024 * 1024


def _qcow2(path: Path, *options: str, size: str = "4M") -> Path:
    qemu("qemu-img", "create", "-q", "-f", "qcow2", *(["-o", ",".join(options)] if options else []), path, size)
    return path


def plain_qcow2(path: Path) -> Path:
    return _qcow2(path)


def qcow2_v2(path: Path) -> Path:
    return _qcow2(path, "compat=0.10")


def qcow2_data_file(path: Path) -> Path:
    secret = path.with_name("host-secret")
    secret.write_bytes(b"root:secret\n" * 100)
    return _qcow2(path, f"data_file={secret}", "data_file_raw=on")


def qcow2_backing(path: Path) -> Path:
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", path, "4M")
    return path


def qcow2_extended_l2(path: Path) -> Path:
    return _qcow2(path, "extended_l2=on")


def raw_random(path: Path) -> Path:
    path.write_bytes(hashlib.sha256(b"seed").digest() * (MiB // 32))
    return path


def vmdk_flat_descriptor(path: Path) -> Path:
    """A monolithicFlat VMDK descriptor (plain text) whose extent is a host file: qemu reads that file."""
    path.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "/etc/passwd" 0\n\n'
                    '# The Disk Data Base\nddb.virtualHWVersion = "4"\n')
    return path


def vmdk_sparse(path: Path) -> Path:
    qemu("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", path, "4M")
    return path


def qed(path: Path) -> Path:
    qemu("qemu-img", "create", "-q", "-f", "qed", path, "4M")
    return path


def _mbr(entries: list[bytes]) -> bytes:
    sector = bytearray(512)
    for index, entry in enumerate(entries):
        sector[446 + 16 * index:462 + 16 * index] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _entry(boot: int, start_chs: tuple[int, int, int], ostype: int, start_lba: int, sectors: int) -> bytes:
    return struct.pack("<B3BB3BII", boot, *start_chs, ostype, 0xFE, 0xFF, 0xFF, start_lba, sectors)


def gpt_disk(path: Path) -> Path:
    """A whole-disk image with a protective MBR (what a GPT-partitioned raw disk starts with)."""
    path.write_bytes(_mbr([_entry(0, (0, 2, 0), 0xEE, 1, 2047)]) + bytes(MiB - 512))
    return path


def mbr_bad_boot_flag(path: Path) -> Path:
    path.write_bytes(_mbr([_entry(0x7F, (0, 2, 0), 0x83, 2048, 2048)]) + bytes(MiB - 512))
    return path


def qcow2_mbr_polyglot(path: Path) -> Path:
    """A qcow2 that is also an MBR disk ("raw" that is really qcow2 inside): the signature at 510 is in
    the header cluster's unused space, which qemu ignores."""
    _qcow2(path)
    with open(path, "r+b") as handle:
        handle.seek(446)
        handle.write(_entry(0, (0, 2, 0), 0xEE, 1, 2047))
        handle.seek(510)
        handle.write(b"\x55\xaa")
    return path


def truncated_qcow2(path: Path) -> Path:
    """The first 300 bytes of a qcow2: format_inspector needs 512 to call it qcow2, qemu does not."""
    whole = _qcow2(path.with_name(path.name + ".whole"))
    path.write_bytes(whole.read_bytes()[:300])
    return path


def iso(path: Path) -> Path:
    """An ISO 9660 image: the primary volume descriptor ('CD001') at 32 KiB."""
    descriptor = bytearray(2048)
    descriptor[0:7] = b"\x01CD001\x01"
    descriptor[80:88] = struct.pack("<I", 512) + struct.pack(">I", 512)  # volume space size, both endians
    descriptor[128:132] = struct.pack("<H", 2048) + struct.pack(">H", 2048)  # logical block size
    path.write_bytes(bytes(32 * 1024) + bytes(descriptor) + bytes(MiB - 34 * 1024))
    return path


#: (case, maker, Glance disk_format, accepted by Nova 34's fetch_to_raw and by imgsign)
CASES: list[tuple[str, Callable[[Path], Path], str, bool]] = [
    ("qcow2", plain_qcow2, "qcow2", True),
    ("qcow2-v2", qcow2_v2, "qcow2", True),
    ("raw", raw_random, "raw", True),
    ("gpt-registered-raw", gpt_disk, "raw", True),
    ("iso-registered-iso", iso, "iso", True),
    ("qcow2-data-file", qcow2_data_file, "qcow2", False),
    ("qcow2-backing-file", qcow2_backing, "qcow2", False),
    ("qcow2-extended-l2", qcow2_extended_l2, "qcow2", False),
    ("vmdk-flat-descriptor-as-raw", vmdk_flat_descriptor, "raw", False),
    ("vmdk-flat-descriptor-as-vmdk", vmdk_flat_descriptor, "vmdk", False),
    ("iso-registered-raw", iso, "raw", False),
    ("raw-registered-iso", raw_random, "iso", False),
    ("qcow2-registered-raw", plain_qcow2, "raw", False),
    ("raw-registered-qcow2", raw_random, "qcow2", False),
    ("qcow2-mbr-polyglot-as-qcow2", qcow2_mbr_polyglot, "qcow2", False),
    ("qcow2-mbr-polyglot-as-raw", qcow2_mbr_polyglot, "raw", False),
    ("mbr-bad-boot-flag", mbr_bad_boot_flag, "raw", False),
    ("truncated-qcow2-as-raw", truncated_qcow2, "raw", False),
    ("truncated-qcow2-as-qcow2", truncated_qcow2, "qcow2", False),
    ("qed", qed, "qed", False),
]
#: Accepted by Nova (it keeps a VMDK it may use), refused by imgsign, which verifies raw and qcow2 only.
STRICTER = [("vmdk-sparse", vmdk_sparse, "vmdk")]


def imgsign_verdict(path: Path, disk_format: str | None) -> errors.ImgsignError | image_format.Inspected:
    """What imgsign makes of the image as downloaded from Glance (``boot cache``'s inspection)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return image_format.inspect_image(fd, path.name, disk_format, may_be_converted=False)
    except errors.ImgsignError as exc:
        return exc
    finally:
        os.close(fd)


@pytest.mark.parametrize("name, make, disk_format, accepted", CASES, ids=[case[0] for case in CASES])
def test_imgsign_refuses_what_nova_refuses(tmp_path, name, make, disk_format, accepted):
    path = make(tmp_path / name)
    path.chmod(0o644)
    verdict = imgsign_verdict(path, disk_format)
    if accepted:
        assert isinstance(verdict, image_format.Inspected), verdict
        assert verdict.format == ("qcow2" if disk_format == "qcow2" else "raw")
    else:
        assert isinstance(verdict, errors.UnsafeImage), verdict
        assert "Nova" in verdict.message


def test_a_vmdk_nova_would_keep_is_refused_as_not_raw_or_qcow2(tmp_path):
    verdict = imgsign_verdict(vmdk_sparse(tmp_path / "sparse.vmdk"), "vmdk")
    assert isinstance(verdict, errors.UnsafeImage) and "only what qemu reads as raw or qcow2" in verdict.message


def test_the_safety_checks_run_before_qemu_img_opens_the_file(tmp_path, monkeypatch):
    """A VMDK extent is a host file a probing ``qemu-img info`` opens (a qcow2 data file, one qemu opens
    at boot): format_inspector refuses such a header first, and qemu-img is never started for it."""
    from imgsign.compute import qemu_img

    started = []
    monkeypatch.setattr(qemu_img, "probe", lambda *args: started.append(args))
    for path in (qcow2_data_file(tmp_path / "data"), vmdk_flat_descriptor(tmp_path / "flat")):
        assert isinstance(imgsign_verdict(path, None), errors.UnsafeImage)
    assert started == []


def test_the_probe_runs_as_nobody_under_root(tmp_path):
    """qemu-img probing a file runs as nobody: a root-only file cannot be read by it (refused), an
    image readable by others can."""
    if os.geteuid() != 0:
        pytest.skip("the unprivileged probe applies to root runs only")
    path = plain_qcow2(tmp_path / "private.qcow2")
    path.chmod(0o600)
    refused = imgsign_verdict(path, "qcow2")
    assert isinstance(refused, errors.UnsafeImage) and "Permission denied" in refused.message, refused
    path.chmod(0o644)
    assert isinstance(imgsign_verdict(path, "qcow2"), image_format.Inspected)


def test_format_inspector_is_not_imported_by_the_hook():
    """The hook's warm path (a sealed, adopted base) never reads a header with format_inspector: its
    import (about 65 ms) would cost every boot."""
    import subprocess
    import sys

    code = ("import sys, imgsign.compute.libvirt_hook\n"
            "print(sorted(m for m in sys.modules if m.startswith('oslo_utils.imageutils')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.servers
def test_nova_34_gives_the_same_verdicts(tmp_path):
    """Nova 34's own fetch_to_raw (its venv, tests/servers/nova.py) on every case: the same verdicts."""
    from tests.servers import nova

    cases = [(make(tmp_path / name), disk_format) for name, make, disk_format, _ in CASES]
    cases += [(make(tmp_path / name), disk_format) for name, make, disk_format in STRICTER]
    for path, _ in cases:
        path.chmod(0o644)
    verdicts = nova.verdicts(tmp_path / "nova", cases)
    expected = [accepted for *_, accepted in CASES] + [True] * len(STRICTER)
    names = [case[0] for case in CASES] + [case[0] for case in STRICTER]
    assert {name: verdict["accepted"] for name, verdict in zip(names, verdicts, strict=True)} == \
        dict(zip(names, expected, strict=True)), verdicts


# -- fuzzing: never accept what format_inspector refuses, never a traceback -----------------------------

_SEEDS = {"qcow2": plain_qcow2, "vmdk": vmdk_sparse, "gpt": gpt_disk, "iso": iso, "flat": vmdk_flat_descriptor}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    where = tmp_path_factory.mktemp("seeds")
    return {name: make(where / name).read_bytes()[:64 * 1024] for name, make in _SEEDS.items()}


def _format_inspector_refuses(data: bytes, where: Path) -> bool:
    """oslo.utils' own verdict, independent of imgsign's reading loop: ``detect_file_format`` (Glance's
    import plugin) and ``safety_check``; an ISO with a GPT in front is the ISO, as Nova and Glance's upload
    path decide."""
    from oslo_utils.imageutils import format_inspector

    path = where / "fi"
    path.write_bytes(data)
    try:
        inspector = format_inspector.detect_file_format(str(path))
    except format_inspector.ImageFormatError as exc:
        if str(exc) not in ("Multiple formats detected: iso,gpt", "Multiple formats detected: gpt,iso"):
            return True
        inspector = format_inspector.ISOInspector.from_file(str(path))
    try:
        inspector.safety_check()
    except (format_inspector.ImageFormatError, format_inspector.SafetyCheckFailed):
        return True
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(sorted(_SEEDS)), edits=st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1,
       max_size=8)), max_size=6), cut=st.one_of(st.none(), st.integers(0, 70000)),
       disk_format=st.sampled_from([None, "raw", "qcow2", "vmdk", "iso"]))
def test_mutated_headers_never_pass_what_format_inspector_refuses(tmp_path, seeds, seed, edits, cut, disk_format):
    data = bytearray(seeds[seed])
    for offset, patch in edits:
        data[offset:offset + len(patch)] = patch
    data = data[:cut] if cut is not None else data
    path = tmp_path / "mutated"
    path.write_bytes(bytes(data))
    path.chmod(0o644)
    verdict = imgsign_verdict(path, disk_format)  # an ImgsignError or a result: never another exception
    if isinstance(verdict, image_format.Inspected):
        assert not _format_inspector_refuses(bytes(data), tmp_path)
        assert verdict.format in ("raw", "qcow2")
    else:
        assert isinstance(verdict, (errors.UnsafeImage, errors.InputError)), verdict


# -- end to end: `imgsign boot adopt` and `boot cache` refuse what Nova refuses (main adopted these) ------

ADOPTION_CASES = [("vmdk-descriptor-signed-as-raw", vmdk_flat_descriptor, None),
                  ("qcow2-extended-l2-kept", qcow2_extended_l2, None),
                  ("qcow2-registered-raw-kept", plain_qcow2, "raw")]


@pytest.mark.parametrize("name, make, disk_format", ADOPTION_CASES, ids=[case[0] for case in ADOPTION_CASES])
def test_boot_adopt_refuses_a_base_nova_would_refuse(adoption_host, name, make, disk_format):
    """A signed base that Nova's deep inspection refuses is not adopted (exit 62), whatever its signature
    says; nothing is recorded and the base goes back to nova.  main adopted all three."""
    import json
    import uuid

    from tests.test_adoption import adopt, assert_nothing_recorded, nova_download
    from tests.test_adoption_by_conversion import signed_by_hand

    image = make(adoption_host.tmp / name)
    image.chmod(0o644)
    props = signed_by_hand(adoption_host, image)
    image_id = str(uuid.uuid4())
    if disk_format is not None:  # `openstack image show -f json`: disk_format beside the nested properties
        props.write_text(json.dumps({"id": image_id, "disk_format": disk_format,
                                     "properties": json.loads(props.read_text())}))
    nova_download(adoption_host, image_id, image, force_raw=False)
    refused = adopt(adoption_host, image_id, props)
    assert refused.code == errors.UnsafeImage.exit_code, refused
    assert "Nova" in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert_nothing_recorded(adoption_host, image_id)


def test_boot_cache_refuses_a_qcow2_that_is_also_an_mbr_disk(adoption_host):
    """`boot cache` (imgsign's own fetch_to_raw): main converted this polyglot by its qcow2 magic."""
    from imgsign.compute.trust_record import cache_name
    from tests.conftest import cert_of, run_cli
    from tests.test_adoption_by_conversion import signed_by_hand

    image = qcow2_mbr_polyglot(adoption_host.tmp / "polyglot")
    props = signed_by_hand(adoption_host, image)
    cached = run_cli("boot", "cache", image, "--image-id", "img-polyglot", "--properties", props,
                     "--cert", cert_of("RSA-PSS"), "--instances-path", adoption_host.instances,
                     "--state-dir", adoption_host.state)
    assert cached.code == errors.UnsafeImage.exit_code and "Multiple formats" in cached.stderr, cached
    assert not (adoption_host.instances / "_base" / cache_name("img-polyglot")).exists()


@pytest.fixture
def adoption_host():
    """As tests/test_adoption.py's host: nova (uid 65534) owns ``_base``, in a directory it can reach."""
    import shutil
    import tempfile

    from tests.test_boot_hook import Host
    from tests.test_compute_hardening import nova_writable_cache

    path = Path(tempfile.mkdtemp(prefix="imgsign-formats-", dir="/tmp"))
    os.chmod(path, 0o755)
    host = Host(path)
    nova_writable_cache(host.instances)
    yield host
    shutil.rmtree(path, ignore_errors=True)


def test_the_hook_refuses_a_base_read_as_another_format_than_it_was_verified_as(tmp_path):
    """A qcow2 base kept as qcow2 (force_raw_images = False), under an overlay whose header says its
    backing file is raw: qemu would parse the verified bytes as another format than imgsign inspected.
    main allowed it (the record's format was never compared)."""
    import uuid

    from tests.conftest import CERT_UUID, cert_of, key_of, run_cli
    from tests.test_boot_hook import Host

    host = Host(tmp_path)
    image_id = str(uuid.uuid4())
    source = plain_qcow2(tmp_path / "kept.qcow2")
    props = tmp_path / "kept.json"
    signed = run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
    assert signed.code == 0, signed
    props.write_text(signed.stdout)
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props, "--keep-format",
                     "--cert", cert_of("RSA-PSS"), "--instances-path", host.instances, "--state-dir", host.state)
    assert cached.code == 0, cached
    instance, disk = host.instance(image_id)  # `qemu-img create -b <base> -F raw`
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.UnsafeImage.exit_code, refused.stderr
    assert "read by qemu as raw" in refused.stderr and "verified as qcow2" in refused.stderr, refused.stderr
    disk.unlink()
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", host.base(image_id), "-F", "qcow2", disk)
    assert host.boot(image_id, disk, instance).returncode == 0


def test_the_hook_reads_an_overlay_header_with_its_owners_rights_not_roots(adoption_host):
    """The instance overlay is nova's (or the qemu user's): ``qemu-img info`` of it runs as its owner, so a
    header crafted against qemu-img's parser gains nothing beyond its writer's rights; the sealed, root-owned
    base is still read as root.  On main every qemu-img run of the hook was root's.  A wrapper records
    the uid of each run (``IMGSIGN_QEMU_IMG``) and execs the real qemu-img."""
    import shutil
    import uuid

    from tests.test_boot_hook import domain_xml
    from tests.test_compute_hardening import NOBODY

    image_id, _ = adoption_host.image()
    record = adoption_host.tmp / "qemu-img-uids"
    wrapper = adoption_host.tmp / "qemu-img"
    wrapper.write_text(f"#!/bin/sh\necho \"$(id -u) $*\" >> {record}\nexec {shutil.which('qemu-img')} \"$@\"\n")
    wrapper.chmod(0o755)
    record.touch()
    record.chmod(0o666)
    instance = str(uuid.uuid4())
    disk = adoption_host.instances / instance / "disk"
    disk.parent.mkdir(parents=True)
    disk.parent.chmod(0o755)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", adoption_host.base(image_id), "-F", "raw", disk)
    os.chown(disk, NOBODY, NOBODY)
    booted = adoption_host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]),
                                env={**os.environ, "IMGSIGN_QEMU_IMG": str(wrapper)})
    assert booted.returncode == 0, booted.stderr
    runs = [line.split(" ", 1) for line in record.read_text().splitlines()]
    assert [uid for uid, args in runs if args.endswith(str(disk))] == [str(NOBODY)], runs


def test_boot_adopt_all_checks_each_bases_disk_format_from_its_show_output(adoption_host):
    """`boot adopt --all` with `openstack image show -f json` files: each document's disk_format (beside
    its nested properties) is checked against its base; a raw base registered as iso is refused alone."""
    import json

    from tests.test_adoption_all import adopt_all, downloaded, show_directory

    good = downloaded(adoption_host, "raw")[1]
    lying_id, lying = downloaded(adoption_host, "raw", pattern="0x22")
    lying["disk_format"] = "iso"
    outcome = adopt_all(adoption_host, show_directory(adoption_host, good, lying), "--json")
    bases = {base["image_id"]: base for base in json.loads(outcome.stdout)["bases"]}
    assert outcome.code == errors.UnsafeImage.exit_code, outcome
    assert bases[good["id"]]["status"] == "adopted", bases
    assert bases[lying_id]["status"] == "refused" and "disk_format 'iso'" in bases[lying_id]["message"], bases
    assert bases[lying_id]["exit_code"] == errors.UnsafeImage.exit_code, bases
