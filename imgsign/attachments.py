"""Binary attachments to a signature (a timestamp token, an OCSP response) as image properties.

A blob travels base64 (standard alphabet, padded) under one property ``NAME`` when that fits
in :data:`MAX_VALUE` characters, else split in order over ``NAME_0``, ``NAME_1``, ... ``NAME_<n-1>``
(at most :data:`MAX_VALUE` characters each, at most :data:`MAX_PARTS` parts): Glance stores
longer values, but Nova copies image properties into a server's metadata cut to 255 characters,
and other tools have the same limit.

Reading is strict, as every parser of what Glance hands over: exactly one of the two forms,
the parts numbered ``0..n-1`` with no gap, no leading zero and no other ``NAME_*`` key, every
value a non-empty string, the whole valid base64 of at most :data:`MAX_BYTES` bytes.  A part
removed from the end leaves a blob the DER parser of its reader refuses (no prefix of a DER
value is a DER value of the same outer length).  Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from imgsign.errors import ImgsignError

#: Longest property value written.
MAX_VALUE = 255
#: Most parts read or written.
MAX_PARTS = 64
#: Largest blob read or written (decoded).
MAX_BYTES = (MAX_VALUE * MAX_PARTS // 4) * 3

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def encode(name: str, blob: bytes) -> dict[str, str]:
    """The properties that carry ``blob`` under ``name`` (see the module docstring)."""
    if not blob:
        raise ValueError("an empty attachment")
    if len(blob) > MAX_BYTES:
        raise ValueError(f"an attachment of {len(blob)} bytes is larger than the {MAX_BYTES} imgsign stores")
    text = base64.b64encode(blob).decode("ascii")
    if len(text) <= MAX_VALUE:
        return {name: text}
    return {f"{name}_{i}": text[start:start + MAX_VALUE]
            for i, start in enumerate(range(0, len(text), MAX_VALUE))}


def names(name: str, properties: Mapping[str, object]) -> list[str]:
    """The keys of ``properties`` that belong to the attachment ``name`` (both forms)."""
    pattern = re.compile(re.escape(name) + r"(_.*)?", re.S)
    return [key for key in properties if isinstance(key, str) and pattern.fullmatch(key)]


def decode(name: str, properties: Mapping[str, object], error: type[ImgsignError], what: str) -> bytes | None:
    """The blob stored under ``name``, None when there is none; ``error`` (naming ``what``) when malformed."""
    keys = names(name, properties)
    if not keys:
        return None
    if name in keys:
        if len(keys) > 1:
            raise error(f"{what}: both {name} and {name}_0... are present (exactly one form is allowed)")
        text = _value(properties, name, error, what)
    else:
        indices: dict[int, str] = {}
        for key in keys:
            suffix = key[len(name) + 1:]
            if not re.fullmatch(r"0|[1-9][0-9]{0,2}", suffix):
                raise error(f"{what}: unexpected property {key[:80]!r} (parts are {name}_0, {name}_1, ...)")
            indices[int(suffix)] = key
        if len(indices) > MAX_PARTS:
            raise error(f"{what}: {len(indices)} parts, more than the {MAX_PARTS} allowed")
        if sorted(indices) != list(range(len(indices))):
            raise error(f"{what}: its parts {name}_0..{name}_{len(indices) - 1} are not numbered without a gap")
        text = "".join(_value(properties, indices[i], error, what) for i in range(len(indices)))
    if len(text) > 4 * ((MAX_BYTES + 2) // 3):
        raise error(f"{what}: larger than the {MAX_BYTES} bytes imgsign reads")
    if not _BASE64.fullmatch(text):
        raise error(f"{what}: not standard base64 (one line, padded, no whitespace)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what}: not valid base64 (wrong length or padding)") from None


def _value(properties: Mapping[str, object], key: str, error: type[ImgsignError], what: str) -> str:
    value = properties[key]
    if not isinstance(value, str) or not value:
        raise error(f"{what}: property {key} must be a non-empty string")
    return value
