"""``imgsign sign``'s raw-digest statement for qcow2 images (imgsign.raw_statement)."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from imgsign.keys import PrivateKey
    from imgsign.properties import SignatureProperties


def raw_statement_properties(
    image: str, handle: BinaryIO, head: bytes, key: PrivateKey, signed: SignatureProperties, image_digest: bytes,
    quiet: bool,
) -> dict[str, str]:
    """The ``imgsign_raw_v1_*`` properties for a qcow2 image (read through its open ``handle``); {} for others.

    ``head`` is the image's first bytes as the signing read them, so that a raw image streamed from
    a pipe is told apart without reading it again.
    """
    from imgsign._internal import raw_digest
    from imgsign.cli._common import progress_bar
    from imgsign.raw_statement import make_raw_statement

    if not head.startswith(raw_digest.QCOW2_MAGIC):
        return {}
    fd = handle.fileno()
    if not raw_digest.is_qcow2(fd, image):  # read again from the file: it must still be the qcow2 just signed
        from imgsign.errors import InputError

        raise InputError(f"image {image} changed while it was being signed: it no longer starts as a qcow2 image")
    size = raw_digest.qcow2_virtual_size(fd, image)
    with progress_bar(size, "raw digest", quiet) as progress:
        raw = raw_digest.raw_digest(fd, image, progress)
    return make_raw_statement(key, signed, image_digest, raw.sha256, raw.size).as_dict()
