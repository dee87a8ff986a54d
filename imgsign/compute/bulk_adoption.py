"""Adopting every base in ``_base`` at once (``imgsign boot adopt --all``).

Each file in ``$instances_path/_base`` is one of:

* not a base (``ephemeral_*``, ``swap_*``, a ``.part`` download or ``.converted`` conversion in
  progress, a lock, a directory, any name that is not ``sha1(image id)``): **skipped**;
* a base whose trust record is valid and which is sealed (:func:`~imgsign.compute.adoption.current_record`):
  **already sealed**, left alone (no properties needed: the record names the image);
* any other base: adopted with :func:`~imgsign.compute.adoption.adopt` and the properties of the
  image whose id hashes to its name: **adopted**, or **refused** with the error's reason and exit
  code.  A base for which no properties were given is refused (:class:`InputError`).

One refusal never stops the others.  :func:`exit_code`: 0 when nothing was refused; the refusals'
exit code when they all share one; else :class:`AdoptionIncomplete` (65).

The image properties come from ``openstack image show -f json`` outputs or from a mapping of image
id to properties (:func:`images_from_mapping`, :func:`images_from_show_outputs`: strict parsers of
untrusted JSON).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509

from imgsign.chain import TrustAnchors
from imgsign.compute import adoption, image_format
from imgsign.compute.image_cache import open_base_dir
from imgsign.compute.trust_record import RecordStore, TrustRecord, cache_name
from imgsign.errors import AdoptionIncomplete, ImgsignError, InputError, TrustRecordError
from imgsign.policy import Policy
from imgsign.properties import SignatureProperties, properties_from_document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from imgsign.compute.host_signed import Found

ADOPTED = "adopted"
ALREADY_SEALED = "already-sealed"
REFUSED = "refused"
SKIPPED = "skipped"
STATUSES = (ADOPTED, ALREADY_SEALED, REFUSED, SKIPPED)

_BASE_NAME = re.compile(r"[0-9a-f]{40}")
_MAX_ID = 255


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one file of ``_base``."""

    name: str
    status: str
    image_id: str | None = None
    #: skipped: what the file is; refused: the error message; adopted/already sealed: empty
    detail: str = ""
    reason: str | None = None
    exit_code: int = 0
    record: TrustRecord | None = None

    def describe(self) -> str:
        """One line: the status and why."""
        if self.status == REFUSED:
            return f"refused ({self.exit_code} {self.reason}): {self.detail}"
        if self.status == SKIPPED:
            return f"skipped: {self.detail}"
        label = self.status.replace("-", " ")
        if self.record is None or self.image_id is None:
            return label
        return f"{label} ({adoption.describe_adopted(self.image_id, self.record)})"

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"name": self.name, "status": self.status, "image_id": self.image_id}
        if self.status == SKIPPED:
            body["what"] = self.detail
        if self.status == REFUSED:
            body |= {"reason": self.reason, "exit_code": self.exit_code, "message": self.detail}
        if self.record is not None:
            body |= {"format": self.record.cached_format, "source_format": self.record.source_format}
        return body


def not_a_base(name: str, is_directory: bool) -> str | None:
    """What the ``_base`` entry ``name`` is when it is not a base Nova downloaded; None for a base."""
    if name.startswith("ephemeral_"):
        return "ephemeral disk made by Nova (mkfs), not an image"
    if name.startswith("swap_"):
        return "swap disk made by Nova (mkswap), not an image"
    if name.endswith(".part"):
        return "download in progress (.part)"
    if name.endswith(".converted"):
        return "conversion to raw in progress (.converted)"
    if "lock" in name:
        return "lock file"
    if is_directory:
        return "directory"
    if not _BASE_NAME.fullmatch(name):
        return "not a base file (its name is not sha1 of an image id)"
    return None


def adopt_all(
    instances_path: str,
    images: Mapping[str, Mapping[str, object]],
    certificate_for: Callable[[SignatureProperties], x509.Certificate],
    records: RecordStore,
    *,
    anchors: TrustAnchors | None = None,
    trusted_ids: Sequence[str] = (),
    certificate_ids_from_properties: bool = True,
    policy: Policy,
    report: Callable[[int, int, Outcome], None] | None = None,
    immutable: bool,
    tsa_roots: Sequence[x509.Certificate] = (),
    ocsp: str = "strict",
    ocsp_timeout: float = 10.0,
    facts_for: Callable[[Mapping[str, object]], Mapping[str, str] | None] | None = None,
    provenance_for: Callable[[str, Mapping[str, object], x509.Certificate], Found | None] | None = None,
) -> list[Outcome]:
    """Adopt every base of ``instances_path`` that has no valid trust record; one :class:`Outcome` per file.

    ``images``: image id -> its properties.  ``certificate_for``: the signing certificate of an
    image's ``img_signature*`` properties (e.g. from the key manager by its id; its errors refuse that
    base only).  ``certificate_ids_from_properties``: the certificate came from the key manager under
    ``img_signature_certificate_uuid`` (bound for the hook, as :func:`~imgsign.compute.adoption.adopt`
    does).  ``policy``, ``immutable``: the certificate checks and the seal (``--seal``) every base is
    checked and adopted under, no default.  Each base's lock is held while it is checked and adopted.
    ``tsa_roots``: the TSAs whose timestamp tokens count, ``ocsp``, ``ocsp_timeout``: how the stapled OCSP
    response and the responders count (as for :func:`~imgsign.compute.adoption.adopt`).
    ``facts_for(properties)``: the image facts to record for a trust policy (from `openstack image show`
    output); ``provenance_for(image_id, properties, certificate)``: a host-signed image's provenance
    (:func:`imgsign.compute.host_signed.fetch`; its errors refuse that base only).
    ``report(index, total, outcome)`` is called after each file.  An insecure state directory
    or an unreadable ``_base`` raises before any base is touched.
    """
    by_name = {cache_name(image_id): image_id for image_id in images}
    records.prepare()
    with open_base_dir(instances_path, create=False) as dir_fd:
        try:
            names = sorted(os.listdir(dir_fd))
        except OSError as exc:
            raise InputError(f"cannot list the image cache {instances_path}/_base: {exc.strerror}") from None
        entries = [(name, _is_directory(dir_fd, name)) for name in names]
    outcomes: list[Outcome] = []
    for index, (name, is_directory) in enumerate(entries, 1):
        what = not_a_base(name, is_directory)
        if what is not None:
            outcome = Outcome(name, SKIPPED, detail=what)
        else:
            outcome = _adopt_one(instances_path, name, by_name.get(name), images, certificate_for, records,
                                 anchors, trusted_ids, certificate_ids_from_properties, policy, immutable,
                                 tsa_roots, facts_for, provenance_for, {"ocsp": ocsp, "ocsp_timeout": ocsp_timeout})
        outcomes.append(outcome)
        if report is not None:
            report(index, len(entries), outcome)
    return outcomes


def _is_directory(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False  # vanished: adoption says so


def _adopt_one(instances_path: str, name: str, image_id: str | None, images: Mapping[str, Mapping[str, object]],
               certificate_for: Callable[[SignatureProperties], x509.Certificate], records: RecordStore,
               anchors: TrustAnchors | None, trusted_ids: Sequence[str], ids_from_properties: bool,
               policy: Policy, immutable: bool, tsa_roots: Sequence[x509.Certificate] = (),
               facts_for: Callable[[Mapping[str, object]], Mapping[str, str] | None] | None = None,
               provenance_for: Callable[[str, Mapping[str, object], x509.Certificate], Found | None] | None = None,
               revocation: Mapping[str, Any] | None = None) -> Outcome:
    try:
        with records.locks.hold(name):  # the check and the adoption, one run at a time
            if image_id is None:
                image_id = _recorded_image_id(records, name)
            if image_id is not None:
                existing = adoption.current_record(instances_path, image_id, records, immutable=immutable)
                if existing is not None:
                    return Outcome(name, ALREADY_SEALED, image_id, record=existing)
            if image_id is None or image_id not in images:
                raise InputError(f"no properties were given for base _base/{name} (no image id given hashes to "
                                 "its name)" if image_id is None else f"no properties were given for image {image_id}")
            properties = images[image_id]
            signed = adoption.signature_properties(image_id, properties)
            certificate = certificate_for(signed)
            record = adoption.adopt(instances_path, image_id, properties, certificate, records, anchors=anchors,
                                    trusted_ids=trusted_ids,
                                    certificate_id=signed.certificate_uuid if ids_from_properties else None,
                                    policy=policy, immutable=immutable, tsa_roots=tsa_roots,
                                    image_facts=facts_for(properties) if facts_for else None,
                                    provenance=provenance_for(image_id, properties, certificate)
                                    if provenance_for else None, **(revocation or {}))
    except ImgsignError as error:
        return Outcome(name, REFUSED, image_id, detail=error.message, reason=error.reason, exit_code=error.exit_code)
    return Outcome(name, ADOPTED, image_id, record=record)


def _recorded_image_id(records: RecordStore, name: str) -> str | None:
    """The image id an existing record of ``name`` names (None if none, or damaged: adopted afresh)."""
    try:
        record = records.get_by_name(name)
    except TrustRecordError:
        return None
    return None if record is None else record.image_id


def totals(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """How many files ended in each status."""
    counts = dict.fromkeys(STATUSES, 0)
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """0 if nothing was refused; the refusals' code if they share one; else AdoptionIncomplete's (65)."""
    codes = {outcome.exit_code for outcome in outcomes if outcome.status == REFUSED}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else AdoptionIncomplete.exit_code


# --- where the properties come from (untrusted JSON) ----------------------------------------------


def images_from_mapping(document: object, source: str) -> dict[str, Mapping[str, object]]:
    """A JSON object mapping image id -> that image's properties (or its ``openstack image show -f
    json`` output, which must then have the same ``id``).  :class:`InputError` or
    :class:`~imgsign.errors.PropertiesError` for anything else."""
    if not isinstance(document, Mapping):
        raise InputError(f"{source} must be a JSON object mapping image ids to their properties")
    images: dict[str, Mapping[str, object]] = {}
    for image_id, value in document.items():
        _add_image(images, image_id, value, f"{source}, image {str(image_id)[:80]!r}")
    return images


def images_from_show_outputs(documents: Iterable[tuple[str, object]]) -> dict[str, Mapping[str, object]]:
    """``(source, document)`` pairs, each one image's ``openstack image show -f json`` output (with its
    ``id``); an id given twice is an :class:`InputError`."""
    images: dict[str, Mapping[str, object]] = {}
    for source, document in documents:
        image_id = document.get("id") if isinstance(document, Mapping) else None
        if not isinstance(image_id, str):
            raise InputError(f"{source} is not `openstack image show -f json` output: it has no image \"id\"")
        _add_image(images, image_id, document, source)
    return images


def _add_image(images: dict[str, Mapping[str, object]], image_id: object, value: object, source: str) -> None:
    if not isinstance(image_id, str) or not image_id or len(image_id) > _MAX_ID or not image_id.isprintable():
        raise InputError(f"{source}: an image id must be 1-{_MAX_ID} printable characters")
    cache_name(image_id)  # an id without a UTF-8 form is an InputError
    if not isinstance(value, Mapping):
        raise InputError(f"{source}: the properties must be a JSON object, not {type(value).__name__}")
    shown = value.get("id")
    if shown is not None and shown != image_id:
        raise InputError(f"{source}: the document is image {str(shown)[:80]!r}, not {image_id!r}")
    if image_id in images:
        raise InputError(f"{source}: image {image_id} is given twice")
    properties = dict(image_format.with_disk_format(value, properties_from_document(value)))
    # `openstack image show` output: its owner and visibility (beside the properties) are facts a trust
    # policy selects on; Glance reserves both names, so no property can carry them.
    for fact in ("owner", "visibility"):
        if isinstance(value.get(fact), str) and fact not in properties:
            properties[fact] = value[fact]
    images[image_id] = properties
