"""Keys ``cryptography`` can use, signing and verifying in-process."""

from __future__ import annotations

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import InvalidSignature, PrivateKeyError, UnsupportedAlgorithm
from imgsign.keys import PrivateKey, PublicKey

_PycaPrivate = rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey


def _pss(hash_method: HashMethod) -> padding.PSS:
    # MAX_LENGTH is what cursive verifies with; older verifiers accept nothing else.
    return padding.PSS(mgf=padding.MGF1(hash_method.algorithm), salt_length=padding.PSS.MAX_LENGTH)


def _key_type_of(key: object) -> KeyType | None:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return KeyType.RSA_PSS
    if isinstance(key, (dsa.DSAPublicKey, dsa.DSAPrivateKey)):
        return KeyType.DSA
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        try:
            return KeyType.for_curve(key.curve.name)
        except UnsupportedAlgorithm:
            return None
    return None


def describe_key(key: object) -> str:
    """Human description of a cryptography key, e.g. ``RSA 3072-bit`` or ``EC secp256r1``."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, (dsa.DSAPublicKey, dsa.DSAPrivateKey)):
        return f"DSA {key.key_size}-bit"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {key.curve.name}"
    return type(key).__name__.lstrip("_")


class CryptographyPublicKey(PublicKey):
    """A public key ``cryptography`` can use."""

    def __init__(self, key: PublicKeyTypes) -> None:
        self._key = key

    @property
    def key_type(self) -> KeyType | None:
        return _key_type_of(self._key)

    @property
    def key_size(self) -> int:
        return int(getattr(self._key, "key_size", 0) or getattr(getattr(self._key, "curve", None), "key_size", 0))

    def describe(self) -> str:
        return describe_key(self._key)

    def spki_der(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify_digest(self, signature: bytes, digest: bytes, hash_method: HashMethod) -> None:
        prehashed = utils.Prehashed(hash_method.algorithm)
        key = self._key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, digest, _pss(hash_method), prehashed)
            elif isinstance(key, dsa.DSAPublicKey):
                key.verify(signature, digest, prehashed)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, digest, ec.ECDSA(prehashed))
            else:
                raise UnsupportedAlgorithm(f"cannot verify with a {self.describe()} key")
        except crypto_exceptions.InvalidSignature:
            raise InvalidSignature(
                "signature verification failed: the image data does not match the signature"
            ) from None


class CryptographyPrivateKey(PrivateKey):
    """A private key ``cryptography`` can use."""

    def __init__(self, key: _PycaPrivate) -> None:
        self._key = key

    @property
    def key_type(self) -> KeyType | None:
        return _key_type_of(self._key)

    @property
    def key_size(self) -> int:
        return int(getattr(self._key, "key_size", 0) or self._key.curve.key_size)  # type: ignore[union-attr]

    def public_key(self) -> PublicKey:
        return CryptographyPublicKey(self._key.public_key())

    @property
    def pyca_key(self) -> _PycaPrivate:
        """The ``cryptography`` key object (to issue certificates with it)."""
        return self._key

    def __repr__(self) -> str:  # never show key material
        return f"<CryptographyPrivateKey {self.public_key().describe()}>"

    def export_pkcs8_der(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """Sign, then verify the new signature with the public key: a damaged key or a
        computation fault (the RSA-CRT fault attack) never yields a signature that leaks
        the key or fails later in Glance."""
        prehashed = utils.Prehashed(hash_method.algorithm)
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(digest, _pss(hash_method), prehashed)
        elif isinstance(key, dsa.DSAPrivateKey):
            signature = key.sign(digest, prehashed)
        else:
            signature = key.sign(digest, ec.ECDSA(prehashed))
        try:
            self.public_key().verify_digest(signature, digest, hash_method)
        except InvalidSignature:
            raise PrivateKeyError(
                "the private key is damaged: its signature does not verify with its public key"
            ) from None
        return signature
