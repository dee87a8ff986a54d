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

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgsign._internal import redact
from imgsign.errors import InputError, KeyManagerError

if TYPE_CHECKING:  # castellan and oslo load only when a key manager or a config file is used
    from keystoneauth1.session import Session
    from oslo_config import cfg

    from imgsign.keymanager.castellan_store import CastellanStore

EMBEDDED = "imgsign"
SEARCH_PATH = ("/etc/imgsign/imgsign.conf", "~/.config/imgsign/imgsign.conf")
#: The key-manager project without a Keystone session and without ``[imgsign] project_id``.
DEFAULT_PROJECT = "default"
#: Backends that authenticate every call with the caller's Keystone token (the project is the token's).
KEYSTONE_BACKENDS = frozenset({"barbican"})


@dataclass(frozen=True)
class KeystoneScope:
    """A Keystone session and the project its token is scoped to (what Glance and Nova see as the project)."""

    session: Session
    #: The cloud's name in clouds.yaml ("envvars" for OS_* alone), for messages.
    cloud: str
    project_id: str
    project_name: str | None

    @classmethod
    def of(cls, session: Session, cloud: str) -> KeystoneScope | None:
        """Authenticate ``session`` (if it has not yet) and read its token's project; None for an auth type
        without a Keystone token to read one from (``admin_token``, ``none``: a token and an endpoint only).
        Keystone refusing or unreachable is :class:`~imgsign.errors.GlanceUnavailable`, as for Glance calls."""
        from keystoneauth1 import exceptions as ks

        from imgsign.errors import GlanceUnavailable

        get_access = getattr(session.auth, "get_access", None)
        if get_access is None:
            return None
        try:
            access = get_access(session)
        except ks.ClientException as exc:
            raise GlanceUnavailable(f"cannot authenticate with cloud {cloud!r} to learn its token's project: "
                                    f"{type(exc).__name__}: {_one_line(exc)}") from None
        project_id = getattr(access, "project_id", None)
        if not project_id:
            raise InputError(f"the Keystone token of cloud {cloud!r} is not scoped to a project (give a "
                             f"project_name or project_id in its auth): the key manager needs a project")
        return cls(session, cloud, str(project_id), getattr(access, "project_name", None))


@dataclass(frozen=True)
class Project:
    """The key-manager project a command works in, and where that choice came from."""

    id: str
    name: str | None
    #: Where the id came from: ``[imgsign] project_id in FILE``, a cloud's token, imgsign's default.
    source: str
    #: ``id`` holds a project *name* (credentials that name their project): Keystone resolves it at login.
    by_name: bool = False

    def __str__(self) -> str:
        if self.name and self.name != self.id:
            return f"project {self.name} ({self.id})"
        return f"project {self.id}"


def resolve_project(conf: cfg.ConfigOpts, scope: KeystoneScope | None) -> Project:
    """``[imgsign] project_id`` if set, else the Keystone token's project, else ``default``."""
    configured = conf.imgsign.project_id
    if configured:
        name = scope.project_name if scope is not None and scope.project_id == configured else None
        where = getattr(conf, "imgsign_config_file", None)
        return Project(configured, name, f"[imgsign] project_id in {where}" if where else "[imgsign] project_id")
    if scope is not None:
        return Project(scope.project_id, scope.project_name, f"the Keystone token of cloud {scope.cloud!r}")
    return Project(DEFAULT_PROJECT, None, "imgsign's default (no Keystone session, no [imgsign] project_id)")


def check_project_for_glance(project: Project, scope: KeystoneScope) -> None:
    """Glance (and Nova) read an image's certificate as the uploader's token's project: refuse another one."""
    if project.id == scope.project_id or (project.by_name and project.id == scope.project_name):
        return
    token = Project(scope.project_id, scope.project_name, "")
    hint = (f"{project.id!r} is that project's name; the key manager needs its id"
            if scope.project_name and project.id == scope.project_name
            else "the image's certificate would be stored where Glance does not look")
    raise InputError(f"the key-manager project is {project} ({project.source}), but Glance reads certificates "
                     f"as {token}, the project of the token of cloud {scope.cloud!r}: {hint}; set "
                     f"[imgsign] project_id = {scope.project_id}, or remove it to use the token's project")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__



def _imgsign_opts() -> list[cfg.Opt]:
    from oslo_config import cfg

    return [
        cfg.StrOpt("project_id",
                   help="Project (owner, a Keystone project id) under which imgsign stores and reads objects in "
                        "the key manager. Default: the project of the command's Keystone session (clouds.yaml, "
                        "OS_*, --os-cloud) when it has one, else 'default'."),
        cfg.ListOpt("trusted_certificate_ids", default=[],
                    help="Key-manager ids of trusted CA certificates: when set, imgsign verify requires the "
                         "signing certificate to chain to one of them (like Nova's "
                         "default_trusted_certificate_ids). --trusted replaces the list."),
        cfg.StrOpt("policy_file",
                    help="Trust policy file (YAML or JSON; doc/source/user/trust-policy.md): which signers are "
                         "trusted for which images. Replaces trusted_certificate_ids (set one or the other); "
                         "--policy and --trusted replace it."),
        cfg.IntOpt("max_chain_depth", default=8, min=0, max=255,
                   help="Most intermediate CAs between the signing and a trusted certificate."),
        cfg.BoolOpt("require_crls", default=False,
                    help="Refuse a chain when an issuer on it has no complete CRL in scope "
                         "(files or stored ones; delta, partitioned and indirect CRLs do not count)."),
        cfg.StrOpt("tsa_url",
                   help="RFC 3161 time-stamping authority (http:// or https:// URL): `imgsign sign` and "
                        "`upload` add a timestamp token over the signature (imgsign_tst_v1). --tsa overrides it."),
        cfg.StrOpt("tsa_hash", default="SHA-256", choices=["SHA-256", "SHA-512"],
                   help="Hash of the signature sent to the TSA (the timestamp's message imprint)."),
        cfg.FloatOpt("tsa_timeout", default=30.0, min=0.1,
                     help="Seconds the whole exchange with the TSA may take when signing."),
        cfg.StrOpt("tsa_ca_file",
                   help="PEM file of trusted TSA certificates: `verify` honours a timestamp token only when its "
                        "TSA chains to one of them (a signature whose certificate has since expired then "
                        "verifies if it was timestamped while the certificate was valid); `sign` checks the "
                        "token it gets against them. --tsa-ca overrides it."),
        cfg.StrOpt("ocsp", default="strict", choices=["strict", "offline", "off"],
                   help="OCSP for certificates that name a responder (authorityInfoAccess): strict uses the "
                        "response stored with the signature when current, else asks the responder, and refuses "
                        "when it cannot be reached and no complete CRL covers the certificate; offline is the "
                        "same without the network (hosts with no route to the responder); off uses CRLs only."),
        cfg.FloatOpt("ocsp_timeout", default=10.0, min=0.1,
                     help="Seconds each exchange with an OCSP responder may take."),
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


def register_opts(conf: cfg.ConfigOpts) -> None:
    """imgsign.conf's options (castellan's with the embedded backend as default), on ``conf``."""
    from castellan import options as castellan_options
    from castellan.common import utils as castellan_utils

    from imgsign.keymanager import embedded

    conf.register_opts(_imgsign_opts(), group="imgsign")
    conf.register_opts(embedded.OPTS, group=embedded.GROUP)
    conf.register_opts(_pkcs11_opts(), group="pkcs11")
    conf.register_opts(transit_opts(), group="transit")
    castellan_options.set_defaults(conf, backend=EMBEDDED)
    conf.register_opts(castellan_utils.credential_opts, group="key_manager")  # [key_manager] auth_type...


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """imgsign.conf's sections, for oslo-config-generator (namespace ``imgsign``): imgsign's own, and
    castellan's (``[key_manager]``, ``[barbican]``, ``[vault]``...) with imgsign's default backend."""
    import copy

    from castellan import options as castellan_options
    from castellan.common import utils as castellan_utils

    from imgsign.keymanager import embedded

    listing: list[tuple[str, list[cfg.Opt]]] = [
        ("imgsign", _imgsign_opts()), ("pkcs11", _pkcs11_opts()), ("transit", transit_opts()),
        (embedded.GROUP, list(embedded.OPTS))]
    for group, options in castellan_options.list_opts():
        options = [copy.copy(option) for option in options]
        for option in options:
            if group == "key_manager" and option.dest == "backend":
                option.default = EMBEDDED
        listing.append((str(group), options))
    listing.append(("key_manager", list(castellan_utils.credential_opts)))
    return listing


def load(config_file: str | None = None) -> cfg.ConfigOpts:
    """Read the configuration into a private ConfigOpts (never the global one)."""
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    register_opts(conf)
    return parse(conf, find_config_file(config_file))


def parse(conf: cfg.ConfigOpts, path: str | None, *, use_env: bool = True) -> cfg.ConfigOpts:
    """Parse ``path`` (None: defaults only) into ``conf``, whose options are registered, and check every
    value of every registered option (:func:`imgsign.conf.check_values`): an invalid one is an
    :class:`InputError` naming the option and the file, never quoting the value."""
    from oslo_config import cfg

    from imgsign.conf import check_values, raw_sections

    redact.remember_file(path)  # before oslo.config parses it: no error may quote a secret in it
    raw = raw_sections(path) if path else None
    try:
        conf(args=[], project="imgsign", default_config_files=[path] if path else [],
             validate_default_values=True, use_env=use_env)
    except cfg.Error as exc:
        raise InputError(f"cannot read configuration {path}: {describe_error(exc)}") from None
    check_values(conf, path, raw=raw)
    conf.imgsign_config_file = path  # type: ignore[attr-defined]
    return conf


def describe_error(exc: BaseException) -> str:
    """An oslo.config or keystoneauth error about a configuration, never quoting a line of it nor what
    follows a ``$`` (:func:`imgsign.conf.describe_error`)."""
    from imgsign.conf import describe_error as describe

    return describe(exc)


def backend_name(conf: cfg.ConfigOpts) -> str:
    return str(conf.key_manager.backend)


def project_matters(conf: cfg.ConfigOpts) -> bool:
    """Does the backend file objects by project (castellan's vault backend ignores the request context)?"""
    return backend_name(conf) != "vault"


def has_credentials(conf: cfg.ConfigOpts) -> bool:
    """Does the file give castellan credentials of its own (``[key_manager] auth_type``, a service's way)?
    They take precedence over a command's Keystone session (the file is specific to the key manager)."""
    return backend_name(conf) != EMBEDDED and bool(conf.key_manager.auth_type)


def needs_keystone(conf: cfg.ConfigOpts) -> bool:
    """Does opening the key manager need the command's Keystone session (for its project or its token)?"""
    if has_credentials(conf) or not project_matters(conf):
        return False
    return not conf.imgsign.project_id or backend_name(conf) in KEYSTONE_BACKENDS


def open_store(conf: cfg.ConfigOpts, scope: KeystoneScope | None = None) -> CastellanStore:
    """The configured key manager, for the project :func:`resolve_project` chooses.

    With a Keystone ``scope`` (a command's clouds.yaml/OS_* session), castellan gets a request
    context carrying that session's keystoneauth plugin, so Barbican is called with the user's
    token; otherwise castellan's ``credential_factory`` reads ``[key_manager] auth_type`` and the
    keystoneauth options of the config file (as services configure it), and without those a bare
    context names the project (the embedded store and Vault need nothing more).
    """
    from castellan import key_manager

    from imgsign.keymanager.castellan_store import CastellanStore

    _quiet_client_loggers()

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
    if has_credentials(conf):
        scope = None
    project = resolve_project(conf, scope)
    if scope is None and has_credentials(conf):
        project = _credentials_project(conf, project)
    if scope is not None and name in KEYSTONE_BACKENDS and project.id != scope.project_id:
        # Barbican files every secret under the token's project, whatever the context says.
        raise KeyManagerError(
            f"[key_manager] backend {name!r} works in the project of the Keystone token, "
            f"{Project(scope.project_id, scope.project_name, '')} (cloud {scope.cloud!r}), not {project} "
            f"({project.source}): remove [imgsign] project_id, or use credentials scoped to that project")
    context = _context(conf, name, project, scope)
    return CastellanStore(manager, context, f"{describe_backend(conf, manager)}, {project}", project=project)


def _context(conf: cfg.ConfigOpts, backend: str, project: Project, scope: KeystoneScope | None) -> Any:
    """The castellan context: the session's plugin, else the config file's credentials, else the bare project."""
    from oslo_context import context as oslo_context

    if scope is not None:
        return _session_context(scope, project_id=project.id, project_name=project.name)
    if has_credentials(conf):
        from castellan.common import utils as castellan_utils

        try:
            return castellan_utils.credential_factory(conf=conf)
        except Exception as exc:  # noqa: BLE001 - castellan's credential errors are of several kinds
            raise KeyManagerError(f"the [key_manager] credentials for backend {backend!r} are not usable: "
                                  f"{_one_line(exc)}") from None
    return oslo_context.RequestContext(project_id=project.id)


def _credentials_project(conf: cfg.ConfigOpts, fallback: Project) -> Project:
    """The project of ``[key_manager]``'s own credentials (a service's), as far as the file names it."""
    options = conf.key_manager
    project_id, project_name = options.project_id, options.project_name
    if not (project_id or project_name):
        return fallback
    where = getattr(conf, "imgsign_config_file", None) or "the configuration"
    return Project(project_id or project_name, project_name if project_id else None,
                   f"[key_manager] credentials in {where}", by_name=not project_id)


@functools.cache
def _session_context_class() -> type:
    from oslo_context import context as oslo_context

    class SessionContext(oslo_context.RequestContext):
        """A request context whose keystoneauth plugin is the CLI's Keystone session's (castellan uses it)."""

        def __init__(self, scope: KeystoneScope, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._scope = scope

        def get_auth_plugin(self) -> Any:
            return self._scope.session.auth

    return SessionContext


def _session_context(scope: KeystoneScope, **kwargs: Any) -> Any:
    return _session_context_class()(scope, **kwargs)


#: Loggers of the key-manager client libraries, which log every failure they also raise.
CLIENT_LOGGERS = ("castellan", "barbicanclient", "keystoneauth", "hvac")


@functools.cache
def _quiet_client_loggers() -> None:
    """Keep castellan's and its clients' own error logs ("missing auth_token", "4xx Client error: ...")
    off a command's stderr when nothing configured logging: their failures reach the user as one
    imgsign error instead. A program that configures logging (Glance, Nova) still gets the records:
    a NullHandler only stops Python's last-resort handler, not propagation."""
    import logging

    for name in CLIENT_LOGGERS:
        logging.getLogger(name).addHandler(logging.NullHandler())


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
