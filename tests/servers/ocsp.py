"""A real OCSP responder: ``openssl ocsp -port`` over an index.txt made from the test PKI, asked on 127.0.0.1
(OpenSSL 3.0 takes only a port number, so it listens on every interface of the test machine).

:func:`index_line` writes the lines of an ``openssl ca`` database (valid ``V`` or revoked ``R``);
a certificate not in the index is ``unknown`` to the responder.  :func:`responder` runs it and
yields its URL; the port is chosen first, so certificates can name it in authorityInformationAccess
before the responder starts.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from tests.servers.tsa import OPENSSL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%y%m%d%H%M%SZ")


def index_line(cert_path: Path, revoked: datetime.datetime | None = None, reason: str | None = None) -> str:
    """One line of an ``openssl ca`` index for the certificate in ``cert_path``."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    serial = f"{cert.serial_number:X}"
    serial = "0" + serial if len(serial) % 2 else serial
    subject = "/" + "/".join(reversed(cert.subject.rfc4514_string().replace("/", "\\/").split(",")))
    if revoked is None:
        return f"V\t{_stamp(cert.not_valid_after_utc)}\t\t{serial}\tunknown\t{subject}\n"
    when = _stamp(revoked) + (f",{reason}" if reason else "")
    return f"R\t{_stamp(cert.not_valid_after_utc)}\t{when}\t{serial}\tunknown\t{subject}\n"


@contextlib.contextmanager
def responder(index: Path, ca: Path, signer: Path, signer_key: Path, port: int, *, ndays: int = 1,
              log: Path | None = None) -> Iterator[str]:
    """``openssl ocsp`` answering for ``ca`` from ``index``, signing with ``signer``; yields ``http://127.0.0.1:PORT``.

    Ready once it says it waits for connections (a probe connection that sends nothing would hold the
    single-threaded responder until it times out)."""
    log = log or index.with_name(f"ocsp-{port}.log")
    args = [OPENSSL, "ocsp", "-index", str(index), "-port", str(port), "-CA", str(ca),
            "-rsigner", str(signer), "-rkey", str(signer_key), "-ndays", str(ndays)]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while b"waiting for OCSP client connections" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"openssl ocsp did not start on port {port}: {log.read_text()[-400:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()
