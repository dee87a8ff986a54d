"""Image records without their locations, for nova-compute on Ceph (pure: no I/O).

Nova's libvirt driver on RBD reads an image's ``locations`` (and ``direct_url``) from Glance twice:
to boot, it clones the instance's disk from the image's RBD snapshot instead of downloading it
(``Rbd.clone``), so no base file exists for the boot hook to verify; to snapshot, it makes an RBD
snapshot and adds its location to the new image (``direct_snapshot``), so no upload reaches the
gateway to sign.  Refusing the location afterwards makes the snapshot fail (Nova 34 falls back to
uploading only after ``NotImplementedError``, ``ImageUnacceptable`` or ``Forbidden``, and Glance's 403
arrives as ``ImageNotAuthorized``).  An image record without locations makes both fall back, before
anything is made: ``clone`` raises ``ImageUnacceptable`` and Nova downloads the image; the parent pool
lookup of ``direct_snapshot`` raises ``ImageUnacceptable`` and Nova uploads the snapshot.

So, when signing, the gateway removes ``locations`` and ``direct_url`` from the image records it
forwards (``GET /v2/images/{id}`` and ``GET /v2/images``).
"""

from __future__ import annotations

import json
import re

#: Largest image record or list read to rewrite (a list of 1000 images is about 3 MiB).
MAX_DOCUMENT = 16 * 1024 * 1024
HIDDEN = ("locations", "direct_url")
_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_IMAGE = re.compile(rf"/v2/images/{_ID}")


class NotRewritable(ValueError):
    """An image record whose locations cannot be removed."""


def is_image_read(method: str, path: str) -> bool:
    """``GET /v2/images/{id}`` or ``GET /v2/images`` (the raw path, without the query)."""
    return method == "GET" and (path == "/v2/images" or _IMAGE.fullmatch(path) is not None)


def _strip(image: object) -> None:
    if isinstance(image, dict):
        for name in HIDDEN:
            image.pop(name, None)


def hide_locations(body: bytes) -> bytes:
    """``body`` (an image record, or a list ``{"images": [...]}``) without locations and direct_url.

    A body that is not a JSON object (an error page, say) is returned unchanged: Nova reads no location
    from it.  A list whose ``images`` is not a list raises :class:`NotRewritable`, never passed on.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(document, dict):
        return body
    images = document.get("images")
    if isinstance(images, list):
        for image in images:
            _strip(image)
    elif "images" in document:
        raise NotRewritable("its images are not a list")
    _strip(document)
    return json.dumps(document, separators=(",", ":")).encode()
