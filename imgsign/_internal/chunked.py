"""A long value carried in several image properties of at most 255 characters each.

Glance's documentation gives 255 characters as the limit of a property value (its database does not
enforce it, other deployments and clients may), so a value that can be longer travels as::

    <prefix>count   decimal number of chunks, 1..MAX_CHUNKS, no leading zeros
    <prefix>0       first 255 characters
    <prefix>1       next 255 characters
    ...             up to <prefix><count-1>

Reading is strict: the count must be present and canonical, chunks ``0`` to ``count - 1`` all present,
each full (255 characters) except the last (1..255), no other property under the prefix (a chunk past
the count, ``<prefix>01``, ``<prefix>x``): a missing, extra, reordered or truncated chunk is an error,
never a shorter value.  Only ASCII text is carried (what callers store is base64 or JSON).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from imgsign.errors import PropertiesError

#: Longest property value written.
CHUNK = 255
#: Most chunks read or written: bounds what an untrusted image can make a reader assemble (about 16 KiB).
MAX_CHUNKS = 64
COUNT = "count"

_DECIMAL = re.compile(r"[1-9][0-9]{0,3}")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def split_value(prefix: str, value: str) -> dict[str, str]:
    """The properties that carry ``value`` (printable ASCII, at most ``CHUNK * MAX_CHUNKS`` characters)."""
    if not _PRINTABLE.fullmatch(value):
        raise ValueError("a chunked value must be non-empty printable ASCII")
    pieces = [value[i:i + CHUNK] for i in range(0, len(value), CHUNK)]
    if len(pieces) > MAX_CHUNKS:
        raise ValueError(f"a chunked value is at most {CHUNK * MAX_CHUNKS} characters, not {len(value)}")
    return {prefix + COUNT: str(len(pieces)), **{f"{prefix}{i}": piece for i, piece in enumerate(pieces)}}


def join_value(properties: Mapping[str, object], prefix: str) -> str | None:
    """The value stored under ``prefix``; None if no property starts with it; :class:`PropertiesError` if damaged."""
    names = {name for name in properties if isinstance(name, str) and name.startswith(prefix)}
    if not names:
        return None
    count_name = prefix + COUNT
    count_text = properties.get(count_name)
    if not isinstance(count_text, str) or not _DECIMAL.fullmatch(count_text) or int(count_text) > MAX_CHUNKS:
        raise PropertiesError(f"{count_name} must be a chunk count from 1 to {MAX_CHUNKS} (decimal, no leading "
                              f"zeros), not {str(count_text)[:40]!r}")
    count = int(count_text)
    expected = {count_name, *(f"{prefix}{i}" for i in range(count))}
    missing = sorted(expected - names, key=len)
    if missing:
        raise PropertiesError(f"{prefix}*: {count} chunks announced but {', '.join(missing[:5])} missing")
    extra = sorted(names - expected)
    if extra:
        shown = ", ".join(repr(name[:80]) for name in extra[:5])
        raise PropertiesError(f"{prefix}*: properties beyond the {count} announced chunks: {shown}")
    pieces: list[str] = []
    for index in range(count):
        name = f"{prefix}{index}"
        piece = properties[name]
        if not isinstance(piece, str) or not piece or not _PRINTABLE.fullmatch(piece):
            raise PropertiesError(f"{name} must be non-empty printable ASCII text")
        last = index == count - 1
        if len(piece) > CHUNK or (not last and len(piece) != CHUNK):
            raise PropertiesError(f"{name} is {len(piece)} characters: every chunk but the last holds exactly "
                                  f"{CHUNK}, the last 1 to {CHUNK} (a chunk was cut, joined or moved)")
        pieces.append(piece)
    return "".join(pieces)
