"""Compute side: may an instance boot from this cached base file?

:func:`verify_for_boot` checks a base file in Nova's image cache against the
trust record written when the image was verified at download
(:mod:`imgsign.compute.image_cache`), offline:

1. there is a record for the file (else: unsigned, or never verified);
2. the signer is trusted: when ``trusted_certificate_ids`` is set, each id is
   turned into the certificate it names through the sealed id -> fingerprint
   bindings ``boot cache`` wrote when it fetched that id from the key manager
   (:class:`~imgsign.compute.trust_record.AnchorStore`), and the recorded
   signer certificate, or a trusted certificate its chain was validated
   against, must be one of those certificates (by fingerprint; the
   ``img_signature_certificate_uuid`` label is never trusted); when the server being
   booted has its own ``trusted_image_certificates`` in Nova
   (:mod:`imgsign.compute.server_trust`), the signer (or such a certificate) must
   also be bound to one of the server's ids: the server's list only narrows what
   the host allows, never widens it;
3. the record's signed digest carries a valid signature of the recorded
   certificate (a record cannot be made up without the signer);
4. the file is the one that was verified: same size and SHA-256 as recorded
   (and, when it was not converted, its digest is the signed digest itself).
   Steps 3 and 4 are skipped together only on the fast path: under the
   conditions of :mod:`imgsign.compute.verified_cache`, a sealed entry says this
   file state and this very record (by digest) passed both in a full check;
   otherwise the record's signature is verified and the whole file is read.
   (So a warm boot never loads an X.509 or signature stack.)
   With a verified-digest cache (the hook, running as root) the file is first
   sealed through its descriptor (:func:`imgsign.compute.protection.seal`:
   root's, 0644, immutable where the filesystem can), and refused if another
   process still has it open for writing, so what was read is what qemu reads.

Without a trust policy, an image a compute host signed (``imgsign gateway``: a certificate with the URI
SAN ``openstack://<cloud>/nova-compute/<host>``) is refused: a host's signature vouches only under a
policy's ``hostSigned`` rule (:mod:`imgsign.compute.boot_policy`).  Spotting one costs a byte search of
the recorded certificate; only a certificate that may have such a SAN is parsed.

Under ``enforce`` any failure refuses the boot; under ``warn`` it is allowed and
the reason is reported as a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import stat

from imgsign import errors
from imgsign.algorithms import HashMethod
from imgsign.compute import protection
from imgsign.compute.trust_record import RecordStore, TrustRecord, fingerprint, may_be_host_certificate
from imgsign.compute.verified_cache import (
    DEFAULT_MAX_AGE,
    FileIdentity,
    VerifiedCache,
    open_for_writing,
    shared_mappers,
    unsealed_reason,
)
from imgsign.errors import (
    ImgsignError,
    InsecureState,
    InvalidSignature,
    UnsafeImage,
    UnsignedImage,
    UntrustedCertificate,
)
from imgsign.policy import Policy

#: ``typing.TYPE_CHECKING`` without importing typing, which every hook call would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from imgsign.trust_policy import TrustPolicy


class Mode(str, enum.Enum):
    ENFORCE = "enforce"
    WARN = "warn"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BootPolicy:
    """``mode``: refuse (enforce) or only report (warn); ``trusted_certificate_ids``: when not
    empty, the signer must be one of them or chain to one of them (Nova's
    ``default_trusted_certificate_ids``); ``max_fast_path_age``: seconds after a full read during
    which an unchanged, sealed base may be accepted without reading it again; ``immutable_bases``:
    seal verified bases immutable (``[boot] seal_bases = immutable``) rather than only root's and 0644
    (``owner``).  The seal has no default here: whoever builds a policy says which one it acts under,
    so no step can fall back to ``immutable`` behind an operator's ``owner``.
    ``server_certificate_ids``: the booting server's own ``trusted_image_certificates`` from Nova
    (empty: the server has none), checked on top of ``trusted_certificate_ids``; ``server_id`` names
    that server in messages."""

    mode: Mode = Mode.ENFORCE
    trusted_certificate_ids: tuple[str, ...] = ()
    server_certificate_ids: tuple[str, ...] = ()
    server_id: str | None = None
    max_fast_path_age: float = DEFAULT_MAX_AGE
    immutable_bases: bool
    #: ``[boot] policy_file``: a trust policy deciding the signer instead of ``trusted_certificate_ids``
    #: (:mod:`imgsign.compute.boot_policy`), its certificate files relative to ``trust_dir``.
    trust: TrustPolicy | None = None
    trust_dir: str = "/"


@dataclasses.dataclass(frozen=True)
class BootDecision:
    """The answer for one base file: ``code`` is 0 or the failure's exit code."""

    allowed: bool
    code: int
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return self.allowed and self.code != 0


#: Verifying a record's signature must not depend on the signer certificate still being valid
#: today: the signature was checked against a valid certificate when the image was downloaded.
_RECORD_POLICY = Policy(ignore_certificate_dates=True, allow_weak_keys=True)


def check_signer(record: TrustRecord, records: RecordStore, policy: BootPolicy,
                 booting_project: str | None = None) -> str | None:
    """Raise unless the record's signer certificate, or a trusted certificate its chain was validated
    against, is one of the certificates the policy's trusted ids are bound to (under a trust policy:
    unless the rule that applies trusts it); and, when the server has its own trusted certificate ids, one
    of the certificates those are bound to as well: the server's list narrows whatever the host's trust
    (ids or policy) allows.  Returns what the policy's rule only logs, if anything."""
    logged = None
    if policy.trust is not None:
        from imgsign.compute.boot_policy import check_record

        logged = check_record(record, records, policy.trust, policy.trust_dir, booting_project)
    elif policy.trusted_certificate_ids and not _bound_to_any(record, records, policy.trusted_certificate_ids):
        raise UntrustedCertificate(
            f"image {record.image_id} is signed by a certificate that is not among the trusted certificate ids "
            f"({', '.join(policy.trusted_certificate_ids)}) and was not validated against any of them at download "
            f"(trust is decided on the certificate these ids were fetched as, not on the claimed id "
            f"{record.properties.certificate_uuid}; the signing certificate was {_fetched(record)})")
    if policy.server_certificate_ids and not _bound_to_any(record, records, policy.server_certificate_ids):
        unbound = [i for i in policy.server_certificate_ids if records.anchors.fingerprint(i) is None]
        never = (f"; never fetched from the key manager on this host, so naming no certificate here: "
                 f"{', '.join(unbound)}" if unbound else "")
        raise UntrustedCertificate(
            f"image {record.image_id} is signed by a certificate that is not among the trusted image certificates "
            f"of server {policy.server_id or '?'} in Nova ({', '.join(policy.server_certificate_ids)}{never}) and "
            f"was not validated against any of them at download (the server's own list narrows the host's; the "
            f"signing certificate was {_fetched(record)})")
    return logged


def _bound_to_any(record: TrustRecord, records: RecordStore, ids: tuple[str, ...]) -> bool:
    """Is the signer, or an anchor its chain was validated against, the certificate one of ``ids`` is
    bound to (by fingerprint)?"""
    trusted = {fp for i in ids if (fp := records.anchors.fingerprint(i)) is not None}
    return fingerprint(record.certificate_der) in trusted or bool(trusted & set(record.anchor_fingerprints))


def refuse_host_signer(record: TrustRecord) -> None:
    """Without a trust policy, refuse an image a compute host signed (``imgsign gateway``; its certificate's URI
    SAN ``openstack://<cloud>/nova-compute/<host>``): a host's signature vouches only under a ``hostSigned`` rule,
    which checks that the booting project made the image (:mod:`imgsign.compute.boot_policy`)."""
    from imgsign.certificates import load_certificate
    from imgsign.trust_evidence import signer_identity
    from imgsign.trust_policy import is_host_certificate

    signer = signer_identity(load_certificate(record.certificate_der))
    if is_host_certificate(signer):
        raise errors.PolicyRefused(
            f"image {record.image_id} is signed by a compute host ({signer.subject}), and a host's signature vouches "
            "only under a hostSigned rule of a trust policy ([boot] policy_file), which checks that the project "
            "booting it made it")


def _fetched(record: TrustRecord) -> str:
    return (f"fetched from the key manager as {record.certificate_id}" if record.certificate_id
            else "given as a file, not fetched from the key manager under any id")


def check_base(path: str, record: TrustRecord | None, policy: BootPolicy,
               cache: VerifiedCache | None = None, records: RecordStore | None = None,
               booting_project: str | None = None) -> str:
    """Raise unless ``path`` is exactly the verified file of ``record``; returns how it was checked.

    ``records`` (for the trusted-certificate bindings) is required when the policy names trusted
    certificate ids.
    """
    if record is None:
        raise UnsignedImage(f"base file {path} has no trust record: the image was not verified when it was "
                            "downloaded, or is not signed")
    logged = None
    if policy.trust is None and may_be_host_certificate(record.certificate_der):
        refuse_host_signer(record)
    if policy.trusted_certificate_ids or policy.server_certificate_ids or policy.trust is not None:
        if records is None:
            raise TypeError("check_base needs the RecordStore to check trusted certificate ids")
        logged = check_signer(record, records, policy, booting_project)
    how = _check_file(path, record, policy, cache)
    return how if logged is None else f"{how}; {logged}"


def _check_file(path: str, record: TrustRecord, policy: BootPolicy, cache: VerifiedCache | None) -> str:

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise errors.InputError(f"cannot open base file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise errors.InputError(f"base file {path} is not a regular file")
        if info.st_size != record.cached_size:
            raise InvalidSignature(f"base file {path} is {info.st_size} bytes, the verified one was "
                                   f"{record.cached_size}: it changed since image {record.image_id} was verified")
        if cache is None:
            return _check_content(handle.fileno(), path, info, record, policy, None)
        sealed = _seal_for_boot(handle.fileno(), path, info, cache.owner, policy)
        try:
            return _check_content(handle.fileno(), path, sealed, record, policy, cache)
        except BaseException:
            # Refused: give the file back as it was, for Nova to clean up, only if this run sealed it.  The
            # caller holds the base's lock (verify_for_boot, adoption), so no other run has built on the seal.
            if sealed is not info:
                protection.unseal(handle.fileno(), info)
            raise


def _seal_for_boot(fd: int, path: str, info: os.stat_result, owner: int, policy: BootPolicy) -> os.stat_result:
    """Seal the base before it is read (unless it already is); its state after sealing."""
    if protection.is_sealed(fd, owner) or (not policy.immutable_bases and unsealed_reason(info, owner) is None):
        return info
    try:
        protection.seal(fd, owner, immutable=policy.immutable_bases)
    except OSError as exc:
        raise InsecureState(f"cannot seal base file {path} (owner uid {owner}, mode 0644): {exc.strerror}") from None
    if open_for_writing(fd):
        protection.unseal(fd, info)
        raise UnsafeImage(f"base file {path} is open for writing or mapped writable by another process: it could "
                          "change after this check")
    return os.fstat(fd)


def check_record_signature(record: TrustRecord) -> None:
    """Raise :class:`~imgsign.errors.InvalidSignature` unless the record's signed digest carries a
    valid signature of its certificate (the signing stack loads here, not for a warm boot)."""
    from imgsign.certificates import certificate_public_key, load_certificate
    from imgsign.verifier import verify_digest

    key = certificate_public_key(load_certificate(record.certificate_der))
    verify_digest(record.properties, key, record.signed_digest, policy=_RECORD_POLICY)


def _check_content(fd: int, path: str, info: os.stat_result, record: TrustRecord, policy: BootPolicy,
                   cache: VerifiedCache | None) -> str:
    """The file behind ``fd`` must be the verified one of a record with a valid signature (size
    checked); returns how it was checked."""
    name = os.path.basename(path)
    identity = FileIdentity.from_stat(info)
    unsealed = unsealed_reason(info, cache.owner) if cache is not None else None
    record_digest = record.digest()
    if cache is not None and unsealed is None and \
            cache.lookup(name, identity, policy.max_fast_path_age, record_digest) == record.cached_sha256:
        return "unchanged since its last verification"
    check_record_signature(record)
    if cache is not None and unsealed is None:  # before the read: see imgsign.compute.verified_cache
        mappers = shared_mappers(info)
        if mappers is None:
            unsealed = "the memory mappings of every process could not be read"
        elif mappers:
            unsealed = f"mapped shared by process {', '.join(map(str, mappers))}"
    converted = record.cached_format != record.source_format
    # Not converted: the file is the signed bytes, so its digest must be the signed digest too.
    methods = [HashMethod.SHA256]
    if not converted and record.properties.hash_method is not HashMethod.SHA256:
        methods.append(record.properties.hash_method)
    from imgsign.stream import digests_of

    try:
        digests, _ = digests_of(fd, *methods)
    except OSError as exc:
        raise errors.InputError(f"cannot read base file {path}: {exc.strerror}") from None
    after = FileIdentity.of(fd)
    sha256 = digests[0]
    signed_digest = None if converted else digests[-1]
    if sha256 != record.cached_sha256 or (signed_digest is not None and signed_digest != record.signed_digest):
        if cache is not None:
            cache.forget(name)
        raise InvalidSignature(f"base file {path} changed since image {record.image_id} was verified "
                               "(its digest differs)")
    if cache is None:
        return "read and verified in full"
    if unsealed is None and after == identity:
        cache.store(name, identity, sha256, record_digest)
        return "read and verified in full"
    cache.forget(name)
    return f"read and verified in full (not remembered: {unsealed or 'it changed while it was read'})"


def verify_for_boot(path: str, records: RecordStore, policy: BootPolicy,
                    cache: VerifiedCache | None = None, *, name: str | None = None,
                    fmt: str | None = None, booting_project: str | None = None) -> BootDecision:
    """Decide whether an instance may boot from base file ``path`` (never raises an ImgsignError).

    With ``cache`` (the check seals the base) the base's lock is held throughout; a base another run
    holds longer than the lock timeout is refused (:class:`~imgsign.errors.BaseBusy`).  ``fmt``: the
    format qemu will read the base as (the overlay's backing format); it must be the format the base
    was inspected and verified as (:mod:`imgsign.compute.image_format`)."""
    try:
        with records.locks.hold(os.path.basename(path)) if cache is not None else contextlib.nullcontext():
            record = records.get_by_name(name or os.path.basename(path))
            if record is not None and fmt is not None and fmt != record.cached_format:
                raise UnsafeImage(f"base file {path} would be read by qemu as {fmt}, but image {record.image_id} "
                                  f"was inspected and verified as {record.cached_format}")
            how = check_base(path, record, policy, cache, records, booting_project)
    except ImgsignError as exc:
        return BootDecision(policy.mode is Mode.WARN, exc.exit_code, exc.reason, exc.message)
    image = record.image_id if record is not None else "?"
    return BootDecision(True, 0, "ok", f"image {image} ({path}): signature valid, {how}")
