"""Tamper-evident JSON files under a root-only state directory.

Each file is ``{"body": {...}, "hmac": hex}``; the HMAC-SHA256 key is a 32-byte
file in the state directory, created once with mode 0600 (the directory is
0700).  A file whose HMAC does not match is reported as damaged: callers treat
that as "unknown", never as "trusted".

A seal only means something if nobody else can write the key or the files, so
every directory, the key and every sealed file is checked on each use (on the
open descriptor, not the name): owned by ``owner`` (the uid imgsign runs as,
root in production), not writable by group or others (a POSIX ACL that grants
write shows as the group write bit, its mask), the key not readable by group or
others.  Anything else is :class:`~imgsign.errors.InsecureState`: a mis-install
that would let a non-root user forge records, so imgsign refuses to run on it.

The key is created race-free: each maker writes a unique temporary file and
``link()``s it to ``hmac.key``; the first link wins and every other maker (and
a maker that crashed half-way, leaving only its temporary file) reads the
winner's key.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Iterator

from imgsign._internal.files import atomic_write
from imgsign.errors import InputError, InsecureState, TrustRecordError

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEY_FILE = "hmac.key"
KEY_SIZE = 32
MAX_DOCUMENT = 4 * 1024 * 1024
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Damaged(TrustRecordError):
    """The sealed file exists but is unreadable, not JSON, or its HMAC does not match."""


def writable_by_others(info: os.stat_result, owner: int) -> str | None:
    """Why someone other than ``owner`` may write the file ``info`` describes; None when nobody can
    (owned by ``owner``, no group or other write bit: with POSIX ACLs the group bits are the mask)."""
    if info.st_uid != owner:
        return f"owned by uid {info.st_uid}, not {owner}"
    if info.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}, or a POSIX ACL granting write)"
    return None


def check_owner(info: os.stat_result, path: str, owner: int, what: str, *, private: bool = False) -> None:
    """Raise :class:`InsecureState` unless ``info`` is owned by ``owner`` and only it can write
    (``private``: and read) it."""
    reason = writable_by_others(info, owner)
    if reason is not None:
        raise InsecureState(f"{what} {path} is {reason}: whoever can write it can forge trust records "
                            f"(give it to uid {owner} with no group or other write permission, or remove it)")
    if private and info.st_mode & 0o077:
        raise InsecureState(f"{what} {path} is accessible to group or others "
                            f"(mode {stat.S_IMODE(info.st_mode):04o}); it must be 0600")


class SealedStore:
    """A directory of sealed JSON documents, one file per name.

    ``owner``: the uid that must own the state (default: the effective uid).
    """

    def __init__(self, state_dir: str, subdir: str, *, owner: int | None = None) -> None:
        self.state_dir = state_dir
        self.directory = os.path.join(state_dir, subdir)
        self.owner = os.geteuid() if owner is None else owner
        self._key: bytes | None = None

    # --- directories -------------------------------------------------------------

    def _open_checked_dir(self, path: str, dir_fd: int | None = None) -> int | None:
        """A descriptor of directory ``path`` after checking it; None when it does not exist."""
        try:
            fd = os.open(os.path.basename(path) if dir_fd is not None else path, _OPEN_DIR, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InsecureState(f"state directory {path} is not a directory (or is a symbolic link)") from None
            raise Damaged(f"cannot open state directory {path}: {exc.strerror}") from None
        try:
            check_owner(os.fstat(fd), path, self.owner, "state directory")
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _dirs(self, create: bool) -> Iterator[tuple[int, int] | None]:
        """Checked descriptors of (state directory, this store's directory); None when one is missing."""
        if create:
            for directory in (self.state_dir, self.directory):
                try:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                except OSError as exc:
                    raise InputError(f"cannot create state directory {directory}: {exc.strerror}") from None
        state_fd = self._open_checked_dir(self.state_dir)
        sub_fd = None
        try:
            if state_fd is not None:
                sub_fd = self._open_checked_dir(self.directory, state_fd)
            yield (state_fd, sub_fd) if state_fd is not None and sub_fd is not None else None
        finally:
            for fd in (sub_fd, state_fd):
                if fd is not None:
                    os.close(fd)

    @contextlib.contextmanager
    def checked_directory(self) -> Iterator[int]:
        """A descriptor of this store's directory (made 0700 if missing), checked as every use checks it."""
        with self._dirs(create=True) as fds:
            if fds is None:
                raise InputError(f"state directory {self.directory} vanished while it was being opened")
            yield fds[1]

    # --- the key -----------------------------------------------------------------------

    def _read_key(self, state_fd: int) -> bytes | None:
        path = os.path.join(self.state_dir, KEY_FILE)
        try:
            fd = os.open(KEY_FILE, _OPEN_FILE, dir_fd=state_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TrustRecordError(f"cannot read the state key {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InsecureState(f"the state key {path} is not a regular file")
            check_owner(info, path, self.owner, "the state key", private=True)
            key = handle.read(KEY_SIZE + 1)
        if len(key) != KEY_SIZE:
            raise TrustRecordError(f"the state key {path} is damaged ({len(key)} bytes)")
        return key

    def _create_key(self, state_fd: int) -> None:
        """Write a new key under a unique name and link it to ``hmac.key``: the first link wins."""
        import tempfile  # only the first run on a host writes the key: the hook's start-up stays without it

        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=self.state_dir)
        except OSError as exc:
            raise TrustRecordError(f"cannot create the state key in {self.state_dir}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
            with contextlib.suppress(FileExistsError):
                os.link(os.path.basename(tmp), KEY_FILE, src_dir_fd=state_fd, dst_dir_fd=state_fd)
            os.fsync(state_fd)
        except OSError as exc:
            raise TrustRecordError(f"cannot create the state key in {self.state_dir}: {exc.strerror}") from None
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def key(self, create: bool) -> bytes | None:
        """The HMAC key (None when there is none and not ``create``)."""
        if self._key is not None:
            return self._key
        with self._dirs(create) as fds:
            key = self._read_key(fds[0]) if fds is not None else None
            if fds is not None and key is None and create:
                self._create_key(fds[0])
                key = self._read_key(fds[0])
        self._key = key
        return key

    def prepare(self) -> None:
        """Create the directories and the key if missing and check them (before any other work)."""
        if self.key(create=True) is None:
            raise TrustRecordError(f"the state key in {self.state_dir} could not be created")
        with self._dirs(create=True):
            pass

    # --- documents -----------------------------------------------------------------------

    def _name(self, name: str) -> str:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise InputError(f"invalid state file name {name!r}")
        return name + ".json"

    @staticmethod
    def _mac(key: bytes, name: str, body: dict[str, Any]) -> str:
        canonical = json.dumps({"name": name, "body": body}, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(key, canonical, hashlib.sha256).hexdigest()

    def write(self, name: str, body: dict[str, Any]) -> None:
        """Seal and write ``body`` atomically (the name is bound into the HMAC)."""
        filename = self._name(name)
        key = self.key(create=True)
        if key is None:
            raise TrustRecordError(f"the state key in {self.state_dir} could not be created")
        document = {"body": body, "hmac": self._mac(key, name, body)}
        with self._dirs(create=True):  # checks the directories once more just before writing
            atomic_write(os.path.join(self.directory, filename),
                         json.dumps(document, sort_keys=True, indent=1).encode(), mode=0o600)

    def unseal(self, name: str, raw: bytes, where: str | None = None) -> dict[str, Any]:
        """The body of sealed document ``raw`` stored as ``name``; :class:`Damaged` unless its seal holds."""
        where = where or name
        key = self.key(create=False)
        if key is None:
            raise Damaged(f"{where} exists but the state key is missing")
        try:
            document = json.loads(raw)
            body, mac = document["body"], document["hmac"]
            if not isinstance(body, dict) or not isinstance(mac, str):
                raise TypeError
            expected = self._mac(key, name, body)
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):
            raise Damaged(f"{where} is not a sealed JSON document") from None
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected.encode()):
            raise Damaged(f"{where} does not match its seal (changed outside imgsign)")
        return body

    def read(self, name: str) -> dict[str, Any] | None:
        """The body, or None when there is no such file; :class:`Damaged` when it fails its seal,
        :class:`InsecureState` when someone else could have written it."""
        filename = self._name(name)
        path = os.path.join(self.directory, filename)
        with self._dirs(create=False) as fds:
            if fds is None:
                return None
            try:
                fd = os.open(filename, _OPEN_FILE, dir_fd=fds[1])
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise Damaged(f"cannot read {path}: {exc.strerror}") from None
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise Damaged(f"{path} is not a regular file")
                check_owner(info, path, self.owner, "sealed state file")
                raw = handle.read(MAX_DOCUMENT)
        return self.unseal(name, raw, path)

    def remove(self, name: str) -> None:
        path = os.path.join(self.directory, self._name(name))
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TrustRecordError(f"cannot remove {path}: {exc.strerror}") from None
