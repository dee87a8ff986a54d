"""Signing and verification keys behind two small interfaces.

:class:`PrivateKey` and :class:`PublicKey` are all the signing and
verification core needs: sign or verify a *digest*.  This module defines only
the interfaces; the implementations live beside it and never are imported
from here:

* :mod:`imgsign.keys.inprocess`: keys ``cryptography`` can use, in-process;
* :mod:`imgsign._internal.openssl`: the binary ``ECC_SECT*`` curves, which
  ``cryptography`` 47 removed, through the system OpenSSL;
* :mod:`imgsign.keys.pkcs11`: keys that never leave a PKCS#11 token (the
  ``pkcs11`` extra);
* :mod:`imgsign.keys.transit`: keys that never leave an OpenBao/Vault transit
  engine (``hashivault://NAME``).

:mod:`imgsign.keys.loading` sits above both and picks one when it loads a key.
"""

from __future__ import annotations

import abc

from imgsign.algorithms import HashMethod, KeyType


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

    def check_hash_method(self, hash_method: HashMethod) -> None:
        """Raise :class:`~imgsign.errors.KeyTypeMismatch` if the key itself forbids ``hash_method``
        (an RSASSA-PSS key's parameters); most keys allow every hash."""
        return None


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

    def close(self) -> None:
        """Release what the key holds open (a token session); nothing for a key in memory."""
        return None

    def sign_digest_pkcs1v15(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """RSA keys that can: sign ``digest`` as RSASSA-PKCS1-v1_5 (the DigestInfo of ``hash_method``).

        Only certificates and certificate requests use it: cursive checks a CA's signature on a
        certificate as PKCS#1 v1.5 and nothing else, and X.509 verifiers (``cryptography``'s, so
        imgsign's chain validation) accept RSASSA-PSS only with a salt as long as the hash, not the
        maximum salt of :meth:`sign_digest`.  A key that cannot raises
        :class:`~imgsign.errors.MechanismUnsupported`; its certificates are then RSASSA-PSS signed.
        """
        from imgsign.errors import MechanismUnsupported

        raise MechanismUnsupported(f"this {type(self).__name__} cannot sign RSASSA-PKCS1-v1_5")
