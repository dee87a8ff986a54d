"""``imgsign crl …``: certificate revocation lists in the key manager."""

from __future__ import annotations

import click
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import chain, errors
from imgsign._internal.files import read_small_file
from imgsign.cli._common import KEY_MANAGER_ID, open_store


@click.group("crl")
def crl_group() -> None:
    """Certificate revocation lists in the key manager (checked by every chain validation)."""


@crl_group.command("store")
@click.argument("crl_path", metavar="CRL", type=click.Path(dir_okay=False))
@click.pass_context
def crl_store(ctx: click.Context, crl_path: str) -> None:
    """Store CRL (PEM or DER) and print its UUID."""
    crl = chain.load_crl(read_small_file(crl_path, "CRL"))
    click.echo(open_store(ctx).store_crl(crl.public_bytes(Encoding.DER), crl.issuer.rfc4514_string()))


@crl_group.command("list")
@click.pass_context
def crl_list(ctx: click.Context) -> None:
    """List stored CRLs: id, next update, issuer, number of revoked certificates."""
    for crl_id, der in open_store(ctx).get_crls():
        crl = chain.load_crl(der)
        due = f"{crl.next_update_utc:%Y-%m-%d}" if crl.next_update_utc else "-"
        click.echo(f"{crl_id}  {due}  {crl.issuer.rfc4514_string()}  ({len(list(crl))} revoked)")


@crl_group.command("delete")
@click.argument("crl_id", type=KEY_MANAGER_ID)
@click.pass_context
def crl_delete(ctx: click.Context, crl_id: str) -> None:
    """Delete a stored CRL."""
    store = open_store(ctx)
    if crl_id not in {i for i, _ in store.get_crls()}:
        raise errors.ObjectNotFound(f"no CRL {crl_id} in the {store.description}")
    store.delete(crl_id)
    click.echo(f"deleted {crl_id}", err=True)
