"""``imgsign keygen``: make a signing key and its certificate, or a certificate request for a CA."""

from __future__ import annotations

from typing import Any

import click

from imgsign import errors, keygen
from imgsign._internal.files import plan_outputs, read_small_file
from imgsign.algorithms import KeyType
from imgsign.cli._common import key_type_choice, load_key, read_passphrase
from imgsign.policy import MIN_RSA_DSA_BITS


@click.command("keygen")
@click.option("--key-type", "key_type", type=key_type_choice(), required=True, help="OpenStack key type.")
@click.option("--out-key", required=True, type=click.Path(dir_okay=False),
              help="Private key to write (PEM, mode 0600).")
@click.option("--out-cert", type=click.Path(dir_okay=False), help="Certificate to write (PEM).")
@click.option("--csr", "out_csr", type=click.Path(dir_okay=False),
              help="Write a certificate request (PKCS#10 PEM) for your CA instead of a certificate.")
@click.option("--ca-cert", type=click.Path(dir_okay=False),
              help="Issue the certificate from this CA (else self-signed).")
@click.option("--ca-key", help="The CA's private key.")
@click.option("--ca-passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --ca-key.")
@click.option("--days", type=click.IntRange(min=1), default=keygen.DEFAULT_DAYS, show_default=True,
              help="Validity in days.")
@click.option("--subject", default=keygen.DEFAULT_SUBJECT, show_default=True, help="RFC 4514 subject name.")
@click.option("--bits", type=int, help=f"RSA/DSA key size (default {keygen.DEFAULT_BITS}; not for curves).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Encrypt the new key with this passphrase.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.pass_context
def keygen_command(ctx: click.Context, /, **opts: Any) -> None:
    """Make a signing key and a certificate (self-signed or from --ca-cert), or with --csr a certificate
    request for an existing CA (store the certificate it returns with: imgsign cert store CERT --key KEY)."""
    if bool(opts["out_cert"]) == bool(opts["out_csr"]):
        raise click.UsageError("give --out-cert, or --csr to have a CA issue the certificate")
    if opts["out_csr"]:
        given = [name for name in ("ca_cert", "ca_key", "ca_passphrase_file", "days")
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} does not go with --csr: the CA sets it")
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
    out_key, out_cert = plan_outputs(
        [(opts["out_key"], "private key", 0o600),
         (opts["out_csr"], "certificate request", 0o644) if opts["out_csr"] else
         (opts["out_cert"], "certificate", 0o644)],
        [(opts["ca_cert"], "CA certificate"), (opts["ca_key"], "CA private key"),
         (opts["ca_passphrase_file"], "CA passphrase file"), (opts["passphrase_file"], "passphrase file")],
        force=opts["force"],
    )
    issuer = None
    if opts["ca_cert"]:
        from imgsign.certificates import load_certificate

        ca_cert = load_certificate(read_small_file(opts["ca_cert"], "CA certificate"))
        ca_key, _ = load_key(opts["ca_key"], opts["ca_passphrase_file"], "CA private key")
        issuer = keygen.Issuer(ca_cert, ca_key)
        keygen.check_issuer(issuer)
    passphrase = read_passphrase(opts["passphrase_file"])
    if passphrase == b"":
        raise errors.InputError(f"passphrase file {opts['passphrase_file']} holds an empty passphrase: "
                                f"the key would not be encrypted")
    bits = opts["bits"]
    if bits is not None and bits < MIN_RSA_DSA_BITS:
        click.echo(f"imgsign: warning: a {bits}-bit {key_type.value} key is below the {MIN_RSA_DSA_BITS}-bit "
                   f"minimum: verifying its signatures needs --allow-weak-keys", err=True)
    if opts["out_csr"]:
        pending = keygen.generate_request(key_type, subject=opts["subject"], bits=bits, passphrase=passphrase)
        out_key.write(pending.key_pem)
        out_cert.write(pending.csr_pem)
        click.echo(f"wrote {opts['out_key']} (private key, mode 0600) and {opts['out_csr']} (certificate request: "
                   f"have your CA sign it, then: imgsign cert store CERT --key {opts['out_key']})", err=True)
        return
    identity = keygen.generate(
        key_type, subject=opts["subject"], days=opts["days"], bits=bits,
        issuer=issuer, passphrase=passphrase,
    )
    out_key.write(identity.key_pem)
    out_cert.write(identity.cert_pem)
    click.echo(f"wrote {opts['out_key']} (private key, mode 0600) and {opts['out_cert']}", err=True)
