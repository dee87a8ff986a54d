"""A real RFC 3161 time-stamping authority on 127.0.0.1: ``openssl ts -reply`` behind a small HTTP responder.

Every ``POST`` body (a TimeStampReq) is handed to ``openssl ts -reply`` with the TSA's key and
certificate; its output (a TimeStampResp) is the answer, ``application/timestamp-reply``.
:func:`issue` makes the certificates the tests need from the test PKI (``certs-test``): a TSA
certificate (extendedKeyUsage timeStamping, critical), short-lived signing certificates, OCSP
responder certificates.  Run it with :func:`tsa` (a context manager yielding the URL).
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The openssl command (installed with the apt packages the tests need).
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

_CONFIG = """\
[tsa]
default_tsa = tsa_config1

[tsa_config1]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
other_policies = 1.3.6.1.4.1.99999.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def load_key(path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
    return key


def issue(out: Path, name: str, issuer_key: Path, issuer_cert: Path, *, not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, eku: list[x509.ObjectIdentifier] | None = None,
          eku_critical: bool = True, ocsp_url: str | None = None, key_usage: str = "sign",
          serial: int | None = None, rsa_bits: int = 2048) -> tuple[Path, Path]:
    """Issue ``out/name.pem`` (with ``out/name.key``, RSA) from the CA ``issuer_key``/``issuer_cert``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = load_key(issuer_key)
    ca_cert = x509.load_pem_x509_certificate(issuer_cert.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, f"imgsign test {name}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imgsign test PKI - NOT FOR PRODUCTION")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(hours=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=key_usage == "sign",
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=eku_critical)
    if ocsp_url:
        builder = builder.add_extension(x509.AuthorityInformationAccess(
            [x509.AccessDescription(x509.AuthorityInformationAccessOID.OCSP,
                                    x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{name}.key", out / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def issue_tsa(out: Path, name: str, issuer_key: Path, issuer_cert: Path, **kwargs: object) -> tuple[Path, Path]:
    """A TSA certificate: extendedKeyUsage timeStamping only, critical (RFC 3161 2.3)."""
    return issue(out, name, issuer_key, issuer_cert, eku=[ExtendedKeyUsageOID.TIME_STAMPING], **kwargs)  # type: ignore[arg-type]


def tsa_handler(key: Path, cert: Path, chain: Path | None, workdir: Path) -> type[BaseHTTPRequestHandler]:
    """A handler answering each POST with ``openssl ts -reply`` (one at a time: the serial file is shared)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "tsa.cnf"
    config.write_text(_CONFIG.format(dir=workdir))
    (workdir / "serial").write_text("01\n")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        #: Every request body received (a test can check the nonce, the imprint, certReq).
        received: ClassVar[list[bytes]] = []

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            query = self.rfile.read(length)
            Handler.received.append(query)
            with lock, tempfile.TemporaryDirectory(dir=workdir) as tmp:
                (Path(tmp) / "query.tsq").write_bytes(query)
                args = [OPENSSL, "ts", "-reply", "-config", str(config), "-queryfile", f"{tmp}/query.tsq",
                        "-inkey", str(key), "-signer", str(cert), "-out", f"{tmp}/reply.tsr"]
                if chain is not None:
                    args += ["-chain", str(chain)]
                done = subprocess.run(args, capture_output=True, timeout=60)
                reply = (Path(tmp) / "reply.tsr").read_bytes() if done.returncode == 0 else b""
            if not reply:
                self.send_response(500)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler


@contextlib.contextmanager
def tsa(key: Path, cert: Path, workdir: Path, chain: Path | None = None) -> Iterator[str]:
    """A TSA signing with ``key``/``cert`` on 127.0.0.1; yields its URL."""
    from tests.conftest import serving

    with serving(tsa_handler(key, cert, chain, workdir)) as url:
        yield url + "/tsa"
