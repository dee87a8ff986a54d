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

    if not head.startswith(raw_digest.QCOW2_MAGIC):
        return {}
    fd = handle.fileno()
    with progress_bar(raw_digest.still_qcow2(fd, image), "raw digest", quiet) as progress:
        return raw_digest.sign_raw_statement(fd, image, key, signed, image_digest, progress).as_dict()
