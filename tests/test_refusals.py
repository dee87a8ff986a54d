"""Inputs that used to end in an internal error (exit 1) are clean refusals with their own exit codes."""

from __future__ import annotations

import base64
import json
import os

import pytest
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ
from pyasn1_modules import rfc3279, rfc5280

from imgsign import errors, load_certificate
from imgsign.certificates import certificate_spki_der
from imgsign.keys.loading import public_key_from_spki
from tests.conftest import CERT_UUID, cert_of, key_of, run_cli

BINARY = ["ECC_SECT409K1", "ECC_SECT571R1"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(64 * 1024))
    return path


def properties(tmp_path, signature: bytes, key_type: str):
    path = tmp_path / "props.json"
    path.write_text(json.dumps({
        "img_signature": base64.b64encode(signature).decode(), "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": key_type, "img_signature_certificate_uuid": CERT_UUID,
    }))
    return path


def der_signature(integer_bytes: int) -> bytes:
    """A canonical DER ECDSA-Sig-Value whose r and s are ``integer_bytes`` long (positive)."""
    value = rfc3279.ECDSA_Sig_Value()
    value["r"] = int.from_bytes(b"\x7f" + os.urandom(integer_bytes - 1), "big")
    value["s"] = int.from_bytes(b"\x7f" + os.urandom(integer_bytes - 1), "big")
    return encoder.encode(value)


@pytest.mark.parametrize("key_type", BINARY)
@pytest.mark.parametrize("size", [200, 40_000])
def test_oversized_binary_curve_signature_is_malformed(tmp_path, image, key_type, size):
    """Well-formed DER, but far longer than any signature of the key: refused before any crypto."""
    props = properties(tmp_path, der_signature(size), key_type)
    result = run_cli("verify", image, "--properties", props, "--cert", cert_of(key_type))
    assert result.code == errors.MalformedSignature.exit_code, result
    assert "at most" in result.stderr


def test_oversized_binary_curve_key_file_is_a_private_key_error(tmp_path, image):
    big = tmp_path / "big.key"
    big.write_bytes(key_of("ECC_SECT571R1").read_bytes() + b"#" * 70_000)
    result = run_cli("sign", image, "--key", big, "--cert-uuid", CERT_UUID)
    assert result.code == errors.PrivateKeyError.exit_code and "60 KiB" in result.stderr, result


def test_oversized_passphrase_for_binary_curve_key_is_a_private_key_error(tmp_path, image):
    passphrase = tmp_path / "pass"
    passphrase.write_bytes(b"p" * 70_000)
    result = run_cli("sign", image, "--key", key_of("ECC_SECT571R1"), "--passphrase-file", passphrase,
                     "--cert-uuid", CERT_UUID)
    assert result.code == errors.PrivateKeyError.exit_code and "passphrase" in result.stderr, result


def test_oversized_binary_curve_public_key_is_refused():
    spki, _ = decoder.decode(certificate_spki_der(load_certificate(cert_of("ECC_SECT571R1").read_bytes())),
                             asn1Spec=rfc5280.SubjectPublicKeyInfo())
    spki["subjectPublicKey"] = univ.BitString.fromOctetString(b"\x04" + os.urandom(70_000))
    with pytest.raises(errors.UnsupportedAlgorithm, match="bytes"):
        public_key_from_spki(encoder.encode(spki))


@pytest.mark.parametrize("document", [
    "[" * 100_000 + "]" * 100_000,
    '{"img_signature": ' + "[" * 5_000 + "]" * 5_000 + "}",
    '{"img_signature": ' + "7" * 5_000 + "}",
    '{"properties": {"x": -' + "1" * 10_000 + "}}",
], ids=["deep-array", "deep-value", "huge-integer", "huge-negative-integer"])
def test_hostile_properties_json_is_an_input_error(tmp_path, image, document):
    props = tmp_path / "props.json"
    props.write_text(document)
    result = run_cli("verify", image, "--properties", props, "--cert", cert_of("RSA-PSS"))
    assert result.code == errors.InputError.exit_code and "JSON" in result.stderr, result
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("algorithm", "length"), [("RSA", 100_000_000), ("RSA", 512), ("DSA", 2500)])
def test_embedded_key_pair_length_is_bounded(tmp_path, algorithm, length):
    """castellan's create_key_pair on the embedded store: an absurd length is refused at once, not computed."""
    from castellan.common import exception
    from oslo_config import cfg
    from oslo_context import context as oslo_context

    from imgsign.keymanager.embedded import EmbeddedKeyManager

    conf = cfg.ConfigOpts()
    conf(args=[], project="imgsign-test", default_config_files=[])
    manager = EmbeddedKeyManager(conf)
    conf.set_override("path", str(tmp_path / "ks.sqlite3"), group="imgsign_embedded")
    with pytest.raises(exception.KeyManagerError, match="length"):
        manager.create_key_pair(oslo_context.RequestContext(project_id="p"), algorithm, length)
