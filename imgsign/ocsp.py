"""OCSP (RFC 6960): the request for one certificate, and what a response proves about it.

Pure: bytes and certificates in, a typed :class:`OcspResult` out, the time passed in.  The I/O
(asking a responder, reading a response stored with the signature) is
:mod:`imgsign._internal.ocsp_client`; how a result counts beside CRLs is
:func:`imgsign.chain.validate_chain`'s.

A response is used only when all of this holds, else :class:`~imgsign.errors.OCSPStatusUnknown`:

* it is a ``successful`` response with exactly one SingleResponse for this certificate (serial
  number, and the hashes of the issuer's name and key, CertID in SHA-1 or SHA-2);
* it is signed by the issuer itself, or by a delegated responder certificate that the issuer
  signed, with extendedKeyUsage id-kp-OCSPSigning, valid now (RFC 6960 4.2.2.2); the signer
  must be named by the response's responderID;
* its nonce, when the response has one, is the request's (a response with no nonce is judged
  by its dates alone: many responders pre-produce answers);
* it is current: ``thisUpdate`` is not after now + :data:`SKEW`, ``nextUpdate`` (or, without
  one, ``thisUpdate`` + :data:`MAX_AGE_WITHOUT_NEXT_UPDATE`) is not before now - :data:`SKEW`;
  a response stored at signing time is also at most :data:`STAPLE_MAX_AGE` old.
"""

from __future__ import annotations

import dataclasses
import datetime
import warnings
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from imgsign import attachments
from imgsign.certificates import describe
from imgsign.errors import OCSPStatusUnknown

#: The image property (or prefix of its parts) holding an OCSP response stored at signing time.
PROPERTY = "imgsign_ocsp_v1"
#: Clock skew allowed on thisUpdate and nextUpdate.
SKEW = datetime.timedelta(minutes=5)
#: A response without nextUpdate is current this long after its thisUpdate.
MAX_AGE_WITHOUT_NEXT_UPDATE = datetime.timedelta(hours=1)
#: A response stored with the signature is used at most this long after its thisUpdate, even when
#: its nextUpdate is later; after that (or after nextUpdate) it is ignored, as if absent.
STAPLE_MAX_AGE = datetime.timedelta(days=7)

# SHA-1 here only identifies a certificate (CertID, RFC 6960 4.1.1), as RFC 5019 responders require.
_CERT_ID_HASHES = (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512(), hashes.SHA224())  # noqa: S303


@dataclasses.dataclass(frozen=True)
class OcspResult:
    """What a verified OCSP response says about one certificate.

    ``status``: ``"good"``, ``"revoked"`` or ``"unknown"``; ``source``: ``"responder"`` (asked now)
    or ``"stored"`` (the response stored with the signature).
    """

    status: str
    this_update: datetime.datetime
    next_update: datetime.datetime | None
    responder: str
    source: str = "responder"
    revocation_time: datetime.datetime | None = None
    revocation_reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        """For ``--json``."""
        return {"status": self.status, "source": self.source, "responder": self.responder,
                "this_update": self.this_update.isoformat(),
                "next_update": self.next_update.isoformat() if self.next_update else None,
                "revocation_time": self.revocation_time.isoformat() if self.revocation_time else None,
                "revocation_reason": self.revocation_reason}


class NotAbout(Exception):
    """The response is well formed but about other certificates (not an error for a stored one)."""


class Stale(Exception):
    """The response is not current (not an error for a stored one: it is ignored)."""


def responder_urls(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs ``cert``'s authorityInformationAccess names (http/https only)."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in access
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
            and d.access_location.value.lower().startswith(("http://", "https://"))]


def make_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes) -> bytes:
    """A DER OCSPRequest for ``cert`` (CertID in SHA-1, as RFC 5019 responders expect) with ``nonce``."""
    from cryptography.hazmat.primitives.serialization import Encoding

    request = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - a CertID
               .add_extension(x509.OCSPNonce(nonce), critical=False).build())
    return request.public_bytes(Encoding.DER)


def properties(response: bytes) -> dict[str, str]:
    """The image properties that store ``response``."""
    return attachments.encode(PROPERTY, response)


def response_from_properties(props: Mapping[str, object]) -> bytes | None:
    """The stored response, None when there is none; :class:`OCSPStatusUnknown` when malformed."""
    return attachments.decode(PROPERTY, props, OCSPStatusUnknown, f"the stored OCSP response ({PROPERTY})")


def check_response(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime.datetime,
                   nonce: bytes | None = None, stored: bool = False) -> OcspResult:
    """What the OCSP response ``der`` proves about ``cert`` (issued by ``issuer``); see the module docstring.

    Raises :class:`OCSPStatusUnknown` for an unusable response, :class:`NotAbout` when it is about
    other certificates and :class:`Stale` when it is not current (both subclasses of neither: the
    caller decides whether they are errors).
    """
    name = describe(cert)
    with warnings.catch_warnings():  # whatever cryptography only warns about in a response makes it unusable
        warnings.simplefilter("error")
        return _check(der, cert, issuer, name, now=now, nonce=nonce, stored=stored)


def _check(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, name: str, *, now: datetime.datetime,
           nonce: bytes | None, stored: bool) -> OcspResult:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except (ValueError, Warning, x509.InvalidVersion) as exc:
        raise OCSPStatusUnknown(f"the OCSP response for {name} is not well formed ({str(exc)[:100]})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPStatusUnknown(f"the OCSP responder for {name} answered {response.response_status.name.lower()}")
    try:
        single = _single_for(response, cert, issuer)
        signer = _signer(response, issuer, now)
        _check_signature(response, signer)
        _check_nonce(response, nonce)
        this_update, next_update = single.this_update_utc, single.next_update_utc
        status = single.certificate_status
        revocation_time = single.revocation_time_utc if status == ocsp.OCSPCertStatus.REVOKED else None
        reason = single.revocation_reason if status == ocsp.OCSPCertStatus.REVOKED else None
        responder = describe(signer)
    except (NotAbout, OCSPStatusUnknown):
        raise
    except Exception as exc:  # noqa: BLE001 - cryptography parses lazily; any failure makes the response unusable
        raise OCSPStatusUnknown(f"the OCSP response for {name} is malformed ({type(exc).__name__}: "
                                f"{str(exc)[:100]})") from None
    if this_update > now + SKEW:
        raise OCSPStatusUnknown(f"the OCSP response for {name} is dated in the future "
                                f"({this_update:%Y-%m-%d %H:%M} UTC)")
    until = next_update if next_update is not None else this_update + MAX_AGE_WITHOUT_NEXT_UPDATE
    if stored:
        until = min(until, this_update + STAPLE_MAX_AGE)
    if now > until + SKEW:
        raise Stale(f"the OCSP response for {name} is stale (current until {until:%Y-%m-%d %H:%M} UTC)")
    return OcspResult(
        {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked"}.get(status, "unknown"),
        this_update, next_update, responder, "stored" if stored else "responder", revocation_time,
        reason.name if reason is not None else None)


def _single_for(response: ocsp.OCSPResponse, cert: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    ids: dict[str, tuple[bytes, bytes]] = {}
    for algorithm in _CERT_ID_HASHES:
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
        ids[algorithm.name] = (request.issuer_name_hash, request.issuer_key_hash)
    found = [single for single in response.responses
             if single.serial_number == cert.serial_number and single.hash_algorithm.name in ids
             and ids[single.hash_algorithm.name] == (single.issuer_name_hash, single.issuer_key_hash)]
    if not found:
        raise NotAbout(f"the OCSP response is not about {describe(cert)}")
    if len(found) > 1:
        raise OCSPStatusUnknown(f"the OCSP response has {len(found)} answers about {describe(cert)}")
    return found[0]


def _names_signer(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return response.responder_key_hash == key_id


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime) -> x509.Certificate:
    """The issuer, or a delegated responder certificate it issued for OCSP signing (RFC 6960 4.2.2.2)."""
    if _names_signer(response, issuer):
        return issuer
    for cert in response.certificates:
        if not _names_signer(response, cert):
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OCSPStatusUnknown(f"the OCSP responder certificate {describe(cert)} is not issued by "
                                    f"{describe(issuer)}") from None
        try:
            purposes = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            purposes = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in purposes:
            raise OCSPStatusUnknown(f"the OCSP responder certificate {describe(cert)} lacks id-kp-OCSPSigning")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise OCSPStatusUnknown(f"the OCSP responder certificate {describe(cert)} is not valid now")
        return cert
    raise OCSPStatusUnknown(f"the OCSP response is signed neither by {describe(issuer)} nor by a responder "
                            f"certificate it carries")


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    data, signature = response.tbs_response_bytes, response.signature
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            if response.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS:
                raise OCSPStatusUnknown("OCSP responses signed with RSASSA-PSS are not supported")
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            raise OCSPStatusUnknown(f"cannot check an OCSP response signed by a {type(key).__name__}")
    except InvalidSignature:
        raise OCSPStatusUnknown(f"the OCSP response does not carry a valid signature of {describe(signer)}") from None


def _check_nonce(response: ocsp.OCSPResponse, nonce: bytes | None) -> None:
    try:
        found = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return
    if nonce is not None and found != nonce:
        raise OCSPStatusUnknown("the OCSP response carries another nonce than the request (replayed)")
