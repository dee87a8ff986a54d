"""Network phases that end by a wall-clock deadline and read no more than a cap, whatever the peer does.

``with limited(deadline, GlanceUnavailable, "Glance"):`` runs its body as one phase on the
calling thread:

* **The deadline bounds everything, not each read.**  Every socket the thread connects during
  the phase, by any library (requests, keystoneauth, castellan's Vault client, barbicanclient),
  is seen through Python's ``socket.connect`` audit event and registered with the phase, and so
  is every kept-alive connection urllib3's pool hands out again to a request in the phase.  At the
  deadline a watchdog shuts every registered socket down, so a connect that hangs, headers or a
  body that trickle in a byte at a time, or a stalled read return at once; a connect tried after
  the deadline is refused.  (Name resolution, ``getaddrinfo``, cannot be interrupted: the
  system resolver's own timeouts bound it.)
* **The cap bounds what an answer may grow to.**  While a phase is active, requests made
  through ``requests`` (every HTTP client imgsign uses or loads) ask for ``Accept-Encoding:
  identity``, and each response body is read through a counter that stops at ``max_body``
  bytes, counted after any decompression a server imposes anyway (urllib3 inflates in steps no
  larger than the read asked for), so a small compressed answer cannot inflate past the cap.
  ``max_body=None`` lifts the cap for a body the caller streams itself (image data).
* **No redirects.**  A ``Location`` header is dropped from every answer in a phase, so neither
  requests nor keystoneauth follows it (with the token) to wherever a hostile service points;
  the client sees the 3xx status and refuses it.
* **One clear error.**  When the phase was cut short (deadline or cap), whatever the libraries
  made of it (a connection error, a truncated body that happens to parse, nothing at all), the
  phase raises ``error``, an :class:`~imgsign.errors.ImgsignError` class with its exit code,
  saying which limit was hit.  Otherwise exceptions pass through unchanged.

Phases nest (each keeps its own deadline, the innermost its cap).  Outside a phase nothing
changes: the audit hook, the two ``requests`` adapter hooks and the urllib3 pool hook are
installed on first use and only look at a thread-local list.  The libraries build their own HTTP sessions (castellan,
keystoneauth, barbicanclient), which is why the limits are applied at the socket and adapter
level rather than by options passed to each.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from typing import Any

from imgsign._internal.deadline import Deadline
from imgsign.errors import ImgsignError

#: Largest answer read from a service when the caller does not stream it itself: an image record,
#: a page of images, a token with its catalog, a secret with a certificate or CRL (4 MiB).
MAX_DOCUMENT = 4 * 1024 * 1024

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


class BodyTooLarge(Exception):
    """A response body passed the active phase's cap (the phase turns it into its own error)."""


class Phase:
    """One active phase: its limits, and whether (and why) it was cut short."""

    def __init__(self, deadline: Deadline | None, max_body: int | None) -> None:
        self.deadline = deadline
        self.max_body = max_body
        #: None, "deadline" or "cap".
        self.tripped: str | None = None
        self._lock = threading.Lock()
        self._sockets: list[tuple[int, int]] = []
        self._done = False
        self._timer: threading.Timer | None = None

    # --- the deadline ----------------------------------------------------------------------

    def start(self) -> None:
        if self.deadline is not None:
            self._timer = threading.Timer(self.deadline.remaining(), self.fire)
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        with self._lock:
            self._done = True
            self._sockets.clear()
        if self._timer is not None:
            self._timer.cancel()

    def register(self, sock: Any) -> None:
        """A socket the phase's thread is connecting (called from the audit hook)."""
        if self.deadline is None:
            return
        try:
            fd = sock.fileno()
            inode = os.fstat(fd).st_ino
        except (OSError, AttributeError, TypeError, ValueError):
            return
        with self._lock:
            if self._done:
                return
            if self.tripped is not None or self.deadline.expired:
                self.tripped = self.tripped or "deadline"
                raise TimeoutError(f"the deadline passed ({self.deadline.describe()})")
            self._sockets.append((fd, inode))

    def fire(self) -> None:
        """The deadline: shut down every socket of the phase (a blocked read or connect returns)."""
        with self._lock:
            if self._done:
                return
            self.tripped = self.tripped or "deadline"
            sockets, self._sockets = self._sockets, []
        for fd, inode in sockets:
            _shut_down(fd, inode)

    # --- the cap ---------------------------------------------------------------------------

    def count(self, total: int) -> None:
        """A response body has reached ``total`` bytes: :class:`BodyTooLarge` past the cap."""
        if self.max_body is not None and total > self.max_body:
            self.tripped = self.tripped or "cap"
            raise BodyTooLarge(f"a response body passed {self.max_body} bytes")

    # --- the error -------------------------------------------------------------------------

    def error(self, error: type[ImgsignError], service: str, action: str,
              too_large: type[ImgsignError] | None = None) -> ImgsignError:
        if self.tripped == "cap":
            return (too_large or error)(f"{service} sent an answer larger than {_size(self.max_body or 0)}, the "
                                        f"most imgsign reads from a service; nothing more was read")
        return error(f"{service} did not {action} " + (self.deadline.describe() if self.deadline else "in time"))


@contextlib.contextmanager
def limited(deadline: Deadline | None, error: type[ImgsignError], service: str, *, action: str = "answer",
            max_body: int | None = MAX_DOCUMENT, too_large: type[ImgsignError] | None = None) -> Iterator[Phase]:
    """Run the ``with`` body as one phase under ``deadline`` and ``max_body`` (see the module
    docstring); ``error(f"{service} did not {action} within ...")`` when it was cut short
    (``too_large``, if given, instead of ``error`` for an answer over the cap)."""
    _install()
    phase = Phase(deadline, max_body)
    stack = _stack()  # this thread's list (a generator holding a phase may be finalised on another thread)
    stack.append(phase)
    phase.start()
    failure: BaseException | None = None
    try:
        yield phase
    except Exception as exc:  # noqa: BLE001 - re-raised below unless the phase was cut short
        failure = exc
    finally:
        phase.stop()
        with contextlib.suppress(ValueError):
            stack.remove(phase)
    if phase.tripped is not None:
        raise phase.error(error, service, action, too_large) from None
    if failure is not None:
        raise failure


def current() -> Phase | None:
    """The innermost phase active on this thread, if any."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def _stack() -> list[Phase]:
    stack: list[Phase] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count % (1024 * 1024) == 0 else f"{count} bytes"


def _shut_down(fd: int, inode: int) -> None:
    """Shut down the socket ``fd`` if it is still the one registered (same inode), never another file."""
    try:
        copy = os.dup(fd)  # the duplicate pins what fd is now: it cannot be closed and reused under us
    except OSError:
        return
    try:
        status = os.fstat(copy)
        if stat.S_ISSOCK(status.st_mode) and status.st_ino == inode:
            sock = socket.socket(fileno=copy)
            copy = -1
            with sock, contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        if copy >= 0:
            os.close(copy)


# --- the hooks (installed once, inert outside a phase) ------------------------------------------


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect":
        return
    stack = getattr(_local, "stack", None)
    if stack:
        for phase in stack:
            phase.register(args[0])


def _install() -> None:
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        sys.addaudithook(_audit)
        try:
            import requests.adapters
        except ImportError:  # nothing reads HTTP bodies through requests then
            _installed = True
            return
        adapter = requests.adapters.HTTPAdapter
        add_headers, build_response = adapter.add_headers, adapter.build_response

        def limited_add_headers(self: Any, request: Any, **kwargs: Any) -> None:
            add_headers(self, request, **kwargs)
            if current() is not None:
                request.headers["Accept-Encoding"] = "identity"

        def limited_build_response(self: Any, req: Any, resp: Any) -> Any:
            response = build_response(self, req, resp)
            phase = current()
            if phase is not None:
                # No redirect is followed in a phase: a token never goes where an answer points.
                response.headers.pop("Location", None)
                if phase.max_body is not None:
                    response.raw = _CappedBody(response.raw, phase)
            return response

        adapter.add_headers = limited_add_headers  # type: ignore[method-assign]
        adapter.build_response = limited_build_response  # type: ignore[method-assign]
        _watch_pooled_connections()
        _installed = True


def _watch_pooled_connections() -> None:
    """A kept-alive connection urllib3 hands out again was connected before the phase (no connect event):
    register its socket when the pool gives it to a request made in a phase."""
    import urllib3.connectionpool

    pool = urllib3.connectionpool.HTTPConnectionPool
    get_conn = pool._get_conn

    def limited_get_conn(self: Any, timeout: float | None = None) -> Any:
        connection = get_conn(self, timeout)
        stack = getattr(_local, "stack", None)
        sock = getattr(connection, "sock", None)
        if stack and sock is not None:
            for phase in stack:
                phase.register(sock)
        return connection

    pool._get_conn = limited_get_conn  # type: ignore[method-assign]


class _CappedBody:
    """A urllib3 response whose body reads stop at the phase's cap (everything else is the response's)."""

    def __init__(self, raw: Any, phase: Phase) -> None:
        self._raw = raw
        self._phase = phase
        self._total = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def _counted(self, data: bytes) -> bytes:
        self._total += len(data)
        self._phase.count(self._total)
        return data

    def stream(self, amt: int | None = 65536, decode_content: bool | None = None) -> Iterator[bytes]:
        for chunk in self._raw.stream(amt or 65536, decode_content=decode_content):
            yield self._counted(chunk)

    def read(self, amt: int | None = None, decode_content: bool | None = None, **kwargs: Any) -> bytes:
        cap = self._phase.max_body
        if amt is None and cap is not None:  # a whole-body read: in steps, so the cap stops it
            parts = []
            while piece := self._raw.read(65536, decode_content=decode_content):
                parts.append(self._counted(piece))
            return b"".join(parts)
        return self._counted(self._raw.read(amt, decode_content=decode_content, **kwargs))
