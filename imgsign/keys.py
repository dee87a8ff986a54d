"""Signing and verification keys behind two small interfaces.

:class:`PrivateKey` and :class:`PublicKey` are all the signing and
verification core needs: sign or verify a *digest*.  Keys ``cryptography``
understands run in-process; the binary ``ECC_SECT*`` curves, which
``cryptography`` 47 removed, run through the system OpenSSL
(:mod:`imgsign._internal.openssl`).  Loading picks the backend.
"""

from __future__ import annotations

import abc
import functools

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa, utils

from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import InvalidSignature, PrivateKeyError, UnsupportedAlgorithm

_EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1"


class PublicKey(abc.ABC):
    """A verification key."""

    @property
    @abc.abstractmethod
    def key_type(self) -> KeyType | None:
        """The OpenStack key type, or None if OpenStack cannot express this key."""

    @property
    @abc.abstractmethod
    def key_size(self) -> int:
        """Size in bits (RSA modulus, DSA p, EC field)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Human description, e.g. ``RSA 3072-bit`` or ``EC secp256r1``."""

    @abc.abstractmethod
    def spki_der(self) -> bytes:
        """DER SubjectPublicKeyInfo, to compare keys."""

    @abc.abstractmethod
    def verify_digest(self, signature: bytes, digest: bytes, hash_method: HashMethod) -> None:
        """Return None if ``signature`` signs ``digest``; raise :class:`InvalidSignature` if not."""


class PrivateKey(abc.ABC):
    """A signing key."""

    @property
    @abc.abstractmethod
    def key_type(self) -> KeyType | None:
        """The OpenStack key type, or None if OpenStack cannot express this key."""

    @property
    @abc.abstractmethod
    def key_size(self) -> int:
        """Size in bits."""

    @abc.abstractmethod
    def public_key(self) -> PublicKey:
        """The matching verification key."""

    @abc.abstractmethod
    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """Sign an already computed digest: RSA-PSS (MGF1, maximum salt) or DER DSA/ECDSA."""

    @abc.abstractmethod
    def export_pkcs8_der(self) -> bytes:
        """The unencrypted PKCS#8 DER key, only to hand it to a key manager."""


# --- in-process keys (cryptography) ----------------------------------------------

_PycaPublic = rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey
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


def _describe(key: object) -> str:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, (dsa.DSAPublicKey, dsa.DSAPrivateKey)):
        return f"DSA {key.key_size}-bit"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {key.curve.name}"
    return type(key).__name__.lstrip("_")


class CryptographyPublicKey(PublicKey):
    """A public key ``cryptography`` can use."""

    def __init__(self, key: object) -> None:
        self._key = key

    @property
    def key_type(self) -> KeyType | None:
        return _key_type_of(self._key)

    @property
    def key_size(self) -> int:
        return int(getattr(self._key, "key_size", 0) or getattr(getattr(self._key, "curve", None), "key_size", 0))

    def describe(self) -> str:
        return _describe(self._key)

    def spki_der(self) -> bytes:
        return self._key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

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
            raise PrivateKeyError("the private key is damaged: its signature does not verify with its public key") from None
        return signature


# --- loading ------------------------------------------------------------------------


def is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data[:4096]


def load_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM or DER private key (PKCS#8, PKCS#1, SEC1; optionally encrypted).

    Binary-curve (``ECC_SECT*``) keys go to the OpenSSL backend.
    """
    pem = is_pem(data)
    # RSA key validation costs ~0.1 s for a 3072-bit key on every run; instead every signature is
    # verified right after it is made (CryptographyPrivateKey.sign_digest), which catches a bad key.
    loader = functools.partial(
        serialization.load_pem_private_key if pem else serialization.load_der_private_key,
        unsafe_skip_rsa_key_validation=True,
    )
    if pem and b"ENCRYPTED" in data and passphrase is None:
        raise PrivateKeyError("the private key is encrypted: give its passphrase (--passphrase-file or the prompt)")
    try:
        try:
            key = loader(data, passphrase)
        except TypeError as exc:
            if "not encrypted" in str(exc):
                key = loader(data, None)  # a passphrase for a plain key is harmless
            elif "encrypted" in str(exc):
                raise PrivateKeyError(
                    "the private key is encrypted: give its passphrase (--passphrase-file or the prompt)"
                ) from None
            else:
                raise
    except crypto_exceptions.UnsupportedAlgorithm:
        from imgsign._internal import openssl

        return openssl.load_private_key(data, passphrase, pem=pem)
    except ValueError as exc:
        text = str(exc)
        if passphrase is not None and ("decrypt" in text.lower() or "password" in text.lower()):
            raise PrivateKeyError("cannot decrypt the private key: wrong passphrase") from None
        raise PrivateKeyError(
            f"not a readable {'PEM' if pem else 'DER'} private key ({text.splitlines()[0] if text else 'parse error'})"
        ) from None
    if not isinstance(key, (rsa.RSAPrivateKey, dsa.DSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise UnsupportedAlgorithm(
            f"{_describe(key)} keys cannot sign OpenStack images (use RSA, DSA or an ECC_* curve)"
        )
    return CryptographyPrivateKey(key)


def public_key_from_spki(spki_der: bytes) -> PublicKey:
    """Load a DER SubjectPublicKeyInfo; binary-curve keys go to the OpenSSL backend."""
    try:
        return CryptographyPublicKey(serialization.load_der_public_key(spki_der))
    except crypto_exceptions.UnsupportedAlgorithm:
        pass
    except ValueError as exc:
        raise UnsupportedAlgorithm(f"unreadable public key ({str(exc)[:120]})") from None
    algorithm, curve_oid = spki_algorithm(spki_der)
    if algorithm == _EC_PUBLIC_KEY_OID and curve_oid:
        key_type = KeyType.for_curve_oid(curve_oid)
        if key_type.is_binary_curve:
            from imgsign._internal import openssl

            return openssl.OpenSSLPublicKey(spki_der, key_type)
    raise UnsupportedAlgorithm(f"public key algorithm {algorithm} ({curve_oid or 'no parameters'}) is not supported")


def spki_algorithm(spki_der: bytes) -> tuple[str, str | None]:
    """(algorithm OID, named-curve OID or None) of a DER SubjectPublicKeyInfo."""
    from pyasn1.codec.der import decoder  # pyasn1 loads only for keys cryptography cannot read
    from pyasn1.error import PyAsn1Error
    from pyasn1_modules import rfc5280

    try:
        spki, rest = decoder.decode(spki_der, asn1Spec=rfc5280.SubjectPublicKeyInfo())
    except PyAsn1Error as exc:
        raise UnsupportedAlgorithm(f"unreadable SubjectPublicKeyInfo ({str(exc)[:120]})") from None
    if rest:
        raise UnsupportedAlgorithm("unreadable SubjectPublicKeyInfo (trailing data)")
    algorithm = str(spki["algorithm"]["algorithm"])
    params = spki["algorithm"]["parameters"]
    curve_oid = None
    if algorithm == _EC_PUBLIC_KEY_OID and params.isValue:
        from pyasn1.type import univ

        try:
            curve, _ = decoder.decode(bytes(params), asn1Spec=univ.ObjectIdentifier())
            curve_oid = str(curve)
        except PyAsn1Error:
            curve_oid = None  # explicit curve parameters: not a named curve
    return algorithm, curve_oid
