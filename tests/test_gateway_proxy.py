"""``imgsign gateway serve`` as a proxy: headers, bodies, TLS to Glance, configuration, the missing extra.

The gateway runs as its own process (tests/servers/gateway.py).  Upstream here is a small recording
HTTP(S) server on 127.0.0.1, a stand-in for Glance: these tests check what the gateway does to bytes
on the wire (headers dropped or kept, bodies untouched, certificates verified), which a real Glance
would not report back.  tests/test_gateway_glance.py runs the gateway in front of a real glance-api.
"""

from __future__ import annotations

import datetime
import gzip
import http.client
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import serving
from tests.servers.gateway import gateway_process

pytest.importorskip("aiohttp")

GZIPPED = gzip.compress(b"glance said this, compressed")


class Recorder(BaseHTTPRequestHandler):
    """Records each request (raw path, headers in order, body) and answers with hop-by-hop headers of its own."""

    seen: list[dict] = []
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                data += chunk
            return data
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self) -> None:
        body = self._body()
        Recorder.seen.append({"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                              "body": body})
        self.send_response(200)
        self.send_header("X-Openstack-Request-Id", "req-123")
        self.send_header("Connection", "X-Upstream-Hop")
        self.send_header("X-Upstream-Hop", "must not pass")
        self.send_header("Proxy-Authenticate", "Basic")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(GZIPPED)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(GZIPPED)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _answer


@pytest.fixture()
def recorder():
    Recorder.seen = []
    with serving(Recorder) as url:
        yield url


def _request(gateway_url: str, method: str, path: str, headers: dict[str, str], body=None, *,
             chunked: bool = False) -> http.client.HTTPResponse:
    host, port = gateway_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    if body is not None and not chunked:
        connection.putheader("Content-Length", str(len(body)))
    if chunked:
        connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    if body is not None:
        if chunked:
            for start in range(0, len(body), 1000):
                piece = body[start:start + 1000]
                connection.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            connection.send(b"0\r\n\r\n")
        else:
            connection.send(body)
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


SENT = {
    "X-Auth-Token": "gAAAAAB-user-token",
    "X-Service-Token": "gAAAAAB-service-token",
    "User-Agent": "python-glanceclient keystoneauth1/5.11.0",
    "Content-Type": "application/octet-stream",
    "X-Hop": "named by Connection",
    "Connection": "keep-alive, X-Hop",
    "Keep-Alive": "timeout=30",
    "Proxy-Authorization": "Basic c2VjcmV0",
    "TE": "trailers",
    "Expect": "100-continue",
}
DROPPED = {"x-hop", "connection", "keep-alive", "proxy-authorization", "te", "expect", "transfer-encoding"}


@pytest.mark.parametrize("chunked", [False, True])
def test_requests_pass_as_they_came_without_hop_by_hop_headers(recorder: str, chunked: bool) -> None:
    body = bytes(range(256)) * 200
    path = "/v2/images/abc/file?x=%2F%7e&y=a+b&x=2"
    with gateway_process(recorder) as gateway:
        response = _request(gateway.url, "PUT", path, SENT, body, chunked=chunked)
    assert response.status == 200
    (seen,) = Recorder.seen
    assert (seen["method"], seen["path"], seen["body"]) == ("PUT", path, body)
    names = [name.lower() for name, _ in seen["headers"]]
    got = dict(seen["headers"])
    for name, value in SENT.items():
        if name.lower() not in DROPPED:
            assert got[name] == value, name
    assert not DROPPED & set(names) - ({"transfer-encoding"} if chunked else set())
    # Nothing added that the client did not send (aiohttp's defaults would be Accept, Accept-Encoding).
    assert set(names) <= {n.lower() for n in SENT} | {"host", "content-length", "transfer-encoding"}
    assert got["Host"] == recorder.removeprefix("http://")


def test_answers_pass_as_glance_gave_them(recorder: str) -> None:
    with gateway_process(recorder) as gateway:
        response = _request(gateway.url, "GET", "/v2/images/abc/file", {"X-Auth-Token": "t"})
        head = _request(gateway.url, "HEAD", "/v2/images/abc", {"X-Auth-Token": "t"})
    assert response.status == 200 and response.body == GZIPPED  # not decompressed
    assert response.getheader("Content-Encoding") == "gzip"
    assert response.getheader("X-Openstack-Request-Id") == "req-123"
    for hop in ("X-Upstream-Hop", "Proxy-Authenticate", "Keep-Alive"):
        assert response.getheader(hop) is None, hop
    assert head.status == 200 and head.body == b""
    assert head.getheader("Content-Length") == str(len(GZIPPED))


def test_glance_unreachable_is_a_502_naming_the_cause(tmp_path: Path) -> None:
    with gateway_process("http://127.0.0.1:9") as gateway:
        response = _request(gateway.url, "GET", "/v2/images", {"X-Auth-Token": "secret-token"})
        log = gateway.log_text()
    assert response.status == 502
    assert json.loads(response.body)["error"]["message"].startswith("cannot reach Glance")
    assert "secret-token" not in log


def test_a_request_path_cannot_forge_a_log_line() -> None:
    """The path is logged as the client sent it, percent-decoded: a carriage return (which overwrites the
    line on a terminal) and escape sequences are shown as escapes, never written as they are.  (A decoded
    line feed never reaches a log: aiohttp's router answers such a path 404 itself.)"""
    with gateway_process("http://127.0.0.1:9") as gateway:
        response = _request(gateway.url, "GET", "/v2/images/x%0Dimgsign-gateway:%20ERROR%20forged%1B[31m", {})
        log = gateway.log_text()
    assert response.status == 502
    assert "cannot reach Glance" in log
    assert "\r" not in log and "\x1b" not in log, repr(log)
    assert not [line for line in log.splitlines() if line.startswith("imgsign-gateway: ERROR forged")], log


# --- TLS to Glance ---------------------------------------------------------------------------------------

def _certificate(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, san: str | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tls")
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test Glance CA")])
    ca = _certificate("test Glance CA", ca_key, ca_name, ca_key, ca=True)
    server = _certificate("glance", server_key, ca_name, ca_key, ca=False, san="127.0.0.1")
    files = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return files


@pytest.fixture()
def tls_recorder(tls_files):
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tls_to_glance_is_verified_against_the_ca_file(tls_recorder: str, tls_files) -> None:
    with gateway_process(tls_recorder, ca_file=tls_files["ca"]) as gateway:
        response = _request(gateway.url, "GET", "/v2/images", {"X-Auth-Token": "t"})
    assert response.status == 200 and response.body == GZIPPED
    with gateway_process(tls_recorder) as gateway:  # the system's CAs do not know this one
        refused = _request(gateway.url, "GET", "/v2/images", {"X-Auth-Token": "t"})
        log = gateway.log_text()
    assert refused.status == 502
    assert "certificate is not trusted" in json.loads(refused.body)["error"]["message"]
    assert "certificate verify failed" in log
    assert len(Recorder.seen) == 1  # the refused request never reached Glance


# --- configuration and the extra ---------------------------------------------------------------------------

def _serve(conf: Path, *prelude: str) -> subprocess.CompletedProcess[str]:
    code = "\n".join([*prelude, "import sys", "from imgsign.cli import main",
                      f"sys.argv = ['imgsign', 'gateway', 'serve', '--config', {str(conf)!r}]", "main()"])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("text", "message"), [
    ("[gateway]\nglance_url = https://glance.example\nlisten = 0.0.0.0:9293\n", "loopback"),
    ("[gateway]\nglance_url = https://glance.example\nlisten = 10.1.2.3:9293\n", "loopback"),
    ("[gateway]\nglance_url = http://glance.example:9292\n", "must use https"),
    ("[gateway]\nglance_url = https://user:pw@glance.example\n", "no credentials"),
    ("[gateway]\nglance_url = https://glance.example\nca_file = /nonexistent.pem\n", "ca_file"),
    ("[gateway]\nglance_url = https://glance.example\nread_timeout = -1\n", "read_timeout"),
    ("[gateway]\nglance_url = https://glance.example\nverify = no\n", "unknown [gateway] option"),
    ("[gateway]\n", "glance_url is required"),
    ("no section\n", "cannot read gateway configuration"),
])
def test_a_bad_configuration_is_refused_before_listening(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "gateway.conf"
    conf.write_text(text)
    result = _serve(conf)
    assert result.returncode == 10, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_without_the_extra_the_error_names_it(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.conf"
    conf.write_text("[gateway]\nglance_url = http://127.0.0.1:9\nlisten = 127.0.0.1:1\n")
    result = _serve(conf, "import sys", "sys.modules['aiohttp'] = None")
    assert result.returncode == 41, result.stderr
    assert "imgsign[gateway]" in result.stderr


def test_a_foreign_line_feed_cannot_forge_a_log_line() -> None:
    """What Glance or an image property puts in a message (Glance's answer, ``base_image_ref``) stays on the
    message's line: its line feeds are shown as spaces and escapes, not written."""
    import logging

    from imgsign.cli.gateway import _OneLineFormatter

    record = logging.LogRecord("imgsign.gateway", logging.WARNING, __file__, 1,
                               "base image %s has unusable img_signature* properties", ("x\nimgsign-gateway: ERROR "
                                                                                         "forged\x1b[31m",), None)
    text = _OneLineFormatter("imgsign-gateway: %(levelname)s %(message)s").format(record)
    assert "\n" not in text and "\x1b" not in text, repr(text)
    assert text.startswith("imgsign-gateway: WARNING base image x imgsign-gateway: ERROR forged")
