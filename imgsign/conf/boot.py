"""``boot.conf``: the boot hook's policy (``[boot]``), and how it adopts a base Nova downloaded itself.

One oslo.config file, read by the hook (:mod:`imgsign.compute.libvirt_hook`, through the validated
snapshot of :mod:`imgsign.compute.boot_config`) and by ``imgsign boot`` for its defaults:

* ``[boot]``: :func:`boot_opts`;
* ``[glance]``: keystoneauth's session, adapter and auth options (``auth_type`` and its plugin's);
* ``[imgsign]``, ``[key_manager]``, ``[barbican]``, ``[vault]``, ``[imgsign_embedded]``...: the key
  manager, as in ``imgsign.conf`` (:mod:`imgsign.keymanager.config`).

Every value of every section is checked at start (:func:`imgsign.conf.check_values`), and a name in
``[boot]`` that is no option (``trusted_certificate_id``: a typo that would trust every signer) is
refused too.  oslo.config's syntax: a comment is a line of its own (``mode = warn # x`` is the value
``warn # x``, refused), ``$name`` refers to another option (``$$`` is a ``$``).
"""

from __future__ import annotations

from oslo_config import cfg, types

from imgsign.compute.boot_config import BootSettings
from imgsign.conf import ABSOLUTE_PATH, ABSOLUTE_PATH_OR_EMPTY, KEY_MANAGER_ID, Seconds, Size, check_values
from imgsign.errors import InputError

GROUP = "boot"
GLANCE_GROUP = "glance"


def boot_opts() -> list[cfg.Opt]:
    """[boot]."""
    from imgsign.compute.base_lock import DEFAULT_LOCK_TIMEOUT
    from imgsign.compute.boot import BootPolicy
    from imgsign.compute.conversion_adoption import DEFAULT_MAX_SIZE
    from imgsign.compute.libvirt_hook import UNVERIFIABLE_KINDS
    from imgsign.compute.self_adoption import DEFAULT_CONVERSION_TIMEOUT, DEFAULT_TIMEOUT

    return [
        cfg.StrOpt("mode", default="enforce",
                   choices=[("enforce", "refuse to start an instance whose image is not verified"),
                            ("warn", "start it, with a warning in the log and on libvirt's stderr")],
                   help="What the hook does when a check fails."),
        cfg.ListOpt("trusted_certificate_ids", default=[], item_type=types.String(regex=KEY_MANAGER_ID),
                    help="Key-manager ids of trusted (CA) certificates: a base boots only if its signer's "
                         "certificate is one of them or chains to one of them (as bound by imgsign boot "
                         "cache/adopt or self-adoption). Empty: any signer with a valid trust record. "
                         "imgsign boot commands use it when --trusted is not given."),
        cfg.Opt("max_fast_path_age", type=Seconds(), default=BootPolicy.max_fast_path_age,
                help="Seconds after a full read during which a sealed, unchanged base is accepted without "
                     "reading it again."),
        cfg.StrOpt("seal_bases", default="immutable",
                   choices=[("immutable", "root's, 0644 and immutable (chattr +i)"),
                            ("owner", "root's and 0644 only (e.g. SELinux hosts, where libvirt cannot "
                                      "relabel an immutable file)")],
                   help="How a verified base is sealed (README, 'Sealed bases'); also imgsign boot --seal."),
        cfg.Opt("lock_timeout", type=Seconds(positive=True), default=DEFAULT_LOCK_TIMEOUT,
                help="Seconds to wait while another imgsign run works on the same base; then refuse "
                     "(exit 66). Also imgsign boot --lock-timeout."),
        cfg.StrOpt("instances_path", default="/var/lib/nova/instances", regex=ABSOLUTE_PATH,
                   help="Nova's instances_path (its image cache is _base in it); an absolute path. Also "
                        "imgsign boot --instances-path."),
        cfg.StrOpt("state_dir", default="/var/lib/imgsign/boot", regex=ABSOLUTE_PATH,
                   help="Root-only directory of the trust records, the verified-digest cache and the locks; "
                        "an absolute path. Also imgsign boot --state-dir."),
        cfg.StrOpt("log_file", default="/var/log/imgsign/boot-hook.log", regex=ABSOLUTE_PATH_OR_EMPTY,
                   help="JSON-lines log of every decision (absolute path; empty: no log)."),
        cfg.ListOpt("allow_unverified", default=[], item_type=types.String(choices=UNVERIFIABLE_KINDS),
                    help="Kinds of guest storage the hook cannot verify that are allowed under enforce, with a "
                         "warning (e.g. block, network: Cinder volumes)."),
        cfg.BoolOpt("adopt",
                    help="Adopt a base Nova downloaded itself (no trust record) from Glance and the key "
                         "manager. Default: on when [glance] auth_type is set."),
        cfg.Opt("adopt_timeout", type=Seconds(positive=True), default=DEFAULT_TIMEOUT,
                help="Seconds for all network calls of one hook run together (also the per-request timeout "
                     "unless [glance] timeout sets one)."),
        cfg.BoolOpt("adopt_by_conversion", default=False,
                    help="Adopt a base Nova converted from a qcow2 without raw-digest statement by downloading "
                         "the qcow2 from Glance and converting it again."),
        cfg.Opt("adopt_conversion_max_size", type=Size(), default=DEFAULT_MAX_SIZE,
                help="Most bytes the image adopted by conversion may have (Glance's size and the bytes "
                     "streamed); K, M, G, T are powers of 1024. Also imgsign boot adopt --max-size."),
        cfg.Opt("adopt_conversion_timeout", type=Seconds(positive=True), default=DEFAULT_CONVERSION_TIMEOUT,
                help="Seconds for the download and conversion of adoption by conversion, on top of "
                     "adopt_timeout."),
    ]


def glance_opts() -> list[cfg.Opt]:
    """``[glance]``: how self-adoption reaches Glance (keystoneauth; a password plugin shown for the sample)."""
    from keystoneauth1 import loading as ks_loading

    options = (ks_loading.get_session_conf_options() + ks_loading.get_adapter_conf_options()
               + ks_loading.get_auth_common_conf_options())
    names = {option.dest for option in options}
    return options + [option for option in ks_loading.get_auth_plugin_conf_options("password")
                      if option.dest not in names]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """boot.conf's own sections, for oslo-config-generator (namespace ``imgsign.boot``; the key manager's
    are namespaces ``imgsign`` and ``castellan.config``)."""
    return [(GROUP, boot_opts()), (GLANCE_GROUP, glance_opts())]


def load(path: str | None) -> cfg.ConfigOpts:
    """boot.conf at ``path`` (None: the defaults) in a private ConfigOpts, every value checked.

    The environment never overrides the file (``use_env=False``): the hook's validated snapshot is
    keyed by the file alone."""
    from keystoneauth1 import loading as ks_loading

    from imgsign.conf import raw_sections
    from imgsign.keymanager import config as km_config

    conf = cfg.ConfigOpts()
    conf.register_opts(boot_opts(), group=GROUP)
    km_config.register_opts(conf)
    ks_loading.register_session_conf_options(conf, GLANCE_GROUP)
    ks_loading.register_auth_conf_options(conf, GLANCE_GROUP)
    ks_loading.register_adapter_conf_options(conf, GLANCE_GROUP)
    if path is not None:
        _check_names(path, raw_sections(path))
    km_config.parse(conf, path, use_env=False)
    return conf


def _check_names(path: str, sections: dict[str, dict[str, list[str]]]) -> None:
    """A name in ``[boot]`` that is no option is refused (a typo must not fall back to a default)."""
    known = {option.dest for option in boot_opts()}
    for section, values in sections.items():
        if section.lower() != GROUP:
            continue
        unknown = sorted(name for name in values if name not in known)
        if unknown:
            shown = ", ".join(name[:60] for name in unknown[:5])
            raise InputError(f"{path}: [boot] has no option {shown} (options: {', '.join(sorted(known))})")


def settings(conf: cfg.ConfigOpts, path: str | None) -> BootSettings:
    """The ``[boot]`` values of a loaded boot.conf (``adopt`` resolved)."""
    boot = conf[GROUP]
    adopt = boot.adopt if boot.adopt is not None else bool(conf[GLANCE_GROUP].auth_type)
    return BootSettings(
        path=path, mode=boot.mode, trusted_certificate_ids=tuple(boot.trusted_certificate_ids),
        max_fast_path_age=float(boot.max_fast_path_age), seal_bases=boot.seal_bases,
        lock_timeout=float(boot.lock_timeout), instances_path=boot.instances_path, state_dir=boot.state_dir,
        log_file=boot.log_file or None, allow_unverified=tuple(boot.allow_unverified), adopt=bool(adopt),
        adopt_timeout=float(boot.adopt_timeout), adopt_by_conversion=bool(boot.adopt_by_conversion),
        adopt_conversion_max_size=int(boot.adopt_conversion_max_size),
        adopt_conversion_timeout=float(boot.adopt_conversion_timeout))


def validate(path: str | None) -> BootSettings:
    """boot.conf at ``path`` checked in full (every section), as :class:`BootSettings`."""
    return settings(load(path), path)


__all__ = ["GLANCE_GROUP", "GROUP", "boot_opts", "check_values", "glance_opts", "list_opts", "load", "settings",
           "validate"]
