"""The trust policy at boot: may this booting project boot this recorded image, by the rule that applies?

Offline, from the trust record (:mod:`imgsign.compute.trust_record`): the facts Glance gave when the
image was verified (owner, visibility, image_type), the booting project from the domain's Nova
metadata, the recorded signer certificate, and the trusted certificates its chain was validated
against at download.  The rule's authenticity holds when its CA stores hold the signer or one of those
certificates (by fingerprint: a store's files are read, its key-manager ids turned into the
certificates they were fetched as through the sealed bindings); its trusted identities are matched
against the signer.  Dates and revocation were checked at download (or adoption) and are not checked
again here, except that a signer which had already expired then, accepted on the image's timestamp, counts
only under a rule whose ``tsa`` stores hold a TSA the timestamp verified against (the record's ``checks``).

A record that lacks a fact some rule's scope selects on is refused: the rule cannot be chosen.

A ``hostSigned`` rule decides on the provenance adoption recorded (:mod:`imgsign.compute.host_signed`):
the statement verified, the project it names owns the image and is the project booting it (a domain
that names no project boots no host-signed image), and the base's signer chained, when the snapshot was
made, to a certificate of the rule's ``baseTrustStores`` (by fingerprint, as for the signer) and is one of
its ``baseIdentities``.  Under any other rule a compute host's certificate is refused (the engine's rule).
"""

from __future__ import annotations

import os

from imgsign.compute.trust_record import FACT_KEYS, RecordStore, TrustRecord, fingerprint, may_be_host_certificate
from imgsign.errors import CertificateExpired, PolicyRefused, ProvenanceError, UntrustedCertificate
from imgsign.trust_policy import (
    Check,
    Evidence,
    HostSigned,
    ImageFacts,
    Level,
    ProvenanceEvidence,
    Rule,
    TimestampEvidence,
    TrustPolicy,
    TrustStore,
    decide,
    enforce,
    select,
)

#: The scope field of each recorded fact.
_FIELDS = {"owner": "owner", "visibility": "visibility", "image_type": "image_type"}


def read_root_file(path: str, what: str) -> bytes:
    """A file the hook trusts (the policy, a trust store's certificates): refused (InsecureState) unless it
    and every directory above it are root's (or this process's owner's) and writable by no one else, as the
    hook's threat model requires of what decides trust: the nova user must not be able to change them."""
    from imgsign._internal.files import read_small_file
    from imgsign.errors import InsecureState

    owners = {0, os.geteuid()}
    current = os.path.abspath(path)
    while True:
        try:
            info = os.lstat(current)
        except OSError as exc:
            from imgsign.errors import InputError

            raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
        sticky_dir = os.path.isdir(current) and info.st_mode & 0o1000
        if info.st_uid not in owners or (info.st_mode & 0o022 and not sticky_dir) \
                or (current == os.path.abspath(path) and os.path.islink(current)):
            raise InsecureState(f"{what} {path}: {current} can be changed by someone other than root (owner uid "
                                f"{info.st_uid}, mode {info.st_mode & 0o7777:04o}): the boot hook does not trust it")
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return read_small_file(path, what)


def facts_of(image: object) -> dict[str, str]:
    """The facts to record from a Glance image record (what :class:`ImageFacts` reads from it)."""
    facts = ImageFacts.from_record(image if isinstance(image, dict) else {})
    found = {"owner": facts.owner, "visibility": facts.visibility, "image_type": facts.image_type}
    return {key: value for key, value in found.items() if value is not None}


def check_record(record: TrustRecord, records: RecordStore, policy: TrustPolicy, base_dir: str,
                 booting_project: str | None) -> str | None:
    """Raise unless the rule for ``record``'s image booted by ``booting_project`` allows it; what it
    only logs (audit, permissive), as text, else None."""
    known = record.image_facts or {}
    needed = {f for rule in policy.rules for f in FACT_KEYS if getattr(rule.scope, _FIELDS[f]) is not None}
    missing = sorted(f for f in needed if f not in known)
    if missing:
        raise PolicyRefused(f"the trust record of image {record.image_id} does not say its {', '.join(missing)} "
                            "(it was verified without Glance's record of it), and the trust policy's rules are "
                            "chosen by them: cache it again from Glance")
    facts = ImageFacts(known.get("owner"), known.get("visibility"), known.get("image_type", "image"),
                       booting_project, record.image_id)
    selection = select(policy, facts)
    rule = selection.rule
    if rule.level is Level.SKIP:
        return f"trust policy rule {rule.name} skips the signer check"
    stores = _fingerprints(rule.ca_stores, records, base_dir)
    signer = fingerprint(record.certificate_der)
    if signer in stores or stores & set(record.anchor_fingerprints):
        chain = Check.passed()
    else:
        chain = Check.failed(UntrustedCertificate(
            f"image {record.image_id} was not validated at download against any certificate of the trust stores "
            f"of rule {rule.name} ({', '.join(s.name for s in rule.ca_stores)})"))
    # The signer's identity (X.509 parsing, loaded only then) only when the rule names trusted identities, or
    # when the signer may be a compute host, whom only a hostSigned rule trusts (the engine refuses it under any
    # other rule).
    identity = None
    if rule.trusted_identities is not None or (rule.host_signed is None
                                               and may_be_host_certificate(record.certificate_der)):
        from imgsign.certificates import load_certificate
        from imgsign.trust_evidence import signer_identity

        identity = signer_identity(load_certificate(record.certificate_der))
    provenance = None if rule.host_signed is None else \
        provenance_evidence(record, rule, rule.host_signed, records, base_dir, booting_project)
    stamp, dates = _recorded_dates(record, rule, records, base_dir)
    evidence = Evidence(True, identity, chain, dates=dates, timestamp=stamp, provenance=provenance)
    decision = enforce(decide(selection, evidence))
    if not decision.warnings:
        return None
    return "; ".join(f"trust policy rule {rule.name} ({rule.level.value}) logs: {f.check}: {f.message}"
                     for f in decision.warnings)


def _recorded_dates(record: TrustRecord, rule: Rule, records: RecordStore,
                    base_dir: str) -> tuple[TimestampEvidence | None, Check]:
    """The dates evidence of what was checked when the record was made (:mod:`imgsign.compute.trust_checks`).

    A signer that had expired by then was accepted on the image's timestamp: that counts for ``rule`` only
    when its ``tsa`` stores hold a TSA certificate the timestamp verified against; else the expiry stands
    (the rule's ``expiry`` action decides).  Otherwise the dates were checked then and are not checked again."""
    checks = record.checks
    if checks is None or checks.judged_at is None:
        return None, Check()
    expired = (f"the signing certificate of image {record.image_id} had expired when the image was recorded and "
               f"was judged at its timestamp ({checks.judged_at:%Y-%m-%d %H:%M:%S} UTC)")
    if set(checks.tsa_fingerprints) & _fingerprints(rule.tsa_stores, records, base_dir, "tsa"):
        return TimestampEvidence(Check.passed(), checks.judged_at, True), Check.failed(CertificateExpired(expired))
    return None, Check.failed(CertificateExpired(
        f"{expired}, made by a TSA that is not in the tsa trust stores of rule {rule.name}"))


def provenance_evidence(record: TrustRecord, rule: Rule, host: HostSigned, records: RecordStore, base_dir: str,
                        booting_project: str | None) -> ProvenanceEvidence:
    """The evidence for ``rule``'s ``hostSigned`` checks from what adoption recorded of the image's provenance."""
    found = record.provenance
    if found is None:
        return ProvenanceEvidence(Check.failed(ProvenanceError(
            f"rule {rule.name} trusts only host-signed images with a verified provenance statement, and the trust "
            f"record of image {record.image_id} has none: the image carries no statement, or this host had no "
            "hostSigned rule when it recorded the image (`imgsign boot release` the base to adopt it again)")))
    if not found.verified:
        return ProvenanceEvidence(Check.failed(ProvenanceError(
            f"the provenance statement of image {record.image_id} did not verify when the image was adopted: "
            f"{found.error}")))
    if booting_project is None:
        return ProvenanceEvidence(Check.failed(ProvenanceError(
            f"the domain names no Nova owner project, and image {record.image_id} is host-signed for project "
            f"{found.project_id}: a host signature vouches only inside the project that made the image")))
    if found.base_image_id is None:
        return ProvenanceEvidence(Check.passed(), found.project_id, found.host)
    base, signer = Check(), None
    der = found.base_certificate_der
    if der is None:
        base = Check.failed(ProvenanceError(f"the base image {found.base_image_id} was not trusted when the snapshot "
                                            f"was made: {found.base_error}"))
    else:
        stores = _fingerprints(host.base_trust_stores, records, base_dir)
        if fingerprint(der) in stores or stores & set(found.base_anchor_fingerprints):
            base = Check.passed()
        else:
            base = Check.failed(ProvenanceError(
                f"the base image {found.base_image_id} was not signed, when the snapshot was made ({found.created_at}),"
                f" by a certificate that chained to the baseTrustStores of rule {rule.name} "
                f"({', '.join(s.name for s in host.base_trust_stores)})"
                + (f": {found.base_error}" if found.base_error else "")))
        if host.base_identities is not None:
            from imgsign.certificates import load_certificate
            from imgsign.trust_evidence import signer_identity

            signer = signer_identity(load_certificate(der))
    return ProvenanceEvidence(Check.passed(), found.project_id, found.host, found.base_image_id, base, signer)


def _fingerprints(stores: tuple[TrustStore, ...], records: RecordStore, base_dir: str, kind: str = "ca") -> set[str]:
    """The SHA-256 fingerprints of the certificates of the ``kind`` (``ca`` or ``tsa``) ``stores`` known on this
    host (a file's certificates parsed once per content: :func:`~imgsign.compute.boot_config.
    certificate_fingerprints`, so a warm call loads no X.509)."""
    from imgsign.compute.boot_config import certificate_fingerprints

    found: set[str] = set()
    for store in stores:
        if store.type != kind:
            continue
        for name in store.certificate_files:
            path = os.path.join(base_dir, name)
            found.update(certificate_fingerprints(path, read_root_file(path, "trusted certificates")))
        for cert_id in store.key_manager_ids:
            bound = records.anchors.fingerprint(cert_id)  # None: never fetched on this host
            if bound is not None:
                found.add(bound)
    return found
