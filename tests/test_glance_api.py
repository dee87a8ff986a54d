"""GlanceClient against a real HTTP server that misbehaves on purpose (short bodies, odd statuses, loops).

The real Glance (tests/test_glance_client_e2e.py) answers correctly; what a broken proxy, a dying
server or a hostile endpoint sends is played here by a stdlib HTTP server on 127.0.0.1, spoken to
over real sockets through a real keystoneauth session (token + endpoint).
"""

from __future__ import annotations

import http.server
import json
import socket
from collections.abc import Callable, Iterator

import pytest
from keystoneauth1 import session, token_endpoint

from imgsign import errors
from imgsign._internal.glance_api import GlanceClient
from tests.conftest import serving

IMAGE = "3c6b0a5e-7d1f-4c3a-9f7e-0a1b2c3d4e5f"
Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
          length: int | None = None) -> Handler:
    """Answer ``status`` with ``body``, announcing ``length`` bytes (default: the body's), then close."""
    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        if status != 204:
            request.send_header("Content-Length", str(len(body) if length is None else length))
        request.end_headers()
        request.wfile.write(body)
        request.wfile.flush()
        request.close_connection = True
    return handle


def reset_after(data: bytes, length: int) -> Handler:
    """Announce ``length`` bytes, send ``data``, then reset the connection (RST, not FIN)."""
    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", str(length))
        request.end_headers()
        request.wfile.write(data)
        request.wfile.flush()
        request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        request.close_connection = True
    return handle


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Handler], list[tuple[str, str, str | None]]]]:
    """(url, routes "METHOD /path?query" -> handler, requests seen as (method, path, X-Auth-Token))."""
    routes: dict[str, Handler] = {}
    seen: list[tuple[str, str, str | None]] = []

    class Requests(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            seen.append((self.command, self.path, self.headers.get("X-Auth-Token")))
            routes.get(f"{self.command} {self.path}", reply(599, b"no route"))(self)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

    with serving(Requests) as url:
        yield url, routes, seen


def client(url: str) -> GlanceClient:
    return GlanceClient(session.Session(auth=token_endpoint.Token(url, "secret-token")), timeout=(5, 5))


def test_download_announcing_more_than_it_sends_raises_and_never_looks_complete(server):
    url, routes, _ = server
    routes[f"GET /v2/images/{IMAGE}/file"] = reply(200, b"x" * 1000, length=5000)
    received = bytearray()
    with pytest.raises(errors.GlanceUnavailable, match=r"broke off after \d+ bytes of 5000"):
        for chunk in client(url).iter_data(IMAGE, 256):
            received += chunk
    assert len(received) <= 1000


def test_download_reset_mid_body_raises(server):
    url, routes, _ = server
    routes[f"GET /v2/images/{IMAGE}/file"] = reset_after(b"y" * 70000, 1 << 20)
    with pytest.raises(errors.GlanceUnavailable, match=f"download of image {IMAGE}"):
        for _ in client(url).iter_data(IMAGE, 4096):
            pass


def test_download_of_exact_length_and_without_data(server):
    url, routes, _ = server
    routes[f"GET /v2/images/{IMAGE}/file"] = reply(200, b"z" * 3000)
    assert b"".join(client(url).iter_data(IMAGE, 1024)) == b"z" * 3000
    routes[f"GET /v2/images/{IMAGE}/file"] = reply(204)
    routes[f"GET /v2/images/{IMAGE}"] = reply(200, json.dumps({"id": IMAGE, "status": "queued"}).encode())
    with pytest.raises(errors.ImageHasNoData, match="status queued"):
        list(client(url).iter_data(IMAGE))


@pytest.mark.parametrize(("status", "error"), [
    (404, errors.ImageNotFound), (401, errors.GlanceUnavailable), (403, errors.GlanceUnavailable),
    (500, errors.GlanceUnavailable), (503, errors.GlanceUnavailable),
])
def test_statuses_map_to_their_errors(server, status, error):
    url, routes, _ = server
    routes[f"GET /v2/images/{IMAGE}"] = reply(status, b"<html><body>Nope: " + b"a" * 100000 + b"</body></html>")
    routes[f"GET /v2/images/{IMAGE}/file"] = routes[f"GET /v2/images/{IMAGE}"]
    with pytest.raises(error) as caught:
        client(url).get_image(IMAGE)
    assert f"HTTP {status}: Nope:" in caught.value.message and len(caught.value.message) < 600
    with pytest.raises(error):
        list(client(url).iter_data(IMAGE))


def test_record_that_is_not_json_or_not_an_object(server):
    url, routes, _ = server
    for body in (b"<html>", b"[1, 2]", b'"text"'):
        routes[f"GET /v2/images/{IMAGE}"] = reply(200, body)
        with pytest.raises(errors.GlanceUnavailable):
            client(url).get_image(IMAGE)


def test_paging_follows_next_with_the_token_and_refuses_loops_and_foreign_hosts(server):
    url, routes, seen = server
    routes["GET /v2/images?limit=200&owner=demo"] = reply(200, json.dumps(
        {"images": [{"id": "a"}, {"id": "b"}], "next": "/v2/images?marker=b&limit=200&owner=demo"}).encode())
    routes["GET /v2/images?marker=b&limit=200&owner=demo"] = reply(200, json.dumps({"images": [{"id": "c"}]}).encode())
    assert [i["id"] for i in client(url).iter_images("demo")] == ["a", "b", "c"]
    assert all(token == "secret-token" for _, _, token in seen)

    routes["GET /v2/images?marker=b&limit=200&owner=demo"] = reply(200, json.dumps(
        {"images": [], "next": "/v2/images?limit=200&owner=demo"}).encode())
    with pytest.raises(errors.GlanceUnavailable, match="loop"):
        list(client(url).iter_images("demo"))

    routes["GET /v2/images?limit=200"] = reply(200, json.dumps(
        {"images": [], "next": "http://attacker.example/v2/images?marker=x"}).encode())
    seen.clear()
    with pytest.raises(errors.GlanceUnavailable, match="unexpected next page"):
        list(client(url).iter_images())
    assert len(seen) == 1


def test_nothing_listening_is_glance_unavailable():
    with socket.socket() as probe:  # a port that was just free: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(errors.GlanceUnavailable, match="is unavailable"):
        client(f"http://127.0.0.1:{port}").get_image(IMAGE)


def test_endpoint_drops_a_version_suffix(server):
    url, routes, seen = server
    routes[f"GET /v2/images/{IMAGE}"] = reply(200, json.dumps({"id": IMAGE}).encode())
    assert client(f"{url}/v2/").get_image(IMAGE) == {"id": IMAGE}
    assert seen[-1][1] == f"/v2/images/{IMAGE}"


def test_redirects_are_not_followed_with_the_token(server):
    url, routes, seen = server
    routes[f"GET /v2/images/{IMAGE}"] = reply(302, b"", {"Location": f"{url}/v2/images/elsewhere"})
    routes["GET /v2/images/elsewhere"] = reply(200, json.dumps({"id": "elsewhere"}).encode())
    with pytest.raises(errors.GlanceUnavailable, match="HTTP 302"):
        client(url).get_image(IMAGE)
    assert [path for _, path, _ in seen] == [f"/v2/images/{IMAGE}"]


def test_without_openstacksdk_the_glance_commands_name_the_extra(tmp_path):
    """A Python where ``import openstack`` fails, as without ``pip install 'imgsign[openstack]'``."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    blocker = tmp_path / "openstack"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('openstacksdk is not installed')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    for args in (["verify", "--image", IMAGE], ["upload", __file__, "--key", "k", "--cert-uuid", "c"]):
        proc = subprocess.run([sys.executable, "-m", "imgsign", *args], capture_output=True, text=True, env=env,
                              timeout=60)
        assert proc.returncode == errors.MissingExtra.exit_code, proc.stderr
        assert "pip install 'imgsign[openstack]'" in proc.stderr and "Traceback" not in proc.stderr
