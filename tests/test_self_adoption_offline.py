"""The hook's self-adoption without a Glance: configuration, and Glance endpoints that refuse or hang
(real sockets on 127.0.0.1).  With a real Glance: tests/test_hook_self_adoption.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from imgsign import errors
from tests.test_boot_hook import Host, domain_xml

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
        capture_output=True, text=True, check=True)
    assert probe.stdout.split("\n")[0] == "False []", probe


def test_a_bad_adopt_setting_is_refused(host):
    result = unrecorded_boot(host, "adopt = maybe\n")
    assert result.returncode == errors.InputError.exit_code, result.stderr
    assert "[boot] adopt must be true or false" in result.stderr


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
