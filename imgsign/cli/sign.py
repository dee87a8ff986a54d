"""``imgsign sign``: sign an image and print its img_signature* properties."""

from __future__ import annotations

from typing import Any

import click

from imgsign import errors
from imgsign._internal.files import plan_outputs, read_small_file
from imgsign.algorithms import HashMethod, KeyType
from imgsign.cli._common import (
    KEY_MANAGER_ID,
    hash_choice,
    image_digest,
    is_quiet,
    key_type_choice,
    load_key,
    open_store,
    policy_options,
    quiet_option,
)


@click.command("sign")
@click.argument("image", type=click.Path(dir_okay=True))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Private key: a PEM or DER file, a key in a token (pkcs11:token=...;object=...) or in "
                   "OpenBao/Vault transit (hashivault://NAME).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="File holding the key's passphrase.")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Signing certificate: checked against the key; its id is looked up in the key manager.")
@click.option("--cert-uuid", type=KEY_MANAGER_ID,
              help="img_signature_certificate_uuid to emit (skips the key manager lookup).")
@click.option("--store-cert", is_flag=True, help="Store --cert in the key manager unless an identical one is there.")
@click.option("--hash-method", type=hash_choice(), default="SHA-256", show_default=True)
@click.option("--key-type", type=key_type_choice(), help="Expected key type (default: derived from the key).")
@click.option("--format", "fmt", type=click.Choice(["json", "openstack", "env"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the properties here (atomically).")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--no-raw-digest", is_flag=True,
              help="For a qcow2 image, do not add the imgsign_raw_v1_* statement (the digest of its raw conversion).")
@policy_options
@quiet_option
@click.pass_context
def sign_command(ctx: click.Context, image: str, key_path: str, passphrase_file: str | None, cert_path: str | None,
         cert_uuid: str | None, store_cert: bool, hash_method: str, key_type: str | None, fmt: str,
         output: str | None, force: bool, allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool,
         no_raw_digest: bool) -> None:
    """Sign IMAGE and print its img_signature* properties."""
    if cert_path is None and cert_uuid is None:
        raise click.UsageError(
            "give --cert (looked up in, or with --store-cert stored into, the key manager) or --cert-uuid"
        )
    if store_cert and cert_path is None:
        raise click.UsageError("--store-cert needs --cert")
    if store_cert and cert_uuid is not None:
        raise click.UsageError("--store-cert and --cert-uuid exclude each other: the key manager assigns the id")
    outputs = plan_outputs(
        [(output, "output", 0o644)] if output else [],
        [(image, "image"), (key_path, "private key"), (passphrase_file, "passphrase file"),
         (cert_path, "certificate"), (ctx.find_root().obj.get("config_file"), "configuration file")],
        force=force,
    )
    method = HashMethod.parse(hash_method)
    with image_digest(image, method, "signing", is_quiet(ctx, quiet)) as digest:
        # Everything below until digest() runs while the image is hashed on another core.
        from imgsign.policy import Policy
        from imgsign.signer import Signer

        policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
        certificate = None
        if cert_path is not None:  # x509 loads only when a certificate is involved
            from imgsign import certificates

            certificate = certificates.load_certificate(read_small_file(cert_path, "certificate"))
        key, _ = load_key(key_path, passphrase_file, ctx=ctx)
        if cert_uuid is None:
            # Check key and certificate before storing anything.
            Signer(key, "pending", method, certificate=certificate, policy=policy)
            cert_uuid = _certificate_id(ctx, certificate, store_cert)
        signer = Signer(
            key, cert_uuid, method,
            key_type=KeyType.parse(key_type) if key_type else None, certificate=certificate, policy=policy,
        )
        image_digest_value = digest()
        properties = signer.sign_digest(image_digest_value)
        emitted = properties.as_dict()
        if not no_raw_digest and digest.handle is not None:
            from imgsign.cli._raw_statement import raw_statement_properties

            emitted |= raw_statement_properties(image, digest.handle, digest.head, key, properties,
                                                image_digest_value, is_quiet(ctx, quiet))
    from imgsign.properties import render_properties

    text = render_properties(emitted, fmt)
    if outputs:
        outputs[0].write(text.encode())
    else:
        click.echo(text, nl=False)


def _certificate_id(ctx: click.Context, certificate: Any, store: bool) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign import certificates

    der = certificate.public_bytes(Encoding.DER)
    km = open_store(ctx)
    found = km.find_certificate(der)
    if found is not None:
        return found
    if not store:
        raise errors.ObjectNotFound(
            f"certificate {certificates.describe(certificate)} is not in the {km.description}: "
            f"add --store-cert to store it, or give --cert-uuid"
        )
    cert_id = km.store_certificate(der, certificates.describe(certificate))
    click.echo(f"stored certificate {certificates.describe(certificate)} as {cert_id} in the {km.description}",
               err=True)
    return cert_id
