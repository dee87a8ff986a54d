"""The compute-side library: add_to_cache from a stream, verify_for_boot decisions, sealed state."""

from __future__ import annotations

import os

import pytest

from imgsign import errors, load_certificate, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.compute.boot import BootPolicy, Mode, verify_for_boot
from imgsign.compute.image_cache import add_to_cache
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import DEFAULT_MAX_AGE, FileIdentity, VerifiedCache
from imgsign.policy import Policy
from tests.conftest import CERT_UUID, cert_of, key_of

DATA = os.urandom(5 * 1024 * 1024 + 3)


def chunks(data: bytes, size: int = 1 << 20):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture
def signed():
    props = sign([DATA], load_private_key(key_of("ECC_SECP521R1").read_bytes()), CERT_UUID, HashMethod.SHA512)
    return props, load_certificate(cert_of("ECC_SECP521R1").read_bytes())


def test_stream_into_cache_then_boot(tmp_path, signed):
    props, cert = signed
    records = RecordStore(str(tmp_path / "state"))
    record = add_to_cache(chunks(DATA), "img-1", props, cert, records, instances_path=str(tmp_path),
                          policy=Policy(), immutable=True)
    base = tmp_path / "_base" / cache_name("img-1")
    assert base.read_bytes() == DATA and record.cached_format == record.source_format == "raw"
    cache = VerifiedCache(records.state_dir)
    first = verify_for_boot(str(base), records, BootPolicy(immutable_bases=True), cache)  # sealed, primed
    assert first.allowed and first.code == 0 and "unchanged" in first.message
    cache.forget(cache_name("img-1"))
    second = verify_for_boot(str(base), records, BootPolicy(immutable_bases=True), cache)
    assert second.allowed and "in full" in second.message
    third = verify_for_boot(str(base), records, BootPolicy(immutable_bases=True), cache)
    assert third.allowed and "unchanged" in third.message


def test_stream_that_does_not_verify_leaves_nothing(tmp_path, signed):
    props, cert = signed
    records = RecordStore(str(tmp_path / "state"))
    with pytest.raises(errors.InvalidSignature):
        add_to_cache(chunks(DATA[:-1]), "img-1", props, cert, records, instances_path=str(tmp_path),
                     policy=Policy(), immutable=True)
    assert list((tmp_path / "_base").iterdir()) == []
    assert records.get("img-1") is None


def test_warn_mode_allows_with_the_reason(tmp_path):
    records = RecordStore(str(tmp_path / "state"))
    base = tmp_path / "unknown"
    base.write_bytes(b"x")
    decision = verify_for_boot(str(base), records, BootPolicy(mode=Mode.WARN, immutable_bases=True))
    assert decision.allowed and decision.warning and decision.code == errors.UnsignedImage.exit_code
    refused = verify_for_boot(str(base), records, BootPolicy(immutable_bases=True))
    assert not refused.allowed and refused.reason == "unsigned-image"


def test_record_of_another_image_is_refused(tmp_path, signed):
    props, cert = signed
    records = RecordStore(str(tmp_path / "state"))
    add_to_cache(chunks(DATA), "img-1", props, cert, records, instances_path=str(tmp_path),
                 policy=Policy(), immutable=True)
    sealed = tmp_path / "state" / "records"
    os.rename(sealed / f"{cache_name('img-1')}.json", sealed / f"{cache_name('img-2')}.json")
    with pytest.raises(errors.TrustRecordError):
        records.get("img-2")


def test_cache_entry_is_bound_to_file_identity(tmp_path):
    cache = VerifiedCache(str(tmp_path / "state"))
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    identity = FileIdentity.of(str(path))
    cache.store("f", identity, b"\x01" * 32, "record-a")
    assert cache.lookup("f", identity, DEFAULT_MAX_AGE, "record-a") == b"\x01" * 32
    assert cache.lookup("f", identity, DEFAULT_MAX_AGE, "record-b") is None  # another record: read again
    os.chmod(path, 0o600)  # ctime moves
    assert cache.lookup("f", FileIdentity.of(str(path)), DEFAULT_MAX_AGE, "record-a") is None


def test_record_binds_the_anchors_the_chain_reaches_each_on_its_own(tmp_path):
    """With root and intermediate trusted, both are recorded (the intermediate alone suffices, the root
    with the intermediate as a helper); an unrelated trusted root is not; ids become sealed bindings."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.chain import TrustAnchors
    from imgsign.compute.trust_record import fingerprint
    from tests.conftest import pki

    root, intermediate, unrelated = (load_certificate(pki(f"{n}.pem").read_bytes())
                                     for n in ("root-ca", "intermediate-ca", "untrusted-root-ca"))
    cert = load_certificate(cert_of("RSA-PSS").read_bytes())
    props = sign([DATA], load_private_key(key_of("RSA-PSS").read_bytes()), CERT_UUID, HashMethod.SHA256)
    records = RecordStore(str(tmp_path / "state"))
    record = add_to_cache(chunks(DATA), "img-1", props, cert, records, instances_path=str(tmp_path),
                          policy=Policy(), immutable=True, anchors=TrustAnchors([root, intermediate, unrelated]),
                          trusted_ids=("r", "i", "u"),
                          certificate_id=CERT_UUID)
    fp = {c: fingerprint(c.public_bytes(Encoding.DER)) for c in (root, intermediate, unrelated, cert)}
    assert set(record.anchor_fingerprints) == {fp[root], fp[intermediate]}
    assert [records.anchors.fingerprint(i) for i in ("r", "i", "u", CERT_UUID, "never")] == [
        fp[root], fp[intermediate], fp[unrelated], fp[cert], None]
    base = str(tmp_path / "_base" / cache_name("img-1"))
    for trusted, allowed in ((("r",), True), (("i",), True), ((CERT_UUID,), True), (("u",), False),
                             (("never",), False)):
        decision = verify_for_boot(base, records, BootPolicy(trusted_certificate_ids=trusted, immutable_bases=True))
        assert decision.allowed is allowed, (trusted, decision)


def test_shared_mappers_reads_proc_maps(tmp_path):
    """A fake /proc: shared mappings of the file count (any permissions), private ones do not; an
    unreadable process not running as root makes the answer unknown."""
    from imgsign.compute.verified_cache import shared_mappers

    target = tmp_path / "f"
    target.write_bytes(b"x")
    info = target.stat()
    dev = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    proc = tmp_path / "proc"
    for pid, perms in (("10", "rw-p"), ("11", "r--s"), ("12", "rw-s")):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "maps").write_text(f"7f00-7f01 {perms} 00000000 {dev} {info.st_ino}  {target}\n"
                                         f"7f02-7f03 rw-s 00000000 {dev} {info.st_ino + 1}  /other\n")
    (proc / "self").mkdir()
    assert sorted(shared_mappers(info, str(proc)) or []) == [11, 12]
    (proc / "13" / "maps").mkdir(parents=True)  # unreadable as a file
    (proc / "13" / "status").write_text("Name:\tx\nUid:\t0\t0\t0\t0\n")
    assert sorted(shared_mappers(info, str(proc))) == [11, 12]  # root's: trusted
    (proc / "13" / "status").write_text("Name:\tx\nUid:\t65534\t65534\t65534\t65534\n")
    assert shared_mappers(info, str(proc)) is None
