"""Interop with the openssl command line, both ways, as the OpenStack docs do it."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from imgsign import errors
from tests.conftest import CERT_UUID, LEAVES, cert_of, key_of, openssl, run_cli

CASES = [(kt, h) for kt in LEAVES for h in ("SHA-256", "SHA-384")] + [("RSA-PSS", "SHA-224"), ("RSA-PSS", "SHA-512"),
                                                                      ("ECC_SECT571K1", "SHA-512")]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("interop") / "image.qcow2"
    path.write_bytes(os.urandom(5 * 1024 * 1024 + 99))
    return path


def tamper(image, tmp_path):
    bad = tmp_path / "tampered.img"
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(data)
    return bad


def pss_opts(key_type):
    return ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max"] if key_type == "RSA-PSS" else []


@pytest.mark.parametrize("key_type, hash_name", CASES)
def test_openssl_signature_verifies_with_imgsign(tmp_path, image, key_type, hash_name):
    """The documented manual procedure: openssl dgst -sign, base64 -w 0, properties."""
    dgst = "-" + hash_name.replace("-", "").lower()
    sig = tmp_path / "img.sig"
    cmd = [openssl(), "dgst", dgst, "-sign", str(key_of(key_type)), "-out", str(sig)]
    if key_type == "RSA-PSS":
        cmd += ["-sigopt", "rsa_padding_mode:pss"]  # exactly as the docs: salt length left at openssl's default
    subprocess.run(cmd + [str(image)], check=True)
    props = tmp_path / "props.json"
    props.write_text(json.dumps({
        "img_signature": base64.b64encode(sig.read_bytes()).decode(),
        "img_signature_hash_method": hash_name,
        "img_signature_key_type": key_type,
        "img_signature_certificate_uuid": CERT_UUID,
    }))
    ok = run_cli("verify", image, "--properties", props, "--cert", cert_of(key_type))
    assert ok.code == 0, ok
    bad = run_cli("verify", tamper(image, tmp_path), "--properties", props, "--cert", cert_of(key_type))
    assert bad.code == errors.InvalidSignature.exit_code, bad


@pytest.mark.parametrize("key_type, hash_name", CASES)
def test_imgsign_signature_verifies_with_openssl(tmp_path, image, key_type, hash_name):
    result = run_cli("sign", image, "--key", key_of(key_type), "--cert", cert_of(key_type), "--cert-uuid", CERT_UUID,
                     "--hash-method", hash_name)
    assert result.code == 0, result
    sig = tmp_path / "img.sig"
    sig.write_bytes(base64.b64decode(json.loads(result.stdout)["img_signature"]))
    pub = tmp_path / "pub.pem"
    subprocess.run([openssl(), "x509", "-in", str(cert_of(key_type)), "-pubkey", "-noout", "-out", str(pub)], check=True)
    dgst = "-" + hash_name.replace("-", "").lower()

    def openssl_verify(path):
        return subprocess.run([openssl(), "dgst", dgst, "-verify", str(pub), *pss_opts(key_type),
                               "-signature", str(sig), str(path)], capture_output=True, text=True)

    good = openssl_verify(image)
    assert good.returncode == 0 and "Verified OK" in good.stdout, good
    bad = openssl_verify(tamper(image, tmp_path))
    assert bad.returncode != 0 and "Verification failure" in bad.stdout + bad.stderr
