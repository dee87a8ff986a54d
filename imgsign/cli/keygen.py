"""``imgsign keygen``: make a signing key and its certificate, or a certificate request for a CA."""

from __future__ import annotations

import sys
from typing import Any

import click

from imgsign import errors, keygen
from imgsign._internal.files import plan_outputs
from imgsign.algorithms import KeyType
from imgsign.cli._common import (
    check_issuer_options,
    is_quiet,
    issuer_inputs,
    issuer_options,
    key_type_choice,
    load_issuer,
    quiet_option,
    read_passphrase,
    say,
    subject_option,
)
from imgsign.policy import MIN_RSA_DSA_BITS


@click.command("keygen")
@click.option("--key-type", "key_type", type=key_type_choice(), required=True, help="OpenStack key type.")
@click.option("--out-key", type=click.Path(dir_okay=False), help="Private key to write (PEM, mode 0600).")
@click.option("--key", "key_reference", metavar="REF",
              help="Instead of --out-key: generate the key inside this token (pkcs11:token=...;object=LABEL) or "
                   "OpenBao/Vault transit (hashivault://NAME); it never leaves it.")
@click.option("--out-cert", type=click.Path(dir_okay=False), help="Certificate to write (PEM).")
@click.option("--csr", "out_csr", type=click.Path(dir_okay=False),
              help="Write a certificate request (PKCS#10 PEM) for your CA instead of a certificate.")
@issuer_options
@subject_option
@click.option("--bits", type=int, help=f"RSA/DSA key size (default {keygen.DEFAULT_BITS}; not for curves).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False),
              help="Encrypt the new key with the passphrase in this file (default: asked for on a terminal).")
@click.option("--no-encrypt", is_flag=True,
              help="Write the private key unencrypted (a warning says so; anyone who can read the file can sign).")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@quiet_option
@click.pass_context
def keygen_command(ctx: click.Context, /, **opts: Any) -> None:
    """Make a signing key and a certificate (self-signed or from --ca-cert), or with --csr a certificate
    request for an existing CA (store the certificate it returns with: imgsign cert store CERT --key KEY)."""
    if bool(opts["out_key"]) == bool(opts["key_reference"]):
        raise click.UsageError("give --out-key (a key file) or --key (a key generated inside a token or service)")
    if bool(opts["out_cert"]) == bool(opts["out_csr"]):
        raise click.UsageError("give --out-cert, or --csr to have a CA issue the certificate")
    if opts["out_csr"]:
        given = [name for name in ("ca_cert", "ca_key", "ca_passphrase_file", "days")
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} does not go with --csr: the CA sets it")
    check_issuer_options(opts)
    key_type = KeyType.parse(opts["key_type"])
    try:
        keygen.check_bits(key_type, opts["bits"])
    except errors.InputError as exc:
        raise click.BadParameter(exc.message, param_hint="--bits") from None
    if opts["key_reference"]:
        _keygen_in_backend(ctx, key_type, opts)
        return
    if opts["no_encrypt"] and opts["passphrase_file"]:
        raise click.UsageError("--no-encrypt and --passphrase-file exclude each other")
    if not opts["no_encrypt"] and not opts["passphrase_file"] and not sys.stdin.isatty():
        # As cosign and ssh-keygen do, the key is encrypted unless asked otherwise; nobody is here to ask.
        raise click.UsageError("keygen encrypts the private key: give --passphrase-file FILE, run it on a terminal "
                               "to be asked for a passphrase, or --no-encrypt to write the key unencrypted")
    out_key, out_cert = plan_outputs(
        [(opts["out_key"], "private key", 0o600),
         (opts["out_csr"], "certificate request", 0o644) if opts["out_csr"] else
         (opts["out_cert"], "certificate", 0o644)],
        [*issuer_inputs(opts), (opts["passphrase_file"], "passphrase file")],
        force=opts["force"],
    )
    issuer = load_issuer(opts, ctx)
    passphrase = read_passphrase(opts["passphrase_file"])
    if passphrase == b"":
        raise errors.InputError(f"passphrase file {opts['passphrase_file']} holds an empty passphrase: "
                                f"the key would not be encrypted")
    if passphrase is None and not opts["no_encrypt"]:
        passphrase = _ask_new_passphrase(opts["out_key"])
    if passphrase is None and not is_quiet(ctx, opts["quiet"]):
        say(f"imgsign: warning: {opts['out_key']} will hold the private key unencrypted (--no-encrypt): "
            f"anyone who can read it can sign as you", err=True)
    bits = opts["bits"]
    if bits is not None and bits < MIN_RSA_DSA_BITS:
        say(f"imgsign: warning: a {bits}-bit {key_type.value} key is below the {MIN_RSA_DSA_BITS}-bit "
            f"minimum: verifying its signatures needs --allow-weak-keys", err=True)
    if opts["out_csr"]:
        pending = keygen.generate_request(key_type, subject=opts["subject"], bits=bits, passphrase=passphrase)
        out_key.write(pending.key_pem)
        out_cert.write(pending.csr_pem)
        if not is_quiet(ctx, opts["quiet"]):
            say(f"wrote {opts['out_key']} ({_what(passphrase)}, mode 0600) and {opts['out_csr']} (certificate request: "
                f"have your CA sign it, then: imgsign cert store CERT --key {opts['out_key']})", err=True)
        return
    identity = keygen.generate(
        key_type, subject=opts["subject"], days=opts["days"], bits=bits,
        issuer=issuer, passphrase=passphrase,
    )
    out_key.write(identity.key_pem)
    out_cert.write(identity.cert_pem)
    if not is_quiet(ctx, opts["quiet"]):
        say(f"wrote {opts['out_key']} ({_what(passphrase)}, mode 0600) and {opts['out_cert']}", err=True)


def _what(passphrase: bytes | None) -> str:
    return "private key, encrypted" if passphrase else "private key, unencrypted"


def _ask_new_passphrase(out_key: str) -> bytes:
    """A passphrase for the new key, asked twice on the terminal (never echoed, never shown in a message)."""
    from imgsign._internal import redact

    text = str(click.prompt(f"Passphrase for the new key {out_key}", hide_input=True, confirmation_prompt=True))
    if not text:
        raise errors.InputError("an empty passphrase would leave the key unencrypted: give one, or --no-encrypt")
    redact.remember(text)
    return text.encode()


def _keygen_in_backend(ctx: click.Context, key_type: KeyType, opts: dict[str, Any]) -> None:
    """``--key REF``: the key pair is generated in the token or service; its certificate is issued by
    ``--ca-cert``/``--ca-key`` or self-signed with the new key there, or ``--csr`` asks a CA for one."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.cli._common import ask_secret, config, has_config
    from imgsign.keys.loading import generate_signing_key

    for flag, given in (("--passphrase-file", opts["passphrase_file"]), ("--no-encrypt", opts["no_encrypt"])):
        if given:
            raise click.UsageError(f"{flag} applies to key files, not to {opts['key_reference'][:80]}")
    if key_type.is_binary_curve:  # refused before a key pair is left in the token without a certificate
        raise errors.UnsupportedAlgorithm(f"keygen cannot make {key_type.value} keys in a token or service; "
                                          f"generate one with the token's own tools and sign with --key")
    output, what = (opts["out_csr"], "certificate request") if opts["out_csr"] else (opts["out_cert"], "certificate")
    [out] = plan_outputs([(output, what, 0o644)],
                         [(ctx.find_root().obj.get("config_file"), "configuration file"), *issuer_inputs(opts)],
                         force=opts["force"])
    issuer = load_issuer(opts, ctx)  # checked before any key is created
    conf = config(ctx) if has_config(ctx) else None
    key = generate_signing_key(opts["key_reference"], key_type, opts["bits"], conf=conf,
                               ask_secret=ask_secret if sys.stdin.isatty() else None)
    subject = keygen.parse_subject(opts["subject"])
    if opts["out_csr"]:
        out.write(keygen.certificate_request(subject, key).public_bytes(Encoding.PEM))
    else:
        certificate = keygen.issue_certificate(subject, key.public_key(), issuer or key, days=opts["days"])
        out.write(certificate.public_bytes(Encoding.PEM))
    if not is_quiet(ctx, opts["quiet"]):
        say(f"generated {key!r} ({key.public_key().describe()}, never leaves it) and wrote {output}", err=True)
