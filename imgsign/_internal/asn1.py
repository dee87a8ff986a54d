"""ASN.1 that ``cryptography`` does not expose, read with ``pyasn1`` (loaded only when needed)."""

from __future__ import annotations

import dataclasses

from imgsign.errors import UnsupportedAlgorithm

EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1"
DSA_OID = "1.2.840.10040.4.1"


def spki_algorithm(spki_der: bytes) -> tuple[str, str | None]:
    """(algorithm OID, named-curve OID or None) of a DER SubjectPublicKeyInfo."""
    from pyasn1.codec.der import decoder  # pyasn1 loads only for keys cryptography cannot read
    from pyasn1.error import PyAsn1Error
    from pyasn1_modules import rfc5280

    try:
        spki, rest = decoder.decode(spki_der, asn1Spec=rfc5280.SubjectPublicKeyInfo())
    except (PyAsn1Error, ValueError, TypeError, OverflowError) as exc:  # pyasn1 raises all of these on bad input
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
        except (PyAsn1Error, ValueError, TypeError, OverflowError):
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
    except (PyAsn1Error, ValueError, TypeError, OverflowError) as exc:  # pyasn1 raises all of these on bad input
        raise UnsupportedAlgorithm(f"unreadable RSASSA-PSS key parameters ({str(exc)[:120]})") from None
    return PssParameters(HASH_OIDS.get(hash_oid, hash_oid), HASH_OIDS.get(mgf_hash_oid, mgf_hash_oid), salt_length)


@dataclasses.dataclass(frozen=True)
class DsaSizes:
    """The sizes of a DSA key's domain parameters in bits: ``p`` (the key size) and ``q``."""

    p_bits: int
    q_bits: int


def dsa_sizes(spki_der: bytes) -> DsaSizes:
    """The sizes of the DSA SubjectPublicKeyInfo ``spki_der`` (RFC 3279 §2.3.2: Dss-Parms p, q, g)."""
    from pyasn1.codec.der import decoder
    from pyasn1.error import PyAsn1Error
    from pyasn1_modules import rfc3279, rfc5280

    try:
        spki, rest = decoder.decode(spki_der, asn1Spec=rfc5280.SubjectPublicKeyInfo())
        if rest or str(spki["algorithm"]["algorithm"]) != DSA_OID or not spki["algorithm"]["parameters"].isValue:
            raise PyAsn1Error("not a DSA key with domain parameters")
        params, rest = decoder.decode(bytes(spki["algorithm"]["parameters"]), asn1Spec=rfc3279.Dss_Parms())
        if rest:
            raise PyAsn1Error("trailing data after the DSA parameters")
        p, q = int(params["p"]), int(params["q"])
    except (PyAsn1Error, ValueError, TypeError, OverflowError) as exc:  # pyasn1 raises all of these on bad input
        raise UnsupportedAlgorithm(f"unreadable DSA public key ({str(exc)[:120]})") from None
    if p <= 0 or q <= 0:
        raise UnsupportedAlgorithm("unreadable DSA public key (p or q is not positive)")
    return DsaSizes(p.bit_length(), q.bit_length())


def dsa_spki(p: int, q: int, g: int, y: int) -> bytes:
    """The DER SubjectPublicKeyInfo of the DSA public key ``y`` with domain parameters ``p, q, g``."""
    from pyasn1.codec.der import encoder
    from pyasn1.type import univ

    parameters = der_sequence(*(encoder.encode(univ.Integer(n)) for n in (p, q, g)))
    key: bytes = encoder.encode(univ.Integer(y))
    return der_sequence(signature_algorithm(DSA_OID, parameters), der_element(0x03, b"\x00" + key))


# --- DER of signed objects (certificates, certification requests) ------------------------------------------
#
# These helpers read only DER that imgsign itself just made (with ``cryptography``); they are not parsers of
# untrusted input.


def der_element(tag: int, content: bytes) -> bytes:
    """One DER tag-length-value with a single-byte ``tag``."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def der_sequence(*elements: bytes) -> bytes:
    """A DER SEQUENCE of already encoded ``elements``."""
    return der_element(0x30, b"".join(elements))


def der_sequence_elements(der: bytes) -> list[bytes]:
    """The encoded elements of the DER SEQUENCE ``der`` (each a whole tag-length-value)."""
    if not der or der[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    start, end = _der_header(der, 0)
    if end != len(der):
        raise ValueError("trailing data after a DER SEQUENCE")
    elements = []
    while start < end:
        _, after = _der_header(der, start)
        if after > end:
            raise ValueError("a DER element overruns its SEQUENCE")
        elements.append(der[start:after])
        start = after
    return elements


def _der_header(der: bytes, offset: int) -> tuple[int, int]:
    """(offset of the content, offset after the element) of the element at ``offset``."""
    if offset + 2 > len(der) or der[offset] & 0x1F == 0x1F:
        raise ValueError("truncated DER or a multi-byte tag")
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    if not 0 < count <= 4 or offset + 2 + count > len(der):
        raise ValueError("bad DER length")
    content = offset + 2 + count
    return content, content + int.from_bytes(der[offset + 2 : content], "big")


def der_signed(to_be_signed: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """``SEQUENCE { toBeSigned, signatureAlgorithm, BIT STRING signature }``: an X.509 certificate,
    CRL or PKCS#10 request (RFC 5280 §4.1, RFC 2986 §4)."""
    return der_sequence(to_be_signed, algorithm, der_element(0x03, b"\x00" + signature))


def spki_key_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey bits of a DER SubjectPublicKeyInfo (what a key identifier hashes, RFC 5280 §4.2.1.2)."""
    _, bit_string = der_sequence_elements(spki_der)
    start, _ = _der_header(bit_string, 0)
    return bit_string[start + 1 :]  # skip the unused-bits count


def signature_algorithm(oid: str, parameters: bytes | None = None) -> bytes:
    """A DER AlgorithmIdentifier: ``oid`` with already encoded ``parameters``, or none (absent)."""
    from pyasn1.codec.der import encoder
    from pyasn1.type import univ

    encoded: bytes = encoder.encode(univ.ObjectIdentifier(oid))
    return der_sequence(encoded, *([parameters] if parameters is not None else []))


#: DER NULL, the parameters of the hash and PKCS#1 v1.5 AlgorithmIdentifiers.
DER_NULL = b"\x05\x00"


def rsassa_pss_algorithm(hash_name: str, salt_length: int) -> bytes:
    """The RSASSA-PSS AlgorithmIdentifier with explicit parameters (RFC 4055 §3.1): hash ``hash_name``
    (a key of :data:`HASH_OIDS`' values), MGF1 with the same hash, ``salt_length``, trailer 1."""
    from pyasn1.codec.der import encoder
    from pyasn1.type import univ

    hash_oid = next(oid for oid, name in HASH_OIDS.items() if name == hash_name)
    hash_algorithm = signature_algorithm(hash_oid, DER_NULL)
    salt: bytes = encoder.encode(univ.Integer(salt_length))
    parameters = der_sequence(
        der_element(0xA0, hash_algorithm),
        der_element(0xA1, signature_algorithm(MGF1_OID, hash_algorithm)),
        der_element(0xA2, salt),
    )
    return signature_algorithm(RSASSA_PSS_OID, parameters)
