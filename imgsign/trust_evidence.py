"""Gathering the evidence a trust policy rule is decided on (:mod:`imgsign.trust_policy`).

Takes objects (the signing certificate, the rule's trust anchors), never paths or ids: callers load
those at their edge.  The chain is built against the rule's CA stores at the evaluation time; when
that fails, again at a moment inside the certificates' validity periods, so that a chain whose only
fault is its dates is told apart from an untrusted one (the rule's ``expiry`` action decides).
Revocation is checked at the evaluation time, against CRLs current then, unless the rule skips it.
An RFC 3161 timestamp (:class:`~imgsign.trust_policy.TimestampEvidence`, from :func:`timestamp_evidence`:
:mod:`imgsign.timestamp` against the rule's TSA stores) and an OCSP answer (the anchors' ``ocsp``
source, or ``online_revocation``) are the caller's to verify and pass in.  So is a host-signed image's
provenance (:func:`provenance_evidence`, for ``hostSigned`` rules), with the base image's certificate
fetched by the caller's ``base_certificate``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable, Mapping, Sequence

from imgsign.errors import ImgsignError, PolicyRefused, UntrustedCertificate
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.trust_policy import (
    Action,
    Check,
    Evidence,
    ProvenanceEvidence,
    Rule,
    SignerIdentity,
    Status,
    TimestampEvidence,
    is_host_certificate,
)

#: ``typing.TYPE_CHECKING`` without importing typing (the boot hook imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptography import x509

    from imgsign.chain import OcspSource, TrustAnchors
    from imgsign.ocsp import OcspResult

#: Most extra moments a chain with dates problems is tried at.
_MAX_TRIES = 16


def signer_identity(certificate: x509.Certificate) -> SignerIdentity:
    """The identity a rule's ``trustedIdentities`` are matched against."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.certificates import describe

    uris: set[str] = set()
    dns: set[str] = set()
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = {str(u) for u in names.get_values_for_type(x509.UniformResourceIdentifier)}
        dns = {str(d).lower() for d in names.get_values_for_type(x509.DNSName)}
    except (x509.ExtensionNotFound, ValueError):  # ValueError: malformed; nothing in it can match then
        pass
    attributes = frozenset((a.oid.dotted_string, str(a.value)) for a in certificate.subject)
    return SignerIdentity(describe(certificate), attributes, frozenset(uris), frozenset(dns),
                          hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest())


#: An online revocation check of a validated path (signer first), e.g. OCSP: PASSED (nothing revoked),
#: FAILED (revoked, or an answer that cannot be trusted: the error says which) or NOT_CHECKED (no
#: responder, no stored response: the CRLs decide).
RevocationCheck = Callable[["list[x509.Certificate]"], Check]


def gather(certificate: x509.Certificate, anchors: TrustAnchors | None, rule: Rule,
           policy: Policy = DEFAULT_POLICY, timestamp: TimestampEvidence | None = None,
           online_revocation: RevocationCheck | None = None) -> Evidence:
    """The evidence for ``rule`` about ``certificate`` (the image's signing certificate).

    ``anchors``: the rule's CA stores loaded (None, or a rule without CA stores: no chain is checked,
    only the signing certificate's own dates, unless ``policy.ignore_certificate_dates``);
    ``timestamp``: an RFC 3161 timestamp the caller verified against :attr:`Rule.tsa_stores`;
    ``online_revocation``: asked first for the validated path (not under a rule that skips
    revocation); when it answers NOT_CHECKED the CRLs decide.
    """
    return _gather(certificate, anchors, rule, policy, timestamp, online_revocation)[0]


def _gather(certificate: x509.Certificate, anchors: TrustAnchors | None, rule: Rule, policy: Policy,
            timestamp: TimestampEvidence | None, online_revocation: RevocationCheck | None = None
            ) -> tuple[Evidence, list[x509.Certificate]]:
    """:func:`gather`, and the path it built (signer first; empty when no chain was built)."""
    from imgsign.certificates import check_dates

    now = policy.now()
    identity = signer_identity(certificate)
    if anchors is None or not rule.ca_stores:
        dates = Check()
        if not policy.ignore_certificate_dates:
            dates = _attempt(lambda: check_dates(certificate, now))
        return Evidence(True, identity, dates=dates, timestamp=timestamp), []
    from imgsign.certificates import describe
    from imgsign.chain import build_path, check_revocation

    try:
        path = build_path(certificate, anchors, now)
        dates = Check.passed()
    except UntrustedCertificate as first:
        found = _path_at_another_time(certificate, anchors, now, timestamp)
        if found is None:
            return Evidence(True, identity, chain=Check.failed(first), timestamp=timestamp), []
        path, dates = found, Check.failed(first)
    revocation = Check()
    if rule.actions["revocation"] is not Action.SKIP:
        if online_revocation is not None:
            revocation = online_revocation(path)
        if revocation.status is Status.NOT_CHECKED:
            revocation = _attempt(lambda: check_revocation(path, anchors, now))
    return Evidence(True, identity, Check.passed(), dates, revocation, timestamp,
                    tuple(describe(c) for c in path), min(c.not_valid_after_utc for c in path)), path


def _attempt(check: Callable[[], None]) -> Check:
    try:
        check()
    except ImgsignError as exc:
        return Check.failed(exc)
    return Check.passed()


def _path_at_another_time(certificate: x509.Certificate, anchors: TrustAnchors, now: datetime.datetime,
                          timestamp: TimestampEvidence | None) -> list[x509.Certificate] | None:
    """A path valid at some moment of the signer's validity other than ``now``: the timestamp's, else
    the moments nearest ``now`` inside the validity of each certificate that could be on it."""
    from imgsign.chain import build_path

    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    moments: list[datetime.datetime] = []
    if timestamp is not None and timestamp.signed_at is not None and timestamp.check.status is Status.PASSED:
        moments.append(timestamp.signed_at)
    for cert in (certificate, *anchors.trusted, *anchors.intermediates):
        moment = min(max(now, cert.not_valid_before_utc, start), cert.not_valid_after_utc, end)
        if moment not in moments and moment != now:
            moments.append(moment)
    for moment in moments[:_MAX_TRIES]:
        try:
            return build_path(certificate, anchors, moment)
        except UntrustedCertificate:
            continue
    return None


def timestamp_evidence(document: Mapping[str, object], signature: bytes, certificate: x509.Certificate,
                       roots: Sequence[x509.Certificate], *,
                       now: datetime.datetime) -> tuple[TimestampEvidence | None, dict[str, object]]:
    """The image's RFC 3161 timestamp (``imgsign_tst_v1``) checked by :func:`imgsign.timestamp.check` against
    ``roots`` (the rule's TSA stores), and its description for a result document: None when there is none,
    or no TSA certificate to check it against; FAILED when it does not verify (the rule's ``timestamp``
    action decides)."""
    from imgsign import timestamp as rfc3161

    try:
        stamp = rfc3161.check(document, signature, certificate, roots, now=now)
    except ImgsignError as exc:
        return TimestampEvidence(Check.failed(exc)), {"status": "invalid", "reason": exc.reason,
                                                      "message": exc.message}
    if stamp.timestamp is None:
        return None, stamp.as_dict()
    within = rfc3161.signing_time(stamp.timestamp, certificate) is not None
    return TimestampEvidence(Check.passed(), stamp.timestamp.gen_time, within), stamp.as_dict()


@dataclasses.dataclass(frozen=True)
class ImageEvidence:
    """:func:`image_evidence`'s answer: the evidence, and for reports the timestamp's description
    (:meth:`imgsign.timestamp.TimestampCheck.as_dict`, or ``invalid``) and the OCSP answers used."""

    evidence: Evidence
    timestamp: dict[str, object]
    ocsp: tuple[tuple[str, OcspResult], ...] = ()
    #: The validated path, signer first (empty when no chain was checked or none was found).
    path: tuple[x509.Certificate, ...] = ()

    def ocsp_dicts(self) -> list[dict[str, object]]:
        """The OCSP answers for a result document (``[{"certificate": ..., "status": ...}]``)."""
        return [{"certificate": name, **answer.as_dict()} for name, answer in self.ocsp]


def image_evidence(document: Mapping[str, object], signature: bytes, certificate: x509.Certificate,
                   rule: Rule, anchors: TrustAnchors | None, tsa_roots: Sequence[x509.Certificate],
                   policy: Policy = DEFAULT_POLICY, *, ocsp: OcspSource | None = None,
                   base_anchors: TrustAnchors | None = None, base_certificate: BaseCertificate | None = None,
                   image_id: str | None = None) -> ImageEvidence:
    """The evidence for ``rule`` about a signed image: its RFC 3161 timestamp (``imgsign_tst_v1`` in
    ``document``, the image's properties) checked against ``tsa_roots`` (the rule's ``tsa`` stores: the
    built-in policy's are the flat ``tsa_ca_file``), and the signer's chain to ``anchors`` (the rule's CA
    stores) with revocation by ``ocsp`` (:func:`imgsign._internal.ocsp_client.for_document`: the response
    stapled in ``document``, then the responders) beside the CRLs.

    The one path every verification point takes (``verify``, ``audit``, the Glance plugin, compute
    adoption), so a timestamp or a stapled response counts the same way at each.  ``ocsp`` is asked
    only when a chain is checked; its ``results`` (an :class:`~imgsign._internal.ocsp_client.OcspClient`'s)
    are reported.  Under a ``hostSigned`` rule the provenance is checked too (:func:`provenance_evidence`:
    ``base_anchors``, the rule's ``baseTrustStores`` loaded; ``base_certificate``, the base image's
    certificate by key-manager id; ``image_id``, the image the statement must name, when known)."""
    stamp, described = timestamp_evidence(document, signature, certificate, tsa_roots, now=policy.now())
    if anchors is not None and ocsp is not None:
        anchors = dataclasses.replace(anchors, ocsp=ocsp)
    evidence, path = _gather(certificate, anchors, rule, policy, stamp)
    if rule.host_signed is not None:
        evidence = dataclasses.replace(evidence, provenance=provenance_evidence(
            document, certificate, rule, image_id=image_id, base_certificate=base_certificate,
            base_anchors=base_anchors, policy=policy))
    return ImageEvidence(evidence, described, tuple(getattr(ocsp, "results", ()) or ()), tuple(path))


#: The base image's signing certificate by the key-manager id a provenance statement names (``certificateId``);
#: raises an :class:`~imgsign.errors.ImgsignError` when it cannot be had.
BaseCertificate = Callable[[str], "x509.Certificate"]


def provenance_evidence(properties: Mapping[str, object], certificate: x509.Certificate, rule: Rule, *,
                        image_id: str | None, base_certificate: BaseCertificate | None,
                        base_anchors: TrustAnchors | None,
                        policy: Policy = DEFAULT_POLICY) -> ProvenanceEvidence | None:
    """The provenance evidence for a ``hostSigned`` rule (None for any other rule).

    The statement in ``properties`` is checked with ``certificate`` (the image's signer) and bound to
    ``image_id`` (:func:`imgsign.provenance.verify_provenance`).  The base it names is checked here: its
    certificate (``base_certificate(certificateId)``) must be the one the statement names by SHA-256 and
    chain to ``base_anchors`` (the rule's ``baseTrustStores``) at the statement's ``createdAt``: it was
    trusted when the snapshot was made.  Its revocation is not checked (the CRLs of that moment are gone).
    """
    if rule.host_signed is None:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.certificates import certificate_public_key
    from imgsign.chain import build_path
    from imgsign.errors import ProvenanceError
    from imgsign.provenance import verify_provenance

    try:
        statement = verify_provenance(properties, certificate_public_key(certificate),
                                      hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest(),
                                      image_id=image_id, policy=policy)
    except ImgsignError as exc:
        return ProvenanceEvidence(Check.failed(exc))
    found = ProvenanceEvidence(Check.passed(), statement.project_id, statement.host)
    base = statement.base
    if base is None:
        return found
    found = ProvenanceEvidence(Check.passed(), statement.project_id, statement.host, base.image_id)

    def failed(error: ImgsignError, signer: SignerIdentity | None = None) -> ProvenanceEvidence:
        return ProvenanceEvidence(found.check, found.project_id, found.host, found.base_image_id,
                                  Check.failed(error), signer)

    if base_certificate is None or base_anchors is None:
        return failed(ProvenanceError(f"the base image {base.image_id}'s certificate {base.certificate_id} cannot be "
                                      f"checked here: no key manager to read it from, or rule {rule.name} has no "
                                      "baseTrustStores loaded"))
    try:
        base_cert = base_certificate(base.certificate_id)
    except ImgsignError as exc:
        return failed(ProvenanceError(f"the base image {base.image_id}'s certificate {base.certificate_id} cannot be "
                                      f"read: {exc.message}"))
    if hashlib.sha256(base_cert.public_bytes(Encoding.DER)).digest() != base.certificate_sha256:
        return failed(ProvenanceError(f"certificate {base.certificate_id} is not the one that signed the base image "
                                      f"{base.image_id} (the provenance names SHA-256 "
                                      f"{base.certificate_sha256.hex()})"))
    signer = signer_identity(base_cert)
    try:
        build_path(base_cert, base_anchors, statement.created_at)
    except ImgsignError as exc:
        return failed(ProvenanceError(f"the base image {base.image_id}'s signer {signer.subject} did not chain to the "
                                      f"baseTrustStores of rule {rule.name} when the snapshot was made "
                                      f"({statement.created_at:%Y-%m-%d %H:%M:%S} UTC): {exc.message}"), signer)
    return ProvenanceEvidence(found.check, found.project_id, found.host, found.base_image_id, Check.passed(), signer)


def refuse_host_certificate(certificate: x509.Certificate) -> None:
    """Raise :class:`~imgsign.errors.PolicyRefused` for a compute host's certificate (a URI SAN
    ``openstack://<cloud>/nova-compute/<host>``) where no trust policy rule applies (the flat options'
    built-in policy): a host's signature vouches for an image only under a ``hostSigned`` rule."""
    signer = signer_identity(certificate)
    if is_host_certificate(signer):
        raise PolicyRefused(f"the signer {signer.subject} is a compute host (URI SAN "
                            "openstack://.../nova-compute/...): a host's signature vouches for an image only under a "
                            "trust policy rule with hostSigned (--policy, [imgsign] policy_file), never under the flat "
                            "trusted certificates")
