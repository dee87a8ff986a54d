"""The verified-digest cache: skip re-reading a base file that cannot have changed.

Metadata alone does not prove that content is unchanged: a write through a
shared writable mapping (``mmap(MAP_SHARED, PROT_WRITE)``) to a page that is
already dirty changes neither mtime nor ctime.  So an entry is only written,
and only used, for a base file that no process other than root can have
written since imgsign created it:

* it is owned by imgsign's user (root), is a regular file and has no group or
  other write bit (with POSIX ACLs the group bits are the ACL mask, so no ACL
  entry grants write either): nobody else can open it for writing now;
* its identity ``(device, inode, size, mtime_ns, ctime_ns)`` is exactly the one
  recorded when ``imgsign boot cache`` created it (an anonymous root-owned 0600
  file, made 0644 only when complete): every ``chown``, ``chmod``, ACL change,
  link, rename or write changes ctime, so an unchanged identity means it was
  never writable by anyone else, and so no other process holds a writable
  descriptor or mapping of it (permissions are checked only at open time).

After a full read matched the record, such a file's identity, SHA-256 and the
time are sealed into ``state_dir/verified/<name>.json``.  A later boot accepts
the file without reading it when the entry is intact, its identity is the
file's current one, the two conditions above still hold and the entry is not
older than ``max_age`` seconds; otherwise the whole file is read.  A damaged or
forged entry is ignored: it can only cost a re-verification.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from typing import Any, ClassVar

from imgsign.compute.sealed import Damaged, SealedStore

#: Default bound on the age of a fast-path entry (``[boot] max_fast_path_age``): one day.
DEFAULT_MAX_AGE = 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    FIELDS: ClassVar[tuple[str, ...]] = ("device", "inode", "size", "mtime_ns", "ctime_ns")

    @classmethod
    def of(cls, fd_or_path: int | str) -> FileIdentity:
        return cls.from_stat(os.stat(fd_or_path))

    @classmethod
    def from_stat(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def unsealed_reason(info: os.stat_result, created: FileIdentity | None, owner: int) -> str | None:
    """Why a base file with ``stat`` ``info`` may have been written by someone else since imgsign
    created it with identity ``created`` (None: it cannot have been)."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != owner:
        return f"owned by uid {info.st_uid}, not {owner}"
    if info.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    if created is None or FileIdentity.from_stat(info) != created:
        return "not the file imgsign created, or its metadata changed since"
    return None


class VerifiedCache:
    """Sealed ``identity -> sha256`` entries for base files."""

    def __init__(self, state_dir: str, *, owner: int | None = None) -> None:
        self._sealed = SealedStore(state_dir, "verified", owner=owner)

    @property
    def owner(self) -> int:
        return self._sealed.owner

    def lookup(self, name: str, identity: FileIdentity, max_age: float = DEFAULT_MAX_AGE) -> bytes | None:
        """The SHA-256 recorded for this exact file state within ``max_age`` seconds, or None
        (unknown, changed, too old or damaged).  An entry someone else could have written raises
        :class:`~imgsign.errors.InsecureState`."""
        try:
            body = self._sealed.read(name)
        except Damaged:
            return None
        if body is None or body.get("identity") != dataclasses.asdict(identity):
            return None
        try:
            verified_at = body["verified_at"]
            if not isinstance(verified_at, (int, float)) or not 0 <= time.time() - verified_at <= max_age:
                return None
            sha256 = bytes.fromhex(body["sha256"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        return sha256 if len(sha256) == 32 else None

    def store(self, name: str, identity: FileIdentity, sha256: bytes) -> None:
        body: dict[str, Any] = {"identity": dataclasses.asdict(identity), "sha256": sha256.hex(),
                                "verified_at": time.time()}
        self._sealed.write(name, body)

    def forget(self, name: str) -> None:
        self._sealed.remove(name)
