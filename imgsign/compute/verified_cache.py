"""The verified-digest cache: skip re-reading a base file that has not changed.

After a base file's SHA-256 matched its trust record, the file's identity
``(device, inode, size, mtime_ns, ctime_ns)`` and that digest are sealed into
``state_dir/verified/<name>.json``.  A later boot whose ``stat`` gives the same
identity accepts the file in a millisecond; any change (content, ``touch``,
``chmod``, replacement by another file) changes ctime or the inode, so the file
is read and hashed again.  A damaged or forged entry is ignored: it can only
cost a re-verification, never produce a wrong "allowed".
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from imgsign.compute.sealed import Damaged, SealedStore


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd_or_path: int | str) -> FileIdentity:
        info = os.stat(fd_or_path)
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class VerifiedCache:
    """Sealed ``identity -> sha256`` entries for base files."""

    def __init__(self, state_dir: str) -> None:
        self._sealed = SealedStore(state_dir, "verified")

    def lookup(self, name: str, identity: FileIdentity) -> bytes | None:
        """The SHA-256 recorded for this exact file state, or None (unknown, changed or damaged)."""
        try:
            body = self._sealed.read(name)
        except Damaged:
            return None
        if body is None or body.get("identity") != dataclasses.asdict(identity):
            return None
        try:
            return bytes.fromhex(body["sha256"])
        except (KeyError, TypeError, ValueError):
            return None

    def store(self, name: str, identity: FileIdentity, sha256: bytes) -> None:
        body: dict[str, Any] = {"identity": dataclasses.asdict(identity), "sha256": sha256.hex()}
        self._sealed.write(name, body)

    def forget(self, name: str) -> None:
        self._sealed.remove(name)
