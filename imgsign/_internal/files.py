"""Reading inputs with clear errors, writing outputs atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterable, Iterator

from imgsign.errors import InputError

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

#: Refuse to read a "small" input (key, certificate, JSON) bigger than this.
MAX_SMALL_FILE = 16 * 1024 * 1024


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_small_file(path: str, what: str) -> bytes:
    """Read a key, certificate or JSON file; :class:`InputError` names ``what`` and ``path``."""
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise InputError(f"{what} {path} is not a regular file")
            data = handle.read(MAX_SMALL_FILE + 1)
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {_reason(exc)}") from None
    if len(data) > MAX_SMALL_FILE:
        raise InputError(f"{what} {path} is larger than {MAX_SMALL_FILE // (1024 * 1024)} MiB")
    if not data:
        raise InputError(f"{what} {path} is empty")
    return data


def read_secret_file(path: str, what: str) -> bytes:
    """A passphrase or PIN file's content, without its final line ending (``\\n`` or ``\\r\\n``)."""
    from imgsign._internal import redact

    data = read_small_file(path, what)
    secret = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    redact.remember(secret)  # no message from now on shows a piece of it
    return secret


@contextlib.contextmanager
def open_image(path: str) -> Iterator[tuple[BinaryIO, int]]:
    """Open an image for streaming; yields (file, size in bytes)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except IsADirectoryError:
        raise InputError(f"image {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot open image {path}: {_reason(exc)}") from None
    with handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"image {path} is a directory")
        try:
            yield handle, info.st_size
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {_reason(exc)}") from None


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` all or nothing: temp file in the same folder, fsync, rename.

    The file has ``mode`` from its creation on (a private key is never briefly readable).
    With ``replace=False`` an existing ``path`` is never replaced, even one that appears
    while writing: the new file is hard-linked into place, which fails if the name exists.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        import tempfile  # only when writing: every command imports this module at start-up

        fd, tmp = tempfile.mkstemp(prefix=".imgsign-", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InputError(f"{path} exists; use --force to overwrite it") from None
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(f"cannot write {path}: {_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names, following symlinks; None if it does not exist."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _stat_output(path: str, what: str) -> os.stat_result | None:
    """What an output path names now (following symlinks), or None if nothing."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: {_reason(exc)}") from None


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """A file a command will write, checked before any work is done (see :func:`plan_outputs`).

    ``write`` puts the data into a character device or FIFO (``/dev/stdout``, a pipe) by
    writing to it, and otherwise creates or (only with ``force``) atomically replaces a
    regular file; through a symlink, the file it points to is replaced, never the link.
    """

    path: str
    what: str
    mode: int = 0o644
    force: bool = False
    #: (device, inode) -> description of every input and other output: never to be written over.
    others: tuple[tuple[tuple[int, int], str], ...] = ()

    def write(self, data: bytes) -> None:
        info = _stat_output(self.path, self.what)
        # Checked again now, not only when planned: the name may have become an input since.
        if info is not None:
            other = dict(self.others).get((info.st_dev, info.st_ino))
            if other is not None:
                raise InputError(f"the {self.what} {self.path} is the same file as {other}: refusing to overwrite it")
        if info is not None and (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
            try:
                with open(self.path, "wb") as handle:
                    handle.write(data)
            except OSError as exc:
                raise InputError(f"cannot write {self.what} {self.path}: {_reason(exc)}") from None
            return
        target = os.path.realpath(self.path) if os.path.islink(self.path) else self.path
        atomic_write(target, data, self.mode, replace=self.force)


def plan_outputs(
    outputs: Iterable[tuple[str, str, int]],
    inputs: Iterable[tuple[str | None, str]],
    *,
    force: bool,
) -> list[OutputFile]:
    """Check every output of a command before it does any work; return them to write later.

    ``outputs`` are ``(path, what, mode)``; ``inputs`` ``(path or None, what)``.  An output
    that is one of the inputs (same device and inode, whatever its name or links) or another
    output is refused even with ``force``; an existing regular file is refused without
    ``force``; a character device or FIFO is written into; anything else (a directory, a
    block device, a socket) is refused.  Every refusal is an :class:`InputError`.
    """
    taken: dict[tuple[int, int], str] = {}
    for path, what in inputs:
        if path is not None:
            identity = _identity(path)
            if identity is not None:
                taken.setdefault(identity, f"the {what} {path}")
    planned: list[tuple[OutputFile, tuple[int, int] | None]] = []
    names: dict[str, str] = {}
    for path, what, mode in outputs:
        real = os.path.realpath(path)
        if real in names:
            raise InputError(f"the {what} {path} is the same file as {names[real]}")
        names[real] = f"the {what} {path}"
        info = _stat_output(path, what)
        identity = None
        if info is not None:
            identity = (info.st_dev, info.st_ino)
            if identity in taken:
                raise InputError(f"the {what} {path} is the same file as {taken[identity]}: refusing to overwrite it")
            taken[identity] = f"the {what} {path}"
            if stat.S_ISDIR(info.st_mode):
                raise InputError(f"the {what} {path} is a directory")
            if stat.S_ISREG(info.st_mode):
                if not force:
                    raise InputError(f"{what} {path} exists; use --force to overwrite it")
            elif not (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
                raise InputError(f"the {what} {path} is not a regular file, character device or FIFO")
        elif os.path.lexists(path) and not force:
            raise InputError(f"{what} {path} exists (a dangling symlink); use --force to overwrite it")
        planned.append((OutputFile(path, what, mode, force), identity))
    return [dataclasses.replace(output, others=tuple(item for item in taken.items() if item[0] != own))
            for output, own in planned]
