"""Upload a local image to Glance and sign it on the way, reading the file once.

With ``glance-direct`` (the cloud lists it in ``GET /v2/info/import``): create the
image, stage its data while hashing it (each chunk read from disk feeds the
hash and goes into the request body), set the signature properties, import it
(Glance checks the signature itself when it stores the data, and runs imgsign's
import plugins where they are configured) and wait for the import to end.

Without it, two passes: hash the file, create the image with its signature
properties, then ``PUT /file`` (Glance checks the signature on that upload).

Any failure after the image was created deletes it again; if even that fails,
the error says which image was left behind, in what state and why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from imgsign import errors
from imgsign.stream import Progress, iter_fd_chunks

if TYPE_CHECKING:
    from imgsign._internal.glance_api import GlanceClient
    from imgsign.algorithms import HashMethod

#: Makes the properties from the image's digest, its open file and its first bytes.
PropertiesMaker = Callable[[bytes, BinaryIO, bytes], Mapping[str, str]]
#: Seconds to wait for Glance's import to end.
DEFAULT_IMPORT_TIMEOUT = 600.0
HEAD_SIZE = 512


#: The image properties that are imgsign's business: the signature and imgsign's own statements.
SIGNATURE_PREFIXES = ("img_signature", "imgsign_")


@dataclass(frozen=True)
class UploadResult:
    #: The image record as Glance returned it once the upload or import had ended (read again then).
    image: dict[str, Any]
    #: "glance-direct" (staged, hashed while sent, imported) or "file" (hashed, then PUT /file).
    method: str
    #: The signature properties imgsign sent.
    properties: dict[str, str]

    @property
    def held(self) -> dict[str, Any]:
        """The signature properties Glance holds after the import: what Nova and ``verify --image`` will read
        (an import plugin such as ``imgsign_resign`` may have replaced what imgsign sent)."""
        return {k: v for k, v in self.image.items() if k.startswith(SIGNATURE_PREFIXES)}

    @property
    def changed(self) -> list[str]:
        """Names of the signature properties Glance holds differently from what imgsign sent (changed,
        added or removed on import), sorted."""
        held = self.held
        return sorted(n for n in set(held) | set(self.properties) if held.get(n) != self.properties.get(n))


class HashingChunks:
    """Exactly ``size`` bytes of ``fd`` from offset 0 in chunks, each hashed as it is handed on.

    A file that grows or shrinks while it is read is an :class:`~imgsign.errors.InputError`, raised
    from the iteration (which aborts the request carrying the chunks): what was hashed is what was sent.
    """

    def __init__(self, fd: int, size: int, hash_method: HashMethod, name: str,
                 progress: Progress | None = None) -> None:
        self._fd, self._size, self._name, self._progress = fd, size, name, progress
        self._hasher = hash_method.new()
        self.head = b""
        self._digest: bytes | None = None

    def __iter__(self) -> Iterator[memoryview]:
        sent = 0
        for chunk in iter_fd_chunks(self._fd, offset=0):
            if sent + len(chunk) > self._size:
                raise errors.InputError(f"image {self._name} grew while it was being uploaded")
            if len(self.head) < HEAD_SIZE:
                self.head += bytes(chunk[:HEAD_SIZE - len(self.head)])
            self._hasher.update(chunk)
            sent += len(chunk)
            if self._progress is not None:
                self._progress(len(chunk))
            yield chunk
        if sent != self._size:
            raise errors.InputError(f"image {self._name} shrank while it was being uploaded "
                                    f"({sent} of {self._size} bytes)")
        self._digest = self._hasher.digest()

    @property
    def digest(self) -> bytes:
        """The digest of all ``size`` bytes; only once they were all handed on."""
        if self._digest is None:
            raise RuntimeError("the image was not read to its end")
        return self._digest


def upload_signed(glance: GlanceClient, path: str, fields: Mapping[str, Any], hash_method: HashMethod,
                  make_properties: PropertiesMaker, *, import_timeout: float = DEFAULT_IMPORT_TIMEOUT,
                  progress: Progress | None = None, log: Callable[[str], None] | None = None) -> UploadResult:
    """Upload the image file at ``path`` as a new Glance image with ``fields`` and signature properties."""
    from imgsign._internal.files import open_image

    note = log or (lambda message: None)
    with open_image(path) as (handle, size):
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise errors.InputError(f"image {path} is not a regular file (an upload needs its size up front)")
        direct = "glance-direct" in glance.import_methods()
        if not direct:
            note("this Glance does not offer glance-direct imports: hashing the image first, then uploading it "
                 "(two reads of the file)")
            chunks = HashingChunks(handle.fileno(), size, hash_method, path, progress)
            for _ in chunks:
                pass
            properties = dict(make_properties(chunks.digest, handle, chunks.head))
            record = glance.create_image({**fields, **properties})
        else:
            record = glance.create_image(fields)
        image_id = str(record["id"])
        with _deleted_on_failure(glance, image_id, note):
            if direct:
                chunks = HashingChunks(handle.fileno(), size, hash_method, path, progress)
                glance.stage(image_id, chunks, size)
                properties = dict(make_properties(chunks.digest, handle, chunks.head))
                glance.update_image(image_id, properties)
                glance.import_image(image_id, "glance-direct")
                final = glance.wait_for_import(image_id, import_timeout)
            else:
                # Glance checks the signature as it stores the data: a file changed since it was hashed is refused.
                glance.upload(image_id, iter_fd_chunks(handle.fileno(), offset=0), size)
                final = glance.get_image(image_id)
                if final.get("status") != "active":
                    raise errors.ImportFailed(f"image {image_id} is {final.get('status')} after its upload")
    return UploadResult(final, "glance-direct" if direct else "file", properties)


@contextlib.contextmanager
def _deleted_on_failure(glance: GlanceClient, image_id: str, note: Callable[[str], None]) -> Iterator[None]:
    """Delete the image if the block fails (Ctrl-C included), and say so in the error raised."""
    try:
        yield
    except BaseException as exc:
        outcome = _delete(glance, image_id)
        note(outcome)
        if isinstance(exc, KeyboardInterrupt):
            raise errors.UploadInterrupted(f"the upload was interrupted; {outcome}") from None
        if isinstance(exc, errors.GlanceUnavailable):
            raise errors.UploadInterrupted(f"{exc.message}; {outcome}") from None
        if isinstance(exc, errors.ImgsignError):
            raise type(exc)(f"{exc.message}; {outcome}") from None
        raise


def _delete(glance: GlanceClient, image_id: str) -> str:
    """Delete the half-made image, not to be interrupted by another Ctrl-C; what happened, in words."""
    with _sigint_ignored():
        try:
            deleted = glance.delete_image(image_id)
        except errors.ImgsignError as exc:
            return (f"image {image_id} was LEFT in Glance, unsigned or without its data, because deleting it "
                    f"failed ({exc.message}); delete it with: openstack image delete {image_id}")
    return f"image {image_id} was deleted" if deleted else f"image {image_id} is gone (Glance no longer has it)"


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
