"""The ``imgsign`` command line: a thin layer over the library.

Every failure is one :class:`~imgsign.errors.ImgsignError` subclass and exits
with that class's code (see README "Exit codes"); no traceback reaches the user
unless ``IMGSIGN_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors
from imgsign._internal.files import atomic_write, open_image, read_small_file
from imgsign.algorithms import HashMethod, KeyType
from imgsign.keys import PrivateKey, load_private_key
from imgsign.policy import Policy
from imgsign.properties import SignatureProperties, properties_from_document
from imgsign.sign import Signer
from imgsign.verify import Verifier

if TYPE_CHECKING:
    from cryptography import x509

    from imgsign import chain
    from imgsign.keymanager.castellan_store import CastellanStore

HASH_CHOICE = click.Choice([h.value for h in HashMethod])
KEY_TYPE_CHOICE = click.Choice([k.value for k in KeyType])


#: Commands defined in other modules, imported only when used (keeps `sign`/`verify` start-up lean).
_LAZY_COMMANDS = {
    "keygen": "imgsign.cli_keygen:keygen_command",
    "cert": "imgsign.cli_store:cert_group",
    "key": "imgsign.cli_store:key_group",
    "crl": "imgsign.cli_store:crl_group",
    "boot": "imgsign.cli_boot:boot_group",
}


class _Group(click.Group):
    """Turns imgsign errors into a one-line message and the class's exit code; loads the
    less common commands lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS:
            import importlib

            module, attr = _LAZY_COMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.ImgsignError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("imgsign: interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
            if os.environ.get("IMGSIGN_DEBUG"):
                raise
            click.echo(f"imgsign: internal error: {type(exc).__name__}: {exc} (IMGSIGN_DEBUG=1 shows details)", err=True)
            sys.exit(1)


def _fail(exc: errors.ImgsignError) -> None:
    click.echo(f"imgsign: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgsign")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no success messages.")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
              help="imgsign.conf (default: $IMGSIGN_CONFIG, /etc/imgsign/imgsign.conf, ~/.config/imgsign/imgsign.conf).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, config_file: str | None) -> None:
    """Sign OpenStack VM images and verify them (img_signature* properties)."""
    ctx.obj = {"quiet": quiet, "config_file": config_file}


def _has_config(ctx: click.Context) -> bool:
    """Is there a configuration file (--config, $IMGSIGN_CONFIG or a default location)?"""
    from imgsign import config

    return config.find_config_file(ctx.find_root().obj.get("config_file")) is not None


def _config(ctx: click.Context) -> Any:
    """imgsign.conf, read once (castellan and oslo load only when it is needed)."""
    from imgsign import config

    root = ctx.find_root()
    if "conf" not in root.obj:
        root.obj["conf"] = config.load(root.obj.get("config_file"))
    return root.obj["conf"]


def _store_is_open(ctx: click.Context) -> bool:
    return "store" in ctx.find_root().obj


def open_store(ctx: click.Context) -> CastellanStore:
    """The configured key manager (embedded SQLite store unless configured otherwise)."""
    from imgsign import config

    root = ctx.find_root()
    if "store" not in root.obj:
        root.obj["store"] = config.open_store(_config(ctx))
    return root.obj["store"]


def _quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no success messages.")(func)


def _policy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--allow-weak-keys", is_flag=True, help="Accept RSA/DSA keys under 2048 bits (Glance/Nova accept them)."
    )(func)
    return click.option(
        "--ignore-cert-dates", is_flag=True, help="Do not check the certificate's notBefore/notAfter."
    )(func)


def _is_quiet(ctx: click.Context, quiet: bool) -> bool:
    return quiet or bool(ctx.obj and ctx.obj.get("quiet"))


@contextlib.contextmanager
def _progress(size: int, label: str, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr, only when stderr is a terminal and not quiet."""
    if quiet or not sys.stderr.isatty() or size < 64 * 1024 * 1024:
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr, show_pos=False, show_percent=True) as bar:
        yield bar.update


def _read_passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    data = read_small_file(path, "passphrase file")
    return data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data


def _load_key(path: str, passphrase_file: str | None, what: str = "private key") -> tuple[PrivateKey, bytes | None]:
    data = read_small_file(path, what)
    passphrase = _read_passphrase(passphrase_file)
    try:
        return load_private_key(data, passphrase), passphrase
    except errors.PrivateKeyError as exc:
        if passphrase is None and "encrypted" in exc.message and sys.stdin.isatty():
            passphrase = click.prompt(f"Passphrase for {path}", hide_input=True).encode()
            return load_private_key(data, passphrase), passphrase
        raise


# --- sign ---------------------------------------------------------------------------

@cli.command()
@click.argument("image", type=click.Path(dir_okay=True))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Private key, PEM or DER.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="File holding the key's passphrase.")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Signing certificate: checked against the key; its id is looked up in the key manager.")
@click.option("--cert-uuid", help="img_signature_certificate_uuid to emit (skips the key manager lookup).")
@click.option("--store-cert", is_flag=True, help="Store --cert in the key manager unless an identical one is there.")
@click.option("--hash-method", type=HASH_CHOICE, default="SHA-256", show_default=True)
@click.option("--key-type", type=KEY_TYPE_CHOICE, help="Expected key type (default: derived from the key).")
@click.option("--format", "fmt", type=click.Choice(["json", "openstack", "env"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the properties here (atomically).")
@_policy_options
@_quiet_option
@click.pass_context
def sign(ctx: click.Context, image: str, key_path: str, passphrase_file: str | None, cert_path: str | None,
         cert_uuid: str | None, store_cert: bool, hash_method: str, key_type: str | None, fmt: str,
         output: str | None, allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> None:
    """Sign IMAGE and print its img_signature* properties."""
    if cert_path is None and cert_uuid is None:
        raise errors.InputError("give --cert (looked up in, or with --store-cert stored into, the key manager) or --cert-uuid")
    if store_cert and cert_path is None:
        raise errors.InputError("--store-cert needs --cert")
    if store_cert and cert_uuid is not None:
        raise errors.InputError("--store-cert and --cert-uuid exclude each other: the key manager assigns the id")
    policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
    certificate = None
    if cert_path is not None:  # x509 loads only when a certificate is involved
        from imgsign import certificates

        certificate = certificates.load_certificate(read_small_file(cert_path, "certificate"))
    key, _ = _load_key(key_path, passphrase_file)
    if cert_uuid is None:
        # Check key and certificate before storing anything.
        Signer(key, "pending", HashMethod.parse(hash_method), certificate=certificate, policy=policy)
        cert_uuid = _certificate_id(ctx, certificate, store_cert)  # type: ignore[arg-type]
    signer = Signer(
        key, cert_uuid, HashMethod.parse(hash_method),
        key_type=KeyType.parse(key_type) if key_type else None, certificate=certificate, policy=policy,
    )
    with open_image(image) as (handle, size), _progress(size, "signing", _is_quiet(ctx, quiet)) as progress:
        properties = signer.sign(handle, progress)
    text = {"json": properties.to_json, "openstack": properties.to_openstack, "env": properties.to_env}[fmt]()
    if output:
        atomic_write(output, text.encode())
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
    click.echo(f"stored certificate {certificates.describe(certificate)} as {cert_id} in the {km.description}", err=True)
    return cert_id


# --- verify -------------------------------------------------------------------------

@cli.command()
@click.argument("image", type=click.Path(dir_okay=True))
@click.option("--properties", "properties_path", required=True, type=click.Path(dir_okay=False),
              help="JSON: the properties, or `openstack image show -f json` output.")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Signing certificate, PEM or DER (default: fetched from the key manager by img_signature_certificate_uuid).")
@click.option("--trusted", "trusted_ids", multiple=True, metavar="UUID",
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
@_policy_options
@_quiet_option
@click.pass_context
def verify(ctx: click.Context, image: str, properties_path: str, cert_path: str | None, trusted_ids: tuple[str, ...],
           trusted_files: tuple[str, ...], intermediate_files: tuple[str, ...], crl_files: tuple[str, ...],
           require_crl: bool | None, max_chain_depth: int | None, as_json: bool,
           allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> None:
    """Verify IMAGE against its img_signature* properties. Exit 0 only if valid."""
    from imgsign import certificates, chain

    quiet = _is_quiet(ctx, quiet)
    result: dict[str, Any] = {"image": image, "valid": False}
    try:
        properties = SignatureProperties.from_mapping(_load_properties(properties_path))
        result.update({k: v for k, v in properties.as_dict().items() if k != "img_signature"})
        certificate = signing_certificate(ctx, cert_path, properties)
        result["certificate_subject"] = certificates.describe(certificate)
        policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
        anchors = _trust_anchors(ctx, trusted_ids, trusted_files, intermediate_files, crl_files,
                                 require_crl, max_chain_depth)
        if anchors is not None:
            path = chain.validate_chain(certificate, anchors, policy)
            result["chain"] = [certificates.describe(c) for c in path]
        verifier = Verifier.for_certificate(properties, certificate, policy=policy)
        with open_image(image) as (handle, size), _progress(size, "verifying", quiet or as_json) as progress:
            verifier.verify_data(handle, progress)
    except errors.ImgsignError as exc:
        if as_json:
            result.update({"reason": exc.reason, "message": exc.message, "exit_code": exc.exit_code})
            click.echo(json.dumps(result, indent=2))
        _fail(exc)
    result.update({"valid": True, "reason": "ok", "exit_code": 0})
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not quiet:
        trust = f", chain to trusted {result['chain'][-1]}" if "chain" in result else ""
        click.echo(
            f"OK: {image} matches its signature ({properties.key_type.value}, {properties.hash_method.value}, "
            f"certificate {result['certificate_subject']}{trust})"
        )


def signing_certificate(ctx: click.Context, cert_path: str | None, properties: SignatureProperties) -> x509.Certificate:
    """``--cert``, else the certificate the key manager holds under img_signature_certificate_uuid."""
    from imgsign import certificates

    if cert_path is not None:
        data = read_small_file(cert_path, "certificate")
    else:
        data = open_store(ctx).get_certificate(properties.certificate_uuid)
    return certificates.load_certificate(data)


def effective_trusted_ids(ctx: click.Context, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...]) -> list[str]:
    """``--trusted``, else (when no ``--trusted-file`` either) ``[imgsign] trusted_certificate_ids``."""
    if trusted_ids or trusted_files or not _has_config(ctx):
        return list(trusted_ids)
    return list(_config(ctx).imgsign.trusted_certificate_ids)


def _trust_anchors(ctx: click.Context, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...],
                   intermediate_files: tuple[str, ...], crl_files: tuple[str, ...],
                   require_crl: bool | None, max_chain_depth: int | None) -> chain.TrustAnchors | None:
    """What to validate the signing certificate's chain against; None when no trust is configured."""
    from imgsign import certificates, chain

    settings = _config(ctx).imgsign if _has_config(ctx) else None
    ids = effective_trusted_ids(ctx, trusted_ids, trusted_files)
    if not ids and not trusted_files:
        if intermediate_files or crl_files or require_crl:
            raise errors.InputError("--intermediate, --crl and --require-crl need --trusted or --trusted-file")
        return None
    store = open_store(ctx) if ids or _store_is_open(ctx) else None
    trusted = [certificates.load_certificate(store.get_certificate(i)) for i in ids] if store else []
    for path in trusted_files:
        trusted += chain.load_certificates(read_small_file(path, "trusted certificates"))
    intermediates = [c for path in intermediate_files
                     for c in chain.load_certificates(read_small_file(path, "intermediate certificates"))]
    crls = [chain.load_crl(read_small_file(path, "CRL")) for path in crl_files]
    if store is not None:
        crls += [chain.load_crl(der) for _, der in store.get_crls()]
    return chain.TrustAnchors(
        trusted, intermediates, crls,
        require_crls=require_crl if require_crl is not None else bool(settings and settings.require_crls),
        max_depth=max_chain_depth if max_chain_depth is not None else (
            settings.max_chain_depth if settings else chain.DEFAULT_MAX_DEPTH),
    )


def _load_properties(path: str) -> Any:
    data = read_small_file(path, "properties file")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.InputError(f"properties file {path} is not valid JSON ({exc})") from None
    return properties_from_document(document)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="imgsign")
