"""imgsign.glance.pipeline: verify_image and resign, over an in-memory certificate store."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import Verifier, errors, load_certificate, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.keymanager import CertificateStore
from imgsign.glance.pipeline import ORIGINAL_PREFIX, is_signed, resign, verify_image
from imgsign.properties import SignatureProperties
from tests.conftest import cert_of, key_of, pki

DATA = os.urandom(2 * 1024 * 1024 + 7)


class DictStore(CertificateStore):
    description = "test store"

    def __init__(self, certificates: dict[str, bytes]) -> None:
        self.certificates = certificates

    def get_certificate(self, cert_id: str) -> bytes:
        if cert_id not in self.certificates:
            raise errors.ObjectNotFound(f"no object {cert_id}")
        return self.certificates[cert_id]


def der(path) -> bytes:
    return load_certificate(path.read_bytes()).public_bytes(Encoding.DER)


@pytest.fixture
def store():
    return DictStore({"signer": der(cert_of("RSA-PSS")), "root": der(pki("root-ca.pem")),
                      "intermediate": der(pki("intermediate-ca.pem")), "service": der(cert_of("ECC_SECP384R1"))})


@pytest.fixture
def properties():
    return sign([DATA], load_private_key(key_of("RSA-PSS").read_bytes()), "signer", HashMethod.SHA384).as_dict()


def test_verify_image_with_chain(store, properties):
    verified = verify_image([DATA], properties, store, trusted_ids=["root", "intermediate"])
    assert verified.size == len(DATA) and len(verified.chain) == 2
    assert verified.properties.certificate_uuid == "signer" and len(verified.digest) == 48


@pytest.mark.parametrize("change, error", [
    (lambda p, d: (p, d[:-1]), errors.InvalidSignature),
    (lambda p, d: ({k: v for k, v in p.items() if k != "img_signature_key_type"}, d), errors.PropertiesError),
    (lambda p, d: ({**p, "img_signature_certificate_uuid": "missing"}, d), errors.ObjectNotFound),
])
def test_verify_image_refuses(store, properties, change, error):
    changed_properties, data = change(properties, DATA)
    with pytest.raises(error):
        verify_image([data], changed_properties, store)


def test_verify_image_untrusted(store, properties):
    with pytest.raises(errors.UntrustedCertificate):
        verify_image([DATA], properties, store, trusted_ids=["root"])  # intermediate missing


def test_is_signed():
    assert is_signed({"img_signature_hash_method": "SHA-256"}) and not is_signed({"os_distro": "debian"})


def test_resign_keeps_the_original_and_verifies(store, properties):
    original = SignatureProperties.from_mapping(properties)
    converted = DATA + b"converted"
    service_key = load_private_key(key_of("ECC_SECP384R1").read_bytes())
    service_cert = load_certificate(cert_of("ECC_SECP384R1").read_bytes())
    new = resign([converted], service_key, "service", original, certificate=service_cert)
    assert {name: new[ORIGINAL_PREFIX + name] for name in properties} == properties
    fresh = SignatureProperties.from_mapping(new)
    assert fresh.certificate_uuid == "service" and fresh.hash_method is HashMethod.SHA384
    Verifier.for_certificate(fresh, service_cert).verify_data([converted])


def test_resign_returns_none_when_the_data_is_still_the_verified_data(store, properties):
    verified = verify_image([DATA], properties, store)
    service_key = load_private_key(key_of("ECC_SECP384R1").read_bytes())
    assert resign([DATA], service_key, "service", verified.properties, verified_digest=verified.digest) is None
    changed = resign([DATA + b"x"], service_key, "service", verified.properties, verified_digest=verified.digest)
    assert changed is not None and changed["img_signature_certificate_uuid"] == "service"


def test_resign_checks_the_service_key_before_reading(properties):
    original = SignatureProperties.from_mapping(properties)

    def never_read():
        raise AssertionError("data read before the key was checked")
        yield b""  # pragma: no cover

    with pytest.raises(errors.CertificateKeyMismatch):
        resign(never_read(), load_private_key(key_of("DSA").read_bytes()), "service", original,
               certificate=load_certificate(cert_of("ECC_SECP384R1").read_bytes()))


# --- resign to qcow2: the raw-digest statement -----------------------------------------------------


def _qcow2(tmp_path):
    from tests.test_real_images import qemu

    image = tmp_path / "converted.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", image, "16M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x6b 1M 2M", image)
    return image


def _service():
    return (load_private_key(key_of("ECC_SECP384R1").read_bytes()),
            load_certificate(cert_of("ECC_SECP384R1").read_bytes()))


def test_resign_to_qcow2_adds_a_raw_statement_that_names_the_emitted_certificate_id(tmp_path, properties):
    import hashlib
    import subprocess

    from imgsign.certificates import certificate_public_key
    from imgsign.raw_statement import NAMES as RAW_NAMES
    from imgsign.raw_statement import verify_raw_statement

    image = _qcow2(tmp_path)
    key, cert = _service()
    asked = []
    with open(image, "rb") as data:
        new = resign(data, key, lambda: asked.append(1) or "copy-in-project", SignatureProperties.from_mapping(
            properties), certificate=cert, verified_digest=b"\0" * 48)
    assert asked == [1] and new is not None and new["img_signature_certificate_uuid"] == "copy-in-project"
    statement = verify_raw_statement(new, certificate_public_key(cert))  # its message names "copy-in-project"
    raw = tmp_path / "nova.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    assert statement.raw_size == raw.stat().st_size == 16 * 1024 * 1024
    assert statement.raw_sha256 == hashlib.sha256(raw.read_bytes()).digest()
    with open(image, "rb") as data:
        without = resign(data, key, "service", SignatureProperties.from_mapping(properties), raw_digest=False)
    assert without is not None and not set(RAW_NAMES) & set(without)


def test_resign_to_raw_has_no_raw_statement_and_the_id_is_not_asked_when_unchanged(store, properties):
    key, _ = _service()
    verified = verify_image([DATA], properties, store)
    new = resign([DATA + b"x"], key, "service", verified.properties)
    assert new is not None and not [name for name in new if name.startswith("imgsign_raw_v1_")]

    def never() -> str:
        raise AssertionError("certificate id asked for data that is not re-signed")

    assert resign([DATA], key, never, verified.properties, verified_digest=verified.digest) is None


def test_resign_of_qcow2_chunks_cannot_make_the_statement(tmp_path, properties):
    image = _qcow2(tmp_path)
    key, _ = _service()
    original = SignatureProperties.from_mapping(properties)
    with pytest.raises(errors.InputError, match="qcow2 image given as chunks"):
        resign([image.read_bytes()], key, "service", original)
    assert resign([image.read_bytes()], key, "service", original, raw_digest=False) is not None
