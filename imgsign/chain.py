"""Certificate chain validation: does the signing certificate chain to a trusted one?

The same question Nova asks with ``trusted_image_certificates`` (cursive's
``verify_certificate``), answered with ``cryptography``'s own RFC 5280 path
builder (``cryptography.x509.verification``) and stricter than cursive:

* every issuer is a CA (basicConstraints cA, keyCertSign when keyUsage is
  present), path lengths hold, and every certificate is valid at the
  evaluation time, trusted ones included;
* issuers signed with RSA-PSS or ECDSA both work;
* the path has a depth limit, so cross-signed CAs that point at each other end
  with an error at once instead of looping (cursive's builder spins forever);
* revocation: every certificate on the path, and a trusted intermediate
  itself, is looked up in the CRLs of its issuer.  A CRL that names a known
  issuer must carry that issuer's valid signature and be current, or the
  check fails closed.  An entry for the certificate in any such CRL whose
  scope includes it means "revoked"; but only a *complete* CRL in scope
  (RFC 5280 §6.3: not a delta CRL, not limited to some reasons, not indirect,
  no unprocessed critical extension, for a CA or an end-entity certificate as
  the issuingDistributionPoint says) satisfies ``require_crls``.

Like every check here it takes objects, never paths or key-manager ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.x509 import verification

from imgsign._internal import known_warnings, pyca_dsa
from imgsign.certificates import check_serials, describe
from imgsign.errors import (
    CertificateError,
    CertificateRevoked,
    OCSPStatusUnknown,
    OCSPUnavailable,
    UntrustedCertificate,
)
from imgsign.policy import DEFAULT_POLICY, Policy

if TYPE_CHECKING:
    from imgsign.ocsp import OcspResult


class OcspSource(Protocol):
    """Where OCSP answers come from (:class:`imgsign._internal.ocsp_client.OcspClient`: a response stored
    with the signature, or the responder the certificate names)."""

    def status(self, cert: x509.Certificate, issuer: x509.Certificate,
               now: datetime.datetime) -> OcspResult | None:
        """The verified answer about ``cert``; None when there is none to have (no responder named, or
        OCSP off); :class:`OCSPUnavailable` when a named responder cannot be reached;
        :class:`OCSPStatusUnknown` for an unusable answer."""

#: Most intermediate CA certificates allowed between the signing and the trusted certificate.
DEFAULT_MAX_DEPTH = 8


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A PEM or DER certificate revocation list."""
    try:
        pem = data.lstrip().startswith(b"-----BEGIN")
        with known_warnings.quiet():
            crl = x509.load_pem_x509_crl(data) if pem else x509.load_der_x509_crl(data)
            crl.issuer.rfc4514_string()  # cryptography parses the issuer and extensions lazily: find bad ones now
            for _ in crl.extensions:
                pass
            for entry in crl:
                for _ in entry.extensions:
                    pass
        check_serials(crl, "a certificate revocation list")
        return crl
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion (a version RFC 5280 lacks) is no ValueError
        raise CertificateError(f"not a readable certificate revocation list ({str(exc)[:120]})") from None


@dataclasses.dataclass(frozen=True)
class TrustAnchors:
    """What a signing certificate is validated against.

    ``trusted``: the trusted certificates (roots or intermediates, as Nova's
    trusted certificate ids); ``intermediates``: untrusted helpers for path
    building; ``crls``: revocation lists; ``require_crls``: refuse when an issuer
    on the path has no CRL; ``max_depth``: most intermediates between the signing
    and the trusted certificate; ``ocsp``: where OCSP answers come from (None: CRLs only).
    """

    trusted: Sequence[x509.Certificate]
    intermediates: Sequence[x509.Certificate] = ()
    crls: Sequence[x509.CertificateRevocationList] = ()
    require_crls: bool = False
    max_depth: int = DEFAULT_MAX_DEPTH
    ocsp: OcspSource | None = None


def validate_chain(
    certificate: x509.Certificate, anchors: TrustAnchors, policy: Policy = DEFAULT_POLICY
) -> list[x509.Certificate]:
    """The validated path ``[certificate, ..., trusted]``, or raise.

    Every certificate on the path must be valid at ``policy.certificate_time()``: now, or the genTime
    of a verified timestamp (:mod:`imgsign.timestamp`, ``Policy.certificates_at``); CRLs and OCSP
    answers must still be current now, and a revocation refuses whenever it happened.

    Raises :class:`UntrustedCertificate` when no valid path to a trusted
    certificate exists (the reason names what broke it),
    :class:`CertificateRevoked` for a revoked certificate on the path and
    :class:`CertificateError` for an unusable CRL.
    """
    path = build_path(certificate, anchors, policy.certificate_time())
    check_revocation(path, anchors, policy.now())
    return path


def build_path(certificate: x509.Certificate, anchors: TrustAnchors, at: datetime.datetime) -> list[x509.Certificate]:
    """The path ``[certificate, ..., trusted]`` valid at ``at`` (every certificate on it within its
    dates then), revocation not checked; :class:`UntrustedCertificate` when there is none."""
    if not anchors.trusted:
        raise UntrustedCertificate("no trusted certificates to validate the signing certificate against")
    if not 0 <= anchors.max_depth <= 255:
        raise CertificateError("the maximum chain depth must be between 0 and 255")
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors.trusted)))
        .time(at)
        .max_chain_depth(anchors.max_depth)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            # The signing certificate's own usage is imgsign's check (check_signing_certificate),
            # so that certificates with no EKU, or binary-curve keys, are judged by imgsign's rules.
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
    )
    try:
        verified = builder.build_client_verifier().verify(certificate, list(anchors.intermediates))
    except verification.VerificationError as exc:
        raise UntrustedCertificate(_explain(certificate, anchors, str(exc))) from None
    return list(verified.chain)


def _explain(certificate: x509.Certificate, anchors: TrustAnchors, detail: str) -> str:
    detail = detail.removeprefix("validation failed: ").removeprefix("candidates exhausted: ")
    if "exceeds max depth" in detail:
        detail = (f"no trusted certificate within {anchors.max_depth} intermediate level(s) "
                  "(a chain that long, or cross-signed CAs that issue each other)")
    elif "Forbidden signature algorithm" in detail:
        detail = ("an issuer signed with an algorithm chain validation does not accept (it takes RSASSA-PKCS1-v1_5, "
                  "RSASSA-PSS with a salt as long as the hash, and ECDSA, with SHA-256/384/512; not DSA, not "
                  "RSASSA-PSS with another salt such as the maximum)")
    elif "Forbidden public key algorithm" in detail:
        detail = "an issuer on the path has a key chain validation does not accept for a CA (RSA, P-256/384/521 only)"
    elif "no interior errors" in detail:
        detail = "no issuer among the trusted certificates and intermediates (missing intermediate or untrusted CA)"
    return (f"certificate {describe(certificate)} does not chain to any of the "
            f"{len(anchors.trusted)} trusted certificate(s): {detail}")


def _issuer_candidates(cert: x509.Certificate, anchors: TrustAnchors) -> list[x509.Certificate]:
    pool = [*anchors.trusted, *anchors.intermediates]
    return [c for c in pool if c.subject == cert.issuer and c != cert]


def check_revocation(path: list[x509.Certificate], anchors: TrustAnchors, now: datetime.datetime) -> None:
    """Raise :class:`CertificateRevoked` when the CRLs of ``anchors`` current at ``now`` revoke a
    certificate on ``path`` (a trusted intermediate included), :class:`CertificateError` for an
    unusable CRL, or a missing complete CRL under ``require_crls``."""
    pairs = list(itertools.pairwise(path))
    anchor = path[-1]
    if anchor.issuer != anchor.subject:  # a trusted intermediate: its issuer may have revoked it
        pairs += [(anchor, issuer) for issuer in _issuer_candidates(anchor, anchors)][:1]
    for cert, issuer in pairs:
        unreachable = _check_ocsp(cert, issuer, anchors, now)
        complete = False
        incomplete: set[str] = set()
        for crl in _crls_of(issuer, anchors.crls, now):
            try:
                revoked = _entry_for(crl, cert)
                gaps = _scope_gaps(crl, cert)
            except ValueError as exc:  # cryptography parses extensions lazily
                raise CertificateError(f"the CRL from {describe(issuer)} has a malformed extension "
                                       f"({str(exc)[:120]})") from None
            if revoked is not None:
                raise CertificateRevoked(
                    f"certificate {describe(cert)} (serial {cert.serial_number:#x}) was revoked by "
                    f"{describe(issuer)} on {revoked.revocation_date_utc:%Y-%m-%d}{_reason(revoked)}"
                )
            complete = complete or not gaps
            incomplete.update(gaps)
        if unreachable is not None and not complete:
            raise OCSPUnavailable(f"{unreachable.message}, and no complete CRL from {describe(issuer)} covers it")
        if anchors.require_crls and not complete:
            seen = f"; its CRLs here are not complete for it: {', '.join(sorted(incomplete))}" if incomplete else ""
            raise CertificateError(
                f"no complete certificate revocation list from {describe(issuer)} covering {describe(cert)} "
                f"(CRLs are required{seen})"
            )


def _check_ocsp(cert: x509.Certificate, issuer: x509.Certificate, anchors: TrustAnchors,
                now: datetime.datetime) -> OCSPUnavailable | None:
    """Ask ``anchors.ocsp`` about ``cert``: raise for "revoked" and "unknown"; the error when its
    responder could not be reached (then a complete CRL must cover it); None otherwise."""
    if anchors.ocsp is None:
        return None
    try:
        result = anchors.ocsp.status(cert, issuer, now)
    except OCSPUnavailable as exc:
        return exc
    if result is None or result.status == "good":
        return None
    if result.status == "revoked":
        when = f" on {result.revocation_time:%Y-%m-%d}" if result.revocation_time else ""
        why = f" (reason: {result.revocation_reason})" if result.revocation_reason else ""
        raise CertificateRevoked(f"certificate {describe(cert)} (serial {cert.serial_number:#x}) was revoked by "
                                 f"{describe(issuer)}{when}{why}, says its OCSP responder ({result.source})")
    raise OCSPStatusUnknown(f"the OCSP responder of {describe(issuer)} does not know certificate {describe(cert)} "
                            f"(serial {cert.serial_number:#x}): status unknown")


#: CRL extensions whose meaning :func:`crl_limits` takes into account (RFC 5280 §5.2).
_PROCESSED_CRL_EXTENSIONS = (x509.IssuingDistributionPoint, x509.DeltaCRLIndicator)
#: CRL entry extensions whose meaning :func:`_entry_for` takes into account (RFC 5280 §5.3).
_PROCESSED_ENTRY_EXTENSIONS = (x509.CRLReason, x509.InvalidityDate)

#: What limits a CRL's scope (:func:`crl_limits`), and how each reads in a message.
CRL_LIMITS = {
    "delta": "delta CRL",
    "only-ca-certs": "only CA certificates",
    "only-user-certs": "only end-entity certificates",
    "only-attribute-certs": "only attribute certificates",
    "only-some-reasons": "only some revocation reasons",
    "indirect": "indirect CRL",
    "distribution-point": "a distribution point the certificate does not name",
    "certificate-issuer": "entries for other issuers (certificateIssuer)",
    "critical-extension": "an unprocessed critical extension",
}


def crl_limits(crl: x509.CertificateRevocationList) -> list[str]:
    """What keeps ``crl`` from being a complete CRL (keys of :data:`CRL_LIMITS`); empty: complete.

    RFC 5280 §5.2, §6.3.3: a delta CRL, a CRL limited by its issuingDistributionPoint (to CA,
    end-entity or attribute certificates, to some reasons, to a distribution point, or indirect),
    and a CRL with a critical extension of the CRL or of an entry that imgsign does not process.
    ``only-ca-certs``, ``only-user-certs`` and ``distribution-point`` still leave it complete for
    the certificates in that scope.  Raises ValueError for a malformed extension.
    """
    limits: set[str] = set()
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            limits.add("delta")
        elif isinstance(extension.value, x509.IssuingDistributionPoint):
            point = extension.value
            flags = {"only-ca-certs": point.only_contains_ca_certs, "only-user-certs": point.only_contains_user_certs,
                     "only-attribute-certs": point.only_contains_attribute_certs,
                     "only-some-reasons": bool(point.only_some_reasons), "indirect": point.indirect_crl,
                     "distribution-point": bool(point.full_name or point.relative_name)}
            limits.update(name for name, on in flags.items() if on)
        elif extension.critical and not isinstance(extension.value, _PROCESSED_CRL_EXTENSIONS):
            limits.add("critical-extension")
    for entry in crl:
        for extension in entry.extensions:
            if isinstance(extension.value, x509.CertificateIssuer):
                limits.add("certificate-issuer")
            elif extension.critical and not isinstance(extension.value, _PROCESSED_ENTRY_EXTENSIONS):
                limits.add("critical-extension")
    return sorted(limits)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _scope_gaps(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> list[str]:
    """Why ``crl`` is not the complete CRL for ``cert`` (readable :data:`CRL_LIMITS`); empty when it is."""
    limits = set(crl_limits(crl))
    limits.discard("only-ca-certs" if _is_ca(cert) else "only-user-certs")
    if "distribution-point" in limits:
        point = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
        if _names_distribution_point(cert, point.full_name):
            limits.discard("distribution-point")
    return sorted(CRL_LIMITS[name] for name in limits)


def _names_distribution_point(cert: x509.Certificate, names: Sequence[x509.GeneralName] | None) -> bool:
    """Does ``cert``'s cRLDistributionPoints name one of ``names`` (a full name, RFC 5280 §6.3.3 b.2.i)?"""
    if not names:
        return False
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return False
    return any(set(point.full_name or ()) & set(names) for point in points)


def _entry_for(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> x509.RevokedCertificate | None:
    """The entry of ``crl`` that revokes ``cert`` (the CRL issuer's own serial number), if any.

    Entries after a certificateIssuer extension are about another CA's serial numbers (an
    indirect CRL, RFC 5280 §5.3.3) and do not count; removeFromCRL (a delta CRL lifting a
    hold) is not a revocation.  Any other entry counts, whatever scope or extensions the CRL
    has: serial numbers are unique per issuer, so an entry the issuer signed can only mean
    this certificate, and honouring it can only refuse more, never accept more.
    """
    own = x509.DirectoryName(crl.issuer)
    entry_issuer: set[x509.GeneralName] = {own}
    for entry in crl:
        with contextlib.suppress(x509.ExtensionNotFound):
            entry_issuer = set(entry.extensions.get_extension_for_class(x509.CertificateIssuer).value)
        if (entry.serial_number == cert.serial_number and own in entry_issuer
                and _reason_flag(entry) is not x509.ReasonFlags.remove_from_crl):
            return entry
    return None


def _crls_of(
    issuer: x509.Certificate, crls: Sequence[x509.CertificateRevocationList], now: datetime.datetime
) -> list[x509.CertificateRevocationList]:
    """The CRLs ``issuer`` signed; any doubt about one that claims to be its is an error."""
    found = []
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            with pyca_dsa.quiet():
                valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - unsupported key or algorithm: cannot trust the CRL
            valid = False
        if not valid:
            raise CertificateError(f"a CRL claiming to be from {describe(issuer)} does not carry its signature")
        try:
            usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.crl_sign:
                raise CertificateError(f"{describe(issuer)} may not sign CRLs (keyUsage lacks cRLSign)")
        except x509.ExtensionNotFound:
            pass
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise CertificateError(
                f"the CRL from {describe(issuer)} is out of date (next update was due "
                f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC); fetch a current one"
            )
        found.append(crl)
    return found


def _reason_flag(revoked: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _reason(revoked: x509.RevokedCertificate) -> str:
    reason = _reason_flag(revoked)
    return "" if reason is None else f" (reason: {reason.name})"
