"""``imgsign cert …``: signing certificates in the key manager."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import certificates, errors
from imgsign._internal.files import plan_outputs, read_small_file
from imgsign.cli._common import (
    KEY_MANAGER_ID,
    check_issuer_options,
    is_quiet,
    issuer_inputs,
    issuer_options,
    load_issuer,
    load_key,
    open_store,
    say,
    subject_option,
)
from imgsign.cli._output import emit, format_option

if TYPE_CHECKING:
    from imgsign.keys import PrivateKey


@click.group("cert")
def cert_group() -> None:
    """Signing certificates: make them for a key (issue, request), keep them in the key manager."""


@cert_group.command("store")
@click.argument("cert_path", metavar="CERT", type=click.Path(dir_okay=False))
@click.option("--name", help="A name for the certificate (default: its subject).")
@click.option("--key", "key_path",
              help="Refuse CERT unless it is a signing certificate for this private key (e.g. the one a CA "
                   "returned for `keygen --csr`); from a PEM bundle, store the certificate for this key.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --key.")
@format_option(legacy_json=False)
@click.pass_context
def cert_store(ctx: click.Context, cert_path: str, name: str | None, key_path: str | None,
               passphrase_file: str | None, fmt: str | None) -> None:
    """Store CERT (PEM or DER) and print its UUID (an identical stored one is reused)."""
    if passphrase_file and not key_path:
        raise click.UsageError("--passphrase-file needs --key")
    data = read_small_file(cert_path, "certificate")
    if key_path is None:
        cert = certificates.load_certificate(data)
    else:
        from imgsign.certificates import load_certificates

        key, _ = load_key(key_path, passphrase_file, ctx=ctx)
        cert = certificates.certificate_for_key(load_certificates(data), key.public_key(), f"the key {key_path}")
    der = cert.public_bytes(Encoding.DER)
    store = open_store(ctx)
    existing = store.find_certificate(der)
    if existing is not None:
        say(f"identical certificate already stored in the {store.description}", err=True)
        _print_id(existing, fmt)
        return
    cert_id = store.store_certificate(der, name or certificates.describe(cert))
    if not is_quiet(ctx, False):
        say(f"stored certificate {certificates.describe(cert)} as {cert_id} in the {store.description}",
            err=True)
    _print_id(cert_id, fmt)


def _print_id(object_id: str, fmt: str | None) -> None:
    """The stored object's id: the line it always was, or with ``-f`` the object ``{"id": ...}``."""
    if fmt is None:
        say(object_id)
    else:
        emit({"id": object_id}, fmt)


_KEY_HELP = "The key's private key (a file, or a reference to a key in a token or signing service)."


def _signing_key(key_ref: str, passphrase_file: str | None, ctx: click.Context) -> PrivateKey:
    """The key a certificate or request is made for; it must be able to sign OpenStack images."""
    key, _ = load_key(key_ref, passphrase_file, ctx=ctx)  # a reference's backend reads imgsign.conf
    if key.key_type is None:
        raise errors.UnsupportedAlgorithm(
            f"{key.public_key().describe()} keys cannot sign OpenStack images (use RSA, DSA or an ECC_* curve)"
        )
    return key


@cert_group.command("request")
@click.option("--key", "key_ref", required=True, help=_KEY_HELP)
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --key.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Certificate request to write (PKCS#10 PEM).")
@subject_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.pass_context
def cert_request(ctx: click.Context, key_ref: str, passphrase_file: str | None, out_path: str, subject: str,
                 force: bool) -> None:
    """Make a certificate request for an existing key (for your CA), signed by the key itself."""
    from imgsign import keygen

    (out,) = plan_outputs([(out_path, "certificate request", 0o644)],
                          [(key_ref, "private key"), (passphrase_file, "passphrase file")], force=force)
    key = _signing_key(key_ref, passphrase_file, ctx)
    request = keygen.certificate_request(keygen.parse_subject(subject), key)
    out.write(request.public_bytes(Encoding.PEM))
    say(f"wrote {out_path} (certificate request for the {key.public_key().describe()} key: have your CA "
        f"sign it, then: imgsign cert store CERT --key {key_ref})", err=True)


@cert_group.command("issue")
@click.option("--key", "key_ref", required=True, help=_KEY_HELP)
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --key.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Certificate to write (PEM).")
@issuer_options
@subject_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.pass_context
def cert_issue(ctx: click.Context, /, **opts: Any) -> None:
    """Make a code-signing certificate for an existing key: self-signed by it, or from --ca-cert."""
    from imgsign import keygen

    check_issuer_options(opts)
    (out,) = plan_outputs(
        [(opts["out_path"], "certificate", 0o644)],
        [(opts["key_ref"], "private key"), (opts["passphrase_file"], "passphrase file"), *issuer_inputs(opts)],
        force=opts["force"],
    )
    issuer = load_issuer(opts, ctx)
    key = _signing_key(opts["key_ref"], opts["passphrase_file"], ctx)
    cert = keygen.issue_certificate(keygen.parse_subject(opts["subject"]), key.public_key(), issuer or key,
                                    days=opts["days"])
    out.write(cert.public_bytes(Encoding.PEM))
    by = f"issued by {certificates.describe(issuer.certificate)}" if issuer else "self-signed"
    say(f"wrote {opts['out_path']} ({by})", err=True)


#: The keys of :func:`_summary`, in order.
SUMMARY_COLUMNS = ("id", "subject", "issuer", "serial", "not_before", "not_after", "key", "sha256_fingerprint")


def _summary(cert_id: str, cert: x509.Certificate) -> dict[str, Any]:
    try:
        key = certificates.certificate_public_key(cert)
        key_text = key.describe() + (f" ({key.key_type.value})" if key.key_type else " (no OpenStack key type)")
    except errors.ImgsignError as exc:
        key_text = f"unusable: {exc.message}"
    return {
        "id": cert_id,
        "subject": certificates.describe(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:#x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": key_text,
        "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


@cert_group.command("list")
@format_option()
@click.pass_context
def cert_list(ctx: click.Context, fmt: str | None) -> None:
    """List stored certificates: id, expiry date, subject (or -f: objects of id, subject, issuer, serial,
    not_before, not_after, key, sha256_fingerprint)."""
    store = open_store(ctx)
    rows = []
    for item in store.list_objects("certificate"):
        cert = certificates.load_certificate(store.get_certificate(item.id))
        rows.append(_summary(item.id, cert))
    if fmt is not None:
        emit(rows, fmt, columns=SUMMARY_COLUMNS)
        return
    say(f"{'ID':36}  {'NOT AFTER':10}  SUBJECT")
    for row in rows:
        say(f"{row['id']:36}  {row['not_after'][:10]:10}  {row['subject']}")


@cert_group.command("show")
@click.argument("cert_id", type=KEY_MANAGER_ID)
@click.option("--pem", is_flag=True, help="Print the certificate as PEM instead.")
@format_option(default="json", legacy_json=False)
@click.pass_context
def cert_show(ctx: click.Context, cert_id: str, pem: bool, fmt: str) -> None:
    """Show one stored certificate."""
    if pem and ctx.get_parameter_source("fmt") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--pem and --format exclude each other")
    cert = certificates.load_certificate(open_store(ctx).get_certificate(cert_id))
    if pem:
        click.echo(cert.public_bytes(Encoding.PEM).decode(), nl=False)
    else:
        emit(_summary(cert_id, cert), fmt)


@cert_group.command("delete")
@click.argument("cert_id", type=KEY_MANAGER_ID)
@click.pass_context
def cert_delete(ctx: click.Context, cert_id: str) -> None:
    """Delete a stored certificate (images signed with it will no longer verify)."""
    store = open_store(ctx)
    store.get_certificate(cert_id)  # refuse to delete something that is not a certificate
    store.delete(cert_id)
    say(f"deleted {cert_id} from the {store.description}", err=True)
