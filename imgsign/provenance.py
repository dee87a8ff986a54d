"""The provenance of a host-signed image: an in-toto Statement v1 in a DSSE envelope. Pure: no I/O.

``imgsign gateway`` makes it (:mod:`imgsign.gateway`); verifiers check it for a trust policy's
``hostSigned`` rules (:mod:`imgsign.trust_evidence`).  The statement says which image (its id and
digest), made from which base image (its id, the SHA-256 of its decoded ``img_signature``, the
key-manager id of its signing certificate and that certificate's SHA-256), by which instance of which
project, on which host, when::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<image id>", "digest": {"sha256": "<hex>"}}],
     "predicateType": "urn:imgsign:compute-image-provenance:v1",
     "predicate": {"baseImage": {"id": ..., "signatureSha256": ..., "certificateId": ...,
                                 "certificateSha256": ...} | null,
                   "instanceUuid": ..., "projectId": ..., "host": ..., "createdAt": "2026-12-06T03:00:00Z"}}

The digest set holds exactly one digest, named after ``img_signature_hash_method`` as the in-toto
DigestSet specification names them (``sha224``, ``sha256``, ``sha384``, ``sha512``; ``sha224`` is one
of its predefined names).  ``baseImage`` is null when the instance did not boot from a signed image.

The envelope is DSSE v1 (payloadType ``application/vnd.in-toto+json``), with one signature made by the
key that made ``img_signature``, with its key type and hash method, over the DSSE pre-authentication
encoding (PAE); its ``keyid`` is the lower-case hex SHA-256 of the signing certificate (DER).  It is
stored, compact JSON, in the chunked properties ``imgsign_provenance_v1_*``
(:mod:`imgsign._internal.chunked`).

The key signs ``H(PAE)`` as DSSE requires, which is also what an ``img_signature`` over an "image"
made of the PAE bytes would be: the gateway refuses to sign image data that starts with the PAE
header (:func:`refuse_envelope_lookalike`), so a tenant's disk cannot be made into a provenance
signature.  Conversely a provenance signature is useless as an ``img_signature``: its "image" would be
PAE bytes, and no statement ever names that image's digest as its subject.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
from collections.abc import Mapping

from imgsign._internal.chunked import join_value, split_value
from imgsign.algorithms import HashMethod
from imgsign.errors import ImgsignError, InvalidSignature, KeyTypeMismatch, PropertiesError, ProvenanceError
from imgsign.keys import PrivateKey, PublicKey
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import SignatureProperties

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:imgsign:compute-image-provenance:v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREFIX = "imgsign_provenance_v1_"
PAE_HEADER = b"DSSEv1 "

#: in-toto DigestSet names of the four OpenStack hash methods.
DIGEST_NAMES: dict[HashMethod, str] = {
    HashMethod.SHA224: "sha224",
    HashMethod.SHA256: "sha256",
    HashMethod.SHA384: "sha384",
    HashMethod.SHA512: "sha512",
}
_BY_DIGEST_NAME = {name: method for method, name in DIGEST_NAMES.items()}

#: Largest envelope read (what the chunked properties can hold); the statement is far smaller.
MAX_ENVELOPE = 16 * 1024

#: Glance image ids, Nova instance uuids and Keystone project ids: short, printable, no separators.
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A compute host's name as Nova knows it (``[DEFAULT] host``).
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_HEX = re.compile(r"[0-9a-f]+")
#: A key-manager id (Barbican's uuids, the embedded store's, a Vault path): printable ASCII, no spaces.
_KEY_MANAGER_ID = re.compile(r"[\x21-\x7e]{1,255}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclasses.dataclass(frozen=True)
class BaseImage:
    """The image the instance booted from, as it was trusted when the snapshot was made."""

    image_id: str
    signature_sha256: bytes  # SHA-256 of the base's decoded img_signature
    certificate_sha256: bytes  # SHA-256 (DER) of the certificate that signed the base
    certificate_id: str  # the base's img_signature_certificate_uuid (a key-manager id)


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a host states about an image it signed."""

    image_id: str
    hash_method: HashMethod
    image_digest: bytes
    base: BaseImage | None
    instance_uuid: str
    project_id: str
    host: str
    created_at: datetime.datetime  # aware, UTC, whole seconds

    def __post_init__(self) -> None:
        _check_identifier("image id", self.image_id)
        _check_identifier("instance uuid", self.instance_uuid)
        _check_identifier("project id", self.project_id)
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host):
            raise ValueError(f"host name {str(self.host)[:80]!r} is not a host name")
        if len(self.image_digest) != self.hash_method.digest_size:
            raise ValueError(f"a {self.hash_method.value} digest is {self.hash_method.digest_size} bytes")
        if self.base is not None:
            _check_identifier("base image id", self.base.image_id)
            if len(self.base.signature_sha256) != 32 or len(self.base.certificate_sha256) != 32:
                raise ValueError("the base image's signature and certificate digests are SHA-256 (32 bytes)")
            if not isinstance(self.base.certificate_id, str) or not _KEY_MANAGER_ID.fullmatch(self.base.certificate_id):
                raise ValueError(f"base certificate id {str(self.base.certificate_id)[:80]!r} is not a key-manager id")
        when = self.created_at
        if when.tzinfo is None or when.utcoffset() != datetime.timedelta(0) or when.microsecond:
            raise ValueError("created_at must be an aware UTC time in whole seconds")

    def statement(self) -> dict[str, object]:
        """The in-toto Statement v1, as a JSON-ready dict."""
        base: dict[str, str] | None = None
        if self.base is not None:
            base = {"id": self.base.image_id, "signatureSha256": self.base.signature_sha256.hex(),
                    "certificateId": self.base.certificate_id,
                    "certificateSha256": self.base.certificate_sha256.hex()}
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.image_id, "digest": {DIGEST_NAMES[self.hash_method]: self.image_digest.hex()}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "baseImage": base,
                "instanceUuid": self.instance_uuid,
                "projectId": self.project_id,
                "host": self.host,
                "createdAt": self.created_at.strftime(_TIME_FORMAT),
            },
        }

    def payload(self) -> bytes:
        """The statement as the envelope carries it: compact JSON, sorted keys, ASCII."""
        return json.dumps(self.statement(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _check_identifier(what: str, value: object) -> None:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} {str(value)[:80]!r} is not an OpenStack id")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    encoded_type = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(encoded_type), encoded_type, len(payload), payload)


def refuse_envelope_lookalike(head: bytes) -> None:
    """Refuse to sign image data whose first bytes are a DSSE PAE header (see the module docstring).

    ``head`` is at least the first ``len(PAE_HEADER)`` bytes of the image, or all of it if shorter.
    """
    if head.startswith(PAE_HEADER):
        raise ProvenanceError("refusing to sign an image that starts with a DSSE pre-authentication header "
                              "(its signature would also sign a provenance statement)")


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope with exactly one signature (not yet verified)."""

    payload: bytes
    keyid: str
    signature: bytes

    def to_json(self) -> str:
        return json.dumps({
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"keyid": self.keyid, "sig": base64.b64encode(self.signature).decode("ascii")}],
        }, sort_keys=True, separators=(",", ":"))


def _digest(data: bytes, hash_method: HashMethod) -> bytes:
    hasher = hash_method.new()
    hasher.update(data)
    return hasher.digest()


def sign_provenance(
    key: PrivateKey, signed: SignatureProperties, certificate_sha256: bytes, provenance: Provenance
) -> dict[str, str]:
    """The ``imgsign_provenance_v1_*`` properties for an image ``signed`` (its img_signature*) covers.

    ``key`` must be the key that made ``signed`` and ``provenance`` must state ``signed``'s hash method
    and the digest it signs: nothing is stated about an image this key did not sign.
    """
    if len(certificate_sha256) != 32:
        raise ValueError("the certificate fingerprint is a SHA-256 (32 bytes)")
    if key.key_type is not signed.key_type:
        raise KeyTypeMismatch(f"the provenance must be signed with the {signed.key_type.value} key that signed "
                              f"the image")
    if provenance.hash_method is not signed.hash_method:
        raise ValueError("the provenance digest must use img_signature_hash_method")
    key.public_key().verify_digest(signed.signature, provenance.image_digest, signed.hash_method)
    payload = provenance.payload()
    signature = key.sign_digest(_digest(pae(PAYLOAD_TYPE, payload), signed.hash_method), signed.hash_method)
    envelope = Envelope(payload, certificate_sha256.hex(), signature)
    return split_value(PREFIX, envelope.to_json())


# --- reading untrusted envelopes ------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for name, value in pairs:
        if name in result:
            raise ProvenanceError(f"duplicate JSON member {name[:40]!r}")
        result[name] = value
    return result


def _json(text: str, what: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=lambda name: _fail(f"{what}: {name} is not JSON"))
    except ProvenanceError as exc:
        raise ProvenanceError(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8 are ValueErrors
        raise ProvenanceError(f"{what} is not valid JSON ({str(exc)[:100]})") from None


def _fail(message: str) -> object:
    raise ProvenanceError(message)


def _object(value: object, what: str, members: set[str]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ProvenanceError(f"{what} must be a JSON object")
    if set(value) != members:
        missing, extra = sorted(members - set(value)), sorted(set(value) - members)
        raise ProvenanceError(f"{what} must have exactly the members {', '.join(sorted(members))}"
                              + (f"; missing {', '.join(missing)}" if missing else "")
                              + (f"; unexpected {', '.join(repr(e[:40]) for e in extra[:5])}" if extra else ""))
    return value


def _string(value: object, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ProvenanceError(f"{what} must be a string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ProvenanceError(f"{what} {value[:80]!r} is malformed")
    return value


def _hex(value: object, what: str, size: int) -> bytes:
    text = _string(value, what)
    if len(text) != 2 * size or not _HEX.fullmatch(text):
        raise ProvenanceError(f"{what} must be {2 * size} lower-case hexadecimal digits")
    return bytes.fromhex(text)


def _base64(value: object, what: str) -> bytes:
    text = _string(value, what)
    if not text or not _BASE64.fullmatch(text):
        raise ProvenanceError(f"{what} must be non-empty standard padded base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProvenanceError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:  # non-zero bits in the padding
        raise ProvenanceError(f"{what} is not canonical base64")
    return raw


def parse_envelope(text: str) -> Envelope:
    """Parse a DSSE envelope strictly: exactly ``payload``, ``payloadType`` (the in-toto one) and one
    signature with exactly ``keyid`` (a SHA-256 fingerprint) and ``sig``; standard base64 only."""
    if not isinstance(text, str) or len(text) > MAX_ENVELOPE:
        raise ProvenanceError(f"the provenance envelope must be a string of at most {MAX_ENVELOPE} characters")
    document = _object(_json(text, "the provenance envelope"), "the provenance envelope",
                       {"payload", "payloadType", "signatures"})
    if document["payloadType"] != PAYLOAD_TYPE:
        raise ProvenanceError(f"the envelope's payloadType must be {PAYLOAD_TYPE}, not "
                              f"{str(document['payloadType'])[:80]!r}")
    signatures = document["signatures"]
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise ProvenanceError("the envelope must have exactly one signature")
    entry = _object(signatures[0], "the envelope's signature", {"keyid", "sig"})
    keyid = _hex(entry["keyid"], "the signature's keyid", 32).hex()
    return Envelope(_base64(document["payload"], "the envelope's payload"), keyid,
                    _base64(entry["sig"], "the envelope's signature"))


def parse_statement(payload: bytes, image_id: str | None = None) -> Provenance:
    """Parse the statement an envelope carries (strictly: exact members, types and formats)."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise ProvenanceError("the provenance statement is not ASCII JSON") from None
    document = _object(_json(text, "the provenance statement"), "the provenance statement",
                       {"_type", "subject", "predicateType", "predicate"})
    if document["_type"] != STATEMENT_TYPE:
        raise ProvenanceError(f"the statement's _type must be {STATEMENT_TYPE}")
    if document["predicateType"] != PREDICATE_TYPE:
        raise ProvenanceError(f"the statement's predicateType must be {PREDICATE_TYPE}")
    subjects = document["subject"]
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise ProvenanceError("the statement must have exactly one subject")
    subject = _object(subjects[0], "the statement's subject", {"name", "digest"})
    name = _string(subject["name"], "the subject's name", _IDENTIFIER)
    digest_set = subject["digest"]
    if not isinstance(digest_set, dict) or len(digest_set) != 1:
        raise ProvenanceError("the subject's digest set must hold exactly one digest")
    ((algorithm, digest_text),) = digest_set.items()
    hash_method = _BY_DIGEST_NAME.get(algorithm)
    if hash_method is None:
        raise ProvenanceError(f"the subject's digest algorithm {algorithm[:40]!r} is not one of "
                              f"{', '.join(DIGEST_NAMES.values())}")
    image_digest = _hex(digest_text, f"the subject's {algorithm} digest", hash_method.digest_size)
    predicate = _object(document["predicate"], "the predicate",
                        {"baseImage", "instanceUuid", "projectId", "host", "createdAt"})
    base: BaseImage | None = None
    if predicate["baseImage"] is not None:
        base_doc = _object(predicate["baseImage"], "the predicate's baseImage",
                           {"id", "signatureSha256", "certificateId", "certificateSha256"})
        base = BaseImage(_string(base_doc["id"], "the base image id", _IDENTIFIER),
                         _hex(base_doc["signatureSha256"], "the base image's signatureSha256", 32),
                         _hex(base_doc["certificateSha256"], "the base image's certificateSha256", 32),
                         _string(base_doc["certificateId"], "the base image's certificateId", _KEY_MANAGER_ID))
    created_text = _string(predicate["createdAt"], "createdAt", _TIME)
    try:
        created = datetime.datetime.strptime(created_text, _TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ProvenanceError(f"createdAt {created_text!r} is not a time") from None
    try:
        provenance = Provenance(
            image_id=name, hash_method=hash_method, image_digest=image_digest, base=base,
            instance_uuid=_string(predicate["instanceUuid"], "instanceUuid", _IDENTIFIER),
            project_id=_string(predicate["projectId"], "projectId", _IDENTIFIER),
            host=_string(predicate["host"], "host", _HOST),
            created_at=created,
        )
    except ValueError as exc:  # every field was checked above; kept so that no value can escape as a traceback
        raise ProvenanceError(f"the provenance statement is invalid: {exc}") from None
    if image_id is not None and name != image_id:
        raise ProvenanceError(f"the provenance names image {name!r}, not {image_id[:80]!r}: it belongs to another "
                              f"image")
    return provenance


def read_envelope(properties: Mapping[str, object]) -> Envelope | None:
    """The envelope in the ``imgsign_provenance_v1_*`` properties (parsed, not verified); None if none."""
    try:
        text = join_value(properties, PREFIX)
    except PropertiesError as exc:
        raise ProvenanceError(str(exc)) from None
    return None if text is None else parse_envelope(text)


def verify_provenance(
    properties: Mapping[str, object],
    public_key: PublicKey,
    certificate_sha256: bytes,
    *,
    image_id: str | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> Provenance:
    """Check the provenance in ``properties`` with the signing certificate's key; return what it states.

    ``certificate_sha256`` is the SHA-256 of the certificate ``img_signature_certificate_uuid`` names
    (DER), ``public_key`` its key.  Each refusal is a :class:`ProvenanceError` (or the ``img_signature*``
    properties' own error): the envelope's keyid is that certificate, its signature verifies over the
    PAE with ``img_signature``'s key type and hash method, the statement's digest uses that hash method
    and is what ``img_signature`` signs (so the statement cannot move to another image or signature),
    and, given ``image_id``, the subject is that image.
    """
    from imgsign.signature_value import check_signature_value
    from imgsign.verifier import check_key_matches

    signed = SignatureProperties.from_mapping(properties)
    envelope = read_envelope(properties)
    if envelope is None:
        raise ProvenanceError(f"the image has no provenance statement ({PREFIX}* properties)")
    if envelope.keyid != certificate_sha256.hex():
        raise ProvenanceError(f"the provenance was signed by key {envelope.keyid}, not by the certificate that "
                              f"signed the image ({certificate_sha256.hex()})")
    check_key_matches(signed, public_key, policy)
    try:
        check_signature_value(envelope.signature, signed.key_type, public_key.key_size)
        public_key.verify_digest(envelope.signature, _digest(pae(PAYLOAD_TYPE, envelope.payload), signed.hash_method),
                                 signed.hash_method)
    except ImgsignError:
        raise ProvenanceError(
            f"the provenance signature does not verify with the certificate's key ({public_key.describe()}): "
            f"the statement was changed or another key signed it"
        ) from None
    provenance = parse_statement(envelope.payload, image_id)
    if provenance.hash_method is not signed.hash_method:
        raise ProvenanceError(f"the provenance digest is {provenance.hash_method.value} but img_signature_hash_method "
                              f"is {signed.hash_method.value}: it belongs to another signature")
    try:
        public_key.verify_digest(signed.signature, provenance.image_digest, signed.hash_method)
    except InvalidSignature:
        raise ProvenanceError(f"img_signature does not sign the digest the provenance names "
                              f"({provenance.image_digest.hex()}): the provenance belongs to another image") from None
    return provenance
