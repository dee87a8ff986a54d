"""``imgsign keygen``: make a signing key and certificate."""

from __future__ import annotations

from typing import Any

import click

from imgsign import errors, keygen
from imgsign._internal.files import plan_outputs, read_small_file
from imgsign.algorithms import KeyType
from imgsign.cli._common import key_type_choice, read_passphrase
from imgsign.policy import MIN_RSA_DSA_BITS


@click.command("keygen")
@click.option("--key-type", "key_type", type=key_type_choice(), required=True, help="OpenStack key type.")
@click.option("--out-key", required=True, type=click.Path(dir_okay=False),
              help="Private key to write (PEM, mode 0600), or a new key to create in OpenBao/Vault transit: "
                   "hashivault://NAME (needs --ca-cert and --ca-key).")
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
    if opts["out_key"].startswith("hashivault://"):
        _keygen_remote(ctx, key_type, opts)
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


def _keygen_remote(ctx: click.Context, key_type: KeyType, opts: dict[str, Any]) -> None:
    """Create the key where ``--out-key`` names it (never leaving it), then issue its certificate from the CA."""
    from imgsign.cli._common import config_or_none
    from imgsign.keys.loading import create_signing_key

    if opts["passphrase_file"]:
        raise click.UsageError(f"--passphrase-file applies to key files, not to {opts['out_key']}")
    if not opts["ca_cert"]:
        raise click.UsageError(f"a key in a signing service gets its certificate from a CA: give --ca-cert and "
                               f"--ca-key (self-signed certificates for {opts['out_key']} are not supported yet)")
    (out_cert,) = plan_outputs(
        [(opts["out_cert"], "certificate", 0o644)],
        [(opts["ca_cert"], "CA certificate"), (opts["ca_key"], "CA private key"),
         (opts["ca_passphrase_file"], "CA passphrase file")],
        force=opts["force"],
    )
    issuer = keygen.Issuer(
        read_small_file(opts["ca_cert"], "CA certificate"),
        read_small_file(opts["ca_key"], "CA private key"),
        read_passphrase(opts["ca_passphrase_file"]),
    )
    keygen.check_issuer(issuer)  # before the key is created
    key = create_signing_key(opts["out_key"], key_type, opts["bits"], lambda: config_or_none(ctx))
    assert key is not None  # noqa: S101 - a reference by the test above
    out_cert.write(keygen.certify(key.public_key(), issuer=issuer, subject=opts["subject"], days=opts["days"]))
    click.echo(f"created {opts['out_key']} ({key.public_key().describe()}, not exportable) and wrote "
               f"{opts['out_cert']}", err=True)
