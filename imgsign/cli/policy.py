"""``imgsign policy check`` and ``imgsign policy explain``: trust policy files, and which rule applies to an image."""

from __future__ import annotations

import json
from typing import Any

import click

from imgsign import errors
from imgsign.cli._common import (
    base_certificate_option,
    facts_options,
    fail,
    image_facts,
    load_properties_document,
    policy_option,
    say,
)
from imgsign.cli._glance import cloud_options, glance_client


@click.group("policy")
def policy_group() -> None:
    """Trust policy files: which signers are trusted for which images (doc/source/user/trust-policy.md)."""


@policy_group.command("check")
@click.argument("policy_file", type=click.Path(dir_okay=False))
@click.option("--stores", is_flag=True,
              help="Also load every trust store: its certificate and CRL files, and its key-manager ids.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as a JSON object on stdout.")
@click.pass_context
def check_command(ctx: click.Context, policy_file: str, stores: bool, as_json: bool) -> None:
    """Validate POLICY_FILE: exit 0 when it is a valid trust policy, 80 (with where and why) when not."""
    import os

    from imgsign.cli._common import TrustSetup, load_trust_policy

    try:
        policy = load_trust_policy(policy_file)
        if stores:
            setup = TrustSetup(ctx, policy, os.path.dirname(os.path.abspath(policy_file)))
            for rule in policy.rules:
                setup.anchors_for(rule)
    except errors.ImgsignError as exc:
        if as_json:
            click.echo(json.dumps({"policy": policy_file, "valid": False, "reason": exc.reason,
                                   "message": exc.message, "exit_code": exc.exit_code}, indent=2))
        fail(exc)
    catch_all = policy.catch_all
    if as_json:
        click.echo(json.dumps({"policy": policy_file, "valid": True, "reason": "ok", "message": None,
                               "exit_code": 0, "catch_all": catch_all.name if catch_all else None,
                               "rules": [r.as_dict() for r in policy.rules]}, indent=2))
        return
    say(f"OK: {policy_file}: {len(policy.rules)} rule(s): {', '.join(r.name for r in policy.rules)}; "
        + (f"catch-all: {catch_all.name}" if catch_all else "no catch-all (an image no scope selects is refused)")
        + ("; every trust store loaded" if stores else ""))


@policy_group.command("explain")
@policy_option
@click.option("--image", "glance_image_id", metavar="ID", help="The Glance image (its record gives the facts).")
@click.option("--properties", "properties_path", type=click.Path(dir_okay=False),
              help="JSON: an image record or `openstack image show -f json` output (owner, visibility, "
                   "image_type), or only properties (then give the facts as options).")
@facts_options
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Under a hostSigned rule: the image's signing certificate, PEM or DER, to check its provenance "
                   "with (default: fetched from the key manager by img_signature_certificate_uuid).")
@base_certificate_option
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as a JSON object on stdout.")
@cloud_options
@click.pass_context
def explain_command(ctx: click.Context, policy_path: str | None, glance_image_id: str | None,
                    properties_path: str | None, owner: str | None, visibility: str | None, image_type: str | None,
                    booting_project: str | None, cert_path: str | None, base_certificate_file: str | None,
                    as_json: bool, os_cloud: str | None, os_region_name: str | None) -> None:
    """Say which rule of the trust policy applies to an image, and why (no signature is checked; under a
    hostSigned rule, the image's provenance statement is, when the image is signed)."""
    import dataclasses

    from imgsign import trust_policy
    from imgsign.cli._common import trust_setup

    if glance_image_id is not None and properties_path is not None:
        raise click.UsageError("give --image or --properties, not both")
    document: Any = {}
    if glance_image_id is not None:
        document = glance_client(ctx).get_image(glance_image_id)
    elif properties_path is not None:
        document = load_properties_document(properties_path)
    setup = trust_setup(ctx, policy_path, (), (), (), (), None, None, base_certificate_file)
    facts = image_facts(document, owner, visibility, image_type, booting_project)
    if glance_image_id is not None:
        facts = dataclasses.replace(facts, image_id=glance_image_id)
    try:
        selection = trust_policy.select(setup.policy, facts)
    except errors.PolicyRefused as exc:
        if as_json:
            click.echo(json.dumps({"policy": setup.policy.source, "facts": facts.as_dict(), "rule": None,
                                   "reasons": [exc.message]}, indent=2))
        raise
    rule = selection.rule
    provenance = _provenance(setup, rule, facts, document, cert_path) if rule.host_signed is not None else None
    if as_json:
        click.echo(json.dumps({"policy": setup.policy.source, "facts": facts.as_dict(), "rule": rule.as_dict(),
                               "also_matching": list(selection.also_matching),
                               "reasons": list(selection.reasons),
                               **({} if provenance is None else {"provenance": provenance})}, indent=2))
        return
    for reason in selection.reasons:
        say(reason)
    actions = ", ".join(f"{k} {v.value}" for k, v in rule.actions.items())
    say(f"level {rule.level.value}: {actions}")
    if rule.level is not trust_policy.Level.SKIP:
        stores = ", ".join(s.name for s in rule.trust_stores) or "none (the signer's chain is not checked)"
        identities = ("any identity the trust stores vouch for" if rule.trusted_identities is None
                      else "; ".join(i.describe() for i in rule.trusted_identities))
        say(f"trust stores: {stores}")
        say(f"trusted identities: {identities}")
        if rule.host_signed is not None:
            host = rule.host_signed
            base_identities = ("any identity" if host.base_identities is None
                               else "; ".join(i.describe() for i in host.base_identities))
            say("hostSigned: only an image a compute host signed, with a provenance statement that verifies with "
                "the signer's key and names the image, whose project is the image's owner (and, at boot, the "
                "booting project), made from a base image whose signer chained, when the snapshot was made, to "
                f"{', '.join(s.name for s in host.base_trust_stores)} (base identities: {base_identities})")
        if provenance is not None:
            say(f"provenance: {provenance['verdict']}: {provenance['message']}")


def _provenance(setup: Any, rule: Any, facts: Any, document: Any, cert_path: str | None) -> dict[str, Any]:
    """The provenance verdict of a ``hostSigned`` rule on the image: ``passed`` (every hostSigned check),
    ``refused`` (with the error's reason and message) or ``not-signed``.  The chain and the data are not judged."""
    from imgsign import trust_policy
    from imgsign.cli._common import signing_certificate
    from imgsign.policy import Policy
    from imgsign.properties import SignatureProperties, is_signed, properties_from_document

    properties = properties_from_document(document) if isinstance(document, dict) else {}
    if not is_signed(properties):
        return {"verdict": "not-signed", "message": "the image is not signed: a hostSigned rule refuses it",
                "reason": "unsigned-image", "project": None, "host": None, "base_image": None}
    signed = SignatureProperties.from_mapping(properties)
    certificate = signing_certificate(setup.ctx, cert_path, signed)
    evidence = setup.evidence(rule, certificate, properties, signed.signature, image_id=facts.image_id,
                              policy=Policy()).evidence
    proof = evidence.provenance
    error, reason = trust_policy.check_host_signed(rule, facts, proof)
    return {"verdict": "refused" if error is not None else "passed",
            "message": error.message if error is not None else reason,
            "reason": error.reason if error is not None else "ok",
            "project": proof.project_id if proof else None, "host": proof.host if proof else None,
            "base_image": proof.base_image_id if proof else None}
