"""The libvirt qemu hook: verify an instance's image before libvirt starts it.

libvirt runs ``/etc/libvirt/hooks/qemu <domain> <operation> <sub-op> -`` with the
domain XML on stdin; a non-zero exit during ``prepare begin`` stops the guest
from starting and libvirt shows our stderr in the start error.  Every other
operation exits 0 at once (``hooks/libvirt-qemu`` checks that before importing
anything).

For ``prepare begin`` the hook reads Nova's ``<nova:instance>`` metadata, follows
each file-backed disk's backing chain (checking every layer for host-file
references) and verifies every base file in ``$instances_path/_base/`` against
its trust record (:mod:`imgsign.compute.boot`).  Policy comes from ``boot.conf``
(``$IMGSIGN_BOOT_CONFIG``, default ``/etc/imgsign/boot.conf``)::

    [boot]
    mode = enforce                       # or warn
    trusted_certificate_ids = id1, id2   # empty: any signer with a valid record
    max_fast_path_age = 86400            # seconds an unchanged sealed base is accepted unread
    instances_path = /var/lib/nova/instances
    state_dir = /var/lib/imgsign/boot
    log_file = /var/log/imgsign/boot-hook.log
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime
import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import IO, Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring

from imgsign.compute import qemu_img
from imgsign.compute.boot import BootDecision, BootPolicy, Mode, verify_for_boot
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import VerifiedCache
from imgsign.errors import ImgsignError, InputError, UnsignedImage

DEFAULT_CONFIG = "/etc/imgsign/boot.conf"
NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
#: Base files Nova makes itself (not images): ephemeral and swap disks.
NOT_IMAGES = ("ephemeral_", "swap_")


@dataclasses.dataclass(frozen=True)
class HookConfig:
    policy: BootPolicy
    instances_path: str
    state_dir: str
    log_file: str | None


def load_config(path: str | None = None) -> HookConfig:
    path = path or os.environ.get("IMGSIGN_BOOT_CONFIG") or DEFAULT_CONFIG
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    try:
        with open(path) as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise InputError(f"hook configuration {path} does not exist") from None
    except (OSError, configparser.Error) as exc:
        raise InputError(f"cannot read hook configuration {path}: {exc}") from None
    section = parser["boot"] if parser.has_section("boot") else {}
    mode_text = section.get("mode", "enforce").strip()
    try:
        mode = Mode(mode_text)
    except ValueError:
        raise InputError(f"{path}: [boot] mode must be enforce or warn, not {mode_text!r}") from None
    ids = tuple(i.strip() for i in section.get("trusted_certificate_ids", "").split(",") if i.strip())
    age_text = section.get("max_fast_path_age", str(BootPolicy.max_fast_path_age)).strip()
    try:
        max_age = float(age_text)
        if not 0 <= max_age < float("inf"):
            raise ValueError
    except ValueError:
        raise InputError(f"{path}: [boot] max_fast_path_age must be a number of seconds, not {age_text!r}") from None
    return HookConfig(
        policy=BootPolicy(mode, ids, max_age),
        instances_path=section.get("instances_path", "/var/lib/nova/instances").strip(),
        state_dir=section.get("state_dir", "/var/lib/imgsign/boot").strip(),
        log_file=(section.get("log_file", "/var/log/imgsign/boot-hook.log").strip() or None),
    )


@dataclasses.dataclass(frozen=True)
class Disk:
    target: str
    path: str
    format: str


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    image_id: str | None
    disks: tuple[Disk, ...]


def parse_domain(xml_text: str) -> Domain:
    """The instance uuid, Nova's root image id and the file-backed disks of a domain XML."""
    try:
        root = defused_fromstring(xml_text, forbid_dtd=True)
    except ET.ParseError as exc:
        raise InputError(f"the domain XML is malformed ({exc})") from None
    except DefusedXmlException as exc:
        raise InputError(f"the domain XML is refused: it declares a DTD or entities ({exc})") from None
    if root.tag != "domain":
        raise InputError(f"expected a <domain> document, got <{root.tag}>")
    image_id = None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{" + NOVA_NS_PREFIX) \
                and element.tag.endswith("}root") and element.get("type") == "image":
            image_id = element.get("uuid") or None
    disks = []
    for disk in root.findall("./devices/disk"):
        if disk.get("type") != "file" or disk.get("device", "disk") not in ("disk", "cdrom"):
            continue
        source = disk.find("source")
        if source is None or not source.get("file"):
            continue  # an empty cdrom drive
        driver = disk.find("driver")
        target = disk.find("target")
        disks.append(Disk(target.get("dev", "?") if target is not None else "?", source.get("file", ""),
                          driver.get("type", "raw") if driver is not None else "raw"))
    return Domain(root.findtext("name", "?"), root.findtext("uuid", "?"), image_id, tuple(disks))


def decide(domain: Domain, config: HookConfig) -> list[tuple[str, str | None, BootDecision]]:
    """One decision per base file (``[(file, image_id, decision)]``) for this domain."""
    base = os.path.realpath(os.path.join(config.instances_path, "_base"))
    records = RecordStore(config.state_dir)
    cache = VerifiedCache(config.state_dir)
    refuse = config.policy.mode is Mode.ENFORCE
    results: list[tuple[str, str | None, BootDecision]] = []
    bases_seen = set()
    for disk in domain.disks:
        try:
            if not os.path.exists(disk.path):
                raise InputError(f"disk {disk.target}: {disk.path} does not exist")
            chain = qemu_img.backing_chain(disk.path, disk.format, base)
        except ImgsignError as exc:
            results.append((disk.path, domain.image_id, BootDecision(not refuse, exc.exit_code, exc.reason,
                                                                    exc.message)))
            continue
        bottom = chain[-1]
        if os.path.dirname(os.path.realpath(bottom.path)) != base:
            continue  # not backed by the image cache: config drive, volume copy, ...
        name = os.path.basename(bottom.path)
        if name.startswith(NOT_IMAGES) or name in bases_seen:
            continue
        bases_seen.add(name)
        decision = verify_for_boot(bottom.path, records, config.policy, cache)
        record_id = domain.image_id if domain.image_id and cache_name(domain.image_id) == name else None
        results.append((bottom.path, record_id, decision))
    if domain.image_id and cache_name(domain.image_id) not in bases_seen:
        unverified = UnsignedImage(f"root image {domain.image_id} is not the base of any disk in {base}: "
                                   "its boot cannot be verified")
        results.append((os.path.join(base, cache_name(domain.image_id)), domain.image_id,
                        BootDecision(not refuse, unverified.exit_code, unverified.reason, unverified.message)))
    return results


def _log(config: HookConfig, entry: dict[str, Any]) -> None:
    if not config.log_file:
        return
    try:
        os.makedirs(os.path.dirname(config.log_file), exist_ok=True)
        with open(config.log_file, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    except OSError as exc:
        print(f"imgsign hook: cannot write log {config.log_file}: {exc.strerror}", file=sys.stderr)


def run(domain_name: str, xml_text: str, stderr: IO[str], config_path: str | None = None) -> int:
    """The ``prepare begin`` work; the process exit code (0 allows the start)."""
    try:
        config = load_config(config_path)
    except ImgsignError as exc:
        print(f"imgsign: refusing to start {domain_name}: {exc.message}", file=stderr)
        return exc.exit_code
    try:
        domain = parse_domain(xml_text)
        results = decide(domain, config)
    except ImgsignError as exc:
        domain = Domain(domain_name, "?", None, ())
        results = [("-", None, BootDecision(config.policy.mode is Mode.WARN, exc.exit_code, exc.reason,
                                            exc.message))]
    status = 0
    for path, image_id, decision in results:
        entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "domain": domain.name, "instance": domain.uuid, "image": image_id or domain.image_id,
                 "file": path, "allowed": decision.allowed, "reason": decision.reason,
                 "message": decision.message, "mode": config.policy.mode.value}
        _log(config, entry)
        if not decision.allowed:
            status = status or decision.code
            print(f"imgsign: refusing to start instance {domain.uuid} (image {entry['image']}, {path}): "
                  f"{decision.message}", file=stderr)
        elif decision.warning:
            print(f"imgsign: WARNING (mode=warn) instance {domain.uuid} (image {entry['image']}, {path}): "
                  f"{decision.message}", file=stderr)
    return status


def main(argv: list[str], stdin: IO[str], stderr: IO[str] = sys.stderr) -> int:
    """``qemu <domain> <operation> <sub-operation> <extra>``: act on ``prepare begin`` only."""
    if len(argv) < 3 or (argv[1], argv[2]) != ("prepare", "begin"):
        return 0
    try:
        xml_text = stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"imgsign: refusing to start {argv[0]}: cannot read the domain XML ({exc})", file=stderr)
        return InputError.exit_code
    return run(argv[0], xml_text, stderr)
