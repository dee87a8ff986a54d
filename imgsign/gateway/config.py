"""``gateway.conf``: the gateway's settings, an oslo.config file like imgsign's others (typed options, a
sample made by oslo-config-generator, namespace ``imgsign.gateway``; comments on lines of their own)::

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

import dataclasses
import ipaddress
import os
import re
import socket
import urllib.parse
from typing import Any

from imgsign._internal import redact
from imgsign.algorithms import HashMethod
from imgsign.errors import InputError

DEFAULT_CONFIG = "/etc/imgsign/gateway.conf"
#: A host name as the provenance states it (imgsign.provenance).
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
DEFAULT_PORT = 9293


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
    #: Remove ``locations`` and ``direct_url`` from the image records nova-compute reads
    #: (:mod:`imgsign.gateway.locations`).
    hide_locations: bool = True


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


def gateway_opts() -> list[Any]:
    """``[gateway]``."""
    from oslo_config import cfg

    from imgsign.conf import Seconds

    return [
        cfg.StrOpt("listen", default=f"127.0.0.1:{DEFAULT_PORT}",
                   help="HOST:PORT where nova-compute reaches the gateway ([glance] endpoint_override); a loopback "
                        "address only: the gateway forwards tokens and signs uploads for whoever reaches it."),
        cfg.StrOpt("glance_url",
                   help="The real Glance (required): https://HOST[:PORT][/PATH], or http only to a Glance on this "
                        "host's loopback."),
        cfg.StrOpt("ca_file", help="CA certificates (PEM) Glance's TLS certificate must chain to (default: the "
                                   "system's)."),
        cfg.Opt("connect_timeout", type=Seconds(positive=True, max=86400), default=30.0,
                help="Seconds to connect to Glance."),
        cfg.Opt("read_timeout", type=Seconds(positive=True, max=86400), default=600.0,
                help="The most seconds a request may wait for Glance's next bytes."),
    ]


def signing_opts() -> list[Any]:
    """``[signing]`` (without it the gateway only forwards)."""
    from oslo_config import cfg

    from imgsign.conf import Seconds

    return [
        cfg.StrOpt("key", help="The host's key: a key file, a pkcs11: URI (a TPM through tpm2-pkcs11) or "
                               "hashivault://NAME (required in [signing])."),
        cfg.StrOpt("certificate", help="The host's certificate (PEM) from the compute CA (required in [signing])."),
        cfg.StrOpt("certificate_id",
                   help="Key-manager id of the host certificate; empty: it is stored in each image owner's project "
                        "when first needed, where Glance's and Nova's checks read it."),
        cfg.StrOpt("hash_method", default="SHA-256", choices=[m.value for m in HashMethod],
                   help="img_signature_hash_method of the host's signatures."),
        cfg.StrOpt("key_manager_config",
                   help="imgsign.conf: the key manager that holds base images' certificates, and the pkcs11/transit "
                        "sections for the key."),
        cfg.StrOpt("host", help="This host's name as Nova knows it ([DEFAULT] host); default: the system's."),
        cfg.StrOpt("unmatched", default="pass",
                   choices=[("pass", "upload it unsigned"), ("refuse", "refuse the upload")],
                   help="A queued snapshot whose instance is not defined on this host."),
        cfg.StrOpt("libvirt_uri", default="qemu:///system", help="libvirt to ask (read-only) which domains exist."),
        cfg.Opt("import_timeout", type=Seconds(positive=True, max=86400), default=3600.0,
                help="Seconds to wait for Glance to import (and check) a signed snapshot."),
        cfg.BoolOpt("hide_locations", default=True,
                    help="Remove locations and direct_url from the image records nova-compute reads, so that Nova "
                         "on Ceph (RBD) downloads images (verified by the boot hook) instead of cloning them, and "
                         "snapshots by uploading (signed here) instead of an RBD direct snapshot."),
    ]


def list_opts() -> list[tuple[str, list[Any]]]:
    """gateway.conf's sections, for oslo-config-generator (namespace ``imgsign.gateway``)."""
    return [("gateway", gateway_opts()), ("signing", signing_opts())]


def _signing(path: str, section: Any) -> SigningConfig:
    values = {name: (section[name] or "").strip() for name in ("key", "certificate")}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InputError(f"{path}: [signing] needs {', '.join(missing)}")
    key_manager = (section.key_manager_config or "").strip() or None
    if key_manager is not None and not os.path.isfile(key_manager):
        raise InputError(f"{path}: [signing] key_manager_config {key_manager} is not a readable file")
    host = (section.host or "").strip() or socket.gethostname()
    if not _HOST.fullmatch(host):
        raise InputError(f"{path}: [signing] host {host[:80]!r} is not a host name (letters, digits, '.', '_', '-'); "
                         f"set it to Nova's [DEFAULT] host")
    return SigningConfig(values["key"], values["certificate"], (section.certificate_id or "").strip() or None,
                         HashMethod.parse(section.hash_method), key_manager, host, section.unmatched == "refuse",
                         section.libvirt_uri.strip(), float(section.import_timeout), bool(section.hide_locations))


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
    """Read and check ``gateway.conf`` (``$IMGSIGN_GATEWAY_CONFIG``, default ``/etc/imgsign/gateway.conf``).

    Every value is typed and checked by oslo.config at start (an invalid one names the option and the
    file, never the value), a name that is no option is refused, then what types cannot say: a loopback
    listen address, Glance's URL, the files named."""
    from oslo_config import cfg

    from imgsign.conf import check_values, raw_sections
    from imgsign.keymanager.config import describe_error

    path = path or os.environ.get("IMGSIGN_GATEWAY_CONFIG") or DEFAULT_CONFIG
    redact.remember_file(path)
    if not os.path.exists(path):
        raise InputError(f"gateway configuration {path} does not exist")
    try:
        raw = raw_sections(path)
    except InputError as exc:
        raise InputError(f"cannot read gateway configuration {path}: {exc.message}") from None
    sections = {name.lower(): values for name, values in raw.items()}
    if "gateway" not in sections:
        raise InputError(f"{path} has no [gateway] section")
    for group, options in list_opts():
        known = {option.dest for option in options}
        unknown = sorted(set(sections.get(group, {})) - known)
        if unknown:
            raise InputError(f"{path}: unknown [{group}] option(s) {', '.join(name[:60] for name in unknown[:5])} "
                             f"(known: {', '.join(sorted(known))})")
    conf = cfg.ConfigOpts()
    for group, options in list_opts():
        conf.register_opts(options, group=group)
    try:
        conf(args=[], project="imgsign", default_config_files=[path], use_env=False)
    except cfg.Error as exc:
        raise InputError(f"cannot read gateway configuration {path}: {describe_error(exc)}") from None
    check_values(conf, path, ["gateway", "signing"], raw=raw)
    gateway = conf.gateway
    glance = (gateway.glance_url or "").strip()
    if not glance:
        raise InputError(f"{path}: [gateway] glance_url is required")
    host, port = _listen(path, gateway.listen.strip())
    ca_file = (gateway.ca_file or "").strip() or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InputError(f"{path}: [gateway] ca_file {ca_file} is not a readable file")
    return GatewayConfig(
        glance_url=_glance_url(path, glance), listen_host=host, listen_port=port, ca_file=ca_file,
        connect_timeout=float(gateway.connect_timeout), read_timeout=float(gateway.read_timeout), path=path,
        signing=_signing(path, conf.signing) if "signing" in sections else None,
    )
