"""``imgsign verify``: verify an image against its img_signature* properties."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors
from imgsign.cli._common import (
    base_certificate_option,
    facts_options,
    fail,
    image_digest,
    image_facts,
    is_quiet,
    load_properties_document,
    policy_option,
    policy_options,
    progress_bar,
    quiet_option,
    say,
    say_warnings,
    signing_certificate,
    trust_options,
    trust_setup,
)
from imgsign.cli._glance import cloud_options, glance_client
from imgsign.cli._output import emit, format_option
from imgsign.properties import SignatureProperties

if TYPE_CHECKING:
    from cryptography import x509

    from imgsign._internal.ocsp_client import OcspClient
    from imgsign.cli._common import TrustSetup
    from imgsign.verifier import Verifier


def _configured_policy(ctx: click.Context) -> bool:
    from imgsign.cli._common import config, has_config

    return has_config(ctx) and bool(getattr(config(ctx).imgsign, "policy_file", None))


def ocsp_client(ctx: click.Context, document: Mapping[str, object]) -> OcspClient | None:
    """OCSP for the chain, as ``[imgsign] ocsp`` says (None when off): the response stored with the
    signature (imgsign_ocsp_v1) first, then the responders the certificates name."""
    from imgsign._internal.ocsp_client import DEFAULT_TIMEOUT, for_document
    from imgsign.cli._common import config, has_config

    settings = config(ctx).imgsign if has_config(ctx) else None
    if settings is None:
        return for_document(document)
    return for_document(document, settings.ocsp, settings.ocsp_timeout or DEFAULT_TIMEOUT)


@click.command("verify")
@click.argument("image", type=click.Path(dir_okay=True), required=False)
@click.option("--image", "glance_image_id", metavar="ID",
              help="Verify this Glance image instead of a file: streamed from Glance and checked as it arrives "
                   "(nothing is written to disk), against the properties of its image record.")
@click.option("--properties", "properties_path", type=click.Path(dir_okay=False),
              help="JSON: the properties, or `openstack image show -f json` output (required with IMAGE).")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Signing certificate, PEM or DER "
                   "(default: fetched from the key manager by img_signature_certificate_uuid).")
@trust_options
@click.option("--tsa-ca", "tsa_ca_files", multiple=True, type=click.Path(dir_okay=False),
              help="Trusted TSA certificates (PEM): a timestamp token (imgsign_tst_v1) whose TSA chains to one of "
                   "them is checked, and lets a signature whose certificate has since expired verify if it was "
                   "timestamped while the certificate was valid (default: [imgsign] tsa_ca_file).")
@policy_option
@base_certificate_option
@facts_options
@format_option()
@cloud_options
@policy_options
@quiet_option
@click.pass_context
def verify_command(ctx: click.Context, image: str | None, glance_image_id: str | None, properties_path: str | None,
           cert_path: str | None, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...],
           intermediate_files: tuple[str, ...], crl_files: tuple[str, ...], require_crl: bool | None,
           max_chain_depth: int | None, tsa_ca_files: tuple[str, ...], policy_path: str | None,
           base_certificate_file: str | None, owner: str | None,
           visibility: str | None, image_type: str | None, booting_project: str | None, fmt: str | None,
           os_cloud: str | None, os_region_name: str | None, allow_weak_keys: bool, ignore_cert_dates: bool,
           quiet: bool) -> None:
    """Verify IMAGE (or Glance image --image ID) against its img_signature* properties. Exit 0 only if valid."""
    if (image is None) == (glance_image_id is None):
        raise click.UsageError("give either IMAGE (a file) or --image ID (a Glance image)")
    if image is not None and properties_path is None:
        raise click.UsageError("verifying a file needs --properties")
    if glance_image_id is not None and properties_path is not None:
        raise click.UsageError("--image takes the properties from the image record: leave out --properties")
    if policy_path is not None and (trusted_ids or trusted_files or require_crl or max_chain_depth is not None):
        raise click.UsageError("--policy replaces --trusted, --trusted-file, --require-crl and --max-chain-depth "
                               "(set them in the policy's trust stores)")
    quiet = is_quiet(ctx, quiet)
    trust = {"trusted_ids": trusted_ids, "trusted_files": trusted_files, "intermediate_files": intermediate_files,
             "crl_files": crl_files, "require_crl": require_crl, "max_chain_depth": max_chain_depth}
    result, error = verify_result(ctx, image=image, glance_image_id=glance_image_id, properties_path=properties_path,
                                  cert_path=cert_path, trust=trust, tsa_ca_files=tsa_ca_files,
                                  policy_path=policy_path, base_certificate_file=base_certificate_file,
                                  facts={"owner": owner, "visibility": visibility, "image_type": image_type,
                                         "booting_project": booting_project},
                                  allow_weak_keys=allow_weak_keys,
                                  ignore_cert_dates=ignore_cert_dates,
                                  progress=not quiet and fmt is None)  # a document on stdout: no bar
    if fmt is not None:
        emit(result, fmt)
    if error is not None:
        fail(error)
    if fmt is None and not quiet:
        say(f"OK: {result['message']}")


def verify_result(ctx: click.Context, *, image: str | None = None, glance_image_id: str | None = None,
                  properties_path: str | None = None, cert_path: str | None = None,
                  trust: Mapping[str, Any] | None = None, tsa_ca_files: tuple[str, ...] = (),
                  policy_path: str | None = None, facts: Mapping[str, str | None] | None = None,
                  base_certificate_file: str | None = None, allow_weak_keys: bool = False,
                  ignore_cert_dates: bool = False,
                  progress: bool = False) -> tuple[dict[str, Any], errors.ImgsignError | None]:
    """Verify a file against its properties file, or a Glance image against its record: the result document
    (every key always there, null until known; JSON output schemas) and the error that made it invalid (None:
    valid). ``trust`` holds :func:`~imgsign.cli._common.trust_anchors`' arguments by name; ``policy_path`` a
    trust policy file (else ``[imgsign] policy_file``, else the flat options: the built-in policy); ``facts``
    the image facts a policy selects by, given (``owner``, ``visibility``, ``image_type``, ``booting_project``);
    ``base_certificate_file`` a host-signed image's base certificate (``hostSigned`` rules; else the key
    manager's). Under a trust policy file the document has a ``policy`` key: the rule applied and its verdict.
    A compute host's signature (:func:`imgsign.trust_evidence.refuse_host_certificate`) is refused without one."""
    trust = dict(trust or {})
    given = {k: v for k, v in (facts or {}).items() if v is not None}
    shown = image if image is not None else glance_image_id
    result: dict[str, Any] = {
        "image": shown, "valid": False, "reason": None, "message": None, "exit_code": None,
        "img_signature_hash_method": None, "img_signature_key_type": None, "img_signature_certificate_uuid": None,
        "certificate_subject": None, "chain": None, "timestamp": None, "ocsp": None,
    }
    quiet = not progress
    # Under a trust policy file, "policy" (null until decided) says which rule applied and its verdict; the
    # built-in policy of the flat options adds no key, so their documents stay as they were.
    if policy_path is not None or _configured_policy(ctx):
        result["policy"] = None
    skipped: list[str] = []
    policy_rule: list[str] = []

    def check_signer(properties: SignatureProperties | None, document: Mapping[str, object],
                     record: Any) -> Verifier | None:
        """Trust policy, certificate, timestamp, chain and key checks: everything that needs no image data.
        None: the trust policy's rule skips verification, or allows the image unsigned."""
        import dataclasses

        from imgsign import certificates, chain, timestamp, trust_evidence
        from imgsign.cli._signing import tsa_roots
        from imgsign.policy import Policy
        from imgsign.verifier import Verifier

        current = trust_setup(ctx, policy_path, tuple(trust.get("trusted_ids") or ()),
                              tuple(trust.get("trusted_files") or ()), tuple(trust.get("intermediate_files") or ()),
                              tuple(trust.get("crl_files") or ()), trust.get("require_crl"),
                              trust.get("max_chain_depth"), base_certificate_file)
        if current.builtin and base_certificate_file is not None:
            raise click.UsageError("--base-certificate is for a trust policy's hostSigned rules (--policy or "
                                   "[imgsign] policy_file)")
        if not current.builtin:
            return _check_under_policy(ctx, current, properties, document, record, result, given, skipped,
                                       policy_rule, cert_path=cert_path, tsa_ca_files=tsa_ca_files,
                                       glance_image_id=glance_image_id, allow_weak_keys=allow_weak_keys,
                                       ignore_cert_dates=ignore_cert_dates, quiet=quiet)
        if properties is None:  # [imgsign] policy_file named, but the flat options chosen: unsigned (60)
            raise errors.UnsignedImage(f"Glance image {glance_image_id} is not signed: it has no "
                                       f"img_signature* properties")
        result.update({k: v for k, v in properties.as_dict().items() if k != "img_signature"})
        certificate = signing_certificate(ctx, cert_path, properties)
        result["certificate_subject"] = certificates.describe(certificate)
        trust_evidence.refuse_host_certificate(certificate)
        policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
        stamp = timestamp.check(document, properties.signature, certificate, tsa_roots(ctx, tsa_ca_files),
                                now=policy.now())
        result["timestamp"] = stamp.as_dict()
        if stamp.status == "not-checked" and not quiet:
            say("imgsign: warning: the image has a timestamp token but no TSA certificates are trusted "
                "(--tsa-ca, [imgsign] tsa_ca_file): it was not checked", err=True)
        if (stamp.timestamp is not None and stamp.judge_at is None and not ignore_cert_dates
                and certificate.not_valid_after_utc < policy.now()):
            raise errors.CertificateExpired(
                f"certificate {certificates.describe(certificate)} expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC and its timestamp "
                f"({stamp.timestamp.gen_time:%Y-%m-%d %H:%M:%S} UTC) is not inside its validity")
        policy = dataclasses.replace(policy, certificates_at=stamp.judge_at)
        anchors = current.legacy
        if anchors is not None:
            client = ocsp_client(ctx, document)
            anchors = dataclasses.replace(anchors, ocsp=client)
            try:
                path = chain.validate_chain(certificate, anchors, policy)
            finally:
                if client is not None:
                    result["ocsp"] = [{"certificate": name, **answer.as_dict()} for name, answer in client.results]
            result["chain"] = [certificates.describe(c) for c in path]
        return Verifier.for_certificate(properties, certificate, policy=policy)

    try:
        if image is not None and properties_path is not None:
            from imgsign.properties import properties_from_document

            full = load_properties_document(properties_path)
            document = properties_from_document(full)
            properties = SignatureProperties.from_mapping(document)
            with image_digest(image, properties.hash_method, "verifying", quiet) as digest:
                # check_signer runs while the image is hashed on another core.
                verifier = check_signer(properties, document, full)
                if verifier is not None:
                    verifier.verify_precomputed(digest())
        elif glance_image_id is not None:
            from imgsign.properties import is_signed, properties_from_document

            glance = glance_client(ctx)
            record = glance.get_image(glance_image_id)
            document = properties_from_document(record)
            signed = is_signed(document)
            if not signed and "policy" not in result:  # as audit and the hook say it: unsigned (60), not malformed
                raise errors.UnsignedImage(f"Glance image {glance_image_id} is not signed: it has no "
                                           f"img_signature* properties")
            verifier = check_signer(SignatureProperties.from_mapping(document) if signed else None, document, record)
            if verifier is None and not skipped:  # unsigned, allowed with a warning (audit)
                skipped.append("")
            if verifier is not None:
                properties = verifier.properties
                size = record.get("size")
                with progress_bar(size if isinstance(size, int) else 0, "verifying", quiet) as bar:
                    verifier.verify_data(glance.iter_data(glance_image_id), bar)
        else:
            raise click.UsageError("give either IMAGE (a file) with --properties or --image ID (a Glance image)")
    except errors.ImgsignError as exc:
        result.update({"reason": exc.reason, "message": exc.message, "exit_code": exc.exit_code})
        return result, exc
    what = shown if image is not None else f"Glance image {shown}"
    if skipped:
        message = (f"{what} was not verified: trust policy rule {policy_rule[-1]} "
                   + ("skips verification" if skipped[0] else "allows it unsigned (audit)"))
        result.update({"valid": False, "reason": "not-verified", "message": message, "exit_code": 0})
        return result, None
    anchor = f", chain to trusted {result['chain'][-1]}" if result["chain"] else ""
    message = (f"{what} matches its signature ({properties.key_type.value}, {properties.hash_method.value}, "
               f"certificate {result['certificate_subject']}{anchor})")
    result.update({"valid": True, "reason": "ok", "message": message, "exit_code": 0})
    return result, None


def _check_under_policy(ctx: click.Context, setup: TrustSetup, properties: SignatureProperties | None,
                        document: Mapping[str, object], record: Any, result: dict[str, Any],
                        given: Mapping[str, str], skipped: list[str], policy_rule: list[str], *,
                        cert_path: str | None, tsa_ca_files: tuple[str, ...], glance_image_id: str | None,
                        allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> Verifier | None:
    """The signer's checks under a trust policy file: the rule the image facts select, the evidence for it
    (chain to its CA stores with OCSP as ``[imgsign] ocsp`` says, the timestamp against its TSA stores) and
    its decision. None: the rule skips verification, or allows the image unsigned (audit)."""
    import dataclasses

    from imgsign import certificates, trust_policy
    from imgsign.policy import Policy
    from imgsign.verifier import Verifier

    def note(decision: trust_policy.Decision) -> None:
        result["policy"] = decision.as_dict()
        policy_rule.append(decision.rule.name)

    facts = image_facts(record, **given)
    if glance_image_id is not None:
        facts = dataclasses.replace(facts, image_id=glance_image_id)
    selection = trust_policy.select(setup.policy, facts)
    rule = selection.rule
    if rule.level is trust_policy.Level.SKIP:
        note(trust_policy.decide(selection, trust_policy.Evidence()))
        skipped.append(rule.name)
        return None
    if properties is None:
        decision = trust_policy.decide(selection, trust_policy.Evidence(signed=False))
        note(decision)
        trust_policy.enforce(decision)
        say_warnings(decision)
        return None
    result.update({k: v for k, v in properties.as_dict().items() if k != "img_signature"})
    certificate = signing_certificate(ctx, cert_path, properties)
    result["certificate_subject"] = certificates.describe(certificate)
    policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
    anchors = setup.anchors_for(rule)
    client = ocsp_client(ctx, document) if anchors is not None else None
    gathered = setup.evidence(rule, certificate, document, properties.signature, image_id=facts.image_id,
                              policy=policy, tsa_roots=_tsa_roots_for(ctx, setup, rule, tsa_ca_files), ocsp=client)
    result["timestamp"] = gathered.timestamp
    if client is not None:
        result["ocsp"] = gathered.ocsp_dicts()
    evidence = gathered.evidence
    decision = trust_policy.decide(selection, evidence)
    note(decision)
    result["chain"] = list(evidence.path) or None
    trust_policy.enforce(decision)
    say_warnings(decision)
    # The certificate's dates were the policy's to judge (its expiry action); its usage is checked here.
    return Verifier.for_certificate(properties, certificate,
                                    policy=dataclasses.replace(policy, ignore_certificate_dates=True))


def _tsa_roots_for(ctx: click.Context, setup: TrustSetup, rule: Any,
                   tsa_ca_files: tuple[str, ...]) -> list[x509.Certificate]:
    """The TSA certificates a rule trusts: its ``tsa`` trust stores, and those of ``--tsa-ca`` given on the
    command line.  ``[imgsign] tsa_ca_file`` is the built-in policy's TSA store: not used under a policy
    file (as at every other verification point)."""
    from imgsign.cli._signing import tsa_roots

    return [*(setup.tsa_roots_for(rule) if rule.tsa_stores else ()),
            *(tsa_roots(ctx, tsa_ca_files) if tsa_ca_files else ())]
