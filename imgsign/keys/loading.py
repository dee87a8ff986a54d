"""Loading keys: picks the implementation of :mod:`imgsign.keys` that can use a key.

Keys ``cryptography`` can load run in-process (:mod:`imgsign.keys.inprocess`);
the binary ``ECC_SECT*`` curves go to the OpenSSL backend
(:mod:`imgsign._internal.openssl`), and so does DSA once ``cryptography`` has no
DSA (51 deprecates it) or ``IMGSIGN_DSA_BACKEND=openssl`` asks for it
(:func:`uses_openssl`).  This module is the only one that knows both, and the only
one that makes that choice, so neither implementation imports the other or this
one.  Keys named by a reference instead of a file (``pkcs11:`` URIs) go to their
backend through :func:`open_signing_key`, imported only when a reference names it.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from imgsign._internal import pyca_dsa
from imgsign._internal.asn1 import DSA_OID, EC_PUBLIC_KEY_OID, rsassa_pss_parameters, spki_algorithm
from imgsign.algorithms import KeyType
from imgsign.errors import InputError, PrivateKeyError, UnsupportedAlgorithm
from imgsign.keys import PrivateKey, PublicKey
from imgsign.keys.inprocess import CryptographyPrivateKey, CryptographyPublicKey, describe_key

#: DER of OBJECT IDENTIFIER 1.2.840.113549.1.1.10 (id-RSASSA-PSS).
_RSASSA_PSS_DER_OID = bytes.fromhex("06092a864886f70d01010a")

#: ``auto`` (default): DSA runs in ``cryptography`` while it has DSA, else in the system OpenSSL;
#: ``openssl``: DSA always runs in the system OpenSSL (what a ``cryptography`` without DSA will do).
DSA_BACKEND_VARIABLE = "IMGSIGN_DSA_BACKEND"


def uses_openssl(key_type: KeyType) -> bool:
    """Do keys of ``key_type`` go to the system OpenSSL rather than run in ``cryptography``?

    The binary curves always do (``cryptography`` >= 47 cannot use them); DSA does when the
    installed ``cryptography`` has no DSA, or when ``IMGSIGN_DSA_BACKEND=openssl``.
    """
    if key_type.is_binary_curve:
        return True
    if key_type is not KeyType.DSA:
        return False
    choice = os.environ.get(DSA_BACKEND_VARIABLE, "").strip().lower()
    if choice not in ("", "auto", "openssl"):
        raise InputError(f"{DSA_BACKEND_VARIABLE} is auto or openssl, not {choice[:40]!r}")
    return choice == "openssl" or not pyca_dsa.AVAILABLE


def is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data[:4096]


def load_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM or DER private key (PKCS#8, PKCS#1, SEC1; optionally encrypted).

    Binary-curve (``ECC_SECT*``) keys go to the OpenSSL backend.
    """
    from cryptography.hazmat.primitives import serialization

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
            with pyca_dsa.quiet():
                key = loader(data, passphrase)
        except TypeError as exc:
            if "not encrypted" in str(exc):
                with pyca_dsa.quiet():
                    key = loader(data, None)  # a passphrase for a plain key is harmless
            elif "encrypted" in str(exc):
                raise PrivateKeyError(
                    "the private key is encrypted: give its passphrase (--passphrase-file or the prompt)"
                ) from None
            else:
                raise
        if pyca_dsa.is_private_key(key) and uses_openssl(KeyType.DSA):
            raise crypto_exceptions.UnsupportedAlgorithm("DSA goes to the OpenSSL backend")
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
    if not (isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) or pyca_dsa.is_private_key(key)):
        raise UnsupportedAlgorithm(
            f"{describe_key(key)} keys cannot sign OpenStack images (use RSA, DSA or an ECC_* curve)"
        )
    return CryptographyPrivateKey(key)


def public_key_from_spki(spki_der: bytes) -> PublicKey:
    """Load a DER SubjectPublicKeyInfo; binary-curve keys (and DSA, see :func:`uses_openssl`) go to the
    OpenSSL backend."""
    from cryptography.hazmat.primitives import serialization

    try:
        with pyca_dsa.quiet():
            key = serialization.load_der_public_key(spki_der)
        if _RSASSA_PSS_DER_OID in spki_der[:32]:  # pyasn1 loads only for RSASSA-PSS keys
            return CryptographyPublicKey(key, rsassa_pss_parameters(spki_der))
        return public_key_from_pyca(key)
    except crypto_exceptions.UnsupportedAlgorithm:
        pass
    except ValueError as exc:
        raise UnsupportedAlgorithm(f"unreadable public key ({str(exc)[:120]})") from None
    algorithm, curve_oid = spki_algorithm(spki_der)
    if algorithm == DSA_OID and uses_openssl(KeyType.DSA):
        from imgsign._internal import openssl

        return openssl.OpenSSLPublicKey(spki_der, KeyType.DSA)
    if algorithm == EC_PUBLIC_KEY_OID and curve_oid:
        key_type = KeyType.for_curve_oid(curve_oid)
        if key_type.is_binary_curve:
            from imgsign._internal import openssl

            return openssl.OpenSSLPublicKey(spki_der, key_type)
    raise UnsupportedAlgorithm(f"public key algorithm {algorithm} ({curve_oid or 'no parameters'}) is not supported")


def public_key_from_pyca(key: PublicKeyTypes) -> PublicKey:
    """A key ``cryptography`` loaded (from a certificate, say), in the implementation that uses it:
    a DSA key goes to the OpenSSL backend when :func:`uses_openssl` says so."""
    if pyca_dsa.is_public_key(key) and uses_openssl(KeyType.DSA):
        from cryptography.hazmat.primitives import serialization

        from imgsign._internal import openssl

        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return openssl.OpenSSLPublicKey(spki, KeyType.DSA)
    return CryptographyPublicKey(key)


def new_private_key(key_type: KeyType, bits: int) -> PrivateKey:
    """A new private key of ``key_type`` (``bits``: an RSA or DSA key's size; curves ignore it), made
    by ``cryptography`` or, where :func:`uses_openssl`, by the system OpenSSL."""
    if uses_openssl(key_type):
        from imgsign._internal import openssl, openssl_keygen

        return openssl.load_private_key(openssl_keygen.new_key(key_type, bits), None, pem=False)
    if key_type is KeyType.RSA_PSS:
        return CryptographyPrivateKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))
    if key_type is KeyType.DSA:
        return CryptographyPrivateKey(pyca_dsa.generate_private_key(bits))
    curves: dict[KeyType, Callable[[], ec.EllipticCurve]] = {
        KeyType.ECC_SECP384R1: ec.SECP384R1, KeyType.ECC_SECP521R1: ec.SECP521R1,
    }
    return CryptographyPrivateKey(ec.generate_private_key(curves[key_type]()))


# --- keys named by a reference (a hardware token or a signing service) instead of a file ---------

#: Signing-key backends by reference prefix: "prefix": "module" (imported only when a reference uses it).
#: Each module has ``is_reference(text)``, ``open_key(reference, conf, ask_secret)`` and
#: ``generate_key(reference, key_type, bits, conf, ask_secret)``.  Add a backend here.
REFERENCE_BACKENDS: dict[str, str] = {
    "pkcs11:": "imgsign.keys.pkcs11",
    "hashivault://": "imgsign.keys.transit",
}


def _reference_backend(reference: str) -> Any:
    for prefix, module in REFERENCE_BACKENDS.items():
        if reference[: len(prefix)].lower() == prefix:
            return importlib.import_module(module)
    return None


def is_key_reference(text: str) -> bool:
    """Does ``text`` name a key held by a token or a service (a URI) rather than a key file?"""
    return _reference_backend(text) is not None


def open_signing_key(reference: str, *, passphrase: bytes | None = None, conf: Any = None,
                     ask_secret: Callable[[str], str] | None = None) -> PrivateKey:
    """The signing key ``reference`` names: a ``pkcs11:`` URI, a ``hashivault://NAME`` transit key, or
    else a PEM/DER key file.

    ``conf`` is imgsign.conf (oslo.config, or None) for the backends' own sections;
    ``ask_secret`` asks the user for a PIN when none is configured (None: never ask).
    """
    backend = _reference_backend(reference)
    if backend is not None:
        key: PrivateKey = backend.open_key(reference, conf, ask_secret)
        return key
    from imgsign._internal.files import read_small_file

    return load_private_key(read_small_file(reference, "private key"), passphrase)


def generate_signing_key(reference: str, key_type: KeyType, bits: int | None = None, *, conf: Any = None,
                         ask_secret: Callable[[str], str] | None = None) -> PrivateKey:
    """Generate a key pair inside the token or service ``reference`` names; the private key stays there."""
    backend = _reference_backend(reference)
    if backend is None:
        raise InputError(f"{reference[:80]!r} names no token or signing service (pkcs11:token=...;object=... or hashivault://NAME)")
    key: PrivateKey = backend.generate_key(reference, key_type, bits, conf, ask_secret)
    return key
