"""``imgsign verify``: verify an image against its img_signature* properties."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors
from imgsign.cli._common import (
    fail,
    image_digest,
    is_quiet,
    load_properties,
    policy_options,
    progress_bar,
    quiet_option,
    say,
    signing_certificate,
    trust_anchors,
    trust_options,
)
from imgsign.cli._glance import cloud_options, glance_client
from imgsign.cli._output import emit, format_option
from imgsign.properties import SignatureProperties

if TYPE_CHECKING:
    from imgsign._internal.ocsp_client import OcspClient
    from imgsign.verifier import Verifier


def ocsp_client(ctx: click.Context, document: Mapping[str, object]) -> OcspClient | None:
    """OCSP for the chain, as ``[imgsign] ocsp`` says (None when off): the response stored with the
    signature (imgsign_ocsp_v1) first, then the responders the certificates name."""
    from imgsign import ocsp
    from imgsign._internal.ocsp_client import OcspClient
    from imgsign.cli._common import config, has_config

    settings = config(ctx).imgsign if has_config(ctx) else None
    if settings is not None and settings.ocsp == "off":
        return None
    stored = ocsp.response_from_properties(document)
    return OcspClient([stored] if stored else [], network=settings is None or settings.ocsp == "strict",
                      timeout=settings.ocsp_timeout if settings is not None else 10.0)


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
@format_option()
@cloud_options
@policy_options
@quiet_option
@click.pass_context
def verify_command(ctx: click.Context, image: str | None, glance_image_id: str | None, properties_path: str | None,
           cert_path: str | None, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...],
           intermediate_files: tuple[str, ...], crl_files: tuple[str, ...], require_crl: bool | None,
           max_chain_depth: int | None, tsa_ca_files: tuple[str, ...], fmt: str | None, os_cloud: str | None,
           os_region_name: str | None, allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> None:
    """Verify IMAGE (or Glance image --image ID) against its img_signature* properties. Exit 0 only if valid."""
    if (image is None) == (glance_image_id is None):
        raise click.UsageError("give either IMAGE (a file) or --image ID (a Glance image)")
    if image is not None and properties_path is None:
        raise click.UsageError("verifying a file needs --properties")
    if glance_image_id is not None and properties_path is not None:
        raise click.UsageError("--image takes the properties from the image record: leave out --properties")
    quiet = is_quiet(ctx, quiet)
    trust = {"trusted_ids": trusted_ids, "trusted_files": trusted_files, "intermediate_files": intermediate_files,
             "crl_files": crl_files, "require_crl": require_crl, "max_chain_depth": max_chain_depth}
    result, error = verify_result(ctx, image=image, glance_image_id=glance_image_id, properties_path=properties_path,
                                  cert_path=cert_path, trust=trust, tsa_ca_files=tsa_ca_files,
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
                  allow_weak_keys: bool = False,
                  ignore_cert_dates: bool = False,
                  progress: bool = False) -> tuple[dict[str, Any], errors.ImgsignError | None]:
    """Verify a file against its properties file, or a Glance image against its record: the result document
    (every key always there, null until known; JSON output schemas) and the error that made it invalid (None:
    valid). ``trust`` holds :func:`~imgsign.cli._common.trust_anchors`' arguments by name."""
    trust = dict(trust or {})
    shown = image if image is not None else glance_image_id
    result: dict[str, Any] = {
        "image": shown, "valid": False, "reason": None, "message": None, "exit_code": None,
        "img_signature_hash_method": None, "img_signature_key_type": None, "img_signature_certificate_uuid": None,
        "certificate_subject": None, "chain": None, "timestamp": None, "ocsp": None,
    }
    quiet = not progress

    def check_signer(properties: SignatureProperties, document: Mapping[str, object]) -> Verifier:
        """Certificate, timestamp, chain and key checks: everything that needs no image data."""
        import dataclasses

        from imgsign import certificates, chain, timestamp
        from imgsign.cli._signing import tsa_roots
        from imgsign.policy import Policy
        from imgsign.verifier import Verifier

        result.update({k: v for k, v in properties.as_dict().items() if k != "img_signature"})
        certificate = signing_certificate(ctx, cert_path, properties)
        result["certificate_subject"] = certificates.describe(certificate)
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
        anchors = trust_anchors(ctx, tuple(trust.get("trusted_ids") or ()), tuple(trust.get("trusted_files") or ()),
                                tuple(trust.get("intermediate_files") or ()), tuple(trust.get("crl_files") or ()),
                                trust.get("require_crl"), trust.get("max_chain_depth"))
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
            document = load_properties(properties_path)
            properties = SignatureProperties.from_mapping(document)
            with image_digest(image, properties.hash_method, "verifying", quiet) as digest:
                # check_signer runs while the image is hashed on another core.
                check_signer(properties, document).verify_precomputed(digest())
        elif glance_image_id is not None:
            from imgsign.properties import is_signed, properties_from_document

            glance = glance_client(ctx)
            record = glance.get_image(glance_image_id)
            document = properties_from_document(record)
            if not is_signed(document):  # as audit and the hook say it: unsigned (60), not malformed (11)
                raise errors.UnsignedImage(f"Glance image {glance_image_id} is not signed: it has no "
                                           f"img_signature* properties")
            properties = SignatureProperties.from_mapping(document)
            verifier = check_signer(properties, document)
            size = record.get("size")
            with progress_bar(size if isinstance(size, int) else 0, "verifying", quiet) as bar:
                verifier.verify_data(glance.iter_data(glance_image_id), bar)
        else:
            raise click.UsageError("give either IMAGE (a file) with --properties or --image ID (a Glance image)")
    except errors.ImgsignError as exc:
        result.update({"reason": exc.reason, "message": exc.message, "exit_code": exc.exit_code})
        return result, exc
    what = shown if image is not None else f"Glance image {shown}"
    anchor = f", chain to trusted {result['chain'][-1]}" if result["chain"] else ""
    message = (f"{what} matches its signature ({properties.key_type.value}, {properties.hash_method.value}, "
               f"certificate {result['certificate_subject']}{anchor})")
    result.update({"valid": True, "reason": "ok", "message": message, "exit_code": 0})
    return result, None
