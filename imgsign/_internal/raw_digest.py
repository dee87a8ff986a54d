"""SHA-256 and size of a qcow2 image's raw conversion, streamed: no temporary file.

``nbdcopy -- [ qemu-nbd -r -f qcow2 /dev/fd/N ] -`` (Debian ``libnbd-bin`` and ``qemu-utils``)
writes the guest-visible bytes, holes as zeros, to a pipe that is hashed here: exactly the bytes
``qemu-img convert -f qcow2 -O raw`` writes (tests/test_raw_statement.py checks it), in constant
memory and with no disk space.  qemu-nbd runs under nbdcopy (systemd socket activation, no socket
file) and opens the caller's already open descriptor through ``/dev/fd/N``, the same inode, never
the path again.  Measured alternatives are in benchmarks/README.md.

A qcow2 image with a backing file or an external data file is refused before anything runs: Nova
refuses to boot those, and converting one would read other files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from imgsign.errors import BackendUnavailable, InputError, UnsafeImage
from imgsign.stream import CHUNK_SIZE, iter_fd_chunks

if TYPE_CHECKING:
    from imgsign.keys import PrivateKey
    from imgsign.properties import SignatureProperties
    from imgsign.raw_statement import RawStatement

QCOW2_MAGIC = b"QFI\xfb"
#: Debian packages of the tools, for the error message when one is missing.
PACKAGES = {"nbdcopy": "libnbd-bin", "qemu-nbd": "qemu-utils"}
#: Lowest descriptor number handed to the tools: libnbd's socket activation takes fd 3.
_FIRST_FD = 10
_F_SETPIPE_SZ = 1031
_INCOMPATIBLE_DATA_FILE = 1 << 2


@dataclasses.dataclass(frozen=True)
class RawDigest:
    """The SHA-256 and the size in bytes (the virtual size) of an image's raw conversion."""

    sha256: bytes
    size: int


def is_qcow2(fd: int, name: str) -> bool:
    """Does the open file start with the qcow2 magic ``QFI\\xfb``?

    A pipe cannot be read again once hashed: that is an :class:`InputError`, not a silent "no".
    """
    try:
        return os.pread(fd, 4, 0) == QCOW2_MAGIC
    except OSError as exc:
        raise InputError(
            f"image {name} cannot be read again from its start ({exc.strerror or exc}), so its raw digest cannot "
            f"be computed if it is qcow2: give a regular file, or sign with --no-raw-digest"
        ) from None


def qcow2_virtual_size(fd: int, name: str) -> int:
    """The virtual size from the qcow2 header; refuses backing files and external data files."""
    header = os.pread(fd, 80, 0)
    if len(header) < 72 or header[:4] != QCOW2_MAGIC:
        raise InputError(f"image {name} is not a qcow2 image (short or bad header)")
    version, backing_offset, _, _, size = struct.unpack(">IQIIQ", header[4:32])
    if version not in (2, 3):
        raise InputError(f"image {name}: unsupported qcow2 version {version}")
    if backing_offset:
        raise UnsafeImage(f"image {name}: the qcow2 header names a backing file; Nova refuses such images "
                          f"and its raw conversion would read another file")
    if version == 3 and len(header) >= 80:
        (incompatible,) = struct.unpack(">Q", header[72:80])
        if incompatible & _INCOMPATIBLE_DATA_FILE:
            raise UnsafeImage(f"image {name}: the qcow2 image has an external data file; Nova refuses such images")
    return int(size)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackendUnavailable(
            f"{name} is not installed (Debian package {PACKAGES[name]}); it is needed to compute the raw "
            f"digest of a qcow2 image (or sign with --no-raw-digest)"
        )
    return path


def raw_digest(fd: int, name: str, progress: Callable[[int], None] | None = None) -> RawDigest:
    """SHA-256 and size of what ``qemu-img convert -f qcow2 -O raw`` makes of the open qcow2 ``fd``.

    ``name`` is only for messages.  Errors: :class:`BackendUnavailable` (a tool is missing),
    :class:`UnsafeImage` (backing or data file), :class:`InputError` (qemu cannot read the image, or
    the stream's length is not the header's virtual size).
    """
    virtual_size = qcow2_virtual_size(fd, name)
    nbdcopy, qemu_nbd = _tool("nbdcopy"), _tool("qemu-nbd")
    child_fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_FD)
    try:
        with tempfile.TemporaryFile() as stderr_file:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # a bigger pipe, fewer wake-ups; not needed
                fcntl.fcntl(read_end, _F_SETPIPE_SZ, CHUNK_SIZE)
            try:
                process = subprocess.Popen(
                    [nbdcopy, "--", "[", qemu_nbd, "--read-only", "--format=qcow2", f"/dev/fd/{child_fd}", "]",
                     "-"],
                    stdin=subprocess.DEVNULL, stdout=write_end, stderr=stderr_file, pass_fds=(child_fd,),
                )
            except OSError as exc:
                os.close(read_end)
                raise BackendUnavailable(f"cannot run nbdcopy: {exc.strerror or exc}") from None
            finally:
                os.close(write_end)
            try:
                sha256, size = _hash_stream(read_end, progress)
            except BaseException:
                process.kill()
                raise
            finally:
                os.close(read_end)
                returncode = process.wait()  # after EOF it exits on its own
            if returncode != 0:
                stderr_file.seek(0)
                lines = stderr_file.read(64 * 1024).decode(errors="replace").strip().splitlines()
                detail = next((line for line in lines if "qemu-nbd:" in line), lines[-1] if lines else "no message")
                detail = detail.replace(f"/dev/fd/{child_fd}", name)
                raise InputError(f"cannot convert image {name} to raw (qemu-nbd/nbdcopy exit {returncode}): {detail}")
    finally:
        os.close(child_fd)
    if size != virtual_size:
        raise InputError(f"image {name}: the raw conversion is {size} bytes but the qcow2 header says {virtual_size}")
    return RawDigest(sha256, size)


def still_qcow2(fd: int, name: str) -> int:
    """The virtual size of the qcow2 image just signed from ``fd``, read again from the file's start.

    :class:`InputError` when it cannot be read again (a pipe) or no longer starts as a qcow2 image.
    """
    if not is_qcow2(fd, name):
        raise InputError(f"image {name} changed while it was being signed: it no longer starts as a qcow2 image")
    return qcow2_virtual_size(fd, name)


def sign_raw_statement(
    fd: int, name: str, key: PrivateKey, signed: SignatureProperties, image_digest: bytes,
    progress: Callable[[int], None] | None = None,
) -> RawStatement:
    """The signed raw-digest statement for the qcow2 image open at ``fd``, whose digest ``image_digest``
    ``signed`` (made with ``key``) covers: what ``imgsign sign`` and the Glance re-signing emit.

    The file is read again from its start (it must still be a qcow2 image, else :class:`InputError`)
    and converted as :func:`raw_digest` does; errors as there.
    """
    from imgsign.raw_statement import make_raw_statement

    still_qcow2(fd, name)
    raw = raw_digest(fd, name, progress)
    return make_raw_statement(key, signed, image_digest, raw.sha256, raw.size)


def _hash_stream(fd: int, progress: Callable[[int], None] | None) -> tuple[bytes, int]:
    hasher = hashlib.sha256()
    total = 0
    for chunk in iter_fd_chunks(fd, offset=None):
        hasher.update(chunk)
        total += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return hasher.digest(), total
