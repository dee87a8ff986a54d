"""Auditing images: who signed each one, is it valid and trusted, does its certificate expire soon?

The evaluation of one image record (its Glance properties, untrusted) is pure: certificates
come from an injected lookup (e.g. :meth:`CertificateStore.get_certificate`), trust from
:class:`~imgsign.chain.TrustAnchors`, the time from the :class:`~imgsign.policy.Policy`, and
the data, when it is to be verified too, from an injected callable.  Every check reuses the
library's own (property parser, certificate checks, chain validation, verifier); a problem is
kept as the :class:`Problem` the library's error describes, never raised.

Two steps, so that a caller can run the second in parallel: :func:`assess` (no data, cheap)
and :meth:`Assessment.verify_data` (streams the data through a verifier, constant memory).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imgsign import errors
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import HASH_METHOD, KEY_TYPE, SignatureProperties, is_signed

if TYPE_CHECKING:
    from cryptography import x509

    from imgsign.chain import OcspSource, TrustAnchors
    from imgsign.keys import PublicKey
    from imgsign.stream import ImageData
    from imgsign.trust_policy import Decision, Evidence, Rule, TrustPolicy

#: Fetch a certificate (DER or PEM) by its key-manager id; raises an ImgsignError (ObjectNotFound...).
CertificateLookup = Callable[[str], bytes]

#: Default of ``--expiry-days``: a certificate expiring within this many days fails the audit.
DEFAULT_EXPIRY_DAYS = 30
#: Largest expiry window (about 2700 years: beyond any certificate's notAfter).
MAX_EXPIRY_DAYS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a check failed: the error's short reason, its message and the exit code imgsign gives it."""

    reason: str
    message: str
    exit_code: int

    @classmethod
    def of(cls, exc: errors.ImgsignError) -> Problem:
        return cls(exc.reason, exc.message, exc.exit_code)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ChainStatus(enum.Enum):
    """The signing certificate against the trusted certificates."""

    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    REVOKED = "revoked"
    ERROR = "error"  # an unusable CRL, a missing required CRL
    NOT_CHECKED = "not-checked"  # no trusted certificates given, or no certificate to check


class DataStatus(enum.Enum):
    """The image data against its signature."""

    VERIFIED = "verified"
    INVALID = "invalid"  # the data (or the signature) does not match
    ERROR = "error"  # the data could not be read (Glance errors keep their codes)
    SKIPPED = "skipped"  # to be verified, but nothing can verify it (unsigned, unusable properties/key)
    NOT_CHECKED = "not-checked"  # not asked for (no --download)


@dataclasses.dataclass(frozen=True)
class CertificateReport:
    """The signer's certificate as far as it could be read."""

    id: str
    subject: str | None = None
    #: The subject's commonName (the subject when it has none): the signer, briefly.
    common_name: str | None = None
    issuer: str | None = None
    serial: str | None = None
    not_after: datetime.datetime | None = None
    #: Whole days from the evaluation time to notAfter (negative once expired).
    days_left: int | None = None
    #: notAfter falls within the audit's expiry window (not yet expired).
    expires_soon: bool = False
    #: Why this certificate may not sign images (not found, unreadable, expired, usage...).
    problem: Problem | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "subject": self.subject, "common_name": self.common_name, "issuer": self.issuer,
                "serial": self.serial, "not_after": _iso(self.not_after), "days_left": self.days_left,
                "expires_soon": self.expires_soon, "error": _dict(self.problem)}


@dataclasses.dataclass(frozen=True)
class ChainReport:
    status: ChainStatus = ChainStatus.NOT_CHECKED
    #: Subjects from the signing certificate to the trusted one (when trusted).
    path: tuple[str, ...] = ()
    #: The earliest notAfter on the validated path, trusted certificate included.
    not_after: datetime.datetime | None = None
    expires_soon: bool = False
    problem: Problem | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "path": list(self.path), "not_after": _iso(self.not_after),
                "expires_soon": self.expires_soon, "error": _dict(self.problem)}


@dataclasses.dataclass(frozen=True)
class DataReport:
    status: DataStatus = DataStatus.NOT_CHECKED
    #: Bytes read (when the data was read to its end).
    size: int | None = None
    problem: Problem | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "size": self.size, "error": _dict(self.problem)}


@dataclasses.dataclass(frozen=True)
class ImageReport:
    """Everything the audit found about one image, and its verdict (``failures`` empty: it passes)."""

    id: str | None
    name: str | None
    status: str | None
    owner: str | None
    signed: bool
    #: Why the img_signature* properties are unusable (None: well formed, or unsigned).
    properties_problem: Problem | None = None
    hash_method: str | None = None
    key_type: str | None = None
    certificate: CertificateReport | None = None
    #: The certificate's key against the declared key type, hash and signature value.
    key_problem: Problem | None = None
    chain: ChainReport = ChainReport()
    data: DataReport = DataReport()
    failures: tuple[Problem, ...] = ()
    #: Under a trust policy file: the rule that applied, its verdict (trusted, allowed-with-warnings,
    #: skipped, refused) and the failures it only logs.
    rule: str | None = None
    verdict: str | None = None
    warnings: tuple[Problem, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (doc/source/specs/json-output.md documents the keys)."""
        return {
            "id": self.id, "name": self.name, "status": self.status, "owner": self.owner,
            "passed": self.passed, "failures": [p.as_dict() for p in self.failures],
            "signed": self.signed, "properties_error": _dict(self.properties_problem),
            "hash_method": self.hash_method, "key_type": self.key_type,
            "certificate": self.certificate.as_dict() if self.certificate else None,
            "key_error": _dict(self.key_problem), "chain": self.chain.as_dict(), "data": self.data.as_dict(),
            # Only under a trust policy file: the flat options' documents keep their keys.
            **({} if self.rule is None and self.verdict is None else {
                "rule": self.rule, "verdict": self.verdict, "warnings": [p.as_dict() for p in self.warnings]}),
        }


@dataclasses.dataclass(frozen=True)
class AuditPolicy:
    """What an image must satisfy to pass.

    ``anchors``: the trusted certificates (None: the chain is not checked, as ``imgsign verify``
    without ``--trusted``); ``policy``: key sizes, certificate dates and the evaluation time;
    ``expiry_days``: a certificate on the path expiring within this many days fails (0: never);
    ``allow_unsigned``: an image without any img_signature* property passes; ``trust``: a trust policy
    (:mod:`imgsign.trust_policy`) deciding each image by the rule that applies to it instead of
    ``anchors``, whose rules' anchors ``anchors_for`` loads (None for a rule without CA stores), and
    ``base_anchors_for`` those of a ``hostSigned`` rule's ``baseTrustStores`` (a host-signed image's base
    certificate comes from the audit's certificate lookup).  Without a trust policy a compute host's
    signature fails (:func:`imgsign.trust_evidence.refuse_host_certificate`).
    Timestamps and OCSP count as for ``imgsign verify``: an image's RFC 3161 timestamp is checked against
    the rule's TSA certificates (``tsa_roots_for``; without a trust policy, ``tsa_roots``), and
    ``ocsp_for(record)`` gives the OCSP source of an image (its stapled response, the responders:
    :func:`imgsign._internal.ocsp_client.for_document`; None: CRLs only).
    """

    anchors: TrustAnchors | None = None
    policy: Policy = DEFAULT_POLICY
    expiry_days: int = DEFAULT_EXPIRY_DAYS
    allow_unsigned: bool = False
    trust: TrustPolicy | None = None
    anchors_for: Callable[[Rule], TrustAnchors | None] | None = None
    base_anchors_for: Callable[[Rule], TrustAnchors | None] | None = None
    tsa_roots: Sequence[x509.Certificate] = ()
    tsa_roots_for: Callable[[Rule], Sequence[x509.Certificate]] | None = None
    ocsp_for: Callable[[Mapping[str, object]], OcspSource | None] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.expiry_days <= MAX_EXPIRY_DAYS:
            raise ValueError(f"expiry_days must be between 0 and {MAX_EXPIRY_DAYS}")


@dataclasses.dataclass(frozen=True)
class Assessment:
    """An image assessed without its data; :meth:`verify_data` adds the data check."""

    report: ImageReport
    policy: AuditPolicy
    _properties: SignatureProperties | None = None
    _public_key: PublicKey | None = None

    @property
    def can_verify_data(self) -> bool:
        """Properties and key usable: the data can be checked against the signature."""
        return self._properties is not None and self._public_key is not None

    def skip_data(self) -> ImageReport:
        """The report with the data check asked for but impossible: unsigned, or unusable
        properties or key (those are failures of their own already)."""
        return dataclasses.replace(self.report, data=DataReport(DataStatus.SKIPPED))

    def verify_data(self, open_data: Callable[[], ImageData]) -> ImageReport:
        """The report with the data streamed from ``open_data()`` through a verifier.

        Errors opening or reading the data (e.g. :class:`~imgsign.errors.ImageHasNoData`) are kept
        as an ``error`` status with their own code; a mismatch is ``invalid``.  The certificate's
        dates and chain are the other checks' concern: this one answers "is the data what was signed".
        """
        from imgsign.stream import iter_chunks
        from imgsign.verifier import Verifier

        if self._properties is None or self._public_key is None:
            return self.skip_data()
        size = 0
        try:
            verifier = Verifier(self._properties, self._public_key, policy=self.policy.policy)
            for chunk in iter_chunks(open_data()):
                verifier.update(chunk)
                size += len(chunk)
            verifier.verify()
        except (errors.InvalidSignature, errors.MalformedSignature) as exc:
            return self._with_data(DataReport(DataStatus.INVALID, size, Problem.of(exc)))
        except errors.ImgsignError as exc:
            return self._with_data(DataReport(DataStatus.ERROR, None, Problem.of(exc)))
        return self._with_data(DataReport(DataStatus.VERIFIED, size))

    def _with_data(self, data: DataReport) -> ImageReport:
        failures = self.report.failures if data.problem is None else (*self.report.failures, data.problem)
        verdict = "refused" if failures and self.report.verdict is not None else self.report.verdict
        return dataclasses.replace(self.report, data=data, failures=failures, verdict=verdict)


def assess(record: Mapping[str, object], certificates: CertificateLookup,
           policy: AuditPolicy = AuditPolicy()) -> Assessment:
    """Evaluate one image record (a Glance image: its properties at the top level) without its data.

    Never raises for anything the record holds: every problem is in the report.  Only a bug, or
    an exception other than an ImgsignError from ``certificates``, escapes.
    """
    base = ImageReport(_text(record.get("id")), _text(record.get("name")), _text(record.get("status")),
                       _text(record.get("owner")), signed=is_signed(record))
    if policy.trust is not None:
        return _assess_by_policy(record, base, certificates, policy, policy.trust)
    if not base.signed:
        unsigned = Problem.of(errors.UnsignedImage("the image has no img_signature* properties"))
        return Assessment(dataclasses.replace(base, failures=() if policy.allow_unsigned else (unsigned,)), policy)
    base = dataclasses.replace(base, hash_method=_text(record.get(HASH_METHOD)), key_type=_text(record.get(KEY_TYPE)))
    try:
        properties = SignatureProperties.from_mapping(record)
    except errors.ImgsignError as exc:
        problem = Problem.of(exc)
        return Assessment(dataclasses.replace(base, properties_problem=problem, failures=(problem,)), policy)
    certificate, cert_report, checks, stamp_problem = _judged_certificate(record, properties, certificates, policy)
    public_key, key_problem = _public_key(properties, certificate, policy.policy)
    chain = _chain(certificate, policy, checks, record)
    failures = tuple(p for p in (stamp_problem, cert_report.problem, key_problem, chain.problem,
                                 _host_problem(certificate)) if p is not None)
    report = dataclasses.replace(base, certificate=cert_report, key_problem=key_problem, chain=chain,
                                 failures=failures + _expiry_failures(cert_report, chain, policy))
    return Assessment(report, policy, properties, public_key)


def _assess_by_policy(record: Mapping[str, object], base: ImageReport, certificates: CertificateLookup,
                      policy: AuditPolicy, trust: TrustPolicy) -> Assessment:
    """:func:`assess` under a trust policy: the rule that applies to the image decides it."""
    from imgsign import trust_evidence, trust_policy

    facts = trust_policy.ImageFacts.from_record(record)
    try:
        selection = trust_policy.select(trust, facts)
    except errors.PolicyRefused as exc:
        return Assessment(dataclasses.replace(base, verdict="refused", failures=(Problem.of(exc),)), policy)
    rule = selection.rule
    base = dataclasses.replace(base, rule=rule.name)
    if rule.level is trust_policy.Level.SKIP:
        return Assessment(dataclasses.replace(base, verdict="skipped"), policy)
    if not base.signed:
        decision = trust_policy.decide(selection, trust_policy.Evidence(signed=False))
        if policy.allow_unsigned:
            decision = dataclasses.replace(decision, allowed=True, findings=(), error=None)
        return Assessment(_decided(base, decision, ()), policy)
    base = dataclasses.replace(base, hash_method=_text(record.get(HASH_METHOD)), key_type=_text(record.get(KEY_TYPE)))
    try:
        properties = SignatureProperties.from_mapping(record)
    except errors.ImgsignError as exc:
        problem = Problem.of(exc)
        return Assessment(dataclasses.replace(base, properties_problem=problem, failures=(problem,),
                                              verdict="refused"), policy)
    # The certificate's dates are the rule's to judge (its expiry action): only its usage is checked here.
    usage_only = dataclasses.replace(policy, policy=dataclasses.replace(policy.policy, ignore_certificate_dates=True))
    certificate, cert_report = _certificate(properties.certificate_uuid, certificates, usage_only)
    public_key, key_problem = _public_key(properties, certificate, policy.policy)
    checked = tuple(p for p in (cert_report.problem, key_problem) if p is not None)
    report = dataclasses.replace(base, certificate=cert_report, key_problem=key_problem)
    if certificate is None:
        return Assessment(dataclasses.replace(report, failures=checked, verdict="refused"), policy)
    try:
        anchors = policy.anchors_for(rule) if policy.anchors_for is not None else None
        base_anchors = policy.base_anchors_for(rule) if policy.base_anchors_for is not None else None
    except errors.ImgsignError as exc:  # the rule's trust stores cannot be loaded: nothing it trusts
        problem = Problem.of(exc)
        return Assessment(dataclasses.replace(report, chain=ChainReport(ChainStatus.ERROR, problem=problem),
                                              failures=(*checked, problem), verdict="refused"), policy)
    try:
        roots = policy.tsa_roots_for(rule) if policy.tsa_roots_for is not None else ()
        ocsp = policy.ocsp_for(record) if policy.ocsp_for is not None and anchors is not None else None
    except errors.ImgsignError as exc:  # the rule's TSA stores, or the stapled OCSP response, are unusable
        problem = Problem.of(exc)
        return Assessment(dataclasses.replace(report, chain=ChainReport(ChainStatus.ERROR, problem=problem),
                                              failures=(*checked, problem), verdict="refused"), policy)

    def base_certificate(cert_id: str) -> x509.Certificate:
        from imgsign.certificates import load_certificate

        return load_certificate(certificates(cert_id))

    evidence = trust_evidence.image_evidence(record, properties.signature, certificate, rule, anchors, roots,
                                             policy.policy, ocsp=ocsp, base_anchors=base_anchors,
                                             base_certificate=base_certificate, image_id=base.id).evidence
    decision = trust_policy.decide(selection, evidence)
    chain = _chain_of(evidence, policy)
    report = dataclasses.replace(report, chain=chain)
    expiring = _expiry_failures(cert_report, chain, policy) \
        if rule.actions["expiry"] is trust_policy.Action.ENFORCE else ()
    return Assessment(_decided(report, decision, (*checked, *expiring)), policy, properties, public_key)


def _host_problem(certificate: x509.Certificate | None) -> Problem | None:
    """A compute host's signature without a trust policy (:func:`imgsign.trust_evidence.refuse_host_certificate`)."""
    from imgsign.trust_evidence import refuse_host_certificate

    if certificate is None:
        return None
    try:
        refuse_host_certificate(certificate)
    except errors.ImgsignError as exc:
        return Problem.of(exc)
    return None


def _decided(report: ImageReport, decision: Decision, other_failures: tuple[Problem, ...]) -> ImageReport:
    from imgsign.trust_policy import Action

    enforced = tuple(Problem.of(f.error) for f in decision.findings if f.action is Action.ENFORCE)
    logged = tuple(Problem.of(f.error) for f in decision.findings if f.action is Action.LOG)
    failures = (*other_failures, *enforced)
    return dataclasses.replace(report, failures=failures, warnings=logged,
                               verdict="refused" if failures else decision.verdict)


def _chain_of(evidence: Evidence, policy: AuditPolicy) -> ChainReport:
    """The chain report of a trust policy's evidence (:class:`imgsign.trust_policy.Evidence`)."""
    from imgsign.trust_policy import Status

    chain, revocation = evidence.chain, evidence.revocation
    if chain.status is Status.NOT_CHECKED:
        return ChainReport()
    if chain.status is Status.FAILED:
        return ChainReport(ChainStatus.UNTRUSTED, problem=Problem.of(chain.error) if chain.error else None)
    if revocation.status is Status.FAILED and revocation.error is not None:
        status = ChainStatus.REVOKED if isinstance(revocation.error, errors.CertificateRevoked) else ChainStatus.ERROR
        return ChainReport(status, evidence.path, problem=Problem.of(revocation.error))
    not_after = evidence.not_after
    return ChainReport(ChainStatus.TRUSTED, evidence.path, not_after,
                       not_after is not None and _expires_soon(not_after, policy))


def _judged_certificate(record: Mapping[str, object], properties: SignatureProperties,
                        certificates: CertificateLookup, policy: AuditPolicy
                        ) -> tuple[x509.Certificate | None, CertificateReport, Policy, Problem | None]:
    """The signer's certificate judged, without a trust policy, at the time the image's timestamp proves
    when it has expired since (:func:`imgsign.timestamp.judged_policy`, against ``policy.tsa_roots``): the
    certificate, its report, the checks to judge its chain by, and why the timestamp is unusable (if it is)."""
    from imgsign import timestamp

    certificate, report = _certificate(properties.certificate_uuid, certificates, policy)
    if certificate is None:
        return None, report, policy.policy, None
    try:
        checks = timestamp.judged_policy(policy.policy, record, properties.signature, certificate, policy.tsa_roots)
    except errors.ImgsignError as exc:
        return certificate, report, policy.policy, Problem.of(exc)
    if checks is not policy.policy:
        report = _certificate_report(properties.certificate_uuid, certificate, policy, checks)
    return certificate, report, checks, None


def _certificate(cert_id: str, certificates: CertificateLookup,
                 policy: AuditPolicy) -> tuple[x509.Certificate | None, CertificateReport]:
    from imgsign.certificates import load_certificate

    try:
        certificate = load_certificate(certificates(cert_id))
    except errors.ImgsignError as exc:
        return None, CertificateReport(cert_id, problem=Problem.of(exc))
    return certificate, _certificate_report(cert_id, certificate, policy, policy.policy)


def _certificate_report(cert_id: str, certificate: x509.Certificate, policy: AuditPolicy,
                        checks: Policy) -> CertificateReport:
    """The certificate's report, its signing checks judged by ``checks``."""
    from imgsign.certificates import check_signing_certificate, describe

    now = policy.policy.now()
    not_after = certificate.not_valid_after_utc
    days_left = (not_after - now) // datetime.timedelta(days=1)
    problem = None
    try:
        check_signing_certificate(certificate, checks)
    except errors.ImgsignError as exc:
        problem = Problem.of(exc)
    return CertificateReport(
        cert_id, describe(certificate), _common_name(certificate), certificate.issuer.rfc4514_string(),
        f"{certificate.serial_number:#x}", not_after, days_left, _expires_soon(not_after, policy), problem)


def _public_key(properties: SignatureProperties, certificate: x509.Certificate | None,
                policy: Policy) -> tuple[PublicKey | None, Problem | None]:
    """The certificate's key if it can check this signature (type, size, hash, signature form)."""
    from imgsign.certificates import certificate_public_key
    from imgsign.verifier import check_key_matches

    if certificate is None:
        return None, None
    try:
        key = certificate_public_key(certificate)
        check_key_matches(properties, key, policy)
    except errors.ImgsignError as exc:
        return None, Problem.of(exc)
    return key, None


def _chain(certificate: x509.Certificate | None, policy: AuditPolicy, checks: Policy,
           record: Mapping[str, object]) -> ChainReport:
    """The chain to ``policy.anchors``, judged by ``checks``, revocation by CRLs and ``policy.ocsp_for(record)``."""
    from imgsign.certificates import describe
    from imgsign.chain import validate_chain

    if certificate is None or policy.anchors is None:
        return ChainReport()
    try:
        ocsp = policy.ocsp_for(record) if policy.ocsp_for is not None else None
        anchors = policy.anchors if ocsp is None else dataclasses.replace(policy.anchors, ocsp=ocsp)
        path = validate_chain(certificate, anchors, checks)
    except errors.CertificateRevoked as exc:
        return ChainReport(ChainStatus.REVOKED, problem=Problem.of(exc))
    except errors.UntrustedCertificate as exc:
        return ChainReport(ChainStatus.UNTRUSTED, problem=Problem.of(exc))
    except errors.ImgsignError as exc:
        return ChainReport(ChainStatus.ERROR, problem=Problem.of(exc))
    not_after = min(c.not_valid_after_utc for c in path)
    return ChainReport(ChainStatus.TRUSTED, tuple(describe(c) for c in path), not_after,
                       _expires_soon(not_after, policy))


def _common_name(certificate: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    from imgsign.certificates import describe

    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[-1].value if names else None
    return value if isinstance(value, str) and value else describe(certificate)


def _expires_soon(not_after: datetime.datetime, policy: AuditPolicy) -> bool:
    return datetime.timedelta(0) <= not_after - policy.policy.now() < datetime.timedelta(days=policy.expiry_days)


def _expiry_failures(cert: CertificateReport, chain: ChainReport, policy: AuditPolicy) -> tuple[Problem, ...]:
    """Certificates that are valid now but expire within the window (unless dates are ignored)."""
    if policy.policy.ignore_certificate_dates:
        return ()
    found = []
    if cert.expires_soon and cert.not_after is not None:
        found.append(_expiring(f"certificate {cert.subject} expires on {cert.not_after:%Y-%m-%d %H:%M} UTC",
                               cert.days_left, policy))
    if chain.expires_soon and chain.not_after is not None and chain.not_after != cert.not_after:
        found.append(_expiring(f"a certificate on the chain to {chain.path[-1]} expires on "
                               f"{chain.not_after:%Y-%m-%d %H:%M} UTC", None, policy))
    return tuple(found)


def _expiring(what: str, days_left: int | None, policy: AuditPolicy) -> Problem:
    left = f"{days_left} day(s) left, " if days_left is not None else ""
    return Problem("expires-soon", f"{what} ({left}within the {policy.expiry_days}-day window)",
                   errors.PolicyViolation.exit_code)


def _text(value: object) -> str | None:
    """A record field as text (Glance sends strings; anything else is shown, never trusted)."""
    if value is None or isinstance(value, str):
        return value
    return repr(value)[:200]


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _dict(problem: Problem | None) -> dict[str, Any] | None:
    return None if problem is None else problem.as_dict()
