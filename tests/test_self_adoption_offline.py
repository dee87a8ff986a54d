"""The hook's self-adoption without a Glance: configuration, and Glance endpoints that refuse or hang
(real sockets on 127.0.0.1).  With a real Glance: tests/test_hook_self_adoption.py."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from imgsign import errors
from tests.conftest import cert_of, key_of, run_cli, serving
from tests.test_boot_hook import Host, domain_xml
from tests.test_glance_e2e import _conf, _stored_id
from tests.test_real_images import qemu

TIMEOUT = 3.0
SLACK = 6.0


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung Glance or key manager)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def closed_url() -> str:
    """An http URL on a 127.0.0.1 port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def unrecorded_boot(host: Host, extra_config: str = ""):
    """Boot an instance over a base Nova converted by itself (no record), with ``extra_config`` appended."""
    host.config.write_text(host.config.read_text() + extra_config)
    image_id, _ = host.image(signed=False)
    instance, disk = host.instance(image_id)
    return host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]))


def glance_section(url: str) -> str:
    return f"adopt_timeout = {TIMEOUT:g}\n\n[glance]\nauth_type = admin_token\nendpoint = {url}\ntoken = t\n"


def test_without_glance_credentials_nothing_is_adopted_and_nothing_network_is_loaded(host):
    result = unrecorded_boot(host)
    assert result.returncode == errors.UnsignedImage.exit_code, result.stderr
    assert "has no trust record" in result.stderr and "cannot adopt" not in result.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from imgsign.compute.self_adoption import _Settings; "
         f"s = _Settings.load({str(host.config)!r}); "
         "print(s.enabled, sorted(m for m in ('keystoneauth1', 'oslo_config', 'castellan') if m in sys.modules))"],
        capture_output=True, text=True, check=True, env={**os.environ, "IMGSIGN_RUN_DIR": str(host.run_dir)})
    assert probe.stdout.split("\n")[0] == "False []", probe


def test_a_bad_adopt_setting_is_refused(host):
    result = unrecorded_boot(host, "adopt = maybe\n")
    assert result.returncode == errors.InputError.exit_code, result.stderr
    assert "invalid value for [boot] adopt in" in result.stderr and "expected boolean value" in result.stderr


def test_a_glance_refusing_connections_refuses_the_boot(host):
    result = unrecorded_boot(host, glance_section(closed_url()))
    assert result.returncode == errors.GlanceUnavailable.exit_code, result.stderr
    assert "cannot adopt" in result.stderr and "unavailable" in result.stderr


def test_a_hung_glance_refuses_the_boot_within_adopt_timeout(host):
    with silent_server() as url:
        result = unrecorded_boot(host, glance_section(url))
    assert result.returncode == errors.GlanceUnavailable.exit_code, result.stderr
    assert f"did not answer within {TIMEOUT:g} s" in result.stderr
    assert result.elapsed < TIMEOUT + SLACK, result.elapsed


def test_a_hung_glance_under_warn_allows_the_boot_with_a_warning(host):
    host.configure("warn")
    with silent_server() as url:
        result = unrecorded_boot(host, glance_section(url))
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "did not answer within" in result.stderr
    assert result.elapsed < TIMEOUT + SLACK, result.elapsed


def test_a_percent_sign_in_boot_conf_is_a_plain_character(host, tmp_path):
    """configparser's %-interpolation made a '%' in any [boot] value an internal error (exit 1)."""
    log = tmp_path / "hook-100%.log"
    host.log = log
    host.config.write_text(host.config.read_text().replace(f"log_file = {tmp_path / 'hook.log'}",
                                                           f"log_file = {log}"))
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    result = host.boot(image_id, disk, instance)
    assert result.returncode == 0, result.stderr
    assert host.log_entries()[0]["allowed"]


def test_the_conversion_check_never_blocks_on_a_fifo_or_follows_a_link(tmp_path):
    """Nova's user can put a FIFO or a symbolic link where the base was: refused at once, never a hang."""
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to("/dev/zero")
    script = ("import sys\nfrom imgsign import errors\n"
              "from imgsign.compute.self_adoption import _converted_without_statement as check\n"
              "try:\n    check(sys.argv[1], 'image', {'disk_format': 'qcow2'})\n"
              "except errors.InputError as exc:\n    print(exc.message)\n")
    for path in (fifo, link):
        probe = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                               timeout=20)
        assert probe.returncode == 0 and "base file" in probe.stdout, probe


@contextlib.contextmanager
def trickling_glance(image: dict, data: bytes, every: float) -> Iterator[str]:
    """A real HTTP server answering as Glance's v2 API: the image record at once, its data in 64 KiB
    pieces every ``every`` seconds (a Glance that keeps sending, too slowly: no single read times out)."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == f"/v2/images/{image['id']}":
                body = json.dumps(image).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == f"/v2/images/{image['id']}/file":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for start in range(0, len(data), 1 << 16):
                    try:
                        self.wfile.write(data[start:start + (1 << 16)])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(every)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url


def test_a_download_for_adoption_by_conversion_ends_at_adopt_conversion_timeout(host, tmp_path):
    """Adoption by conversion downloads the image on the hook's thread: a Glance that keeps sending, but
    too slowly, is given up at [boot] adopt_conversion_timeout (70), nothing recorded, nothing left in _base."""
    keystore = tmp_path / "keystore.sqlite3"
    conf = _conf(tmp_path / "user.conf", keystore, "demo")
    cert_id = _stored_id("-c", conf, "cert", "store", cert_of("RSA-PSS"))
    source = tmp_path / "image.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "64M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x4f 0 8M", source)
    signed = run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert-uuid", cert_id, "--no-raw-digest")
    assert signed.code == 0, signed
    image_id = str(uuid.uuid4())
    data = source.read_bytes()
    (host.instances / "_base").mkdir(parents=True)
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, host.base(image_id))  # Nova's conversion
    record = {"id": image_id, "status": "active", "disk_format": "qcow2", "size": len(data), **signed.json()}
    conversion_timeout = 2.0
    with trickling_glance(record, data, every=0.1) as url:  # 8 MiB would take 13 s
        host.config.write_text(host.config.read_text() + "adopt_by_conversion = true\n"
                               f"adopt_conversion_timeout = {conversion_timeout:g}\n" + glance_section(url)
                               + f"\n[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
                                 "[imgsign]\nproject_id = demo\n")
        instance, disk = host.instance(image_id)
        result = host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]))
    assert result.returncode == errors.GlanceUnavailable.exit_code, result.stderr
    assert (f"did not end within {conversion_timeout:g} s ([boot] adopt_conversion_timeout)"
            in result.stderr), result.stderr
    assert result.elapsed < conversion_timeout + SLACK, result.elapsed
    assert not (host.state / "records" / f"{host.base(image_id).name}.json").exists()
    assert sorted(os.listdir(host.instances / "_base")) == [host.base(image_id).name]
