"""A hostile (or merely broken) OpenStack service on 127.0.0.1, for every HTTP client imgsign has.

One process plays Glance (``/v2/images/{id}``, ``/v2/images/{id}/file``, ``/v2/images`` with paging),
Keystone (``POST /v3/auth/tokens`` and version discovery), a key manager as castellan calls it
(Barbican ``/v1/secrets/{id}`` and ``/payload``, Vault KV ``/v1/{mount}/data/{id}``) and OpenBao
transit (``/v1/{mount}/keys/{name}``, ``/sign/...``): whatever the test puts into its route table.
How it answers is chosen by the first segment of the request's path, so one server serves every
case at once: ``http://127.0.0.1:PORT/<behaviour>[@<tag>]/...``.  The behaviour applies to routes
whose tag is ``<tag>`` (every route without one); other routes answer normally.  ``{base}`` in a
route's body becomes ``http://127.0.0.1:PORT/<behaviour>[@<tag>]`` (a catalog points back here).

Behaviours (:data:`BEHAVIOURS`):

``ok``               the route as given;
``silent``           accept, read the request, never answer;
``trickle-headers``  a status line, then header lines one byte every 0.2 s, forever;
``trickle``          headers at once, then the body one byte every 0.2 s (no read ever times out);
``stall``            headers and half the body, then nothing (the connection stays open);
``huge``             a 64 MiB body (JSON-looking for a JSON route), ``Content-Length`` announced;
``huge-chunked``     the same without a ``Content-Length``, in chunked encoding;
``gzip-bomb``        ``Content-Encoding: gzip``: 512 MiB of zeros in about 0.5 MiB on the wire;
``truncated``        ``Content-Length`` of the whole body, half of it sent, then a clean close;
``long-length``      ``Content-Length`` one byte short of the body (the body runs on);
``reset``            headers and half the body, then a TCP reset;
``redirect``         ``302`` to the same path under ``/ok`` (a client that follows gets a good answer);
``other-image``      a JSON body with its ``id`` replaced by another image's;
``escapes``          every string in a JSON body followed by terminal escape sequences;
``escapes-error``    ``500`` with an HTML error page full of escape sequences;
``5xx``              ``503`` (with ``Retry-After: 0``) to every request.

Run as ``python -m tests.servers.hostile ROUTES.json``: prints the port, serves until killed.  Every
request is appended to ``ROUTES.json.log`` (method, path, headers) so a test can see what a client
sent (e.g. whether a token followed a redirect).  :func:`hostile_server` runs it for a test.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BEHAVIOURS = ("ok", "silent", "trickle-headers", "trickle", "stall", "huge", "huge-chunked", "gzip-bomb",
              "truncated", "long-length", "reset", "redirect", "other-image", "escapes", "escapes-error", "5xx")
#: What ``escapes`` appends to every string: a window title, a clipboard write, a cleared screen, a fake line.
ESCAPES = "\x1b]0;owned\x07\x1b]52;c;ZWNobyBvd25lZA==\x07\x1b[2J\x1b[1A\r\nimgsign: verified OK\x9b31m"
OTHER_IMAGE = "00000000-0000-4000-8000-00000000beef"
HUGE = 64 * 1024 * 1024
BOMB = 512 * 1024 * 1024
TRICKLE = 0.2


@dataclass
class Route:
    """``method`` and ``path`` (a regular expression over the path after the behaviour segment)."""

    method: str
    path: str
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    tag: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "status": self.status, "tag": self.tag,
                "headers": self.headers, "body": base64.b64encode(self.body).decode()}


def json_route(method: str, path: str, document: Any, *, status: int = 200, tag: str = "",
               headers: dict[str, str] | None = None) -> Route:
    return Route(method, path, status, json.dumps(document).encode(),
                 {"Content-Type": "application/json", **(headers or {})}, tag)


# --- the server ----------------------------------------------------------------------------------

_bomb: bytes | None = None
_bomb_lock = threading.Lock()


def _gzip_bomb() -> bytes:
    global _bomb
    with _bomb_lock:
        if _bomb is None:
            # gzip members may follow one another (RFC 1952), each one 1 MiB of zeros.
            member = gzip.compress(bytes(1024 * 1024), compresslevel=9, mtime=0)
            _bomb = member * (BOMB // (1024 * 1024))
        return _bomb


def _escaped(document: Any) -> Any:
    if isinstance(document, str):
        return document + ESCAPES
    if isinstance(document, list):
        return [_escaped(item) for item in document]
    if isinstance(document, dict):
        return {key: _escaped(value) for key, value in document.items()}
    return document


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        reader = sock.makefile("rb")
        try:
            while self._one(sock, reader):
                pass
        except OSError:
            pass

    def _one(self, sock: socket.socket, reader: Any) -> bool:
        line = reader.readline(65537)
        if not line:
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (header := reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        request_body = reader.read(length) if length else b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while (size := int(reader.readline().split(b";")[0], 16)) > 0:
                reader.read(size + 2)
            reader.readline()
        path, _, query = target.partition("?")
        segment, _, rest = path.lstrip("/").partition("/")
        behaviour, _, tag = segment.partition("@")
        base = f"http://127.0.0.1:{self.server.server_address[1]}/{segment}"
        self.server.record({"method": method, "target": target, "headers": headers, "peer": self.client_address[1],
                            "body": request_body[:4096].decode("latin-1")})
        route = self.server.route(method, "/" + rest, query)
        if route is None:
            self._send(sock, 404, {"Content-Type": "application/json"}, b'{"error": "no such route"}')
            return True
        if behaviour not in BEHAVIOURS:
            behaviour = "ok"
        if tag and tag != route.tag:
            behaviour = "ok"
        body = route.body.replace(b"{base}", base.encode())
        return self._answer(sock, behaviour, route, body, "/" + rest, target)

    def _send(self, sock: socket.socket, status: int, headers: dict[str, str], body: bytes,
              length: int | None = None) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body) if length is None else length}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _answer(self, sock: socket.socket, behaviour: str, route: Route, body: bytes, rest: str,
                target: str) -> bool:
        headers = dict(route.headers)
        status = route.status
        is_json = headers.get("Content-Type", "").startswith("application/json")
        if behaviour == "ok":
            self._send(sock, status, headers, body)
            return True
        if behaviour == "silent":
            time.sleep(60)
            return False
        if behaviour == "trickle-headers":
            sock.sendall(f"HTTP/1.1 {status} OK\r\n".encode())
            while True:
                sock.sendall(b"X")
                time.sleep(TRICKLE)
        if behaviour == "trickle":
            head = "".join(f"{n}: {v}\r\n" for n, v in headers.items())
            sock.sendall(f"HTTP/1.1 {status} OK\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode())
            for index in range(len(body)):
                sock.sendall(body[index:index + 1])
                time.sleep(TRICKLE)
            return True
        if behaviour in ("stall", "truncated", "reset"):
            self._send(sock, status, headers, body[:len(body) // 2], length=len(body))
            if behaviour == "stall":
                time.sleep(60)
            elif behaviour == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if behaviour in ("huge", "huge-chunked"):
            piece = b"A" * (1024 * 1024)
            prefix = b'{"id": "' if is_json else b""
            chunked = behaviour == "huge-chunked"
            head = "".join(f"{n}: {v}\r\n" for n, v in headers.items())
            framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {HUGE}\r\n"
            sock.sendall(f"HTTP/1.1 {status} OK\r\n{head}{framing}\r\n".encode())
            sent = 0
            for index in range(HUGE // len(piece)):
                data = (prefix + piece[len(prefix):]) if index == 0 else piece
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
                sent += len(data)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            return True
        if behaviour == "gzip-bomb":
            self._send(sock, status, {**headers, "Content-Encoding": "gzip"}, _gzip_bomb())
            return True
        if behaviour == "long-length":
            self._send(sock, status, headers, body, length=max(0, len(body) - 1))
            return False
        if behaviour == "redirect":
            location = f"http://127.0.0.1:{self.server.server_address[1]}/ok{target[target.index('/', 1):]}"
            self._send(sock, 302, {"Location": location}, b"")
            return True
        if behaviour == "other-image":
            with contextlib.suppress(ValueError):
                document = json.loads(body)
                if isinstance(document, dict) and "id" in document:
                    document["id"] = OTHER_IMAGE
                body = json.dumps(document).encode()
            self._send(sock, status, headers, body)
            return True
        if behaviour == "escapes":
            with contextlib.suppress(ValueError):
                body = json.dumps(_escaped(json.loads(body))).encode()
            self._send(sock, status, headers, body)
            return True
        if behaviour == "escapes-error":
            page = f"<html><title>{ESCAPES}</title><body>{ESCAPES}</body></html>".encode()
            self._send(sock, 500, {"Content-Type": "text/html"}, page)
            return True
        if behaviour == "5xx":
            self._send(sock, 503, {"Content-Type": "text/plain", "Retry-After": "0"}, b"unavailable\n")
            return True
        raise AssertionError(behaviour)


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 302: "Found", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, routes: list[Route], log: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = [(r, re.compile(r.path)) for r in routes]
        self.log = log
        self._log_lock = threading.Lock()

    def route(self, method: str, path: str, query: str) -> Route | None:
        """The first route for ``method`` whose pattern matches the path with its query, or without."""
        for route, pattern in self.routes:
            if route.method == method and (pattern.fullmatch(f"{path}?{query}") or pattern.fullmatch(path)):
                return route
        return None

    def record(self, entry: dict[str, Any]) -> None:
        with self._log_lock, open(self.log, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> None:
    table = Path(argv[0])
    routes = [Route(r["method"], r["path"], r["status"], base64.b64decode(r["body"]), r["headers"], r["tag"])
              for r in json.loads(table.read_text())]
    server = Server(routes, Path(f"{table}.log"))
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


# --- for tests -----------------------------------------------------------------------------------


@dataclass
class Hostile:
    """A running hostile server: :meth:`url` for a behaviour, :meth:`requests` it received."""

    port: int
    log: Path

    def url(self, behaviour: str = "ok", tag: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{behaviour}" + (f"@{tag}" if tag else "")

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@contextlib.contextmanager
def hostile_server(routes: list[Route], workdir: Path) -> Iterator[Hostile]:
    """Run the server in its own process (so a client's memory is measured without it)."""
    table = workdir / "routes.json"
    table.write_text(json.dumps([r.to_json() for r in routes]))
    process = subprocess.Popen([sys.executable, "-m", "tests.servers.hostile", str(table)], stdout=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield Hostile(port, Path(f"{table}.log"))
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
