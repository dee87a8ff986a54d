"""Adoption by conversion (``imgsign boot adopt --by-conversion --original FILE``): a base Nova converted
from a qcow2 that has no raw-digest statement (signed by the manual ``openssl dgst`` procedure or with
``imgsign sign --no-raw-digest``) is adopted when the signed qcow2, verified and converted again, is
exactly the base.  No Glance runs here, so Nova's ``fetch_to_raw`` is a stand-in, replayed as the
``nova`` user with real qemu-img (tests/test_adoption.py's ``nova_download``).  Nova 34's own
``fetch_to_raw`` converts such a qcow2 from a real glance-api, as the nova user, and the hook adopts it by
conversion (and refuses a base that is not the conversion) in tests/test_hook_self_adoption.py.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from imgsign import errors, load_certificate
from imgsign.compute import adoption
from imgsign.compute.conversion_adoption import Original
from imgsign.compute.trust_record import RecordStore
from imgsign.policy import Policy
from tests.conftest import CERT_UUID, cert_of, key_of, openssl, run_cli
from tests.test_adoption import adopt, as_nova, assert_nothing_recorded, boots_fast, host, make_image, nova_download
from tests.test_real_images import qemu

__all__ = ["host"]  # the fixture


def signed_by_hand(host, image: Path) -> Path:
    """The documented manual procedure (``openssl dgst``): properties without a raw-digest statement."""
    signature = host.tmp / f"{image.name}.sig"
    subprocess.run([openssl(), "dgst", "-sha256", "-sign", str(key_of("RSA-PSS")), "-sigopt",
                    "rsa_padding_mode:pss", "-out", str(signature), str(image)], check=True, capture_output=True)
    props = host.tmp / f"{image.name}.json"
    props.write_text(json.dumps({
        "img_signature": base64.b64encode(signature.read_bytes()).decode(), "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "RSA-PSS", "img_signature_certificate_uuid": CERT_UUID}))
    return props


def signed_without_statement(host, image: Path) -> Path:
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID, "--no-raw-digest")
    assert signed.code == 0, signed
    assert not any(name.startswith("imgsign_raw_v1_") for name in signed.json())
    props = host.tmp / f"{image.name}.json"
    props.write_text(signed.stdout)
    return props


def by_conversion(host, image_id: str, props: Path, original: Path, *extra: object):
    return adopt(host, image_id, props, "--by-conversion", "--original", original, *extra)


def base_dir_listing(host, image_id: str) -> list[str]:
    return sorted(os.listdir(host.base(image_id).parent))


@pytest.mark.parametrize("sign", [signed_by_hand, signed_without_statement])
def test_converted_base_is_adopted_by_conversion_and_boots_on_the_fast_path(host, sign):
    image = make_image(host, "qcow2")
    props = sign(host, image)
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    assert base.read_bytes()[:4] != b"QFI\xfb"
    adopted = by_conversion(host, image_id, props, image, "--json")
    assert adopted.code == 0, adopted
    body = adopted.json()
    assert body["format"] == "raw" and body["source_format"] == "qcow2"
    record = RecordStore(str(host.state)).get(image_id)
    assert record.cached_format == "raw" and record.source_format == "qcow2"
    assert record.cached_size == base.stat().st_size
    assert record.cached_sha256 == hashlib.sha256(base.read_bytes()).digest()
    assert record.signed_digest == hashlib.sha256(image.read_bytes()).digest()  # what img_signature signs
    info = base.stat()
    assert info.st_uid == 0 and info.st_mode & 0o7777 == 0o644
    assert base_dir_listing(host, image_id) == [base.name]  # the private download and conversion are gone
    boots_fast(host, image_id)


def test_without_by_conversion_the_converted_base_is_still_refused_and_the_option_is_named(host):
    image = make_image(host, "qcow2")
    props = signed_by_hand(host, image)
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    refused = adopt(host, image_id, props)
    assert refused.code == errors.InvalidSignature.exit_code, refused
    assert "--by-conversion" in refused.stderr
    assert_nothing_recorded(host, image_id)


@pytest.mark.parametrize("change", ["byte", "size"])
def test_a_base_that_is_not_the_conversion_is_refused_and_nothing_recorded(host, change):
    image = make_image(host, "qcow2")
    props = signed_by_hand(host, image)
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    if change == "byte":
        as_nova("printf 'X' | dd of=\"$1\" bs=1 seek=41943041 conv=notrunc status=none", base)
    else:
        as_nova('truncate -s +512 "$1"', base)
    refused = by_conversion(host, image_id, props, image)
    assert refused.code == errors.InvalidSignature.exit_code, refused
    assert "is not the raw conversion of its signed qcow2" in refused.stderr
    assert_nothing_recorded(host, image_id)
    assert base_dir_listing(host, image_id) == [base.name]


def test_an_original_whose_signature_does_not_verify_is_refused_and_leaves_nothing(host):
    image = make_image(host, "qcow2")
    props = signed_by_hand(host, image)
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    forged = host.tmp / "forged.qcow2"
    forged.write_bytes(image.read_bytes())
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x66 1M 4k", forged)  # another guest, same header
    refused = by_conversion(host, image_id, props, forged)
    assert refused.code == errors.InvalidSignature.exit_code, refused
    assert "given for adoption by conversion does not match img_signature" in refused.stderr
    assert_nothing_recorded(host, image_id)
    assert base_dir_listing(host, image_id) == [base.name]


def test_an_original_over_the_size_cap_is_refused_before_it_is_read(host):
    image = make_image(host, "qcow2")
    props = signed_by_hand(host, image)
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    size = image.stat().st_size
    refused = by_conversion(host, image_id, props, image, "--max-size", str(size - 1))
    assert refused.code == errors.InputError.exit_code, refused
    assert f"larger than {size - 1} bytes, the size limit of adoption by conversion" in refused.stderr
    assert f"it has {size} bytes" in refused.stderr
    assert_nothing_recorded(host, image_id)
    assert base_dir_listing(host, image_id) == [base.name]
    assert by_conversion(host, image_id, props, image, "--max-size", str(size)).code == 0  # the cap itself is fine


def test_a_stream_passing_the_size_cap_is_stopped_at_once(host):
    """A source that announces no size (or lies) is cut off at the chunk that passes the cap."""
    image = make_image(host, "qcow2")
    props = json.loads(signed_by_hand(host, image).read_text())
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    chunk, cap = 64 * 1024, 256 * 1024
    data = image.read_bytes()
    assert len(data) > 2 * cap
    pulled = []

    def stream():
        for start in range(0, len(data), chunk):
            pulled.append(chunk)
            yield data[start:start + chunk]

    for announced in (None, cap):  # no size, or a size under the cap that the stream then exceeds
        pulled.clear()
        with pytest.raises(errors.InputError, match="size limit of adoption by conversion"):
            adoption.adopt(str(host.instances), image_id, props, load_certificate(cert_of("RSA-PSS").read_bytes()),
                           RecordStore(str(host.state)), policy=Policy(), immutable=True,
                           original=Original(stream(), max_size=cap, announced_size=announced))
        assert sum(pulled) == cap + chunk  # not one chunk more than the one that passed the cap
        assert_nothing_recorded(host, image_id)
        assert base_dir_listing(host, image_id) == [host.base(image_id).name]


def test_a_raw_original_is_refused(host):
    raw = make_image(host, "raw")
    props = signed_by_hand(host, raw)
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, raw)
    as_nova("printf 'X' | dd of=\"$1\" bs=1 seek=1048576 conv=notrunc status=none", base)  # so not itself
    refused = by_conversion(host, image_id, props, raw)
    assert refused.code == errors.InputError.exit_code, refused
    assert "is not a qcow2 image" in refused.stderr
    assert_nothing_recorded(host, image_id)
    assert base_dir_listing(host, image_id) == [base.name]


def test_an_original_naming_a_backing_file_is_refused(host):
    backing = make_image(host, "raw")
    image = host.tmp / "overlay.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", image)
    os.chmod(image, 0o644)
    props = signed_by_hand(host, image)
    image_id = str(uuid.uuid4())
    base = host.base(image_id)
    as_nova('qemu-img convert -t none -f qcow2 -O raw "$1" "$2"', image, base)  # Nova would read the backing
    refused = by_conversion(host, image_id, props, image)
    assert refused.code == errors.UnsafeImage.exit_code, refused
    assert "safety checks: backing_file" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr  # the refusal alone: no library warning on stderr
    assert_nothing_recorded(host, image_id)


@pytest.mark.parametrize("args", [["--by-conversion"], ["--original", "x.qcow2"], ["--all", "--by-conversion",
                                                                                   "--original", "x.qcow2"],
                                  ["--by-conversion", "--original", "x.qcow2", "--max-size", "0"],
                                  ["--by-conversion", "--original", "x.qcow2", "--max-size", "lots"]])
def test_by_conversion_usage_errors(host, args):
    props = host.tmp / "p.json"
    props.write_text("{}")
    target = [] if "--all" in args else [str(uuid.uuid4())]
    result = run_cli("boot", "adopt", *target, "--properties", props, "--instances-path", host.instances,
                     "--state-dir", host.state, *args)
    assert result.code == 2, result


@pytest.mark.parametrize("case", ["forged original", "base not the conversion", "adopted"])
def test_without_o_tmpfile_the_named_private_files_are_removed_on_every_path(host, monkeypatch, case):
    """Where _base's filesystem lacks O_TMPFILE (EOPNOTSUPP) the private files are named 0600 files: the
    download and the conversion must still be gone afterwards, adopted or refused."""
    image = make_image(host, "qcow2")
    props = json.loads(signed_by_hand(host, image).read_text())
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    original = image
    if case == "forged original":
        original = host.tmp / "forged.qcow2"
        original.write_bytes(image.read_bytes())
        qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x66 1M 4k", original)
    elif case == "base not the conversion":
        as_nova("printf 'X' | dd of=\"$1\" bs=1 seek=41943041 conv=notrunc status=none", base)
    real_open, created = os.open, []

    def open_without_tmpfile(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        fd = real_open(path, flags, *args, **kwargs)
        if str(path).startswith(".imgsign-"):
            created.append(path)
        return fd

    monkeypatch.setattr(os, "open", open_without_tmpfile)
    with open(original, "rb") as data:
        call = lambda: adoption.adopt(str(host.instances), image_id, props,  # noqa: E731
                                      load_certificate(cert_of("RSA-PSS").read_bytes()), RecordStore(str(host.state)),
                                      policy=Policy(), immutable=True, original=Original(data))
        if case == "adopted":
            assert call().source_format == "qcow2"
        else:
            with pytest.raises(errors.InvalidSignature):
                call()
    monkeypatch.undo()
    assert len(created) == (1 if case == "forged original" else 2)  # the fallback was taken
    assert base_dir_listing(host, image_id) == [base.name]
    if case != "adopted":
        assert_nothing_recorded(host, image_id)


def test_a_conversion_past_the_deadline_is_refused_not_a_traceback(host, monkeypatch):
    """qemu-img that does not end by the Original's deadline is stopped: a clear InputError, nothing
    recorded, nothing left in _base (before, subprocess.TimeoutExpired escaped convert_to_raw)."""
    image = make_image(host, "qcow2")
    props = json.loads(signed_by_hand(host, image).read_text())
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    slow = host.tmp / "slow-qemu-img"
    real = subprocess.run(["sh", "-c", "command -v qemu-img"], capture_output=True, text=True).stdout.strip()
    slow.write_text(f'#!/bin/sh\n[ "$1" = convert ] && exec sleep 30\nexec {real} "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setenv("IMGSIGN_QEMU_IMG", str(slow))
    with open(image, "rb") as data, pytest.raises(errors.InputError, match="did not convert .* within"):
        adoption.adopt(str(host.instances), image_id, props, load_certificate(cert_of("RSA-PSS").read_bytes()),
                       RecordStore(str(host.state)), policy=Policy(), immutable=True,
                       original=Original(data, deadline=time.monotonic() + 1))
    monkeypatch.delenv("IMGSIGN_QEMU_IMG")
    assert_nothing_recorded(host, image_id)
    assert base_dir_listing(host, image_id) == [base.name]
