"""Loading keys: picks the implementation of :mod:`imgsign.keys` that can use a key.

Keys ``cryptography`` can load run in-process (:mod:`imgsign.keys.inprocess`);
the binary ``ECC_SECT*`` curves go to the OpenSSL fallback
(:mod:`imgsign._internal.openssl`).  This module is the only one that knows
both, so neither implementation imports the other or this one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from imgsign._internal.asn1 import EC_PUBLIC_KEY_OID, rsassa_pss_parameters, spki_algorithm
from imgsign.algorithms import KeyType
from imgsign.errors import PrivateKeyError, UnsupportedAlgorithm
from imgsign.keys import PrivateKey, PublicKey
from imgsign.keys.inprocess import CryptographyPrivateKey, CryptographyPublicKey, describe_key

#: DER of OBJECT IDENTIFIER 1.2.840.113549.1.1.10 (id-RSASSA-PSS).
_RSASSA_PSS_DER_OID = bytes.fromhex("06092a864886f70d01010a")


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
            f"{describe_key(key)} keys cannot sign OpenStack images (use RSA, DSA or an ECC_* curve)"
        )
    return CryptographyPrivateKey(key)


def public_key_from_spki(spki_der: bytes) -> PublicKey:
    """Load a DER SubjectPublicKeyInfo; binary-curve keys go to the OpenSSL backend."""
    try:
        key = serialization.load_der_public_key(spki_der)
        if _RSASSA_PSS_DER_OID in spki_der[:32]:  # pyasn1 loads only for RSASSA-PSS keys
            return CryptographyPublicKey(key, rsassa_pss_parameters(spki_der))
        return CryptographyPublicKey(key)
    except crypto_exceptions.UnsupportedAlgorithm:
        pass
    except ValueError as exc:
        raise UnsupportedAlgorithm(f"unreadable public key ({str(exc)[:120]})") from None
    algorithm, curve_oid = spki_algorithm(spki_der)
    if algorithm == EC_PUBLIC_KEY_OID and curve_oid:
        key_type = KeyType.for_curve_oid(curve_oid)
        if key_type.is_binary_curve:
            from imgsign._internal import openssl

            return openssl.OpenSSLPublicKey(spki_der, key_type)
    raise UnsupportedAlgorithm(f"public key algorithm {algorithm} ({curve_oid or 'no parameters'}) is not supported")


#: imgsign.conf for a key backend, read only when a reference needs it: a callable returning an
#: oslo.config ``ConfigOpts`` (or None: no configuration file).
ConfigSource = Callable[[], Any]


def _no_config() -> None:
    return None


def open_signing_key(reference: str, config: ConfigSource = _no_config) -> PrivateKey | None:
    """The signing key ``reference`` names in a signing service or token, or None when it names none
    (it is a key file: read it and use :func:`load_private_key`).

    Each backend reads its own section of ``config()``; its module is imported only when a
    reference names it.
    """
    if reference.startswith("hashivault://"):  # OpenBao/Vault transit
        from imgsign.keys import transit

        return transit.open_key(reference, transit.settings(getattr(config(), "transit", None)))
    return None


def create_signing_key(reference: str, key_type: KeyType, bits: int | None,
                       config: ConfigSource = _no_config) -> PrivateKey | None:
    """Create a new key where ``reference`` names it (see :func:`open_signing_key`); None for a file."""
    if reference.startswith("hashivault://"):  # OpenBao/Vault transit
        from imgsign.keys import transit

        return transit.generate_key(reference, key_type, bits, transit.settings(getattr(config(), "transit", None)))
    return None
