"""``imgsign sign``'s raw-digest statement for qcow2 images (imgsign.raw_statement)."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from imgsign.keys import PrivateKey
    from imgsign.properties import SignatureProperties


def raw_statement_properties(
    image: str, handle: BinaryIO, key: PrivateKey, signed: SignatureProperties, image_digest: bytes, quiet: bool
) -> dict[str, str]:
    """The ``imgsign_raw_v1_*`` properties for a qcow2 image (read through its open ``handle``); {} for others."""
    from imgsign._internal import raw_digest
    from imgsign.cli._common import progress_bar
    from imgsign.raw_statement import make_raw_statement

    fd = handle.fileno()
    if not raw_digest.is_qcow2(fd, image):
        return {}
    size = raw_digest.qcow2_virtual_size(fd, image)
    with progress_bar(size, "raw digest", quiet) as progress:
        raw = raw_digest.raw_digest(fd, image, progress)
    return make_raw_statement(key, signed, image_digest, raw.sha256, raw.size).as_dict()
