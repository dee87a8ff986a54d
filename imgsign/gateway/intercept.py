"""What the gateway intercepts, decided from plain values: no I/O here.

* ``PUT /v2/images/{id}/file`` of a queued ``snapshot``/``backup`` image whose ``instance_uuid``
  names a domain defined on this host (running, paused, or shut off: shelve powers the instance off
  before its snapshot), owned by the image's project: staged, signed, imported.
* A location added to a snapshot or backup (Nova's RBD direct snapshot, a JSON-patch ``add`` of
  ``/locations/-`` or ``POST /v2/images/{id}/locations``): refused with 403, so that it is never
  stored unsigned.  Nova 34 does not fall back to uploading the file then: its snapshot fails
  (``ImageNotAuthorized``; doc/source/admin/compute-signing.md, "What remains").
* Everything else: passed through untouched.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping

IMAGE_TYPES = frozenset({"snapshot", "backup"})
_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_UPLOAD = re.compile(rf"/v2/images/({_ID})/file")
_IMAGE = re.compile(rf"/v2/images/({_ID})")
_LOCATIONS = re.compile(rf"/v2/images/({_ID})/locations")
#: Largest JSON-patch body read to look for a location (Nova's is a few hundred bytes).
MAX_PATCH = 64 * 1024


def upload_target(method: str, path: str) -> str | None:
    """The image id of a ``PUT /v2/images/{id}/file``; None for any other request."""
    match = _UPLOAD.fullmatch(path) if method == "PUT" else None
    return match.group(1) if match else None


def location_target(method: str, path: str) -> str | None:
    """The image id of a request that may add a location (PATCH of the image, POST of its locations)."""
    if method == "PATCH":
        match = _IMAGE.fullmatch(path)
    elif method == "POST":
        match = _LOCATIONS.fullmatch(path)
    else:
        return None
    return match.group(1) if match else None


def patch_adds_location(body: bytes) -> bool:
    """Does this JSON-patch body (``application/openstack-images-v2.1-json-patch``) add or replace a location?

    Unreadable bodies count as "yes": the caller only asks for snapshots and backups, which must not
    get locations, and Glance would refuse a body it cannot read anyway.
    """
    try:
        operations = json.loads(body)
    except (ValueError, RecursionError):
        return True
    if not isinstance(operations, list):
        return True
    for operation in operations:
        if not isinstance(operation, dict):
            return True
        path = operation.get("path")
        if not isinstance(path, str) or path == "/locations" or path.startswith("/locations/"):
            return True
    return False


class Verdict(enum.Enum):
    """What to do with an upload."""

    FORWARD = "pass"  # not an upload the gateway signs: forward it untouched
    SIGN = "sign"  # stage, sign, import
    REFUSE = "refuse"  # answer 403: it claims to be something it is not


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """What libvirt says about the instance a snapshot names."""

    uuid: str
    state: str  # virsh domstate: running, paused, shut off (a shelve powers the instance off first)...
    project_id: str | None  # <nova:owner><nova:project uuid=...>


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str


def is_candidate(image: Mapping[str, object]) -> bool:
    """Is this image one the gateway would sign: queued and made by Nova (snapshot or backup)?"""
    return image.get("status") == "queued" and image.get("image_type") in IMAGE_TYPES


def decide(image: Mapping[str, object], domain: DomainInfo | None, *, refuse_unmatched: bool) -> Decision:
    """The verdict for an upload to ``image`` (Glance's JSON), given what libvirt said about its instance.

    Not a queued snapshot or backup: pass.  A snapshot whose instance is not defined here (or names none):
    pass, or refuse under ``refuse_unmatched``.  Whose instance runs here for another project than the
    image's owner: refuse, always (never sign for a project the instance does not belong to).
    """
    if not is_candidate(image):
        return Decision(Verdict.FORWARD, "not a queued snapshot or backup")
    unmatched = Verdict.REFUSE if refuse_unmatched else Verdict.FORWARD
    instance = image.get("instance_uuid")
    if not isinstance(instance, str) or not instance:
        return Decision(unmatched, f"{image.get('image_type')} image names no instance_uuid")
    if domain is None:
        return Decision(unmatched, f"instance {instance} is not defined on this host")
    if domain.uuid != instance:
        return Decision(Verdict.REFUSE, f"libvirt answered for domain {domain.uuid}, not {instance}")
    owner = image.get("owner")
    if not isinstance(owner, str) or not owner or domain.project_id != owner:
        return Decision(Verdict.REFUSE, f"instance {instance} belongs to project {domain.project_id}, "
                                        f"not to the image's owner {owner}")
    return Decision(Verdict.SIGN, f"snapshot of instance {instance} of project {owner}")
