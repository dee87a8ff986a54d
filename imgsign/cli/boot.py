"""``imgsign boot …``: the compute side (image cache with trust records, pre-boot check)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors
from imgsign._internal.files import open_image
from imgsign._internal.sizes import parse_size
from imgsign.cli._common import (
    KEY_MANAGER_ID,
    NON_EMPTY,
    effective_trusted_ids,
    is_quiet,
    load_properties_document,
    open_store,
    quiet_option,
    say,
    signing_certificate,
    trust_anchors,
)
from imgsign.cli._output import emit, format_option
from imgsign.cli._signing import tsa_roots
from imgsign.compute import adoption, boot, image_cache, image_format
from imgsign.compute.boot_config import DEFAULT_PATH, ENV_PATH, BootSettings
from imgsign.compute.conversion_adoption import Original
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import VerifiedCache
from imgsign.policy import Policy
from imgsign.properties import SignatureProperties, properties_from_document

if TYPE_CHECKING:
    from imgsign import chain, trust_policy


@click.group("boot")
@click.option("--boot-config", type=click.Path(dir_okay=False),
              help="boot.conf, the hook's configuration, whose [boot] options are the defaults of --trusted, "
                   f"--seal, --state-dir, --instances-path, --lock-timeout and --max-size (default: ${ENV_PATH}, "
                   f"else {DEFAULT_PATH} if it exists, else the options' own defaults).")
@click.pass_context
def boot_group(ctx: click.Context, boot_config: str | None) -> None:
    """Compute host: verified image cache and pre-boot checks (used by hooks/libvirt-qemu)."""
    ctx.ensure_object(dict)
    ctx.obj["boot_config"] = boot_config


def boot_settings(ctx: click.Context) -> BootSettings:
    """boot.conf as the hook reads it (``--boot-config``, ``$IMGSIGN_BOOT_CONFIG``, else
    ``/etc/imgsign/boot.conf`` when it exists, else the defaults), checked in full once per command.
    A flag given on the command line overrides the file's value."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    if "boot_settings" not in obj:
        from imgsign.compute import boot_config

        explicit = ctx.obj.get("boot_config") if isinstance(ctx.obj, dict) else None
        path = explicit or os.environ.get(ENV_PATH) or (DEFAULT_PATH if os.path.isfile(DEFAULT_PATH) else None)
        obj["boot_settings"] = boot_config.validate(path)
    settings: BootSettings = obj["boot_settings"]
    return settings


def _trusted_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--trusted UUID`` (repeatable), as every command names it; ``--trusted-id``, its old name in
    ``boot check``, still works (hidden, with a one-line warning)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, trusted_id_alias: tuple[str, ...] = (), **kwargs: Any) -> Any:
            if trusted_id_alias:
                say("imgsign: warning: --trusted-id is deprecated, use --trusted", err=True)
                kwargs["trusted_ids"] = (*kwargs.get("trusted_ids", ()), *trusted_id_alias)
            return func(*args, **kwargs)

        wrapper = click.option("--trusted-id", "trusted_id_alias", multiple=True, hidden=True, metavar="UUID",
                               type=KEY_MANAGER_ID)(wrapper)
        return click.option("--trusted", "trusted_ids", multiple=True, metavar="UUID", type=KEY_MANAGER_ID,
                            help=help_text)(wrapper)

    return decorate


#: Seconds to wait for another imgsign run on the same base: as the hook's ``[boot] lock_timeout``.
_LOCK_TIMEOUT_OPTION = click.option(
    "--lock-timeout", type=click.FloatRange(min=0, min_open=True, max=86400),
    help="Seconds to wait while another imgsign run (the boot hook, another command) works on the same base; "
         "then refuse with exit 66 (default: [boot] lock_timeout, 30).")

#: How a verified base is sealed: as the hook's ``[boot] seal_bases`` (docs: security/hook-checks.md).
_SEAL_OPTION = click.option(
    "--seal", type=click.Choice(["immutable", "owner"]),
    help="Seal verified bases immutable (chattr +i), or only root's and 0644 (owner: SELinux hosts) "
         "(default: [boot] seal_bases, immutable).")

_STATE_DIR_OPTION = click.option("--state-dir", type=click.Path(file_okay=False),
                                 help="The hook's state directory (default: [boot] state_dir, /var/lib/imgsign/boot).")
_INSTANCES_OPTION = click.option("--instances-path", type=click.Path(file_okay=False),
                                 help="Nova's instances path (default: [boot] instances_path, "
                                      "/var/lib/nova/instances).")


def _trust_record_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the commands that write a trust record: signer, trusted ids, where the cache and state are."""
    for option in reversed((
        click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
                     help="Signing certificate (default: from the key manager by img_signature_certificate_uuid)."),
        _trusted_option("Trusted CA certificate id in the key manager (repeatable; recorded for the hook; default: "
                        "[boot] trusted_certificate_ids of boot.conf, else [imgsign] trusted_certificate_ids of "
                        "imgsign.conf)."),
        _INSTANCES_OPTION,
        _STATE_DIR_OPTION,
        _SEAL_OPTION,
        _LOCK_TIMEOUT_OPTION,
    )):
        func = option(func)
    return func


@dataclasses.dataclass(frozen=True)
class _BootTrust:
    """boot.conf's trust policy (``[boot] policy_file``) and the directory its files are relative to."""

    policy: trust_policy.TrustPolicy
    base_dir: str


def _boot_trust(settings: BootSettings) -> _BootTrust | None:
    """boot.conf's trust policy, read once per command as the hook reads it: the file, and every certificate
    file its stores name, must be root's and writable by no one else (the hook refuses them otherwise, so a
    record made from files the nova user could change would only be refused at boot)."""
    if settings.policy_file is None:
        return None
    from imgsign.compute.boot_policy import read_root_file
    from imgsign.trust_policy import load_policy_text

    path = settings.policy_file
    policy = load_policy_text(read_root_file(path, "trust policy"), path)
    base_dir = os.path.dirname(path)
    stores = {s for rule in policy.rules
              for s in (*rule.trust_stores, *(rule.host_signed.base_trust_stores if rule.host_signed else ()))}
    for name in sorted({f for s in stores for f in s.certificate_files}):
        read_root_file(os.path.join(base_dir, name), "trusted certificates")
    return _BootTrust(policy, base_dir)


def _record_evidence(ctx: click.Context, trust: _BootTrust | None, records: RecordStore) -> dict[str, Any]:
    """How a new record's timestamp and revocation are judged: the TSAs whose timestamps count (under
    boot.conf's trust policy, ``[boot] policy_file``, every rule's ``tsa`` stores, as the hook's own adoption
    takes them: files, and key-manager ids, each bound so that the boot check finds which rule's stores hold
    the TSA; else ``[imgsign] tsa_ca_file``), and ``[imgsign] ocsp``, ``ocsp_timeout`` of imgsign.conf (the
    stapled OCSP response and the responders, as for ``verify``)."""
    from imgsign.cli._common import config, has_config

    found: dict[str, Any] = {"tsa_roots": tsa_roots(ctx, ())}
    if trust is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        from imgsign.cli._signing import load_tsa_roots
        from imgsign.keymanager.anchors import fetch_certificate

        stores = [s for rule in trust.policy.rules for s in rule.tsa_stores]
        roots = load_tsa_roots(list(dict.fromkeys(os.path.join(trust.base_dir, f)
                                                  for s in stores for f in s.certificate_files)))
        ids = tuple(dict.fromkeys(i for s in stores for i in s.key_manager_ids))
        if ids:
            records.prepare()
        for tsa_id in ids:
            certificate = fetch_certificate(open_store(ctx), tsa_id)
            records.anchors.bind(tsa_id, certificate.public_bytes(Encoding.DER))
            roots.append(certificate)
        found["tsa_roots"] = roots
    if has_config(ctx):
        imgsign = config(ctx).imgsign
        found.update(ocsp=imgsign.ocsp, ocsp_timeout=imgsign.ocsp_timeout)
    return found


def _or_file(value: Any, settings: BootSettings, name: str) -> Any:
    """A flag's value, else boot.conf's ``[boot] name``."""
    return value if value is not None else getattr(settings, name)


@boot_group.command("cache")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--image-id", required=True, type=NON_EMPTY, help="Glance image id (the cache file is sha1 of it).")
@click.option("--properties", "properties_path", required=True, type=click.Path(dir_okay=False),
              help="The image's img_signature* properties (JSON or `openstack image show -f json`).")
@_trust_record_options
@click.option("--keep-format", is_flag=True, help="Do not convert qcow2 to raw (Nova's force_raw_images = False).")
@format_option(default="json", legacy_json=False)
@click.pass_context
def boot_cache(ctx: click.Context, image: str, image_id: str, properties_path: str, cert_path: str | None,
               trusted_ids: tuple[str, ...], instances_path: str | None, state_dir: str | None, seal: str | None,
               lock_timeout: float | None, keep_format: bool, fmt: str) -> None:
    """Verify IMAGE into Nova's image cache (_base/<sha1(image id)>) and record it for the boot hook."""
    settings = boot_settings(ctx)
    trusted_ids = trusted_ids or settings.trusted_certificate_ids
    instances_path, state_dir = _or_file(instances_path, settings, "instances_path"), \
        _or_file(state_dir, settings, "state_dir")
    seal, lock_timeout = _or_file(seal, settings, "seal_bases"), _or_file(lock_timeout, settings, "lock_timeout")
    document = load_properties_document(properties_path)
    signed_document = properties_from_document(document)
    properties = SignatureProperties.from_mapping(signed_document)
    # `openstack image show -f json` output says the image's owner and visibility: recorded for a trust policy.
    facts = _facts_of_document(document)
    certificate = signing_certificate(ctx, cert_path, properties)
    # trust_anchors fetches the effective ids' certificates in this order (no --trusted-file here),
    # so add_to_cache can seal each id -> the certificate the key manager returned for it.
    trust = _boot_trust(settings)
    anchors, recorded_ids = _record_trust(ctx, trusted_ids, trust)
    provenance = _host_signed_finder(ctx, trust)(image_id, signed_document, certificate)
    records = RecordStore(state_dir, lock_timeout=lock_timeout)
    evidence = _record_evidence(ctx, trust, records)
    with open_image(image) as (handle, _size):
        record = image_cache.add_to_cache(
            handle, image_id, properties, certificate, records,
            instances_path=instances_path,
            anchors=anchors, trusted_ids=recorded_ids,
            certificate_id=None if cert_path is not None else properties.certificate_uuid, policy=Policy(),
            force_raw=not keep_format, immutable=seal == "immutable", document=signed_document,
            image_facts=facts, **evidence,
            disk_format=image_format.disk_format_of(image_format.with_disk_format(document, signed_document)),
            provenance=provenance,
        )
    emit(record.to_body()["cached_file"] | {"image_id": image_id}, fmt)


@boot_group.command("check")
@click.argument("base_file", type=click.Path(dir_okay=False))
@_STATE_DIR_OPTION
@_trusted_option("Trusted certificate id (repeatable; bound to its certificate by an earlier boot cache or adopt; "
                 "default: [boot] trusted_certificate_ids of boot.conf).")
@click.option("--no-cache", is_flag=True, help="Read the whole file even if it is unchanged.")
@format_option()
@_SEAL_OPTION
@_LOCK_TIMEOUT_OPTION
@quiet_option
@click.pass_context
def boot_check(ctx: click.Context, base_file: str, state_dir: str | None, trusted_ids: tuple[str, ...],
               no_cache: bool, fmt: str | None, seal: str | None, lock_timeout: float | None, quiet: bool) -> None:
    """Would an instance be allowed to boot from BASE_FILE? (enforce mode; exit 0 = yes; seals it as the hook does).

    Decides with boot.conf's [boot] settings as the hook does (trusted ids, seal, max_fast_path_age),
    unless a flag overrides one."""
    settings = boot_settings(ctx)
    state_dir = _or_file(state_dir, settings, "state_dir")
    policy = boot.BootPolicy(trusted_certificate_ids=trusted_ids or settings.trusted_certificate_ids,
                             max_fast_path_age=settings.max_fast_path_age,
                             immutable_bases=_or_file(seal, settings, "seal_bases") == "immutable")
    decision = boot.verify_for_boot(base_file, RecordStore(state_dir, lock_timeout=_or_file(
        lock_timeout, settings, "lock_timeout")), policy, None if no_cache else VerifiedCache(state_dir))
    result: dict[str, Any] = {"file": base_file, "allowed": decision.allowed, "reason": decision.reason,
                              "message": decision.message, "exit_code": decision.code}
    if fmt is not None:
        emit(result, fmt)
    elif decision.allowed and not is_quiet(ctx, quiet):
        say(f"OK: {decision.message}")
    if not decision.allowed:
        if fmt is None:
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
@format_option()
@click.option("--by-conversion", is_flag=True,
              help="A raw base without raw-digest statement: verify the signed qcow2 given as --original, convert "
                   "it as Nova does and adopt the base if it is exactly that conversion.")
@click.option("--original", "original_path", type=click.Path(dir_okay=False),
              help="With --by-conversion: the image's original (the signed qcow2, e.g. from `openstack image save`).")
@click.option("--max-size", type=SizeType(),
              help="With --by-conversion: refuse an original larger than this many bytes (K, M, G, T: powers of "
                   "1024; default: [boot] adopt_conversion_max_size, 20G).")
@click.pass_context
def boot_adopt(ctx: click.Context, base_or_id: str | None, adopt_all: bool, properties_path: str,
               image_id: str | None, cert_path: str | None, trusted_ids: tuple[str, ...], instances_path: str | None,
               state_dir: str | None, seal: str | None, lock_timeout: float | None, fmt: str | None,
               by_conversion: bool, original_path: str | None, max_size: int | None) -> None:
    """Verify a base file Nova downloaded itself (_base/<sha1(image id)>) and record it for the boot hook.

    BASE_OR_ID is the Glance image id (the base is looked up under --instances-path) or the base
    file's path (the image id then comes from --image-id or the properties file's "id").  One image
    per call, or every base with --all.
    """
    if by_conversion != (original_path is not None):
        raise click.UsageError("--by-conversion and --original go together")
    settings = boot_settings(ctx)
    trusted_ids = trusted_ids or settings.trusted_certificate_ids
    instances_path, state_dir = _or_file(instances_path, settings, "instances_path"), \
        _or_file(state_dir, settings, "state_dir")
    seal, lock_timeout = _or_file(seal, settings, "seal_bases"), _or_file(lock_timeout, settings, "lock_timeout")
    max_size = _or_file(max_size, settings, "adopt_conversion_max_size")
    if adopt_all:
        if base_or_id is not None or image_id is not None:
            raise click.UsageError("--all adopts every base: give no BASE_OR_ID and no --image-id")
        if by_conversion:
            raise click.UsageError("--by-conversion adopts one image: give BASE_OR_ID, not --all")
        trust = _boot_trust(settings)
        _adopt_every_base(ctx, properties_path, cert_path, trusted_ids, trust, instances_path,
                          RecordStore(state_dir, lock_timeout=lock_timeout), seal, fmt)
        return
    if base_or_id is None:
        raise click.UsageError("give BASE_OR_ID (an image id or a base file), or --all")
    document = load_properties_document(properties_path)
    image_id, instances_path = _adopt_target(base_or_id, image_id, document, instances_path)
    properties = image_format.with_disk_format(document, properties_from_document(document))
    signed = adoption.signature_properties(image_id, properties)  # unsigned: refused before any fetch
    certificate = signing_certificate(ctx, cert_path, signed)
    trust = _boot_trust(settings)
    anchors, recorded_ids = _record_trust(ctx, trusted_ids, trust)
    provenance = _host_signed_finder(ctx, trust)(image_id, properties, certificate)
    records = RecordStore(state_dir, lock_timeout=lock_timeout)
    evidence = _record_evidence(ctx, trust, records)
    with contextlib.ExitStack() as stack:
        original = None
        if original_path is not None:
            handle, size = stack.enter_context(open_image(original_path))
            original = Original(handle, max_size=max_size, announced_size=size)
        record = adoption.adopt(
            instances_path, image_id, properties, certificate, records,
            anchors=anchors, trusted_ids=recorded_ids,
            certificate_id=None if cert_path is not None else signed.certificate_uuid, policy=Policy(),
            immutable=seal == "immutable", original=original,
            image_facts=_facts_of_document(document), provenance=provenance, **evidence,
        )
    result = record.to_body()["cached_file"] | {"image_id": image_id, "source_format": record.source_format}
    if fmt is not None:
        emit(result, fmt)
    else:
        say(f"OK: adopted {os.path.join(image_cache.base_dir(instances_path), result['name'])} "
            f"({adoption.describe_adopted(image_id, record)})")


def _record_trust(ctx: click.Context, trusted_ids: tuple[str, ...],
                  trust: _BootTrust | None) -> tuple[chain.TrustAnchors | None, tuple[str, ...]]:
    """What a new record's chain is validated against, and the trusted ids it records: ``--trusted`` (else
    ``[boot] trusted_certificate_ids``, else ``[imgsign]``'s); under boot.conf's trust policy
    (``[boot] policy_file``) and no ``--trusted``, the certificates of its CA stores (files and key-manager
    ids), as the hook's own adoption validates against them."""
    if trusted_ids or trust is None:
        return trust_anchors(ctx, trusted_ids, (), (), (), None, None), \
            tuple(effective_trusted_ids(ctx, trusted_ids, ()))
    stores = [s for rule in trust.policy.rules for s in rule.ca_stores]
    files = tuple(dict.fromkeys(os.path.join(trust.base_dir, f) for s in stores for f in s.certificate_files))
    ids = tuple(dict.fromkeys(i for s in stores for i in s.key_manager_ids))
    return trust_anchors(ctx, ids, files, (), (), None, None), ids


def _facts_of_document(document: object) -> dict[str, str] | None:
    """The image facts a trust policy selects on, from `openstack image show -f json` output (None without an
    owner: a bare properties file says nothing of the image)."""
    from imgsign.compute.boot_policy import facts_of

    return facts_of(document) if isinstance(document, dict) and "owner" in document else None


def _host_signed_finder(ctx: click.Context, trust: _BootTrust | None) -> Callable[[str, Any, Any], Any]:
    """``find(image_id, properties, certificate)``: a host-signed image's provenance, checked online for the
    ``hostSigned`` rules of boot.conf's trust policy (``[boot] policy_file``), as the hook's own adoption
    records it; None when there is no such rule or the image carries no statement."""
    from imgsign.compute import host_signed

    if trust is None:
        return lambda *_args: None

    def find(image_id: str, properties: Any, certificate: Any) -> Any:
        if not host_signed.has_provenance(properties):
            return None
        return host_signed.fetch(image_id, properties, certificate, open_store(ctx), trust.policy, trust.base_dir,
                                 Policy())

    return find


def _adopt_every_base(ctx: click.Context, properties_path: str, cert_path: str | None, trusted_ids: tuple[str, ...],
                      trust: _BootTrust | None, instances_path: str, records: RecordStore, seal: str,
                      fmt: str | None) -> None:
    """``boot adopt --all``: a progress line per file on stderr, a summary on stdout, exit status as documented."""
    from imgsign.compute import bulk_adoption

    images = _images_of(properties_path)
    anchors, recorded_ids = _record_trust(ctx, trusted_ids, trust)
    fetched: dict[str, Any] = {}

    def certificate_for(signed: SignatureProperties) -> Any:
        if signed.certificate_uuid not in fetched:
            fetched[signed.certificate_uuid] = signing_certificate(ctx, cert_path, signed)
        return fetched[signed.certificate_uuid]

    def report(index: int, total: int, outcome: bulk_adoption.Outcome) -> None:
        say(f"imgsign: [{index}/{total}] _base/{outcome.name}: {outcome.describe()}", err=True)

    outcomes = bulk_adoption.adopt_all(
        instances_path, images, certificate_for, records, anchors=anchors, trusted_ids=recorded_ids,
        certificate_ids_from_properties=cert_path is None, policy=Policy(), report=report,
        immutable=seal == "immutable", facts_for=_facts_of_document,
        provenance_for=_host_signed_finder(ctx, trust), **_record_evidence(ctx, trust, records))
    totals = bulk_adoption.totals(outcomes)
    code = bulk_adoption.exit_code(outcomes)
    if fmt is not None:
        bases = [o.to_json() for o in outcomes]
        emit({"instances_path": instances_path, "bases": bases, "totals": totals, "exit_code": code}, fmt, rows=bases)
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
@click.argument("bases_or_ids", nargs=-1)
@click.option("--unused", is_flag=True,
              help="Release every adopted base (one with a trust record) in --instances-path that no instance disk "
                   "uses; keep the others.")
@click.option("--force", is_flag=True,
              help="Release a named base even while an instance disk uses it (with a warning).")
@click.option("--owner", default="nova", show_default=True,
              help="User (and their group) to give each base to, so Nova's image cache manager can remove it.")
@_INSTANCES_OPTION
@_STATE_DIR_OPTION
@click.option("--libvirt-uri", default="qemu:///system", show_default=True,
              help="libvirt to ask (read-only) which running domains use a base; '' to scan the instance "
                   "directories only.")
@_LOCK_TIMEOUT_OPTION
@click.pass_context
def boot_release(ctx: click.Context, bases_or_ids: tuple[str, ...], unused: bool, force: bool, owner: str,
                 instances_path: str | None, state_dir: str | None, libvirt_uri: str,
                 lock_timeout: float | None) -> None:
    """Unseal bases Nova may remove (image ids or _base/<sha1> paths, or --unused): the flag, owner and record go.

    A sealed base is immutable, so Nova's image cache manager cannot remove it
    once no instance uses it; release it first.  Booting from a released base adopts or refuses it anew.
    A base an instance disk still uses (its qcow2 chain names it, or a running domain's disk chain holds
    it, as libvirt says) is not released (exit 66) unless --force is given.
    """
    import pwd

    from imgsign.compute import base_users

    if unused == bool(bases_or_ids):
        raise click.UsageError("give the bases to release (image ids or _base paths), or --unused")
    if unused and force:
        raise click.UsageError("--unused releases only bases no instance uses: --force does not go with it")
    settings = boot_settings(ctx)
    instances_path, state_dir = _or_file(instances_path, settings, "instances_path"), \
        _or_file(state_dir, settings, "state_dir")
    lock_timeout = _or_file(lock_timeout, settings, "lock_timeout")
    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        raise click.BadParameter(f"no user {owner!r} on this host", param_hint="--owner") from None
    records = RecordStore(state_dir, lock_timeout=lock_timeout)
    targets = _adopted_bases(instances_path, records) if unused else [
        _split_base_path(base_or_id) if os.sep in base_or_id else (instances_path, cache_name(base_or_id))
        for base_or_id in bases_or_ids]
    if unused and not targets:
        say(f"no adopted base in {image_cache.base_dir(instances_path)}")
    busy = []
    for where in dict.fromkeys(where for where, _ in targets):
        names = [name for place, name in targets if place == where]
        users = base_users.users_of(where, names)
        if libvirt_uri:
            try:
                running = base_users.domain_users(libvirt_uri, where, names)
            except OSError as exc:
                say(f"imgsign: note: libvirt ({libvirt_uri}) was not asked which domains run ({exc}); only the "
                    f"instance directories under {where} were looked at", err=True)
            else:
                users = {name: sorted(set(users[name] + running[name])) for name in names}
        for name in names:
            path = os.path.join(image_cache.base_dir(where), name)
            if users[name] and unused:
                say(f"kept {path}: used by {', '.join(users[name])}")
                continue
            if users[name] and not force:
                busy.append(f"{path} is used by {', '.join(users[name])}")
                continue
            if users[name]:
                say(f"imgsign: WARNING: releasing {path} while {', '.join(users[name])} uses it: nova can now "
                    "change it under the instance, whose next boot adopts or refuses it anew", err=True)
            found = image_cache.release(where, name, records, user.pw_uid, user.pw_gid)
            say(f"released {path}" + (f" (owner {owner}, mode 0644, not immutable; its record is gone)" if found
                                      else " (no such file; its record is gone)"))
    if busy:
        raise errors.BaseBusy(f"not released: {'; '.join(busy)} (an instance still uses it; give --force to "
                              "release it anyway)")


def _adopted_bases(instances_path: str, records: RecordStore) -> list[tuple[str, str]]:
    """``(instances path, name)`` of every base in ``_base`` that has a trust record (``--unused``)."""
    import re

    cache = image_cache.base_dir(instances_path)
    try:
        names = sorted(name for name in os.listdir(cache) if re.fullmatch(r"[0-9a-f]{40}", name))
    except OSError as exc:
        raise errors.InputError(f"cannot list the image cache {cache}: {exc.strerror}") from None
    return [(instances_path, name) for name in names if records.recorded(name)]


@boot_group.command("install-hook")
@click.option("--libvirt-dir", default="/etc/libvirt", show_default=True, type=click.Path(file_okay=False),
              help="libvirt's configuration directory (the hook goes into its hooks/qemu.d/ or hooks/qemu).")
@click.option("--name", default="imgsign", show_default=True, help="The hook's file name in hooks/qemu.d/.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The hook's boot.conf, checked or created from a template [default: $IMGSIGN_BOOT_CONFIG, "
                   "/etc/imgsign/boot.conf]; another path than the default is written into the hook.")
@click.option("--instances-path", type=click.Path(file_okay=False),
              help="Nova's instances path, for a new boot.conf [default: boot.conf's, /var/lib/nova/instances].")
@click.option("--libvirt-version", metavar="X.Y",
              help="libvirt's version (qemu.d/ is read from 6.5 on) [default: what virtqemud or libvirtd says].")
@click.option("--no-instances-check", is_flag=True,
              help="Do not check the instances path (a container image built before the path is mounted); "
                   "run the command again where it is.")
def boot_install_hook(libvirt_dir: str, name: str, config_path: str | None, instances_path: str | None,
                      libvirt_version: str | None, no_instances_check: bool) -> None:
    """Install the libvirt qemu hook (imgsign-libvirt-hook) for this Python, after checking the host.

    Into LIBVIRT_DIR/hooks/qemu.d/NAME (libvirt >= 6.5, libvirtd or virtqemud), else hooks/qemu when no
    other hook is there; another hook is never replaced.  Checks first, as the hook will (exit 63): the
    instances path and its _base, boot.conf (root's, 0600), the Python and package the hook runs as root.
    Creates the configuration directory (root, 0750) and a boot.conf template (root, 0600) if missing.
    """
    import importlib.metadata

    from imgsign.compute import hook_install
    from imgsign.compute.libvirt_hook import DEFAULT_CONFIG

    configured = os.path.abspath(config_path or os.environ.get("IMGSIGN_BOOT_CONFIG") or DEFAULT_CONFIG)
    report = hook_install.install(
        libvirt_dir=libvirt_dir, name=name, config_path=configured,
        config_is_default=configured == DEFAULT_CONFIG, instances_path=instances_path,
        python=sys.executable, version=importlib.metadata.version("imgsign"),
        libvirt=hook_install.libvirt_version(libvirt_version), check_instances=not no_instances_check)
    for line in report.done:
        say(line)
    for line in report.next:
        say(f"next: {line}")
