"""``imgsign crl …``: certificate revocation lists in the key manager."""

from __future__ import annotations

from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import chain, errors
from imgsign._internal.files import read_small_file
from imgsign.cli._common import KEY_MANAGER_ID, is_quiet, open_store, say
from imgsign.cli._output import emit, format_option


@click.group("crl")
def crl_group() -> None:
    """Certificate revocation lists in the key manager (checked by every chain validation)."""


@crl_group.command("store")
@click.argument("crl_path", metavar="CRL", type=click.Path(dir_okay=False))
@format_option(legacy_json=False)
@click.pass_context
def crl_store(ctx: click.Context, crl_path: str, fmt: str | None) -> None:
    """Store CRL (PEM or DER) and print its UUID."""
    crl = chain.load_crl(read_small_file(crl_path, "CRL"))
    store = open_store(ctx)
    crl_id = store.store_crl(crl.public_bytes(Encoding.DER), crl.issuer.rfc4514_string())
    if not is_quiet(ctx, False):
        say(f"stored CRL of {crl.issuer.rfc4514_string()} as {crl_id} in the {store.description}", err=True)
    if fmt is None:
        say(crl_id)
    else:
        emit({"id": crl_id}, fmt)


@crl_group.command("list")
@format_option()
@click.pass_context
def crl_list(ctx: click.Context, fmt: str | None) -> None:
    """List stored CRLs: id, next update, issuer, number revoked, scope (or -f: objects of id, issuer,
    last_update, next_update (null if none), crl_number (null if none), revoked (count), limits (what keeps
    it from being a complete CRL; empty: complete))."""
    rows = [_summary(crl_id, chain.load_crl(der)) for crl_id, der in open_store(ctx).get_crls()]
    if fmt is not None:
        emit(rows, fmt, columns=("id", "issuer", "last_update", "next_update", "crl_number", "revoked", "limits"))
        return
    say(f"{'ID':36}  {'NEXT UPDATE':11}  ISSUER  (REVOKED)  SCOPE")
    for row in rows:
        due = row["next_update"][:10] if row["next_update"] else "-"
        scope = ", ".join(row["limits"]) or "complete"
        say(f"{row['id']:36}  {due:11}  {row['issuer']}  ({row['revoked']} revoked)  {scope}")


def _summary(crl_id: str, crl: x509.CertificateRevocationList) -> dict[str, Any]:
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return {
        "id": crl_id,
        "issuer": crl.issuer.rfc4514_string(),
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
        "crl_number": number,
        "revoked": len(crl),
        "limits": chain.crl_limits(crl),
    }


@crl_group.command("delete")
@click.argument("crl_id", type=KEY_MANAGER_ID)
@click.pass_context
def crl_delete(ctx: click.Context, crl_id: str) -> None:
    """Delete a stored CRL."""
    store = open_store(ctx)
    if crl_id not in {i for i, _ in store.get_crls()}:
        raise errors.ObjectNotFound(f"no CRL {crl_id} in the {store.description}")
    store.delete(crl_id)
    say(f"deleted {crl_id}", err=True)
