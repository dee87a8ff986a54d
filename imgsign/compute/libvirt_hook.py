"""The libvirt qemu hook: verify an instance's image before libvirt starts it.

libvirt runs ``/etc/libvirt/hooks/qemu <domain> <operation> <sub-op> -`` with the
domain XML on stdin; a non-zero exit during ``prepare begin`` or ``start begin``
stops the guest from starting and libvirt shows our stderr in the start error.
The hook checks twice: at ``prepare begin``, and again at ``start begin``, after
libvirt has resolved the backing chains (now in the XML, and handed to qemu
explicitly) and labelled the files, right before qemu starts.  Every other
operation exits 0 at once (``hooks/libvirt-qemu`` checks that before importing
anything).  Verified bases are sealed (:mod:`imgsign.compute.protection`), and a
base that someone other than root could still change or replace is refused.

Each time the hook reads Nova's ``<nova:instance>`` metadata and
looks at every part of the guest that reads a host file:

* each file disk (disk, cdrom, floppy, lun): its backing chain, as the qcow2
  headers name it and as the XML's ``<backingStore>`` elements name it, layer by
  layer (:mod:`imgsign.compute.qemu_img`: plain local files only, no symbolic
  links); every layer in ``$instances_path/_base/`` is verified against its trust
  record (:mod:`imgsign.compute.boot`), Nova's ``ephemeral_*``/``swap_*`` bases
  excepted; a ``<dataStore>`` is refused;
* ``<os><kernel>``, ``<initrd>`` and ``<dtb>`` (Nova copies the kernel and ramdisk
  images from the cache into the instance directory): each must be a
  byte-identical copy of a verified image;
* ``<os><loader>``, ACPI tables and fw_cfg files: host firmware, which only root
  may be able to change; ``<os><nvram>`` is logged as instance state;
* block, network, volume and other non-file disks, ``<filesystem>`` shares, SCSI
  ``<hostdev>`` and file-backed ``<memory>`` (vPMEM) cannot be verified: refused
  under ``enforce`` unless their kind is listed in ``allow_unverified`` (then
  allowed with a warning), warned about under ``warn``; ``<qemu:commandline>`` is
  never allowed under ``enforce``.

Policy comes from ``boot.conf`` (``$IMGSIGN_BOOT_CONFIG``, default
``/etc/imgsign/boot.conf``), an oslo.config file (comments on lines of their own; every option,
its type and default: ``doc/source/reference/configuration.md``, ``etc/imgsign/boot.conf.sample``)::

    [boot]
    # enforce or warn
    mode = enforce
    # empty: any signer with a valid record
    trusted_certificate_ids = id1, id2
    # a trust policy instead of trusted_certificate_ids (doc/source/user/trust-policy.md)
    policy_file =
    # seconds an unchanged sealed base is accepted unread
    max_fast_path_age = 86400
    # or owner: root's and 0644 only (e.g. SELinux hosts, see the docs)
    seal_bases = immutable
    # seconds to wait for another imgsign run on the same base
    lock_timeout = 30
    instances_path = /var/lib/nova/instances
    state_dir = /var/lib/imgsign/boot
    # e.g. block, network: Cinder volumes, allowed with a warning
    allow_unverified =

    [nova]
    # optional: the server's own trusted image certificates; keystoneauth options as [glance]
    auth_type = password
    # or host: Nova unreachable -> the host's policy alone
    trusted_certs_fallback = refuse
    # seconds for the whole look-up of one hook call
    trusted_certs_timeout = 5

With ``[nova]`` the hook asks Nova for the booting server's ``trusted_image_certificates``
(:mod:`imgsign.compute.server_trust`, :mod:`imgsign.compute.nova_client`) once per call; a server's
own list narrows the host's ``trusted_certificate_ids``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring

from imgsign._internal import redact
from imgsign._internal.untrusted import SafeStream, safe
from imgsign.compute import boot_config, protection, qemu_img
from imgsign.compute.base_lock import DEFAULT_LOCK_TIMEOUT
from imgsign.compute.boot import BootDecision, BootPolicy, Mode, verify_for_boot
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import VerifiedCache
from imgsign.errors import (
    ImgsignError,
    InputError,
    InsecureState,
    NovaUnavailable,
    UnsafeImage,
    UnsignedImage,
    UnverifiableDevice,
)
from imgsign.policy import Policy

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

    from imgsign.compute.self_adoption import SelfAdopter
    from imgsign.compute.server_trust import NovaSettings

DEFAULT_CONFIG = boot_config.DEFAULT_PATH
NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
#: Base files Nova makes itself (not images): ephemeral and swap disks.
NOT_IMAGES = ("ephemeral_", "swap_")
#: Kinds of guest storage the hook cannot verify (libvirt disk types, ``filesystem`` shares, SCSI ``hostdev``
#: pass-through and file-backed ``memory`` devices such as vPMEM), which ``allow_unverified`` may allow.
UNVERIFIABLE_KINDS = boot_config.UNVERIFIABLE_KINDS
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
#: Host files read at boot, by role: the ``<os>`` elements, ACPI tables and fw_cfg entries.
BOOT_FILES = {"kernel": "<os><kernel>", "initrd": "<os><initrd>", "dtb": "<os><dtb>", "loader": "<os><loader>",
              "nvram": "<os><nvram>", "acpi-table": "<os><acpi><table>", "fw_cfg": "<sysinfo type='fwcfg'> entry"}
#: Roles read from host firmware rather than from images.
FIRMWARE = ("loader", "acpi-table", "fw_cfg")
_CACHE_NAME = re.compile(r"[0-9a-f]{40}")
#: The hook operations that check the domain: before libvirt reads the disk headers and labels the
#: files, and again after (``start begin``: the XML then holds the backing chain libvirt resolved,
#: which it hands to qemu explicitly with ``-blockdev``; qemu is started right after this call).
CHECKED_OPERATIONS = (("prepare", "begin"), ("start", "begin"))
#: Where each libvirt disk/source type names what it reads.
_SOURCE_ATTRIBUTES = {"file": ("file",), "block": ("dev",), "dir": ("dir",), "network": ("protocol", "name"),
                      "volume": ("pool", "volume"), "vhostuser": ("path",),
                      "mount": ("dir",)}


@dataclasses.dataclass(frozen=True)
class HookConfig:
    policy: BootPolicy
    instances_path: str
    state_dir: str
    log_file: str | None
    allow_unverified: tuple[str, ...] = ()
    #: The file this was read from (self-adoption reads its [glance] and key manager sections).
    path: str | None = None
    #: Seconds to wait for another imgsign run on the same base before refusing (``[boot] lock_timeout``).
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    #: ``[nova]``: ask Nova for the server's own trusted certificates (None: off, the default).
    nova: NovaSettings | None = None

    @property
    def cache_dir(self) -> str:
        return os.path.join(os.path.normpath(self.instances_path), qemu_img.CACHE)


def load_config(path: str | None = None) -> HookConfig:
    """boot.conf (``path``, ``$IMGSIGN_BOOT_CONFIG``, ``/etc/imgsign/boot.conf``), checked by oslo.config
    or, when it is unchanged since, by its validated snapshot (:mod:`imgsign.compute.boot_config`).
    ``[boot] policy_file`` (a trust policy) is read and validated on every call; YAML is decoded only for
    contents not seen before (:func:`imgsign.compute.boot_config.load_policy`)."""
    settings = boot_config.load(path)
    trust, trust_dir = None, "/"
    if settings.policy_file:
        if settings.trusted_certificate_ids:
            raise InputError(f"{settings.path}: [boot] sets both policy_file and trusted_certificate_ids: set one")
        from imgsign.compute.boot_policy import read_root_file

        # Decoded once per content (boot_config.load_policy keeps the document): the warm path loads no YAML.
        trust = boot_config.load_policy(settings.policy_file, read_root_file(settings.policy_file, "trust policy"))
        trust_dir = os.path.dirname(os.path.abspath(settings.policy_file))
    return HookConfig(
        policy=BootPolicy(mode=Mode(settings.mode), trusted_certificate_ids=settings.trusted_certificate_ids,
                          max_fast_path_age=settings.max_fast_path_age,
                          immutable_bases=settings.seal_bases == "immutable", trust=trust, trust_dir=trust_dir),
        instances_path=settings.instances_path, state_dir=settings.state_dir, log_file=settings.log_file,
        allow_unverified=settings.allow_unverified, path=settings.path, lock_timeout=settings.lock_timeout,
        nova=_nova_settings(settings))


def _nova_settings(settings: boot_config.BootSettings) -> NovaSettings | None:
    """``[nova]`` (per-server trust), None when absent: its module loads only for a file that has one."""
    if settings.nova is None:
        return None
    from imgsign.compute.server_trust import load_settings

    return load_settings(settings.path or boot_config.DEFAULT_PATH, dict(settings.nova))


@dataclasses.dataclass(frozen=True)
class Source:
    """What one disk, backing layer or share reads: libvirt's type, its path (or name) and format."""

    type: str
    path: str
    format: str | None = None


@dataclasses.dataclass(frozen=True)
class Disk:
    """A ``<disk>``; ``backing_store`` is None when the XML names no chain (libvirt reads the headers)
    and ``backing_complete`` tells whether the XML chain ends with an empty ``<backingStore/>``."""

    target: str
    path: str
    format: str
    type: str = "file"
    device: str = "disk"
    backing_store: tuple[Source, ...] | None = None
    backing_complete: bool = False
    data_stores: tuple[Source, ...] = ()


@dataclasses.dataclass(frozen=True)
class BootFile:
    """A file named by ``<os>``: ``role`` is kernel, initrd, dtb, loader or nvram."""

    role: str
    path: str


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    image_id: str | None
    disks: tuple[Disk, ...]
    boot_files: tuple[BootFile, ...] = ()
    filesystems: tuple[Source, ...] = ()
    #: Other devices that give the guest host storage or arbitrary qemu options (``type`` is the kind).
    others: tuple[Source, ...] = ()
    #: The project booting the instance (``<nova:owner><nova:project uuid>``), for the trust policy.
    project_id: str | None = None


def _source(element: ET.Element | None, kind: str) -> str:
    if element is None:
        return ""
    if kind not in _SOURCE_ATTRIBUTES:  # a type this hook does not know: name it by all its attributes
        return ":".join(f"{key}={value}" for key, value in sorted(element.attrib.items()))
    values = [element.get(attribute, "") for attribute in _SOURCE_ATTRIBUTES[kind]]
    return ":".join(value for value in values if value)


def _format(element: ET.Element, child: str) -> str | None:
    found = element.find(child)
    return found.get("type") if found is not None else None


def _backing_store(disk: ET.Element) -> tuple[tuple[Source, ...] | None, bool]:
    element = disk.find("backingStore")
    if element is None:
        return None, False
    layers: list[Source] = []
    while element is not None:
        if not element.attrib and len(element) == 0:
            return tuple(layers), True
        kind = element.get("type", "file")
        layers.append(Source(kind, _source(element.find("source"), kind), _format(element, "format")))
        element = element.find("backingStore")
    return tuple(layers), False


def _disk(disk: ET.Element) -> Disk:
    kind = disk.get("type", "file")
    target = disk.find("target")
    backing, complete = _backing_store(disk)
    data_stores = tuple(Source(store.get("type", "file"), _source(store.find("source"), store.get("type", "file")),
                               _format(store, "format")) for store in disk.iter("dataStore"))
    return Disk(target.get("dev", "?") if target is not None else "?", _source(disk.find("source"), kind),
                _format(disk, "driver") or "raw", kind, disk.get("device", "disk"), backing, complete, data_stores)


def _parse(xml: bytes | str) -> ET.Element:
    try:
        root = defused_fromstring(xml, forbid_dtd=True)
    except ET.ParseError as exc:
        raise InputError(f"the domain XML is malformed ({exc})") from None
    except DefusedXmlException as exc:
        raise InputError(f"the domain XML is refused: it declares a DTD or entities ({exc})") from None
    except (ValueError, LookupError, UnicodeError) as exc:  # e.g. an unknown encoding declaration
        raise InputError(f"the domain XML cannot be decoded ({type(exc).__name__}: {exc})") from None
    if not isinstance(root, ET.Element):
        raise InputError("the domain XML has no root element")
    return root


def parse_domain(xml: bytes | str) -> Domain:
    """The instance uuid, Nova's root image id and everything that reads a host file, from a domain XML.

    Raises :class:`InputError` for anything that is not a well-formed ``<domain>`` document (bytes
    are parsed as XML bytes: their encoding comes from the document, never from the locale).
    """
    root = _parse(xml)
    if root.tag != "domain":
        raise InputError(f"expected a <domain> document, got <{root.tag}>")
    image_ids = {element.get("uuid") or None for element in root.iter()
                 if isinstance(element.tag, str) and element.tag.startswith("{" + NOVA_NS_PREFIX)
                 and element.tag.endswith("}root") and element.get("type") == "image"}
    if len(image_ids) > 1:
        raise InputError(f"the domain XML names {len(image_ids)} different root images")
    disks = tuple(_disk(disk) for disk in root.findall("./devices/disk"))
    filesystems = tuple(Source(fs.get("type", "mount"), _source(fs.find("source"), fs.get("type", "mount")))
                        for fs in root.findall("./devices/filesystem"))
    boot_files = [BootFile(element.tag, (element.text or "").strip()) for element in root.findall("./os/*")
                  if element.tag in BOOT_FILES and (element.text or "").strip()]
    boot_files += [BootFile("acpi-table", (table.text or "").strip()) for table in root.findall("./os/acpi/table")
                   if (table.text or "").strip()]
    boot_files += [BootFile("fw_cfg", entry.get("file", "")) for entry in root.findall("./sysinfo/entry")
                   if entry.get("file")]
    others = [Source("hostdev", _source(hostdev.find("source/adapter"), "adapter") or hostdev.get("type", ""))
              for hostdev in root.findall("./devices/hostdev") if hostdev.get("type") in ("scsi", "scsi_host")]
    others += [Source("memory", (memory.findtext("source/path") or "").strip())
               for memory in root.findall("./devices/memory") if memory.findtext("source/path")]
    others += [Source("qemu:commandline", " ".join(arg.get("value", "") for arg in element.iter(QEMU_NS + "arg")))
               for element in root.iter(QEMU_NS + "commandline")]
    projects = {element.get("uuid") or None for element in root.iter()
                if isinstance(element.tag, str) and element.tag.startswith("{" + NOVA_NS_PREFIX)
                and element.tag.endswith("}project")}
    if len(projects) > 1:
        raise InputError(f"the domain XML names {len(projects)} different owner projects")
    return Domain(root.findtext("name", "?"), root.findtext("uuid", "?"), image_ids.pop() if image_ids else None,
                  disks, tuple(boot_files), filesystems, tuple(others), projects.pop() if projects else None)


Result = tuple[str, "str | None", BootDecision]


class _Decider:
    """The decisions for one domain (see :func:`decide`)."""

    def __init__(self, domain: Domain, config: HookConfig) -> None:
        self.domain = domain
        self.config = config
        self.root = os.path.normpath(config.instances_path)
        self.base = config.cache_dir
        self.records = RecordStore(config.state_dir, lock_timeout=config.lock_timeout)
        self.cache = VerifiedCache(config.state_dir)
        self.results: list[Result] = []
        self.bases_seen: set[str] = set()
        self.names_seen: set[str] = set()
        self._adopter: SelfAdopter | None = None
        #: The host's policy, narrowed by the server's own trusted certificates (:meth:`server_trust`).
        self.policy = config.policy
        self._server_asked = False

    @property
    def adopter(self) -> SelfAdopter:
        """Made (and its module, with the network stack, imported) only when a base lacks a record."""
        if self._adopter is None:
            from imgsign.compute.self_adoption import SelfAdopter

            self._adopter = SelfAdopter(self.config.path, self.config.instances_path, self.records,
                                        self.config.policy.mode, self.config.policy.trusted_certificate_ids,
                                        policy=Policy(),  # the hook has no opt-outs
                                        immutable=self.config.policy.immutable_bases,
                                        trust=self.config.policy.trust, trust_dir=self.config.policy.trust_dir)
        return self._adopter

    def failure(self, path: str, exc: ImgsignError, allowed: bool = False) -> None:
        allowed = allowed or self.config.policy.mode is Mode.WARN
        self.results.append((path, self.domain.image_id, BootDecision(allowed, exc.exit_code, exc.reason,
                                                                      exc.message)))

    def note(self, path: str, message: str) -> None:
        """Log (without a warning) a file that is deliberately not verified."""
        self.results.append((path, None, BootDecision(True, 0, "not-verified", message)))

    def unverifiable(self, kind: str, what: str) -> None:
        hint = ("list it in [boot] allow_unverified to allow it with a warning" if kind in UNVERIFIABLE_KINDS
                else "it is never allowed under enforce")
        self.failure(what, UnverifiableDevice(f"{what} cannot be verified by imgsign (kind {kind!r}; {hint})"),
                     allowed=kind in self.config.allow_unverified)

    def image_id_of(self, name: str) -> str | None:
        image_id = self.domain.image_id
        return image_id if image_id and cache_name(image_id) == name else None

    def disk(self, disk: Disk) -> None:
        what = f"disk {disk.target} ({disk.type} {disk.path})"
        if not disk.path:
            return  # an empty cdrom or floppy drive reads nothing
        if disk.type != "file":
            self.unverifiable(disk.type, what)
            return
        try:
            if disk.data_stores:
                raise UnsafeImage(f"{what} has a <dataStore> ({disk.data_stores[0].path}): an external data "
                                  "file can read host files")
            layers = self.layers(disk)
        except ImgsignError as exc:
            self.failure(disk.path, exc)
            return
        in_cache = [layer for layer in layers if qemu_img.in_cache(layer.path, self.root)]
        if not in_cache:
            self.note(disk.path, f"{what}: no layer in {self.base} (config drive or instance-local file), "
                                 "not an image: not verified")
        for layer in in_cache:
            self.base_layer(layer)

    def layers(self, disk: Disk) -> list[qemu_img.Layer]:
        """Every file qemu may open for ``disk``: the header chain and the XML's ``<backingStore>`` chain."""
        chain = qemu_img.backing_chain(disk.path, disk.format, self.root)
        if disk.backing_store is None:
            return chain
        explicit = [chain[0]]
        for source in disk.backing_store:
            where = f"disk {disk.target}: <backingStore type={source.type!r}> {source.path}"
            if source.type != "file":
                raise UnsafeImage(f"{where} is not a local file in the image cache")
            if not source.format:
                raise UnsafeImage(f"{where} has no <format> (probing would let a raw image pose as qcow2)")
            path = qemu_img.plain_path(source.path, disk.path, where)
            if not qemu_img.in_cache(path, self.root):
                raise UnsafeImage(f"{where} is outside the image cache {self.base}")
            explicit.append(qemu_img.open_layer(path, source.format, self.root))
        if not disk.backing_complete:
            explicit = qemu_img.follow(explicit, self.root)
        return chain + [layer for layer in explicit if layer not in chain]

    def base_layer(self, layer: qemu_img.Layer) -> None:
        if layer.path in self.bases_seen:
            return
        self.bases_seen.add(layer.path)
        name = os.path.basename(layer.path)
        if name.startswith(NOT_IMAGES):
            if layer.backing is None and layer.format == "raw":
                self.note(layer.path, f"{layer.path}: Nova's own ephemeral/swap base, not an image: not verified")
            else:
                self.failure(layer.path, UnsafeImage(
                    f"{layer.path}: a Nova ephemeral/swap base is a raw file without a backing file, not "
                    f"{layer.format}{' with a backing file' if layer.backing else ''}"))
            return
        self.names_seen.add(name)
        self.server_trust()  # before the base's lock: Nova's answer may take up to its deadline
        image_id = self.image_id_of(name)
        try:
            # One lock across adoption, check, seal and the path check: no other run on this base between them.
            with self.records.locks.hold(name):
                # A base Nova downloaded itself (a recorded one, even a damaged record, is only checked).
                adopted, auxiliaries = ([], []) if self.records.recorded(name) else \
                    self.adopter.adopt(layer.path, image_id)
                self.results += adopted
                self.results.append(self.checked(layer.path, image_id, layer.format))
        except ImgsignError as exc:  # the lock: busy, or its directory insecure
            self.failure(layer.path, exc)
            return
        for auxiliary, role in auxiliaries:  # each under its own lock, never nested in this one
            self.results += self.adopter.adopt_auxiliary(auxiliary, role)

    def checked(self, path: str, image_id: str | None, fmt: str | None = None) -> Result:
        """The decision for the base ``path`` (its lock held) read as ``fmt``: its record and format, its
        content, who can change it."""
        decision = verify_for_boot(path, self.records, self.policy, self.cache, fmt=fmt,
                                   booting_project=self.domain.project_id)
        if decision.allowed and decision.code == 0:
            try:
                self.protected(path)
            except ImgsignError as exc:
                allowed = self.config.policy.mode is Mode.WARN
                return path, self.domain.image_id, BootDecision(allowed, exc.exit_code, exc.reason, exc.message)
        return path, image_id, decision

    def protected(self, path: str) -> None:
        """Raise :class:`InsecureState` when someone other than root could change or replace the verified
        base ``path`` between this check and qemu's open (see :mod:`imgsign.compute.protection`)."""
        fix = ("(doc/source/install/compute-host.md, 'The instances path': instances_path, _base and every "
               "directory above them root's, e.g. `chown root:nova instances _base; chmod 1775 instances _base`)")
        if self.config.policy.immutable_bases:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise InputError(f"cannot open base file {path}: {exc.strerror}") from None
            try:
                immutable = protection.is_immutable(fd)
            finally:
                os.close(fd)
            if not immutable:
                raise InsecureState(
                    f"verified base {path} could not be made immutable (its filesystem has no immutable flag): "
                    "libvirt hands it to the qemu user at start, who could then change it; use a local "
                    "filesystem with the flag (ext4, XFS, btrfs) for _base, or accept that risk with "
                    "[boot] seal_bases = owner")
        problem = protection.replaceable_by_others(path)
        if problem is not None:
            raise InsecureState(f"verified base {path}: {problem}, so it could be swapped after this check {fix}")

    def boot_file(self, boot_file: BootFile) -> None:
        what = f"{BOOT_FILES[boot_file.role]} {boot_file.path}"
        try:
            if boot_file.role == "nvram":
                self.note(boot_file.path, f"{what}: the guest's UEFI variable store (instance state written "
                                          "by the guest), not an image: not verified")
            elif boot_file.role in FIRMWARE:
                self.firmware(boot_file.path, what)
            else:
                self.copy_of_image(boot_file.path, what)
        except ImgsignError as exc:
            self.failure(boot_file.path, exc)

    def firmware(self, path: str, what: str) -> None:
        """Host firmware (e.g. OVMF): accepted when only root can change it, never from Nova's directories."""
        if not os.path.isabs(path):
            raise UnverifiableDevice(f"{what} is not an absolute path")
        if qemu_img.below(path, self.root) is not None:
            raise UnverifiableDevice(f"{what} lies under {self.root}, which Nova can write")
        problem = protection.replaceable_by_others(path)
        if problem:
            raise UnverifiableDevice(f"{what}: {problem}")
        self.note(path, f"{what}: host firmware only root can change, not an image: not verified")

    def copy_of_image(self, path: str, what: str) -> None:
        """``path`` must be a verified base, or a byte-identical copy of one (Nova's instance ``kernel``)."""
        path = os.path.abspath(path)
        qemu_img.check_no_symlink(path, self.root)
        own = os.path.basename(path)
        in_cache = os.path.dirname(path) == os.path.normpath(self.base)
        size = os.lstat(path).st_size
        try:
            names = sorted(name for name in os.listdir(self.base) if _CACHE_NAME.fullmatch(name))
        except OSError as exc:
            raise InputError(f"cannot list the image cache {self.base}: {exc.strerror}") from None
        candidates = list(dict.fromkeys(([own] if in_cache else []) + names))
        self.server_trust()
        failed: BootDecision | None = None
        for name in candidates:
            try:
                record = self.records.get_by_name(name)
            except ImgsignError:
                continue  # another image's damaged record is reported when that image boots
            if record is None or record.cached_size != size:
                continue
            decision = verify_for_boot(path, self.records, self.policy,
                                       self.cache if in_cache and name == own else None, name=name,
                                       booting_project=self.domain.project_id)
            if decision.allowed and decision.code == 0:
                self.results.append((path, record.image_id, decision))
                return
            failed = failed or decision
        if failed is not None:
            self.results.append((path, None, failed))
            return
        raise UnsignedImage(f"{what} is not a verified image nor a byte-identical copy of one in {self.base}")

    def server_trust(self) -> None:
        """With ``[nova]``: narrow the policy to the server's own ``trusted_image_certificates``, once per
        hook call and only when an image is checked (a volume-backed server's boot never asks Nova); Nova
        unreachable follows ``[nova] trusted_certs_fallback``."""
        settings = self.config.nova
        if settings is None or self._server_asked:
            return
        self._server_asked = True
        from imgsign.compute.nova_client import trusted_certificates

        where = f"nova:servers/{self.domain.uuid}"
        try:
            ids = trusted_certificates(settings, self.config.state_dir, self.domain.uuid, owner=self.records.owner)
        except NovaUnavailable as exc:
            if settings.fallback == "host":
                self.results.append((where, self.domain.image_id, BootDecision(
                    True, exc.exit_code, exc.reason, f"{exc.message}; decided by the host's trusted certificates "
                                                     "alone ([nova] trusted_certs_fallback = host)")))
            else:
                self.failure(where, NovaUnavailable(f"{exc.message}; refused ([nova] trusted_certs_fallback = "
                                                    "refuse)"))
            return
        except ImgsignError as exc:
            self.failure(where, exc)
            return
        if ids:
            self.bind_missing(where, ids)
            self.policy = dataclasses.replace(self.policy, server_certificate_ids=ids, server_id=self.domain.uuid)
        listed = f"its own trusted image certificates: {', '.join(ids)}" if ids else \
            "no trusted image certificates of its own: the host's policy alone"
        self.results.append((where, self.domain.image_id, BootDecision(True, 0, "server-trust",
                                                                       f"server {self.domain.uuid} has {listed}")))

    def bind_missing(self, where: str, ids: tuple[str, ...]) -> None:
        """Ids of the server's list this host never fetched: fetched from the key manager and bound, as
        self-adoption does for the trusted ids (only when it is configured; otherwise they name no
        certificate, which the check says).  A failure is logged; the check then decides without it."""
        try:
            missing = tuple(i for i in ids if self.records.anchors.fingerprint(i) is None)
            failures = self.adopter.bind_certificates(missing) if missing else []
        except ImgsignError as error:
            failures = [error]
        for failure in failures:
            self.results.append((where, self.domain.image_id, BootDecision(
                True, failure.exit_code, failure.reason, "cannot fetch a trusted certificate of the server's list "
                                                         f"from the key manager: {failure.message}")))

    def run(self) -> list[Result]:
        for disk in self.domain.disks:
            self.disk(disk)
        for boot_file in self.domain.boot_files:
            self.boot_file(boot_file)
        for share in self.domain.filesystems:
            self.unverifiable("filesystem", f"<filesystem type={share.type!r}> {share.path}")
        for other in self.domain.others:
            self.unverifiable(other.type, f"<{other.type}> {other.path}")
        image_id = self.domain.image_id
        if image_id and cache_name(image_id) not in self.names_seen:
            self.failure(os.path.join(self.base, cache_name(image_id)), UnsignedImage(
                f"root image {image_id} is not the base of any disk in {self.base}: its boot cannot be verified"))
        return self.results


def decide(domain: Domain, config: HookConfig) -> list[Result]:
    """One decision per checked file (``[(file, image_id, decision)]``) for this domain."""
    return _Decider(domain, config).run()


def _log(config: HookConfig, entry: dict[str, Any], stderr: IO[str] | None = None) -> None:
    """Append ``entry`` as one JSON line (JSON escapes every control character; text values are
    scrubbed of secrets)."""
    if not config.log_file:
        return
    entry = {key: redact.scrub(value) if isinstance(value, str) else value for key, value in entry.items()}
    try:
        os.makedirs(os.path.dirname(config.log_file), mode=0o750, exist_ok=True)
        # Never through a symbolic link (root appends here), never readable by others.
        fd = os.open(config.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    except OSError as exc:
        _say(stderr or sys.stderr, f"imgsign hook: cannot write log {config.log_file}: {exc.strerror}")


def _say(stderr: IO[str], line: str) -> None:
    """One line on the hook's stderr: foreign text in it (paths, ids, names) cannot break it in two."""
    print(safe(line), file=stderr)


def run(domain_name: str, xml: bytes | str, stderr: IO[str], config_path: str | None = None) -> int:
    """The check (``prepare begin``, ``start begin``); the process exit code (0 allows the start).

    Everything written to ``stderr`` (libvirt's start error, Nova's instance fault) passes
    :class:`~imgsign._internal.untrusted.SafeStream`: no control characters, no secrets."""
    if not isinstance(stderr, SafeStream):
        stderr = SafeStream(stderr, scrub=redact.scrub)  # type: ignore[assignment]
    try:
        config = load_config(config_path)
    except ImgsignError as exc:
        _say(stderr, f"imgsign: refusing to start {domain_name}: {exc.message}")
        return exc.exit_code
    try:
        domain = parse_domain(xml)
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
        _log(config, entry, stderr)
        if not decision.allowed:
            status = status or decision.code
            _say(stderr, f"imgsign: refusing to start instance {domain.uuid} (image {entry['image']}, {path}): "
                         f"{decision.message}")
        elif decision.warning:
            _say(stderr, f"imgsign: WARNING (mode={config.policy.mode.value}) instance {domain.uuid} "
                         f"(image {entry['image']}, {path}): {decision.message}")
    return status


def main(argv: list[str], stdin: IO[bytes], stderr: IO[str] = sys.stderr) -> int:
    """``qemu <domain> <operation> <sub-operation> <extra>``: check on ``prepare begin`` and again on
    ``start begin``; every other operation exits 0 at once.

    ``stdin`` is binary (``sys.stdin.buffer``): libvirt runs hooks in the C locale, where a text
    stdin would decode as ASCII; the XML parser reads the document's own encoding.
    """
    if len(argv) < 3 or (argv[1], argv[2]) not in CHECKED_OPERATIONS:
        return 0
    stderr = SafeStream(stderr, scrub=redact.scrub)  # type: ignore[assignment]
    # What libraries print or log on their own (keystoneauth's warnings, through logging's last-resort
    # handler) goes through the same filter while the hook runs.
    previous, sys.stderr = sys.stderr, stderr
    try:
        try:
            xml = stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            _say(stderr, f"imgsign: refusing to start {argv[0]}: cannot read the domain XML ({exc})")
            return InputError.exit_code
        return run(argv[0], xml, stderr)
    finally:
        sys.stderr = previous
