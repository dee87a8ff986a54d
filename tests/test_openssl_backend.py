"""The OpenSSL fallback for ECC_SECT*: interop with the openssl CLI and clear errors without it."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from imgsign import HashMethod, KeyType, SignatureProperties, Verifier, errors, load_certificate, load_private_key, sign
from imgsign._internal import openssl
from tests.conftest import CERT_UUID, cert_of, key_of, run_cli

SECT = ["ECC_SECT409K1", "ECC_SECT409R1", "ECC_SECT571K1", "ECC_SECT571R1"]
DATA = os.urandom(200_000)


@pytest.fixture(autouse=True)
def _fresh_curve_cache():
    openssl._supported_curves.cache_clear()
    yield
    openssl._supported_curves.cache_clear()


def fake_openssl(tmp_path, curves: str) -> str:
    """An 'openssl' that lists only ``curves`` and fails everything else."""
    script = tmp_path / "openssl"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = ecparam ]; then printf "{curves}"; exit 0; fi\n'
        'echo "fake openssl: unsupported" >&2; exit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize("key_type", SECT)
def test_sect_keys_sign_and_verify_through_openssl(key_type):
    key = load_private_key(key_of(key_type).read_bytes())
    assert isinstance(key, openssl.OpenSSLPrivateKey) and key.key_type is KeyType.parse(key_type)
    props = sign([DATA], key, CERT_UUID, HashMethod.SHA384)
    Verifier.for_certificate(props, load_certificate(cert_of(key_type).read_bytes())).verify_data([DATA])


def test_no_openssl_is_a_clear_error(monkeypatch):
    cert = load_certificate(cert_of("ECC_SECT571R1").read_bytes())
    monkeypatch.setenv("IMGSIGN_OPENSSL", "/nonexistent/openssl")
    with pytest.raises(errors.BackendUnavailable, match="needs the openssl command line for the ECC_SECT"):
        Verifier.for_certificate(
            SignatureProperties(b"\x30\x06\x02\x01\x05\x02\x01\x07", HashMethod.SHA256, KeyType.ECC_SECT571R1, CERT_UUID),
            cert,
        ).verify_data([DATA])
    with pytest.raises(errors.BackendUnavailable):
        load_private_key(key_of("ECC_SECT571R1").read_bytes())


def test_openssl_without_binary_curves(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGSIGN_OPENSSL", fake_openssl(tmp_path, "  secp384r1 : NIST curve\\n  secp521r1 : NIST curve\\n"))
    cert = load_certificate(cert_of("ECC_SECT409K1").read_bytes())
    with pytest.raises(errors.BackendUnavailable, match="built without EC2M"):
        Verifier.for_certificate(
            SignatureProperties(b"\x30\x06\x02\x01\x05\x02\x01\x07", HashMethod.SHA256, KeyType.ECC_SECT409K1, CERT_UUID),
            cert,
        ).verify_data([DATA])


def test_cli_reports_missing_openssl(tmp_path, sample_image):
    result = run_cli("sign", sample_image, "--key", key_of("ECC_SECT409K1"), "--cert-uuid", CERT_UUID,
                     env={"IMGSIGN_OPENSSL": "/nonexistent/openssl"})
    assert result.code == errors.BackendUnavailable.exit_code, result
    assert "openssl" in result.stderr


def test_pipes_not_files():
    """Keys reach openssl through pipes: the child sees /dev/fd paths, nothing is written to disk."""
    path = openssl.executable()
    result = openssl.run(path, ["dgst", "-sha256", "-r", "{0}"], [b"abc"])
    assert result.returncode == 0
    assert result.stdout.split()[0].decode() == hashlib.sha256(b"abc").hexdigest()
    assert b"/dev/fd/" in result.stdout
