"""The gateway's provenance statement: in-toto Statement v1 in a DSSE envelope, in chunked properties.

Real keys and certificates from certs-test/; the DSSE signature is also checked with ``cryptography``
directly over the PAE bytes, as any DSSE verifier does it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imgsign import HashMethod, Signer, errors, load_certificate, load_private_key
from imgsign._internal import chunked
from imgsign.certificates import certificate_public_key
from imgsign.provenance import (
    PAYLOAD_TYPE,
    PREFIX,
    BaseImage,
    Provenance,
    pae,
    parse_envelope,
    read_envelope,
    refuse_envelope_lookalike,
    sign_provenance,
    verify_provenance,
)
from tests.conftest import CERT_UUID, HASHES, cert_of, key_of

IMAGE_ID = "5f1c2a8e-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
BASE = BaseImage("1d2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6", hashlib.sha256(b"base signature").digest(),
                 hashlib.sha256(b"base certificate").digest(), "0c9e4f1a-2b3d-4e5f-8a6b-7c8d9e0f1a2b")
WHEN = datetime.datetime(2026, 12, 6, 3, 0, 0, tzinfo=datetime.timezone.utc)


class Host:
    """One key type's key, certificate, fingerprint and public key."""

    def __init__(self, key_type: str) -> None:
        self.key = load_private_key(key_of(key_type).read_bytes())
        certificate = load_certificate(cert_of(key_type).read_bytes())
        self.der = certificate.public_bytes(serialization.Encoding.DER)
        self.fingerprint = hashlib.sha256(self.der).digest()
        self.public = certificate_public_key(certificate)


HOSTS: dict[str, Host] = {}


def host(key_type: str) -> Host:
    if key_type not in HOSTS:
        HOSTS[key_type] = Host(key_type)
    return HOSTS[key_type]


def signed_image(h: Host, data: bytes, hash_method: HashMethod = HashMethod.SHA256,
                 image_id: str = IMAGE_ID, base: BaseImage | None = BASE) -> dict[str, str]:
    """The properties the gateway sets: img_signature* and the provenance."""
    digest = hashlib.new(hash_method.openssl_name, data).digest()
    signed = Signer(h.key, CERT_UUID, hash_method).sign_digest(digest)
    provenance = Provenance(image_id, hash_method, digest, base, "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
                            "c0ffee00c0ffee00c0ffee00c0ffee00", "compute-1.example", WHEN)
    return {**signed.as_dict(), **sign_provenance(h.key, signed, h.fingerprint, provenance)}


def rewrite_envelope(properties: dict[str, str], change) -> dict[str, str]:
    """The properties with the envelope JSON passed through ``change`` (a dict -> None) and re-chunked."""
    envelope = json.loads(chunked.join_value(properties, PREFIX))
    change(envelope)
    kept = {k: v for k, v in properties.items() if not k.startswith(PREFIX)}
    return {**kept, **chunked.split_value(PREFIX, json.dumps(envelope))}


def rewrite_statement(properties: dict[str, str], change) -> dict[str, str]:
    def edit(envelope: dict) -> None:
        statement = json.loads(base64.b64decode(envelope["payload"]))
        change(statement)
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return rewrite_envelope(properties, edit)


def test_pae_matches_the_dsse_specification() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("", b"") == b"DSSEv1 0  0 "


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("key_type", ["RSA-PSS", "DSA", "ECC_SECP384R1", "ECC_SECP521R1", "ECC_SECT409K1"])
def test_round_trip_every_key_type_and_hash(key_type: str, hash_name: str) -> None:
    h, method = host(key_type), HashMethod.parse(hash_name)
    properties = signed_image(h, b"snapshot bytes", method)
    assert all(len(v) <= 255 for k, v in properties.items() if k.startswith(PREFIX))
    found = verify_provenance(properties, h.public, h.fingerprint, image_id=IMAGE_ID)
    assert found.image_digest == hashlib.new(method.openssl_name, b"snapshot bytes").digest()
    assert (found.base, found.project_id, found.host, found.created_at) == (
        BASE, "c0ffee00c0ffee00c0ffee00c0ffee00", "compute-1.example", WHEN)
    statement = json.loads(parse_envelope(chunked.join_value(properties, PREFIX)).payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": IMAGE_ID, "digest": {method.openssl_name: found.image_digest.hex()}}]


@pytest.mark.parametrize("key_type", ["RSA-PSS", "ECC_SECP384R1"])
def test_the_envelope_is_a_standard_dsse_signature(key_type: str) -> None:
    """Any DSSE verifier checks the signature over the PAE bytes with the key: do so with cryptography."""
    h = host(key_type)
    envelope = json.loads(chunked.join_value(signed_image(h, b"data"), PREFIX))
    assert envelope["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    (entry,) = envelope["signatures"]
    assert entry["keyid"] == hashlib.sha256(h.der).hexdigest()
    message = pae(PAYLOAD_TYPE, base64.b64decode(envelope["payload"]))
    key = load_certificate(cert_of(key_type).read_bytes()).public_key()
    signature = base64.b64decode(entry["sig"])
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256())
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_a_base_that_was_not_signed_is_stated_as_null() -> None:
    h = host("ECC_SECP384R1")
    properties = signed_image(h, b"data", base=None)
    assert verify_provenance(properties, h.public, h.fingerprint).base is None
    assert '"baseImage":null' in base64.b64decode(json.loads(chunked.join_value(properties, PREFIX))["payload"]).decode()


EDITS = {
    "project": lambda s: s["predicate"].__setitem__("projectId", "another-project"),
    "base": lambda s: s["predicate"]["baseImage"].__setitem__("id", "another-base"),
    "base certificate id": lambda s: s["predicate"]["baseImage"].__setitem__("certificateId", "another-cert"),
    "host": lambda s: s["predicate"].__setitem__("host", "compute-2"),
    "subject name": lambda s: s["subject"][0].__setitem__("name", "another-image"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_statement_is_refused(edit: str) -> None:
    h = host("ECC_SECP384R1")
    properties = rewrite_statement(signed_image(h, b"data"), EDITS[edit])
    with pytest.raises(errors.ProvenanceError, match="does not verify"):
        verify_provenance(properties, h.public, h.fingerprint)


def test_the_provenance_of_another_image_is_refused() -> None:
    h = host("ECC_SECP384R1")
    first, second = signed_image(h, b"first image"), signed_image(h, b"second image")
    moved = {**{k: v for k, v in second.items() if not k.startswith(PREFIX)},
             **{k: v for k, v in first.items() if k.startswith(PREFIX)}}
    with pytest.raises(errors.ProvenanceError, match="belongs to another image"):
        verify_provenance(moved, h.public, h.fingerprint)
    with pytest.raises(errors.ProvenanceError, match="names image"):
        verify_provenance(first, h.public, h.fingerprint, image_id="another-image")


def test_another_signers_envelope_is_refused() -> None:
    h, other = host("ECC_SECP384R1"), host("ECC_SECP521R1")
    properties = signed_image(h, b"data")
    with pytest.raises(errors.ProvenanceError, match="signed by key"):
        verify_provenance(properties, h.public, other.fingerprint)
    forged = rewrite_envelope(properties, lambda e: e["signatures"][0].__setitem__("keyid", other.fingerprint.hex()))
    with pytest.raises(errors.ProvenanceError, match="signed by key"):
        verify_provenance(forged, h.public, h.fingerprint)


def test_a_changed_hash_method_is_refused() -> None:
    h = host("RSA-PSS")
    properties = signed_image(h, b"data", HashMethod.SHA256)
    properties["img_signature_hash_method"] = "SHA-512"
    with pytest.raises(errors.ProvenanceError):
        verify_provenance(properties, h.public, h.fingerprint)


def test_missing_extra_and_cut_chunks_are_refused() -> None:
    h = host("RSA-PSS")
    properties = signed_image(h, b"data")
    count = int(properties[PREFIX + "count"])
    assert count >= 2
    cases = {
        "missing": {k: v for k, v in properties.items() if k != f"{PREFIX}{count - 1}"},
        "extra": {**properties, f"{PREFIX}{count}": "x"},
        "leading zero": {**properties, f"{PREFIX}01": "x"},
        "count lowered": {**properties, PREFIX + "count": str(count - 1)},
        "cut": {**properties, f"{PREFIX}0": properties[f"{PREFIX}0"][:-1]},
        "swapped": {**properties, f"{PREFIX}0": properties[f"{PREFIX}1"], f"{PREFIX}1": properties[f"{PREFIX}0"]},
        "no count": {k: v for k, v in properties.items() if k != PREFIX + "count"},
    }
    for name, damaged in cases.items():
        with pytest.raises(errors.ProvenanceError):
            verify_provenance(damaged, h.public, h.fingerprint)
        assert name


def test_no_provenance() -> None:
    h = host("RSA-PSS")
    plain = {k: v for k, v in signed_image(h, b"data").items() if not k.startswith(PREFIX)}
    assert read_envelope(plain) is None
    with pytest.raises(errors.ProvenanceError, match="no provenance"):
        verify_provenance(plain, h.public, h.fingerprint)


def test_the_key_states_nothing_about_an_image_it_did_not_sign() -> None:
    h = host("ECC_SECP384R1")
    signed = Signer(h.key, CERT_UUID, HashMethod.SHA256).sign_digest(hashlib.sha256(b"signed").digest())
    other = Provenance(IMAGE_ID, HashMethod.SHA256, hashlib.sha256(b"other").digest(), None, "i", "p", "h", WHEN)
    with pytest.raises(errors.InvalidSignature):
        sign_provenance(h.key, signed, h.fingerprint, other)


def test_image_data_that_looks_like_a_pae_is_never_signed() -> None:
    with pytest.raises(errors.ProvenanceError, match="pre-authentication"):
        refuse_envelope_lookalike(pae(PAYLOAD_TYPE, b"{}"))
    refuse_envelope_lookalike(b"QFI\xfb\x00\x00\x00\x03")
    refuse_envelope_lookalike(b"")


def test_the_provenance_error_has_its_exit_code() -> None:
    assert errors.ProvenanceError.exit_code == 90
