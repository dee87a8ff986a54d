"""Adoption by conversion: a base Nova converted from a qcow2 that has no raw-digest statement.

Such a qcow2 (signed by another tool, or by the manual ``openssl dgst`` procedure) says nothing about
what it converts to, so its raw base cannot be checked on its own.  When asked to (``imgsign boot
adopt --by-conversion``, the hook's ``[boot] adopt_by_conversion``), :func:`check_conversion` gets
the signed original again and repeats Nova's work under imgsign's control, inside the sealed-base
step of :func:`imgsign.compute.adoption.adopt`:

1. the original streams into a private file in ``_base`` (``O_TMPFILE``, as
   :func:`~imgsign.compute.image_cache.add_to_cache` does) while ``img_signature`` is verified over
   it; at most :attr:`Original.max_size` bytes: the stream is stopped the moment it passes the cap
   (and an announced size over it is refused before a byte is read);
2. only a verified qcow2 goes on: it is inspected as Nova inspects a download
   (:mod:`imgsign.compute.image_format`: format_inspector's safety checks, then qemu-img), its
   virtual size must be the base's size, and it is converted to raw, as Nova's
   ``force_raw_images`` does, into a second private file;
3. the conversion's size and SHA-256 must be the sealed base's (one read of the base).

Equal: the caller records the base as a conversion of the verified qcow2.  Anything else raises and
nothing is recorded; the private files have no name (or one never used again) and vanish on every path.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Iterator
from typing import cast

from imgsign.algorithms import HashMethod
from imgsign.compute import qemu_img
from imgsign.compute.boot_config import DEFAULT_CONVERSION_MAX_SIZE
from imgsign.compute.image_cache import fd_path, inspect_private, private_file, qemu_step, stream_verified
from imgsign.compute.verified_cache import FileIdentity
from imgsign.errors import InputError, InvalidSignature
from imgsign.stream import ImageData, digests_of, iter_chunks
from imgsign.verifier import Verifier

#: Default cap on the original's size (20 GiB; ``[boot] adopt_conversion_max_size``).
DEFAULT_MAX_SIZE = DEFAULT_CONVERSION_MAX_SIZE
#: Seconds qemu-img may take to convert when no deadline is given.
DEFAULT_CONVERT_TIMEOUT = 3600.0


@dataclasses.dataclass(frozen=True)
class Original:
    """The signed original of a converted base, and the limits of getting it.

    ``data``: its bytes (a file object or an iterable of chunks; a network stream is only started
    when it is needed); ``max_size``: bytes it may have at most; ``announced_size``: what its source
    says it has (Glance's ``size``, a file's size), refused at once when over the cap; ``deadline``:
    a :func:`time.monotonic` time the conversion must end by (the stream bounds its own reads).
    """

    data: ImageData
    max_size: int = DEFAULT_MAX_SIZE
    announced_size: int | None = None
    deadline: float | None = None


def check_conversion(dir_fd: int, fd: int, identity: FileIdentity, original: Original, verifier: Verifier,
                     image_id: str) -> tuple[bytes, bytes, str]:
    """Is the sealed raw base ``fd`` the conversion of the verified ``original``? (sha256, signed digest,
    source format) of the base, or raise (see the module docstring); ``dir_fd`` is ``_base``."""
    too_large = (f"the original of image {image_id} is larger than {original.max_size} bytes, the size limit of "
                 "adoption by conversion ([boot] adopt_conversion_max_size, --max-size)")
    if original.announced_size is not None and original.announced_size > original.max_size:
        raise InputError(f"{too_large}: it has {original.announced_size} bytes")
    with private_file(dir_fd) as download:
        try:
            capped = _capped(original.data, original.max_size, too_large)
            stream_verified(cast(ImageData, capped), verifier, download, image_id)
        except InvalidSignature:
            raise InvalidSignature(f"the original of image {image_id} given for adoption by conversion does not "
                                   "match img_signature; nothing was recorded") from None
        inspected = inspect_private(download, f"the original of image {image_id}", None, may_be_converted=False)
        if inspected.format != "qcow2":
            raise InputError(f"the original of image {image_id} is not a qcow2 image: only a qcow2 Nova converted "
                             "to raw is adopted by conversion (a raw image is adopted by its own signature)")
        mismatch = f"the base file of image {image_id} is not the raw conversion of its signed qcow2"
        if inspected.virtual_size != identity.size:
            raise InvalidSignature(f"{mismatch}: it is {identity.size} bytes, the conversion "
                                   f"{inspected.virtual_size}; nothing was recorded")
        with private_file(dir_fd) as converted:
            with qemu_step("convert", image_id, download):
                qemu_img.convert_to_raw(fd_path(download), "qcow2", fd_path(converted), _time_left(original))
            expected, size = _sha256_of(converted, image_id, "its conversion")
    if size != identity.size:
        raise InvalidSignature(f"{mismatch}: it is {identity.size} bytes, the conversion {size}; nothing was recorded")
    sha256, base_size = _sha256_of(fd, image_id, "the base file")
    if base_size != size or sha256 != expected:
        raise InvalidSignature(f"{mismatch}: its SHA-256 is {sha256.hex()}, the conversion's {expected.hex()}; "
                               "nothing was recorded")
    return sha256, verifier.verified_digest, "qcow2"


def _capped(data: ImageData, max_size: int, message: str) -> Iterator[bytes | memoryview]:
    """``data``'s chunks; :class:`InputError` (and the source closed) the moment they pass ``max_size``."""
    chunks = cast(Generator[bytes | memoryview, None, None], iter_chunks(data))
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            if total > max_size:
                raise InputError(message)
            yield chunk
    finally:
        chunks.close()


def _time_left(original: Original) -> float:
    if original.deadline is None:
        return DEFAULT_CONVERT_TIMEOUT
    return max(0.001, original.deadline - time.monotonic())


def _sha256_of(fd: int, image_id: str, what: str) -> tuple[bytes, int]:
    try:
        (sha256,), size = digests_of(fd, HashMethod.SHA256)
    except OSError as exc:
        raise InputError(f"cannot read {what} of image {image_id}: {exc.strerror}") from None
    return sha256, size
