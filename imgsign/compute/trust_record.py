"""Trust records: what a compute host verified when it downloaded an image.

When an image is verified on its way into Nova's image cache
(``$instances_path/_base/<sha1(image_id)>``), its record keeps everything the
pre-boot hook needs to check later boots offline, with no call to Glance or the
key manager:

* the four ``img_signature*`` properties and the signer's certificate (DER);
* the digest the signature was verified over (``signed_digest``), so every
  boot re-checks the signature itself in microseconds;
* the trusted certificate ids the signer's chain was validated against;
* the cached file as written: its format and SHA-256.  Nova converts qcow2 to
  raw (``force_raw_images``), so the cached file is not the signed bytes; the
  record binds "verified original -> converted file -> this digest".

Records are sealed JSON files (HMAC with a root-only key) under the state
directory; a damaged record is an error, never "trusted".
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
from typing import Any

from imgsign.compute.sealed import Damaged, SealedStore
from imgsign.errors import TrustRecordError
from imgsign.properties import SignatureProperties

VERSION = 1


def cache_name(image_id: str) -> str:
    """Nova's image-cache file name for an image: ``sha1(image_id)`` in hex."""
    return hashlib.sha1(image_id.encode()).hexdigest()  # noqa: S324 - Nova's naming, not security


@dataclasses.dataclass(frozen=True)
class TrustRecord:
    """One verified image in the cache."""

    image_id: str
    properties: SignatureProperties
    certificate_der: bytes
    signed_digest: bytes
    trusted_ids: tuple[str, ...]
    cached_format: str
    cached_sha256: bytes
    cached_size: int
    source_format: str
    recorded_at: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )

    def to_body(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "image_id": self.image_id,
            "properties": self.properties.as_dict(),
            "certificate_der": base64.b64encode(self.certificate_der).decode(),
            "signed_digest": self.signed_digest.hex(),
            "trusted_ids": list(self.trusted_ids),
            "cached_file": {"name": cache_name(self.image_id), "format": self.cached_format,
                            "sha256": self.cached_sha256.hex(), "size": self.cached_size},
            "source_format": self.source_format,
            "recorded_at": self.recorded_at,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TrustRecord:
        try:
            if body["version"] != VERSION:
                raise TrustRecordError(f"trust record version {body['version']} is not supported")
            cached = body["cached_file"]
            record = cls(
                image_id=str(body["image_id"]),
                properties=SignatureProperties.from_mapping(body["properties"]),
                certificate_der=base64.b64decode(body["certificate_der"], validate=True),
                signed_digest=bytes.fromhex(body["signed_digest"]),
                trusted_ids=tuple(str(i) for i in body["trusted_ids"]),
                cached_format=str(cached["format"]),
                cached_sha256=bytes.fromhex(cached["sha256"]),
                cached_size=int(cached["size"]),
                source_format=str(body["source_format"]),
                recorded_at=str(body["recorded_at"]),
            )
        except TrustRecordError:
            raise
        except Exception as exc:  # noqa: BLE001 - any malformed field
            raise TrustRecordError(f"trust record is malformed ({type(exc).__name__}: {exc})") from None
        if cached.get("name") != cache_name(record.image_id):
            raise TrustRecordError("trust record names another image's cache file")
        return record


class RecordStore:
    """Trust records under ``state_dir/records/``, one sealed file per image id."""

    def __init__(self, state_dir: str) -> None:
        self._sealed = SealedStore(state_dir, "records")
        self.state_dir = state_dir

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

    def remove(self, image_id: str) -> None:
        self._sealed.remove(cache_name(image_id))
