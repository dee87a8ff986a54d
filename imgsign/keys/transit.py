"""Signing keys that never leave an OpenBao or HashiCorp Vault transit engine.

A key is named by a reference in cosign's form, ``hashivault://KEYNAME``.  The
image is hashed locally as for any key; only the digest goes to the service
(``POST {mount}/sign/{name}/{hash}`` with ``prehashed=true``), and every
signature the service returns is checked before it is used: strictly parsed
(``vault:v<version>:<base64>``), well formed for the key, and verified with the
public key read from ``GET {mount}/keys/{name}`` for the same key version.

RSA keys sign RSA-PSS (MGF1 with the image's hash) with an explicit salt length,
the maximum ``ceil((bits - 1) / 8) - hLen - 2`` imgsign uses everywhere (transit's
``auto`` is capped to the hash length in FIPS mode); ECDSA keys return DER
(``marshaling_algorithm=asn1``), as cursive needs.

Where the service is and the token come from the environment (``VAULT_ADDR``,
``VAULT_TOKEN``, ``VAULT_CACERT``, ``VAULT_NAMESPACE``; OpenBao's ``BAO_*`` names
first) or from ``[transit]`` in imgsign.conf (:func:`settings`).  The token is
never part of a message, a log line or a repr.

The HTTP client is ``requests`` (which castellan requires anyway): three
endpoints, TLS verified unless the address is a loopback ``http://`` one, redirects
never followed (they would carry the token).  Each call is one network phase
(:mod:`imgsign._internal.netlimits`): it ends within ``[transit] timeout`` seconds in
total, connect to last byte, however slowly the service answers
(:class:`~imgsign.errors.SignerUnavailable`), and reads at most :data:`MAX_RESPONSE`
(:class:`~imgsign.errors.SignerRefused`), compressed or not.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from imgsign._internal import redact
from imgsign._internal.untrusted import safe
from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import (
    InputError,
    InvalidSignature,
    MalformedSignature,
    MechanismUnsupported,
    SignerLoginError,
    SignerRefused,
    SignerUnavailable,
    SigningKeyNotFound,
    UnsupportedAlgorithm,
)
from imgsign.keys import PrivateKey, PublicKey

if TYPE_CHECKING:
    import requests

    from imgsign.keys.inprocess import CryptographyPublicKey

SCHEME = "hashivault://"
DEFAULT_MOUNT = "transit"
DEFAULT_TIMEOUT = 30.0
#: Largest response body read from the service (a public key or a signature is a few KiB).
MAX_RESPONSE = 1024 * 1024

#: Transit's names of the hashes it signs prehashed (all four OpenStack hashes; OpenBao 2.7 and Vault accept them).
HASH_NAMES = {
    HashMethod.SHA224: "sha2-224",
    HashMethod.SHA256: "sha2-256",
    HashMethod.SHA384: "sha2-384",
    HashMethod.SHA512: "sha2-512",
}

#: Transit key types that can make an OpenStack signature, and what they are.
SIGNING_KEY_TYPES: dict[str, tuple[KeyType, int]] = {
    "rsa-2048": (KeyType.RSA_PSS, 2048),
    "rsa-3072": (KeyType.RSA_PSS, 3072),
    "rsa-4096": (KeyType.RSA_PSS, 4096),
    "ecdsa-p384": (KeyType.ECC_SECP384R1, 384),
    "ecdsa-p521": (KeyType.ECC_SECP521R1, 521),
}

# A transit key name (Vault's GenericNameRegex: word characters, '-' and '.', starting and ending with a word
# character), and a mount or namespace path made of such names.
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_])?"
_NAME_RE = re.compile(_NAME)
_PATH_RE = re.compile(rf"{_NAME}(?:/{_NAME}){{0,15}}")
_SIGNATURE_RE = re.compile(r"vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})")
_LOOPBACK_NAMES = ("localhost",)


# --- references and settings ---------------------------------------------------------------


def is_reference(reference: str) -> bool:
    """Does ``reference`` name a transit key (rather than a key file)?"""
    return reference.startswith(SCHEME)


def parse_reference(reference: str) -> str:
    """The key name in ``hashivault://KEYNAME``; :class:`InputError` for anything else."""
    if not isinstance(reference, str) or not reference.startswith(SCHEME):
        raise InputError(f"{_show(reference)} is not a transit key reference (hashivault://KEYNAME)")
    name = reference[len(SCHEME):]
    if not _NAME_RE.fullmatch(name):
        raise InputError(
            f"{_show(reference)} is not a transit key reference: the key name after hashivault:// must be 1-128 "
            f"letters, digits, '_', '-' or '.', starting and ending with a letter, digit or '_'"
        )
    return name


@dataclasses.dataclass(frozen=True)
class TransitSettings:
    """Where the transit engine is and how to log in (the token never shows in a repr)."""

    address: str
    token: str = dataclasses.field(repr=False)
    mount: str = DEFAULT_MOUNT
    ca_file: str | None = None
    namespace: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def settings(config: Any = None, environ: Mapping[str, str] | None = None) -> TransitSettings:
    """Transit settings: the environment first, then ``config`` (``[transit]`` of imgsign.conf or any
    object with its attributes ``address``, ``mount``, ``token_file``, ``ca_file``, ``namespace``,
    ``timeout``; None for none).

    Address ``BAO_ADDR``/``VAULT_ADDR``, token ``BAO_TOKEN``/``VAULT_TOKEN`` (else the first line of
    ``token_file``), CA file ``BAO_CACERT``/``VAULT_CACERT``, namespace ``BAO_NAMESPACE``/``VAULT_NAMESPACE``;
    mount ``TRANSIT_SECRET_ENGINE_PATH`` (cosign's name), default ``transit``.
    """
    env = os.environ if environ is None else environ

    def pick(names: tuple[str, ...], option: str | None) -> str | None:
        for name in names:
            if env.get(name):
                return env[name]
        value = getattr(config, option, None) if config is not None and option else None
        return str(value) if value else None

    address = pick(("BAO_ADDR", "VAULT_ADDR"), "address")
    if not address:
        raise SignerUnavailable("no transit address: set VAULT_ADDR (or BAO_ADDR) or [transit] address in imgsign.conf")
    address = _check_address(address)
    mount = (pick(("TRANSIT_SECRET_ENGINE_PATH",), "mount") or DEFAULT_MOUNT).strip("/")
    if not _PATH_RE.fullmatch(mount):
        raise InputError(f"transit mount {_show(mount)} is not a mount path such as 'transit' or 'team/transit'")
    namespace = pick(("BAO_NAMESPACE", "VAULT_NAMESPACE"), "namespace")
    if namespace is not None:
        namespace = namespace.strip("/")
        if not _PATH_RE.fullmatch(namespace):
            raise InputError(f"transit namespace {_show(namespace)} is not a namespace path such as 'team/a'")
    ca_file = pick(("BAO_CACERT", "VAULT_CACERT"), "ca_file")
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InputError(f"transit CA file {ca_file} does not exist or is not a file")
    timeout = getattr(config, "timeout", None) if config is not None else None
    token = pick(("BAO_TOKEN", "VAULT_TOKEN"), None)
    if token is None:
        token_file = getattr(config, "token_file", None) if config is not None else None
        if not token_file:
            raise SignerLoginError("no transit token: set VAULT_TOKEN (or BAO_TOKEN) or [transit] token_file "
                                   "in imgsign.conf")
        token = _read_token_file(str(token_file))
    redact.remember(token)
    if not token or not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        raise SignerLoginError("the transit token is empty or holds spaces, control or non-ASCII characters")
    return TransitSettings(address, token, mount, ca_file, namespace,
                           float(timeout) if timeout else DEFAULT_TIMEOUT)


def _read_token_file(path: str) -> str:
    from imgsign._internal.files import read_small_file

    try:
        text = read_small_file(path, "transit token file").decode("ascii")
    except UnicodeDecodeError:
        raise SignerLoginError(f"transit token file {path} is not ASCII text") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def _check_address(address: str) -> str:
    try:
        parsed = urllib.parse.urlsplit(address.strip())
    except ValueError:
        raise InputError(f"transit address {_show(address)} is not an http(s)://HOST[:PORT] URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
        raise InputError(f"transit address {_show(address)} is not an http(s)://HOST[:PORT] URL")
    if parsed.username or parsed.password:
        raise InputError("the transit address must not hold user information (give the token separately)")
    try:
        _ = parsed.port
    except ValueError:
        raise InputError(f"transit address {_show(address)} has an invalid port") from None
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        raise InputError(f"refusing to send the transit token in clear text to {parsed.hostname}: "
                         f"use an https:// address (plain http only for a loopback address)")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show(value: object, limit: int = 80) -> str:
    """A value from the user or the network, safe to put into a one-line message."""
    text = value if isinstance(value, str) else repr(value)
    return repr(safe(text, limit=limit))


# --- the service -----------------------------------------------------------------------------


class TransitClient:
    """Calls to one transit engine; maps every failure to an :class:`ImgsignError` of its own."""

    def __init__(self, config: TransitSettings) -> None:
        import requests

        self.settings = config
        self._session: requests.Session = requests.Session()
        self._session.headers["X-Vault-Token"] = config.token
        self._session.headers["X-Vault-Request"] = "true"
        if config.namespace:
            self._session.headers["X-Vault-Namespace"] = config.namespace

    def __repr__(self) -> str:
        return f"<TransitClient {self.settings.address} mount {self.settings.mount}>"

    @property
    def where(self) -> str:
        namespace = f", namespace {self.settings.namespace}" if self.settings.namespace else ""
        return f"transit at {self.settings.address} (mount {self.settings.mount}{namespace})"

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """``method`` ``/v1/{mount}/{path}``; the response's ``data`` object (empty for 204)."""
        from imgsign._internal import netlimits
        from imgsign._internal.deadline import Deadline

        deadline = Deadline(self.settings.timeout, "[transit] timeout")
        with netlimits.limited(deadline, SignerUnavailable, self.where, max_body=MAX_RESPONSE,
                               too_large=SignerRefused):
            status, body = self._send(method, f"{self.settings.address}/v1/{self.settings.mount}/{path}", payload)
        return self._result(status, body, path)

    def _send(self, method: str, url: str, payload: dict[str, Any] | None) -> tuple[int, bytes]:
        import requests

        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a Session's own verify.
            response = self._session.request(method, url, json=payload, timeout=self.settings.timeout,
                                             verify=self.settings.ca_file or True, allow_redirects=False,
                                             stream=True)
            try:
                body = b""
                for piece in response.iter_content(64 * 1024):
                    body += piece
                    if len(body) > MAX_RESPONSE:
                        break
            finally:
                response.close()
        except requests.exceptions.SSLError:
            raise SignerUnavailable(f"TLS connection to {self.where} failed: its certificate is not trusted or the "
                                    f"handshake failed (set [transit] ca_file or VAULT_CACERT)") from None
        except requests.exceptions.Timeout:
            raise SignerUnavailable(f"{self.where} did not answer within {self.settings.timeout:g} s") from None
        except requests.exceptions.ConnectionError:
            raise SignerUnavailable(f"cannot connect to {self.where} (refused, unreachable or closed)") from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise SignerUnavailable(f"request to {self.where} failed ({type(exc).__name__})") from None
        if len(body) > MAX_RESPONSE:
            raise SignerRefused(f"{self.where} sent a response larger than {MAX_RESPONSE // 1024} KiB")
        return response.status_code, body

    def _result(self, status: int, body: bytes, path: str) -> dict[str, Any]:
        document = _json_object(body) if body else {}
        if 200 <= status < 300:
            if status == 204:
                return {}
            data = document.get("data") if document is not None else None
            if not isinstance(data, dict):
                raise SignerRefused(f"{self.where} answered {path} without a data object")
            return data
        detail = self._errors(document)
        text = detail.lower()
        if status == 503:
            why = "sealed" if "sealed" in text else "unavailable (standby, maintenance or not initialised)"
            raise SignerUnavailable(f"{self.where} is {why}: {detail or 'HTTP 503'}")
        if 300 <= status < 400:
            raise SignerUnavailable(f"{self.where} redirected the request (HTTP {status}): set the address of the "
                                    f"active node; imgsign does not send the token to another address")
        if status in (401, 403):
            raise SignerLoginError(f"{self.where} refused the token for {path} ({detail or f'HTTP {status}'}): it is "
                                   f"invalid, expired, or its policies do not allow this path")
        if "no handler for route" in text:
            raise SigningKeyNotFound(f"{self.where}: no transit engine is mounted at {self.settings.mount} "
                                     f"(set [transit] mount or TRANSIT_SECRET_ENGINE_PATH)")
        if status == 404 or "not found" in text:
            name = path.split("/")[1] if "/" in path else path
            raise SigningKeyNotFound(f"{self.where} has no key {name!r} ({detail or f'HTTP {status}'})")
        if "does not support signing" in text or "unsupported" in text or "invalid hash algorithm" in text:
            raise MechanismUnsupported(f"{self.where} cannot sign this way for {path}: {detail}")
        if status == 429:
            raise SignerUnavailable(f"{self.where} is rate-limiting requests (HTTP 429)")
        raise SignerRefused(f"{self.where} refused {path} (HTTP {status}): {detail or 'no reason given'}")

    def _errors(self, document: dict[str, Any] | None) -> str:
        """The service's error messages, cleaned for one line (never the token)."""
        errors = document.get("errors") if document is not None else None
        if not isinstance(errors, list):
            return ""
        text = "; ".join(str(e) for e in errors[:5] if isinstance(e, str))
        text = text.replace(self.settings.token, "<token>")
        text = " ".join(re.sub(r"1 error occurred:|\*", " ", text).split())
        return safe(text, limit=300)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


# --- parsing what the service returns ----------------------------------------------------------


def parse_signature(value: object, key_version: int) -> bytes:
    """The signature bytes in transit's ``vault:v<version>:<base64>``; it must be of ``key_version``.

    Anything else (another prefix or version, URL-safe or unpadded base64, whitespace) is
    :class:`SignerRefused`: the value comes from the network.
    """
    if not isinstance(value, str):
        raise SignerRefused("transit returned no signature string")
    match = _SIGNATURE_RE.fullmatch(value)
    if match is None:
        raise SignerRefused(f"transit returned a malformed signature {_show(value, 40)} (expected vault:vN:BASE64)")
    if int(match.group(1)) != key_version:
        raise SignerRefused(f"transit signed with key version {match.group(1)}, not the requested {key_version}")
    try:
        signature = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise SignerRefused("transit returned a signature that is not valid base64") from None
    if not signature or base64.b64encode(signature).decode() != match.group(2):
        raise SignerRefused("transit returned a signature that is not canonical base64")
    return signature


def key_version_of(data: Mapping[str, Any]) -> tuple[int, str, str]:
    """(latest version, transit key type, public key PEM of that version) from ``GET {mount}/keys/{name}``."""
    key_type, latest, keys = data.get("type"), data.get("latest_version"), data.get("keys")
    if not isinstance(key_type, str) or not isinstance(latest, int) or isinstance(latest, bool) or latest < 1:
        raise SignerRefused("transit described the key without a type or a latest version")
    entry = keys.get(str(latest)) if isinstance(keys, dict) else None
    if key_type not in SIGNING_KEY_TYPES:
        return latest, key_type, ""
    public = entry.get("public_key") if isinstance(entry, dict) else None
    if not isinstance(public, str) or not public:
        raise SignerRefused(f"transit gave no public key for version {latest} of the key")
    return latest, key_type, public


def _public_key(pem: str, key_type: str) -> tuple[CryptographyPublicKey, Any]:
    """The public key (and its ``cryptography`` object) of a ``key_type`` key, checked to be one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from imgsign.keys.inprocess import CryptographyPublicKey

    expected_type, bits = SIGNING_KEY_TYPES[key_type]
    from imgsign._internal import pyca_dsa

    try:
        with pyca_dsa.quiet():  # a transit that answers with a DSA key is refused below, not warned about
            key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise SignerRefused(f"transit returned an unreadable public key ({str(exc)[:80]})") from None
    except Exception as exc:  # noqa: BLE001 - cryptography's own UnsupportedAlgorithm and friends
        raise SignerRefused(f"transit returned an unusable public key ({type(exc).__name__})") from None
    public = CryptographyPublicKey(key)
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)) or public.key_type is not expected_type \
            or public.key_size != bits:
        raise SignerRefused(f"transit's public key ({public.describe()}) is not the {key_type} key it claims to be")
    return public, key


# --- the key -----------------------------------------------------------------------------------


class TransitPrivateKey(PrivateKey):
    """A transit key: signs digests through the service, checks each signature it returns."""

    def __init__(self, client: TransitClient, name: str, version: int, transit_type: str, public_pem: str) -> None:
        self._client = client
        self.name = name
        self.version = version
        self.transit_type = transit_type
        self._public, self._pyca_public = _public_key(public_pem, transit_type)

    def __repr__(self) -> str:
        return f"<TransitPrivateKey {self.reference} v{self.version} {self.transit_type} at {self._client.where}>"

    @property
    def reference(self) -> str:
        return SCHEME + self.name

    @property
    def key_type(self) -> KeyType | None:
        return self._public.key_type

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> PublicKey:
        return self._public

    def export_pkcs8_der(self) -> bytes:
        raise MechanismUnsupported(f"{self.reference} is a non-exportable key in {self._client.where}: it cannot "
                                   f"be exported or stored in a key manager (refer to it by its reference instead)")

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """Sign ``digest`` in transit (RSA-PSS maximum salt, or DER ECDSA), then verify the result locally."""
        if self.key_type is KeyType.RSA_PSS:
            options: dict[str, Any] = {"signature_algorithm": "pss", "salt_length": self.max_salt_length(hash_method)}
        else:
            options = {"marshaling_algorithm": "asn1"}
        signature = self._sign(digest, hash_method, options)
        self.check(signature, digest, hash_method)
        return signature

    def sign_digest_pkcs1v15(self, digest: bytes, hash_method: HashMethod) -> bytes:
        """RSA keys: RSASSA-PKCS1-v1_5 over ``digest``, for the certificates this key issues (the issuing code,
        :func:`imgsign.keygen.issue_certificate`, verifies it before it is used)."""
        if self.key_type is not KeyType.RSA_PSS:
            return super().sign_digest_pkcs1v15(digest, hash_method)
        return self._sign(digest, hash_method, {"signature_algorithm": "pkcs1v15"})

    def _sign(self, digest: bytes, hash_method: HashMethod, options: dict[str, Any]) -> bytes:
        """``POST sign/NAME/HASH`` for the prehashed ``digest`` at this key version; the parsed signature."""
        hash_name = HASH_NAMES.get(hash_method)
        if hash_name is None:
            raise MechanismUnsupported(f"transit cannot sign {hash_method.value} digests")
        if len(digest) != hash_method.digest_size:
            raise InputError(f"a {hash_method.value} digest is {hash_method.digest_size} bytes, not {len(digest)}")
        payload: dict[str, Any] = {
            "input": base64.b64encode(digest).decode("ascii"),
            "prehashed": True,
            "hash_algorithm": hash_name,
            "key_version": self.version,
            **options,
        }
        data = self._client.call("POST", f"sign/{self.name}/{hash_name}", payload)
        returned_version = data.get("key_version", self.version)
        if type(returned_version) is not int or returned_version != self.version:
            raise SignerRefused(f"transit signed with key version {returned_version!r}, not {self.version}")
        return parse_signature(data.get("signature"), self.version)

    def max_salt_length(self, hash_method: HashMethod) -> int:
        """RSA-PSS's maximum salt: ``ceil((bits - 1) / 8) - hLen - 2``."""
        return math.ceil((self.key_size - 1) / 8) - hash_method.digest_size - 2

    def check(self, signature: bytes, digest: bytes, hash_method: HashMethod) -> None:
        """Refuse (:class:`SignerRefused`) a signature from the service that is malformed, does not
        verify, or (RSA) was made with another salt length than asked for."""
        from imgsign.signature_value import check_signature_value

        key_type = self.key_type
        assert key_type is not None  # noqa: S101 - only OpenStack key types are opened
        try:
            check_signature_value(signature, key_type, self.key_size)
            self._public.verify_digest(signature, digest, hash_method)
        except (MalformedSignature, InvalidSignature) as exc:
            raise SignerRefused(f"{self.reference} in {self._client.where} returned a bad signature: "
                                f"{exc.message}") from None
        if key_type is KeyType.RSA_PSS:
            from imgsign.keys.inprocess import pss_salt_length

            salt = pss_salt_length(self._pyca_public, signature, hash_method)
            if salt != self.max_salt_length(hash_method):
                raise SignerRefused(f"{self.reference} in {self._client.where} signed with a {salt}-byte PSS salt, "
                                    f"not the {self.max_salt_length(hash_method)} bytes asked for")


def _settings_of(conf: Any) -> TransitSettings:
    """Settings given as such, or from imgsign.conf's ``[transit]`` (oslo.config; None: none) and the environment."""
    return conf if isinstance(conf, TransitSettings) else settings(getattr(conf, "transit", None))


def open_key(reference: str, conf: Any = None, ask_secret: Any = None) -> TransitPrivateKey:
    """The transit key ``reference`` names, at its latest version (its public key read from the service).

    ``conf``: :class:`TransitSettings`, or imgsign.conf (oslo.config) or None; ``ask_secret`` is unused
    (the token comes from the environment or the token file, never from a prompt).
    """
    name = parse_reference(reference)
    client = TransitClient(_settings_of(conf))
    data = client.call("GET", f"keys/{name}")
    return _key_from(client, name, data)


def _key_from(client: TransitClient, name: str, data: Mapping[str, Any]) -> TransitPrivateKey:
    version, transit_type, pem = key_version_of(data)
    if transit_type not in SIGNING_KEY_TYPES:
        why = {"ecdsa-p256": "OpenStack has no key type for P-256",
               "ed25519": "OpenStack has no key type for Ed25519"}.get(transit_type, "it cannot sign")
        raise MechanismUnsupported(f"{SCHEME}{name} in {client.where} has key type {_show(transit_type, 30)}: {why} "
                                   f"(use {', '.join(SIGNING_KEY_TYPES)})")
    if data.get("supports_signing") is False:
        raise MechanismUnsupported(f"{SCHEME}{name} in {client.where} does not support signing")
    return TransitPrivateKey(client, name, version, transit_type, pem)


def transit_key_type(key_type: KeyType, bits: int | None) -> str:
    """The transit key type to create for an OpenStack key type (RSA: ``bits``, default 3072)."""
    if key_type is KeyType.RSA_PSS:
        size = 3072 if bits is None else bits
        name = f"rsa-{size}"
        if name not in SIGNING_KEY_TYPES:
            raise MechanismUnsupported(f"transit makes RSA keys of 2048, 3072 or 4096 bits, not {size}")
        return name
    if bits is not None:
        raise InputError(f"--bits does not apply to {key_type.value}: the curve sets the key size")
    for name, (kind, _) in SIGNING_KEY_TYPES.items():
        if kind is key_type:
            return name
    raise MechanismUnsupported(f"transit cannot make {key_type.value} keys (it makes RSA-PSS, ECC_SECP384R1 and "
                               f"ECC_SECP521R1 signing keys)")


def generate_key(reference: str, key_type: KeyType, bits: int | None, conf: Any = None,
                 ask_secret: Any = None) -> TransitPrivateKey:
    """Create a new non-exportable key in transit and open it; an existing key of that name is refused."""
    name = parse_reference(reference)
    transit_type = transit_key_type(key_type, bits)
    client = TransitClient(_settings_of(conf))
    try:
        client.call("GET", f"keys/{name}")
    except SigningKeyNotFound:
        pass
    else:
        raise InputError(f"{reference} already exists in {client.where}: imgsign never reuses a key as a new one "
                         f"(choose another name)")
    client.call("POST", f"keys/{name}", {"type": transit_type, "exportable": False,
                                         "allow_plaintext_backup": False})
    data = client.call("GET", f"keys/{name}")
    if data.get("exportable") is not False or data.get("type") != transit_type or data.get("latest_version") != 1:
        raise SignerRefused(f"{reference} in {client.where} is not the new non-exportable {transit_type} key "
                            f"imgsign asked for (created meanwhile by someone else?)")
    return _key_from(client, name, data)

