"""The OpenStack algorithm names (``img_signature_hash_method`` / ``_key_type``)."""

from __future__ import annotations

import enum
import hashlib

from imgsign.errors import UnsupportedAlgorithm

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:  # cryptography loads only when a key or certificate is used, not to name a hash
    from cryptography.hazmat.primitives import hashes


class HashMethod(enum.Enum):
    """Values of ``img_signature_hash_method``, exactly as OpenStack spells them."""

    SHA224 = "SHA-224"
    SHA256 = "SHA-256"
    SHA384 = "SHA-384"
    SHA512 = "SHA-512"

    @classmethod
    def parse(cls, name: object) -> HashMethod:
        """Return the hash method named exactly ``name`` (case-sensitive, like cursive)."""
        for member in cls:
            if member.value == name:
                return member
        known = ", ".join(m.value for m in cls)
        raise UnsupportedAlgorithm(f"unknown hash method {name!r} (expected one of: {known})")

    @property
    def openssl_name(self) -> str:
        """Name used by hashlib and the ``openssl`` command line (``sha256``)."""
        return self.value.replace("-", "").lower()

    @property
    def algorithm(self) -> hashes.HashAlgorithm:
        """The matching ``cryptography`` hash algorithm object."""
        from cryptography.hazmat.primitives import hashes

        algorithm: hashes.HashAlgorithm = getattr(hashes, self.name)()
        return algorithm

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.openssl_name).digest_size

    def new(self) -> hashlib._Hash:
        """A fresh incremental hash object (OpenSSL-backed hashlib, releases the GIL)."""
        return hashlib.new(self.openssl_name)


class KeyType(enum.Enum):
    """Values of ``img_signature_key_type``: the eight names Nova's API accepts."""

    RSA_PSS = "RSA-PSS"
    DSA = "DSA"
    ECC_SECP384R1 = "ECC_SECP384R1"
    ECC_SECP521R1 = "ECC_SECP521R1"
    ECC_SECT409K1 = "ECC_SECT409K1"
    ECC_SECT409R1 = "ECC_SECT409R1"
    ECC_SECT571K1 = "ECC_SECT571K1"
    ECC_SECT571R1 = "ECC_SECT571R1"

    @classmethod
    def parse(cls, name: object) -> KeyType:
        """Return the key type named exactly ``name`` (case-sensitive, like cursive)."""
        for member in cls:
            if member.value == name:
                return member
        known = ", ".join(m.value for m in cls)
        raise UnsupportedAlgorithm(f"unknown key type {name!r} (expected one of: {known})")

    @classmethod
    def for_curve(cls, curve_name: str) -> KeyType:
        """The ECC key type for a curve name such as ``secp384r1``."""
        try:
            return cls["ECC_" + curve_name.upper()]
        except KeyError:
            raise UnsupportedAlgorithm(
                f"EC curve {curve_name} has no OpenStack key type "
                f"(supported curves: {', '.join(k.curve_name for k in cls if k.curve_name)})"
            ) from None

    @classmethod
    def for_curve_oid(cls, oid: str) -> KeyType:
        """The ECC key type for a named-curve object identifier (dotted string)."""
        for member, member_oid in _CURVE_OIDS.items():
            if member_oid == oid:
                return member
        raise UnsupportedAlgorithm(f"EC curve with OID {oid} has no OpenStack key type")

    @property
    def curve_name(self) -> str | None:
        """``secp384r1`` for ``ECC_SECP384R1``; None for RSA-PSS and DSA."""
        if self.name.startswith("ECC_"):
            return self.name[4:].lower()
        return None

    @property
    def curve_oid(self) -> str | None:
        return _CURVE_OIDS.get(self)

    @property
    def is_binary_curve(self) -> bool:
        """True for the ``ECC_SECT*`` curves, which ``cryptography`` >= 47 cannot use."""
        return self.name.startswith("ECC_SECT")


_CURVE_OIDS: dict[KeyType, str] = {
    KeyType.ECC_SECP384R1: "1.3.132.0.34",
    KeyType.ECC_SECP521R1: "1.3.132.0.35",
    KeyType.ECC_SECT409K1: "1.3.132.0.36",
    KeyType.ECC_SECT409R1: "1.3.132.0.37",
    KeyType.ECC_SECT571K1: "1.3.132.0.38",
    KeyType.ECC_SECT571R1: "1.3.132.0.39",
}
