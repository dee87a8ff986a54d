"""The gateway's host key: a key file or a PKCS#11 token key (SoftHSM2), checked at start-up; the
provenance it signs verifies; concurrent signing from worker threads; start-up failures exit with
their codes before anything listens."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import HashMethod, errors, load_certificate
from imgsign.certificates import certificate_public_key
from imgsign.gateway.config import SigningConfig
from imgsign.gateway.host_key import HostSigner
from imgsign.provenance import Provenance, verify_provenance
from tests.conftest import cert_of, key_of, run_cli
from tests.test_pkcs11 import TOKEN, module_path

PIN = "gateway-pin-7731"
CERT_ID = "3a1f0c52-9b7e-4d61-8f2a-6c0d1e2f3a4b"


@pytest.fixture(scope="module")
def token_key(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("gateway-softhsm")
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    module = module_path()
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "so" + PIN],
                   check=True, capture_output=True, env={**os.environ, **env})
    pin_file = work / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    uri = f"pkcs11:token={TOKEN};object=host?module-path={module}&pin-source=file:{pin_file}"
    cert = work / "host.pem"
    result = run_cli("keygen", "--key-type", "ECC_SECP384R1", "--key", uri, "--out-cert", cert, env=env)
    assert result.code == 0, result
    return {"env": env, "uri": uri, "cert": cert, "module": module}


def _provenance(digest: bytes, index: int = 0) -> Provenance:
    import datetime

    return Provenance(f"image-{index}", HashMethod.SHA256, digest, None, "instance-1", "project-1", "host-1",
                      datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc))


def _check(signer: HostSigner, cert: Path, data: bytes, index: int = 0) -> None:
    digest = hashlib.sha256(data).digest()
    signed = signer.sign(digest, CERT_ID)
    assert signed.certificate_uuid == CERT_ID
    properties = {**signed.as_dict(), **signer.provenance_properties(signed, _provenance(digest, index))}
    certificate = load_certificate(cert.read_bytes())
    fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
    found = verify_provenance(properties, certificate_public_key(certificate), fingerprint, image_id=f"image-{index}")
    assert found.image_digest == digest


def _run_alone(body: str, token_key: dict) -> None:
    """Run ``body(key)`` in a process of its own. A PKCS#11 module reads its configuration once per process
    (SoftHSM2 at C_Initialize, and imgsign keeps each module loaded), so in a pytest worker that already
    opened test_pkcs11's token (same label, another PIN) this token would never be seen."""
    spec = json.dumps({"uri": token_key["uri"], "cert": str(token_key["cert"])})
    proc = subprocess.run([sys.executable, "-c", "import json, sys\nfrom tests import test_gateway_host_key as t\n"
                           f"t.{body}(json.loads(sys.argv[1]))", spec],
                          env={**os.environ, **token_key["env"]}, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _signs_from_many_threads(key: dict) -> None:
    cert = Path(key["cert"])
    signer = HostSigner(SigningConfig(key=key["uri"], certificate=str(cert), certificate_id=CERT_ID))
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _check(signer, cert, b"snapshot %d" % i, i), range(16)))
    finally:
        signer.close()


def test_a_token_key_signs_image_and_provenance_also_from_many_threads(token_key) -> None:
    _run_alone("_signs_from_many_threads", token_key)


def test_a_key_file_signs(tmp_path: Path) -> None:
    signer = HostSigner(SigningConfig(key=str(key_of("RSA-PSS")), certificate=str(cert_of("RSA-PSS")),
                                      certificate_id=CERT_ID))
    _check(signer, cert_of("RSA-PSS"), b"data")


def _wrong_pin_and_foreign_certificate(key: dict) -> None:
    wrong = key["uri"].split("&pin-source")[0] + "&pin-value=not-the-pin"
    with pytest.raises(errors.SignerLoginError) as raised:
        HostSigner(SigningConfig(key=wrong, certificate=key["cert"], certificate_id=CERT_ID))
    assert "not-the-pin" not in str(raised.value)
    with pytest.raises(errors.CertificateKeyMismatch):
        HostSigner(SigningConfig(key=str(key_of("ECC_SECP384R1")), certificate=key["cert"], certificate_id=CERT_ID))


def test_a_wrong_pin_and_a_foreign_certificate_stop_the_start(token_key) -> None:
    _run_alone("_wrong_pin_and_foreign_certificate", token_key)


def _serve(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("imgsign")), "gateway", "serve", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("signing", "code", "message"), [
    (f"key = {key_of('ECC_SECP384R1')}\ncertificate = {cert_of('RSA-PSS')}\ncertificate_id = {CERT_ID}\n", 23,
     "does not belong"),
    (f"key = {key_of('RSA-PSS')}\n", 10, "needs certificate"),
    ("key = k\ncertificate = c\ncertificate_id = i\nhash_method = sha256\n", 10, "hash_method"),
    ("key = k\ncertificate = c\ncertificate_id = i\nunmatched = sign\n", 10, "unmatched"),
    ("key = k\ncertificate = c\ncertificate_id = i\npin = 1234\n", 10, "unknown [signing] option"),
    ("key = k\ncertificate = c\ncertificate_id = i\nhost = compute 1\n", 10, "is not a host name"),
    (f"key = /nonexistent.key\ncertificate = {cert_of('RSA-PSS')}\ncertificate_id = {CERT_ID}\n", 10,
     "/nonexistent.key"),
])
def test_signing_settings_are_checked_before_listening(tmp_path: Path, signing: str, code: int, message: str) -> None:
    pytest.importorskip("aiohttp")  # without the extra, serve exits 41 before the key is opened
    conf = tmp_path / "gateway.conf"
    conf.write_text(f"[gateway]\nglance_url = http://127.0.0.1:9\nlisten = 127.0.0.1:1\n\n[signing]\n{signing}")
    result = _serve(conf)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "listening" not in result.stderr
