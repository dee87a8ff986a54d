"""Reading inputs with clear errors, writing outputs atomically."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from imgsign.errors import InputError

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


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` all or nothing: temp file in the same folder, fsync, rename.

    The file has ``mode`` from its creation on (a private key is never briefly readable).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".imgsign-", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
