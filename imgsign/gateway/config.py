"""``gateway.conf``: the gateway's settings, in the hook's INI style (``/etc/imgsign/gateway.conf``)::

    [gateway]
    # Where nova-compute reaches the gateway ([glance] endpoint_override = http://127.0.0.1:9293).
    # Loopback only.
    listen = 127.0.0.1:9293
    # The real Glance. https, or http only to a Glance on this host's loopback.
    glance_url = https://glance.example.net:9292
    # CA certificates (PEM) that Glance's TLS certificate must chain to; default: the system's.
    ca_file = /etc/imgsign/glance-ca.pem
    # Seconds to connect to Glance, and the most a request may wait for Glance's next bytes.
    connect_timeout = 30
    read_timeout = 600

    [signing]
    # Without this section the gateway only forwards.  The host's key: a key file, a pkcs11: URI
    # (a TPM through tpm2-pkcs11) or hashivault://NAME; its certificate (PEM) from the compute CA.
    key = /etc/imgsign/host.key
    certificate = /etc/imgsign/host.pem
    # Empty (the default): the certificate is stored in each image owner's project in the key manager
    # when first needed, where Glance's and Nova's checks read it.  Set: this id is used as it is.
    certificate_id =
    hash_method = SHA-256
    # imgsign.conf: the key manager that holds base images' certificates (their fingerprints go into
    # the provenance), and the pkcs11/transit sections for the key.
    key_manager_config = /etc/imgsign/imgsign.conf
    # This host's name as Nova knows it ([DEFAULT] host); default: the system's host name.
    host = compute-1
    # A queued snapshot whose instance is not defined on this host: pass (upload it unsigned) or refuse.
    unmatched = pass
    libvirt_uri = qemu:///system
    # Seconds to wait for Glance to import (and check) a signed snapshot.
    import_timeout = 3600
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
import re
import socket
import urllib.parse

from imgsign._internal import redact
from imgsign.algorithms import HashMethod
from imgsign.errors import ImgsignError, InputError

DEFAULT_CONFIG = "/etc/imgsign/gateway.conf"
#: A host name as the provenance states it (imgsign.gateway.provenance).
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
DEFAULT_PORT = 9293
_OPTIONS = {"listen", "glance_url", "ca_file", "connect_timeout", "read_timeout"}
_SIGNING_OPTIONS = {"key", "certificate", "certificate_id", "hash_method", "key_manager_config", "host", "unmatched",
                    "libvirt_uri", "import_timeout"}


@dataclasses.dataclass(frozen=True)
class SigningConfig:
    """``[signing]``: the host's key and what the gateway signs."""

    key: str
    certificate: str
    certificate_id: str | None = None
    hash_method: HashMethod = HashMethod.SHA256
    key_manager_config: str | None = None
    host: str = dataclasses.field(default_factory=socket.gethostname)
    refuse_unmatched: bool = False
    libvirt_uri: str = "qemu:///system"
    import_timeout: float = 3600.0


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """What ``gateway.conf`` says, checked."""

    glance_url: str  # scheme://host[:port][/path], no trailing slash
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    ca_file: str | None = None
    connect_timeout: float = 30.0
    read_timeout: float = 600.0
    path: str | None = None
    signing: SigningConfig | None = None


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (127.0.0.0/8, ::1) or ``localhost``?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _seconds(path: str, section: configparser.SectionProxy, name: str, default: float) -> float:
    text = section.get(name, f"{default:g}").strip()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise InputError(f"{path}: [{section.name}] {name} must be a number of seconds (more than 0, under a day), "
                         f"not {text[:40]!r}")
    return value


def _signing(path: str, section: configparser.SectionProxy) -> SigningConfig:
    unknown = sorted(set(section) - _SIGNING_OPTIONS)
    if unknown:
        raise InputError(f"{path}: unknown [signing] option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_SIGNING_OPTIONS))})")
    values = {name: section.get(name, "").strip() for name in ("key", "certificate")}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InputError(f"{path}: [signing] needs {', '.join(missing)}")
    try:
        hash_method = HashMethod.parse(section.get("hash_method", "SHA-256").strip())
    except ImgsignError as exc:
        raise InputError(f"{path}: [signing] hash_method: {exc}") from None
    unmatched = section.get("unmatched", "pass").strip()
    if unmatched not in ("pass", "refuse"):
        raise InputError(f"{path}: [signing] unmatched must be pass or refuse, not {unmatched[:40]!r}")
    key_manager = section.get("key_manager_config", "").strip() or None
    if key_manager is not None and not os.path.isfile(key_manager):
        raise InputError(f"{path}: [signing] key_manager_config {key_manager} is not a readable file")
    host = section.get("host", "").strip() or socket.gethostname()
    if not _HOST.fullmatch(host):
        raise InputError(f"{path}: [signing] host {host[:80]!r} is not a host name (letters, digits, '.', '_', '-'); "
                         f"set it to Nova's [DEFAULT] host")
    return SigningConfig(values["key"], values["certificate"], section.get("certificate_id", "").strip() or None,
                         hash_method, key_manager,
                         host, unmatched == "refuse", section.get("libvirt_uri", "qemu:///system").strip(),
                         _seconds(path, section, "import_timeout", 3600.0))


def _listen(path: str, text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"{path}: [gateway] listen must be HOST:PORT, not {text[:80]!r}")
    host = host.strip("[]")
    if not is_loopback(host):
        raise InputError(f"{path}: [gateway] listen must be a loopback address (127.0.0.1, ::1): the gateway "
                         f"forwards tokens and signs uploads for whoever reaches it, not {host[:80]!r}")
    return host, int(port_text)


def _glance_url(path: str, text: str) -> str:
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("https", "http") or not parsed.hostname or parsed.query or parsed.fragment \
            or parsed.username or parsed.password:
        raise InputError(f"{path}: [gateway] glance_url must be https://HOST[:PORT][/PATH] (no credentials, query "
                         f"or fragment), not {text[:120]!r}")
    try:
        parsed.port  # noqa: B018 (a bad port raises)
    except ValueError:
        raise InputError(f"{path}: [gateway] glance_url has an invalid port: {text[:120]!r}") from None
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise InputError(f"{path}: [gateway] glance_url must use https (tokens and images cross the network); "
                         f"plain http only reaches a Glance on this host's loopback")
    return text.rstrip("/")


def load_config(path: str | None = None) -> GatewayConfig:
    """Read and check ``gateway.conf`` (``$IMGSIGN_GATEWAY_CONFIG``, default ``/etc/imgsign/gateway.conf``)."""
    path = path or os.environ.get("IMGSIGN_GATEWAY_CONFIG") or DEFAULT_CONFIG
    redact.remember_file(path)
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",), interpolation=None)
    try:
        with open(path) as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise InputError(f"gateway configuration {path} does not exist") from None
    except (OSError, UnicodeError, configparser.Error) as exc:
        raise InputError(f"cannot read gateway configuration {path}: {redact.describe_parse_error(exc)}") from None
    if not parser.has_section("gateway"):
        raise InputError(f"{path} has no [gateway] section")
    section = parser["gateway"]
    unknown = sorted(set(section) - _OPTIONS)
    if unknown:
        raise InputError(f"{path}: unknown [gateway] option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_OPTIONS))})")
    glance = section.get("glance_url", "").strip()
    if not glance:
        raise InputError(f"{path}: [gateway] glance_url is required")
    host, port = _listen(path, section.get("listen", f"127.0.0.1:{DEFAULT_PORT}").strip())
    ca_file = section.get("ca_file", "").strip() or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InputError(f"{path}: [gateway] ca_file {ca_file} is not a readable file")
    return GatewayConfig(
        glance_url=_glance_url(path, glance), listen_host=host, listen_port=port, ca_file=ca_file,
        connect_timeout=_seconds(path, section, "connect_timeout", 30.0),
        read_timeout=_seconds(path, section, "read_timeout", 600.0), path=path,
        signing=_signing(path, parser["signing"]) if parser.has_section("signing") else None,
    )
