"""Trust records: what a compute host verified when it downloaded an image.

When an image is verified on its way into Nova's image cache
(``$instances_path/_base/<sha1(image_id)>``), its record keeps everything the
pre-boot hook needs to check later boots offline, with no call to Glance or the
key manager:

* the four ``img_signature*`` properties and the certificate that actually
  verified the signature (DER), with the key-manager id it was fetched under
  (None for a certificate given as a file);
* the digest the signature was verified over (``signed_digest``), so every
  boot re-checks the signature itself in microseconds;
* the SHA-256 fingerprints of the trusted certificates the signer's chain was
  validated against (trust is decided on certificates, never on ids: the hook
  maps its trusted ids to fingerprints through the sealed :class:`AnchorStore`);
* what was checked of the signer beyond its chain (``checks``, :mod:`imgsign.compute.trust_checks`):
  the RFC 3161 timestamp and the TSA certificates it verified against, and the OCSP answers used;
* for a host-signed image (``imgsign gateway``), what its provenance statement said and whether it
  verified (:class:`ProvenanceRecord`): the project, host and base image it names, the base's
  signing certificate and the fingerprints of the trusted certificates that certificate chained to
  when the snapshot was made, so that a trust policy's ``hostSigned`` rules decide offline too;
* the cached file as written: its format and SHA-256.
  Nova converts qcow2 to raw (``force_raw_images``), so the cached file is not
  the signed bytes; the record binds "verified original -> converted file ->
  this digest".

Records are sealed JSON files (HMAC with a root-only key) under the state
directory; a damaged record is an error, never "trusted".
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json

from imgsign.compute.base_lock import DEFAULT_LOCK_TIMEOUT, BaseLocks
from imgsign.compute.sealed import Damaged, SealedStore
from imgsign.compute.trust_checks import TrustChecks
from imgsign.errors import ImgsignError, InputError, TrustRecordError
from imgsign.properties import SignatureProperties

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: 2: the signer certificate is bound to the id it was fetched under, chains by anchor fingerprint.
VERSION = 2


def cache_name(image_id: str) -> str:
    """Nova's image-cache file name for an image: ``sha1(image_id)`` in hex (of its UTF-8 bytes, as Nova).

    An id that has no UTF-8 form (a lone surrogate from a JSON ``\\ud800`` escape or from an
    argument that is not UTF-8) names no image Nova could have: :class:`InputError`.
    """
    try:
        encoded = image_id.encode()
    except UnicodeEncodeError:
        raise InputError(f"image id {image_id[:80]!r} is not valid UTF-8: no Glance image has it") from None
    return hashlib.sha1(encoded).hexdigest()  # noqa: S324 - Nova's naming, not security


def fingerprint(certificate_der: bytes) -> str:
    """A certificate's SHA-256 fingerprint (hex of the DER)."""
    return hashlib.sha256(certificate_der).hexdigest()


#: Every compute host certificate's URI SAN (``openstack://<cloud>/nova-compute/<host>``,
#: :data:`imgsign.trust_policy.HOST_URI`) holds these bytes: a URI SAN is an IA5String, kept verbatim in the DER.
_HOST_URI_MARK = b"/nova-compute/"


def may_be_host_certificate(certificate_der: bytes) -> bool:
    """False when the certificate certainly has no compute host URI SAN (its DER lacks the bytes every such
    URI holds); True when it may have one, which only parsing it tells (:func:`imgsign.trust_policy.
    is_host_certificate`).  Lets a boot skip the X.509 stack for every other signer."""
    return _HOST_URI_MARK in certificate_der


@dataclasses.dataclass(frozen=True)
class ProvenanceRecord:
    """What adoption found of an image's provenance statement (:mod:`imgsign.provenance`).

    ``verified``: the statement verified with the signer's key and names this image and the digest
    ``img_signature`` signs; else ``error`` says why, and nothing else is kept.  ``project_id``,
    ``host``, ``base_image_id``, ``created_at``: what it states (``base_image_id`` None: no signed
    base).  ``base_certificate_der``: the base's signing certificate, read from the key manager by the
    id the statement names and checked to be the one it names by SHA-256 (None, with ``base_error``,
    when it was not); ``base_anchor_fingerprints``: the trusted certificates of the trust policy's
    ``baseTrustStores`` it chained to, each on its own, at ``created_at`` (empty, with ``base_error``,
    for none).  A boot decides on these by fingerprint, as on the signer's anchors.
    """

    verified: bool
    error: str | None = None
    project_id: str | None = None
    host: str | None = None
    base_image_id: str | None = None
    created_at: str | None = None
    base_certificate_der: bytes | None = None
    base_anchor_fingerprints: tuple[str, ...] = ()
    base_error: str | None = None

    KEYS = ("verified", "error", "project_id", "host", "base_image_id", "created_at", "base_certificate_der",
            "base_anchor_fingerprints", "base_error")

    def to_body(self) -> dict[str, Any]:
        return {
            "verified": self.verified, "error": self.error, "project_id": self.project_id, "host": self.host,
            "base_image_id": self.base_image_id, "created_at": self.created_at,
            "base_certificate_der": None if self.base_certificate_der is None
            else base64.b64encode(self.base_certificate_der).decode(),
            "base_anchor_fingerprints": list(self.base_anchor_fingerprints), "base_error": self.base_error,
        }

    @classmethod
    def from_body(cls, value: Any) -> ProvenanceRecord:
        """Parse (TypeError/ValueError for anything malformed: the caller makes it a TrustRecordError)."""
        if not isinstance(value, dict) or set(value) != set(cls.KEYS):
            raise TypeError(f"the provenance must be a mapping of exactly {', '.join(cls.KEYS)}")
        verified = value["verified"]
        if not isinstance(verified, bool):
            raise TypeError("the provenance's verified must be true or false")
        der = _optional(value["base_certificate_der"])
        record = cls(
            verified=verified, error=_optional(value["error"]), project_id=_optional(value["project_id"]),
            host=_optional(value["host"]), base_image_id=_optional(value["base_image_id"]),
            created_at=_optional(value["created_at"]),
            base_certificate_der=None if der is None else base64.b64decode(der, validate=True),
            base_anchor_fingerprints=tuple(_fingerprint(f) for f in _list(value["base_anchor_fingerprints"])),
            base_error=_optional(value["base_error"]),
        )
        if verified == (record.error is not None) or (verified and record.project_id is None):
            raise ValueError("a verified provenance states a project and has no error; an unverified one has an "
                             "error")
        if not verified and record != cls(False, record.error):
            raise ValueError("an unverified provenance keeps only its error")
        if record.base_image_id is None and (der is not None or record.base_anchor_fingerprints):
            raise ValueError("a provenance without a base image records no base certificate")
        if der is None and record.base_anchor_fingerprints:
            raise ValueError("base anchors without a base certificate")
        return record


@dataclasses.dataclass(frozen=True)
class TrustRecord:
    """One verified image in the cache."""

    image_id: str
    properties: SignatureProperties
    certificate_der: bytes
    signed_digest: bytes
    #: key-manager id ``certificate_der`` was fetched under; None for a certificate from a file
    certificate_id: str | None
    #: fingerprints of the trusted certificates the signer's chain was validated against
    anchor_fingerprints: tuple[str, ...]
    cached_format: str
    cached_sha256: bytes
    cached_size: int
    source_format: str
    recorded_at: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    #: What Glance said of the image when it was verified (owner, visibility, image_type: the facts a trust
    #: policy's scopes select on); None when the record was made without Glance's record (a file).
    image_facts: dict[str, str] | None = None
    #: The timestamp and OCSP answers checked when the record was made (:mod:`imgsign.compute.trust_checks`);
    #: None when there were none.
    checks: TrustChecks | None = None
    #: The image's provenance statement as adoption found it (a host-signed image); None: it carries none, or
    #: nothing on this host needed it (no ``hostSigned`` rule) when it was recorded.
    provenance: ProvenanceRecord | None = None

    def to_body(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "image_id": self.image_id,
            "properties": self.properties.as_dict(),
            "certificate_der": base64.b64encode(self.certificate_der).decode(),
            "signed_digest": self.signed_digest.hex(),
            "certificate_id": self.certificate_id,
            "anchor_fingerprints": list(self.anchor_fingerprints),
            "cached_file": {"name": cache_name(self.image_id), "format": self.cached_format,
                            "sha256": self.cached_sha256.hex(), "size": self.cached_size},
            "source_format": self.source_format,
            "recorded_at": self.recorded_at,
            **({} if self.image_facts is None else {"image": dict(self.image_facts)}),
            **({} if self.checks is None else {"checks": self.checks.to_body()}),
            **({} if self.provenance is None else {"provenance": self.provenance.to_body()}),
        }

    def digest(self) -> str:
        """SHA-256 (hex) of the record's canonical body: what a fast-path entry is bound to, so that an
        entry stands only for the very record whose signature was verified when the entry was written."""
        canonical = json.dumps(self.to_body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_body(cls, body: Any) -> TrustRecord:
        """Parse a record body; :class:`TrustRecordError` for anything but a valid current record."""
        try:
            version = body["version"]
            if version != VERSION:
                raise TrustRecordError(
                    f"trust record version {version!r} is not supported (this imgsign writes version {VERSION}; "
                    "older records do not bind the signer certificate to a trusted id): cache the image again "
                    "with `imgsign boot cache`")
            cached = body["cached_file"]
            record = cls(
                image_id=_text(body["image_id"]),
                properties=SignatureProperties.from_mapping(body["properties"]),
                certificate_der=base64.b64decode(_text(body["certificate_der"]), validate=True),
                signed_digest=bytes.fromhex(_text(body["signed_digest"])),
                certificate_id=None if body["certificate_id"] is None else _text(body["certificate_id"]),
                anchor_fingerprints=tuple(_fingerprint(f) for f in _list(body["anchor_fingerprints"])),
                cached_format=_text(cached["format"]),
                cached_sha256=bytes.fromhex(_text(cached["sha256"])),
                cached_size=_int(cached["size"]),
                source_format=_text(body["source_format"]),
                recorded_at=_text(body["recorded_at"]),
                image_facts=_facts(body.get("image")),
                checks=None if body.get("checks") is None else TrustChecks.from_body(body["checks"]),
                provenance=None if body.get("provenance") is None else ProvenanceRecord.from_body(body["provenance"]),
            )
            if cached["name"] != cache_name(record.image_id):
                raise TrustRecordError("trust record names another image's cache file")
            if len(record.signed_digest) != record.properties.hash_method.digest_size \
                    or len(record.cached_sha256) != hashlib.sha256().digest_size:
                raise TrustRecordError("trust record has a digest of the wrong length")
        except TrustRecordError:
            raise
        except Exception as exc:  # noqa: BLE001 - any malformed field
            raise TrustRecordError(f"trust record is malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
        return record


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


#: The image facts a record may keep.
FACT_KEYS = ("owner", "visibility", "image_type")


def _facts(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(FACT_KEYS):
        raise TypeError("the image facts must be a mapping of owner, visibility and image_type")
    return {key: _text(text) for key, text in value.items()}


def _optional(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r:.40}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _fingerprint(value: Any) -> str:
    text = _text(value)
    if len(text) != 64 or bytes.fromhex(text).hex() != text:
        raise ValueError("a fingerprint is 64 lower-case hex digits")
    return text


class AnchorStore:
    """Sealed ``trusted certificate id -> fingerprint`` bindings under ``state_dir/anchors/``.

    Written by ``boot cache`` for every certificate it fetched from the key manager by id (the
    trusted certificates and the signer's), read by the offline hook to turn its configured trusted
    ids into the certificates they name.  The latest fetch of an id wins.
    """

    def __init__(self, state_dir: str, *, owner: int | None = None) -> None:
        self._sealed = SealedStore(state_dir, "anchors", owner=owner)

    @staticmethod
    def _name(certificate_id: str) -> str:
        return hashlib.sha256(certificate_id.encode("utf-8", "surrogatepass")).hexdigest()

    def prepare(self) -> None:
        self._sealed.prepare()

    def bind(self, certificate_id: str, certificate_der: bytes) -> None:
        """Record that the key manager returned ``certificate_der`` for ``certificate_id``."""
        self._sealed.write(self._name(certificate_id), {"id": certificate_id,
                                                        "sha256": fingerprint(certificate_der)})

    def fingerprint(self, certificate_id: str) -> str | None:
        """The fingerprint bound to ``certificate_id``, None if imgsign never fetched it."""
        name = self._name(certificate_id)
        try:
            body = self._sealed.read(name)
        except Damaged as exc:
            raise TrustRecordError(f"trusted certificate binding of {certificate_id} is damaged: {exc}") from None
        if body is None:
            return None
        try:
            if body["id"] != certificate_id:
                raise ValueError
            return _fingerprint(body["sha256"])
        except (KeyError, TypeError, ValueError):
            raise TrustRecordError(f"trusted certificate binding of {certificate_id} is malformed") from None


class RecordStore:
    """Trust records under ``state_dir/records/``, one sealed file per image id, the trusted
    certificate bindings (:attr:`anchors`) and the per-base locks every run holds while it works on
    a base (:attr:`locks`, waiting at most ``lock_timeout`` seconds).  ``owner``: the uid that must
    own the state (default: the effective uid; root in production)."""

    def __init__(self, state_dir: str, *, owner: int | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self._sealed = SealedStore(state_dir, "records", owner=owner)
        self.state_dir = state_dir
        self.owner = self._sealed.owner
        self.anchors = AnchorStore(state_dir, owner=self.owner)
        self.locks = BaseLocks(state_dir, owner=self.owner, timeout=lock_timeout)

    def prepare(self) -> None:
        """Make sure the state directory, its key and subdirectories exist and are secure (or raise)."""
        self._sealed.prepare()
        self.anchors.prepare()

    def put(self, record: TrustRecord) -> None:
        self._sealed.write(cache_name(record.image_id), record.to_body())

    def get(self, image_id: str) -> TrustRecord | None:
        """The record, None if there is none; :class:`TrustRecordError` if it is damaged."""
        record = self.get_by_name(cache_name(image_id))
        if record is not None and record.image_id != image_id:
            raise TrustRecordError(f"trust record for {image_id} belongs to image {record.image_id}")
        return record

    def get_by_name(self, name: str) -> TrustRecord | None:
        """The record of the cache file called ``name`` (``sha1(image_id)``)."""
        try:
            body = self._sealed.read(name)
        except Damaged as exc:
            raise TrustRecordError(f"trust record of cache file {name} is damaged: {exc}") from None
        if body is None:
            return None
        record = TrustRecord.from_body(body)
        if cache_name(record.image_id) != name:
            raise TrustRecordError(f"trust record {name} belongs to image {record.image_id}")
        return record

    def recorded(self, name: str) -> bool:
        """Is there a record file for the cache file ``name`` (a damaged or insecure one counts)?"""
        try:
            return self._sealed.read(name) is not None
        except ImgsignError:
            return True

    def remove(self, image_id: str) -> None:
        self._sealed.remove(cache_name(image_id))
