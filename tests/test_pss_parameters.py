"""RSA-PSS salt lengths: any salt verifies (like cursive), but an RSASSA-PSS key's parameters are enforced."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, utils

from imgsign import HashMethod, SignatureProperties, errors, load_private_key
from imgsign.keys.inprocess import CryptographyPrivateKey
from tests.conftest import CERT_UUID, cert_of, key_of, openssl, run_cli


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("pss") / "disk.img"
    path.write_bytes(os.urandom(300_000))
    return path


@pytest.fixture(scope="module")
def pss_identity(tmp_path_factory):
    """An RSASSA-PSS key restricted to SHA-256, MGF1-SHA-256, salt >= 32, and its self-signed certificate."""
    work = tmp_path_factory.mktemp("pss-key")
    key, cert = work / "pss.key", work / "pss.pem"
    subprocess.run([openssl(), "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-pkeyopt", "rsa_pss_keygen_md:sha256", "-pkeyopt", "rsa_pss_keygen_mgf1_md:sha256",
                    "-pkeyopt", "rsa_pss_keygen_saltlen:32", "-out", key], check=True, capture_output=True)
    subprocess.run([openssl(), "req", "-x509", "-new", "-key", key, "-subj", "/CN=imgsign RSASSA-PSS signer",
                    "-days", "30", "-addext", "keyUsage=critical,digitalSignature",
                    "-addext", "extendedKeyUsage=codeSigning", "-out", cert], check=True, capture_output=True)
    return key, cert


def signed_with_salt(tmp_path, image, key_path, salt_length, hash_method=HashMethod.SHA256):
    """Properties for ``image`` signed by another signer: PSS with this salt length."""
    key = load_private_key(key_path.read_bytes())
    assert isinstance(key, CryptographyPrivateKey)
    digest = hashlib.new(hash_method.openssl_name, image.read_bytes()).digest()
    signature = key.pyca_key.sign(  # type: ignore[call-arg]
        digest, padding.PSS(mgf=padding.MGF1(hash_method.algorithm), salt_length=salt_length),
        utils.Prehashed(hash_method.algorithm))
    props = tmp_path / f"props-{salt_length}.json"
    props.write_text(SignatureProperties(signature, hash_method, key.key_type, CERT_UUID).to_json())
    return props


def verify(image, props, cert):
    return run_cli("verify", image, "--properties", props, "--cert", cert)


@pytest.mark.parametrize("hash_method", list(HashMethod))
def test_salt_of_digest_length_verifies(tmp_path, image, hash_method):
    """Signatures from signers that use salt = hash length (not the maximum) keep verifying."""
    props = signed_with_salt(tmp_path, image, key_of("RSA-PSS"), hash_method.digest_size, hash_method)
    result = verify(image, props, cert_of("RSA-PSS"))
    assert result.code == 0, result


def test_rsassa_pss_key_within_its_parameters_verifies(tmp_path, image, pss_identity):
    key, cert = pss_identity
    signed = run_cli("sign", image, "--key", key, "--cert-uuid", CERT_UUID)  # maximum salt, SHA-256
    assert signed.code == 0, signed
    props = tmp_path / "props.json"
    props.write_text(signed.stdout)
    assert verify(image, props, cert).code == 0
    assert verify(image, signed_with_salt(tmp_path, image, key, 32), cert).code == 0


def test_rsassa_pss_key_refuses_a_shorter_salt(tmp_path, image, pss_identity):
    key, cert = pss_identity
    result = verify(image, signed_with_salt(tmp_path, image, key, 20), cert)
    assert result.code == errors.KeyTypeMismatch.exit_code, result
    assert "salt is 20 bytes" in result.stderr and "at least 32" in result.stderr


def test_rsassa_pss_key_refuses_another_hash(tmp_path, image, pss_identity):
    key, cert = pss_identity
    signed = run_cli("sign", image, "--key", key, "--cert-uuid", CERT_UUID, "--hash-method", "SHA-384")
    assert signed.code == 0, signed
    props = tmp_path / "props.json"
    props.write_text(signed.stdout)
    result = verify(image, props, cert)
    assert result.code == errors.KeyTypeMismatch.exit_code, result
    assert "SHA256" in result.stderr and "SHA-384" in result.stderr
    json_result = run_cli("verify", image, "--properties", props, "--cert", cert, "--json")
    assert json.loads(json_result.stdout)["reason"] == errors.KeyTypeMismatch.reason


def test_signing_with_a_certificate_refuses_a_hash_its_rsassa_pss_key_forbids(image, pss_identity):
    key, cert = pss_identity
    result = run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", CERT_UUID, "--hash-method", "SHA-512")
    assert result.code == errors.KeyTypeMismatch.exit_code and "SHA-512" in result.stderr, result
    assert run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", CERT_UUID).code == 0
