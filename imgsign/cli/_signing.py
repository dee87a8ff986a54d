"""What ``sign`` and ``upload`` share: the signing options, the signer they lead to, the properties."""

from __future__ import annotations

import dataclasses
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


def timestamp_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--tsa, --tsa-hash, --tsa-ca: the RFC 3161 timestamp added to a signature."""
    for option in reversed([
        click.option("--tsa", "tsa_url", metavar="URL",
                     help="Add an RFC 3161 timestamp over the signature from this TSA (imgsign_tst_v1; "
                          "default: [imgsign] tsa_url)."),
        click.option("--tsa-hash", type=click.Choice(["SHA-256", "SHA-512"]),
                     help="Hash of the signature sent to the TSA (default: [imgsign] tsa_hash, SHA-256)."),
        click.option("--tsa-ca", "tsa_ca_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Trusted TSA certificates (PEM): the token is checked against them before anything "
                          "is printed (default: [imgsign] tsa_ca_file)."),
    ]):
        func = option(func)
    return func


@dataclasses.dataclass(frozen=True)
class TimestampSettings:
    """Where and how to fetch a timestamp token when signing."""

    url: str
    hash_method: str
    timeout: float
    roots: tuple[Any, ...] = ()


def timestamp_settings(ctx: click.Context, tsa_url: str | None, tsa_hash: str | None,
                       tsa_ca_files: tuple[str, ...]) -> TimestampSettings | None:
    """The TSA to ask (``--tsa``, else ``[imgsign] tsa_url``), or None for no timestamp."""
    from imgsign._internal.binary_post import check_url
    from imgsign.cli._common import config, has_config

    settings = config(ctx).imgsign if has_config(ctx) else None
    url = tsa_url or (settings.tsa_url if settings is not None else None)
    if not url:
        if tsa_hash or tsa_ca_files:
            raise click.UsageError("--tsa-hash and --tsa-ca need --tsa (or [imgsign] tsa_url)")
        return None
    if tsa_url:
        try:
            check_url(tsa_url, "--tsa", errors.InputError)
        except errors.InputError as exc:
            raise click.BadParameter(exc.message, param_hint="--tsa") from None
    else:
        check_url(url, "[imgsign] tsa_url", errors.InputError)
    files = list(tsa_ca_files) or ([settings.tsa_ca_file] if settings is not None and settings.tsa_ca_file else [])
    return TimestampSettings(url, tsa_hash or (settings.tsa_hash if settings is not None else "SHA-256"),
                             settings.tsa_timeout if settings is not None else 30.0, tuple(load_tsa_roots(files)))


def tsa_roots(ctx: click.Context, tsa_ca_files: tuple[str, ...]) -> list[Any]:
    """The trusted TSA certificates for verifying: ``--tsa-ca``, else ``[imgsign] tsa_ca_file``."""
    from imgsign.cli._common import config, has_config

    if tsa_ca_files:
        return load_tsa_roots(list(tsa_ca_files))
    settings = config(ctx).imgsign if has_config(ctx) else None
    return load_tsa_roots([settings.tsa_ca_file]) if settings is not None and settings.tsa_ca_file else []


def load_tsa_roots(paths: list[str]) -> list[Any]:
    """The trusted TSA certificates in ``paths`` (PEM bundles)."""
    from imgsign import certificates

    return [cert for path in paths
            for cert in certificates.load_certificates(read_small_file(path, "TSA certificates"))]


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
                      head: bytes, raw_digest: bool, quiet: bool,
                      timestamp: TimestampSettings | None = None) -> dict[str, str]:
    """The img_signature* properties for ``digest``, plus the raw-digest statement of a qcow2 image
    (which reads the image again through ``handle``) unless ``raw_digest`` is False, plus the
    timestamp token over the signature when ``timestamp`` names a TSA."""
    properties = signer.sign_digest(digest)
    emitted = properties.as_dict()
    if timestamp is not None:
        from imgsign import timestamp as tst
        from imgsign._internal.tsa_client import fetch_token

        token = fetch_token(timestamp.url, properties.signature, hash_method=timestamp.hash_method,
                            timeout=timestamp.timeout, roots=timestamp.roots)
        emitted |= tst.properties(token)
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
