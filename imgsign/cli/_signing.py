"""What ``sign`` and ``upload`` share: the signing options, the signer they lead to, the properties."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from imgsign import errors
from imgsign._internal.files import read_small_file
from imgsign.cli._common import KEY_MANAGER_ID, hash_choice, is_quiet, key_type_choice, load_key, open_store, say

if TYPE_CHECKING:
    from imgsign.algorithms import HashMethod
    from imgsign.keys import PrivateKey
    from imgsign.policy import Policy
    from imgsign.signer import Signer


def signing_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--key, --passphrase-file, --cert, --cert-uuid, --store-cert, --hash-method, --key-type, --no-raw-digest."""
    for option in reversed([
        click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
                     help="Private key: a PEM or DER file, a key in a token (pkcs11:token=...;object=...) or "
                          "in OpenBao/Vault transit (hashivault://NAME)."),
        click.option("--passphrase-file", type=click.Path(dir_okay=False), help="File holding the key's passphrase."),
        click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
                     help="Signing certificate: checked against the key; its id is looked up in the key manager."),
        click.option("--cert-uuid", type=KEY_MANAGER_ID,
                     help="img_signature_certificate_uuid to emit (skips the key manager lookup)."),
        click.option("--store-cert", is_flag=True,
                     help="Store --cert in the key manager unless an identical one is there."),
        click.option("--hash-method", type=hash_choice(), default="SHA-256", show_default=True),
        click.option("--key-type", type=key_type_choice(), help="Expected key type (default: derived from the key)."),
        click.option("--no-raw-digest", is_flag=True,
                     help="For a qcow2 image, do not add the imgsign_raw_v1_* statement "
                          "(the digest of its raw conversion)."),
    ]):
        func = option(func)
    return func


def check_signing_usage(cert_path: str | None, cert_uuid: str | None, store_cert: bool) -> None:
    """The combinations of --cert, --cert-uuid and --store-cert that make sense."""
    if cert_path is None and cert_uuid is None:
        raise click.UsageError(
            "give --cert (looked up in, or with --store-cert stored into, the key manager) or --cert-uuid"
        )
    if store_cert and cert_path is None:
        raise click.UsageError("--store-cert needs --cert")
    if store_cert and cert_uuid is not None:
        raise click.UsageError("--store-cert and --cert-uuid exclude each other: the key manager assigns the id")


def prepare_signer(ctx: click.Context, key_path: str, passphrase_file: str | None, cert_path: str | None,
                   cert_uuid: str | None, store_cert: bool, method: HashMethod, key_type: str | None,
                   policy: Policy) -> tuple[Signer, PrivateKey]:
    """Load the key (and certificate), check them, find or store the certificate's id: the signer."""
    from imgsign.algorithms import KeyType
    from imgsign.signer import Signer

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
    return signer, key


def signed_properties(image: str, signer: Signer, key: PrivateKey, digest: bytes, handle: BinaryIO | None,
                      head: bytes, raw_digest: bool, quiet: bool) -> dict[str, str]:
    """The img_signature* properties for ``digest``, plus the raw-digest statement of a qcow2 image
    (which reads the image again through ``handle``) unless ``raw_digest`` is False."""
    properties = signer.sign_digest(digest)
    emitted = properties.as_dict()
    if raw_digest and handle is not None:
        from imgsign.cli._raw_statement import raw_statement_properties

        emitted |= raw_statement_properties(image, handle, head, key, properties, digest, quiet)
    return emitted


def _certificate_id(ctx: click.Context, certificate: Any, store: bool) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign import certificates
    from imgsign.cli._common import config
    from imgsign.cli._glance import keystone_scope
    from imgsign.keymanager import config as km_config

    der = certificate.public_bytes(Encoding.DER)
    km = open_store(ctx)
    conf = config(ctx)
    scope = keystone_scope(ctx) if km_config.project_matters(conf) else None
    if scope is not None and km.project is not None:
        km_config.check_project_for_glance(km.project, scope)
    found = km.find_certificate(der)
    if found is not None:
        if store and not is_quiet(ctx, False):  # say where, as when it is stored
            say(f"imgsign: using certificate {certificates.describe(certificate)}, already stored as {found} in the "
                f"{km.description}", err=True)
        return found
    if not store:
        raise errors.ObjectNotFound(
            f"certificate {certificates.describe(certificate)} is not in the {km.description}: "
            f"add --store-cert to store it, or give --cert-uuid"
        )
    cert_id = km.store_certificate(der, certificates.describe(certificate))
    if not is_quiet(ctx, False):
        say(f"stored certificate {certificates.describe(certificate)} as {cert_id} in the {km.description}",
            err=True)
    if scope is not None and km_config.backend_name(conf) == km_config.EMBEDDED:
        say(f"imgsign: warning: the {km.description} is a file on this machine: Glance and Nova cannot "
            f"read the certificate from it unless their [key_manager] opens this same file; in a cloud, "
            f"store it in the key manager they use ([key_manager] backend = barbican, see "
            f"doc/source/admin/key-manager.md)", err=True)
    return cert_id
