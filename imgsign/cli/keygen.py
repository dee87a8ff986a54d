"""``imgsign keygen``: make a signing key and certificate."""

from __future__ import annotations

import sys
from typing import Any

import click

from imgsign import errors, keygen
from imgsign._internal.files import plan_outputs, read_small_file
from imgsign.algorithms import KeyType
from imgsign.cli._common import key_type_choice, read_passphrase
from imgsign.policy import MIN_RSA_DSA_BITS


@click.command("keygen")
@click.option("--key-type", "key_type", type=key_type_choice(), required=True, help="OpenStack key type.")
@click.option("--out-key", type=click.Path(dir_okay=False), help="Private key to write (PEM, mode 0600).")
@click.option("--key", "key_reference", metavar="REF",
              help="Instead of --out-key: generate the key inside this token (pkcs11:token=...;object=LABEL) or "
                   "OpenBao/Vault transit (hashivault://NAME); it never leaves it.")
@click.option("--out-cert", required=True, type=click.Path(dir_okay=False), help="Certificate to write (PEM).")
@click.option("--ca-cert", type=click.Path(dir_okay=False),
              help="Issue the certificate from this CA (else self-signed).")
@click.option("--ca-key", type=click.Path(dir_okay=False), help="The CA's private key.")
@click.option("--ca-passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --ca-key.")
@click.option("--days", type=click.IntRange(min=1), default=keygen.DEFAULT_DAYS, show_default=True,
              help="Validity in days.")
@click.option("--subject", default=keygen.DEFAULT_SUBJECT, show_default=True, help="RFC 4514 subject name.")
@click.option("--bits", type=int, help=f"RSA/DSA key size (default {keygen.DEFAULT_BITS}; not for curves).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Encrypt the new key with this passphrase.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.pass_context
def keygen_command(ctx: click.Context, /, **opts: Any) -> None:
    """Make a signing key and certificate."""
    if bool(opts["out_key"]) == bool(opts["key_reference"]):
        raise click.UsageError("give --out-key (a key file) or --key (a key generated inside a token)")
    if bool(opts["ca_cert"]) != bool(opts["ca_key"]):
        raise click.UsageError("--ca-cert and --ca-key go together")
    if opts["ca_passphrase_file"] and not opts["ca_key"]:
        raise click.UsageError("--ca-passphrase-file needs --ca-key")
    key_type = KeyType.parse(opts["key_type"])
    for check, param in ((lambda: keygen.check_bits(key_type, opts["bits"]), "--bits"),
                         (lambda: keygen.parse_subject(opts["subject"]), "--subject")):
        try:
            check()
        except errors.InputError as exc:
            raise click.BadParameter(exc.message, param_hint=param) from None
    if opts["key_reference"]:
        _keygen_in_backend(ctx, key_type, opts)
        return
    out_key, out_cert = plan_outputs(
        [(opts["out_key"], "private key", 0o600), (opts["out_cert"], "certificate", 0o644)],
        [(opts["ca_cert"], "CA certificate"), (opts["ca_key"], "CA private key"),
         (opts["ca_passphrase_file"], "CA passphrase file"), (opts["passphrase_file"], "passphrase file")],
        force=opts["force"],
    )
    issuer = None
    if opts["ca_cert"]:
        issuer = keygen.Issuer(
            read_small_file(opts["ca_cert"], "CA certificate"),
            read_small_file(opts["ca_key"], "CA private key"),
            read_passphrase(opts["ca_passphrase_file"]),
        )
    passphrase = read_passphrase(opts["passphrase_file"])
    if passphrase == b"":
        raise errors.InputError(f"passphrase file {opts['passphrase_file']} holds an empty passphrase: "
                                f"the key would not be encrypted")
    bits = opts["bits"]
    if bits is not None and bits < MIN_RSA_DSA_BITS:
        click.echo(f"imgsign: warning: a {bits}-bit {key_type.value} key is below the {MIN_RSA_DSA_BITS}-bit "
                   f"minimum: verifying its signatures needs --allow-weak-keys", err=True)
    identity = keygen.generate(
        key_type, subject=opts["subject"], days=opts["days"], bits=bits,
        issuer=issuer, passphrase=passphrase,
    )
    out_key.write(identity.key_pem)
    out_cert.write(identity.cert_pem)
    click.echo(f"wrote {opts['out_key']} (private key, mode 0600) and {opts['out_cert']}", err=True)


def _keygen_in_backend(ctx: click.Context, key_type: KeyType, opts: dict[str, Any]) -> None:
    """``--key REF``: the key pair is generated in the token or service; its certificate is issued by
    ``--ca-cert``/``--ca-key``, or else self-signed with the new key there."""
    from imgsign._internal.external_cert import self_signed_certificate
    from imgsign.cli._common import ask_secret, config, has_config
    from imgsign.keys.loading import generate_signing_key

    if opts["passphrase_file"]:
        raise click.UsageError(f"--passphrase-file applies to key files, not to {opts['key_reference'][:80]}")
    if key_type.is_binary_curve:  # refused before a key pair is left in the token without a certificate
        raise errors.UnsupportedAlgorithm(f"keygen cannot yet issue the certificate of a {key_type.value} key in a "
                                          f"token or service; generate it with the token's own tools and sign "
                                          f"with --key")
    [out_cert] = plan_outputs(
        [(opts["out_cert"], "certificate", 0o644)],
        [(ctx.find_root().obj.get("config_file"), "configuration file"), (opts["ca_cert"], "CA certificate"),
         (opts["ca_key"], "CA private key"), (opts["ca_passphrase_file"], "CA passphrase file")],
        force=opts["force"])
    issuer = None
    if opts["ca_cert"]:
        issuer = keygen.Issuer(read_small_file(opts["ca_cert"], "CA certificate"),
                               read_small_file(opts["ca_key"], "CA private key"),
                               read_passphrase(opts["ca_passphrase_file"]))
        keygen.check_issuer(issuer)  # before the key is created
    conf = config(ctx) if has_config(ctx) else None
    key = generate_signing_key(opts["key_reference"], key_type, opts["bits"], conf=conf,
                               ask_secret=ask_secret if sys.stdin.isatty() else None)
    if issuer is not None:
        certificate = keygen.certify(key.public_key(), issuer=issuer, subject=opts["subject"], days=opts["days"])
    else:
        certificate = self_signed_certificate(key, keygen.parse_subject(opts["subject"]), opts["days"])
    out_cert.write(certificate)
    click.echo(f"generated {key!r} ({key.public_key().describe()}, never leaves it) and wrote {opts['out_cert']}",
               err=True)
