"""The trust policy: which signers imgsign trusts, for which images, and how strictly.

A pure module: it parses a policy document (already read: text or a mapping), selects the one
rule that applies to an image from what OpenStack knows of it (:class:`ImageFacts`), and decides
from the verification evidence the caller gathered for that rule (:class:`Evidence`, see
:mod:`imgsign.trust_evidence`).  Nothing here opens a file, a socket or a key manager.

The model follows notation's trust policy (scopes, trust stores, trusted identities, verification
levels ``strict`` / ``permissive`` / ``audit`` / ``skip`` with overrides), over OpenStack's scopes:

* a rule's **scope** selects on the image owner project, its visibility, its ``image_type``
  (``image``, ``snapshot``, ``backup``) and, on the compute side, the booting project (a list of
  project ids, or ``owner``: the project that owns the image);
* **exactly one rule applies**: among the rules whose scope selects the image, the most specific
  one, where scope A is more specific than B when every value A allows is one B allows.  The
  parser refuses two scopes that could select the same image when neither is more specific
  (overlapping) or that are equal, so that most specific rule is always unique.  The catch-all
  scope ``"*"`` selects every image; it may not be ``skip``.  With no catch-all, an image no scope
  selects is refused;
* a **level** sets one action (``enforce``, ``log``, ``skip``) per check, and ``override`` changes
  the ``expiry``, ``revocation`` and ``timestamp`` ones:

  ============  =========  ===========  ========  ==========  =========
  level         integrity  authenticity expiry    revocation  timestamp
  ============  =========  ===========  ========  ==========  =========
  strict        enforce    enforce      enforce   enforce     enforce
  permissive    enforce    enforce      log       log         log
  audit         enforce    log          log       log         log
  skip          skip       skip         skip      skip        skip
  ============  =========  ===========  ========  ==========  =========

  integrity (the signature matches the data) and authenticity (the signer chains to one of the
  rule's trust stores and is one of its trusted identities) cannot be overridden.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
from collections.abc import Callable, Mapping, Sequence

from imgsign.errors import ImgsignError, PolicyRefused, ProvenanceError, TrustPolicyError, UnsignedImage

#: ``typing.TYPE_CHECKING`` without importing typing (the boot hook imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The only document version understood.
VERSION = 1
VISIBILITIES = ("public", "private", "shared", "community")
IMAGE_TYPES = ("image", "snapshot", "backup")
#: ``bootingProject: owner``: booted by the project that owns the image.
OWNER = "owner"
CATCH_ALL = "*"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_FINGERPRINT = re.compile(r"(?:sha256:)?([0-9a-f]{2}(?::?[0-9a-f]{2}){31})")
_KEY_MANAGER_ID = re.compile(r"[\x21-\x7e]{1,255}")
#: Most rules and trust stores a document may hold; most entries in one list.
MAX_ITEMS = 1000


class Level(str, enum.Enum):
    STRICT = "strict"
    PERMISSIVE = "permissive"
    AUDIT = "audit"
    SKIP = "skip"


class Action(str, enum.Enum):
    ENFORCE = "enforce"
    LOG = "log"
    SKIP = "skip"


#: The checks a level sets an action for; ``OVERRIDABLE`` the ones ``override`` may change.
CHECKS = ("integrity", "authenticity", "expiry", "revocation", "timestamp")
OVERRIDABLE = ("expiry", "revocation", "timestamp")
_E, _L, _S = Action.ENFORCE, Action.LOG, Action.SKIP
LEVEL_ACTIONS: dict[Level, dict[str, Action]] = {
    Level.STRICT: dict(zip(CHECKS, (_E, _E, _E, _E, _E), strict=True)),
    Level.PERMISSIVE: dict(zip(CHECKS, (_E, _E, _L, _L, _L), strict=True)),
    Level.AUDIT: dict(zip(CHECKS, (_E, _L, _L, _L, _L), strict=True)),
    Level.SKIP: dict(zip(CHECKS, (_S, _S, _S, _S, _S), strict=True)),
}


# --- the parsed policy --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrustStore:
    """Certificates a rule trusts: ``type`` ``ca`` (signers' CAs) or ``tsa`` (timestamp authorities),
    by file and by key-manager id, with untrusted intermediates and CRLs (files) for path building."""

    name: str
    type: str = "ca"
    certificate_files: tuple[str, ...] = ()
    key_manager_ids: tuple[str, ...] = ()
    intermediate_files: tuple[str, ...] = ()
    crl_files: tuple[str, ...] = ()
    require_crls: bool = False
    max_chain_depth: int | None = None


@dataclasses.dataclass(frozen=True)
class Identity:
    """One trusted identity of the signing certificate: ``kind`` is ``subject`` (``value`` the set of
    its attributes, as ``(dotted OID, value)`` pairs, in ``attributes``), ``sanUri``, ``sanDns`` or
    ``fingerprint`` (SHA-256 of the DER, lower-case hex without colons)."""

    kind: str
    value: str
    attributes: frozenset[tuple[str, str]] = frozenset()

    def describe(self) -> str:
        return f"{self.kind} {self.value}"


@dataclasses.dataclass(frozen=True)
class Scope:
    """What a rule selects; ``None`` in a field: any value.  ``catch_all``: the ``"*"`` scope."""

    owner: frozenset[str] | None = None
    visibility: frozenset[str] | None = None
    image_type: frozenset[str] | None = None
    booting_project: frozenset[str] | None = None

    FIELDS = ("owner", "visibility", "image_type", "booting_project")

    @property
    def catch_all(self) -> bool:
        return all(getattr(self, f) is None for f in self.FIELDS)

    def values(self) -> tuple[frozenset[str] | None, ...]:
        return tuple(getattr(self, f) for f in self.FIELDS)

    def within(self, other: Scope) -> bool:
        """Every value this scope allows, ``other`` allows too (field by field)."""
        return all(theirs is None or (mine is not None and mine <= theirs)
                   for mine, theirs in zip(self.values(), other.values(), strict=True))

    def may_meet(self, other: Scope) -> bool:
        """Could one image be selected by both?  (``bootingProject: owner`` counts as meeting any
        non-empty list of projects: a conservative answer, so that no overlap goes unnoticed.)"""
        for name, mine, theirs in zip(self.FIELDS, self.values(), other.values(), strict=True):
            if mine is None or theirs is None:
                continue
            if name == "booting_project" and (OWNER in mine) != (OWNER in theirs):
                continue
            if not mine & theirs:
                return False
        return True

    def describe(self) -> str:
        if self.catch_all:
            return "every image (catch-all)"
        words = {"owner": "owner project", "visibility": "visibility", "image_type": "image_type",
                 "booting_project": "booting project"}
        parts = []
        for field in self.FIELDS:
            values = getattr(self, field)
            if values is None:
                continue
            named = sorted(v for v in values if not (field == "booting_project" and v == OWNER))
            if field == "booting_project" and OWNER in values:
                named.insert(0, "the image's owner")
            parts.append(f"{words[field]} in {', '.join(named)}")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class HostSigned:
    """A rule's ``hostSigned``: the image was made and signed by a compute host (``imgsign gateway``).

    The image must carry a provenance statement (:mod:`imgsign.provenance`) that verifies with
    the signer's key and names this image and its digest; the project it states must be the image's
    owner and, at boot, the booting project; and it must name a base image whose signer chained, when
    the snapshot was made, to one of ``base_trust_stores`` and is one of ``base_identities`` (None: any).
    """

    base_trust_stores: tuple[TrustStore, ...]
    base_identities: tuple[Identity, ...] | None = None


#: The URI SAN of a compute host's certificate: ``openstack://<cloud>/nova-compute/<host>``.  Such a
#: certificate vouches only under a ``hostSigned`` rule, whatever CA stores another rule names.
HOST_URI = re.compile(r"openstack://[^/]+/nova-compute/[^/]+")


def is_host_certificate(signer: SignerIdentity | None) -> bool:
    """The signer is a compute host (a ``openstack://<cloud>/nova-compute/<host>`` URI SAN)."""
    return signer is not None and any(HOST_URI.fullmatch(uri) for uri in signer.san_uris)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One trust policy rule; ``actions`` holds the level's action per check after the overrides."""

    name: str
    scope: Scope
    level: Level
    trust_stores: tuple[TrustStore, ...] = ()
    #: None: any identity (``"*"``); else the signer must match one of them.
    trusted_identities: tuple[Identity, ...] | None = None
    overrides: Mapping[str, Action] = dataclasses.field(default_factory=dict)
    #: Where the rule is (``rules[3]`` in a file, ``built-in`` for the flat options).
    origin: str = ""
    #: Only images a compute host signed, with their provenance (``hostSigned``); None: any signer.
    host_signed: HostSigned | None = None

    @property
    def actions(self) -> dict[str, Action]:
        actions = dict(LEVEL_ACTIONS[self.level])
        if self.level is not Level.SKIP:
            actions.update(self.overrides)
        return actions

    @property
    def ca_stores(self) -> tuple[TrustStore, ...]:
        return tuple(s for s in self.trust_stores if s.type == "ca")

    @property
    def tsa_stores(self) -> tuple[TrustStore, ...]:
        """The timestamp authorities' stores (for RFC 3161 timestamp verification by the caller)."""
        return tuple(s for s in self.trust_stores if s.type == "tsa")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "origin": self.origin, "scope": self.scope.describe(), "level": self.level.value,
            "actions": {k: v.value for k, v in self.actions.items()},
            "trust_stores": [s.name for s in self.trust_stores],
            "trusted_identities": None if self.trusted_identities is None
            else [i.describe() for i in self.trusted_identities],
            "host_signed": None if self.host_signed is None else {
                "base_trust_stores": [s.name for s in self.host_signed.base_trust_stores],
                "base_identities": None if self.host_signed.base_identities is None
                else [i.describe() for i in self.host_signed.base_identities]},
        }


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    rules: tuple[Rule, ...]
    #: Where it came from (a file name, or ``built-in``).
    source: str = "built-in"

    @property
    def catch_all(self) -> Rule | None:
        return next((r for r in self.rules if r.scope.catch_all), None)


# --- parsing -----------------------------------------------------------------------------------------------

class _Invalid(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


def _keys(value: object, where: str, required: Sequence[str], optional: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(where, f"must be a mapping, not {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(where, f"has a key that is not text: {str(key)[:60]!r}")
        if key not in required and key not in optional:
            raise _Invalid(f"{where}.{key}" if where else key,
                           f"unknown key (known: {', '.join([*required, *optional])})")
    for key in required:
        if key not in value:
            raise _Invalid(where or "the document", f"lacks the required key {key!r}")
    return value


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number",
            float: "a number", type(None): "empty"}.get(type(value), type(value).__name__)


def _text(value: object, where: str, pattern: re.Pattern[str] | None = None, what: str = "text") -> str:
    if not isinstance(value, str):
        raise _Invalid(where, f"must be {what}, not {_kind(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _Invalid(where, f"{value[:80]!r} is not {what}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(where, f"must be a list, not {_kind(value)}")
    if len(value) > MAX_ITEMS:
        raise _Invalid(where, f"has more than {MAX_ITEMS} entries")
    return value


def _texts(value: object, where: str, pattern: re.Pattern[str] | None = None, what: str = "text",
           choices: Sequence[str] | None = None) -> tuple[str, ...]:
    items = _list(value, where)
    if not items:
        raise _Invalid(where, "must not be empty")
    found: list[str] = []
    for i, item in enumerate(items):
        text = _text(item, f"{where}[{i}]", pattern, what)
        if choices is not None and text not in choices:
            raise _Invalid(f"{where}[{i}]", f"{text[:80]!r} is not one of {', '.join(choices)}")
        if text in found:
            raise _Invalid(f"{where}[{i}]", f"{text[:80]!r} is listed twice")
        found.append(text)
    return tuple(found)


def _path(value: object, where: str) -> str:
    text = _text(value, where, what="a file path")
    if not text or "\x00" in text or len(text) > 4096:
        raise _Invalid(where, "is not a usable file path")
    return text


def _trust_store(name: str, value: object, where: str) -> TrustStore:
    body = _keys(value, where, (), ("type", "certificates", "keyManager", "intermediates", "crls", "requireCrls",
                                    "maxChainDepth"))
    kind = _text(body.get("type", "ca"), f"{where}.type")
    if kind not in ("ca", "tsa"):
        raise _Invalid(f"{where}.type", f"{kind[:40]!r} is not ca or tsa")
    files = tuple(_path(v, f"{where}.certificates[{i}]")
                  for i, v in enumerate(_list(body.get("certificates", []), f"{where}.certificates")))
    ids = tuple(_text(v, f"{where}.keyManager[{i}]", _KEY_MANAGER_ID, "a key-manager id")
                for i, v in enumerate(_list(body.get("keyManager", []), f"{where}.keyManager")))
    if not files and not ids:
        raise _Invalid(where, "names no certificate: give certificates (files) or keyManager (ids)")
    intermediates = tuple(_path(v, f"{where}.intermediates[{i}]")
                          for i, v in enumerate(_list(body.get("intermediates", []), f"{where}.intermediates")))
    crls = tuple(_path(v, f"{where}.crls[{i}]") for i, v in enumerate(_list(body.get("crls", []), f"{where}.crls")))
    require = body.get("requireCrls", False)
    if not isinstance(require, bool):
        raise _Invalid(f"{where}.requireCrls", f"must be true or false, not {_kind(require)}")
    depth = body.get("maxChainDepth")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 255):
        raise _Invalid(f"{where}.maxChainDepth", "must be a whole number from 0 to 255")
    return TrustStore(name, kind, files, ids, intermediates, crls, require, depth)


def _identity(value: object, where: str) -> Identity:
    body = _keys(value, where, (), ("subject", "sanUri", "sanDns", "fingerprint"))
    if len(body) != 1:
        raise _Invalid(where, "must have exactly one of subject, sanUri, sanDns, fingerprint")
    ((kind, raw),) = body.items()
    text = _text(raw, f"{where}.{kind}")
    if not text.strip() or len(text) > 1024:
        raise _Invalid(f"{where}.{kind}", "must not be empty (or longer than 1024 characters)")
    if kind == "subject":
        return Identity(kind, text, subject_attributes_of_text(text, f"{where}.{kind}"))
    if kind == "fingerprint":
        match = _FINGERPRINT.fullmatch(text.lower())
        if match is None:
            raise _Invalid(f"{where}.{kind}", "must be a SHA-256 fingerprint: 64 hex digits (colons and a sha256: "
                                              "prefix allowed)")
        return Identity(kind, match.group(1).replace(":", ""))
    if kind == "sanDns":
        return Identity(kind, text.lower())
    return Identity(kind, text)


def subject_attributes_of_text(text: str, where: str = "subject") -> frozenset[tuple[str, str]]:
    """The attributes of an RFC 4514 name, as ``(dotted OID, value)`` pairs."""
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(text)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise _Invalid(where, f"{text[:80]!r} is not an RFC 4514 name ({str(exc)[:80]})") from None
    attributes = frozenset((a.oid.dotted_string, str(a.value)) for a in name)
    if not attributes:
        raise _Invalid(where, "is an empty name")
    return attributes


def _scope(value: object, where: str) -> Scope:
    if value == CATCH_ALL:
        return Scope()
    if isinstance(value, dict) and not value:
        raise _Invalid(where, "is empty: write \"*\" for the catch-all scope")
    body = _keys(value, where, (), ("owner", "visibility", "imageType", "bootingProject"))
    fields: dict[str, frozenset[str] | None] = {}
    for key, field, pattern, what, choices in (
            ("owner", "owner", _PROJECT, "a project id", None),
            ("visibility", "visibility", None, "a visibility", VISIBILITIES),
            ("imageType", "image_type", None, "an image type", IMAGE_TYPES),
            ("bootingProject", "booting_project", _PROJECT, "a project id or owner", None)):
        if key in body:
            raw = body[key]
            fields[field] = frozenset(_texts([raw] if isinstance(raw, str) else raw, f"{where}.{key}", pattern,
                                             what, choices))
    return Scope(**fields)


def _rule(value: object, where: str, stores: Mapping[str, TrustStore]) -> Rule:
    body = _keys(value, where, ("name", "scope", "level"),
                 ("trustStores", "trustedIdentities", "override", "hostSigned"))
    name = _text(body["name"], f"{where}.name", _NAME, "a name (letters, digits, . _ -; at most 64)")
    scope = _scope(body["scope"], f"{where}.scope")
    level_text = _text(body["level"], f"{where}.level")
    try:
        level = Level(level_text)
    except ValueError:
        raise _Invalid(f"{where}.level", f"{level_text[:40]!r} is not a level: strict, permissive, audit or "
                                          "skip") from None
    if level is Level.SKIP and scope.catch_all:
        raise _Invalid(f"{where}.level", "the catch-all scope \"*\" may not skip verification")
    overrides: dict[str, Action] = {}
    for key, raw in _keys(body.get("override", {}), f"{where}.override", (), OVERRIDABLE).items():
        action_text = _text(raw, f"{where}.override.{key}")
        try:
            overrides[key] = Action(action_text)
        except ValueError:
            raise _Invalid(f"{where}.override.{key}", f"{action_text[:40]!r} is not enforce, log or skip") from None
    if level is Level.SKIP:
        for key in ("trustStores", "trustedIdentities", "override", "hostSigned"):
            if key in body:
                raise _Invalid(f"{where}.{key}", "means nothing under level skip (nothing is verified): remove it")
        return Rule(name, scope, level, origin=where)
    if "trustStores" not in body or "trustedIdentities" not in body:
        raise _Invalid(where, f"level {level.value} needs trustStores and trustedIdentities")
    chosen = _store_list(body["trustStores"], f"{where}.trustStores", stores)
    identities = _identities(body["trustedIdentities"], f"{where}.trustedIdentities")
    host_signed = None
    if "hostSigned" in body:
        inner = f"{where}.hostSigned"
        host = _keys(body["hostSigned"], inner, ("baseTrustStores",), ("baseIdentities",))
        base_stores = _store_list(host["baseTrustStores"], f"{inner}.baseTrustStores", stores)
        if any(s.type != "ca" for s in base_stores):
            raise _Invalid(f"{inner}.baseTrustStores", "names a tsa store: the base image's signer chains to CAs")
        host_signed = HostSigned(base_stores, _identities(host.get("baseIdentities", [CATCH_ALL]),
                                                          f"{inner}.baseIdentities"))
    return Rule(name, scope, level, chosen, identities, overrides, where, host_signed)


def _store_list(value: object, where: str, stores: Mapping[str, TrustStore]) -> tuple[TrustStore, ...]:
    names = _texts(value, where, _NAME, "a trust store name")
    for i, store in enumerate(names):
        if store not in stores:
            raise _Invalid(f"{where}[{i}]", f"no trust store is named {store!r}")
    chosen = tuple(stores[n] for n in names)
    if not any(s.type == "ca" for s in chosen):
        raise _Invalid(where, "names no trust store of type ca (the signers' CAs)")
    return chosen


def _identities(value: object, where: str) -> tuple[Identity, ...] | None:
    """None for ``"*"`` (any identity the stores vouch for)."""
    if value == [CATCH_ALL] or value == CATCH_ALL:
        return None
    items = _list(value, where)
    if not items:
        raise _Invalid(where, "must not be empty (\"*\" trusts any identity the trust stores vouch for)")
    identities = tuple(_identity(v, f"{where}[{i}]") for i, v in enumerate(items))
    if len(set(identities)) != len(identities):
        raise _Invalid(where, "lists an identity twice")
    return identities


def parse_policy(document: object, source: str = "policy") -> TrustPolicy:
    """A :class:`TrustPolicy` from a parsed document; :class:`TrustPolicyError` names what is wrong, and where."""
    try:
        return _parse(document, source)
    except _Invalid as exc:
        raise TrustPolicyError(f"trust policy {source}: {exc}") from None
    except RecursionError:
        raise TrustPolicyError(f"trust policy {source}: nested too deeply") from None


def _parse(document: object, source: str) -> TrustPolicy:
    body = _keys(document, "", ("version", "rules"), ("trustStores",))
    version = body["version"]
    if isinstance(version, bool) or version != VERSION:
        raise _Invalid("version", f"must be {VERSION}")
    raw_stores = body.get("trustStores", {})
    if not isinstance(raw_stores, dict):
        raise _Invalid("trustStores", f"must be a mapping of names to trust stores, not {_kind(raw_stores)}")
    if len(raw_stores) > MAX_ITEMS:
        raise _Invalid("trustStores", f"has more than {MAX_ITEMS} entries")
    stores: dict[str, TrustStore] = {}
    for name, value in raw_stores.items():
        where = f"trustStores.{str(name)[:64]}"
        _text(name, where, _NAME, "a trust store name (letters, digits, . _ -; at most 64)")
        stores[name] = _trust_store(name, value, where)
    raw_rules = _list(body["rules"], "rules")
    if not raw_rules:
        raise _Invalid("rules", "must not be empty")
    rules = tuple(_rule(v, f"rules[{i}]", stores) for i, v in enumerate(raw_rules))
    for i, rule in enumerate(rules):
        for j in range(i):
            other = rules[j]
            if rule.name == other.name:
                raise _Invalid(f"rules[{i}].name", f"{rule.name!r} is also the name of rules[{j}]")
            if rule.scope == other.scope:
                raise _Invalid(f"rules[{i}].scope", f"is the same scope as rules[{j}] ({other.name}): "
                                                    "exactly one rule must apply to an image")
            if rule.scope.may_meet(other.scope) and not rule.scope.within(other.scope) \
                    and not other.scope.within(rule.scope):
                raise _Invalid(f"rules[{i}].scope", f"overlaps the scope of rules[{j}] ({other.name}): an image "
                                                    "could be selected by both and neither is more specific")
    used = {s.name for r in rules for s in r.trust_stores}
    used |= {s.name for r in rules if r.host_signed for s in r.host_signed.base_trust_stores}
    for name in stores:
        if name not in used:
            raise _Invalid(f"trustStores.{name}", "is used by no rule (a misspelt name?)")
    return TrustPolicy(rules, source)


class _NoDuplicatesLoader:
    """Built lazily: a yaml SafeLoader refusing duplicate keys and aliases."""

    cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.cls is None:
            import yaml

            class Loader(yaml.SafeLoader):  # type: ignore[misc]
                def compose_node(self, parent: Any, index: Any) -> Any:
                    if self.check_event(yaml.AliasEvent):
                        event = self.peek_event()
                        raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed"
                                             f"{_mark(event.start_mark)}")
                    return super().compose_node(parent, index)

                def construct_mapping(self, node: Any, deep: bool = False) -> Any:
                    seen: set[object] = set()
                    for key_node, _ in node.value:
                        key = self.construct_object(key_node, deep=True)
                        try:
                            duplicate = key in seen
                            seen.add(key)
                        except TypeError:
                            raise yaml.YAMLError(f"a mapping key is not text{_mark(key_node.start_mark)}") from None
                        if duplicate:
                            raise yaml.YAMLError(f"duplicate key {str(key)[:60]!r}{_mark(key_node.start_mark)}")
                    return super().construct_mapping(node, deep)

            cls.cls = Loader
        return cls.cls


def _mark(mark: Any) -> str:
    return "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"


def load_policy_text(text: bytes | str, source: str = "policy") -> TrustPolicy:
    """Parse a policy document: YAML (PyYAML's safe loader, with duplicate keys and aliases refused),
    so JSON too."""
    return parse_policy(decode_policy_text(text, source), source)


def decode_policy_text(text: bytes | str, source: str = "policy") -> object:
    """The document a policy file's text decodes to (YAML, so JSON too), not yet validated
    (:func:`parse_policy` does that); :class:`TrustPolicyError` when it is not usable YAML."""
    import yaml

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise TrustPolicyError(f"trust policy {source} is not UTF-8 text") from None
    try:
        document = yaml.load(text, Loader=_NoDuplicatesLoader.get())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TrustPolicyError(f"trust policy {source} is not valid YAML: {str(exc)[:300]}") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise TrustPolicyError(f"trust policy {source} is not usable YAML ({type(exc).__name__})") from None
    return document


# --- the built-in policy of the flat options ------------------------------------------------------------

def builtin_policy(trusted: bool, require_crls: bool = False) -> TrustPolicy:
    """The policy ``--trusted`` / ``trusted_certificate_ids`` mean: one catch-all strict rule whose trust
    store is those certificates (``trusted``); without any (``trusted`` False), a catch-all rule that
    checks the signature and the signing certificate but no chain, as imgsign did before trust policies."""
    stores = (TrustStore("trusted", require_crls=require_crls),) if trusted else ()
    return TrustPolicy((Rule("built-in", Scope(), Level.STRICT, stores, None, {}, "built-in"),), "built-in")


# --- selection ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """What OpenStack knows of an image (Glance's record; the booting project on the compute side).

    Unknown fields are None: a scope that names values for one never selects the image.
    ``image_type`` is Glance's ``image_type`` property, ``image`` when it has none.
    """

    owner: str | None = None
    visibility: str | None = None
    image_type: str = "image"
    booting_project: str | None = None
    image_id: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, object], booting_project: str | None = None) -> ImageFacts:
        """From a Glance image record (its properties at the top level, as the v2 API gives them) or
        ``openstack image show -f json`` output (properties under ``properties``)."""
        def text(value: object) -> str | None:
            return value if isinstance(value, str) and value else None

        properties = record.get("properties")
        image_type = text(record.get("image_type"))
        if image_type is None and isinstance(properties, Mapping):
            image_type = text(properties.get("image_type"))
        return cls(text(record.get("owner")), text(record.get("visibility")), image_type or "image",
                   booting_project, text(record.get("id")))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _matches(scope: Scope, facts: ImageFacts) -> bool:
    for field in Scope.FIELDS:
        allowed = getattr(scope, field)
        if allowed is None:
            continue
        value = getattr(facts, field)
        if field == "booting_project" and value is not None and facts.owner is not None \
                and OWNER in allowed and value == facts.owner:
            continue
        if value is None or value not in allowed:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class Selection:
    """The rule that applies to an image, and why."""

    rule: Rule
    facts: ImageFacts
    #: The other rules whose scope selects the image too (all less specific).
    also_matching: tuple[str, ...]
    reasons: tuple[str, ...]


def select(policy: TrustPolicy, facts: ImageFacts) -> Selection:
    """The one rule that applies to ``facts``: the most specific scope selecting it.

    Raises :class:`PolicyRefused` when no scope selects it (a policy with no catch-all).
    """
    matching = [r for r in policy.rules if _matches(r.scope, facts)]
    if not matching:
        raise PolicyRefused(f"no rule of trust policy {policy.source} selects image {facts.image_id or '(file)'} "
                            f"({_describe_facts(facts)}) and it has no catch-all \"*\" rule")
    best = [r for r in matching if all(r.scope.within(o.scope) for o in matching)]
    if len(best) != 1:  # parse_policy makes this impossible; a hand-built policy may not
        raise PolicyRefused(f"trust policy {policy.source}: rules {', '.join(r.name for r in matching)} all select "
                            "the image and none is the most specific")
    rule = best[0]
    others = tuple(r.name for r in matching if r is not rule)
    reasons = [f"image {facts.image_id or '(file)'}: {_describe_facts(facts)}",
               f"rule {rule.name} ({rule.origin}) applies: its scope is {rule.scope.describe()}"]
    if others:
        reasons.append(f"it is more specific than the other rule(s) selecting the image: {', '.join(others)}")
    elif not rule.scope.catch_all:
        reasons.append("it is the only rule whose scope selects the image")
    return Selection(rule, facts, others, tuple(reasons))


def _describe_facts(facts: ImageFacts) -> str:
    parts = [f"owner {facts.owner or 'unknown'}", f"visibility {facts.visibility or 'unknown'}",
             f"image_type {facts.image_type}"]
    parts.append(f"booted by project {facts.booting_project}" if facts.booting_project else "not booting")
    return ", ".join(parts)


# --- evidence and decisions -------------------------------------------------------------------------------

class Status(str, enum.Enum):
    """The outcome of one check as the caller found it."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_CHECKED = "not-checked"


@dataclasses.dataclass(frozen=True)
class SignerIdentity:
    """The signing certificate's identity: RFC 4514 subject and its attributes, SAN URIs and DNS
    names, SHA-256 fingerprint (lower-case hex)."""

    subject: str
    subject_attributes: frozenset[tuple[str, str]]
    san_uris: frozenset[str] = frozenset()
    san_dns: frozenset[str] = frozenset()
    fingerprint: str = ""


@dataclasses.dataclass(frozen=True)
class Check:
    """One check's evidence: its status and, when it failed, the error that says why."""

    status: Status = Status.NOT_CHECKED
    error: ImgsignError | None = None

    @classmethod
    def passed(cls) -> Check:
        return cls(Status.PASSED)

    @classmethod
    def failed(cls, error: ImgsignError) -> Check:
        return cls(Status.FAILED, error)


@dataclasses.dataclass(frozen=True)
class TimestampEvidence:
    """An RFC 3161 timestamp over the signature, as the caller verified it against the rule's TSA stores
    (:attr:`Rule.tsa_stores`).  ``check`` failed: a token is there but does not verify; ``signed_at``:
    the time it proves (a PASSED check), inside the signer's validity period when ``within_validity``."""

    check: Check
    signed_at: datetime.datetime | None = None
    within_validity: bool = False


@dataclasses.dataclass(frozen=True)
class ProvenanceEvidence:
    """A host-signed image's provenance statement, as the caller verified it (for a ``hostSigned`` rule).

    ``check`` PASSED: the statement verifies with the signer's key and names this image and the digest
    ``img_signature`` signs (:func:`imgsign.provenance.verify_provenance`); FAILED (with the
    reason) or NOT_CHECKED (no statement).  ``project_id``, ``host``, ``base_image_id``: what it states
    (None when it names no base).  ``base``: PASSED when the base's certificate is the one the statement
    names and chained to the rule's ``baseTrustStores`` when the snapshot was made; ``base_signer`` that
    certificate's identity (matched against ``baseIdentities`` here).
    """

    check: Check = Check()
    project_id: str | None = None
    host: str | None = None
    base_image_id: str | None = None
    base: Check = Check()
    base_signer: SignerIdentity | None = None


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What the caller found for the selected rule.

    ``signed``: the image carries img_signature* properties; ``chain``: the signer chains to the
    rule's CA stores at some moment of its validity (FAILED: no such path at all);
    ``dates``: every certificate on that path is valid now (FAILED: one is not; the error is what a
    strict check raises); ``revocation``: CRLs (and OCSP, when a caller checks it) say nothing on
    the path is revoked; ``signer``: the signing certificate's identity; ``timestamp``: an RFC 3161
    timestamp, or None when there is none (or nothing checks them yet).
    """

    signed: bool = True
    signer: SignerIdentity | None = None
    chain: Check = Check()
    dates: Check = Check()
    revocation: Check = Check()
    timestamp: TimestampEvidence | None = None
    #: The subjects on the validated path, signer first (for reports).
    path: tuple[str, ...] = ()
    #: The earliest notAfter on that path (for reports of certificates expiring soon).
    not_after: datetime.datetime | None = None
    #: The provenance statement of a host-signed image (gathered for ``hostSigned`` rules only).
    provenance: ProvenanceEvidence | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """A check that did not pass, and what the rule's action made of it."""

    check: str
    action: Action
    error: ImgsignError

    @property
    def reason(self) -> str:
        return self.error.reason

    @property
    def message(self) -> str:
        return self.error.message

    @property
    def exit_code(self) -> int:
        return self.error.exit_code

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "action": self.action.value, "reason": self.reason, "message": self.message,
                "exit_code": self.exit_code}


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict on one image under one rule.

    ``allowed``: it may be used; ``trusted``: every check the rule does not skip passed (an image
    ``allowed`` but not ``trusted`` passes only because the rule logs that failure: audit,
    permissive, or an override); ``verify_integrity``: the signature must still be checked against
    the data (False only under ``skip``); ``findings``: the checks that failed, enforced or logged.
    """

    rule: Rule
    allowed: bool
    trusted: bool
    verify_integrity: bool
    reasons: tuple[str, ...]
    findings: tuple[Finding, ...] = ()
    error: ImgsignError | None = None

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.action is Action.LOG)

    @property
    def verdict(self) -> str:
        if not self.allowed:
            return "refused"
        if self.rule.level is Level.SKIP:
            return "skipped"
        return "trusted" if self.trusted else "allowed-with-warnings"

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.name, "level": self.rule.level.value, "verdict": self.verdict,
                "allowed": self.allowed, "trusted": self.trusted, "verify_integrity": self.verify_integrity,
                "reasons": list(self.reasons), "findings": [f.as_dict() for f in self.findings]}


def identity_matches(identity: Identity, signer: SignerIdentity) -> bool:
    if identity.kind == "subject":
        return identity.attributes == signer.subject_attributes
    if identity.kind == "sanUri":
        return identity.value in signer.san_uris
    if identity.kind == "sanDns":
        return identity.value in {d.lower() for d in signer.san_dns}
    if identity.kind == "fingerprint":
        return bool(signer.fingerprint) and identity.value == signer.fingerprint.lower()
    return False


def decide(selection: Selection, evidence: Evidence) -> Decision:
    """Apply the selected rule to the evidence (never raises)."""
    rule = selection.rule
    actions = rule.actions
    reasons = list(selection.reasons)
    reasons.append(f"level {rule.level.value}: " + ", ".join(f"{k} {v.value}" for k, v in actions.items()))
    if rule.level is Level.SKIP:
        reasons.append("nothing is verified under skip")
        return Decision(rule, True, False, False, tuple(reasons))
    findings: list[Finding] = []

    def failed(check: str, error: ImgsignError, action: Action | None = None) -> None:
        findings.append(Finding(check, action or actions[check], error))

    if not evidence.signed:
        failed("authenticity", UnsignedImage(f"image {selection.facts.image_id or '(file)'} is not signed: it has "
                                             "no img_signature* properties"))
        return _finish(rule, reasons, findings, integrity=False)
    if rule.ca_stores:
        chain_ok = evidence.chain.status is Status.PASSED
        if not chain_ok:
            failed("authenticity", evidence.chain.error or PolicyRefused(
                f"the signer's chain to the trust store(s) of rule {rule.name} was not checked"))
        elif rule.trusted_identities is not None:
            signer = evidence.signer
            if signer is None or not any(identity_matches(i, signer) for i in rule.trusted_identities):
                failed("authenticity", PolicyRefused(
                    f"the signer {signer.subject if signer else '(unknown)'} is not one of the trusted identities "
                    f"of rule {rule.name} ({'; '.join(i.describe() for i in rule.trusted_identities)})"))
        reasons.append(f"trust stores: {', '.join(s.name for s in rule.ca_stores)}; "
                       f"chain {evidence.chain.status.value}")
    else:
        reasons.append("no trust store: the signer's chain is not checked (flat options without --trusted)")
    if rule.host_signed is not None:
        _decide_host_signed(rule, selection.facts, evidence, reasons, failed)
    elif evidence.signer is not None and is_host_certificate(evidence.signer):
        failed("authenticity", PolicyRefused(
            f"the signer {evidence.signer.subject} is a compute host (URI SAN openstack://.../nova-compute/...), and "
            f"rule {rule.name} is no hostSigned rule: a host's signature vouches only under one"))
    timestamp_ok = False
    stamp = evidence.timestamp
    if stamp is not None and actions["timestamp"] is not Action.SKIP:
        if stamp.check.status is Status.FAILED:
            failed("timestamp", stamp.check.error or PolicyRefused("the signature's timestamp does not verify"))
        elif stamp.check.status is Status.PASSED:
            timestamp_ok = stamp.within_validity
            reasons.append(f"timestamp: signed at {stamp.signed_at:%Y-%m-%d %H:%M:%S} UTC"
                           if stamp.signed_at else "timestamp verified")
    if actions["expiry"] is not Action.SKIP and evidence.dates.status is Status.FAILED and not timestamp_ok:
        failed("expiry", evidence.dates.error or PolicyRefused("a certificate is outside its validity period"))
    elif evidence.dates.status is Status.FAILED and timestamp_ok:
        reasons.append("a certificate is outside its validity period now, but the signature was timestamped "
                       "while it was valid")
    if actions["revocation"] is not Action.SKIP and evidence.revocation.status is Status.FAILED:
        failed("revocation", evidence.revocation.error or PolicyRefused("revocation could not be checked"))
    return _finish(rule, reasons, findings, integrity=True)


def check_host_signed(rule: Rule, facts: ImageFacts,
                      proof: ProvenanceEvidence | None) -> tuple[ImgsignError | None, str]:
    """The ``hostSigned`` checks of ``rule`` (a rule with ``host_signed``) on the provenance evidence: (the
    error that refuses the image, or None; a sentence saying what was found).  :func:`decide` counts the
    error as an authenticity failure; ``imgsign policy explain`` shows both."""
    host = rule.host_signed
    if host is None:
        return None, f"rule {rule.name} is no hostSigned rule: a provenance statement is not needed"
    if proof is None or proof.check.status is not Status.PASSED:
        error = (proof.check.error if proof is not None else None) or ProvenanceError(
            f"rule {rule.name} trusts only host-signed images with a verified provenance statement, and the "
            "image's was not checked")
        return error, f"provenance: {error.message}"
    if proof.project_id is None or facts.owner is None or proof.project_id != facts.owner:
        error = ProvenanceError(
            f"the provenance says project {proof.project_id} made the image, but its owner is "
            f"{facts.owner or 'unknown'}: a host signature vouches only inside the project that made the image")
    elif facts.booting_project is not None and facts.booting_project != proof.project_id:
        error = ProvenanceError(
            f"project {facts.booting_project} boots an image host-signed for project {proof.project_id}: a host "
            "signature vouches only inside the project that made the image")
    elif proof.base_image_id is None:
        error = ProvenanceError(
            f"the provenance names no signed base image: rule {rule.name} requires a snapshot's base to have been "
            "trusted when it was made")
    elif proof.base.status is not Status.PASSED:
        error = proof.base.error or ProvenanceError(
            f"the base image {proof.base_image_id} was not checked against rule {rule.name}'s baseTrustStores")
    elif host.base_identities is not None and (proof.base_signer is None or not any(
            identity_matches(i, proof.base_signer) for i in host.base_identities)):
        error = ProvenanceError(
            f"the base image {proof.base_image_id} was signed by "
            f"{proof.base_signer.subject if proof.base_signer else '(unknown)'}, not one of the baseIdentities of "
            f"rule {rule.name}")
    else:
        return None, (f"host-signed on {proof.host or 'an unnamed host'} for project {proof.project_id} from base "
                      f"{proof.base_image_id} (its signer chained to "
                      f"{', '.join(s.name for s in host.base_trust_stores)})")
    return error, f"provenance: {error.message}"


def _decide_host_signed(rule: Rule, facts: ImageFacts, evidence: Evidence, reasons: list[str],
                        failed: Callable[[str, ImgsignError], None]) -> None:
    """The ``hostSigned`` checks: every failure is an authenticity failure."""
    error, reason = check_host_signed(rule, facts, evidence.provenance)
    if error is not None:
        failed("authenticity", error)
    else:
        reasons.append(reason)


def _finish(rule: Rule, reasons: list[str], findings: list[Finding], integrity: bool) -> Decision:
    enforced = [f for f in findings if f.action is Action.ENFORCE]
    error = None
    if enforced:
        first = enforced[0]
        error = first.error
        reasons.append(f"refused: {first.check} ({first.reason})")
    elif findings:
        reasons.append("allowed: " + "; ".join(f"{f.check} failed but is only logged under {rule.level.value}"
                                               for f in findings))
    else:
        reasons.append("trusted: every check passed")
    return Decision(rule, not enforced, not findings, integrity, tuple(reasons), tuple(findings), error)


def enforce(decision: Decision) -> Decision:
    """``decision`` when it allows the image; else raise the error of its first enforced failure."""
    if not decision.allowed:
        raise decision.error or PolicyRefused(f"rule {decision.rule.name} refuses the image")
    return decision


def verify(policy: TrustPolicy, facts: ImageFacts, evidence_for: Callable[[Rule], Evidence]) -> Decision:
    """Select the rule for ``facts``, gather its evidence (``evidence_for(rule)``, not called under
    ``skip``) and return the decision, or raise the error of the check that refuses the image."""
    selection = select(policy, facts)
    evidence = Evidence() if selection.rule.level is Level.SKIP else evidence_for(selection.rule)
    return enforce(decide(selection, evidence))
