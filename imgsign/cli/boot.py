"""``imgsign boot …``: the compute side (image cache with trust records, pre-boot check)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from imgsign import errors
from imgsign._internal.files import open_image
from imgsign.cli._common import (
    KEY_MANAGER_ID,
    NON_EMPTY,
    effective_trusted_ids,
    is_quiet,
    load_properties_document,
    quiet_option,
    say,
    signing_certificate,
    trust_anchors,
)
from imgsign.compute import adoption, boot, image_cache
from imgsign.compute.base_lock import DEFAULT_LOCK_TIMEOUT
from imgsign.compute.conversion_adoption import DEFAULT_MAX_SIZE, Original, parse_size
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import VerifiedCache
from imgsign.policy import Policy
from imgsign.properties import SignatureProperties, properties_from_document

DEFAULT_STATE_DIR = "/var/lib/imgsign/boot"
DEFAULT_INSTANCES = "/var/lib/nova/instances"


@click.group("boot")
def boot_group() -> None:
    """Compute host: verified image cache and pre-boot checks (used by hooks/libvirt-qemu)."""


#: Seconds to wait for another imgsign run on the same base: as the hook's ``[boot] lock_timeout``.
_LOCK_TIMEOUT_OPTION = click.option(
    "--lock-timeout", type=click.FloatRange(min=0, min_open=True, max=86400), default=DEFAULT_LOCK_TIMEOUT,
    show_default=True, help="Seconds to wait while another imgsign run (the boot hook, another command) works on "
                            "the same base; then refuse with exit 66.")

#: How a verified base is sealed: as the hook's ``[boot] seal_bases`` (README, "Sealed bases").
_SEAL_OPTION = click.option(
    "--seal", type=click.Choice(["immutable", "owner"]), default="immutable", show_default=True,
    help="Seal verified bases immutable (chattr +i), or only root's and 0644 (owner: SELinux hosts); "
         "use what [boot] seal_bases says.")


def _trust_record_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the commands that write a trust record: signer, trusted ids, where the cache and state are."""
    for option in reversed((
        click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
                     help="Signing certificate (default: from the key manager by img_signature_certificate_uuid)."),
        click.option("--trusted", "trusted_ids", multiple=True, metavar="UUID", type=KEY_MANAGER_ID,
                     help="Trusted CA certificate id in the key manager (repeatable; recorded for the hook)."),
        click.option("--instances-path", default=DEFAULT_INSTANCES, show_default=True,
                     type=click.Path(file_okay=False)),
        click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(file_okay=False)),
        _SEAL_OPTION,
        _LOCK_TIMEOUT_OPTION,
    )):
        func = option(func)
    return func


@boot_group.command("cache")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--image-id", required=True, type=NON_EMPTY, help="Glance image id (the cache file is sha1 of it).")
@click.option("--properties", "properties_path", required=True, type=click.Path(dir_okay=False),
              help="The image's img_signature* properties (JSON or `openstack image show -f json`).")
@_trust_record_options
@click.option("--keep-format", is_flag=True, help="Do not convert qcow2 to raw (Nova's force_raw_images = False).")
@click.pass_context
def boot_cache(ctx: click.Context, image: str, image_id: str, properties_path: str, cert_path: str | None,
               trusted_ids: tuple[str, ...], instances_path: str, state_dir: str, seal: str, lock_timeout: float,
               keep_format: bool) -> None:
    """Verify IMAGE into Nova's image cache (_base/<sha1(image id)>) and record it for the boot hook."""
    from imgsign.compute.boot_policy import facts_of
    from imgsign.properties import properties_from_document

    document = load_properties_document(properties_path)
    properties = SignatureProperties.from_mapping(properties_from_document(document))
    # `openstack image show -f json` output says the image's owner and visibility: recorded for a trust policy.
    facts = facts_of(document) if isinstance(document, dict) and "owner" in document else None
    certificate = signing_certificate(ctx, cert_path, properties)
    # trust_anchors fetches the effective ids' certificates in this order (no --trusted-file here),
    # so add_to_cache can seal each id -> the certificate the key manager returned for it.
    anchors = trust_anchors(ctx, trusted_ids, (), (), (), None, None)
    with open_image(image) as (handle, _size):
        record = image_cache.add_to_cache(
            handle, image_id, properties, certificate, RecordStore(state_dir, lock_timeout=lock_timeout),
            instances_path=instances_path,
            anchors=anchors, trusted_ids=tuple(effective_trusted_ids(ctx, trusted_ids, ())),
            certificate_id=None if cert_path is not None else properties.certificate_uuid, policy=Policy(),
            force_raw=not keep_format, immutable=seal == "immutable", image_facts=facts,
        )
    click.echo(json.dumps(record.to_body()["cached_file"] | {"image_id": image_id}, indent=2))


@boot_group.command("check")
@click.argument("base_file", type=click.Path(dir_okay=False))
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--trusted-id", "trusted_ids", multiple=True, metavar="UUID", type=KEY_MANAGER_ID,
              help="Trusted certificate id (repeatable; bound to its certificate by an earlier `boot cache`).")
@click.option("--no-cache", is_flag=True, help="Read the whole file even if it is unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@_SEAL_OPTION
@_LOCK_TIMEOUT_OPTION
@quiet_option
@click.pass_context
def boot_check(ctx: click.Context, base_file: str, state_dir: str, trusted_ids: tuple[str, ...], no_cache: bool,
               as_json: bool, seal: str, lock_timeout: float, quiet: bool) -> None:
    """Would an instance be allowed to boot from BASE_FILE? (enforce mode; exit 0 = yes; seals it as the hook does)."""
    policy = boot.BootPolicy(trusted_certificate_ids=trusted_ids, immutable_bases=seal == "immutable")
    decision = boot.verify_for_boot(base_file, RecordStore(state_dir, lock_timeout=lock_timeout), policy,
                                    None if no_cache else VerifiedCache(state_dir))
    result: dict[str, Any] = {"file": base_file, "allowed": decision.allowed, "reason": decision.reason,
                              "message": decision.message, "exit_code": decision.code}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif decision.allowed and not is_quiet(ctx, quiet):
        say(f"OK: {decision.message}")
    if not decision.allowed:
        if not as_json:
            say(f"imgsign: error: {decision.message}", err=True)
        sys.exit(decision.code)



class SizeType(click.ParamType[int]):
    """A positive number of bytes (``parse_size``); a bad one is a usage error."""

    name = "BYTES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value), "the size")
        except errors.InputError as exc:
            self.fail(exc.message, param, ctx)


@boot_group.command("adopt")
@click.argument("base_or_id", required=False)
@click.option("--all", "adopt_all", is_flag=True,
              help="Adopt every base in _base that has no valid trust record (instead of BASE_OR_ID).")
@click.option("--properties", "properties_path", required=True, type=click.Path(),
              help="The image's properties: img_signature* and, for a converted qcow2, imgsign_raw_v1_* "
                   "(JSON or `openstack image show -f json`). With --all: a directory of `openstack image show "
                   "-f json` files (*.json), or a JSON file mapping image id -> properties.")
@click.option("--image-id", type=NON_EMPTY,
              help="Glance image id, when BASE_OR_ID is a path and the properties file has no id.")
@_trust_record_options
@click.option("--json", "as_json", is_flag=True, help="Print the adopted file (with --all: a summary) as JSON.")
@click.option("--by-conversion", is_flag=True,
              help="A raw base without raw-digest statement: verify the signed qcow2 given as --original, convert "
                   "it as Nova does and adopt the base if it is exactly that conversion.")
@click.option("--original", "original_path", type=click.Path(dir_okay=False),
              help="With --by-conversion: the image's original (the signed qcow2, e.g. from `openstack image save`).")
@click.option("--max-size", type=SizeType(), default=str(DEFAULT_MAX_SIZE), show_default=True,
              help="With --by-conversion: refuse an original larger than this many bytes (K, M, G, T: powers of 1024).")
@click.pass_context
def boot_adopt(ctx: click.Context, base_or_id: str | None, adopt_all: bool, properties_path: str,
               image_id: str | None, cert_path: str | None, trusted_ids: tuple[str, ...], instances_path: str,
               state_dir: str, seal: str, lock_timeout: float, as_json: bool, by_conversion: bool,
               original_path: str | None, max_size: int) -> None:
    """Verify a base file Nova downloaded itself (_base/<sha1(image id)>) and record it for the boot hook.

    BASE_OR_ID is the Glance image id (the base is looked up under --instances-path) or the base
    file's path (the image id then comes from --image-id or the properties file's "id").  One image
    per call, or every base with --all.
    """
    if by_conversion != (original_path is not None):
        raise click.UsageError("--by-conversion and --original go together")
    if adopt_all:
        if base_or_id is not None or image_id is not None:
            raise click.UsageError("--all adopts every base: give no BASE_OR_ID and no --image-id")
        if by_conversion:
            raise click.UsageError("--by-conversion adopts one image: give BASE_OR_ID, not --all")
        _adopt_every_base(ctx, properties_path, cert_path, trusted_ids, instances_path,
                          RecordStore(state_dir, lock_timeout=lock_timeout), seal, as_json)
        return
    if base_or_id is None:
        raise click.UsageError("give BASE_OR_ID (an image id or a base file), or --all")
    document = load_properties_document(properties_path)
    image_id, instances_path = _adopt_target(base_or_id, image_id, document, instances_path)
    properties = properties_from_document(document)
    signed = adoption.signature_properties(image_id, properties)  # unsigned: refused before any fetch
    certificate = signing_certificate(ctx, cert_path, signed)
    anchors = trust_anchors(ctx, trusted_ids, (), (), (), None, None)
    with contextlib.ExitStack() as stack:
        original = None
        if original_path is not None:
            handle, size = stack.enter_context(open_image(original_path))
            original = Original(handle, max_size=max_size, announced_size=size)
        record = adoption.adopt(
            instances_path, image_id, properties, certificate, RecordStore(state_dir, lock_timeout=lock_timeout),
            anchors=anchors,
            trusted_ids=tuple(effective_trusted_ids(ctx, trusted_ids, ())),
            certificate_id=None if cert_path is not None else signed.certificate_uuid, policy=Policy(),
            immutable=seal == "immutable", original=original,
        )
    result = record.to_body()["cached_file"] | {"image_id": image_id, "source_format": record.source_format}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        say(f"OK: adopted {os.path.join(image_cache.base_dir(instances_path), result['name'])} "
            f"({adoption.describe_adopted(image_id, record)})")


def _adopt_every_base(ctx: click.Context, properties_path: str, cert_path: str | None, trusted_ids: tuple[str, ...],
                      instances_path: str, records: RecordStore, seal: str, as_json: bool) -> None:
    """``boot adopt --all``: a progress line per file on stderr, a summary on stdout, exit status as documented."""
    from imgsign.compute import bulk_adoption

    images = _images_of(properties_path)
    anchors = trust_anchors(ctx, trusted_ids, (), (), (), None, None)
    fetched: dict[str, Any] = {}

    def certificate_for(signed: SignatureProperties) -> Any:
        if signed.certificate_uuid not in fetched:
            fetched[signed.certificate_uuid] = signing_certificate(ctx, cert_path, signed)
        return fetched[signed.certificate_uuid]

    def report(index: int, total: int, outcome: bulk_adoption.Outcome) -> None:
        say(f"imgsign: [{index}/{total}] _base/{outcome.name}: {outcome.describe()}", err=True)

    outcomes = bulk_adoption.adopt_all(
        instances_path, images, certificate_for, records, anchors=anchors,
        trusted_ids=tuple(effective_trusted_ids(ctx, trusted_ids, ())),
        certificate_ids_from_properties=cert_path is None, policy=Policy(), report=report,
        immutable=seal == "immutable")
    totals = bulk_adoption.totals(outcomes)
    code = bulk_adoption.exit_code(outcomes)
    if as_json:
        click.echo(json.dumps({"instances_path": instances_path, "bases": [o.to_json() for o in outcomes],
                               "totals": totals, "exit_code": code}, indent=2))
    else:
        click.echo(", ".join(f"{status.replace('-', ' ')} {count}" for status, count in totals.items())
                   + f" (of {len(outcomes)} files in {image_cache.base_dir(instances_path)})")
    if code:
        say(f"imgsign: error: {totals[bulk_adoption.REFUSED]} base(s) refused"
            f"{'' if code != errors.AdoptionIncomplete.exit_code else ' for different reasons'}", err=True)
        sys.exit(code)


def _images_of(path: str) -> dict[str, Any]:
    """``--properties`` of ``--all``: a directory of `openstack image show -f json` files, or a mapping file."""
    from imgsign.compute import bulk_adoption

    if not os.path.isdir(path):
        return bulk_adoption.images_from_mapping(load_properties_document(path), f"properties file {path}")
    try:
        names = sorted(name for name in os.listdir(path) if name.endswith(".json"))
    except OSError as exc:
        raise errors.InputError(f"cannot list the properties directory {path}: {exc.strerror}") from None
    return bulk_adoption.images_from_show_outputs(
        (f"properties file {os.path.join(path, name)}", load_properties_document(os.path.join(path, name)))
        for name in names)


def _adopt_target(base_or_id: str, image_id: str | None, document: object, instances_path: str) -> tuple[str, str]:
    """(image id, instances path) for ``boot adopt``'s argument; a properties document that names another
    image (`openstack image show -f json` output has its ``id``) is refused, naming both."""
    named = document.get("id") if isinstance(document, dict) and isinstance(document.get("id"), str) else None
    if os.sep not in base_or_id:
        if image_id is not None and image_id != base_or_id:
            raise errors.InputError(f"--image-id {image_id} differs from the image id {base_or_id}")
        image_id = base_or_id
    elif image_id is None:
        image_id = named
    for checked in (image_id, named):
        if checked is not None:
            cache_name(checked)  # an id Nova cannot hash (not valid UTF-8) is refused as such first
    if named is not None and image_id is not None and named != image_id:
        raise errors.InputError(f"the --properties document is image {named}'s, not image {image_id}'s: give the "
                                f"properties of the image being adopted")
    if os.sep not in base_or_id and image_id is not None:
        return image_id, instances_path
    if image_id is None:
        raise errors.InputError(f"{base_or_id} is a path: give the image id with --image-id (or use "
                                "`openstack image show -f json` output, which has it, as --properties)")
    instances, name = _split_base_path(base_or_id)
    if name != cache_name(image_id):
        raise errors.InputError(f"{base_or_id} is not the base file of image {image_id} "
                                f"(that is _base/{cache_name(image_id)})")
    return image_id, instances


def _split_base_path(path: str) -> tuple[str, str]:
    """(instances path, name) of a base file's path ``.../_base/<name>``."""
    directory, name = os.path.split(os.path.abspath(path))
    if os.path.basename(directory) != "_base":
        raise errors.InputError(f"{path} is not in an image cache directory (_base)")
    return os.path.dirname(directory), name


@boot_group.command("release")
@click.argument("bases_or_ids", nargs=-1, required=True)
@click.option("--owner", default="nova", show_default=True,
              help="User (and their group) to give each base to, so Nova's image cache manager can remove it.")
@click.option("--instances-path", default=DEFAULT_INSTANCES, show_default=True, type=click.Path(file_okay=False))
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(file_okay=False))
@_LOCK_TIMEOUT_OPTION
def boot_release(bases_or_ids: tuple[str, ...], owner: str, instances_path: str, state_dir: str,
                 lock_timeout: float) -> None:
    """Unseal bases Nova may remove (image ids or _base/<sha1> paths): the flag, owner and record go.

    A sealed base is immutable (README, "Sealed bases"), so Nova's image cache manager cannot remove it
    once no instance uses it; release it first.  Booting from a released base adopts or refuses it anew.
    """
    import pwd

    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        raise click.BadParameter(f"no user {owner!r} on this host", param_hint="--owner") from None
    records = RecordStore(state_dir, lock_timeout=lock_timeout)
    for base_or_id in bases_or_ids:
        where, name = _split_base_path(base_or_id) if os.sep in base_or_id else (instances_path,
                                                                                cache_name(base_or_id))
        found = image_cache.release(where, name, records, user.pw_uid, user.pw_gid)
        say(f"released {os.path.join(image_cache.base_dir(where), name)}"
            + (f" (owner {owner}, mode 0644, not immutable; its record is gone)" if found
               else " (no such file; its record is gone)"))
