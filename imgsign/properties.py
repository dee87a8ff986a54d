"""The four ``img_signature*`` image properties: strict parsing and rendering."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import shlex
from collections.abc import Mapping

from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import PropertiesError

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERT_UUID = "img_signature_certificate_uuid"
NAMES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERT_UUID)

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")
_CERT_ID = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces


@dataclasses.dataclass(frozen=True)
class SignatureProperties:
    """A parsed, validated set of ``img_signature*`` properties."""

    signature: bytes
    hash_method: HashMethod
    key_type: KeyType
    certificate_uuid: str

    def __repr__(self) -> str:
        return (
            f"SignatureProperties(hash_method={self.hash_method.value}, key_type={self.key_type.value}, "
            f"certificate_uuid={self.certificate_uuid!r}, signature=<{len(self.signature)} bytes>)"
        )

    @property
    def signature_b64(self) -> str:
        """Standard base64, one line, padded: what ``img_signature`` holds."""
        return base64.b64encode(self.signature).decode("ascii")

    def as_dict(self) -> dict[str, str]:
        """The four properties as OpenStack stores them."""
        return {
            SIGNATURE: self.signature_b64,
            HASH_METHOD: self.hash_method.value,
            KEY_TYPE: self.key_type.value,
            CERT_UUID: self.certificate_uuid,
        }

    def to_json(self) -> str:
        return render_properties(self.as_dict(), "json")

    def openstack_arguments(self) -> list[str]:
        """``--property k=v`` arguments for ``openstack image create``/``set``."""
        return openstack_arguments(self.as_dict())

    def to_openstack(self) -> str:
        return render_properties(self.as_dict(), "openstack")

    def to_env(self) -> str:
        """Shell ``KEY=value`` lines (upper-case names), safe to ``eval`` or ``source``."""
        return render_properties(self.as_dict(), "env")

    @classmethod
    def from_mapping(cls, properties: Mapping[str, object]) -> SignatureProperties:
        """Parse the four properties from a mapping; every problem is a precise error.

        Extra keys are ignored.  ``img_signature`` may be wrapped (whitespace is
        dropped), but any other non-alphabet character, URL-safe base64 or bad
        padding is refused.
        """
        missing = [name for name in NAMES if properties.get(name) in (None, "")]
        if missing:
            raise PropertiesError(f"missing image propert{'y' if len(missing) == 1 else 'ies'}: {', '.join(missing)}")
        for name in NAMES:
            if not isinstance(properties[name], str):
                raise PropertiesError(f"image property {name} must be a string, not {type(properties[name]).__name__}")
        hash_method = HashMethod.parse(properties[HASH_METHOD])
        key_type = KeyType.parse(properties[KEY_TYPE])
        cert_uuid = check_certificate_id(str(properties[CERT_UUID]))
        return cls(decode_signature(str(properties[SIGNATURE])), hash_method, key_type, cert_uuid)


def is_signed(properties: Mapping[str, object]) -> bool:
    """Does the image carry any ``img_signature*`` property (a partial set is an error later)?"""
    return any(name in properties for name in NAMES)


def check_certificate_id(value: str) -> str:
    """Return ``value`` if it can be a key manager id (1-255 printable ASCII, no spaces)."""
    if not isinstance(value, str) or not _CERT_ID.fullmatch(value):
        raise PropertiesError(
            f"{CERT_UUID} must be a key manager id (1-255 printable characters, no spaces), not {str(value)[:80]!r}"
        )
    return value


def decode_signature(text: str, name: str = SIGNATURE) -> bytes:
    """Decode ``img_signature`` (or the property ``name``): standard base64, whitespace tolerated, nothing else."""
    compact = _WHITESPACE.sub("", text)
    if not _BASE64.fullmatch(compact):
        bad = next((c for c in compact if not ((c.isascii() and c.isalnum()) or c in "+/=")), None)
        if bad is None:
            raise PropertiesError(f"{name} is not valid base64: misplaced '=' padding")
        hint = " (URL-safe base64 is not accepted)" if bad in ("-", "_") else ""
        raise PropertiesError(f"{name} is not valid base64: unexpected character {bad!r}{hint}")
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise PropertiesError(f"{name} is not valid base64: wrong length or padding") from None
    if not raw:
        raise PropertiesError(f"{name} is empty")
    return raw


def properties_from_document(document: object) -> Mapping[str, object]:
    """Find the properties in a JSON document.

    Accepts the properties object itself or ``openstack image show -f json``
    output, where they are nested under ``properties``.
    """
    if not isinstance(document, Mapping):
        raise PropertiesError("the properties document must be a JSON object")
    nested = document.get("properties")
    if isinstance(nested, Mapping) and not any(name in document for name in NAMES):
        return nested
    return document


def openstack_arguments(properties: Mapping[str, str]) -> list[str]:
    """``--property k=v`` arguments for ``openstack image create``/``set``."""
    args: list[str] = []
    for key, value in properties.items():
        args += ["--property", f"{key}={value}"]
    return args


def render_properties(properties: Mapping[str, str], fmt: str) -> str:
    """Properties as ``json`` (an object), ``openstack`` (``--property`` arguments) or ``env``
    (shell ``KEY=value`` lines, upper-case names, safe to ``eval`` or ``source``)."""
    if fmt == "json":
        return json.dumps(dict(properties), indent=2) + "\n"
    if fmt == "openstack":
        return " ".join(shlex.quote(a) for a in openstack_arguments(properties)) + "\n"
    if fmt == "env":
        return "".join(f"{k.upper()}={shlex.quote(v)}\n" for k, v in properties.items())
    raise ValueError(f"unknown properties format {fmt!r}")
