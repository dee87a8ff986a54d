"""``imgsign boot adopt``: a trust record for a base file Nova downloaded by itself.

No Glance runs in these tests, so Nova's own download cannot fill ``_base`` here: :func:`nova_download`
is a stand-in that replays it with real tools as the ``nova`` user (here uid 65534, owner of
``_base``): the image is copied to ``_base/<sha1(id)>.part`` and renamed, or a qcow2 is converted
with ``qemu-img convert -t none -O raw`` to ``.converted``, ``.part`` unlinked and ``.converted``
renamed (facts doc, "Nova's download path in detail").  Nova 34's own ``fetch_to_raw`` fills
``_base`` from a real glance-api for the same cases in tests/test_hook_self_adoption.py (as the nova
user, ``force_raw_images`` on and off, the hook adopting) and tests/test_libvirt_nova.py (``imgsign
boot adopt`` of that base, booted under a real libvirtd).  Images are real qcow2/raw files signed by
``imgsign sign`` (or by hand with ``openssl dgst``); boots go through the real hook.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from imgsign import errors, load_certificate
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.policy import Policy
from tests.conftest import CERT_UUID, cert_of, key_of, openssl, release, run_cli
from tests.test_boot_hook import Host, domain_xml
from tests.test_compute_hardening import NOBODY, Attacker, as_attacker, nova_writable_cache
from tests.test_real_images import qemu


@pytest.fixture
def host():
    """A compute host whose ``_base`` belongs to nova (uid 65534), in a directory nova can reach: the
    instances path is root's and sticky (docs, "The path to each base"), ``_base`` nova's."""
    path = Path(tempfile.mkdtemp(prefix="imgsign-adopt-", dir="/tmp"))
    os.chmod(path, 0o755)
    host = Host(path)
    nova_writable_cache(host.instances)
    yield host
    shutil.rmtree(path, ignore_errors=True)


def as_nova(script: str, *args: object) -> None:
    """Run a shell script as the nova user (uid 65534), as Nova's own download does."""
    subprocess.run(["sh", "-ec", script, "nova", *map(str, args)], check=True, capture_output=True, timeout=120,
                   user=NOBODY, group=NOBODY, extra_groups=[])


def nova_download(host: Host, image_id: str, source: Path, *, force_raw: bool = True) -> Path:
    """A stand-in for Nova's ``fetch_to_raw`` (download to .part, convert a qcow2 to raw, rename), as nova.

    A stand-in because no Glance runs in these unit tests: the image comes from a local file. Nova's own
    code does this against a real glance-api in tests/test_hook_self_adoption.py (``Compute.nova_download``,
    as the nova user, both ``force_raw_images`` settings) and tests/test_libvirt_nova.py.
    """
    base = host.base(image_id)
    qcow2 = source.read_bytes()[:4] == b"QFI\xfb"
    if qcow2 and force_raw:
        as_nova('cp "$1" "$2.part"; qemu-img convert -t none -f qcow2 -O raw "$2.part" "$2.converted"; '
                'rm "$2.part"; mv "$2.converted" "$2"', source, base)
    else:
        as_nova('cp "$1" "$2.part"; mv "$2.part" "$2"', source, base)
    assert base.stat().st_uid == NOBODY
    return base


def make_image(host: Host, fmt: str, pattern: str = "0x4f") -> Path:
    """A real image made with qemu-img/qemu-io, readable by nova."""
    path = host.tmp / f"{uuid.uuid4()}.{fmt}"
    qemu("qemu-img", "create", "-q", "-f", fmt, path, "64M")
    qemu("qemu-io", "-f", fmt, "-c", f"write -P {pattern} 0 3M", "-c", "write -P 0x21 40M 1M", path)
    os.chmod(path, 0o644)
    return path


def signed_image(host: Host, fmt: str, pattern: str = "0x4f") -> tuple[Path, Path]:
    """An image signed by ``imgsign sign`` (a qcow2 gets its raw-digest statement) and its properties."""
    image = make_image(host, fmt, pattern)
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
    assert signed.code == 0, signed
    props = image.with_suffix(".json")
    props.write_text(signed.stdout)
    return image, props


def adopt(host: Host, image_id: str, props: Path, *extra: object):
    return run_cli("boot", "adopt", image_id, "--properties", props, "--cert", cert_of("RSA-PSS"),
                   "--instances-path", host.instances, "--state-dir", host.state, *extra)


def boots_fast(host: Host, image_id: str) -> None:
    """The real hook allows an instance on the base, on its first boot, without reading it again."""
    instance, disk = host.instance(image_id)
    result = host.boot(image_id, disk, instance)
    assert result.returncode == 0, result.stderr
    assert "unchanged since its last verification" in host.log_entries()[-1]["message"]
    checked = run_cli("boot", "check", host.base(image_id), "--state-dir", host.state)
    assert checked.code == 0 and "unchanged since its last verification" in checked.stdout, checked


def assert_nothing_recorded(host: Host, image_id: str) -> None:
    assert not (host.state / "records" / f"{cache_name(image_id)}.json").exists()
    assert not (host.state / "verified" / f"{cache_name(image_id)}.json").exists()
    base = host.base(image_id)
    if base.exists():  # handed back to nova as it was
        info = base.stat()
        assert info.st_uid == NOBODY, "a refused base must be given back to its owner"
        refused = run_cli("boot", "check", base, "--state-dir", host.state)
        assert refused.code == errors.UnsignedImage.exit_code, refused


# --- adopted, then booted ----------------------------------------------------------------------

def test_raw_image_nova_downloaded_is_adopted_and_boots_on_the_fast_path(host):
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    before = run_cli("boot", "check", base, "--state-dir", host.state)
    assert before.code == errors.UnsignedImage.exit_code, before  # today: refused until adopted
    adopted = adopt(host, image_id, props, "--json")
    assert adopted.code == 0, adopted
    body = adopted.json()
    assert body["format"] == "raw" and body["source_format"] == "raw"
    assert body["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    info = base.stat()
    assert info.st_uid == 0 and info.st_mode & 0o7777 == 0o644  # sealed: nova can no longer write it
    boots_fast(host, image_id)


def test_qcow2_nova_converted_is_adopted_through_its_raw_statement_and_boots(host):
    image, props = signed_image(host, "qcow2")
    assert "imgsign_raw_v1_signature" in json.loads(props.read_text())
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    assert base.read_bytes()[:4] != b"QFI\xfb" and sorted(os.listdir(base.parent)) == [base.name]
    adopted = adopt(host, image_id, props, "--json")
    assert adopted.code == 0, adopted
    assert adopted.json()["format"] == "raw" and adopted.json()["source_format"] == "qcow2"
    record = RecordStore(str(host.state)).get(image_id)
    assert record is not None and record.cached_sha256 == hashlib.sha256(base.read_bytes()).digest()
    boots_fast(host, image_id)


def test_qcow2_kept_as_qcow2_is_adopted_by_its_own_signature(host):
    """``force_raw_images = False``: the base is the signed qcow2 itself."""
    image, props = signed_image(host, "qcow2")
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image, force_raw=False)
    adopted = adopt(host, image_id, props, "--json")
    assert adopted.code == 0, adopted
    assert adopted.json()["format"] == "qcow2" == adopted.json()["source_format"]
    instance, disk = host.instance(image_id)
    disk.unlink()
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", host.base(image_id), "-F", "qcow2", disk)
    result = host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]))
    assert result.returncode == 0, result.stderr


def test_adopting_again_is_a_no_op(host):
    image, props = signed_image(host, "qcow2")
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    first = adopt(host, image_id, props, "--json")
    assert first.code == 0, first
    record_file = host.state / "records" / f"{cache_name(image_id)}.json"
    written = record_file.read_bytes(), record_file.stat().st_mtime_ns
    again = adopt(host, image_id, props, "--json")
    assert again.code == 0 and again.json() == first.json(), again
    assert (record_file.read_bytes(), record_file.stat().st_mtime_ns) == written
    boots_fast(host, image_id)


def test_a_base_nova_downloaded_again_is_adopted_again(host):
    """Nova replaced an adopted base by a new download (its own file, same bytes): the record still
    matches, but the file is nova's again, so adopting seals it again instead of a no-op."""
    image, props = signed_image(host, "qcow2")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    assert adopt(host, image_id, props).code == 0
    with pytest.raises(subprocess.CalledProcessError):  # sealed: nova cannot remove it ...
        as_nova('rm -f "$1"', base)
    release(base)  # ... until root clears the flag (docs: letting Nova's cache manager remove a base)
    as_nova('rm -f "$1"', base)
    nova_download(host, image_id, image)
    again = adopt(host, image_id, props)
    assert again.code == 0, again
    assert base.stat().st_uid == 0
    boots_fast(host, image_id)


def test_the_base_path_names_the_image(host):
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    wrong = run_cli("boot", "adopt", base, "--image-id", str(uuid.uuid4()), "--properties", props,
                    "--cert", cert_of("RSA-PSS"), "--state-dir", host.state)
    assert wrong.code == errors.InputError.exit_code and "is not the base file of image" in wrong.stderr, wrong
    adopted = run_cli("boot", "adopt", base, "--image-id", image_id, "--properties", props,
                      "--cert", cert_of("RSA-PSS"), "--state-dir", host.state)
    assert adopted.code == 0 and "OK: adopted" in adopted.stdout, adopted
    boots_fast(host, image_id)


def test_another_images_properties_document_is_named_not_a_mismatch(host):
    """`openstack image show -f json` output of another image: refused naming both ids (10), not a signature
    mismatch (31) that sends the operator looking for a tampered base."""
    image, props = signed_image(host, "raw")
    image_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    shown = host.tmp / "other-image.json"
    shown.write_text(json.dumps({"id": other, "name": "other", "properties": json.loads(props.read_text())}))
    for target, extra in ((image_id, ()), (base, ("--image-id", image_id))):
        refused = adopt(host, str(target), shown, *extra)
        assert refused.code == errors.InputError.exit_code, refused
        assert f"image {other}'s, not image {image_id}'s" in refused.stderr, refused
    assert_nothing_recorded(host, image_id)


# --- refusals: nothing recorded ---------------------------------------------------------------------

def test_statement_of_another_image_is_refused(host):
    image, props = signed_image(host, "qcow2")
    _, other_props = signed_image(host, "qcow2", pattern="0x66")
    other = json.loads(other_props.read_text())
    pasted = {**json.loads(props.read_text()), **{k: v for k, v in other.items() if k.startswith("imgsign_raw_v1_")}}
    props.write_text(json.dumps(pasted))
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    refused = adopt(host, image_id, props)
    assert refused.code == errors.RawStatementError.exit_code, refused
    assert "belongs to another image" in refused.stderr
    assert_nothing_recorded(host, image_id)


def test_statement_and_signature_of_another_image_are_refused(host):
    """The other image's whole signature: genuine, but not of these bytes."""
    image, _ = signed_image(host, "qcow2")
    _, other_props = signed_image(host, "qcow2", pattern="0x66")
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    refused = adopt(host, image_id, other_props)
    assert refused.code == errors.InvalidSignature.exit_code, refused
    assert "not the raw conversion its raw-digest statement names" in refused.stderr
    assert_nothing_recorded(host, image_id)


def test_converted_qcow2_signed_by_hand_without_statement_is_refused(host):
    """The documented manual procedure (openssl dgst) gives no raw-digest statement."""
    image = make_image(host, "qcow2")
    signature = host.tmp / "img.sig"
    subprocess.run([openssl(), "dgst", "-sha256", "-sign", str(key_of("RSA-PSS")), "-sigopt",
                    "rsa_padding_mode:pss", "-out", str(signature), str(image)], check=True, capture_output=True)
    props = host.tmp / "manual.json"
    props.write_text(json.dumps({
        "img_signature": base64.b64encode(signature.read_bytes()).decode(), "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "RSA-PSS", "img_signature_certificate_uuid": CERT_UUID}))
    assert run_cli("verify", image, "--properties", props, "--cert", cert_of("RSA-PSS")).code == 0
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    refused = adopt(host, image_id, props)
    assert refused.code == errors.InvalidSignature.exit_code, refused
    assert "converted base and no raw-digest statement" in refused.stderr
    assert_nothing_recorded(host, image_id)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_one_byte_changed_in_the_base_before_adoption_is_refused(host, fmt):
    image, props = signed_image(host, fmt)
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    as_nova("printf 'X' | dd of=\"$1\" bs=1 seek=1048576 conv=notrunc status=none", base)
    refused = adopt(host, image_id, props)
    assert refused.code == errors.InvalidSignature.exit_code, refused
    assert_nothing_recorded(host, image_id)


def test_unsigned_image_is_refused(host):
    image = make_image(host, "raw")
    props = host.tmp / "unsigned.json"
    image_id = str(uuid.uuid4())
    props.write_text(json.dumps({"id": image_id, "properties": {"os_distro": "debian"}}))
    nova_download(host, image_id, image)
    refused = adopt(host, image_id, props)
    assert refused.code == errors.UnsignedImage.exit_code and "not signed" in refused.stderr, refused
    assert_nothing_recorded(host, image_id)


def test_untrusted_signer_is_refused(host):
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    keystore = {"IMGSIGN_KEYSTORE": str(host.tmp / "keystore.sqlite3"), "IMGSIGN_CONFIG": "",
                "HOME": str(host.tmp)}
    other_ca = run_cli("cert", "store", cert_of("ECC_SECP384R1"), env=keystore).stdout.strip()
    refused = run_cli("boot", "adopt", image_id, "--properties", props, "--cert", cert_of("RSA-PSS"),
                      "--trusted", other_ca, "--instances-path", host.instances, "--state-dir", host.state,
                      env=keystore)
    assert refused.code == errors.UntrustedCertificate.exit_code, refused
    assert_nothing_recorded(host, image_id)


def test_no_base_file_yet(host):
    _, props = signed_image(host, "raw")
    refused = adopt(host, str(uuid.uuid4()), props)
    assert refused.code == errors.InputError.exit_code and "has no base file" in refused.stderr, refused


# --- the base changed by nova while it is adopted ---------------------------------------------------

def _library_adopt(host: Host, image_id: str, props: Path, *, immutable: bool = True):
    from imgsign.cli._common import load_properties
    from imgsign.compute.adoption import adopt as adopt_base

    return adopt_base(str(host.instances), image_id, load_properties(str(props)),
                      load_certificate(cert_of("RSA-PSS").read_bytes()), RecordStore(str(host.state)),
                      policy=Policy(), immutable=immutable)


def test_writer_holding_the_base_open_is_refused(host):
    """nova opened the base for writing before adoption sealed it: the seal cannot stop that
    descriptor, so adoption refuses; the descriptor's later writes meet no record."""
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    held: list[int] = []
    attacker = Attacker(lambda: held.append(os.open(base, os.O_RDWR)),
                        lambda: os.pwrite(held[0], b"evil", 4096))
    attacker.step()
    with pytest.raises(errors.InputError, match="open for writing or mapped writable"):
        _library_adopt(host, image_id, props)
    attacker.step()
    assert attacker.finish() == 0
    assert_nothing_recorded(host, image_id)


def test_writable_mapping_without_a_descriptor_is_refused(host):
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    maps: list[mmap.mmap] = []

    def map_and_close() -> None:
        fd = os.open(base, os.O_RDWR)
        maps.append(mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        os.close(fd)

    attacker = Attacker(map_and_close, lambda: maps[0].__setitem__(1, 0xFF))
    attacker.step()
    with pytest.raises(errors.InputError, match="open for writing or mapped writable"):
        _library_adopt(host, image_id, props)
    attacker.step()
    assert attacker.finish() == 0
    assert_nothing_recorded(host, image_id)


def test_without_leases_a_shared_mapping_is_still_refused(host, monkeypatch):
    """On a filesystem without leases the /proc maps scan decides."""
    from imgsign.compute import adoption

    monkeypatch.setattr(adoption, "open_for_writing", lambda fd: None)
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    maps: list[mmap.mmap] = []

    def map_and_close() -> None:
        fd = os.open(base, os.O_RDWR)
        maps.append(mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        os.close(fd)

    attacker = Attacker(map_and_close, lambda: None)
    attacker.step()
    with pytest.raises(errors.InputError, match="mapped shared by process"):
        _library_adopt(host, image_id, props)
    attacker.step()
    assert attacker.finish() == 0
    assert_nothing_recorded(host, image_id)
    record = _library_adopt(host, image_id, props)  # once nothing maps it, the fallback adopts it
    assert record.cached_sha256 == hashlib.sha256(base.read_bytes()).digest()
    boots_fast(host, image_id)


@pytest.mark.parametrize("immutable", [True, False], ids=["immutable", "owner-only"])
def test_base_swapped_during_the_read_gets_no_record(host, monkeypatch, immutable):
    """At the read (a deterministic hook point) nova tries to write the sealed file, then renames its
    own bytes over the name: the write is denied; the swap is denied too when the seal is immutable,
    and refused (nothing recorded) when the seal only changed the owner."""
    from imgsign.compute import adoption

    image, props = signed_image(host, "raw")
    evil, _ = signed_image(host, "raw", pattern="0x66")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)

    def attack() -> None:  # in the attacker's process: a failure here fails as_attacker
        try:
            os.open(base, os.O_RDWR)
        except PermissionError:
            pass
        else:
            raise AssertionError("nova opened the sealed base for writing")
        shutil.copyfile(evil, base.parent / ".evil")
        try:
            os.rename(base.parent / ".evil", base)
        except PermissionError:
            if not immutable:
                raise
        else:
            if immutable:
                raise AssertionError("nova renamed its file over the immutable base")

    real = adoption.digests_of

    def digests_during_attack(fd, *methods):
        as_attacker(attack)
        return real(fd, *methods)

    monkeypatch.setattr(adoption, "digests_of", digests_during_attack)
    if immutable:
        record = _library_adopt(host, image_id, props)
        assert base.read_bytes() == image.read_bytes()
        assert record.cached_sha256 == hashlib.sha256(image.read_bytes()).digest()
        return
    with pytest.raises(errors.InputError, match="replaced while it was being adopted"):
        _library_adopt(host, image_id, props, immutable=False)
    assert_nothing_recorded(host, image_id)
    assert base.read_bytes() == evil.read_bytes()


#: The writer runs as nova, who cannot reach root's interpreter; it needs only the standard library.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"

_WRITER = """
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
genuine = open(path, "rb").read(1)
while not os.path.exists(stop):
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        time.sleep(0.0005)
        continue
    try:  # once the base is sealed immutable, even this old descriptor cannot write
        os.pwrite(fd, bytes([genuine[0] ^ int(sys.argv[3])]), 0)
        os.pwrite(fd, genuine, 0)
    except PermissionError:
        pass
    os.close(fd)
"""


@pytest.mark.parametrize("flip", [0, 1], ids=["same-bytes", "flipping-a-byte"])
def test_writer_looping_during_adoption_never_gets_a_record_for_other_bytes(host, flip):
    """A real non-root process rewrites the first byte in a loop (re-opening each time) while
    `boot adopt` runs: refused, or the record is exactly the bytes now in the base (the genuine ones)."""
    image, props = signed_image(host, "raw")
    image_id = str(uuid.uuid4())
    base = nova_download(host, image_id, image)
    stop = host.tmp / "stop"
    writer = subprocess.Popen([SYSTEM_PYTHON, "-c", _WRITER, str(base), str(stop), str(flip)],
                              user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        results = [adopt(host, image_id, props) for _ in range(3)]
    finally:
        stop.touch()
        assert writer.wait(timeout=60) == 0
    for result in results:
        assert result.code in (0, errors.InputError.exit_code, errors.InvalidSignature.exit_code), result
    record = RecordStore(str(host.state)).get(image_id)
    if record is None:
        assert all(r.code != 0 for r in results)
        return
    assert record.cached_sha256 == hashlib.sha256(base.read_bytes()).digest() == hashlib.sha256(
        image.read_bytes()).digest(), "a record for bytes that were not verified"
    assert base.stat().st_uid == 0
    checked = run_cli("boot", "check", base, "--state-dir", host.state)
    assert checked.code == 0, checked


@pytest.mark.parametrize("where", ["document", "argument"])
def test_image_id_without_utf8_form_is_an_input_error(host, where):
    """A JSON ``\\ud800`` escape (or a non-UTF-8 argument) gives an id Nova cannot hash: 10, not a crash."""
    _, props = signed_image(host, "raw")
    document = {**json.loads(props.read_text()), "id": "\ud800-image"}
    props.write_text(json.dumps(document))  # json.dumps writes the lone surrogate as an escape
    target = str(host.instances / "_base" / ("0" * 40)) if where == "document" else os.fsdecode(b"\xed\xa0\x80")
    refused = adopt(host, target, props)
    assert refused.code == errors.InputError.exit_code and "is not valid UTF-8" in refused.stderr, refused
