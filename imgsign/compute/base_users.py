"""Which instance disks use a base: what ``boot release`` asks before it gives a base back to Nova.

A sealed base is released so that Nova's image cache manager can remove it once no instance uses
it.  Released while an instance still uses it, the base loses its seal and its trust record at once:
``nova`` may change it under the running guest, which reads it lazily, and the next boot of that
instance re-adopts or refuses whatever it then holds.

Nova keeps every disk of an instance in ``$instances_path/<uuid>/``; a disk on a base is a qcow2
overlay whose header names ``_base/<sha1(image id)>`` (``qemu-img create -b``), possibly through
more overlays (snapshots).  :func:`users_of` reads each such header with ``qemu-img info`` (as
``nobody`` under root, never the file it names: :func:`imgsign.compute.qemu_img.probe`), follows
the chain and matches the files it names against the bases by identity (device and inode) and by
name, so a base reached through another spelling of its path is still found.  A header it cannot
read, or a backing name it cannot resolve that mentions a base, counts as a use: whoever releases
a base on a wrong "unused" is worse off than whoever keeps one.

Running and stopped instances both count (a stopped instance boots from its base again), as for
Nova's image cache manager.  :func:`domain_users` also asks libvirt, read-only (``virsh -r``), which
running domains have a base in the chain libvirt resolved for their disks, wherever their disks lie.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Collection

from imgsign.compute import qemu_img
from imgsign.errors import ImgsignError

#: The first bytes of a qcow2 file: only such a file names a backing file (raw disks and kernel copies do not).
QCOW2_MAGIC = b"QFI\xfb"


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def _candidates(instances_path: str) -> list[str]:
    """Every regular file directly in an instance directory (``$instances_path/*/``), except ``_base``'s."""
    files = []
    try:
        entries = sorted(os.scandir(instances_path), key=lambda entry: entry.name)
    except OSError:
        return []
    for entry in entries:
        if entry.name == qemu_img.CACHE or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            files += sorted(inner.path for inner in os.scandir(entry.path) if inner.is_file(follow_symlinks=False))
        except OSError:
            continue
    return files


def _backing_of(path: str) -> str | None:
    """The backing name in the qcow2 header of ``path`` (None: not qcow2 or no backing file); raises
    :class:`~imgsign.errors.ImgsignError` when the header cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if os.pread(fd, len(QCOW2_MAGIC), 0) != QCOW2_MAGIC:
            return None
        return qemu_img.probe(fd, path).backing
    finally:
        os.close(fd)


def users_of(instances_path: str, names: Collection[str]) -> dict[str, list[str]]:
    """For each base ``_base/<name>`` of ``names``, the instance files whose backing chain reaches it
    (sorted; a file whose header cannot be read is listed against every base, with the reason)."""
    cache = os.path.join(os.path.normpath(instances_path), qemu_img.CACHE)
    by_identity = {}
    for name in names:
        identity = _identity(os.path.join(cache, name))
        if identity is not None:
            by_identity[identity] = name
    cache_identity = _identity_of_dir(cache)
    users: dict[str, list[str]] = {name: [] for name in names}
    for top in _candidates(instances_path):
        for name, why in _chain_uses(top, cache_identity, by_identity, names):
            users[name].append(f"{top}{why}")
    return {name: sorted(set(found)) for name, found in users.items()}


def _identity_of_dir(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _chain_uses(top: str, cache_identity: tuple[int, int] | None, by_identity: dict[tuple[int, int], str],
                names: Collection[str]) -> list[tuple[str, str]]:
    """The bases of ``names`` that the chain from ``top`` reaches: ``(name, note)`` pairs."""
    path, seen = top, set()
    for _ in range(qemu_img.MAX_CHAIN):
        try:
            backing = _backing_of(path)
        except (OSError, ImgsignError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            return [(name, f" (its header cannot be read, so it may use the base: {reason})") for name in names]
        if not backing:
            return []
        if qemu_img.has_protocol(backing):  # a protocol or JSON name: a use of every base it mentions
            return [(name, " (through a backing name that is not a plain file)") for name in names if name in backing]
        # As qemu opens it: relative to the overlay's directory, '..' and links resolved by the kernel.
        target = os.path.join(os.path.dirname(path), backing)
        identity = _identity(target)
        if identity in by_identity:
            return [(by_identity[identity], "")]
        directory, base_name = os.path.split(os.path.normpath(target))
        if base_name in names and (_identity_of_dir(directory) == cache_identity or
                                   os.path.basename(directory) == qemu_img.CACHE):
            return [(base_name, "")]
        if identity is None or target in seen:
            return []
        seen.add(target)
        path = target
    return []


#: Seconds each ``virsh`` call may take (a libvirtd that does not answer is not waited for).
VIRSH_TIMEOUT = 20


def _virsh(uri: str, *args: str) -> str:
    virsh = shutil.which("virsh")
    if virsh is None:
        raise OSError("virsh is not installed")
    try:
        proc = subprocess.run([virsh, "-r", "-q", "-c", uri, *args], capture_output=True, text=True,
                              errors="replace", timeout=VIRSH_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"libvirt at {uri} did not answer within {VIRSH_TIMEOUT} s") from None
    if proc.returncode != 0:
        raise OSError((proc.stderr.strip().splitlines() or [f"virsh {args[0]} failed"])[-1])
    return proc.stdout


def domain_users(uri: str, instances_path: str, names: Collection[str]) -> dict[str, list[str]]:
    """For each base of ``names``, the running libvirt domains (``domain NAME (disk TARGET)``) whose disk,
    or a layer of the chain libvirt resolved for it (``<backingStore>``), is that base.  Raises
    :class:`OSError` (with the reason) when libvirt cannot be asked."""
    from imgsign.compute.libvirt_hook import parse_domain

    cache = os.path.join(os.path.normpath(instances_path), qemu_img.CACHE)
    by_identity = {identity: name for name in names
                   if (identity := _identity(os.path.join(cache, name))) is not None}
    cache_identity = _identity_of_dir(cache)
    users: dict[str, list[str]] = {name: [] for name in names}
    for domain_name in _virsh(uri, "list", "--name").split():
        try:
            domain = parse_domain(_virsh(uri, "dumpxml", domain_name))
        except (OSError, ImgsignError):
            continue  # gone since the list, or XML this parser refuses: the instance scan still looks
        for disk in domain.disks:
            for path in [disk.path, *(layer.path for layer in disk.backing_store or ())]:
                identity = _identity(path) if os.path.isabs(path) else None
                directory, base_name = os.path.split(os.path.normpath(path))
                name = by_identity.get(identity) if identity is not None else None
                if name is None and base_name in names and (_identity_of_dir(directory) == cache_identity or
                                                            os.path.basename(directory) == qemu_img.CACHE):
                    name = base_name
                if name is not None:
                    users[name].append(f"domain {domain_name} (disk {disk.target})")
    return {name: sorted(set(found)) for name, found in users.items()}
