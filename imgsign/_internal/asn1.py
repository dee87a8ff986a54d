"""ASN.1 that ``cryptography`` does not expose, read with ``pyasn1`` (loaded only when needed)."""

from __future__ import annotations

import dataclasses

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


RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
MGF1_OID = "1.2.840.113549.1.1.8"
#: Hash OIDs by the names hashlib and OpenSSL use.
HASH_OIDS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}


@dataclasses.dataclass(frozen=True)
class PssParameters:
    """An RSASSA-PSS key's restrictions (RFC 4055): hash, MGF1 hash (hashlib names), minimum salt length."""

    hash_name: str
    mgf1_hash_name: str
    salt_length: int


def rsassa_pss_parameters(spki_der: bytes) -> PssParameters | None:
    """The parameters of an RSASSA-PSS SubjectPublicKeyInfo; None for any other key or one without them.

    Absent fields take RFC 4055's defaults (SHA-1, MGF1 with SHA-1, 20 bytes of salt).
    """
    from pyasn1.codec.der import decoder
    from pyasn1.error import PyAsn1Error
    from pyasn1_modules import rfc4055, rfc5280

    try:
        spki, _ = decoder.decode(spki_der, asn1Spec=rfc5280.SubjectPublicKeyInfo())
        if str(spki["algorithm"]["algorithm"]) != RSASSA_PSS_OID or not spki["algorithm"]["parameters"].isValue:
            return None
        params, rest = decoder.decode(bytes(spki["algorithm"]["parameters"]), asn1Spec=rfc4055.RSASSA_PSS_params())
        if rest:
            raise PyAsn1Error("trailing data")
        mgf = params["maskGenAlgorithm"]
        if str(mgf["algorithm"]) != MGF1_OID:
            raise UnsupportedAlgorithm(f"RSASSA-PSS key with mask generation function {mgf['algorithm']}, not MGF1")
        mgf_hash, _ = decoder.decode(bytes(mgf["parameters"]), asn1Spec=rfc5280.AlgorithmIdentifier())
        hash_oid, mgf_hash_oid = str(params["hashAlgorithm"]["algorithm"]), str(mgf_hash["algorithm"])
        salt_length = int(params["saltLength"])
        if int(params["trailerField"]) != 1:
            raise UnsupportedAlgorithm("RSASSA-PSS key with a trailer field other than 1")
    except PyAsn1Error as exc:
        raise UnsupportedAlgorithm(f"unreadable RSASSA-PSS key parameters ({str(exc)[:120]})") from None
    return PssParameters(HASH_OIDS.get(hash_oid, hash_oid), HASH_OIDS.get(mgf_hash_oid, mgf_hash_oid), salt_length)


def der_tlv(tag: int, body: bytes) -> bytes:
    """One DER element: ``tag``, definite length, ``body`` (for the few structures built by hand)."""
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def der_children(der: bytes) -> list[bytes]:
    """The encoded elements inside one DER SEQUENCE (each with its own tag and length)."""
    body, children = _der_body(der), []
    while body:
        element = body[: _der_total(body)]
        children.append(element)
        body = body[len(element):]
    return children


def _der_total(der: bytes) -> int:
    if len(der) < 2:
        raise ValueError("truncated DER")
    first = der[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or len(der) < 2 + count:
        raise ValueError("unsupported DER length")
    total = 2 + count + int.from_bytes(der[2:2 + count], "big")
    if total > len(der):
        raise ValueError("truncated DER")
    return total


def _der_body(der: bytes) -> bytes:
    total = _der_total(der)
    header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    return der[header:total]
