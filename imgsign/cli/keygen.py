"""``imgsign keygen``: make a signing key and certificate."""

from __future__ import annotations

import os
from typing import Any

import click

from imgsign import errors, keygen
from imgsign._internal.files import atomic_write, read_small_file
from imgsign.algorithms import KeyType
from imgsign.cli._common import key_type_choice, read_passphrase


@click.command("keygen")
@click.option("--key-type", "key_type", type=key_type_choice(), required=True, help="OpenStack key type.")
@click.option("--out-key", required=True, type=click.Path(dir_okay=False),
              help="Private key to write (PEM, mode 0600).")
@click.option("--out-cert", required=True, type=click.Path(dir_okay=False), help="Certificate to write (PEM).")
@click.option("--ca-cert", type=click.Path(dir_okay=False),
              help="Issue the certificate from this CA (else self-signed).")
@click.option("--ca-key", type=click.Path(dir_okay=False), help="The CA's private key.")
@click.option("--ca-passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --ca-key.")
@click.option("--days", type=int, default=keygen.DEFAULT_DAYS, show_default=True, help="Validity in days.")
@click.option("--subject", default=keygen.DEFAULT_SUBJECT, show_default=True, help="RFC 4514 subject name.")
@click.option("--bits", type=int, default=keygen.DEFAULT_BITS, show_default=True, help="RSA/DSA key size.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Encrypt the new key with this passphrase.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def keygen_command(**opts: Any) -> None:
    """Make a signing key and certificate."""
    if bool(opts["ca_cert"]) != bool(opts["ca_key"]):
        raise errors.InputError("--ca-cert and --ca-key go together")
    for out in (opts["out_key"], opts["out_cert"]):
        if os.path.exists(out) and not opts["force"]:
            raise errors.InputError(f"{out} exists; use --force to overwrite it")
    issuer = None
    if opts["ca_cert"]:
        issuer = keygen.Issuer(
            read_small_file(opts["ca_cert"], "CA certificate"),
            read_small_file(opts["ca_key"], "CA private key"),
            read_passphrase(opts["ca_passphrase_file"]),
        )
    identity = keygen.generate(
        KeyType.parse(opts["key_type"]), subject=opts["subject"], days=opts["days"], bits=opts["bits"],
        issuer=issuer, passphrase=read_passphrase(opts["passphrase_file"]),
    )
    atomic_write(opts["out_key"], identity.key_pem, mode=0o600)
    atomic_write(opts["out_cert"], identity.cert_pem, mode=0o644)
    click.echo(f"wrote {opts['out_key']} (private key, mode 0600) and {opts['out_cert']}", err=True)
