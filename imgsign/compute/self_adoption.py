"""The boot hook adopts a base Nova downloaded by itself: once, from Glance and the key manager.

Nova downloads an image into ``_base/<sha1(image id)>`` without writing a trust record
(``fetch_to_raw``).  When the hook meets such a base for an image the domain XML names (Nova's
``<nova:root type="image" uuid=...>``; its metadata names no kernel or ramdisk id, so those are the
``kernel_id``/``ramdisk_id`` Glance names for that image), it gets the
image's properties from Glance (``GET /v2/images/{id}``) and the signing certificate (and the
trusted certificates of ``[boot] trusted_certificate_ids``, with the stored CRLs) from the key
manager, and hands them to :func:`imgsign.compute.adoption.adopt`, which verifies the base and
writes its record; every later boot is the usual offline check, with no network call.

Configuration (``boot.conf``, the hook's own file, read with oslo.config as Nova reads ``nova.conf``;
options: :mod:`imgsign.compute.boot_config`):

* ``[glance]``: keystoneauth options (``keystoneauth1.loading``: ``auth_type`` and the plugin's
  options, session ``cafile``/``insecure``/``timeout``..., adapter ``endpoint_override``,
  ``valid_interfaces``, ``region_name``);
* ``[key_manager]``, ``[barbican]``, ``[vault]``, ``[imgsign_embedded]``, ``[imgsign]``: the key
  manager as castellan (and ``imgsign.conf``) configure it;
* ``[boot] adopt``: ``true``/``false``; default: on when ``[glance] auth_type`` is set;
* ``[boot] adopt_timeout``: seconds (default 10) for all network calls of one hook run together;
  also the per-request timeout unless ``[glance] timeout`` sets one;
* ``[boot] adopt_by_conversion``: ``true``/``false`` (default false): a base Nova converted from a
  qcow2 without raw-digest statement is adopted by downloading the qcow2 from Glance and converting
  it again (:mod:`imgsign.compute.conversion_adoption`); ``adopt_conversion_max_size``: bytes the
  image may have (default 20 GiB; Glance's ``size`` and the bytes streamed); ``adopt_conversion_timeout``:
  seconds (default 600) for that download and conversion, on top of ``adopt_timeout``.

Failures: Glance (or Keystone) unreachable, too slow or refusing is
:class:`~imgsign.errors.GlanceUnavailable`, an unknown image
:class:`~imgsign.errors.ImageNotFound`, the key manager
:class:`~imgsign.errors.KeyManagerError`; a base Nova converted (the Glance image is not raw,
the base is) without a raw-digest statement is refused
(:class:`~imgsign.errors.RawStatementError`) unless ``adopt_by_conversion`` is on and Glance holds
a qcow2.  The network calls for the image record and certificates run on a daemon thread the hook
stops waiting for at the deadline; it only fetches, everything that touches the base or the state
directory runs after it, on the hook's own thread.  The download of adoption by conversion runs on
the hook's thread, in the sealed-base step.

Deadlines are on the clock, not per read (:mod:`imgsign._internal.netlimits`): every network
call of one hook run (Keystone, Glance's records, the key manager) runs under one
``adopt_timeout`` deadline that bounds connecting, every read and every body as a whole, and
all downloads and conversions of adoption by conversion of the run under one
``adopt_conversion_timeout`` deadline; a peer that trickles, stalls or never answers is cut off
at the deadline (:class:`~imgsign.errors.GlanceUnavailable` or
:class:`~imgsign.errors.KeyManagerError`).  So the hook decides within ``adopt_timeout +
adopt_conversion_timeout`` seconds plus its local work, whatever the services do.  Every answer
is capped (4 MiB for a record, a token or a secret; the image data at
``adopt_conversion_max_size`` and its announced size, streamed to disk, never held in memory).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from imgsign._internal import netlimits
from imgsign._internal.deadline import Deadline
from imgsign.compute import boot_config, qemu_img
from imgsign.compute.boot import BootDecision, Mode
from imgsign.compute.trust_record import RecordStore, TrustRecord, cache_name
from imgsign.errors import (
    GlanceUnavailable,
    ImgsignError,
    InputError,
    KeyManagerError,
    RawStatementError,
    TrustRecordError,
)

if TYPE_CHECKING:
    from cryptography import x509
    from oslo_config import cfg

    from imgsign.chain import TrustAnchors
    from imgsign.compute.conversion_adoption import Original
    from imgsign.compute.host_signed import Found
    from imgsign.policy import Policy
    from imgsign.trust_policy import TrustPolicy

#: Seconds for all of one hook run's network calls together (Glance, Keystone, key manager).
DEFAULT_TIMEOUT = boot_config.DEFAULT_ADOPT_TIMEOUT
#: Seconds for the download and conversion of one adoption by conversion.
DEFAULT_CONVERSION_TIMEOUT = boot_config.DEFAULT_CONVERSION_TIMEOUT
GLANCE_GROUP = boot_config.GLANCE_GROUP
#: Glance properties naming more images Nova downloads into ``_base`` for an instance.
AUXILIARY_IMAGES = ("kernel_id", "ramdisk_id")
#: The qcow2 magic (a base that starts with it is the downloaded qcow2 itself, not a conversion).
_QCOW2_MAGIC = b"QFI\xfb"
T = TypeVar("T")
#: (file, image id, decision): one line of the hook's log.
Result = tuple[str, "str | None", BootDecision]


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """``[boot] adopt_by_conversion``, ``adopt_conversion_max_size`` and ``adopt_conversion_timeout``."""

    enabled: bool = False
    max_size: int = 20 * 1024 ** 3
    timeout: float = DEFAULT_CONVERSION_TIMEOUT


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What one adoption needs from the network."""

    image: dict[str, Any]
    certificate: x509.Certificate
    anchors: TrustAnchors | None
    #: A host-signed image's provenance, checked for the trust policy's ``hostSigned`` rules
    #: (:mod:`imgsign.compute.host_signed`); None: no such rule, or no statement.
    provenance: Found | None = None
    #: The trust policy's TSA certificates named by key-manager id: (id, certificate).
    tsa: tuple[tuple[str, x509.Certificate], ...] = ()


class SelfAdopter:
    """Adopts the unrecorded bases of one hook run (see the module docstring).

    ``config_path`` is the hook's ``boot.conf``; nothing is read from it, and nothing imported
    for the network, until a base actually lacks a record.
    """

    def __init__(self, config_path: str | None, instances_path: str, records: RecordStore, mode: Mode,
                 trusted_ids: tuple[str, ...], *, policy: Policy, immutable: bool, trust: TrustPolicy | None = None,
                 trust_dir: str = "/") -> None:
        self.config_path = config_path
        #: Under a trust policy (``[boot] policy_file``) the chain is validated against every CA store of it
        #: (its key-manager ids, then its files), so the record names each trusted certificate it reaches.
        self.trust = trust
        self.trust_dir = trust_dir
        if trust is not None:
            trusted_ids = tuple(dict.fromkeys(i for r in trust.rules for s in r.ca_stores for i in s.key_manager_ids))
        self.policy = policy
        self.immutable = immutable
        self.base_dir = os.path.join(os.path.normpath(instances_path), qemu_img.CACHE)
        self.instances_path = instances_path
        self.records = records
        self.mode = mode
        self.trusted_ids = trusted_ids
        self._settings: _Settings | None = None
        #: One for all of this run's fetches ([boot] adopt_timeout), one for all its conversions.
        self._deadline: Deadline | None = None
        self._conversion_deadline: Deadline | None = None

    def adopt(self, path: str, image_id: str | None) -> tuple[list[Result], list[tuple[str, str]]]:
        """Adopt ``path`` (a layer of a disk) if it is ``_base/<sha1(image_id)>`` and has no record.

        Returns what to log: nothing when there is nothing to adopt (or adoption is off), an
        ``adopted`` line, or the reason adoption failed (a refusal under ``enforce``, a warning
        under ``warn``); the hook's own check of the base follows in every case.  And, when the
        image is adopted, the (image id, role) of the ``kernel_id`` and ``ramdisk_id`` Glance names
        for it, for :meth:`adopt_auxiliary` (Nova downloads them with the image; its metadata does
        not name them, the hook checks ``<os><kernel>``/``<initrd>`` as copies of verified bases).
        The caller holds the base's lock (and none other: each auxiliary image takes its own after).
        """
        if image_id is None or os.path.normpath(path) != self._base_of(image_id):
            return [], []
        results, image = self._adopt_image(image_id)
        auxiliaries = []
        for key in AUXILIARY_IMAGES:
            auxiliary = image.get(key) if image is not None else None
            if isinstance(auxiliary, str) and auxiliary and auxiliary != image_id:
                auxiliaries.append((auxiliary, f"{key} of image {image_id}"))
        return results, auxiliaries

    def adopt_auxiliary(self, image_id: str, role: str) -> list[Result]:
        """Adopt the unrecorded base of a kernel or ramdisk image (``role``), under its own lock."""
        try:
            with self.records.locks.hold(cache_name(image_id)):
                return self._adopt_image(image_id, role)[0]
        except ImgsignError as exc:  # the lock: busy, or its directory insecure
            message = f"cannot adopt the base Nova downloaded for image {image_id} ({role}): {exc.message}"
            return [(self._base_of(image_id), image_id,
                     BootDecision(self.mode is Mode.WARN, exc.exit_code, exc.reason, message))]

    def _base_of(self, image_id: str) -> str:
        return os.path.join(self.base_dir, cache_name(image_id))

    def _adopt_image(self, image_id: str, role: str = "") -> tuple[list[Result], dict[str, Any] | None]:
        """Adopt the image's base if it has none; (what to log, Glance's record of the image if adopted)."""
        path = self._base_of(image_id)
        try:
            if self.records.get(image_id) is not None or not os.path.isfile(path):
                return [], None
        except (TrustRecordError, OSError):
            return [], None  # a damaged record is the boot check's refusal, not a reason to adopt again
        what = f"image {image_id}" + (f" ({role})" if role else "")
        try:
            settings = self.settings()
            if not settings.enabled:
                return [], None
            fetched = self._within_deadline(
                settings, lambda stage, deadline: _fetch(settings, image_id, self.trusted_ids, stage, deadline,
                                                         self._trusted_files(), self._host_signed, self._tsa_ids()))
            record = self._adopt(image_id, fetched)
        except ImgsignError as exc:
            message = f"cannot adopt the base Nova downloaded for {what}: {exc.message}"
            return [(path, image_id, BootDecision(self.mode is Mode.WARN, exc.exit_code, exc.reason, message))], None
        converted = f", converted from {record.source_format}" if record.source_format != record.cached_format else ""
        return [(path, image_id, BootDecision(True, 0, "adopted",
                                              f"adopted the base Nova downloaded for {what} "
                                              f"({record.cached_format}{converted}; properties from Glance)"))], \
            fetched.image

    def _host_signed(self, image: dict[str, Any], certificate: x509.Certificate, store: Any) -> Found | None:
        """The provenance of a host-signed image for the trust policy's ``hostSigned`` rules (online)."""
        if self.trust is None:
            return None
        from imgsign.compute import host_signed

        return host_signed.fetch(str(image["id"]), image, certificate, store, self.trust, self.trust_dir, self.policy)

    def _trusted_files(self) -> tuple[x509.Certificate, ...]:
        """The certificates of the trust policy's CA stores given as files."""
        if self.trust is None:
            return ()
        from imgsign.certificates import load_certificates
        from imgsign.compute.boot_policy import read_root_file

        files = dict.fromkeys(f for r in self.trust.rules for s in r.ca_stores for f in s.certificate_files)
        return tuple(c for f in files for c in load_certificates(
            read_root_file(os.path.join(self.trust_dir, f), "trusted certificates")))

    def _tsa_ids(self) -> tuple[str, ...]:
        """The key-manager ids of the trust policy's ``tsa`` stores."""
        if self.trust is None:
            return ()
        return tuple(dict.fromkeys(i for r in self.trust.rules for s in r.tsa_stores for i in s.key_manager_ids))

    def settings(self) -> _Settings:
        if self._settings is None:
            self._settings = _Settings.load(self.config_path)
        return self._settings

    def bind_certificates(self, certificate_ids: tuple[str, ...]) -> list[ImgsignError]:
        """Fetch each id's certificate from the key manager and bind it (id -> fingerprint), as adoption
        binds the trusted ids it fetches (a server's own trusted certificate ids the host never fetched);
        nothing when adoption is off.  Returns the failures (one per id), under ``adopt_timeout``."""
        from cryptography.hazmat.primitives.serialization import Encoding

        settings = self.settings()
        if not settings.enabled or not certificate_ids:
            return []

        def work(stage: list[str], deadline: Deadline) -> list[tuple[str, x509.Certificate | ImgsignError]]:
            from imgsign.keymanager import config as km_config
            from imgsign.keymanager.anchors import fetch_certificate

            stage[0] = "key manager"
            fetched: list[tuple[str, x509.Certificate | ImgsignError]] = []
            with netlimits.limited(deadline, KeyManagerError, "the key manager"):
                store = km_config.open_store(settings.options)
                for certificate_id in certificate_ids:
                    try:
                        fetched.append((certificate_id, fetch_certificate(store, certificate_id)))
                    except ImgsignError as exc:
                        fetched.append((certificate_id, exc))
            return fetched

        failures = []
        for certificate_id, outcome in self._within_deadline(settings, work):
            if isinstance(outcome, ImgsignError):
                failures.append(outcome)
            else:
                self.records.anchors.bind(certificate_id, outcome.public_bytes(Encoding.DER))
        return failures

    def _within_deadline(self, settings: _Settings, work: Callable[[list[str], Deadline], T]) -> T:
        """Run ``work`` on a daemon thread under this run's deadline (one budget for all images); the
        thread's sockets are cut at the deadline, and the hook stops waiting for it then in any case."""
        if self._deadline is None:
            self._deadline = Deadline(settings.timeout, "[boot] adopt_timeout")
        deadline = self._deadline
        stage = ["glance"]
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, work(stage, deadline)))
            except BaseException as exc:  # noqa: BLE001 - handed to the hook's thread as it is
                outcome.append((False, exc))

        thread = threading.Thread(target=run, name="imgsign-adopt-fetch", daemon=True)
        thread.start()
        thread.join(deadline.remaining())
        if not outcome:
            what = ("Glance (or Keystone) did not answer" if stage[0] == "glance" else
                    "the key manager did not answer")
            error = GlanceUnavailable if stage[0] == "glance" else KeyManagerError
            raise error(f"{what} within {settings.timeout:g} s ([boot] adopt_timeout)")
        ok, value = outcome[0]
        if not ok:
            raise value
        result: T = value
        return result

    def _adopt(self, image_id: str, fetched: Fetched) -> TrustRecord:
        from imgsign.compute import adoption

        original = None
        if _converted_without_statement(self._base_of(image_id), image_id, fetched.image):
            original = self._original(image_id, fetched.image)
        signed = adoption.signature_properties(image_id, fetched.image)
        from imgsign.compute.boot_policy import facts_of

        record = adoption.adopt(self.instances_path, image_id, fetched.image, fetched.certificate, self.records,
                                anchors=fetched.anchors, trusted_ids=self.trusted_ids,
                                certificate_id=signed.certificate_uuid, policy=self.policy, immutable=self.immutable,
                                original=original, tsa_roots=self._tsa_roots(fetched),
                                image_facts=facts_of(fetched.image), provenance=fetched.provenance, **self._ocsp())
        if record.checks is not None and record.checks.tsa_fingerprints:
            from cryptography.hazmat.primitives.serialization import Encoding

            for tsa_id, tsa_certificate in fetched.tsa:  # the boot check maps the rule's ids to these
                self.records.anchors.bind(tsa_id, tsa_certificate.public_bytes(Encoding.DER))
        return record

    def _tsa_roots(self, fetched: Fetched) -> list[x509.Certificate]:
        """The TSAs whose timestamps count (none: tokens are not checked): under a trust policy every rule's
        ``tsa`` stores (the boot check then asks which rule's hold the one the token verified against);
        else ``[imgsign] tsa_ca_file`` of boot.conf, the built-in policy's TSA store."""
        from imgsign.certificates import load_certificates

        if self.trust is not None:
            from imgsign.compute.boot_policy import read_root_file

            files = dict.fromkeys(f for r in self.trust.rules for s in r.tsa_stores for f in s.certificate_files)
            return [*(c for f in files for c in load_certificates(
                read_root_file(os.path.join(self.trust_dir, f), "TSA certificates"))), *(c for _, c in fetched.tsa)]
        settings = self._settings
        path = settings.options.imgsign.tsa_ca_file if settings is not None and settings.enabled else None
        if not path:
            return []
        from imgsign._internal.files import read_small_file

        return load_certificates(read_small_file(path, "TSA certificates ([imgsign] tsa_ca_file)"))

    def _ocsp(self) -> dict[str, Any]:
        """``[imgsign] ocsp`` of boot.conf (strict, offline, off): the image's stapled response first, so an
        air-gapped host checks revocation with no network (``offline`` never uses it); an exchange with a
        responder is bounded by ``ocsp_timeout`` and by what is left of ``[boot] adopt_timeout``."""
        options = self.settings().options.imgsign
        left = self._deadline.remaining() if self._deadline is not None else options.ocsp_timeout
        return {"ocsp": options.ocsp, "ocsp_timeout": max(0.1, min(options.ocsp_timeout, left))}

    def _original(self, image_id: str, image: Mapping[str, Any]) -> Original:
        """The image's data from Glance for adoption by conversion (streamed only when adoption reads it);
        :class:`RawStatementError` when that is off or Glance's image is not a qcow2."""
        from imgsign.compute.conversion_adoption import Original

        settings = self.settings()
        options = settings.conversion
        disk_format = image.get("disk_format")
        if not options.enabled or disk_format != "qcow2":
            raise RawStatementError(
                f"Nova converted image {image_id} ({disk_format} in Glance) to raw, and the image has no raw-digest "
                "statement (imgsign_raw_v1_* properties) saying what it converts to: sign it with `imgsign sign` "
                "(qcow2), or cache it with `imgsign boot cache`" + (
                    "; the hook downloads and converts such an image only with [boot] adopt_by_conversion = true"
                    if not options.enabled else "; only a qcow2 is adopted by conversion"))
        size = image.get("size")
        if self._conversion_deadline is None:
            self._conversion_deadline = Deadline(options.timeout, "[boot] adopt_conversion_timeout")
        deadline = self._conversion_deadline
        return Original(_until(deadline, image_id, settings.glance().iter_data(image_id, deadline=deadline)),
                        max_size=options.max_size, deadline=deadline.at,
                        announced_size=size if isinstance(size, int) and not isinstance(size, bool) else None)


def _until(deadline: Deadline, image_id: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` until ``deadline`` (the stream itself is cut there too); :class:`GlanceUnavailable`
    (and the download closed) after it."""
    try:
        for chunk in chunks:
            if deadline.expired:
                raise GlanceUnavailable(f"the download of image {image_id} from Glance did not end "
                                        f"{deadline.describe()}")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _converted_without_statement(path: str, image_id: str, image: Mapping[str, Any]) -> bool:
    """Is ``path`` Nova's raw conversion of an image Glance holds in another format, without a
    raw-digest statement?  (Only the base's first bytes are read.)"""
    from imgsign.raw_statement import parse_raw_statement

    disk_format = image.get("disk_format")
    if disk_format in (None, "raw") or parse_raw_statement(image) is not None:
        return False
    try:  # as adoption opens it: never through a link, never blocking on a FIFO Nova's user put there
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"base file {path} of image {image_id} is not a regular file")
            head = os.pread(fd, len(_QCOW2_MAGIC), 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise InputError(f"cannot read base file {path} of image {image_id}: {exc.strerror}") from None
    return not (disk_format == "qcow2" and head == _QCOW2_MAGIC)  # else force_raw_images = False: the qcow2 itself


def _fetch(settings: _Settings, image_id: str, trusted_ids: tuple[str, ...], stage: list[str],
           deadline: Deadline, trusted_files: tuple[x509.Certificate, ...] = (),
           provenance: Callable[[dict[str, Any], x509.Certificate, Any], Found | None] | None = None,
           tsa_ids: tuple[str, ...] = ()) -> Fetched:
    """Glance's record of the image, then the signing and trusted certificates (``stage`` says where we are),
    each service as one network phase under ``deadline``; ``provenance(image, certificate, key manager)``: what
    a host-signed image's statement needs from the key manager, in that phase."""
    from imgsign.compute.adoption import signature_properties
    from imgsign.keymanager import config as km_config
    from imgsign.keymanager.anchors import fetch_certificate, fetch_trust_anchors

    with netlimits.limited(deadline, GlanceUnavailable, "Glance (or Keystone)"):
        image = settings.glance().get_image(image_id, deadline)
    if image.get("id") != image_id:
        raise GlanceUnavailable(f"Glance answered the request for image {image_id} with image {image.get('id')!r}")
    signed = signature_properties(image_id, image)  # unsigned: refused before the key manager is asked
    stage[0] = "key manager"
    conf = settings.options
    with netlimits.limited(deadline, KeyManagerError, "the key manager"):
        store = km_config.open_store(conf)
        certificate = fetch_certificate(store, signed.certificate_uuid)
        anchors = None
        if trusted_ids or trusted_files:
            anchors = fetch_trust_anchors(store, trusted_ids, trusted=trusted_files,
                                          require_crls=conf.imgsign.require_crls,
                                          max_depth=conf.imgsign.max_chain_depth)
        found = provenance(image, certificate, store) if provenance is not None else None
        tsa = tuple((i, fetch_certificate(store, i)) for i in tsa_ids) if any(
            name.startswith("imgsign_tst_v1") for name in image) else ()
    return Fetched(image, certificate, anchors, found, tsa)


@dataclasses.dataclass
class _Settings:
    """boot.conf as self-adoption reads it (``conf`` is None when adoption is off)."""

    conf: cfg.ConfigOpts | None
    timeout: float
    conversion: ConversionOptions = ConversionOptions()

    @property
    def enabled(self) -> bool:
        return self.conf is not None

    @property
    def options(self) -> cfg.ConfigOpts:
        """The parsed configuration (adoption is on)."""
        if self.conf is None:
            raise InputError("self-adoption is off in the hook's configuration")
        return self.conf

    @classmethod
    def load(cls, path: str | None) -> _Settings:
        """Off (without loading oslo.config, keystoneauth or castellan) unless ``[boot] adopt`` is true,
        or not set and ``[glance] auth_type`` is."""
        if path is None:  # a HookConfig made in code, not read from a file
            return cls(None, DEFAULT_TIMEOUT)
        boot = boot_config.load(path)  # checked in full, or its validated snapshot
        if not boot.adopt:
            return cls(None, boot.adopt_timeout)
        conversion = ConversionOptions(boot.adopt_by_conversion, boot.adopt_conversion_max_size,
                                       boot.adopt_conversion_timeout)
        return cls(boot_config.load_options(path), boot.adopt_timeout, conversion)

    def glance(self) -> Any:
        """A Glance client with the ``[glance]`` credentials, every request limited to the timeout."""
        from keystoneauth1 import exceptions as ks_errors
        from keystoneauth1 import loading as ks_loading
        from oslo_config import cfg

        from imgsign._internal.glance_api import GlanceClient
        from imgsign.keymanager import config as km_config

        conf = self.options
        group = conf[GLANCE_GROUP]
        try:
            timeout = float(group.timeout) if group.timeout else self.timeout
            auth = ks_loading.load_auth_from_conf_options(conf, GLANCE_GROUP)
            session = ks_loading.load_session_from_conf_options(conf, GLANCE_GROUP, auth=auth, timeout=timeout)
            interfaces = group.valid_interfaces
        except (ks_errors.ClientException, ValueError, cfg.Error) as exc:  # e.g. a "$" oslo cannot substitute
            raise GlanceUnavailable(f"the [glance] settings of the hook's configuration are not usable: "
                                    f"{km_config.describe_error(exc)}") from None
        return GlanceClient(session, endpoint_override=group.endpoint_override,
                            interface=interfaces[0] if interfaces else None, region_name=group.region_name,
                            timeout=(timeout, timeout))
