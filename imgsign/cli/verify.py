"""``imgsign verify``: verify an image against its img_signature* properties."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors
from imgsign.cli._common import (
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
from imgsign.properties import SignatureProperties

if TYPE_CHECKING:
    from imgsign.verifier import Verifier


def _configured_policy(ctx: click.Context) -> bool:
    from imgsign.cli._common import config, has_config

    return has_config(ctx) and bool(getattr(config(ctx).imgsign, "policy_file", None))


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
@policy_option
@facts_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as a JSON object on stdout.")
@cloud_options
@policy_options
@quiet_option
@click.pass_context
def verify_command(ctx: click.Context, image: str | None, glance_image_id: str | None, properties_path: str | None,
           cert_path: str | None, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...],
           intermediate_files: tuple[str, ...], crl_files: tuple[str, ...], require_crl: bool | None,
           max_chain_depth: int | None, policy_path: str | None, owner: str | None, visibility: str | None,
           image_type: str | None, booting_project: str | None, as_json: bool, os_cloud: str | None,
           os_region_name: str | None,
           allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> None:
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
    shown = image if image is not None else glance_image_id
    # Every key is always there (null until known), on success and on failure alike.
    result: dict[str, Any] = {
        "image": shown, "valid": False, "reason": None, "message": None, "exit_code": None,
        "img_signature_hash_method": None, "img_signature_key_type": None, "img_signature_certificate_uuid": None,
        "certificate_subject": None, "chain": None,
    }
    # Under a trust policy file, "policy" (null until decided) says which rule applied and its verdict; the
    # built-in policy of the flat options adds no key, so their documents stay as they were.
    if policy_path is not None or _configured_policy(ctx):
        result["policy"] = None
    skipped: list[str] = []
    policy_rule: list[str] = []

    def check_signer(document: Any, properties: SignatureProperties | None) -> Verifier | None:
        """Trust policy, certificate, chain and key checks: everything that needs no image data.
        None: the trust policy's rule skips verification."""
        from imgsign import certificates, trust_evidence, trust_policy
        from imgsign.policy import Policy
        from imgsign.verifier import Verifier

        def _note(decision: trust_policy.Decision) -> None:
            if not setup.builtin:
                result["policy"] = decision.as_dict()
            policy_rule.append(decision.rule.name)

        setup = trust_setup(ctx, policy_path, trusted_ids, trusted_files, intermediate_files, crl_files,
                            require_crl, max_chain_depth)
        facts = image_facts(document, owner, visibility, image_type, booting_project)
        if glance_image_id is not None:
            facts = dataclasses.replace(facts, image_id=glance_image_id)
        selection = trust_policy.select(setup.policy, facts)
        rule = selection.rule
        if rule.level is trust_policy.Level.SKIP:
            decision = trust_policy.decide(selection, trust_policy.Evidence())
            _note(decision)
            skipped.append(rule.name)
            return None
        if properties is None:
            decision = trust_policy.decide(selection, trust_policy.Evidence(signed=False))
            _note(decision)
            trust_policy.enforce(decision)
            say_warnings(decision)
            return None
        result.update({k: v for k, v in properties.as_dict().items() if k != "img_signature"})
        certificate = signing_certificate(ctx, cert_path, properties)
        result["certificate_subject"] = certificates.describe(certificate)
        policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
        evidence = trust_evidence.gather(certificate, setup.anchors_for(rule), rule, policy)
        decision = trust_policy.decide(selection, evidence)
        _note(decision)
        result["chain"] = list(evidence.path) or None
        trust_policy.enforce(decision)
        say_warnings(decision)
        # The certificate's dates were the policy's to judge (its expiry action); its usage is checked here.
        return Verifier.for_certificate(properties, certificate,
                                        policy=dataclasses.replace(policy, ignore_certificate_dates=True))

    try:
        if image is not None and properties_path is not None:
            from imgsign.properties import properties_from_document

            document = load_properties_document(properties_path)
            properties = SignatureProperties.from_mapping(properties_from_document(document))
            with image_digest(image, properties.hash_method, "verifying", quiet or as_json) as digest:
                # check_signer runs while the image is hashed on another core.
                verifier = check_signer(document, properties)
                if verifier is not None:
                    verifier.verify_precomputed(digest())
        elif glance_image_id is not None:
            from imgsign.properties import is_signed, properties_from_document

            glance = glance_client(ctx)
            record = glance.get_image(glance_image_id)
            document = properties_from_document(record)
            signed = is_signed(document)
            verifier = check_signer(record, SignatureProperties.from_mapping(document) if signed else None)
            if verifier is None and not skipped:  # unsigned, allowed with a warning (audit)
                skipped.append("")
            if verifier is not None:
                properties = verifier.properties
                size = record.get("size")
                with progress_bar(size if isinstance(size, int) else 0, "verifying", quiet or as_json) as progress:
                    verifier.verify_data(glance.iter_data(glance_image_id), progress)
    except errors.ImgsignError as exc:
        if as_json:
            result.update({"reason": exc.reason, "message": exc.message, "exit_code": exc.exit_code})
            click.echo(json.dumps(result, indent=2))
        fail(exc)
    what = shown if image is not None else f"Glance image {shown}"
    if skipped:
        message = (f"{what} was not verified: trust policy rule {policy_rule[-1]} "
                   + ("skips verification" if skipped[0] else "allows it unsigned (audit)"))
        result.update({"valid": False, "reason": "not-verified", "message": message, "exit_code": 0})
        if as_json:
            click.echo(json.dumps(result, indent=2))
        elif not quiet:
            say(f"OK: {message}")
        return
    trust = f", chain to trusted {result['chain'][-1]}" if result["chain"] else ""
    message = (f"{what} matches its signature ({properties.key_type.value}, {properties.hash_method.value}, "
               f"certificate {result['certificate_subject']}{trust})")
    result.update({"valid": True, "reason": "ok", "message": message, "exit_code": 0})
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not quiet:
        say(f"OK: {message}")
