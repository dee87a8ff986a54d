"""Well-formedness of a raw signature value, checked before any crypto runs.

A signature that is not even shaped right for its key (an RSA signature of
the wrong length, an ECDSA/DSA value that is not canonical DER) is reported
as :class:`~imgsign.errors.MalformedSignature`, distinct from a signature
that is well formed but does not match the data.
"""

from __future__ import annotations

from imgsign.algorithms import KeyType
from imgsign.errors import MalformedSignature


def check_signature_value(signature: bytes, key_type: KeyType, key_size: int) -> None:
    """Raise :class:`MalformedSignature` unless ``signature`` is well formed.

    RSA-PSS: exactly the modulus length in bytes.  DSA and ECDSA: a strict,
    canonical DER ``SEQUENCE { INTEGER r, INTEGER s }`` with ``r, s > 0``
    and nothing after it.
    """
    if not signature:
        raise MalformedSignature("the signature is empty")
    if key_type is KeyType.RSA_PSS:
        expected = (key_size + 7) // 8
        if len(signature) != expected:
            raise MalformedSignature(
                f"an RSA-PSS signature for a {key_size}-bit key is {expected} bytes, "
                f"this one is {len(signature)} bytes"
            )
        return
    limit = max_dss_signature_length(key_size)
    if len(signature) > limit:
        raise MalformedSignature(
            f"{key_type.value} signatures for a {key_size}-bit key are at most {limit} bytes, "
            f"this one is {len(signature)} bytes"
        )
    r, s = decode_dss_signature_strict(signature)
    if r <= 0 or s <= 0:
        raise MalformedSignature(f"{key_type.value} signature has a zero or negative r or s")


def max_dss_signature_length(key_size: int) -> int:
    """Longest DER ``SEQUENCE { INTEGER r, INTEGER s }`` for a ``key_size``-bit DSA or EC key.

    ``r`` and ``s`` are below the group order, which has at most ``key_size`` bits (DSA's
    ``q`` is far shorter than ``p``), plus a sign byte; each header is at most 4 bytes.
    """
    integer = (max(key_size, 1) + 7) // 8 + 1
    return 4 + 2 * (4 + integer)


def decode_dss_signature_strict(signature: bytes) -> tuple[int, int]:
    """Decode a DER ``Dss-Sig-Value``/``ECDSA-Sig-Value``; refuse anything non-canonical."""
    from pyasn1.codec.der import decoder, encoder  # loaded only for DSA/ECDSA signatures
    from pyasn1.error import PyAsn1Error
    from pyasn1_modules import rfc3279

    spec = rfc3279.ECDSA_Sig_Value()  # same shape as Dss_Sig_Value
    try:
        value, rest = decoder.decode(signature, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, OverflowError) as exc:
        raise MalformedSignature(
            f"the signature is not a DER SEQUENCE of two INTEGERs ({_short(exc)})"
        ) from None
    if rest:
        raise MalformedSignature(f"the signature has {len(rest)} trailing bytes after its DER value")
    if encoder.encode(value) != signature:
        raise MalformedSignature("the signature is not canonical DER (BER-only encoding)")
    return int(value["r"]), int(value["s"])


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
