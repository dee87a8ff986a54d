"""One lock per base: every run that checks, adopts, seals, records or releases a base holds it.

Two runs on one base (two hook runs, a hook run and ``boot adopt``/``cache``/``release``) must not
interleave: an error path in one could otherwise give back (unseal) a base the other has meanwhile
recorded and let a guest boot from.  So each of them takes an exclusive ``flock`` on
``state_dir/locks/<base name>.lock`` and holds it from its first look at the base to its last change.

Why in imgsign's state directory, not beside Nova's ``instances/locks``: the state directory and its
``locks`` subdirectory are root's and 0700 (checked on every use, as for the sealed records), so the
``nova`` user can neither open a lock file (to hold it and stall every boot), nor plant one (a
symbolic link, a FIFO, a file it owns) in its place; Nova's lock directory is ``nova``'s own.  Lock
files are opened relative to the checked directory's descriptor, never through a link
(``O_NOFOLLOW``), and must be regular files owned by imgsign's user; they are never removed (removing
a lock file someone may be waiting on would let two runs hold "the" lock at once).

The wait is bounded: a base still locked after ``timeout`` seconds is :class:`~imgsign.errors.BaseBusy`
(a refusal, never a pass).  A thread that already holds a base's lock may take it again (nested
steps of one run: the hook's check around its adoption of the same base).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator

from imgsign.compute.sealed import SealedStore, check_owner
from imgsign.errors import BaseBusy, InputError, InsecureState

#: Seconds a run waits for another run on the same base before it refuses (``[boot] lock_timeout``).
DEFAULT_LOCK_TIMEOUT = 30.0
SUBDIR = "locks"
_OPEN = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_POLL = 0.01

#: (thread, state directory's device and inode, base name) -> [descriptor, depth] of the locks held here.
_held: dict[tuple[int, int, int, str], list[int]] = {}
_held_guard = threading.Lock()


class BaseLocks:
    """The per-base locks of one state directory (``owner``: the uid that must own it)."""

    def __init__(self, state_dir: str, *, owner: int, timeout: float) -> None:
        if not timeout > 0:
            raise InputError(f"the lock timeout must be a positive number of seconds, not {timeout!r}")
        self._store = SealedStore(state_dir, SUBDIR, owner=owner)
        self.owner = owner
        self.timeout = timeout

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Hold the lock of base ``name`` (``sha1(image id)``); :class:`BaseBusy` after the bounded wait."""
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise InputError(f"invalid base file name {name!r}")
        with self._store.checked_directory() as dir_fd:
            info = os.fstat(dir_fd)
            key = (threading.get_ident(), info.st_dev, info.st_ino, name)
            with _held_guard:
                mine = _held.get(key)
                if mine is not None:
                    mine[1] += 1
            if mine is None:
                fd = self._acquire(dir_fd, name)
                with _held_guard:
                    _held[key] = [fd, 1]
        try:
            yield
        finally:
            with _held_guard:
                entry = _held[key]
                entry[1] -= 1
                if entry[1] == 0:
                    del _held[key]
                    os.close(entry[0])  # closing the only descriptor of the open file drops the flock

    def _acquire(self, dir_fd: int, name: str) -> int:
        filename = name + ".lock"
        where = os.path.join(self._store.directory, filename)
        try:
            fd = os.open(filename, _OPEN, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise InsecureState(f"lock file {where} is not a regular file (or is a symbolic link)") from None
            raise InputError(f"cannot open lock file {where}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InsecureState(f"lock file {where} is not a regular file")
            check_owner(info, where, self.owner, "lock file")
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise InputError(f"cannot lock {where}: {exc.strerror}") from None
                if time.monotonic() >= deadline:
                    raise BaseBusy(f"base _base/{name} is busy: another imgsign run (the boot hook, or "
                                   f"`imgsign boot adopt`, `cache` or `release`) held its lock {where} for "
                                   f"{self.timeout:g} s; nothing was changed, try again when it is done")
                time.sleep(_POLL)
        except BaseException:
            os.close(fd)
            raise
