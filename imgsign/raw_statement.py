"""The raw-digest statement: what a qcow2 image becomes once Nova converts it to raw.

Nova's ``force_raw_images`` converts a downloaded qcow2 with ``qemu-img convert -O raw`` and
deletes the signed file, so ``img_signature`` (over the qcow2 bytes) can no longer be checked
against the image cache.  When it signs a qcow2 image, imgsign also signs a *statement*, with
the same key, key type and hash method as ``img_signature``, that binds the SHA-256 and the size
of the raw conversion to the digest ``img_signature`` covers.  It travels as four extra image
properties (Glance, Nova and cursive ignore properties they do not know)::

    imgsign_raw_v1_image_digest  hex digest of the signed image (img_signature_hash_method)
    imgsign_raw_v1_sha256        hex SHA-256 of the raw conversion
    imgsign_raw_v1_size          its size in bytes (the virtual size), decimal
    imgsign_raw_v1_signature     base64 signature of the canonical message below

The signed message is ASCII, one ``key=value`` line each, in this order, ``\\n``-terminated::

    imgsign raw statement v1
    hash_method=SHA-256
    key_type=RSA-PSS
    certificate_uuid=<img_signature_certificate_uuid>
    image_digest=<lower-case hex>
    raw_sha256=<lower-case hex>
    raw_size=<decimal, no leading zeros>

The key signs ``H(message) XOR H("imgsign raw statement v1 domain")`` (H = the hash method),
never ``H(message)`` itself: a signature over ``H(message)`` would also be a valid
``img_signature`` for an "image" made of the message bytes, and no ``img_signature`` can pass as
a statement signature either (each would need a preimage of a chosen digest).

Nothing here reads a file: the raw digest comes from :mod:`imgsign._internal.raw_digest`.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Mapping

from imgsign.algorithms import HashMethod
from imgsign.errors import InvalidSignature, KeyTypeMismatch, PropertiesError, RawStatementError
from imgsign.keys import PrivateKey, PublicKey
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import CERT_UUID, SignatureProperties, decode_signature
from imgsign.signature_value import check_signature_value

PREFIX = "imgsign_raw_v1_"
IMAGE_DIGEST = PREFIX + "image_digest"
RAW_SHA256 = PREFIX + "sha256"
RAW_SIZE = PREFIX + "size"
SIGNATURE = PREFIX + "signature"
NAMES = (IMAGE_DIGEST, RAW_SHA256, RAW_SIZE, SIGNATURE)

HEADER = b"imgsign raw statement v1\n"
_DOMAIN = b"imgsign raw statement v1 domain"
#: Largest raw size accepted (qemu's own limit on a block device is below 2**63).
MAX_SIZE = 2**63 - 1

_HEX = re.compile(r"[0-9a-f]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_SHA256_SIZE = 32


@dataclasses.dataclass(frozen=True)
class RawStatement:
    """A parsed raw-digest statement (not yet verified unless :func:`verify_raw_statement` returned it)."""

    image_digest: bytes
    raw_sha256: bytes
    raw_size: int
    signature: bytes

    def __repr__(self) -> str:
        return (f"RawStatement(image_digest={self.image_digest.hex()}, raw_sha256={self.raw_sha256.hex()}, "
                f"raw_size={self.raw_size}, signature=<{len(self.signature)} bytes>)")

    def as_dict(self) -> dict[str, str]:
        """The four properties as OpenStack stores them."""
        return {
            IMAGE_DIGEST: self.image_digest.hex(),
            RAW_SHA256: self.raw_sha256.hex(),
            RAW_SIZE: str(self.raw_size),
            SIGNATURE: base64.b64encode(self.signature).decode("ascii"),
        }


def statement_message(signed: SignatureProperties, image_digest: bytes, raw_sha256: bytes, raw_size: int) -> bytes:
    """The canonical message a statement signs (see the module docstring)."""
    lines = (
        f"hash_method={signed.hash_method.value}",
        f"key_type={signed.key_type.value}",
        f"certificate_uuid={signed.certificate_uuid}",
        f"image_digest={image_digest.hex()}",
        f"raw_sha256={raw_sha256.hex()}",
        f"raw_size={raw_size}",
    )
    return HEADER + "".join(line + "\n" for line in lines).encode("ascii")


def statement_digest(message: bytes, hash_method: HashMethod) -> bytes:
    """What the key signs: ``H(message) XOR H(domain)``, never a digest of known bytes."""
    hasher, domain_hasher = hash_method.new(), hash_method.new()
    hasher.update(message)
    domain_hasher.update(_DOMAIN)
    digest, domain = hasher.digest(), domain_hasher.digest()
    return bytes(a ^ b for a, b in zip(digest, domain, strict=True))


def make_raw_statement(
    key: PrivateKey, signed: SignatureProperties, image_digest: bytes, raw_sha256: bytes, raw_size: int
) -> RawStatement:
    """Sign a statement for the image ``signed`` covers; ``image_digest`` must be what it signs."""
    _check_values(signed.hash_method, image_digest, raw_sha256, raw_size)
    if key.key_type is not signed.key_type:
        raise KeyTypeMismatch(f"the raw statement must be signed with the {signed.key_type.value} key "
                              f"that signed the image")
    # Never state something about an image this key did not sign.
    key.public_key().verify_digest(signed.signature, image_digest, signed.hash_method)
    message = statement_message(signed, image_digest, raw_sha256, raw_size)
    signature = key.sign_digest(statement_digest(message, signed.hash_method), signed.hash_method)
    return RawStatement(image_digest, raw_sha256, raw_size, signature)


def _check_values(hash_method: HashMethod, image_digest: bytes, raw_sha256: bytes, raw_size: int) -> None:
    if len(image_digest) != hash_method.digest_size:
        raise ValueError(f"a {hash_method.value} digest is {hash_method.digest_size} bytes")
    if len(raw_sha256) != _SHA256_SIZE:
        raise ValueError("a SHA-256 digest is 32 bytes")
    if not 0 <= raw_size <= MAX_SIZE:
        raise ValueError(f"raw size {raw_size} is out of range")


def parse_raw_statement(properties: Mapping[str, object]) -> RawStatement | None:
    """The statement in ``properties``; None if it has none of its four properties.

    Strict: a partial statement, a non-string, upper-case or odd-length hex, a digest of the wrong
    length, a size with a sign, leading zeros or over 2**63-1, or bad base64 is a
    :class:`PropertiesError` naming the property.  The image digest's length is checked against the
    hash method only by :func:`verify_raw_statement`, which knows it.
    """
    present = [name for name in NAMES if name in properties]
    if not present:
        return None
    missing = [name for name in NAMES if properties.get(name) in (None, "")]
    if missing:
        raise PropertiesError(f"incomplete raw statement: missing or empty {', '.join(missing)}")
    values: dict[str, str] = {}
    for name in NAMES:
        value = properties[name]
        if not isinstance(value, str):
            raise PropertiesError(f"image property {name} must be a string, not {type(value).__name__}")
        values[name] = value
    image_digest = _hex(IMAGE_DIGEST, values[IMAGE_DIGEST], None)
    if len(image_digest) not in {h.digest_size for h in HashMethod}:
        raise PropertiesError(f"{IMAGE_DIGEST} is {len(image_digest)} bytes, not the size of any hash method")
    raw_sha256 = _hex(RAW_SHA256, values[RAW_SHA256], _SHA256_SIZE)
    size_text = values[RAW_SIZE]
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > MAX_SIZE:
        raise PropertiesError(
            f"{RAW_SIZE} must be a decimal byte count (no sign, no leading zeros, at most {MAX_SIZE}), "
            f"not {size_text[:40]!r}"
        )
    signature = decode_signature(values[SIGNATURE], SIGNATURE)
    return RawStatement(image_digest, raw_sha256, int(size_text), signature)


def _hex(name: str, text: str, size: int | None) -> bytes:
    if not _HEX.fullmatch(text) or len(text) % 2:
        raise PropertiesError(f"{name} must be lower-case hexadecimal with an even number of digits, "
                              f"not {text[:80]!r}")
    value = bytes.fromhex(text)
    if size is not None and len(value) != size:
        raise PropertiesError(f"{name} must be {size} bytes ({2 * size} hex digits), not {len(value)}")
    return value


def verify_raw_statement(
    properties: Mapping[str, object], public_key: PublicKey, *, policy: Policy = DEFAULT_POLICY
) -> RawStatement:
    """Check the statement in ``properties`` with the signing certificate's key; return it.

    Three steps, each a precise refusal: the ``img_signature*`` properties and the statement parse;
    the statement's signature verifies over its canonical message (built from the statement and
    the ``img_signature*`` properties, so no field can change); and ``img_signature`` verifies over
    the image digest the statement names, so the statement cannot be moved to another image.  The
    caller then compares the raw file's size and SHA-256 with the returned statement.
    """
    from imgsign.verifier import check_key_matches, verify_digest

    signed = SignatureProperties.from_mapping(properties)
    statement = parse_raw_statement(properties)
    if statement is None:
        raise RawStatementError("the image has no raw-digest statement (imgsign_raw_v1_* properties)")
    if len(statement.image_digest) != signed.hash_method.digest_size:
        raise RawStatementError(
            f"{IMAGE_DIGEST} is {len(statement.image_digest)} bytes but img_signature_hash_method "
            f"{signed.hash_method.value} gives {signed.hash_method.digest_size}: the statement belongs to another "
            f"signature"
        )
    check_key_matches(signed, public_key, policy)
    check_signature_value(statement.signature, signed.key_type, public_key.key_size)
    message = statement_message(signed, statement.image_digest, statement.raw_sha256, statement.raw_size)
    try:
        public_key.verify_digest(statement.signature, statement_digest(message, signed.hash_method),
                                 signed.hash_method)
    except InvalidSignature:
        raise RawStatementError(
            f"the raw-digest statement's signature does not verify with the certificate's key "
            f"({public_key.describe()}, {CERT_UUID} {signed.certificate_uuid}): a field was changed or "
            f"another key signed it"
        ) from None
    try:
        verify_digest(signed, public_key, statement.image_digest, policy=policy)
    except InvalidSignature:
        raise RawStatementError(
            f"img_signature does not sign the image digest the raw-digest statement names "
            f"({statement.image_digest.hex()}): the statement belongs to another image"
        ) from None
    return statement
