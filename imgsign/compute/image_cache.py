"""Download side: verify an image while it streams into Nova's image cache.

:func:`add_to_cache` does what Nova's download does, verified: the data goes to
a temporary ``.part`` file in ``$instances_path/_base/`` while it is hashed; only
a valid signature (and, with ``anchors``, a trusted chain) lets it continue.
A qcow2 is checked for host-file references and, like ``force_raw_images``,
converted to raw; the result is renamed to ``_base/<sha1(image_id)>`` and its
trust record written.  When anything fails nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign.algorithms import HashMethod
from imgsign.chain import TrustAnchors
from imgsign.compute import qemu_img
from imgsign.compute.trust_record import RecordStore, TrustRecord, cache_name
from imgsign.compute.verified_cache import VerifiedCache
from imgsign.errors import InputError, UnsafeImage
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import SignatureProperties
from imgsign.stream import ImageData, digest, iter_chunks
from imgsign.verifier import Verifier


def base_dir(instances_path: str) -> str:
    return os.path.join(instances_path, "_base")


@contextlib.contextmanager
def _temporary(directory: str, prefix: str) -> Iterator[str]:
    """A new empty file that is removed unless the caller renamed it away."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=directory)
    os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _sha256_of(path: str) -> tuple[bytes, int]:
    """SHA-256 and size of the file at ``path``."""
    with open(path, "rb") as handle:
        return digest(handle, HashMethod.SHA256), os.fstat(handle.fileno()).st_size


def add_to_cache(
    data: ImageData,
    image_id: str,
    properties: SignatureProperties,
    certificate: x509.Certificate,
    records: RecordStore,
    *,
    instances_path: str,
    anchors: TrustAnchors | None = None,
    trusted_ids: tuple[str, ...] = (),
    policy: Policy = DEFAULT_POLICY,
    force_raw: bool = True,
) -> TrustRecord:
    """Verify ``data`` into ``_base/<sha1(image_id)>`` and record it; raise (leaving nothing) on failure.

    ``trusted_ids`` are the key-manager ids of the certificates in ``anchors``
    (recorded so the boot hook can check them offline).
    """
    verifier = Verifier.for_certificate(properties, certificate, policy=policy, anchors=anchors)
    directory = base_dir(instances_path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the image cache {directory}: {exc.strerror}") from None
    name = cache_name(image_id)
    final = os.path.join(directory, name)
    with _temporary(directory, name + ".") as download:
        try:
            with open(download, "wb") as out:
                for chunk in iter_chunks(data):
                    verifier.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise InputError(f"cannot write {download}: {exc.strerror}") from None
        verifier.verify()
        source_format = qemu_img.detect_format(download)
        layer = qemu_img.inspect(download, source_format)
        if layer.backing is not None:
            raise UnsafeImage(f"image {image_id} names a backing file ({layer.backing}); refused")
        with _temporary(directory, name + ".raw.") as converted:
            cached, cached_format = download, source_format
            if force_raw and source_format != "raw":
                qemu_img.convert_to_raw(download, source_format, converted)
                cached, cached_format = converted, "raw"
            sha256, size = _sha256_of(cached)
            os.chmod(cached, 0o644)
            record = TrustRecord(
                image_id=image_id, properties=properties,
                certificate_der=certificate.public_bytes(Encoding.DER),
                signed_digest=verifier.verified_digest, trusted_ids=tuple(trusted_ids),
                cached_format=cached_format, cached_sha256=sha256, cached_size=size, source_format=source_format,
            )
            records.put(record)
            VerifiedCache(records.state_dir).forget(name)
            os.replace(cached, final)
            _fsync_dir(directory)
    return record


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

