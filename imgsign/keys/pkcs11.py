"""Signing keys that never leave a PKCS#11 token (HSM, smart card, SoftHSM2).

A key is named by an RFC 7512 URI such as
``pkcs11:token=signing;object=signer?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin``.
The image is hashed locally; only the digest goes to the token, signed with
``CKM_RSA_PKCS_PSS`` (MGF1 of the same hash, maximum salt: what cursive, Glance and Nova
expect), ``CKM_ECDSA`` or ``CKM_DSA`` (the token's ``r||s`` is DER-encoded here).  Every
signature the token returns is verified with the key's public key before it is used.

The URI parser and the settings need nothing installed; talking to a token needs the
``pkcs11`` extra (python-pkcs11), imported only then.  The PIN is never part of a
message, a log record or a ``repr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from imgsign._internal import redact
from imgsign._internal.asn1 import der_element, dsa_spki
from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import (
    ImgsignError,
    InputError,
    InvalidSignature,
    MalformedSignature,
    MechanismUnsupported,
    MissingExtra,
    PrivateKeyError,
    SignerLoginError,
    SignerRefused,
    SignerUnavailable,
    SigningKeyNotFound,
    UnsupportedAlgorithm,
)
from imgsign.keys import PrivateKey, PublicKey

if TYPE_CHECKING:
    import pkcs11
    import pkcs11._pkcs11
    import pkcs11.types

SCHEME = "pkcs11:"
#: Path attributes of RFC 7512 that select a token or a key; any other is refused, never ignored.
PATH_ATTRIBUTES = ("token", "manufacturer", "serial", "model", "slot-id", "object", "id", "type")
QUERY_ATTRIBUTES = ("module-path", "pin-source", "pin-value")
MAX_URI_LENGTH = 8192
#: DER of OBJECT IDENTIFIER 1.2.840.10045.2.1 (id-ecPublicKey).
_EC_PUBLIC_KEY_DER = bytes.fromhex("06072a8648ce3d0201")
#: Asks the user for a PIN (the argument is a prompt naming the token); None when nobody can be asked.
AskPin = Callable[[str], str]


def is_reference(text: str) -> bool:
    """Does ``text`` name a key in a PKCS#11 token (rather than a file)?"""
    return text[: len(SCHEME)].lower() == SCHEME


@dataclasses.dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed RFC 7512 URI; ``pin_value`` is never shown (``repr`` and :meth:`describe` leave it out)."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_id: int | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    pin_value: str | None = dataclasses.field(default=None, repr=False)

    def describe(self) -> str:
        """The URI without its PIN (and without the module, which messages name separately)."""
        parts = [f"{name}={_quote(value)}" for name, value in (
            ("token", self.token), ("manufacturer", self.manufacturer), ("serial", self.serial),
            ("model", self.model), ("slot-id", None if self.slot_id is None else str(self.slot_id)),
            ("object", self.object), ("type", self.type)) if value is not None]
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        return SCHEME + ";".join(parts)

    def __repr__(self) -> str:
        return f"Pkcs11Uri({self.describe()!r}, module_path={self.module_path!r})"


def _quote(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-._~:@!$'()*+,=" else "".join(f"%{b:02X}" for b in c.encode())
                   for c in value)


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse a ``pkcs11:`` URI; anything malformed, repeated or unknown is an :class:`InputError`.

    Messages quote attribute names, never values (a value may be the PIN).
    """
    if not is_reference(text):
        raise InputError("not a PKCS#11 URI (it must start with pkcs11:)")
    if len(text) > MAX_URI_LENGTH:
        raise InputError(f"the PKCS#11 URI is longer than {MAX_URI_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise InputError("the PKCS#11 URI has spaces, control or non-ASCII characters (percent-encode them)")
    path, _, query = text[len(SCHEME):].partition("?")
    if "#" in text:
        raise InputError("a PKCS#11 URI has no fragment ('#' must be written %23)")
    values: dict[str, bytes] = {}
    for section, separator, known in ((path, ";", PATH_ATTRIBUTES), (query, "&", QUERY_ATTRIBUTES)):
        for item in section.split(separator) if section else []:
            name, equals, raw = item.partition("=")
            name = name.lower()
            if not equals:
                raise InputError(f"PKCS#11 URI attribute {name[:40]!r} has no '=value'")
            if name == "module-name":
                raise InputError("the PKCS#11 URI attribute module-name is not supported: give module-path")
            if name not in known:
                where = "path" if separator == ";" else "query"
                raise InputError(f"unknown PKCS#11 URI {where} attribute {name[:40]!r} "
                                 f"(imgsign understands: {', '.join(known)})")
            if name in values:
                raise InputError(f"the PKCS#11 URI attribute {name} is given twice")
            values[name] = _unquote(name, raw)
    if "pin-source" in values and "pin-value" in values:
        raise InputError("the PKCS#11 URI has both pin-source and pin-value: give one")
    if values.get("type", b"private") != b"private":
        raise InputError("the PKCS#11 URI must name a private key (type=private, or no type)")
    text_values = {name: _text(name, value) for name, value in values.items() if name != "id"}
    slot_id = None
    if "slot-id" in text_values:
        if not text_values["slot-id"].isdigit() or len(text_values["slot-id"]) > 20:
            raise InputError("the PKCS#11 URI attribute slot-id must be a decimal number")
        slot_id = int(text_values["slot-id"])
    redact.remember(text_values.get("pin-value"))  # whatever reports the URI from now on leaves the PIN out
    pin_source = text_values.get("pin-source")
    if pin_source is not None:
        pin_source = _pin_path(pin_source)
    return Pkcs11Uri(
        token=text_values.get("token"), manufacturer=text_values.get("manufacturer"),
        serial=text_values.get("serial"), model=text_values.get("model"), slot_id=slot_id,
        object=text_values.get("object"), id=values.get("id"), type=text_values.get("type"),
        module_path=text_values.get("module-path"), pin_source=pin_source, pin_value=text_values.get("pin-value"),
    )


def _unquote(name: str, raw: str) -> bytes:
    for index, char in enumerate(raw):
        if char == "%" and not (len(raw) >= index + 3 and all(c in "0123456789abcdefABCDEF"
                                                                for c in raw[index + 1:index + 3])):
            raise InputError(f"the PKCS#11 URI attribute {name} has a '%' not followed by two hex digits")
    value = unquote_to_bytes(raw)
    if not value and name != "pin-value":
        raise InputError(f"the PKCS#11 URI attribute {name} is empty")
    return value


def _text(name: str, value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"the PKCS#11 URI attribute {name} is not UTF-8 once percent-decoded") from None
    if name != "pin-value" and any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InputError(f"the PKCS#11 URI attribute {name} holds control characters")
    return text


def _pin_path(source: str) -> str:
    """``file:/path``, ``file:///path`` or ``/path`` as a file name; other sources are refused."""
    if source.startswith("file://"):
        source = source[len("file://"):]
        if not source.startswith("/"):
            raise InputError("pin-source file:// URIs must name a local absolute path (file:///path)")
    elif source.startswith("file:"):
        source = source[len("file:"):]
    if not source.startswith("/"):
        raise InputError("pin-source must be file:/absolute/path (or an absolute path)")
    return source


@dataclasses.dataclass(frozen=True)
class Pkcs11Settings:
    """Defaults from the ``[pkcs11]`` section of imgsign.conf; the URI's own query attributes win."""

    module_path: str | None = None
    pin_source: str | None = None

    @classmethod
    def from_conf(cls, conf: Any) -> Pkcs11Settings:
        """Read ``[pkcs11]`` from an oslo.config ``ConfigOpts``; None: no configuration; settings: as they are."""
        if isinstance(conf, Pkcs11Settings):
            return conf
        if conf is None or not hasattr(conf, "pkcs11"):
            return cls()
        section = conf.pkcs11
        return cls(section.module_path or None, _pin_path(section.pin_source) if section.pin_source else None)


# --- talking to the token ----------------------------------------------------------------

def _library() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise MissingExtra("PKCS#11 tokens need python-pkcs11: pip install 'imgsign[pkcs11]'") from None
    return pkcs11


_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _load_module(path: str | None) -> pkcs11._pkcs11.lib:
    """The PKCS#11 module at ``path``, loaded once per process."""
    p11 = _library()
    if not path:
        raise SignerUnavailable("no PKCS#11 module: give module-path=... in the URI or [pkcs11] module_path "
                                "in imgsign.conf")
    if not os.path.isfile(path):
        raise SignerUnavailable(f"PKCS#11 module {path} does not exist")
    with _LIBS_LOCK:
        if path not in _LIBS:
            try:
                _LIBS[path] = p11.lib(path)
            except p11.exceptions.PKCS11Error as exc:
                detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise SignerUnavailable(f"cannot load PKCS#11 module {path}: {detail}") from None
        lib: pkcs11._pkcs11.lib = _LIBS[path]
        return lib


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """Turn python-pkcs11's exceptions into imgsign's, each with its own exit code."""
    from pkcs11 import exceptions as e

    try:
        yield
    except ImgsignError:
        raise
    except (e.PinIncorrect, e.PinInvalid, e.PinLenRange):
        raise SignerLoginError(f"{what}: wrong PIN") from None
    except (e.PinLocked, e.PinExpired, e.UserPinNotInitialized, e.UserNotLoggedIn) as exc:
        raise SignerLoginError(f"{what}: the token refused the login ({_name(exc)})") from None
    except (e.NoSuchToken, e.TokenNotPresent, e.TokenNotRecognised, e.DeviceRemoved, e.DeviceError,
            e.SlotIDInvalid, e.SessionClosed, e.SessionHandleInvalid, e.SessionCount) as exc:
        raise SignerUnavailable(f"{what}: the token is not available ({_name(exc)})") from None
    except (e.NoSuchKey, e.MultipleObjectsReturned) as exc:
        raise SigningKeyNotFound(f"{what}: {_name(exc)}") from None
    except (e.MechanismInvalid, e.MechanismParamInvalid, e.FunctionNotSupported, e.KeySizeRange,
            e.DomainParamsInvalid) as exc:
        raise MechanismUnsupported(f"{what}: the token does not support this ({_name(exc)})") from None
    except e.PKCS11Error as exc:
        raise SignerRefused(f"{what}: the token refused ({_name(exc)})") from None


def _name(exc: BaseException) -> str:
    """The PKCS#11 error's name (python-pkcs11's texts may quote templates; names never hold secrets)."""
    return type(exc).__name__


class _Session:
    """A logged-in session on the one token a URI selects."""

    def __init__(self, uri: Pkcs11Uri, settings: Pkcs11Settings, ask_pin: AskPin | None, *, rw: bool) -> None:
        module = uri.module_path or settings.module_path
        lib = _load_module(module)
        self.module = module
        with _translate(f"PKCS#11 module {module}"):
            token = self._token(lib, uri)
        self.token = token
        self.name = f"token {token.label!r}"
        pin = self._pin(uri, settings, ask_pin, token)
        with _translate(f"logging in to {self.name}"):
            try:
                self.session = token.open(rw=rw, user_pin=pin)
            except _library().exceptions.UserAlreadyLoggedIn:  # another key of this process logged in
                self.session = token.open(rw=rw)
        self.lock = threading.Lock()

    @staticmethod
    def _token(lib: pkcs11._pkcs11.lib, uri: Pkcs11Uri) -> pkcs11.types.Token:
        found = []
        labels = []
        for slot in lib.get_slots(token_present=True):
            token = slot.get_token()
            labels.append(repr(token.label))
            serial = token.serial.decode("ascii", "replace").strip()
            if all(want is None or want == have for want, have in (
                    (uri.token, token.label), (uri.manufacturer, token.manufacturer_id),
                    (uri.model, token.model), (uri.serial, serial), (uri.slot_id, slot.slot_id))):
                found.append(token)
        if not found:
            present = f"tokens present: {', '.join(labels)}" if labels else "no token is present"
            raise SignerUnavailable(f"no PKCS#11 token matches {uri.describe()} ({present})")
        if len(found) > 1:
            raise SigningKeyNotFound(f"{len(found)} PKCS#11 tokens match {uri.describe()}: "
                                     f"add token=, serial= or slot-id= to pick one")
        return found[0]

    def _pin(self, uri: Pkcs11Uri, settings: Pkcs11Settings, ask_pin: AskPin | None,
             token: pkcs11.types.Token) -> Any:
        p11 = _library()
        if uri.pin_value is not None:
            return uri.pin_value
        source = uri.pin_source or settings.pin_source
        if source is not None:
            from imgsign._internal.files import read_secret_file

            data = read_secret_file(source, "PIN file")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"PIN file {source} is not UTF-8 text") from None
        if p11.TokenFlag.PROTECTED_AUTHENTICATION_PATH in token.flags:
            return p11.PROTECTED_AUTH
        if p11.TokenFlag.LOGIN_REQUIRED not in token.flags:
            return None
        if ask_pin is not None:
            return ask_pin(f"PIN for PKCS#11 {self.name}")
        raise SignerLoginError(f"{self.name} needs a PIN: give pin-source=file:/path in the URI or "
                               f"[pkcs11] pin_source in imgsign.conf")

    def find(self, object_class: Any, *, label: str | None, key_id: bytes | None) -> list[Any]:
        attributes: dict[Any, Any] = {_library().Attribute.CLASS: object_class}
        if label is not None:
            attributes[_library().Attribute.LABEL] = label
        if key_id is not None:
            attributes[_library().Attribute.ID] = key_id
        with _translate(f"searching {self.name}"):
            return list(self.session.get_objects(attributes))

    def require_mechanism(self, mechanism: Any, purpose: str) -> None:
        with _translate(f"reading the mechanisms of {self.name}"):
            offered = self.token.slot.get_mechanisms()
        if mechanism not in offered:
            raise MechanismUnsupported(f"{self.name} does not offer CKM_{mechanism.name}, which {purpose} needs")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()


_KEY_TYPES_BY_MECHANISM = {"RSA": "RSA_PKCS_PSS", "EC": "ECDSA", "DSA": "DSA"}


class TokenPrivateKey(PrivateKey):
    """A private key in a PKCS#11 token: signs digests there, checks each signature here."""

    def __init__(self, session: _Session, uri: Pkcs11Uri, handle: Any) -> None:
        p11 = _library()
        self._session = session
        self._uri = uri
        self._handle = handle
        with _translate(f"reading the key {uri.describe()}"):
            self._p11_type = handle.key_type
            can_sign = bool(handle[p11.Attribute.SIGN])
        family = getattr(self._p11_type, "name", str(self._p11_type))
        if family not in _KEY_TYPES_BY_MECHANISM:
            raise UnsupportedAlgorithm(f"the key {uri.describe()} is a {family} key: imgsign signs with RSA, "
                                       f"DSA and EC keys")
        self._mechanism = p11.Mechanism[_KEY_TYPES_BY_MECHANISM[family]]
        self._public = _public_key(session, uri, handle)
        self._key_type = self._public.key_type
        if self._key_type is None:
            raise UnsupportedAlgorithm(f"the key {uri.describe()} ({self._public.describe()}) has no OpenStack key "
                                       f"type")
        if not can_sign:
            raise SignerRefused(f"the key {uri.describe()} in {session.name} may not sign (CKA_SIGN is false)")
        session.require_mechanism(self._mechanism, f"a {self._key_type.value} signature")
        self._dss_half = 0
        if family == "DSA":
            with _translate(f"reading the key {uri.describe()}"):
                self._dss_half = len(handle[p11.Attribute.SUBPRIME].lstrip(b"\0"))

    @property
    def key_type(self) -> KeyType | None:
        return self._key_type

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> PublicKey:
        return self._public

    def describe(self) -> str:
        """The key's URI (no PIN) and its module."""
        return f"{self._uri.describe()} (module {self._session.module})"

    def __repr__(self) -> str:
        return f"<TokenPrivateKey {self.describe()} {self._public.describe()}>"

    def close(self) -> None:
        """Close the session with the token (also done when the process ends)."""
        self._session.close()

    def export_pkcs8_der(self) -> bytes:
        raise PrivateKeyError(f"the private key {self._uri.describe()} lives in a PKCS#11 token and cannot "
                              f"leave it: sign with --key '{self._uri.describe()}' instead of storing the key")

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """Have the token sign ``digest``; return the signature only if it verifies with the public key."""
        p11 = _library()
        if len(digest) != hash_method.digest_size:
            raise ValueError(f"a {hash_method.value} digest is {hash_method.digest_size} bytes")
        what = f"signing with {self._uri.describe()} in {self._session.name}"
        with self._session.lock, _translate(what):
            if self._key_type is KeyType.RSA_PSS:
                # CKM_RSA_PKCS_PSS over the digest: CKM_SHAxxx and CKG_MGF1_SHAxxx of the same hash (HashMethod's
                # names are python-pkcs11's), maximum salt: emLen - hLen - 2 with emLen = ceil((bits - 1) / 8).
                salt = (self.key_size - 1 + 7) // 8 - hash_method.digest_size - 2
                raw = self._handle.sign(digest, mechanism=self._mechanism, mechanism_param=(
                    p11.Mechanism[hash_method.name], p11.MGF[hash_method.name], salt))
            elif self._dss_half:  # FIPS 186-4: DSA signs the leftmost bits of the digest, as many as q has
                raw = self._handle.sign(digest[: self._dss_half], mechanism=self._mechanism)
            else:
                raw = self._handle.sign(digest, mechanism=self._mechanism)
        signature = raw if self._key_type is KeyType.RSA_PSS else _dss_der(raw, what)
        try:
            self._public.verify_digest(signature, digest, hash_method)
            if self._key_type is KeyType.RSA_PSS:
                _check_pss_salt(self._public, signature, hash_method, salt)
        except (InvalidSignature, MalformedSignature):
            raise SignerRefused(f"{what}: the token returned a signature that does not verify with the key's "
                                f"public key") from None
        return signature


    def sign_digest_pkcs1v15(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """RSA keys: RSASSA-PKCS1-v1_5 (``CKM_RSA_PKCS`` over the DigestInfo), for the certificates this key
        issues (the issuing code, :func:`imgsign.keygen.issue_certificate`, verifies it before it is used)."""
        if self._key_type is not KeyType.RSA_PSS:
            return super().sign_digest_pkcs1v15(digest, hash_method)
        p11 = _library()
        if len(digest) != hash_method.digest_size:
            raise ValueError(f"a {hash_method.value} digest is {hash_method.digest_size} bytes")
        what = f"signing with {self._uri.describe()} in {self._session.name}"
        self._session.require_mechanism(p11.Mechanism.RSA_PKCS, "a PKCS#1 v1.5 certificate signature")
        with self._session.lock, _translate(what):
            return bytes(self._handle.sign(_DIGEST_INFO_PREFIX[hash_method] + digest,
                                           mechanism=p11.Mechanism.RSA_PKCS))


#: RFC 8017 section 9.2 note 1: the DER DigestInfo before the digest, per hash.
_DIGEST_INFO_PREFIX = {
    HashMethod.SHA224: bytes.fromhex("302d300d06096086480165030402040500041c"),
    HashMethod.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    HashMethod.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    HashMethod.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}

def _dss_der(raw: bytes, what: str) -> bytes:
    """A PKCS#11 DSA/ECDSA signature ``r||s`` (two equal halves) as DER ``SEQUENCE {r, s}``."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if not raw or len(raw) % 2:
        raise SignerRefused(f"{what}: the token returned a {len(raw)}-byte value, not r||s")
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def _check_pss_salt(public: PublicKey, signature: bytes, hash_method: HashMethod, salt: int) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from imgsign.keys.inprocess import pss_salt_length

    if public.key_type is not KeyType.RSA_PSS:
        return
    key = serialization.load_der_public_key(public.spki_der())
    if isinstance(key, rsa.RSAPublicKey) and pss_salt_length(key, signature, hash_method) != salt:
        raise InvalidSignature("the token did not use the maximum PSS salt length")


def _public_key(session: _Session, uri: Pkcs11Uri, private: Any) -> PublicKey:
    """The public half: the token's public key object with the same id (else label), else its certificate,
    else (RSA) the modulus and exponent the private key object carries."""
    p11 = _library()
    with _translate(f"reading the key {uri.describe()}"):
        key_id = private[p11.Attribute.ID] or None
        label = None if key_id else private[p11.Attribute.LABEL]
    for object_class in (p11.ObjectClass.PUBLIC_KEY, p11.ObjectClass.CERTIFICATE):
        found = session.find(object_class, label=label, key_id=key_id)
        if len(found) > 1:
            raise SigningKeyNotFound(f"{len(found)} {object_class.name.lower().replace('_', ' ')} objects in "
                                     f"{session.name} share the id/label of {uri.describe()}: imgsign cannot tell "
                                     f"which one checks its signatures")
        if found:
            return _read_public(found[0], p11, uri)
    if getattr(private.key_type, "name", "") == "RSA":
        return _read_public(private, p11, uri)
    raise SigningKeyNotFound(f"{session.name} has no public key or certificate with the id or label of "
                             f"{uri.describe()}: imgsign needs it to check every signature the token makes")


def _read_public(obj: Any, p11: Any, uri: Pkcs11Uri) -> PublicKey:
    from imgsign.keys.loading import public_key_from_spki

    what = f"reading the public key of {uri.describe()}"
    with _translate(what):
        try:
            return public_key_from_spki(_spki(obj, p11))
        except ValueError:  # numbers or a point cryptography refuses
            raise SignerRefused(f"{what}: the token holds an unusable public key") from None


def _spki(obj: Any, p11: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a public key, certificate or RSA private key object."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    attr = p11.Attribute
    if obj.object_class == p11.ObjectClass.CERTIFICATE:
        from imgsign.certificates import certificate_spki_der, load_certificate

        return certificate_spki_der(load_certificate(obj[attr.VALUE]))
    family = getattr(obj.key_type, "name", "")
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if family == "RSA":
        numbers = rsa.RSAPublicNumbers(_int(obj[attr.PUBLIC_EXPONENT]), _int(obj[attr.MODULUS]))
        return numbers.public_key().public_bytes(*der)
    if family == "DSA":
        return dsa_spki(_int(obj[attr.PRIME]), _int(obj[attr.SUBPRIME]), _int(obj[attr.BASE]), _int(obj[attr.VALUE]))
    if family == "EC":
        point = bytes(obj[attr.EC_POINT])
        if point[:1] == b"\x04" and len(point) > 2 and point[1] in (len(point) - 2, 0x81, 0x82):
            point = _octet_string_value(point)  # PKCS#11 2.20+: DER OCTET STRING; some tokens give it raw
        algorithm = der_element(0x30, _EC_PUBLIC_KEY_DER + bytes(obj[attr.EC_PARAMS]))
        return der_element(0x30, algorithm + der_element(0x03, b"\0" + point))
    raise UnsupportedAlgorithm(f"cannot use a {family or 'unknown'} public key")


def _octet_string_value(der: bytes) -> bytes:
    from imgsign._internal.asn1 import der_sequence_elements

    try:
        [value] = der_sequence_elements(der_element(0x30, der))
    except ValueError:
        return der
    if len(value) != len(der):
        return der
    return value[2:] if value[1] < 0x80 else value[2 + (value[1] & 0x7F):]


def _int(value: bytes) -> int:
    return int.from_bytes(bytes(value), "big")


def open_key(reference: str, conf: Any = None, ask_pin: AskPin | None = None) -> TokenPrivateKey:
    """Open the private key the ``pkcs11:`` URI ``reference`` names, logged in to its token.

    ``conf``: :class:`Pkcs11Settings`, or imgsign.conf (its ``[pkcs11]`` section), or None.
    """
    uri = parse_uri(reference)
    if uri.object is None and uri.id is None:
        raise InputError(f"the PKCS#11 URI {uri.describe()} names no key: add object=LABEL or id=%XX...")
    session = _Session(uri, Pkcs11Settings.from_conf(conf), ask_pin, rw=False)
    try:
        found = session.find(_library().ObjectClass.PRIVATE_KEY, label=uri.object, key_id=uri.id)
        if not found:
            raise SigningKeyNotFound(f"{session.name} has no private key {uri.describe()}")
        if len(found) > 1:
            raise SigningKeyNotFound(f"{len(found)} private keys in {session.name} match {uri.describe()}: "
                                     f"add id= (or a unique object=) to pick one")
        return TokenPrivateKey(session, uri, found[0])
    except BaseException:
        session.close()
        raise


def generate_key(reference: str, key_type: KeyType, bits: int | None = None, conf: Any = None,
                 ask_pin: AskPin | None = None) -> TokenPrivateKey:
    """Generate a signing key pair inside the token: private half sensitive, never extractable, sign-only.

    ``reference`` names the new key (``object=`` label, optional ``id=``; a random id otherwise);
    an existing object with that label or id is never replaced.
    """
    from imgsign.keygen import DEFAULT_BITS

    p11 = _library()
    uri = parse_uri(reference)
    if uri.object is None:
        raise InputError(f"the PKCS#11 URI {uri.describe()} needs object=LABEL to name the new key")
    key_id = uri.id or os.urandom(8)
    session = _Session(uri, Pkcs11Settings.from_conf(conf), ask_pin, rw=True)
    try:
        for label, wanted_id in ((uri.object, None), (None, key_id)):
            for object_class in (p11.ObjectClass.PRIVATE_KEY, p11.ObjectClass.PUBLIC_KEY, p11.ObjectClass.CERTIFICATE):
                if session.find(object_class, label=label, key_id=wanted_id):
                    raise InputError(f"{session.name} already holds an object with the label or id of "
                                     f"{uri.describe()}: imgsign never replaces a key; pick another object=")
        attr = p11.Attribute
        private_template = {attr.TOKEN: True, attr.PRIVATE: True, attr.SENSITIVE: True, attr.EXTRACTABLE: False,
                            attr.SIGN: True, attr.DECRYPT: False, attr.UNWRAP: False, attr.DERIVE: False}
        public_template = {attr.TOKEN: True, attr.VERIFY: True, attr.ENCRYPT: False, attr.WRAP: False}
        options: dict[str, Any] = {"id": key_id, "label": uri.object, "store": True,
                                   "capabilities": p11.MechanismFlag.SIGN | p11.MechanismFlag.VERIFY,
                                   "private_template": private_template, "public_template": public_template}
        what = f"generating a {key_type.value} key in {session.name}"
        with _translate(what):
            if key_type is KeyType.RSA_PSS:
                session.require_mechanism(p11.Mechanism.RSA_PKCS_KEY_PAIR_GEN, what)
                session.session.generate_keypair(p11.KeyType.RSA, bits or DEFAULT_BITS, **options)
            elif key_type is KeyType.DSA:
                session.require_mechanism(p11.Mechanism.DSA_PARAMETER_GEN, what)
                session.require_mechanism(p11.Mechanism.DSA_KEY_PAIR_GEN, what)
                params = session.session.generate_domain_parameters(p11.KeyType.DSA, bits or DEFAULT_BITS)
                params.generate_keypair(**options)
            else:
                from pkcs11.util.ec import encode_named_curve_parameters

                session.require_mechanism(p11.Mechanism.EC_KEY_PAIR_GEN, what)
                curve = encode_named_curve_parameters(key_type.curve_oid or "")
                params = session.session.create_domain_parameters(p11.KeyType.EC, {attr.EC_PARAMS: curve}, local=True)
                params.generate_keypair(**options)
            [private] = session.find(p11.ObjectClass.PRIVATE_KEY, label=uri.object, key_id=key_id)
            if not private[attr.SENSITIVE] or private[attr.EXTRACTABLE]:
                private.destroy()
                raise SignerRefused(f"{what}: the token made the key extractable; it was destroyed")
        return TokenPrivateKey(session, uri, private)
    except BaseException:
        session.close()
        raise
