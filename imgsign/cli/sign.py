"""``imgsign sign``: sign an image and print its img_signature* properties."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from imgsign._internal.files import plan_outputs
from imgsign.algorithms import HashMethod
from imgsign.cli._common import image_digest, is_quiet, policy_options, quiet_option
from imgsign.cli._glance import cloud_options

if TYPE_CHECKING:
    from imgsign.cli._signing import TimestampSettings
from imgsign.cli._output import format_option, render
from imgsign.cli._signing import (
    check_signing_usage,
    prepare_signer,
    signed_properties,
    signing_options,
    timestamp_options,
    timestamp_settings,
)


@click.command("sign")
@click.argument("image", type=click.Path(dir_okay=True))
@signing_options
@timestamp_options
@format_option(default="json", extra=("openstack", "env"), legacy_json=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the properties here (atomically).")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--ocsp-staple", "ocsp_issuer", metavar="ISSUER_PEM", type=click.Path(dir_okay=False),
              help="Ask the OCSP responder --cert names about it (ISSUER_PEM: the certificate of its issuer) and "
                   "store the answer with the signature (imgsign_ocsp_v1), so hosts check revocation offline.")
@cloud_options
@policy_options
@quiet_option
@click.pass_context
def sign_command(ctx: click.Context, image: str, key_path: str, passphrase_file: str | None, cert_path: str | None,
         cert_uuid: str | None, store_cert: bool, hash_method: str, key_type: str | None, fmt: str,
         output: str | None, force: bool, os_cloud: str | None, os_region_name: str | None, allow_weak_keys: bool,
         ignore_cert_dates: bool, quiet: bool, no_raw_digest: bool, tsa_url: str | None, tsa_hash: str | None,
         tsa_ca_files: tuple[str, ...], ocsp_issuer: str | None) -> None:
    """Sign IMAGE and print its img_signature* properties.

    With a Keystone session (--os-cloud, $OS_CLOUD or $OS_AUTH_URL) the certificate is looked up in,
    or stored into, the key manager under the token's project, where Glance reads it.
    """
    check_signing_usage(cert_path, cert_uuid, store_cert)
    stamp = timestamp_settings(ctx, tsa_url, tsa_hash, tsa_ca_files)
    if ocsp_issuer is not None and cert_path is None:
        raise click.UsageError("--ocsp-staple needs --cert (the certificate the responder is asked about)")
    outputs = plan_outputs(
        [(output, "output", 0o644)] if output else [],
        [(image, "image"), (key_path, "private key"), (passphrase_file, "passphrase file"),
         (cert_path, "certificate"), (ctx.find_root().obj.get("config_file"), "configuration file")],
        force=force,
    )
    emitted = image_properties(ctx, image, key_path=key_path, passphrase_file=passphrase_file, cert_path=cert_path,
                               cert_uuid=cert_uuid, store_cert=store_cert, hash_method=hash_method,
                               key_type=key_type, allow_weak_keys=allow_weak_keys,
                               ignore_cert_dates=ignore_cert_dates, no_raw_digest=no_raw_digest,
                               quiet=is_quiet(ctx, quiet), stamp=stamp, ocsp_issuer=ocsp_issuer)
    from imgsign.properties import render_properties

    text = render_properties(emitted, fmt) if fmt in ("json", "openstack", "env") else render(emitted, fmt)
    if outputs:
        outputs[0].write(text.encode())
    else:
        click.echo(text, nl=False)


def image_properties(ctx: click.Context, image: str, *, key_path: str, passphrase_file: str | None = None,
                     cert_path: str | None = None, cert_uuid: str | None = None, store_cert: bool = False,
                     hash_method: str = "SHA-256", key_type: str | None = None, allow_weak_keys: bool = False,
                     ignore_cert_dates: bool = False, no_raw_digest: bool = False,
                     quiet: bool = True, stamp: TimestampSettings | None = None,
                     ocsp_issuer: str | None = None) -> dict[str, str]:
    """Sign the file ``image``: its img_signature* properties (and the raw-digest statement of a qcow2
    image unless ``no_raw_digest``), with the certificate looked up in, or stored into, the key manager;
    with ``stamp``, an RFC 3161 timestamp over the signature; with ``ocsp_issuer`` (the issuer's PEM
    file), the OCSP answer about the certificate stored beside it."""
    check_signing_usage(cert_path, cert_uuid, store_cert)
    method = HashMethod.parse(hash_method)
    with image_digest(image, method, "signing", quiet) as digest:
        # Everything below until digest() runs while the image is hashed on another core.
        from imgsign.policy import Policy

        policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
        # --store-cert changes the key manager: only once the whole image has been read, so a missing or
        # unreadable image leaves nothing stored (the key and certificate are checked after it, then stored).
        image_digest_now = digest() if store_cert and cert_uuid is None else None
        signer, key = prepare_signer(ctx, key_path, passphrase_file, cert_path, cert_uuid, store_cert, method,
                                     key_type, policy)
        stapled = staple_ocsp(ctx, cert_path, ocsp_issuer) if ocsp_issuer and cert_path else {}
        return stapled | signed_properties(image, signer, key, image_digest_now or digest(), digest.handle,
                                           digest.head, not no_raw_digest, quiet, stamp)


def staple_ocsp(ctx: click.Context, cert_path: str, issuer_path: str) -> dict[str, str]:
    """The imgsign_ocsp_v1 properties: a current "good" answer about the certificate from its responder."""
    from imgsign import certificates, errors, ocsp
    from imgsign._internal.files import read_small_file
    from imgsign._internal.ocsp_client import DEFAULT_TIMEOUT, fetch
    from imgsign.cli._common import config, has_config

    cert = certificates.load_certificate(read_small_file(cert_path, "certificate"))
    issuer = certificates.load_certificate(read_small_file(issuer_path, "issuer certificate"))
    settings = config(ctx).imgsign if has_config(ctx) else None
    fetched = fetch(cert, issuer, timeout=settings.ocsp_timeout if settings is not None else DEFAULT_TIMEOUT)
    if fetched is None:
        raise errors.OCSPUnavailable(f"certificate {certificates.describe(cert)} names no OCSP responder "
                                     f"(authorityInformationAccess): there is nothing to staple")
    answer, result = fetched
    if result.status == "revoked":
        raise errors.CertificateRevoked(f"certificate {certificates.describe(cert)} is revoked, says its OCSP "
                                        f"responder: refusing to sign with it")
    if result.status != "good":
        raise errors.OCSPStatusUnknown(
            f"the OCSP responder does not know certificate {certificates.describe(cert)}")
    return ocsp.properties(answer)
