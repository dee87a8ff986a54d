"""Streaming image data in large chunks, with memory independent of image size."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from imgsign.algorithms import HashMethod

#: Bytes read per chunk: large enough that per-chunk overhead vanishes next to hashing, small
#: enough to stay in the CPU's L2 cache (measured: 1 MiB beats 4 MiB; benchmarks/README.md).
CHUNK_SIZE = 1024 * 1024

#: Image data: a binary file object, the whole image as bytes, or any iterable of bytes-like chunks.
ImageData = BinaryIO | bytes | bytearray | memoryview | Iterable[bytes]

#: Called with the number of bytes just processed.
Progress = Callable[[int], None]


def iter_chunks(data: ImageData, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes | memoryview]:
    """Yield ``data`` in chunks.

    For a file object one buffer is reused for the whole file, so each yielded
    memoryview is valid only until the next one: consume it, don't keep it.
    Bytes are the whole image (iterating them would give integers, not chunks).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), chunk_size):
            yield view[start:start + chunk_size]
        return
    readinto = getattr(data, "readinto", None)
    if readinto is not None:
        _advise_sequential(data)
        yield from _read_into_aligned(readinto, chunk_size)
    elif hasattr(data, "read"):
        while chunk := data.read(chunk_size):
            yield chunk
    else:
        yield from data


def iter_fd_chunks(fd: int, *, offset: int | None = 0, chunk_size: int = CHUNK_SIZE) -> Iterator[memoryview]:
    """Yield what the descriptor ``fd`` holds, from ``offset`` on without moving the file position
    (``pread``), or, with ``offset=None``, from the current position (a pipe).  One buffer is reused,
    as for a file object in :func:`iter_chunks`."""
    if offset is None:
        yield from _read_into_aligned(lambda view: os.readv(fd, [view]), chunk_size)
        return
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_SEQUENTIAL)
    position = offset

    def pread_into(view: memoryview) -> int:
        nonlocal position
        n = os.preadv(fd, [view], position)
        position += n
        return n

    yield from _read_into_aligned(pread_into, chunk_size)


def _read_into_aligned(readinto: Callable[[memoryview], int | None], chunk_size: int) -> Iterator[memoryview]:
    """Call ``readinto`` with one reused page-aligned buffer until it reads nothing; yield what it read.

    The buffer is an anonymous mapping, not a bytearray: the kernel's copy from the page cache into
    an unaligned buffer is several times slower on some CPUs (measured on AMD EPYC: 0.66 s instead
    of 0.15 s of system time per GiB; benchmarks/README.md).
    """
    buffer = mmap.mmap(-1, chunk_size)
    view = memoryview(buffer)
    while n := readinto(view):
        yield view[:n]


def digest(data: ImageData, hash_method: HashMethod, progress: Progress | None = None) -> bytes:
    """Hash ``data`` with ``hash_method`` in a single streaming pass."""
    hasher = hash_method.new()
    for chunk in iter_chunks(data):
        hasher.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return hasher.digest()


def digests_of(fd: int, *methods: HashMethod) -> tuple[list[bytes], int]:
    """Hashes (one per method, all in one read) and size of the file behind ``fd``, from its start."""
    hashers = [method.new() for method in methods]
    size = 0
    for chunk in iter_fd_chunks(fd):
        for hasher in hashers:
            hasher.update(chunk)
        size += len(chunk)
    return [hasher.digest() for hasher in hashers], size


def _advise_sequential(data: object) -> None:
    try:
        fd = data.fileno()  # type: ignore[attr-defined]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        pass


class BackgroundDigest:
    """The digest of a file object, computed in a background thread while the caller works on.

    Reading a file and ``hashlib``'s hashing of a large buffer both release the GIL, so on a
    second core the image is hashed while the caller imports modules, loads a key or checks a
    certificate; :meth:`result` waits for the digest.  An error while reading is raised by
    :meth:`result` in the caller's thread, never lost in the background one.  For the short
    time both threads run Python code the interpreter's switch interval is lowered, so that
    the hashing thread gets the GIL back quickly between chunks; :meth:`result` restores it.
    """

    #: Switch interval while both threads are busy (the default, 5 ms, would stall the hashing).
    OVERLAP_SWITCH_INTERVAL = 0.0002
    #: How many of the first bytes :attr:`head` keeps (format magic, header), even from a pipe.
    HEAD_SIZE = 512

    def __init__(self, source: BinaryIO, hash_method: HashMethod, progress: Progress | None = None) -> None:
        self._hasher = hash_method.new()
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        #: The first :attr:`HEAD_SIZE` bytes of the source (fewer if it is shorter): read them after
        #: :meth:`result`, e.g. to tell the image's format without reading it again.
        self.head = b""
        self._saved_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._saved_interval, self.OVERLAP_SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run, args=(source, progress), name="imgsign-digest",
                                        daemon=True)
        self._thread.start()

    def _run(self, source: BinaryIO, progress: Progress | None) -> None:
        try:
            for chunk in iter_chunks(source):
                if self._cancelled.is_set():
                    return
                if len(self.head) < self.HEAD_SIZE:
                    self.head += bytes(chunk[: self.HEAD_SIZE - len(self.head)])
                self._hasher.update(chunk)
                if progress is not None:
                    progress(len(chunk))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> bytes:
        """The digest of everything the source held; raises what reading it raised."""
        self._thread.join()
        sys.setswitchinterval(self._saved_interval)
        if self._cancelled.is_set():
            raise RuntimeError("this BackgroundDigest was cancelled")
        if self._error is not None:
            raise self._error
        return self._hasher.digest()

    def cancel(self) -> None:
        """Stop reading (after the chunk in hand) and wait for the thread: call it before the
        source is closed, so the thread never reads a closed, or worse a reused, descriptor."""
        if self._thread.is_alive():
            self._cancelled.set()
        self._thread.join()
        sys.setswitchinterval(self._saved_interval)
