"""``imgsign key …``: signing keys in the key manager (optional: keys may stay in files)."""

from __future__ import annotations

import click

from imgsign import errors
from imgsign.cli._common import KEY_MANAGER_ID, is_quiet, load_key, open_store, say
from imgsign.cli._output import emit, format_option


@click.group("key")
def key_group() -> None:
    """Signing keys in the key manager (optional: keys may stay in files)."""


@key_group.command("store")
@click.argument("key_path", metavar="KEY", type=click.Path(dir_okay=False))
@click.option("--name", help="A name for the key.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of an encrypted KEY.")
@format_option(legacy_json=False)
@click.pass_context
def key_store(ctx: click.Context, key_path: str, name: str | None, passphrase_file: str | None,
              fmt: str | None) -> None:
    """Store a private key and print its UUID (the key is never printed)."""
    key, _ = load_key(key_path, passphrase_file, ctx=ctx)
    if key.key_type is None:
        raise errors.UnsupportedAlgorithm("this key has no OpenStack key type; it cannot sign images")
    algorithm = {"RSA-PSS": "RSA", "DSA": "DSA"}.get(key.key_type.value, "EC")
    store = open_store(ctx)
    key_id = store.store_private_key(key.export_pkcs8_der(), algorithm, key.key_size, name)
    if not is_quiet(ctx, False):
        say(f"stored private key as {key_id} in the {store.description}", err=True)
    if fmt is None:
        say(key_id)
    else:
        emit({"id": key_id}, fmt)


@key_group.command("list")
@format_option()
@click.pass_context
def key_list(ctx: click.Context, fmt: str | None) -> None:
    """List stored private keys, metadata only: id, algorithm-bits, name (or -f: objects of id, name, algorithm,
    bit_length, created (Unix time))."""
    items = open_store(ctx).list_objects("private-key")
    if fmt is not None:
        emit([{"id": i.id, "name": i.name, "algorithm": i.algorithm, "bit_length": i.bit_length,
               "created": i.created} for i in items], fmt, columns=("id", "name", "algorithm", "bit_length", "created"))
        return
    say(f"{'ID':36}  {'ALGORITHM':10}  NAME")
    for item in items:
        kind = f"{item.algorithm or '?'}-{item.bit_length or '?'}"
        say(f"{item.id:36}  {kind:10}  {item.name or ''}".rstrip())


@key_group.command("delete")
@click.argument("key_id", type=KEY_MANAGER_ID)
@click.pass_context
def key_delete(ctx: click.Context, key_id: str) -> None:
    """Delete a stored private key."""
    store = open_store(ctx)
    store.get_private_key(key_id)  # only delete what is a private key
    store.delete(key_id)
    say(f"deleted {key_id}", err=True)
