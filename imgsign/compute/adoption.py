"""Adoption: a trust record for a base file Nova downloaded into ``_base`` by itself.

Nova writes ``_base/<sha1(image_id)>`` either as the downloaded bytes (a raw image, or any image
with ``force_raw_images = False``) or as the raw conversion of a qcow2 image (the signed qcow2 is
deleted).  :func:`adopt` establishes, once, the record :mod:`imgsign.compute.image_cache` would
have written, from the image's properties and the signing certificate, so later boots are the
O(1) check of :mod:`imgsign.compute.boot`:

* first, the base is inspected as Nova inspects a download and a base
  (:mod:`imgsign.compute.image_format`: oslo.utils' ``format_inspector`` detection and safety
  checks, agreement with Glance's ``disk_format`` when it is known, ``qemu-img`` must agree);
  anything Nova would refuse is refused, and so is any format qemu does not read as raw or qcow2;
* the base is qcow2: it is the signed bytes themselves (``force_raw_images = False``) and
  ``img_signature`` is verified over it;
* the base is raw and the properties carry a raw-digest statement (only qcow2 images get one, so
  the base can only be the conversion): the statement is verified
  (:func:`~imgsign.raw_statement.verify_raw_statement`: its signature, and ``img_signature`` over
  the image digest it names), then the base's size and SHA-256 must be the statement's;
* the base is raw without a statement: ``img_signature`` is verified over it (a raw image); if it
  does not verify, the refusal says it was changed or is a converted base without a statement;
* the same, with the signed ``original`` given (adoption by conversion): the original is verified
  and converted again and must equal the base
  (:func:`~imgsign.compute.conversion_adoption.check_conversion`).

Threat model (doc/source/security/threat-model.md): ``nova`` can write ``_base`` and may change the base while
it is adopted.  Everything uses ONE descriptor (``O_NOFOLLOW``, a regular file with one link).
Before a byte is read the file is sealed through it: owned by imgsign's user, mode 0644 and
immutable where the filesystem can (:mod:`imgsign.compute.protection`), so no other user can open
it for writing, or rename or replace it, any more; then the kernel is asked whether anyone still has it
open for writing or mapped writable (a read lease is refused then,
:func:`~imgsign.compute.verified_cache.open_for_writing`): if so, refused.  Without leases, a
shared mapping (``/proc/*/maps``) is refused and the read starts only once the clock has moved
past the seal's ctime, so a write through an old descriptor moves ctime.  The file's identity
must not change during the read, and ``_base/<name>`` must still be that file afterwards.  On any
refusal the flag, owner and mode are given back and nothing is recorded.  After success the
verified-digest cache is primed, so the first boot does not read the file again.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cryptography import x509

from imgsign.algorithms import HashMethod
from imgsign.certificates import certificate_public_key
from imgsign.chain import TrustAnchors
from imgsign.compute import image_format, protection
from imgsign.compute.boot import BootPolicy, check_base
from imgsign.compute.conversion_adoption import Original, check_conversion
from imgsign.compute.host_signed import Found
from imgsign.compute.image_cache import (
    base_dir,
    bind_fetched,
    is_named,
    judge_signer,
    new_record,
    open_base_dir,
)
from imgsign.compute.trust_record import RecordStore, TrustRecord, cache_name
from imgsign.compute.verified_cache import (
    FileIdentity,
    VerifiedCache,
    open_for_writing,
    shared_mappers,
    unsealed_reason,
)
from imgsign.errors import InputError, InvalidSignature, TrustRecordError, UnsignedImage
from imgsign.policy import Policy
from imgsign.properties import NAMES, SignatureProperties
from imgsign.raw_statement import RawStatement, parse_raw_statement, verify_raw_statement
from imgsign.stream import digests_of
from imgsign.verifier import Verifier

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: Linux's CLOCK_REALTIME_COARSE (the clock file timestamps come from; the time module lacks the name)
_COARSE_CLOCK = 5


def adopt(
    instances_path: str,
    image_id: str,
    properties: Mapping[str, object],
    certificate: x509.Certificate,
    records: RecordStore,
    *,
    anchors: TrustAnchors | None = None,
    trusted_ids: Sequence[str] = (),
    certificate_id: str | None = None,
    policy: Policy,
    immutable: bool,
    original: Original | None = None,
    image_facts: Mapping[str, str] | None = None,
    tsa_roots: Sequence[x509.Certificate] = (),
    disk_format: str | None = None,
    ocsp: str = "strict",
    ocsp_timeout: float = 10.0,
    provenance: Found | None = None,
) -> TrustRecord:
    """Verify the base file Nova made for ``image_id`` and record it; raise (recording nothing) on failure.

    ``properties``: the image's properties (``img_signature*`` and, for a converted qcow2, the
    ``imgsign_raw_v1_*`` statement); ``anchors``, ``trusted_ids``, ``certificate_id``: as for
    :func:`~imgsign.compute.image_cache.add_to_cache`; ``policy``: the certificate and key checks;
    ``immutable``: seal the base immutable (else only root's and 0644: ``--seal``, ``[boot] seal_bases``);
    ``original``: the signed qcow2, used (and only then read) when the base is raw and has no
    statement: adoption by conversion.  ``disk_format``: Glance's (default: ``properties``'s
    ``disk_format``, as in Glance's image document), checked against the base as Nova does.  ``tsa_roots``, ``ocsp``,
    ``ocsp_timeout``: the image's timestamp and stapled OCSP response count as
    :func:`~imgsign.compute.image_cache.judge_signer` says (what was checked is recorded).  A base
    whose current record is valid is left alone and its
    record returned.  The base's lock (:mod:`imgsign.compute.base_lock`) is held throughout.
    ``provenance``: a host-signed image's statement as :func:`imgsign.compute.host_signed.fetch` found it,
    recorded with the base (and its base stores' id bindings sealed).
    """
    signed = signature_properties(image_id, properties)
    if disk_format is None:
        disk_format = image_format.disk_format_of(properties)

    records.prepare()  # an insecure state directory stops us before anything is touched
    with records.locks.hold(cache_name(image_id)):
        return _adopt_locked(instances_path, image_id, properties, signed, certificate, records, anchors,
                             trusted_ids, certificate_id, policy, immutable, original, disk_format, image_facts,
                             {"tsa_roots": tsa_roots, "ocsp": ocsp, "ocsp_timeout": ocsp_timeout},
                             provenance=provenance)


def _adopt_locked(instances_path: str, image_id: str, properties: Mapping[str, object], signed: SignatureProperties,
                  certificate: x509.Certificate, records: RecordStore, anchors: TrustAnchors | None,
                  trusted_ids: Sequence[str], certificate_id: str | None, policy: Policy, immutable: bool,
                  original: Original | None, disk_format: str | None,
                  image_facts: Mapping[str, str] | None = None,
                  judging: Mapping[str, Any] | None = None, *, provenance: Found | None = None) -> TrustRecord:
    """:func:`adopt`, its base's lock held (``judging``: :func:`judge_signer`'s timestamp and OCSP settings)."""
    name = cache_name(image_id)
    cache = VerifiedCache(records.state_dir, owner=records.owner)
    existing = current_record(instances_path, image_id, records, immutable=immutable, cache=cache)
    if existing is not None:
        return existing
    # Everything that needs no data first: timestamp, certificate, chain and revocation, key, statement.
    judged = judge_signer(certificate, signed.signature, anchors, trusted_ids, policy, document=properties,
                          **(judging or {}))
    policy, trusted = judged.policy, judged.trusted
    verifier = Verifier.for_certificate(signed, certificate, policy=policy)
    statement = parse_raw_statement(properties)
    if statement is not None:
        statement = verify_raw_statement(properties, certificate_public_key(certificate), policy=policy)
    with open_base_dir(instances_path, create=False) as dir_fd, \
            _sealed(dir_fd, name, image_id, records, immutable) as seal:
        fd, identity = seal.fd, seal.identity
        base_format = image_format.inspect_image(fd, f"base file of image {image_id}", disk_format).format
        if base_format == "raw" and statement is not None:
            sha256, signed_digest, source_format = _check_statement(fd, identity, statement, image_id)
        elif base_format == "raw" and original is not None:
            sha256, signed_digest, source_format = check_conversion(dir_fd, fd, identity, original, verifier,
                                                                    image_id)
        else:
            sha256, signed_digest = _check_signature(fd, verifier, signed.hash_method, image_id, base_format)
            source_format = base_format
        _check_still_named(dir_fd, fd, name, image_id)
        if FileIdentity.of(fd) != identity:
            raise InvalidSignature(f"base file of image {image_id} changed while it was being adopted; "
                                   "nothing was recorded")
        bind_fetched(records, certificate, certificate_id, anchors, trusted_ids)
        for base_store_id, der in provenance.fetched if provenance is not None else ():
            records.anchors.bind(base_store_id, der)
        cache.forget(name)
        record = new_record(image_id, signed, certificate, signed_digest, certificate_id, trusted,
                            cached_format=base_format, cached_sha256=sha256, cached_size=identity.size,
                            source_format=source_format, image_facts=image_facts, checks=judged.checks,
                            provenance=None if provenance is None else provenance.record)
        records.put(record)
        rememberable = seal.rememberable
    if rememberable:  # the fast-path conditions of imgsign.compute.verified_cache hold
        cache.store(name, identity, sha256, record.digest())
    return record


def describe_adopted(image_id: str, record: TrustRecord) -> str:
    """``image <id>, <format>[, converted from <format>]`` for messages."""
    converted = record.source_format != record.cached_format
    return f"image {image_id}, {record.cached_format}{', converted from ' + record.source_format if converted else ''}"


def signature_properties(image_id: str, properties: Mapping[str, object]) -> SignatureProperties:
    """The ``img_signature*`` properties; :class:`UnsignedImage` when there are none at all."""
    if not any(name in properties for name in NAMES):
        raise UnsignedImage(f"image {image_id} has no img_signature properties: it is not signed, nothing to adopt")
    return SignatureProperties.from_mapping(properties)


def current_record(instances_path: str, image_id: str, records: RecordStore, *, immutable: bool,
                   cache: VerifiedCache | None = None) -> TrustRecord | None:
    """The image's record if its base is sealed and exactly what the record describes, else None
    (a damaged, outdated or stale record, or a base others could write, is to be adopted again).

    ``immutable``: the seal the caller acts under (``--seal``, ``[boot] seal_bases``): the check seals
    the base that way, never by a default of its own.  Holds the base's lock while it looks."""
    name = cache_name(image_id)
    path = os.path.join(base_dir(instances_path), name)
    if cache is None:
        cache = VerifiedCache(records.state_dir, owner=records.owner)
    with records.locks.hold(name):
        try:
            record = records.get(image_id)
            info = os.stat(path, follow_symlinks=False)
        except TrustRecordError:
            return None
        except OSError:
            return None  # no base: adoption says so
        if record is None or unsealed_reason(info, records.owner) is not None:
            return None
        try:
            check_base(path, record, BootPolicy(immutable_bases=immutable), cache, records)
        except (InvalidSignature, TrustRecordError):
            return None
    return record


class _Seal:
    """The sealed base: its descriptor, identity after sealing, and whether it may be remembered."""

    def __init__(self, fd: int, identity: FileIdentity, rememberable: bool) -> None:
        self.fd = fd
        self.identity = identity
        self.rememberable = rememberable


@contextlib.contextmanager
def _sealed(dir_fd: int, name: str, image_id: str, records: RecordStore, immutable: bool) -> Iterator[_Seal]:
    """Open ``_base/<name>``, seal it through the descriptor (``records.owner``'s, 0644, immutable where
    the filesystem can: :func:`imgsign.compute.protection.seal`), and make sure nobody can still write
    it.  On a failure inside, the flag, owner and mode are given back only when this run changed them
    and no trust record names the base now (checked under the base's lock, which the caller holds):
    a seal someone else made, or that a record relies on, is never undone."""
    owner = records.owner
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise InputError(f"image {image_id} has no base file _base/{name}: Nova has not downloaded it") from None
    except OSError as exc:
        raise InputError(f"cannot open base file _base/{name} of image {image_id}: {exc.strerror}") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise InputError(f"base file _base/{name} of image {image_id} is not a regular file")
        if before.st_nlink != 1:
            raise InputError(f"base file _base/{name} of image {image_id} has {before.st_nlink} links; "
                             "a base Nova made has one")
        was = protection.seal_state(fd)
        try:
            protection.seal(fd, owner, immutable=immutable)
        except OSError as exc:
            raise InputError(f"cannot take ownership of base file _base/{name}: {exc.strerror}") from None
        try:
            yield _Seal(fd, *_nobody_writes(fd, name, image_id))
        except BaseException:
            if protection.seal_state(fd) != was and not records.recorded(name):
                protection.unseal(fd, before)
            raise
    finally:
        os.close(fd)


def _nobody_writes(fd: int, name: str, image_id: str) -> tuple[FileIdentity, bool]:
    """Refuse when someone can still write the sealed file; its identity, and whether it may be remembered."""
    writing = open_for_writing(fd)
    if writing:
        raise InputError(f"base file _base/{name} of image {image_id} is open for writing or mapped writable by "
                         "another process: adopt it once nothing writes it")
    info = os.fstat(fd)
    if writing is None:  # no leases here: the /proc maps scan, and a write must move ctime from now on
        mappers = shared_mappers(info)
        if mappers:
            raise InputError(f"base file _base/{name} of image {image_id} is mapped shared by process "
                             f"{', '.join(map(str, mappers))}: adopt it once nothing maps it")
        while time.clock_gettime_ns(_COARSE_CLOCK) <= info.st_ctime_ns:
            time.sleep(0.001)
        return FileIdentity.from_stat(info), mappers is not None
    return FileIdentity.from_stat(info), True


def _check_signature(fd: int, verifier: Verifier, method: HashMethod, image_id: str,
                     base_format: str) -> tuple[bytes, bytes]:
    """One read: ``img_signature`` over the base, and its SHA-256; (sha256, signed digest)."""
    methods = (HashMethod.SHA256,) if method is HashMethod.SHA256 else (HashMethod.SHA256, method)
    try:
        digests, _ = digests_of(fd, *methods)
    except OSError as exc:
        raise InputError(f"cannot read the base file of image {image_id}: {exc.strerror}") from None
    try:
        verifier.verify_precomputed(digests[-1])
    except InvalidSignature:
        converted = ("" if base_format != "raw" else
                     ", or it is a converted base and no raw-digest statement (imgsign_raw_v1_* properties) "
                     "says what the signed qcow2 converts to: sign the image with `imgsign sign`, cache it "
                     "with `imgsign boot cache`, or adopt it with --by-conversion from its signed original")
        raise InvalidSignature(f"the base file of image {image_id} does not match img_signature: it was changed"
                               f"{converted}") from None
    return digests[0], verifier.verified_digest


def _check_statement(fd: int, identity: FileIdentity, statement: RawStatement,
                     image_id: str) -> tuple[bytes, bytes, str]:
    """One read: the base's size and SHA-256 against the verified statement; (sha256, signed digest, format)."""
    mismatch = (f"the base file of image {image_id} is not the raw conversion its raw-digest statement names "
                f"({statement.raw_size} bytes, SHA-256 {statement.raw_sha256.hex()})")
    if identity.size != statement.raw_size:
        raise InvalidSignature(f"{mismatch}: it is {identity.size} bytes")
    try:
        (sha256,), size = digests_of(fd, HashMethod.SHA256)
    except OSError as exc:
        raise InputError(f"cannot read the base file of image {image_id}: {exc.strerror}") from None
    if size != statement.raw_size or sha256 != statement.raw_sha256:
        raise InvalidSignature(f"{mismatch}: its SHA-256 is {sha256.hex()}")
    return sha256, statement.image_digest, "qcow2"


def _check_still_named(dir_fd: int, fd: int, name: str, image_id: str) -> None:
    """``_base/<name>`` must still be the file we verified."""
    try:
        named = is_named(dir_fd, fd, name)
    except OSError as exc:
        raise InputError(f"base file _base/{name} of image {image_id} vanished while it was being adopted: "
                         f"{exc.strerror}") from None
    if not named:
        raise InputError(f"base file _base/{name} of image {image_id} was replaced while it was being adopted; "
                         "nothing was recorded")
