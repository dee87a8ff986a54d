"""What a compute host checked of a signer when it recorded an image, beyond its chain: the RFC 3161
timestamp and the OCSP answers (:mod:`imgsign.timestamp`, :mod:`imgsign.ocsp`).

Kept in the trust record (:class:`~imgsign.compute.trust_record.TrustRecord`'s ``checks``) so that the
boot hook decides offline: an image whose signer had already expired when it was recorded, and was
accepted on a timestamp, boots under a trust policy rule only when the rule's ``tsa`` stores hold one of
the TSA certificates the timestamp verified against (:func:`imgsign.compute.boot_policy.check_record`).
The OCSP answers say how revocation was checked then (a stapled response on an air-gapped host, or a
responder); the hook does not check revocation again.

Pure: made from what :func:`imgsign.compute.image_cache.judge_signer` found, parsed strictly from a
sealed record body (:class:`TypeError`/:class:`ValueError` for anything malformed: the record is then
damaged).
"""

from __future__ import annotations

import dataclasses
import datetime

#: ``typing.TYPE_CHECKING`` without importing typing (the boot hook imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The OCSP answer fields kept, per certificate on the path.
OCSP_KEYS = ("certificate", "status", "source", "this_update")
#: Most OCSP answers and TSA fingerprints a record keeps.
MAX_ITEMS = 32


@dataclasses.dataclass(frozen=True)
class TrustChecks:
    """``timestamp``: the genTime of the image's verified timestamp (None: none, or none checked);
    ``tsa_fingerprints``: SHA-256 fingerprints of the TSA certificates it verified against, each on its
    own; ``judged_at``: set when the signer had expired when the image was recorded and was judged at
    the timestamp instead; ``ocsp``: the OCSP answers used for the path (``certificate``, ``status``,
    ``source``, ``this_update``)."""

    timestamp: datetime.datetime | None = None
    tsa_fingerprints: tuple[str, ...] = ()
    judged_at: datetime.datetime | None = None
    ocsp: tuple[tuple[tuple[str, str], ...], ...] = ()

    @property
    def empty(self) -> bool:
        return self.timestamp is None and not self.ocsp

    def ocsp_dicts(self) -> list[dict[str, str]]:
        return [dict(answer) for answer in self.ocsp]

    def to_body(self) -> dict[str, Any]:
        return {"timestamp": _iso(self.timestamp), "tsa_fingerprints": list(self.tsa_fingerprints),
                "judged_at": _iso(self.judged_at), "ocsp": self.ocsp_dicts()}

    @classmethod
    def from_body(cls, body: Any) -> TrustChecks:
        """Parse :meth:`to_body`'s form; TypeError or ValueError when it is not exactly that."""
        if not isinstance(body, dict) or set(body) != {"timestamp", "tsa_fingerprints", "judged_at", "ocsp"}:
            raise TypeError("the recorded checks must be a mapping of timestamp, tsa_fingerprints, judged_at, ocsp")
        fingerprints = body["tsa_fingerprints"]
        answers = body["ocsp"]
        if not isinstance(fingerprints, list) or not isinstance(answers, list) \
                or len(fingerprints) > MAX_ITEMS or len(answers) > MAX_ITEMS:
            raise TypeError("the recorded tsa_fingerprints and ocsp must be short lists")
        for fingerprint in fingerprints:
            if not isinstance(fingerprint, str) or len(fingerprint) != 64 \
                    or bytes.fromhex(fingerprint).hex() != fingerprint:
                raise ValueError("a recorded TSA fingerprint is 64 lower-case hex digits")
        ocsp = []
        for answer in answers:
            if not isinstance(answer, dict) or set(answer) != set(OCSP_KEYS) \
                    or not all(isinstance(answer[k], str) for k in OCSP_KEYS):
                raise TypeError(f"a recorded OCSP answer must be a mapping of {', '.join(OCSP_KEYS)} to text")
            ocsp.append(tuple((k, answer[k]) for k in OCSP_KEYS))
        return cls(_moment(body["timestamp"]), tuple(fingerprints), _moment(body["judged_at"]), tuple(ocsp))


def made(timestamp: datetime.datetime | None, tsa_fingerprints: tuple[str, ...], judged_at: datetime.datetime | None,
         ocsp: list[dict[str, object]]) -> TrustChecks:
    """The checks to record (``ocsp``: :meth:`imgsign.trust_evidence.ImageEvidence.ocsp_dicts`' form)."""
    return TrustChecks(timestamp, tsa_fingerprints[:MAX_ITEMS], judged_at,
                       tuple(tuple((k, str(a.get(k))) for k in OCSP_KEYS) for a in ocsp[:MAX_ITEMS]))


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("a recorded moment is ISO 8601 text")
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a recorded moment carries its time zone")
    return moment
