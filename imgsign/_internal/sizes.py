"""Sizes in bytes as operators write them (``20G``, ``512MiB``, ``21474836480``)."""

from __future__ import annotations

import re

from imgsign.errors import InputError

_SIZE = re.compile(r"([0-9]{1,20})\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: str, what: str) -> int:
    """A positive number of bytes: digits with an optional binary unit (``K``, ``M``, ``G``, ``T``,
    also written ``GiB``/``GB``, all powers of 1024); :class:`InputError` naming ``what`` otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise InputError(f"{what} must be a positive number of bytes (e.g. 21474836480 or 20G), not {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]
