"""``imgsign gateway serve`` from this checkout, as its own process on a free 127.0.0.1 port.

The gateway is the code under test: it runs exactly as systemd would start it (the console script,
a ``gateway.conf``), so its memory can be read from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers.common import run_server, start_with_port_retry, tail


@dataclass
class GatewayProcess:
    url: str
    pid: int
    log: Path

    def memory_kib(self, field: str = "VmHWM") -> int:
        """``VmHWM`` (peak resident set) or ``VmRSS`` of the gateway process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def log_text(self) -> str:
        return tail(self.log, 200)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def gateway_process(glance_url: str, *, ca_file: Path | None = None, workdir: Path | None = None,
                    extra: str = "") -> Iterator[GatewayProcess]:
    """Run the gateway in front of ``glance_url`` until the block ends."""
    imgsign = Path(sys.executable).with_name("imgsign")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsign-gateway-")))

        def start(port: int):
            conf = workdir / "gateway.conf"
            conf.write_text(f"[gateway]\nlisten = 127.0.0.1:{port}\nglance_url = {glance_url}\n"
                            + (f"ca_file = {ca_file}\n" if ca_file else "") + extra)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_"))}
            return run_server("gateway", [str(imgsign), "gateway", "serve", "--config", str(conf)], workdir=workdir,
                              env=env, ready=lambda: _listening(port), timeout=30)

        port, proc = start_with_port_retry(start, stack)
        yield GatewayProcess(f"http://127.0.0.1:{port}", proc.pid, workdir / "gateway.log")
