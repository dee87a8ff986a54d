"""RFC 3161 timestamps over an image signature: what is imprinted, how the token is stored and checked.

* **What is timestamped:** the signature value itself, the bytes ``img_signature`` decodes to
  (not its base64 text, not the image): the request's messageImprint is
  ``SHA-256`` or ``SHA-512`` of those bytes (rfc3161-client builds requests with these two;
  a token imprinted with ``SHA-384`` is accepted too), with a random 64-bit nonce and
  ``certReq`` true, so the token carries the TSA's certificate.
* **What is stored:** the TimeStampToken (the CMS ContentInfo of the TSA's answer, DER), base64,
  under the image property :data:`PROPERTY` (split over ``imgsign_tst_v1_0..N`` when longer than
  255 characters, :mod:`imgsign.attachments`).  Glance, Nova and cursive ignore properties they do
  not know.
* **What verifying proves:** the token is signed by a TSA certificate that chains to one of the
  TSA trust anchors at the token's genTime, with a critical extendedKeyUsage of exactly
  id-kp-timeStamping, over this signature value; genTime is not in the future.  The result,
  :class:`Timestamp`, says when (genTime, and the interval its accuracy allows) and who.

What a timestamp changes (the signing certificate's dates) is decided by the caller
(:func:`signing_time`); nothing here reads a file or the network
(:mod:`imgsign._internal.tsa_client` fetches tokens).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cryptography import x509

from imgsign import attachments
from imgsign.errors import TimestampError
from imgsign.policy import Policy

if TYPE_CHECKING:
    from rfc3161_client import TimeStampResponse, TimeStampTokenInfo

#: The image property (or prefix of its parts) that holds the token.
PROPERTY = "imgsign_tst_v1"
#: Hashes a request is made with (the names of ``img_signature_hash_method``).
REQUEST_HASHES = ("SHA-256", "SHA-512")
#: A genTime this far in the future of the verifier's clock is still accepted (clock skew).
SKEW = datetime.timedelta(minutes=5)

_IMPRINT_HASHES = {
    "2.16.840.1.101.3.4.2.1": ("SHA-256", hashlib.sha256),
    "2.16.840.1.101.3.4.2.2": ("SHA-384", hashlib.sha384),
    "2.16.840.1.101.3.4.2.3": ("SHA-512", hashlib.sha512),
}


@dataclasses.dataclass(frozen=True)
class Timestamp:
    """A verified timestamp: the signature existed at ``gen_time`` (between ``earliest`` and ``latest``
    once the TSA's stated accuracy is allowed for), said by the TSA ``tsa``."""

    gen_time: datetime.datetime
    earliest: datetime.datetime
    latest: datetime.datetime
    tsa: str
    hash_method: str
    serial_number: int

    def as_dict(self) -> dict[str, object]:
        """For ``--json``."""
        return {"gen_time": self.gen_time.isoformat(), "tsa": self.tsa, "hash_method": self.hash_method,
                "serial_number": self.serial_number}


@dataclasses.dataclass(frozen=True)
class Request:
    """A TimeStampReq ready to send: its DER, and what the answer must match."""

    der: bytes
    nonce: int
    imprint: bytes
    hash_method: str


def make_request(signature: bytes, hash_method: str = "SHA-256") -> Request:
    """A request over ``signature`` (the decoded ``img_signature`` bytes), with a nonce and certReq."""
    import rfc3161_client

    if hash_method not in REQUEST_HASHES:
        raise ValueError(f"a timestamp request is made with {' or '.join(REQUEST_HASHES)}, not {hash_method}")
    algorithm = rfc3161_client.HashAlgorithm.SHA256 if hash_method == "SHA-256" else rfc3161_client.HashAlgorithm.SHA512
    # rfc3161-client draws its own nonce; imgsign reads it back from the request it built.
    request = (rfc3161_client.TimestampRequestBuilder().data(signature).hash_algorithm(algorithm)
               .nonce(nonce=True).cert_request(cert_request=True).build())
    nonce = request.nonce
    if nonce is None:  # pragma: no cover - asked for above
        raise TimestampError("the timestamp request has no nonce")
    digest = hashlib.sha256(signature) if hash_method == "SHA-256" else hashlib.sha512(signature)
    return Request(request.as_bytes(), nonce, digest.digest(), hash_method)


def token_from_response(answer: bytes, request: Request) -> bytes:
    """The TimeStampToken in a TSA's answer to ``request``; :class:`TimestampError` when the answer is
    not a granted response to this very request (status, nonce, imprint, certificate included)."""
    response = _parse_response(answer, "the TSA's answer")
    if response.status != 0:
        text = ": " + "; ".join(response.status_string)[:200] if response.status_string else ""
        raise TimestampError(f"the TSA did not grant the timestamp (status {response.status}{text})")
    info = response.tst_info
    if info.nonce != request.nonce:
        raise TimestampError("the TSA's answer carries another nonce than the request (a replayed or foreign answer)")
    if info.message_imprint.message != request.imprint:
        raise TimestampError("the TSA's answer is over another message imprint than the request")
    if not response.signed_data.certificates:
        raise TimestampError("the TSA's answer does not carry its certificate although certReq was set")
    token: bytes = response.time_stamp_token()
    return token


def properties(token: bytes) -> dict[str, str]:
    """The image properties that store ``token``."""
    return attachments.encode(PROPERTY, token)


def token_from_properties(props: Mapping[str, object]) -> bytes | None:
    """The stored token, None when the image has none; :class:`TimestampError` when malformed."""
    return attachments.decode(PROPERTY, props, TimestampError, f"the timestamp token ({PROPERTY})")


def verify(token: bytes, signature: bytes, roots: Sequence[x509.Certificate], *,
           now: datetime.datetime) -> Timestamp:
    """Check ``token`` over ``signature`` against the TSA trust anchors ``roots``; raise
    :class:`TimestampError` (naming what broke) or return what it proves.

    Every certificate in ``roots`` is trusted (a TSA's own certificate, or a CA above it); the
    intermediates between them and the TSA's certificate travel in the token."""
    import rfc3161_client

    if not roots:
        raise TimestampError("no TSA certificates to check the timestamp token against")
    response = _parse_response(_wrap_token(token), "the timestamp token")
    info = response.tst_info
    oid = info.message_imprint.hash_algorithm.dotted_string
    if oid not in _IMPRINT_HASHES:
        raise TimestampError(f"the timestamp token's imprint uses hash {oid}, not SHA-256/384/512")
    hash_name, hasher = _IMPRINT_HASHES[oid]
    builder = rfc3161_client.VerifierBuilder()
    seen: list[x509.Certificate] = []
    for cert in roots:
        if cert not in seen:
            builder = builder.add_root_certificate(cert)
            seen.append(cert)
    try:
        with warnings.catch_warnings():  # a certificate cryptography only warns about is refused here
            warnings.simplefilter("error")
            builder.build().verify(response, hasher(signature).digest())
    except rfc3161_client.VerificationError as exc:
        raise TimestampError(f"the timestamp token does not verify: {_why(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - the Rust layer raises various types for hostile CMS
        raise TimestampError(f"the timestamp token does not verify ({type(exc).__name__})") from None
    signer = _tsa_certificate(response)
    if signer is None or _purposes(signer) != [x509.oid.ExtendedKeyUsageOID.TIME_STAMPING]:
        raise TimestampError("the timestamp token's TSA certificate is not for time-stamping only "
                             "(RFC 3161 2.3: extendedKeyUsage id-kp-timeStamping alone, critical)")
    gen_time = _utc(info.gen_time)
    if gen_time > now + SKEW:
        raise TimestampError(f"the timestamp token's time {gen_time:%Y-%m-%d %H:%M:%S} UTC is in the future")
    slack = _accuracy(info)
    return Timestamp(gen_time, gen_time - slack, gen_time + slack, _tsa_name(response), hash_name,
                     int(info.serial_number))


def signing_time(timestamp: Timestamp, certificate: x509.Certificate) -> datetime.datetime | None:
    """The moment the signing certificate may be judged at on the strength of ``timestamp``: its
    genTime, when the whole interval the TSA's accuracy allows lies inside the certificate's
    validity; None when it does not (then the timestamp proves nothing about the certificate)."""
    if certificate.not_valid_before_utc <= timestamp.earliest and timestamp.latest <= certificate.not_valid_after_utc:
        return timestamp.gen_time
    return None


@dataclasses.dataclass(frozen=True)
class TimestampCheck:
    """What the image's timestamp token means for one verification (a policy engine reads this).

    ``status``: ``"absent"`` (no token), ``"not-checked"`` (a token, but no TSA trust anchors to
    check it against: it is ignored), or ``"valid"`` (``timestamp`` says what it proves).
    ``judge_at``: the moment the signing certificate and its chain are to be judged at instead of
    now; set only when the certificate is no longer valid now but was at the timestamp.
    """

    status: str
    timestamp: Timestamp | None = None
    judge_at: datetime.datetime | None = None

    def as_dict(self) -> dict[str, object]:
        """For ``--json``."""
        return {"status": self.status, **(self.timestamp.as_dict() if self.timestamp else {}),
                "certificate_judged_at": self.judge_at.isoformat() if self.judge_at else None}


def check(props: Mapping[str, object], signature: bytes, certificate: x509.Certificate,
          roots: Sequence[x509.Certificate], *, now: datetime.datetime) -> TimestampCheck:
    """Read and verify the image's token (if any) over ``signature``; see :class:`TimestampCheck`.

    A token that is present while TSA trust anchors are configured must verify, or this raises
    :class:`TimestampError`: a damaged or foreign token is never silently dropped.
    """
    token = token_from_properties(props)
    if token is None:
        return TimestampCheck("absent")
    if not roots:
        return TimestampCheck("not-checked")
    stamp = verify(token, signature, roots, now=now)
    valid_now = certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
    return TimestampCheck("valid", stamp, None if valid_now else signing_time(stamp, certificate))


def judged_policy(policy: Policy, props: Mapping[str, object], signature: bytes, certificate: x509.Certificate,
                  roots: Sequence[x509.Certificate]) -> Policy:
    """``policy``, with ``certificates_at`` set to the token's genTime when :func:`check` says the
    certificate is to be judged then (an expired certificate, timestamped while valid)."""
    stamp = check(props, signature, certificate, roots, now=policy.now())
    return dataclasses.replace(policy, certificates_at=stamp.judge_at) if stamp.judge_at else policy


# --- DER plumbing ------------------------------------------------------------------------------


def _parse_response(der: bytes, what: str) -> TimeStampResponse:
    import rfc3161_client

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            response = rfc3161_client.decode_timestamp_response(der)
            if response.status == 0:
                response.tst_info.message_imprint  # noqa: B018 - read now, so a bad field fails here
    except Exception as exc:  # noqa: BLE001 - the Rust parser raises ValueError and others on hostile DER
        raise TimestampError(f"{what} is not a well-formed RFC 3161 response ({_why(str(exc))})") from None
    return response


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _wrap_token(token: bytes) -> bytes:
    """A granted TimeStampResp around a stored TimeStampToken: ``SEQUENCE { SEQUENCE { INTEGER 0 }, token }``."""
    body = b"\x30\x03\x02\x01\x00" + token
    return b"\x30" + _der_length(len(body)) + body


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=datetime.timezone.utc) if moment.tzinfo is None else moment


def _accuracy(info: TimeStampTokenInfo) -> datetime.timedelta:
    accuracy = getattr(info, "accuracy", None)
    if accuracy is None:
        return datetime.timedelta(0)
    try:
        seconds = int(accuracy.seconds or 0)
        millis = int(accuracy.millis or 0)
        micros = int(accuracy.micros or 0)
    except (TypeError, ValueError, OverflowError):
        raise TimestampError("the timestamp token's accuracy is malformed") from None
    if not (0 <= seconds <= 86400 and 0 <= millis <= 999 and 0 <= micros <= 999):
        raise TimestampError("the timestamp token's accuracy is out of range (more than a day, or malformed)")
    return datetime.timedelta(seconds=seconds, milliseconds=millis, microseconds=micros)


def _tsa_certificate(response: TimeStampResponse) -> x509.Certificate | None:
    """The certificate the token's one SignerInfo names (issuer and serial number), among those it carries."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            signers = list(response.signed_data.signer_infos)
            if len(signers) != 1:
                return None
            for der in response.signed_data.certificates:
                cert = x509.load_der_x509_certificate(der)
                if cert.issuer == signers[0].issuer and cert.serial_number == signers[0].serial_number:
                    cert.subject.rfc4514_string()
                    for _ in cert.extensions:
                        pass
                    return cert
    except Exception:  # noqa: BLE001 - a certificate that does not parse names nobody
        return None
    return None


def _purposes(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except Exception:  # noqa: BLE001 - absent or malformed: no purpose
        return []


def _tsa_name(response: TimeStampResponse) -> str:
    from imgsign.certificates import describe

    cert = _tsa_certificate(response)
    return describe(cert) if cert is not None else "the TSA"


def _why(text: str) -> str:
    from imgsign._internal.untrusted import safe

    return safe(" ".join(text.split())[:160]) or "no detail"
