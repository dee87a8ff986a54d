"""Keys ``cryptography`` can use, signing and verifying in-process."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from imgsign._internal import pyca_dsa
from imgsign._internal.asn1 import PssParameters
from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import InvalidSignature, KeyTypeMismatch, PrivateKeyError, UnsupportedAlgorithm
from imgsign.keys import PrivateKey, PublicKey

if TYPE_CHECKING:
    from typing import TypeAlias

    from cryptography.hazmat.primitives.asymmetric import dsa

    _PycaPrivate: TypeAlias = rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey

_DAMAGED = "the private key is damaged: its signature does not verify with its public key"


def _pss(hash_method: HashMethod) -> padding.PSS:
    # MAX_LENGTH is what cursive verifies with; older verifiers accept nothing else.
    return padding.PSS(mgf=padding.MGF1(hash_method.algorithm), salt_length=padding.PSS.MAX_LENGTH)


def _key_type_of(key: object) -> KeyType | None:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return KeyType.RSA_PSS
    if pyca_dsa.is_public_key(key) or pyca_dsa.is_private_key(key):
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
    if pyca_dsa.is_public_key(key) or pyca_dsa.is_private_key(key):
        return f"DSA {key.key_size}-bit"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {key.curve.name}"
    return type(key).__name__.lstrip("_")


def pss_salt_length(key: rsa.RSAPublicKey, signature: bytes, hash_method: HashMethod) -> int:
    """Salt length of a PSS ``signature`` (MGF1 with ``hash_method``) that already verified with ``key``.

    RFC 8017 EMSA-PSS-VERIFY steps 7-10: unmask DB, then the salt follows the 0x01 after the zeros.
    """
    numbers = key.public_numbers()
    em_bits = key.key_size - 1
    em_len = (em_bits + 7) // 8
    h_len = hash_method.digest_size
    try:
        em = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(em_len, "big")
        masked_db, seed = em[: em_len - h_len - 1], em[em_len - h_len - 1 : -1]
        mask = b"".join(hashlib.new(hash_method.openssl_name, seed + counter.to_bytes(4, "big")).digest()
                        for counter in range(-(-len(masked_db) // h_len)))[: len(masked_db)]
        db = bytearray(a ^ b for a, b in zip(masked_db, mask, strict=True))
        db[0] &= 0xFF >> (8 * em_len - em_bits)
        return len(db) - db.index(1) - 1
    except (OverflowError, ValueError, IndexError):
        raise InvalidSignature("signature verification failed: not a PSS signature of this key") from None


class CryptographyPublicKey(PublicKey):
    """A public key ``cryptography`` can use; an RSASSA-PSS key also keeps its parameters."""

    def __init__(self, key: PublicKeyTypes, pss: PssParameters | None = None) -> None:
        self._key = key
        self._pss = pss

    @property
    def pss_parameters(self) -> PssParameters | None:
        """The restrictions of an RSASSA-PSS key (hash, MGF1 hash, minimum salt), else None."""
        return self._pss

    def check_hash_method(self, hash_method: HashMethod) -> None:
        pss = self._pss
        if pss is None:
            return
        for what, name in (("hash", pss.hash_name), ("MGF1 hash", pss.mgf1_hash_name)):
            if name != hash_method.openssl_name:
                raise KeyTypeMismatch(
                    f"the certificate's RSASSA-PSS key allows only {name.upper()} as its {what}, "
                    f"but img_signature_hash_method is {hash_method.value}"
                )

    @property
    def key_type(self) -> KeyType | None:
        return _key_type_of(self._key)

    @property
    def key_size(self) -> int:
        return int(getattr(self._key, "key_size", 0) or getattr(getattr(self._key, "curve", None), "key_size", 0))

    def describe(self) -> str:
        if self._pss is not None:
            pss = self._pss
            return f"{describe_key(self._key)} RSASSA-PSS ({pss.hash_name.upper()}, salt >= {pss.salt_length})"
        return describe_key(self._key)

    def spki_der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify_digest(self, signature: bytes, digest: bytes, hash_method: HashMethod) -> None:
        self.check_hash_method(hash_method)
        prehashed = utils.Prehashed(hash_method.algorithm)
        key = self._key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, digest, _pss(hash_method), prehashed)  # any salt length, like cursive
                if self._pss is not None:
                    salt = pss_salt_length(key, signature, hash_method)
                    if salt < self._pss.salt_length:
                        raise KeyTypeMismatch(
                            f"the signature's PSS salt is {salt} bytes, the certificate's RSASSA-PSS key "
                            f"requires at least {self._pss.salt_length}"
                        )
            elif pyca_dsa.is_public_key(key):
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
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign_digest_pkcs1v15(self, digest: bytes, hash_method: HashMethod) -> bytes:
        key = self._key
        if not isinstance(key, rsa.RSAPrivateKey):
            return super().sign_digest_pkcs1v15(digest, hash_method)
        prehashed = utils.Prehashed(hash_method.algorithm)
        signature = key.sign(digest, padding.PKCS1v15(), prehashed)
        try:
            key.public_key().verify(signature, digest, padding.PKCS1v15(), prehashed)
        except crypto_exceptions.InvalidSignature:
            raise PrivateKeyError(_DAMAGED) from None
        return signature

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """Sign, then verify the new signature with the public key: a damaged key or a
        computation fault (the RSA-CRT fault attack) never yields a signature that leaks
        the key or fails later in Glance."""
        prehashed = utils.Prehashed(hash_method.algorithm)
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(digest, _pss(hash_method), prehashed)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(digest, ec.ECDSA(prehashed))
        elif pyca_dsa.is_private_key(key):
            signature = key.sign(digest, prehashed)
        else:
            raise UnsupportedAlgorithm(f"cannot sign with a {describe_key(key)} key")
        try:
            self.public_key().verify_digest(signature, digest, hash_method)
        except InvalidSignature:
            raise PrivateKeyError(_DAMAGED) from None
        return signature
