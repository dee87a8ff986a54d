"""The verified-digest cache: skip re-reading a base file that cannot have changed.

Metadata alone does not prove that content is unchanged.  Every ``write()``
(whatever the descriptor, however old) and every first write to a page of a
shared mapping (a page fault) updates ctime; but later writes to a page that a
shared writable mapping already holds dirty change no timestamp at all.  So an
entry is only written, and only used, for a base file:

* owned by imgsign's user (root), regular, with no group or other write bit
  (with POSIX ACLs the group bits are the ACL mask, so no ACL entry grants
  write either): nobody else can open it for writing, or map it writable, now;
* that no process had mapped shared (``/proc/*/maps``; any shared mapping, as
  ``mprotect`` can make a read-only view of a writable mapping writable again
  without a fault) when its full read began, and whose identity ``(device,
  inode, size, mtime_ns, ctime_ns)`` did not change during that read: a mapping
  made afterwards needs a page fault to write, which moves ctime.

After such a full read matched the record, the identity, SHA-256, the digest
of the trust record it matched (:meth:`~imgsign.compute.trust_record.TrustRecord.digest`,
whose signature was verified in the same check) and time are sealed into
``state_dir/verified/<name>.json``.  A later boot accepts the file without
reading it, and without verifying the record's signature again, when the entry
is intact, its identity is the file's current one, its record digest is that of
the current record, the first condition still holds and the entry is not older
than ``max_age`` seconds; otherwise the record's signature is verified and the
whole file is read.  A damaged or forged entry is ignored: it can only cost a
re-verification.  (Entries and records are sealed with the same root-only key:
whoever could forge an entry could forge a record too, so binding the entry to
the record adds no assumption; re-verifying an unchanged record on every boot
only cost every warm boot the load of an X.509 stack.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
import time

from imgsign.compute.sealed import Damaged, SealedStore, writable_by_others

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Default bound on the age of a fast-path entry (``[boot] max_fast_path_age``): one day.
DEFAULT_MAX_AGE = 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd_or_path: int | str) -> FileIdentity:
        return cls.from_stat(os.stat(fd_or_path))

    @classmethod
    def from_stat(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def unsealed_reason(info: os.stat_result, owner: int) -> str | None:
    """Why someone other than ``owner`` may be able to write the file ``info`` describes (None: nobody)."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return writable_by_others(info, owner)


def _runs_as_root(process: str) -> bool:
    """Are all of a process's uids (real, effective, saved, filesystem) 0?  False when unknown."""
    try:
        with open(os.path.join(process, "status"), "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    return line.split()[1:] == [b"0"] * 4
    except OSError:
        pass
    return False


def shared_mappers(info: os.stat_result, proc: str = "/proc") -> list[int] | None:
    """The pids of processes with a shared mapping of the file ``info`` describes; None when the
    mappings of some process not running as root cannot be read (then nobody can say there are none)."""
    device = (os.major(info.st_dev), os.minor(info.st_dev))
    inode = str(info.st_ino).encode()
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry.name, "maps"), "rb") as handle:
                maps = handle.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile: its mappings are gone
        except OSError:
            if _runs_as_root(os.path.join(proc, entry.name)):
                continue  # root is trusted (without CAP_SYS_PTRACE, root cannot read every process's maps)
            return None
        for line in maps.splitlines():
            fields = line.split(None, 5)
            if len(fields) < 5 or fields[4] != inode or fields[1][3:4] != b"s":
                continue
            major, _, minor = fields[3].partition(b":")
            with contextlib.suppress(ValueError):
                if (int(major, 16), int(minor, 16)) == device:
                    found.append(int(entry.name))
                    break
    return found


def open_for_writing(fd: int) -> bool | None:
    """Does any process hold the file behind the read-only descriptor ``fd`` open for writing (a
    descriptor, one in flight in a unix socket, a write in progress, a writable mapping)?

    Asked of the kernel: a read lease (``F_SETLEASE``, ``F_RDLCK``) is granted only while nobody
    has the file open for writing; it is released at once.  None when the filesystem has no leases.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return True
        return None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


class VerifiedCache:
    """Sealed ``identity -> sha256`` entries for base files."""

    def __init__(self, state_dir: str, *, owner: int | None = None) -> None:
        self._sealed = SealedStore(state_dir, "verified", owner=owner)

    @property
    def owner(self) -> int:
        return self._sealed.owner

    def lookup(self, name: str, identity: FileIdentity, max_age: float, record: str) -> bytes | None:
        """The SHA-256 recorded for this exact file state, checked against the trust record whose
        :meth:`~imgsign.compute.trust_record.TrustRecord.digest` is ``record``, within ``max_age``
        seconds (the caller's ``max_fast_path_age``, no default of its own), or None (unknown,
        changed, another record, too old or damaged).  An entry someone else could have written
        raises :class:`~imgsign.errors.InsecureState`."""
        try:
            body = self._sealed.read(name)
        except Damaged:
            return None
        if body is None or body.get("identity") != dataclasses.asdict(identity) or body.get("record") != record:
            return None
        try:
            verified_at = body["verified_at"]
            if not isinstance(verified_at, (int, float)) or not 0 <= time.time() - verified_at <= max_age:
                return None
            sha256 = bytes.fromhex(body["sha256"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        return sha256 if len(sha256) == 32 else None

    def store(self, name: str, identity: FileIdentity, sha256: bytes, record: str) -> None:
        """Remember that the file in state ``identity`` has ``sha256`` and matched the trust record
        with digest ``record``, whose signature the caller verified."""
        body: dict[str, Any] = {"identity": dataclasses.asdict(identity), "sha256": sha256.hex(),
                                "record": record, "verified_at": time.time()}
        self._sealed.write(name, body)

    def forget(self, name: str) -> None:
        self._sealed.remove(name)
