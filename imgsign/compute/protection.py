"""Who else can change a host file a guest reads, and sealing a verified base against them.

A check at boot only holds if nobody but root can change what was checked before qemu
opens it.  Two things decide that for a file in ``_base``:

* its **content**: :func:`seal` makes a verified base root's, mode 0644 and, where the
  filesystem has the flag (ext4, XFS, btrfs...), *immutable* (``chattr +i``).  An
  immutable file cannot be written through any descriptor or mapping, even one opened
  before (the kernel refuses the write; ext4 write-protects mapped pages when the flag is
  set), nor renamed, replaced, removed or hard-linked, and its owner cannot be changed:
  libvirt's DAC driver, which hands every image of a guest's backing chain to the qemu
  user at each start (``dynamic_ownership``; for backing images it never gives them
  back), gets ``EPERM``, which it ignores.  Only root (``CAP_LINUX_IMMUTABLE``) can clear
  the flag.  Without the flag a root-owned 0644 base is safe until libvirt chowns it to
  the qemu user at the first start.
* its **name**: :func:`replaceable_by_others` walks the path: every directory must be
  root's and not writable by others, except that a directory others may write is fine for
  an entry they cannot rename (a sticky directory and a root-owned entry, or an immutable
  leaf).  Nova's default ``/var/lib/nova/instances`` in the ``nova`` user's own home fails
  this: ``nova`` can rename ``_base`` away and put another file at the checked name.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat

from imgsign.compute.sealed import writable_by_others

# <linux/fs.h>: the inode flags ioctls (``chattr``/``lsattr``) and the immutable flag.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x00000010
#: errnos meaning "this filesystem has no inode flags" (tmpfs before 6.0, NFS, overlayfs on some kernels).
_UNSUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
BASE_MODE = 0o644


def _flags(fd: int) -> int | None:
    buffer = array.array("l", [0])
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buffer, True)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return None
        raise
    return buffer[0] & 0xFFFFFFFF


def is_immutable(fd: int) -> bool | None:
    """Is the file behind ``fd`` immutable?  None when its filesystem has no such flag."""
    flags = _flags(fd)
    return None if flags is None else bool(flags & _FS_IMMUTABLE_FL)


def set_immutable(fd: int, on: bool) -> bool:
    """Set or clear the immutable flag; False when the filesystem (or our privilege) cannot."""
    flags = _flags(fd)
    if flags is None:
        return False
    wanted = flags | _FS_IMMUTABLE_FL if on else flags & ~_FS_IMMUTABLE_FL
    if wanted == flags:
        return True
    try:
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, array.array("l", [wanted]))
    except OSError as exc:
        if exc.errno in (*_UNSUPPORTED, errno.EPERM, errno.EACCES):
            return False
        raise
    return True


def is_sealed(fd: int, owner: int) -> bool:
    """Is the file already ``owner``'s, mode 0644 and immutable?"""
    info = os.fstat(fd)
    return (info.st_uid == owner and stat.S_IMODE(info.st_mode) == BASE_MODE
            and is_immutable(fd) is True)


def seal_state(fd: int) -> tuple[int, int, int, bool | None]:
    """What :func:`seal` changes (owner, group, mode, immutable flag): a run compares it before and after
    to know whether the seal is its own doing."""
    info = os.fstat(fd)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), is_immutable(fd)


def seal(fd: int, owner: int, *, immutable: bool) -> bool:
    """Make the file behind ``fd`` ``owner``'s and 0644, then (``immutable``) immutable if the filesystem
    can; returns whether it is immutable.  Raises OSError when the owner or mode cannot be set."""
    if immutable and is_sealed(fd, owner):
        return True
    set_immutable(fd, False)  # an immutable file's owner and mode cannot change, not even by root
    os.fchown(fd, owner, -1)
    os.fchmod(fd, BASE_MODE)
    return immutable and set_immutable(fd, True)


def unseal(fd: int, before: os.stat_result) -> None:
    """Undo :func:`seal`: clear the flag and give back the owner and mode of ``before`` (best effort)."""
    try:
        set_immutable(fd, False)
        os.fchown(fd, before.st_uid, before.st_gid)
        os.fchmod(fd, stat.S_IMODE(before.st_mode))
    except OSError:
        pass


def _immutable_at(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return is_immutable(fd) is True
    finally:
        os.close(fd)


def replaceable_by_others(path: str, *, check_content: bool = True) -> str | None:
    """Why a user other than root could make ``path`` read other bytes (None: only root can).

    Every directory on the path, as given and as resolved, must be root's and not writable by
    group or others, unless the entry in it cannot be renamed by them: a sticky directory and a
    root-owned entry, or an immutable entry.  ``check_content``: the file itself must be root's
    and not writable by others, or immutable.
    """
    try:
        real = os.path.realpath(path)
        for candidate in dict.fromkeys((os.path.normpath(path), real)):
            parts = candidate.split(os.sep)
            for depth in range(1, len(parts)):
                directory, entry = os.sep.join(parts[:depth]) or os.sep, os.sep.join(parts[:depth + 1])
                info = os.stat(directory)
                if info.st_uid != 0:
                    return f"directory {directory} belongs to uid {info.st_uid}, not root"
                if not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    continue
                if info.st_mode & stat.S_ISVTX and os.lstat(entry).st_uid == 0:
                    continue
                if depth == len(parts) - 1 and _immutable_at(entry):
                    continue
                return f"others may rename or replace {entry} in directory {directory}"
        info = os.stat(real)
    except OSError as exc:
        return f"cannot inspect it: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{real} is not a regular file"
    if check_content and writable_by_others(info, 0) is not None and not _immutable_at(real):
        return f"{real} can be changed by a user other than root"
    return None
