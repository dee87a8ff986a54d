"""A self-signed certificate for a key ``cryptography`` cannot hold (a key in a token).

``CertificateBuilder`` signs only with its own key objects, so the certificate is built
and signed with a throwaway key of the same family and size (which fixes the signature
AlgorithmIdentifier, RSASSA-PSS salt length included), then its to-be-signed part is
signed again by the real key through :meth:`imgsign.keys.PrivateKey.sign_digest`.
Stopgap until keygen issues certificates with any :class:`~imgsign.keys.PrivateKey`.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from imgsign._internal.asn1 import der_children, der_tlv
from imgsign.algorithms import HashMethod
from imgsign.errors import UnsupportedAlgorithm
from imgsign.keys import PrivateKey

_HASH = HashMethod.SHA256


def self_signed_certificate(key: PrivateKey, subject: x509.Name, days: int) -> bytes:
    """A code-signing certificate for ``key``, self-signed by it (SHA-256); PEM."""
    from imgsign.keygen import _LEAF_KEY_USAGE

    public = serialization.load_der_public_key(key.public_key().spki_der())
    if not isinstance(public, (rsa.RSAPublicKey, dsa.DSAPublicKey, ec.EllipticCurvePublicKey)):
        raise UnsupportedAlgorithm(f"cannot issue a certificate for a {key.public_key().describe()} key")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if isinstance(public, rsa.RSAPublicKey):
        throwaway: rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
            65537, public.key_size)
        draft = builder.sign(throwaway, hashes.SHA256(), rsa_padding=padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH))
    else:
        throwaway = (public.parameters().generate_private_key() if isinstance(public, dsa.DSAPublicKey)
                     else ec.generate_private_key(public.curve))
        draft = builder.sign(throwaway, hashes.SHA256())
    tbs = draft.tbs_certificate_bytes
    _, algorithm, _ = der_children(draft.public_bytes(serialization.Encoding.DER))
    signature = key.sign_digest(_digest(tbs), _HASH)
    der = der_tlv(0x30, tbs + algorithm + der_tlv(0x03, b"\0" + signature))
    certificate = x509.load_der_x509_certificate(der)
    certificate.verify_directly_issued_by(certificate)
    return certificate.public_bytes(serialization.Encoding.PEM)


def _digest(data: bytes) -> bytes:
    hasher = _HASH.new()
    hasher.update(data)
    return hasher.digest()
