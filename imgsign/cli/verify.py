"""``imgsign verify``: verify an image against its img_signature* properties."""

from __future__ import annotations

import json
from typing import Any

import click

from imgsign import errors
from imgsign.cli._common import (
    KEY_MANAGER_ID,
    fail,
    image_digest,
    is_quiet,
    load_properties,
    policy_options,
    quiet_option,
    signing_certificate,
    trust_anchors,
)
from imgsign.properties import SignatureProperties


@click.command("verify")
@click.argument("image", type=click.Path(dir_okay=True))
@click.option("--properties", "properties_path", required=True, type=click.Path(dir_okay=False),
              help="JSON: the properties, or `openstack image show -f json` output.")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Signing certificate, PEM or DER "
                   "(default: fetched from the key manager by img_signature_certificate_uuid).")
@click.option("--trusted", "trusted_ids", multiple=True, metavar="UUID", type=KEY_MANAGER_ID,
              help="Require a chain to this trusted CA certificate in the key manager (repeatable; "
                   "default: [imgsign] trusted_certificate_ids).")
@click.option("--trusted-file", "trusted_files", multiple=True, type=click.Path(dir_okay=False),
              help="Require a chain to a trusted CA certificate in this PEM file (repeatable, bundles allowed).")
@click.option("--intermediate", "intermediate_files", multiple=True, type=click.Path(dir_okay=False),
              help="Untrusted intermediate CA certificates (PEM bundle) to build the chain with.")
@click.option("--crl", "crl_files", multiple=True, type=click.Path(dir_okay=False),
              help="Certificate revocation list, PEM or DER (repeatable; stored CRLs are used too).")
@click.option("--require-crl", is_flag=True, default=None, help="Refuse when an issuer on the chain has no CRL.")
@click.option("--max-chain-depth", type=click.IntRange(0, 255), help="Most intermediate CAs (default 8).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as a JSON object on stdout.")
@policy_options
@quiet_option
@click.pass_context
def verify_command(ctx: click.Context, image: str, properties_path: str, cert_path: str | None,
           trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...], intermediate_files: tuple[str, ...],
           crl_files: tuple[str, ...], require_crl: bool | None, max_chain_depth: int | None, as_json: bool,
           allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> None:
    """Verify IMAGE against its img_signature* properties. Exit 0 only if valid."""
    quiet = is_quiet(ctx, quiet)
    # Every key is always there (null until known), on success and on failure alike.
    result: dict[str, Any] = {
        "image": image, "valid": False, "reason": None, "message": None, "exit_code": None,
        "img_signature_hash_method": None, "img_signature_key_type": None, "img_signature_certificate_uuid": None,
        "certificate_subject": None, "chain": None,
    }
    try:
        properties = SignatureProperties.from_mapping(load_properties(properties_path))
        result.update({k: v for k, v in properties.as_dict().items() if k != "img_signature"})
        with image_digest(image, properties.hash_method, "verifying", quiet or as_json) as digest:
            # Everything below until digest() runs while the image is hashed on another core.
            from imgsign import certificates, chain
            from imgsign.policy import Policy
            from imgsign.verifier import Verifier

            certificate = signing_certificate(ctx, cert_path, properties)
            result["certificate_subject"] = certificates.describe(certificate)
            policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
            anchors = trust_anchors(ctx, trusted_ids, trusted_files, intermediate_files, crl_files,
                                    require_crl, max_chain_depth)
            if anchors is not None:
                path = chain.validate_chain(certificate, anchors, policy)
                result["chain"] = [certificates.describe(c) for c in path]
            verifier = Verifier.for_certificate(properties, certificate, policy=policy)
            verifier.verify_precomputed(digest())
    except errors.ImgsignError as exc:
        if as_json:
            result.update({"reason": exc.reason, "message": exc.message, "exit_code": exc.exit_code})
            click.echo(json.dumps(result, indent=2))
        fail(exc)
    trust = f", chain to trusted {result['chain'][-1]}" if result["chain"] else ""
    message = (f"{image} matches its signature ({properties.key_type.value}, {properties.hash_method.value}, "
               f"certificate {result['certificate_subject']}{trust})")
    result.update({"valid": True, "reason": "ok", "message": message, "exit_code": 0})
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not quiet:
        click.echo(f"OK: {message}")
