"""Library round trips: every key type x hash method, tampering, policy, certificate checks."""

from __future__ import annotations

import datetime
import hashlib
import io
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.x509.oid import ExtendedKeyUsageOID

from imgsign import (
    HashMethod, KeyType, Policy, SignatureProperties, Signer, Verifier, VerifyingReader, errors,
    load_certificate, load_private_key, sign, verify_digest, verifying_iter,
)
from imgsign.certificates import certificate_public_key
from imgsign.keys.inprocess import CryptographyPrivateKey
from tests.conftest import CERT_UUID, HASHES, LEAVES, cert_of, key_of, pki

DATA = os.urandom(1024 * 1024 + 7)

_KEYS: dict[str, object] = {}


def signing_key(key_type: str):
    if key_type not in _KEYS:
        _KEYS[key_type] = load_private_key(key_of(key_type).read_bytes())
    return _KEYS[key_type]


def certificate(stem_or_type: str):
    path = cert_of(stem_or_type) if stem_or_type in LEAVES else pki(stem_or_type + ".pem")
    return load_certificate(path.read_bytes())


def tampered(data: bytes) -> list[bytes]:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    return [bytes(flipped), data[:-1], data + b"\0"]


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("key_type", list(LEAVES))
def test_round_trip_every_key_type_and_hash(key_type, hash_name):
    key = signing_key(key_type)
    cert = certificate(key_type)
    props = sign(io.BytesIO(DATA), key, CERT_UUID, HashMethod.parse(hash_name), certificate=cert)
    assert props.key_type is KeyType.parse(key_type)
    parsed = SignatureProperties.from_mapping(props.as_dict())
    Verifier.for_certificate(parsed, cert).verify_data(io.BytesIO(DATA))
    for bad in tampered(DATA):
        with pytest.raises(errors.InvalidSignature, match="does not match"):
            Verifier.for_certificate(parsed, cert).verify_data([bad])


def test_iterable_and_file_give_same_digest():
    key = signing_key("ECC_SECP384R1")
    cert = certificate("ECC_SECP384R1")
    props = sign([DATA[:10], DATA[10:500000], DATA[500000:]], key, CERT_UUID)
    Verifier.for_certificate(props, cert).verify_data(io.BytesIO(DATA))
    verify_digest(props, certificate_public_key(cert), hashlib.sha256(DATA).digest())


def test_signer_incremental_and_digest():
    key = signing_key("RSA-PSS")
    signer = Signer(key, CERT_UUID, HashMethod.SHA512)
    for i in range(0, len(DATA), 4096):
        signer.update(DATA[i:i + 4096])
    props = signer.finalize()
    with pytest.raises(RuntimeError):
        signer.update(b"more")
    public = certificate_public_key(certificate("RSA-PSS"))
    verify_digest(props, public, hashlib.sha512(DATA).digest())
    props2 = Signer(key, CERT_UUID, HashMethod.SHA512).sign_digest(hashlib.sha512(DATA).digest())
    verify_digest(props2, public, hashlib.sha512(DATA).digest())


def test_verifying_iter_passes_data_and_fails_closed():
    key = signing_key("DSA")
    cert = certificate("DSA")
    props = sign([DATA], key, CERT_UUID)
    chunks = [DATA[i:i + 65536] for i in range(0, len(DATA), 65536)]
    assert b"".join(verifying_iter(chunks, Verifier.for_certificate(props, cert))) == DATA
    bad_chunks = list(chunks)
    bad_chunks[3] = b"X" * len(bad_chunks[3])
    seen = []
    with pytest.raises(errors.InvalidSignature):
        for chunk in verifying_iter(bad_chunks, Verifier.for_certificate(props, cert)):
            seen.append(chunk)
    assert len(seen) == len(chunks)  # refused only at the end: the caller must not commit before


def test_verifying_reader():
    key = signing_key("ECC_SECP521R1")
    cert = certificate("ECC_SECP521R1")
    props = sign([DATA], key, CERT_UUID, HashMethod.SHA384)
    with VerifyingReader(io.BytesIO(DATA), Verifier.for_certificate(props, cert)) as reader:
        out = b"".join(iter(lambda: reader.read(100000), b""))
    assert out == DATA and reader.verified and reader.bytes_read == len(DATA)

    reader = VerifyingReader(io.BytesIO(DATA[:-1]), Verifier.for_certificate(props, cert))
    with pytest.raises(errors.InvalidSignature):
        while reader.read(65536):
            pass
    assert not reader.verified

    with pytest.raises(errors.IncompleteVerification, match="before its end"):
        with VerifyingReader(io.BytesIO(DATA), Verifier.for_certificate(props, cert)) as reader:
            reader.read(10)


def test_curve_must_match_key_type():
    """cursive accepts any curve under any ECC_* name; imgsign refuses."""
    props = sign([DATA], signing_key("ECC_SECP384R1"), CERT_UUID)
    lying = SignatureProperties(props.signature, props.hash_method, KeyType.ECC_SECP521R1, CERT_UUID)
    with pytest.raises(errors.KeyTypeMismatch, match="ECC_SECP521R1 is declared.*ECC_SECP384R1"):
        Verifier.for_certificate(lying, certificate("ECC_SECP384R1"))
    with pytest.raises(errors.KeyTypeMismatch, match="no OpenStack key type"):
        Verifier.for_certificate(lying, certificate("leaf-ecc-secp256r1"))


def test_unsupported_curve_cannot_sign():
    key = load_private_key(pki("leaf-ecc-secp256r1.key").read_bytes())
    with pytest.raises(errors.UnsupportedAlgorithm, match="secp256r1"):
        sign([DATA], key, CERT_UUID)


def test_requested_key_type_is_checked():
    with pytest.raises(errors.KeyTypeMismatch, match="requested"):
        Signer(signing_key("RSA-PSS"), CERT_UUID, key_type=KeyType.DSA)


def test_key_must_belong_to_certificate():
    with pytest.raises(errors.CertificateKeyMismatch):
        Signer(signing_key("RSA-PSS"), CERT_UUID, certificate=certificate("leaf-expired"))


@pytest.mark.parametrize("stem", ["leaf-rsa-1024", "leaf-dsa-1024"])
def test_weak_keys_refused_unless_allowed(stem):
    key = load_private_key(pki(stem + ".key").read_bytes())
    cert = certificate(stem)
    with pytest.raises(errors.WeakKey, match="2048-bit minimum"):
        Signer(key, CERT_UUID)
    relaxed = Policy(allow_weak_keys=True)
    props = sign([DATA], key, CERT_UUID, policy=relaxed)
    with pytest.raises(errors.WeakKey):
        Verifier.for_certificate(props, cert)
    Verifier.for_certificate(props, cert, policy=relaxed).verify_data([DATA])


def test_certificate_dates():
    expired = certificate("leaf-expired")
    future = certificate("leaf-not-yet-valid")
    for cert, error, stem in [(expired, errors.CertificateExpired, "leaf-expired"),
                              (future, errors.CertificateNotYetValid, "leaf-not-yet-valid")]:
        key = load_private_key(pki(stem + ".key").read_bytes())
        with pytest.raises(error):
            Signer(key, CERT_UUID, certificate=cert)
        props = sign([DATA], key, CERT_UUID)
        with pytest.raises(error):
            Verifier.for_certificate(props, cert)
        Verifier.for_certificate(props, cert, policy=Policy(ignore_certificate_dates=True)).verify_data([DATA])
    at_2020 = Policy(at=datetime.datetime(2020, 6, 1))
    props = sign([DATA], load_private_key(pki("leaf-expired.key").read_bytes()), CERT_UUID)
    Verifier.for_certificate(props, expired, policy=at_2020).verify_data([DATA])


def test_key_usage_must_allow_digital_signature():
    cert = certificate("leaf-no-digital-signature")
    key = load_private_key(pki("leaf-no-digital-signature.key").read_bytes())
    with pytest.raises(errors.CertificateError, match="digitalSignature"):
        Signer(key, CERT_UUID, certificate=cert)
    props = sign([DATA], key, CERT_UUID)
    with pytest.raises(errors.CertificateError, match="digitalSignature"):
        Verifier.for_certificate(props, cert)


def test_malformed_signature_values():
    cert = certificate("ECC_SECP384R1")
    props = sign([DATA], signing_key("ECC_SECP384R1"), CERT_UUID)
    for blob in (props.signature + b"\0", props.signature[:-1], b"\x30\x00"):
        bad = SignatureProperties(blob, props.hash_method, props.key_type, CERT_UUID)
        with pytest.raises(errors.MalformedSignature):
            Verifier.for_certificate(bad, cert)
    rsa_props = sign([DATA], signing_key("RSA-PSS"), CERT_UUID)
    short = SignatureProperties(rsa_props.signature[1:], rsa_props.hash_method, rsa_props.key_type, CERT_UUID)
    with pytest.raises(errors.MalformedSignature, match="RSA-PSS signature"):
        Verifier.for_certificate(short, certificate("RSA-PSS"))


def test_pss_salt_is_maximum_when_signing_and_any_salt_verifies_like_cursive():
    """imgsign signs with the maximum PSS salt (what old verifiers need); it verifies any
    salt length, as cursive (cryptography with PSS.MAX_LENGTH, i.e. OpenSSL's auto) does."""
    raw = serialization.load_pem_private_key(key_of("RSA-PSS").read_bytes(), None)
    digest = hashlib.sha256(DATA).digest()
    props = sign([DATA], signing_key("RSA-PSS"), CERT_UUID)
    max_salt = raw.key_size // 8 - len(digest) - 2
    raw.public_key().verify(props.signature, digest, padding.PSS(padding.MGF1(hashes.SHA256()), max_salt),
                            utils.Prehashed(hashes.SHA256()))  # raises unless the salt is exactly maximal
    short_salt = raw.sign(digest, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
                          utils.Prehashed(hashes.SHA256()))
    accepted = SignatureProperties(short_salt, HashMethod.SHA256, KeyType.RSA_PSS, CERT_UUID)
    Verifier.for_certificate(accepted, certificate("RSA-PSS")).verify_data([DATA])
    with pytest.raises(errors.InvalidSignature):
        Verifier.for_certificate(accepted, certificate("RSA-PSS")).verify_data([DATA + b"x"])


def test_private_key_formats():
    der = load_private_key(pki("leaf-rsa-pss.key.der").read_bytes())
    assert isinstance(der, CryptographyPrivateKey) and der.key_type is KeyType.RSA_PSS
    load_certificate(pki("leaf-rsa-pss.der").read_bytes())
    passphrase = pki("leaf-rsa-pss-encrypted.passphrase").read_bytes().strip()
    enc = pki("leaf-rsa-pss-encrypted.key").read_bytes()
    assert load_private_key(enc, passphrase).key_type is KeyType.RSA_PSS
    with pytest.raises(errors.PrivateKeyError, match="encrypted"):
        load_private_key(enc)
    with pytest.raises(errors.PrivateKeyError, match="wrong passphrase"):
        load_private_key(enc, b"not-it")
    with pytest.raises(errors.PrivateKeyError, match="not a readable"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(errors.PrivateKeyError):
        load_private_key(b"\x00\x01garbage")
    with pytest.raises(errors.CertificateError, match="not a readable"):
        load_certificate(b"not a certificate")


def test_private_key_repr_has_no_secret():
    for key_type in ("RSA-PSS", "ECC_SECT571K1"):
        key = signing_key(key_type)
        assert "PRIVATE" not in repr(key) and len(repr(key)) < 120


@pytest.mark.parametrize("purposes, allowed", [
    ([ExtendedKeyUsageOID.CODE_SIGNING], True),
    ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], True),
    (None, True),  # no extendedKeyUsage: unrestricted (RFC 5280)
    ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], False),
])
def test_extended_key_usage_must_allow_code_signing(purposes, allowed):
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "eku test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if purposes is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    cert = builder.sign(key, hashes.SHA384())
    signing = CryptographyPrivateKey(key)
    if allowed:
        Signer(signing, CERT_UUID, certificate=cert)
        return
    with pytest.raises(errors.CertificateError, match="serverAuth.*lacks codeSigning"):
        Signer(signing, CERT_UUID, certificate=cert)
    props = sign([DATA], signing, CERT_UUID)
    with pytest.raises(errors.CertificateError, match="codeSigning"):
        Verifier.for_certificate(props, cert)
