"""ASN.1 that ``cryptography`` does not expose, read with ``pyasn1`` (loaded only when needed)."""

from __future__ import annotations

from imgsign.errors import UnsupportedAlgorithm

EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1"


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
    if algorithm == EC_PUBLIC_KEY_OID and params.isValue:
        from pyasn1.type import univ

        try:
            curve, _ = decoder.decode(bytes(params), asn1Spec=univ.ObjectIdentifier())
            curve_oid = str(curve)
        except PyAsn1Error:
            curve_oid = None  # explicit curve parameters: not a named curve
    return algorithm, curve_oid
