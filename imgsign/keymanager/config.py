"""``imgsign.conf``: which key manager to use, in castellan's own terms.

One oslo.config file with castellan's sections (``[key_manager]``, ``[vault]``,
``[barbican]``) plus ``[imgsign]``, ``[imgsign_embedded]``, ``[pkcs11]`` (keys in a token) and
``[transit]`` (signing keys in OpenBao/Vault transit, :func:`transit_opts`).  With nothing
configured the embedded SQLite backend is used.  The file is the first of:
``--config``, ``$IMGSIGN_CONFIG``, ``/etc/imgsign/imgsign.conf``,
``~/.config/imgsign/imgsign.conf``.  ``$IMGSIGN_KEYSTORE`` overrides the
embedded store's path when the file does not set it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from imgsign._internal import redact
from imgsign.errors import InputError, KeyManagerError

if TYPE_CHECKING:  # castellan and oslo load only when a key manager or a config file is used
    from oslo_config import cfg

    from imgsign.keymanager.castellan_store import CastellanStore

EMBEDDED = "imgsign"
SEARCH_PATH = ("/etc/imgsign/imgsign.conf", "~/.config/imgsign/imgsign.conf")



def _imgsign_opts() -> list[cfg.Opt]:
    from oslo_config import cfg

    return [
        cfg.StrOpt("project_id", default="default",
                   help="Project (owner) under which imgsign stores and reads objects in the key manager."),
        cfg.ListOpt("trusted_certificate_ids", default=[],
                    help="Key-manager ids of trusted CA certificates: when set, `imgsign verify` requires the "
                         "signing certificate to chain to one of them (like Nova's "
                         "default_trusted_certificate_ids). --trusted replaces the list."),
        cfg.IntOpt("max_chain_depth", default=8, min=0, max=255,
                   help="Most intermediate CAs between the signing and a trusted certificate."),
        cfg.BoolOpt("require_crls", default=False,
                    help="Refuse a chain when an issuer on it has no complete CRL in scope "
                         "(files or stored ones; delta, partitioned and indirect CRLs do not count)."),
    ]


def _pkcs11_opts() -> list[cfg.Opt]:
    from oslo_config import cfg

    return [
        cfg.StrOpt("module_path",
                   help="PKCS#11 module (shared library) for --key pkcs11:... URIs without module-path, "
                        "e.g. /usr/lib/softhsm/libsofthsm2.so."),
        cfg.StrOpt("pin_source",
                   help="File holding the token's user PIN (file:/path or /path), for URIs without "
                        "pin-source or pin-value."),
    ]


def transit_opts() -> list[cfg.Opt]:
    """``[transit]``: the OpenBao/Vault transit engine that holds ``hashivault://`` signing keys.
    ``BAO_*``/``VAULT_*`` environment variables take precedence (see :func:`imgsign.keys.transit.settings`)."""
    from oslo_config import cfg

    return [
        cfg.StrOpt("address", help="URL of OpenBao/Vault, e.g. https://bao.example:8200 (VAULT_ADDR, BAO_ADDR)."),
        cfg.StrOpt("mount", default="transit", help="Mount path of the transit engine (TRANSIT_SECRET_ENGINE_PATH)."),
        cfg.StrOpt("token_file", help="File whose first line is the token (VAULT_TOKEN, BAO_TOKEN take precedence)."),
        cfg.StrOpt("ca_file", help="CA certificates (PEM) to verify the server's TLS certificate (VAULT_CACERT)."),
        cfg.StrOpt("namespace", help="Namespace of the transit engine (VAULT_NAMESPACE, BAO_NAMESPACE)."),
        cfg.FloatOpt("timeout", default=30.0, min=0.1, help="Seconds to wait for each call to the service."),
    ]


def find_config_file(explicit: str | None = None) -> str | None:
    """The configuration file to read, or None to run on defaults."""
    if explicit:
        if not os.path.isfile(explicit):
            raise InputError(f"configuration file {explicit} does not exist")
        return explicit
    from_env = os.environ.get("IMGSIGN_CONFIG")
    if from_env:
        if not os.path.isfile(from_env):
            raise InputError(f"IMGSIGN_CONFIG names {from_env}, which does not exist")
        return from_env
    for candidate in SEARCH_PATH:
        path = os.path.expanduser(candidate)
        if os.path.isfile(path):
            return path
    return None


def load(config_file: str | None = None) -> cfg.ConfigOpts:
    """Read the configuration into a private ConfigOpts (never the global one)."""
    from castellan import options as castellan_options
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf.register_opts(_imgsign_opts(), group="imgsign")
    conf.register_opts(_pkcs11_opts(), group="pkcs11")
    conf.register_opts(transit_opts(), group="transit")
    castellan_options.set_defaults(conf, backend=EMBEDDED)
    path = find_config_file(config_file)
    redact.remember_file(path)  # before oslo.config parses it: no error may quote a secret in it
    try:
        conf(args=[], project="imgsign", default_config_files=[path] if path else [], validate_default_values=True)
    except cfg.Error as exc:
        raise InputError(f"cannot read configuration {path}: {describe_error(exc)}") from None
    conf.imgsign_config_file = path  # type: ignore[attr-defined]
    return conf


def describe_error(exc: BaseException) -> str:
    """An oslo.config or keystoneauth error about a configuration, never quoting a line of it nor what
    follows a ``$`` (oslo.config takes ``pa$sword`` for a reference to an option "sword")."""
    from oslo_config import cfg

    if isinstance(exc, (cfg.ConfigFileParseError, cfg.ParseError)):
        return redact.describe_parse_error(exc)
    if isinstance(exc, (cfg.NoSuchOptError, cfg.TemplateSubstitutionError)):
        return ("a value holds a '$' that does not name another option (oslo.config substitutes $name and "
                "${name}; write $$ for a '$')")
    return f"{type(exc).__name__}: {exc}"


def backend_name(conf: cfg.ConfigOpts) -> str:
    return str(conf.key_manager.backend)


def open_store(conf: cfg.ConfigOpts) -> CastellanStore:
    """The configured key manager, for the configured project."""
    from castellan import key_manager
    from oslo_context import context as oslo_context

    from imgsign.keymanager.castellan_store import CastellanStore

    name = backend_name(conf)
    where = f"(config {conf.imgsign_config_file})" if getattr(conf, "imgsign_config_file", None) else "(defaults)"
    known = installed_backends()
    if name not in known and "." not in name:
        raise KeyManagerError(
            f"no castellan key manager backend {name!r}, set by [key_manager] backend {where}; "
            f"installed: {', '.join(sorted(known))}"
        )
    try:
        manager = key_manager.API(conf)
    except Exception as exc:  # noqa: BLE001 - stevedore/import/backend construction errors
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise KeyManagerError(
            f"cannot start key manager backend {name!r} set by [key_manager] backend {where}: {detail}"
        ) from None
    context = oslo_context.RequestContext(project_id=conf.imgsign.project_id)
    return CastellanStore(manager, context, describe_backend(conf, manager))


def installed_backends() -> set[str]:
    """Names registered in castellan's ``castellan.drivers`` entry-point group."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="castellan.drivers")}


def describe_backend(conf: cfg.ConfigOpts, manager: object) -> str:
    name = backend_name(conf)
    if name == EMBEDDED:
        return f"embedded key manager ({getattr(manager, 'path', '?')})"
    if name == "vault":
        return f"vault key manager ({conf.vault.vault_url}, [vault] settings)"
    if name == "barbican":
        endpoint = conf.barbican.barbican_endpoint or "endpoint from the catalog"
        return f"barbican key manager ({endpoint}, [barbican] settings)"
    return f"{name} key manager"
