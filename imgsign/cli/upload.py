"""``imgsign upload``: upload an image to Glance, signed on the way (one read of the file)."""

from __future__ import annotations

import signal
from typing import Any

import click

from imgsign import errors
from imgsign.algorithms import HashMethod
from imgsign.cli._common import NON_EMPTY, is_quiet, policy_options, progress_bar, quiet_option, say
from imgsign.cli._glance import cloud_options, glance_client
from imgsign.cli._output import emit, format_option
from imgsign.cli._signing import (
    check_signing_usage,
    prepare_signer,
    signed_properties,
    signing_options,
    timestamp_options,
    timestamp_settings,
)


def _property(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"{value[:80]!r} is not NAME=VALUE", param_hint="--property")
    return name, text


@click.command("upload")
@click.argument("image", type=click.Path(dir_okay=False))
@signing_options
@timestamp_options
@click.option("--name", type=NON_EMPTY, help="Image name (default: the file's name).")
@click.option("--disk-format", help="Glance disk_format (default: qcow2 for a qcow2 file, else raw).")
@click.option("--container-format", default="bare", show_default=True)
@click.option("--visibility", type=click.Choice(["private", "shared", "community", "public"]))
@click.option("--property", "extra_properties", multiple=True, metavar="NAME=VALUE",
              help="More image properties (repeatable); img_signature* are set by imgsign.")
@click.option("--import-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds to wait for Glance's import to end.")
@format_option(default="json", legacy_json=False)
@cloud_options
@policy_options
@quiet_option
@click.pass_context
def upload_command(ctx: click.Context, image: str, key_path: str, passphrase_file: str | None,
                   cert_path: str | None, cert_uuid: str | None, store_cert: bool, hash_method: str,
                   key_type: str | None, no_raw_digest: bool, name: str | None, disk_format: str | None,
                   container_format: str, visibility: str | None, extra_properties: tuple[str, ...],
                   import_timeout: float, fmt: str, os_cloud: str | None, os_region_name: str | None,
                   allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool, tsa_url: str | None,
                   tsa_hash: str | None, tsa_ca_files: tuple[str, ...]) -> None:
    """Upload IMAGE to Glance as a new image signed with --key; print the image record (-f json by default).

    The file is read once: its data is staged while it is hashed, then the signature is set and
    Glance imports it (glance-direct), checking the signature itself. A failed or interrupted
    upload deletes the image again.
    """
    import os

    from imgsign.glance.upload import upload_signed
    from imgsign.policy import Policy

    check_signing_usage(cert_path, cert_uuid, store_cert)
    stamp = timestamp_settings(ctx, tsa_url, tsa_hash, tsa_ca_files)
    quiet = is_quiet(ctx, quiet)
    pairs = [_property(p) for p in extra_properties]
    reserved = [n for n, _ in pairs if n.startswith(("img_signature", "imgsign_"))]
    if reserved:
        raise click.BadParameter(f"{reserved[0]} is set by imgsign itself", param_hint="--property")
    glance = glance_client(ctx)  # a missing extra or unusable cloud before any key is read
    method = HashMethod.parse(hash_method)
    policy = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates)
    signer, key = prepare_signer(ctx, key_path, passphrase_file, cert_path, cert_uuid, store_cert, method,
                                 key_type, policy)
    fields: dict[str, Any] = {
        "name": name or os.path.basename(image), "disk_format": disk_format or _disk_format(image),
        "container_format": container_format, **dict(pairs),
    }
    if visibility:
        fields["visibility"] = visibility

    def make_properties(digest: bytes, handle: Any, head: bytes) -> dict[str, str]:
        return signed_properties(image, signer, key, digest, handle, head, not no_raw_digest, quiet, stamp)

    def note(message: str) -> None:
        say(f"imgsign: {message}", err=True)

    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stop is handled like Ctrl-C: clean up
    try:
        with progress_bar(os.path.getsize(image) if os.path.isfile(image) else 0, "uploading", quiet) as progress:
            result = upload_signed(glance, image, fields, method, make_properties, import_timeout=import_timeout,
                                   progress=progress, log=None if quiet else note)
    finally:
        signal.signal(signal.SIGTERM, previous)
    record = result.image
    changed = result.changed
    if not quiet:
        note(f"image {record.get('id')} is {record.get('status')} (signed, uploaded by {result.method})")
        if changed:
            note(f"Glance holds other signature properties than imgsign sent ({', '.join(changed)}): an import "
                 f"plugin changed them (imgsign_resign re-signs a converted image); shown are Glance's")
    # "properties": what Glance holds after the import (read again), which Nova and verify --image check.
    emit({"id": record.get("id"), "status": record.get("status"), "import_method": result.method,
          "properties": result.held, "changed_by_glance": changed}, fmt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _disk_format(image: str) -> str:
    from imgsign._internal.raw_digest import QCOW2_MAGIC

    try:
        with open(image, "rb") as handle:
            return "qcow2" if handle.read(len(QCOW2_MAGIC)) == QCOW2_MAGIC else "raw"
    except OSError as exc:
        raise errors.InputError(f"cannot read image {image}: {exc.strerror or exc}") from None
