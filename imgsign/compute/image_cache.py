"""Download side: verify an image while it streams into Nova's image cache.

:func:`add_to_cache` does what Nova's download does, verified.  ``_base`` is
writable by the ``nova`` user (and whoever else shares it), who may rename or
replace any entry in it at any moment, so nothing after the verification uses a
name there: the data goes to an anonymous root-only file (``O_TMPFILE``, or a
0600 file whose name is never used again) held by its descriptor while it is
hashed; only a valid signature (and, with ``anchors``, a trusted chain) lets it
continue.  qemu-img inspects (refusing backing and external data files) and,
like ``force_raw_images``, converts to raw through ``/proc/<pid>/fd/N``, into a
second anonymous file; the result is hashed through its descriptor, made 0644,
linked into ``_base`` and renamed to ``_base/<sha1(image_id)>``, and the trust
record binds the digest of exactly that file.  When anything
fails, nothing is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign.algorithms import HashMethod
from imgsign.chain import TrustAnchors, validate_chain
from imgsign.compute import image_format, protection, qemu_img
from imgsign.compute.host_signed import Found
from imgsign.compute.trust_checks import TrustChecks
from imgsign.compute.trust_record import ProvenanceRecord, RecordStore, TrustRecord, cache_name, fingerprint
from imgsign.compute.verified_cache import FileIdentity, VerifiedCache
from imgsign.errors import ImgsignError, InputError, UntrustedCertificate
from imgsign.policy import Policy
from imgsign.properties import SignatureProperties
from imgsign.stream import ImageData, digests_of, iter_chunks
from imgsign.verifier import Verifier


def base_dir(instances_path: str) -> str:
    return os.path.join(instances_path, "_base")


@contextlib.contextmanager
def open_base_dir(instances_path: str, *, create: bool = True) -> Iterator[int]:
    """A descriptor of ``_base`` (made if missing and ``create``; a symbolic link there is refused)."""
    directory = base_dir(instances_path)
    try:
        if create:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot open the image cache {directory}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def private_file(dir_fd: int) -> Iterator[int]:
    """A new empty root-only (0600) file in ``dir_fd`` that only its descriptor reaches.

    ``O_TMPFILE`` where the filesystem has it; otherwise a uniquely named 0600 file whose name is
    never used again except to remove it (whoever swaps that name swaps nothing we read).
    """
    name = None
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise InputError(f"cannot create a file in the image cache: {exc.strerror}") from None
        name = f".imgsign-{secrets.token_hex(8)}.part"
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
        except OSError as exc:
            raise InputError(f"cannot create a file in the image cache: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)


def fd_path(fd: int) -> str:
    """A path that opens the file behind our descriptor ``fd`` (for qemu-img, a child process)."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def inspect_private(fd: int, what: str, disk_format: str | None, *, may_be_converted: bool) -> image_format.Inspected:
    """:func:`~imgsign.compute.image_format.inspect_image` of our private file ``fd`` (made 0644 first: the
    qemu-img probe runs as ``nobody``; the verified image is no secret)."""
    try:
        os.fchmod(fd, 0o644)
    except OSError as exc:
        raise InputError(f"cannot prepare {what} for inspection: {exc.strerror}") from None
    return image_format.inspect_image(fd, what, disk_format, may_be_converted=may_be_converted)


def _place(dir_fd: int, fd: int, name: str) -> FileIdentity:
    """Link the file behind ``fd`` into the directory as ``name`` (replacing it); its identity there.

    Raises :class:`InputError` when ``name`` is not our file right after the rename (someone swapped
    the temporary link): the caller then records nothing.
    """
    temporary = _link_temporary(dir_fd, fd, name)
    old = _open_regular(dir_fd, name)
    try:
        # A sealed (immutable) old base cannot be renamed over: clear its flag, and set it again if the
        # rename fails (the old base and its record stay as they were; the caller holds the base's lock).
        was_immutable = old is not None and protection.is_immutable(old) is True
        try:
            if old is not None:
                protection.set_immutable(old, False)
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            if was_immutable and old is not None:
                with contextlib.suppress(OSError):
                    protection.set_immutable(old, True)
            raise InputError(f"cannot place {name} in the image cache: {exc.strerror}") from None
    finally:
        if old is not None:
            os.close(old)
    try:
        os.fsync(dir_fd)
        mine = os.fstat(fd)
        placed = is_named(dir_fd, fd, name)
    except OSError as exc:
        raise InputError(f"cannot place {name} in the image cache: {exc.strerror}") from None
    if not placed:
        raise InputError(f"_base/{name} was replaced while it was being placed; nothing was recorded")
    return FileIdentity.from_stat(mine)


def _open_regular(dir_fd: int, name: str) -> int | None:
    """A descriptor of the regular file ``name`` in the directory (never through a link); None if there is none."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def is_named(dir_fd: int, fd: int, name: str) -> bool:
    """Is ``name`` in the directory (not following a link) the very file behind ``fd``?  OSError if gone."""
    there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def _link_temporary(dir_fd: int, fd: int, name: str) -> str:
    """Give the file behind ``fd`` a new unique name in the directory (a step of :func:`_place`)."""
    temporary = f".{name}.{secrets.token_hex(8)}.new"
    try:
        os.link(f"/proc/self/fd/{fd}", temporary, dst_dir_fd=dir_fd, follow_symlinks=True)
    except OSError as exc:
        raise InputError(f"cannot link the new base file into the image cache: {exc.strerror}") from None
    return temporary


def validated_anchors(certificate: x509.Certificate, anchors: TrustAnchors,
                      policy: Policy) -> tuple[x509.Certificate, ...]:
    """Validate ``certificate``'s chain (raising as :func:`validate_chain`) and return every trusted
    certificate it chains to on its own (the others may help as intermediates)."""
    validate_chain(certificate, anchors, policy)
    found = []
    for trusted in anchors.trusted:
        helpers = [*anchors.intermediates, *(c for c in anchors.trusted if c is not trusted)]
        with contextlib.suppress(ImgsignError):
            validate_chain(certificate, dataclasses.replace(anchors, trusted=[trusted], intermediates=helpers),
                           policy)
            found.append(trusted)
    if not found:
        raise UntrustedCertificate("the signing certificate chains to the trusted certificates only together")
    return tuple(found)


def trusted_anchors_of(certificate: x509.Certificate, anchors: TrustAnchors | None, trusted_ids: Sequence[str],
                      policy: Policy) -> tuple[x509.Certificate, ...]:
    """With ``anchors``: check the ids fit and validate the chain (:func:`validated_anchors`); else ()."""
    if anchors is None:
        return ()
    if len(trusted_ids) > len(anchors.trusted):
        raise InputError("more trusted certificate ids than trusted certificates")
    return validated_anchors(certificate, anchors, policy)


@dataclasses.dataclass(frozen=True)
class Judged:
    """:func:`judge_signer`'s answer: the checks to verify the signature with (the certificate judged at
    the timestamp when it has expired since), the trusted certificates the chain was validated against,
    and what to record of the timestamp and OCSP answers (None: nothing)."""

    policy: Policy
    trusted: tuple[x509.Certificate, ...]
    checks: TrustChecks | None


def judge_signer(certificate: x509.Certificate, signature: bytes, anchors: TrustAnchors | None,
                 trusted_ids: Sequence[str], policy: Policy, *, document: Mapping[str, object] | None,
                 tsa_roots: Sequence[x509.Certificate] = (), ocsp: str = "strict",
                 ocsp_timeout: float = 10.0) -> Judged:
    """Everything about the signer a record is made on (``boot cache``, ``boot adopt``, the hook's adoption),
    before any data is read, as every verification point judges it:

    * the image's RFC 3161 timestamp (``imgsign_tst_v1`` in ``document``, the image's properties) against
      ``tsa_roots`` (:func:`imgsign.timestamp.check`): a certificate that has expired since is judged at the
      timestamp when it was valid then; a token that does not verify refuses
      (:class:`~imgsign.errors.TimestampError`);
    * the chain to ``anchors`` (:func:`trusted_anchors_of`), revocation by CRLs and by OCSP as ``ocsp`` says
      (:func:`imgsign._internal.ocsp_client.for_document`: ``strict`` the response stapled in ``document``
      first, then the responders, each exchange within ``ocsp_timeout``; ``offline`` the stapled response
      only, so an air-gapped host needs no network; ``off`` CRLs only).

    What was checked is returned for the record (:mod:`imgsign.compute.trust_checks`), so the boot hook can
    decide offline."""
    from imgsign import timestamp
    from imgsign._internal.ocsp_client import for_document
    from imgsign.compute import trust_checks

    stamp = timestamp.check(document, signature, certificate, tsa_roots, now=policy.now()) \
        if document is not None else timestamp.TimestampCheck("absent")
    if stamp.judge_at is not None:
        policy = dataclasses.replace(policy, certificates_at=stamp.judge_at)
    client = for_document(document, ocsp, ocsp_timeout) if document is not None and anchors is not None else None
    if client is not None and anchors is not None:
        anchors = dataclasses.replace(anchors, ocsp=client)
    trusted = trusted_anchors_of(certificate, anchors, trusted_ids, policy)
    answers = [{"certificate": name, **answer.as_dict()} for name, answer in (client.results if client else [])]
    fingerprints: tuple[str, ...] = ()
    if stamp.timestamp is not None and document is not None:
        fingerprints = _tsa_fingerprints(document, signature, tsa_roots, policy)
    checks = trust_checks.made(stamp.timestamp.gen_time if stamp.timestamp else None, fingerprints, stamp.judge_at,
                               answers)
    return Judged(policy, trusted, None if checks.empty else checks)


def _tsa_fingerprints(document: Mapping[str, object], signature: bytes, roots: Sequence[x509.Certificate],
                      policy: Policy) -> tuple[str, ...]:
    """The fingerprints of the TSA certificates the (verified) token verifies against, each on its own."""
    from imgsign import timestamp

    token = timestamp.token_from_properties(document)
    found = []
    for root in roots:
        if token is None:
            break
        with contextlib.suppress(ImgsignError):
            timestamp.verify(token, signature, [root], now=policy.now())
            found.append(fingerprint(root.public_bytes(Encoding.DER)))
    return tuple(dict.fromkeys(found))


def bind_fetched(records: RecordStore, certificate: x509.Certificate, certificate_id: str | None,
                 anchors: TrustAnchors | None, trusted_ids: Sequence[str]) -> None:
    """Seal id -> fingerprint for every certificate fetched from the key manager by id: the first
    ``len(trusted_ids)`` of ``anchors.trusted``, and the signer's under ``certificate_id``."""
    fetched = anchors.trusted if anchors is not None else ()
    for certificate_key, bound in zip(trusted_ids, fetched, strict=False):  # the ids name the first ones
        records.anchors.bind(certificate_key, bound.public_bytes(Encoding.DER))
    if certificate_id is not None:
        records.anchors.bind(certificate_id, certificate.public_bytes(Encoding.DER))


def new_record(image_id: str, properties: SignatureProperties, certificate: x509.Certificate, signed_digest: bytes,
               certificate_id: str | None, trusted: Sequence[x509.Certificate], *, cached_format: str,
               cached_sha256: bytes, cached_size: int, source_format: str,
               image_facts: Mapping[str, str] | None = None, checks: TrustChecks | None = None,
               provenance: ProvenanceRecord | None = None) -> TrustRecord:
    """The trust record of a verified base file (``image_facts``: owner, visibility, image_type from Glance;
    ``checks``: the timestamp and OCSP answers :func:`judge_signer` checked; ``provenance``: a host-signed
    image's statement, :mod:`imgsign.compute.host_signed`)."""
    return TrustRecord(
        image_id=image_id, properties=properties, certificate_der=certificate.public_bytes(Encoding.DER),
        signed_digest=signed_digest, certificate_id=certificate_id,
        anchor_fingerprints=tuple(fingerprint(c.public_bytes(Encoding.DER)) for c in trusted),
        cached_format=cached_format, cached_sha256=cached_sha256, cached_size=cached_size,
        source_format=source_format, image_facts=None if image_facts is None else dict(image_facts), checks=checks,
        provenance=provenance,
    )


def stream_verified(data: ImageData, verifier: Verifier, fd: int, image_id: str) -> None:
    """Write ``data`` into the private file ``fd`` while ``verifier`` hashes it; raise unless it verifies."""
    try:
        with open(fd, "wb", closefd=False) as out:
            for chunk in iter_chunks(data):
                verifier.update(chunk)
                out.write(chunk)
        os.fsync(fd)
    except OSError as exc:
        raise InputError(f"cannot write image {image_id} into the image cache: {exc.strerror}") from None
    verifier.verify()


@contextlib.contextmanager
def qemu_step(step: str, image_id: str, fd: int) -> Iterator[None]:
    """Name the image, not ``/proc/<pid>/fd/N``, in a qemu-img error."""
    try:
        yield
    except ImgsignError as exc:
        exc.message = exc.message.replace(fd_path(fd), f"image {image_id} ({step})")
        raise


def add_to_cache(
    data: ImageData,
    image_id: str,
    properties: SignatureProperties,
    certificate: x509.Certificate,
    records: RecordStore,
    *,
    instances_path: str,
    anchors: TrustAnchors | None = None,
    trusted_ids: Sequence[str] = (),
    certificate_id: str | None = None,
    policy: Policy,
    force_raw: bool = True,
    immutable: bool,
    image_facts: Mapping[str, str] | None = None,
    document: Mapping[str, object] | None = None,
    tsa_roots: Sequence[x509.Certificate] = (),
    disk_format: str | None = None,
    ocsp: str = "strict",
    ocsp_timeout: float = 10.0,
    provenance: Found | None = None,
) -> TrustRecord:
    """Verify ``data`` into ``_base/<sha1(image_id)>`` and record it; raise (recording nothing) on failure.

    ``trusted_ids``: the key-manager ids of the first certificates of ``anchors.trusted``, in order;
    ``certificate_id``: the key-manager id ``certificate`` was fetched under (None: from a file).
    Each is sealed as an id -> fingerprint binding for the offline boot hook
    (:class:`~imgsign.compute.trust_record.AnchorStore`).  ``policy``: the certificate and key checks.
    ``immutable`` (``--seal``, ``[boot] seal_bases``; no default): the placed base is made immutable
    where the filesystem can (:mod:`imgsign.compute.protection`) and the verified-digest cache primed,
    so the first boot does not read it again; else it is only root's and 0644.  The verified download is
    inspected as Nova's ``fetch_to_raw`` inspects one (:mod:`imgsign.compute.image_format`; ``disk_format``:
    Glance's, when known) before qemu-img converts it.  The base's lock
    (:mod:`imgsign.compute.base_lock`) is held from the first change of the cache to the seal.
    ``document``: all the image's properties, whose timestamp token (checked against ``tsa_roots``)
    lets an expired certificate be judged at the token's time, and whose stapled OCSP response counts
    as ``ocsp`` says (:func:`judge_signer`; what was checked is recorded).
    ``provenance``: a host-signed image's statement (:func:`imgsign.compute.host_signed.fetch`), recorded.
    """
    records.prepare()  # an insecure state directory stops us before anything is written
    judged = judge_signer(certificate, properties.signature, anchors, trusted_ids, policy, document=document,
                          tsa_roots=tsa_roots, ocsp=ocsp, ocsp_timeout=ocsp_timeout)
    policy, trusted = judged.policy, judged.trusted
    verifier = Verifier.for_certificate(properties, certificate, policy=policy)
    name = cache_name(image_id)
    with open_base_dir(instances_path) as dir_fd, private_file(dir_fd) as download, \
            contextlib.ExitStack() as stack:
        stream_verified(data, verifier, download, image_id)
        # From here on only the verified file, through its descriptor.
        source_format = inspect_private(download, f"image {image_id}", disk_format, may_be_converted=False).format
        cached, cached_format = download, source_format
        if force_raw and source_format != "raw":
            cached = stack.enter_context(private_file(dir_fd))
            with qemu_step("convert", image_id, download):
                qemu_img.convert_to_raw(fd_path(download), source_format, fd_path(cached))
            cached_format = "raw"
        try:
            (sha256,), size = digests_of(cached, HashMethod.SHA256)
            os.fchmod(cached, 0o644)
            os.fsync(cached)
        except OSError as exc:
            raise InputError(f"cannot read back image {image_id} in the image cache: {exc.strerror}") from None
        stack.enter_context(records.locks.hold(name))
        bind_fetched(records, certificate, certificate_id, anchors, trusted_ids)
        for base_store_id, der in provenance.fetched if provenance is not None else ():
            records.anchors.bind(base_store_id, der)
        VerifiedCache(records.state_dir, owner=records.owner).forget(name)
        identity = _place(dir_fd, cached, name)
        record = new_record(image_id, properties, certificate, verifier.verified_digest, certificate_id, trusted,
                            cached_format=cached_format, cached_sha256=sha256, cached_size=size,
                            image_facts=image_facts, checks=judged.checks,
                            provenance=None if provenance is None else provenance.record,
                            source_format=source_format)
        try:
            records.put(record)
        except BaseException:
            with contextlib.suppress(OSError):  # a base without a record is refused anyway; tidy up
                if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == identity.inode:
                    os.unlink(name, dir_fd=dir_fd)
            raise
        # Sealed last: an immutable file cannot be linked or renamed, which placing it needed.  The
        # flag changes ctime, so the fast-path entry is written for the sealed state.
        if immutable and protection.seal(cached, records.owner, immutable=True):
            cache = VerifiedCache(records.state_dir, owner=records.owner)
            cache.store(name, FileIdentity.of(cached), sha256, record.digest())
    return record


def release(instances_path: str, name: str, records: RecordStore, uid: int, gid: int) -> bool:
    """Give the base ``_base/<name>`` back to Nova (``uid``/``gid``, mode 0644, not immutable) so its image
    cache manager can remove it, and forget its trust record and fast-path entry: a later boot from it is
    adopted or refused anew.  Returns whether there was such a file (a missing one only forgets).

    Under the base's lock, the record and fast-path entry go first and the file is given back last: there
    is never a record for a base others can write (a failure after that leaves a sealed, unrecorded base)."""
    records.prepare()  # an insecure state directory stops us before anything is touched
    with records.locks.hold(name):
        return _release_locked(instances_path, name, records, uid, gid)


def _release_locked(instances_path: str, name: str, records: RecordStore, uid: int, gid: int) -> bool:
    record = records.get_by_name(name)
    VerifiedCache(records.state_dir, owner=records.owner).forget(name)
    if record is not None:
        records.remove(record.image_id)
    with open_base_dir(instances_path, create=False) as dir_fd:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            fd = None
        except OSError as exc:
            raise InputError(f"cannot open base file _base/{name}: {exc.strerror}") from None
        if fd is not None:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise InputError(f"_base/{name} is not a regular file")
                protection.set_immutable(fd, False)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, protection.BASE_MODE)
            except OSError as exc:
                raise InputError(f"cannot give _base/{name} back: {exc.strerror}") from None
            finally:
                os.close(fd)
    return fd is not None
