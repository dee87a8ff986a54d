"""Shared fixtures: the test PKI, a CLI runner, sample images."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKI = REPO / "certs-test"

#: Leaf certificate file stem per OpenStack key type (certs-test/manifest.json has them all).
LEAVES = {
    "RSA-PSS": "leaf-rsa-pss",
    "DSA": "leaf-dsa",
    "ECC_SECP384R1": "leaf-ecc-secp384r1",
    "ECC_SECP521R1": "leaf-ecc-secp521r1",
    "ECC_SECT409K1": "leaf-ecc-sect409k1",
    "ECC_SECT409R1": "leaf-ecc-sect409r1",
    "ECC_SECT571K1": "leaf-ecc-sect571k1",
    "ECC_SECT571R1": "leaf-ecc-sect571r1",
}
HASHES = ("SHA-224", "SHA-256", "SHA-384", "SHA-512")
CERT_UUID = "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a"


#: Warnings .ci/latest turns into errors where imgsign's own code triggers them (see tests/strict_warnings).
STRICT_WARNING_CATEGORIES = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning",
                             "cryptography.utils.CryptographyDeprecationWarning")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("IMGSIGN_WARNINGS_AS_ERRORS"):
        for category in STRICT_WARNING_CATEGORIES:
            config.addinivalue_line("filterwarnings", rf"error::{category}:imgsign\b")


def pki(name: str) -> Path:
    """Path of a file in certs-test/."""
    path = PKI / name
    assert path.exists(), f"missing test PKI file {path}: run certs-test/generate.py"
    return path


def cert_of(key_type: str) -> Path:
    return pki(LEAVES[key_type] + ".pem")


def key_of(key_type: str) -> Path:
    return pki(LEAVES[key_type] + ".key")


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the openssl command is required for these tests (.ci/run installs it)")
    return path


class CLIResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self) -> dict:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}>"


#: A Python warning as the warnings module prints it: ``path:line: SomeWarning: message``.
PYTHON_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ", re.MULTILINE)


def assert_no_python_warning(stderr: str) -> None:
    """No dependency warning reaches a user (imgsign's own are ``imgsign: warning: ...`` lines)."""
    found = PYTHON_WARNING.search(stderr)
    assert found is None, f"a Python warning reached stderr: {stderr[found.start():][:400] if found else ''}"


def run_cli(*args: object, input: str | None = None, env: dict | None = None, debug: bool = False) -> CLIResult:
    """Run ``imgsign ARGS`` in a subprocess, as a user would; never a traceback (unless ``debug``: then as
    ``imgsign --debug ARGS``, tracebacks on stderr only), never a Python warning."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("IMGSIGN_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "imgsign", *(["--debug"] if debug else []), *map(str, args)],
        capture_output=True, text=True, input=input, env=full_env, timeout=300,
    )
    result = CLIResult(proc)
    assert "Traceback" not in proc.stdout, result
    assert debug or "Traceback" not in proc.stderr, result
    assert_no_python_warning(proc.stderr)
    return result


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory) -> Path:
    """A few MiB of non-trivial bytes (not a multiple of any chunk size)."""
    path = tmp_path_factory.mktemp("images") / "sample.img"
    with open(path, "wb") as handle:
        handle.write(os.urandom(3 * 1024 * 1024 + 12345))
    return path


def intermediate_ca_under_root(spki_der: bytes, subject: str, out: Path) -> Path:
    """Write (PEM, to ``out``) a CA certificate for the public key ``spki_der`` issued by the test root,
    path length 0: an intermediate CA whose key lives elsewhere (a token, transit)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    root = x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())
    root_key = serialization.load_pem_private_key(pki("root-ca.key").read_bytes(), None)
    public = serialization.load_der_public_key(spki_der)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string(subject))
        .issuer_name(root.subject).public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    out.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return out


def assert_ca_key_issues_a_chain(run_keygen, ca_key: str, ca_pem: Path, image: Path, work: Path) -> None:
    """``keygen --ca-cert CA_PEM --ca-key CA_KEY`` (``run_keygen(*args)``, a CLI run) issues a leaf signed
    sha256WithRSAEncryption by the RSA CA key; an image signed with the leaf verifies with the chain
    up to the test root (imgsign's chain validation)."""
    from cryptography import x509

    made = run_keygen("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", work / "leaf.key", "--out-cert",
                      work / "leaf.pem", "--ca-cert", ca_pem, "--ca-key", ca_key)
    assert made.code == 0, made
    leaf = x509.load_pem_x509_certificate((work / "leaf.pem").read_bytes())
    assert leaf.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_SHA256
    signed = run_cli("sign", image, "--key", work / "leaf.key", "--cert", work / "leaf.pem",
                     "--cert-uuid", "00000000-0000-4000-8000-000000000001", "-o", work / "props.json")
    assert signed.code == 0, signed
    verified = run_cli("verify", image, "--properties", work / "props.json", "--cert", work / "leaf.pem",
                       "--trusted-file", pki("root-ca.pem"), "--intermediate", ca_pem)
    assert verified.code == 0, verified


def release(path: str | os.PathLike[str]) -> Path:
    """Clear the immutable flag imgsign seals verified bases with (as root could), so a test can
    change, replace or remove the file; returns the path."""
    from imgsign.compute.protection import set_immutable

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        set_immutable(fd, False)
    finally:
        os.close(fd)
    return Path(path)


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Secrets one test's configuration made imgsign remember (imgsign._internal.redact) are not scrubbed
    from the next test's messages."""
    yield
    from imgsign._internal import redact

    redact.forget()


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 (a free port) by a threaded server in a daemon thread; yields its URL
    and stops the server afterwards (a test's stand-in for a service)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def release_all(root: str | os.PathLike[str]) -> None:
    """Clear the immutable flag of every file under ``root`` (not through links), so it can be removed."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                try:
                    release(path)
                except OSError:
                    pass


def seal_state(path: str | os.PathLike[str]) -> tuple[int, int, bool | None]:
    """(owner, mode bits, immutable flag) of ``path``, read through a descriptor (the flag as ``lsattr`` reads it)."""
    from imgsign.compute import protection

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        return info.st_uid, info.st_mode & 0o7777, protection.is_immutable(fd)
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def _release_sealed_files(request):
    """After a test, clear the immutable flag of every file under its tmp_path, so it can be removed."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    root = request.getfixturevalue("tmp_path")
    yield
    release_all(root)


@pytest.fixture(autouse=True, scope="session")
def _hook_run_dir(tmp_path_factory):
    """The boot hook's snapshots of boot.conf (imgsign.compute.boot_config) go to a directory of the test
    session, not to the machine's /run/imgsign (hooks the tests start inherit the variable)."""
    previous = os.environ.get("IMGSIGN_RUN_DIR")
    os.environ["IMGSIGN_RUN_DIR"] = str(tmp_path_factory.mktemp("imgsign-run") / "run")
    yield
    if previous is None:
        os.environ.pop("IMGSIGN_RUN_DIR", None)
    else:
        os.environ["IMGSIGN_RUN_DIR"] = previous


@pytest.fixture(scope="session")
def keystone(tmp_path_factory):
    """One real Keystone per test session (per pytest-xdist worker), for the servers that need one."""
    from tests.servers.keystone import keystone_server

    with keystone_server(tmp_path_factory.mktemp("keystone")) as server:
        yield server


@pytest.fixture(scope="session")
def barbican_server(tmp_path_factory, keystone):
    """One Barbican behind the session's Keystone (tests/servers/barbican.py)."""
    from tests.servers import barbican

    with barbican.barbican_server(tmp_path_factory.mktemp("barbican"), keystone=keystone) as server:
        yield server
