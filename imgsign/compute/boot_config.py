"""``boot.conf``: its options, and the hook's way of reading it: validated in full once, then from a snapshot.

One oslo.config file, read by the hook (:mod:`imgsign.compute.libvirt_hook`) and by ``imgsign boot``
for its defaults (namespace ``imgsign.boot`` and ``imgsign``, :func:`list_opts`):

* ``[boot]``: :func:`boot_opts`;
* ``[glance]``: keystoneauth's session, adapter and auth options (``auth_type`` and its plugin's),
  how self-adoption reaches Glance;
* ``[imgsign]``, ``[key_manager]``, ``[barbican]``, ``[vault]``, ``[imgsign_embedded]``...: the key
  manager, as in ``imgsign.conf`` (:mod:`imgsign.keymanager.config`).

Every value of every section is checked (:func:`imgsign.conf.check_values`), and a name in ``[boot]``
that is no option (``trusted_certificate_id``: a typo that would trust every signer) is refused too.
oslo.config's syntax: a comment is a line of its own (``mode = warn # x`` is the value ``warn # x``,
refused), ``$name`` refers to another option (``$$`` is a ``$``).

This module imports oslo.config only inside the functions that validate (:func:`validate`), but
importing oslo.config alone costs about 60 ms, and a warm boot calls the hook twice within a budget
of 100 ms.  So the hook validates boot.conf with oslo.config when it meets a file it has not seen
(the slow path), and keeps what it found, the :class:`BootSettings`, as a JSON snapshot; later calls
(the warm path) read the snapshot when the file is provably the same, and import nothing more
than this module.

Where: ``$IMGSIGN_RUN_DIR`` or ``/run/imgsign`` (root's, 0700; emptied at every reboot), one file
per boot.conf path (``boot-conf-<sha256 of the path>.json``, 0600).  Not in ``[boot] state_dir``:
which directory that is, is written in the very file the snapshot stands for.

The key.  A snapshot holds the key of the file it was made from, and is used only when all of it
matches the file as read now: its absolute path; ``(st_dev, st_ino, st_size, st_mtime_ns,
st_ctime_ns)`` and owner, group and mode of the descriptor the bytes were read from; the SHA-256
of those bytes; and the size and times of the modules that define and check the options (an
upgrade of imgsign validates again).  ``st_ctime`` changes on every write, rename, chmod and chown
and cannot be set back (unlike ``st_mtime``, which ``touch -d`` restores); the content's digest
makes two writes within one tick of the file-system clock (same size, same times: the "racy"
case) harmless as well.  The snapshot is written only when the file's key after the full check
equals its key before it (a file edited while being validated is validated again next time).

The same directory keeps, for ``[boot] policy_file``, the document its YAML decodes to
(``policy-<sha256 of the path>.json``, keyed by the SHA-256 of the policy's bytes: :func:`load_policy`),
and the fingerprints of its trust stores' certificate files (``certs-...``:
:func:`certificate_fingerprints`), so a warm call validates the policy without importing PyYAML or X.509.

Why this is safe (threat model: the attacker is not root, controls what ``nova``, a guest's
``qemu`` or a shared ``_base`` can write, and races with us):

* boot.conf and the snapshot directory are root's.  Whoever can rewrite boot.conf owns the
  policy anyway, so the hook refuses (exit 63) a boot.conf that anyone but root could change or
  replace (the file and every directory above it); the snapshot adds no way in for anyone else.
* A snapshot is read only if the directory chain up to ``/`` and the file itself can be changed by
  root alone (:func:`imgsign.compute.protection.replaceable_by_others`: every directory root's and
  not group/other-writable, or sticky with a root-owned entry), and the file is a regular file
  (opened with ``O_NOFOLLOW``: never through a link), root's and 0600.  Anything else: the
  snapshot is ignored, never written into, and boot.conf is validated in full at every call
  (slower, never less strict).
* It is written all or nothing (temporary file, fsync, rename), so a reader sees the old or the
  new snapshot, never half of one; a snapshot that does not parse, or whose values do not have the
  expected types, is ignored.
* A stale snapshot can only be used when the key matches, i.e. for the very bytes it was made
  from: the settings it holds are the ones oslo.config found in those bytes.  Nothing in it is a
  secret ([boot] holds none), and nothing the attacker writes ever reaches it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat

from imgsign._internal import redact
from imgsign.errors import InputError, InsecureState

#: ``typing.TYPE_CHECKING`` without importing typing (the hook's warm path does not load it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from oslo_config import cfg

    from imgsign.trust_policy import TrustPolicy

DEFAULT_PATH = "/etc/imgsign/boot.conf"
#: Environment variable naming boot.conf (the hook's and ``imgsign boot``'s).
ENV_PATH = "IMGSIGN_BOOT_CONFIG"
#: Root-only directory of the validated snapshots (a cache, emptied at reboot).
RUN_DIR = "/run/imgsign"
ENV_RUN_DIR = "IMGSIGN_RUN_DIR"
#: Bumped when the snapshot's layout changes.
FORMAT = 1
#: Kinds of guest storage the hook cannot verify (libvirt disk types, ``filesystem`` shares, SCSI ``hostdev``
#: pass-through and file-backed ``memory`` devices such as vPMEM), which ``allow_unverified`` may allow.
UNVERIFIABLE_KINDS = ("block", "network", "volume", "dir", "nvme", "vhostuser", "vhostvdpa", "filesystem",
                      "hostdev", "memory")
#: Seconds for all of one hook run's network calls together (Glance, Keystone, key manager).
DEFAULT_ADOPT_TIMEOUT = 10.0
#: Seconds for the download and conversion of one adoption by conversion.
DEFAULT_CONVERSION_TIMEOUT = 600.0
#: Bytes a signed original may have at most for adoption by conversion (20 GiB).
DEFAULT_CONVERSION_MAX_SIZE = 20 * 1024 ** 3
GROUP = "boot"
GLANCE_GROUP = "glance"
#: A boot.conf larger than this is refused (it is a few hundred bytes).
MAX_SIZE = 1024 * 1024
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
#: The modules whose code decides what a boot.conf means (their change invalidates every snapshot).
_DEFINITIONS = (os.path.join("compute", "boot_config.py"), os.path.join("conf", "__init__.py"),
                os.path.join("keymanager", "config.py"))


@dataclasses.dataclass(frozen=True)
class BootSettings:
    """The ``[boot]`` section of a checked boot.conf (see :func:`boot_opts` for each)."""

    path: str | None
    mode: str
    trusted_certificate_ids: tuple[str, ...]
    max_fast_path_age: float
    seal_bases: str
    lock_timeout: float
    instances_path: str
    state_dir: str
    log_file: str | None
    allow_unverified: tuple[str, ...]
    #: ``[boot] adopt``, or (not set) whether ``[glance] auth_type`` is.
    adopt: bool
    adopt_timeout: float
    adopt_by_conversion: bool
    adopt_conversion_max_size: int
    adopt_conversion_timeout: float
    #: ``[nova]`` as written (name, value), for the per-server trust look-up
    #: (:func:`imgsign.compute.server_trust.load_settings`, checked there when the file is validated); None
    #: when the file has no such section.
    nova: tuple[tuple[str, str], ...] | None = None
    #: ``[boot] policy_file``: a trust policy deciding the signer instead of ``trusted_certificate_ids``
    #: (read, with YAML, only when set: :func:`imgsign.compute.libvirt_hook.load_config`); None when not set.
    policy_file: str | None = None


def config_path(path: str | None = None) -> str:
    """``path``, else ``$IMGSIGN_BOOT_CONFIG``, else ``/etc/imgsign/boot.conf``."""
    return path or os.environ.get(ENV_PATH) or DEFAULT_PATH


def load(path: str | None = None) -> BootSettings:
    """boot.conf's settings, checked in full by oslo.config unless a snapshot proves them checked already.

    :class:`InputError` (exit 10) for a file that is missing, unreadable or invalid, naming the option
    and the file and never quoting a value; :class:`InsecureState` (exit 63), run as root, for a file
    someone other than root could change or replace."""
    path = config_path(path)
    data, info = _read(path)
    redact.remember_text(data.decode("utf-8", "replace"))  # before anything parses it: no message may quote them
    _check_owner(path)
    key = _key(path, data, info)
    snapshot = _snapshot_path(path)
    settings = _read_snapshot(snapshot, key, path)
    if settings is not None:
        return settings
    settings = validate(path)
    after, after_info = _read(path)
    if _key(path, after, after_info) == key:
        _write_snapshot(snapshot, key, settings)
    return settings


def _check_owner(path: str) -> None:
    """Running as root (the hook), refuse a boot.conf that someone else could change or replace: it sets the
    policy (``mode = warn``, no trusted ids), so it must be root's alone, as the snapshot's safety assumes."""
    if os.geteuid() != 0:
        return
    from imgsign.compute.protection import replaceable_by_others

    problem = replaceable_by_others(path)
    if problem is not None:
        raise InsecureState(f"hook configuration {path}: {problem}; it sets the boot policy, so only root may be "
                            "able to change it (chown root:root; chmod 0600, it may hold a Glance password)")


def _read(path: str) -> tuple[bytes, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"hook configuration {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read hook configuration {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"hook configuration {path} is not a regular file")
        if info.st_size > MAX_SIZE:
            raise InputError(f"hook configuration {path} is larger than {MAX_SIZE} bytes")
        chunks, total = [], 0
        while total <= MAX_SIZE:
            chunk = os.read(fd, MAX_SIZE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read hook configuration {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SIZE:
        raise InputError(f"hook configuration {path} is larger than {MAX_SIZE} bytes")
    return data, info


def certificate_fingerprints(path: str, data: bytes) -> tuple[str, ...]:
    """The SHA-256 fingerprints (of the DER) of the certificates in ``data``, a trust store's file at ``path``
    (read by the caller as the hook trusts it), without X.509 on the warm path.

    Parsing certificates loads cryptography's X.509 stack (about 50 ms of every hook call).  So the
    fingerprints are kept beside boot.conf's snapshot (``certs-<sha256 of the path>.json``, same rules),
    keyed by the SHA-256 of these very bytes and the module that parses them; a later call with the same
    bytes takes them from there.  A file that does not parse raises as
    :func:`imgsign.certificates.load_certificates` does, and is never kept."""
    snapshot = _snapshot_path(path).replace("boot-conf-", "certs-")
    key = {"format": FORMAT, "path": os.path.abspath(path), "sha256": hashlib.sha256(data).hexdigest(),
           "definitions": _definitions(("certificates.py",))}
    found = _read_json(snapshot)
    kept = found.get("fingerprints") if found is not None and found.get("key") == key else None
    if isinstance(kept, list) and kept and all(
            isinstance(f, str) and len(f) == 64 and all(c in "0123456789abcdef" for c in f) for f in kept):
        return tuple(kept)
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.certificates import load_certificates

    fingerprints = tuple(hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in load_certificates(data))
    _write_json(snapshot, {"key": key, "fingerprints": list(fingerprints)})
    return fingerprints


def _key(path: str, data: bytes, info: os.stat_result) -> dict[str, Any]:
    return {"format": FORMAT, "path": os.path.abspath(path),
            "stat": [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns,
                     info.st_uid, info.st_gid, info.st_mode],
            "sha256": hashlib.sha256(data).hexdigest(), "definitions": _definitions(_DEFINITIONS)}


def _definitions(names: tuple[str, ...]) -> list[list[Any]]:
    """Size, times and inode of imgsign's modules ``names``: an upgrade changes them."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    definitions: list[list[Any]] = []
    for name in names:
        try:
            module = os.stat(os.path.join(here, name))
            definitions.append([name, module.st_size, module.st_mtime_ns, module.st_ctime_ns, module.st_ino])
        except OSError:
            definitions.append([name, None])
    return definitions


def _snapshot_path(path: str) -> str:
    name = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(os.environ.get(ENV_RUN_DIR) or RUN_DIR, f"boot-conf-{name}.json")


def _read_snapshot(snapshot: str, key: dict[str, Any], path: str) -> BootSettings | None:
    """The settings in ``snapshot`` if only root can have written it and its key is ``key``; else None."""
    document = _read_json(snapshot)
    if document is None or document.get("key") != key:
        return None
    return _settings_of(document.get("settings"), path)


def _read_json(snapshot: str) -> dict[str, Any] | None:
    """The JSON object in ``snapshot`` if only root can have written it (root's, 0600, a regular file in
    directories only root can change); else None."""
    if os.geteuid() != 0:
        return None
    try:
        fd = os.open(snapshot, _OPEN)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077 or info.st_size > MAX_SIZE:
            return None
        data = os.read(fd, MAX_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)
    from imgsign.compute.protection import replaceable_by_others

    if replaceable_by_others(snapshot) is not None:
        return None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


#: The ``[nova]`` options the per-server look-up reads on every call (:func:`imgsign.compute.server_trust.
#: load_settings`); the others are keystoneauth's, read from boot.conf only when a token must be fetched.
_NOVA_SNAPSHOT_OPTIONS = frozenset({"auth_type", "trusted_certs_fallback", "trusted_certs_timeout", "insecure",
                                    "cafile", "certfile", "keyfile"})

#: The JSON types of each field of :class:`BootSettings` in a snapshot.
_TYPES: dict[str, tuple[type, ...]] = {
    "mode": (str,), "trusted_certificate_ids": (list,), "max_fast_path_age": (float, int), "seal_bases": (str,),
    "lock_timeout": (float, int), "instances_path": (str,), "state_dir": (str,), "log_file": (str, type(None)),
    "allow_unverified": (list,), "adopt": (bool,), "adopt_timeout": (float, int), "adopt_by_conversion": (bool,),
    "adopt_conversion_max_size": (int,), "adopt_conversion_timeout": (float, int), "nova": (list, type(None)),
    "policy_file": (str, type(None)),
}


def _settings_of(values: Any, path: str) -> BootSettings | None:
    if not isinstance(values, dict) or set(values) != set(_TYPES):
        return None
    for name, kinds in _TYPES.items():
        value = values[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return None
        if name == "nova" and isinstance(value, list):
            if not all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                       for pair in value):
                return None
        elif isinstance(value, list) and not all(isinstance(item, str) for item in value):
            return None
    fields: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in values.items()}
    if fields["nova"] is not None:
        fields["nova"] = tuple((name, text) for name, text in fields["nova"])
    for name in ("max_fast_path_age", "lock_timeout", "adopt_timeout", "adopt_conversion_timeout"):
        fields[name] = float(fields[name])
        if not math.isfinite(fields[name]) or fields[name] < 0:
            return None
    return BootSettings(path=path, **fields)


def _write_snapshot(snapshot: str, key: dict[str, Any], settings: BootSettings) -> None:
    """Keep ``settings`` for ``key`` (best effort: without a usable directory every call validates in full)."""
    values = dataclasses.asdict(settings)
    del values["path"]
    values = {name: [list(item) if isinstance(item, tuple) else item for item in value]
              if isinstance(value, tuple) else value for name, value in values.items()}
    _write_json(snapshot, {"key": key, "settings": values})


def _write_json(snapshot: str, document: dict[str, Any]) -> None:
    """Write ``document`` to ``snapshot`` all or nothing, root's and 0600 (best effort: nothing when the
    directory is not root's alone)."""
    if os.geteuid() != 0:
        return
    directory = os.path.dirname(snapshot)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError:
        return
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        return  # not ours alone: never written into (and never read, see _read_json)
    from imgsign._internal.files import atomic_write

    try:
        atomic_write(snapshot, json.dumps(document, sort_keys=True).encode(), 0o600)
    except (InputError, TypeError, ValueError):
        return


# --- the trust policy's decoded document -------------------------------------------------------------


def load_policy(path: str, data: bytes) -> TrustPolicy:
    """The trust policy of ``[boot] policy_file`` (``data``: its bytes, read by the caller as the hook trusts
    them), without PyYAML on the warm path.

    Decoding YAML (importing PyYAML) costs about 10 ms of each hook call, twice per boot.  So the document it
    decodes to is kept beside boot.conf's snapshot (``policy-<sha256 of the path>.json``, same directory, same
    rules: root's alone, written all or nothing), keyed by the SHA-256 of these very bytes and the size and
    times of the module that decodes them; a later call with the same bytes takes the document from there.
    :func:`imgsign.trust_policy.parse_policy` validates it in full at every call either way, so a kept
    document can only ever stand for the bytes it was decoded from."""
    from imgsign import trust_policy

    snapshot = _snapshot_path(path).replace("boot-conf-", "policy-")
    key = {"format": FORMAT, "path": os.path.abspath(path), "sha256": hashlib.sha256(data).hexdigest(),
           "definitions": _definitions(("trust_policy.py",))}
    found = _read_json(snapshot)
    if found is not None and found.get("key") == key and "document" in found:
        return trust_policy.parse_policy(found["document"], path)
    document = trust_policy.decode_policy_text(data, path)
    policy = trust_policy.parse_policy(document, path)
    try:
        same = json.loads(json.dumps(document)) == document  # only a plain JSON document is kept
    except (TypeError, ValueError, RecursionError):
        same = False
    if same:
        _write_json(snapshot, {"key": key, "document": document})
    return policy


# --- the options (oslo.config, imported only here) ----------------------------------------------------


def boot_opts() -> list[cfg.Opt]:
    """[boot]."""
    from oslo_config import cfg, types

    from imgsign._internal.sizes import parse_size
    from imgsign.compute.base_lock import DEFAULT_LOCK_TIMEOUT
    from imgsign.compute.verified_cache import DEFAULT_MAX_AGE
    from imgsign.conf import ABSOLUTE_PATH, ABSOLUTE_PATH_OR_EMPTY, KEY_MANAGER_ID, Seconds, Size

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
        cfg.StrOpt("policy_file", default="", regex=ABSOLUTE_PATH_OR_EMPTY,
                   help="A trust policy file (doc/source/user/trust-policy.md) deciding which signers are trusted "
                        "for which images (by the image's owner, visibility, image_type and the booting project) "
                        "instead of trusted_certificate_ids (set one of them); root's and writable by no one "
                        "else, as its trust stores' certificate files. Empty: no trust policy."),
        cfg.Opt("max_fast_path_age", type=Seconds(), default=DEFAULT_MAX_AGE,
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
        cfg.Opt("adopt_timeout", type=Seconds(positive=True), default=DEFAULT_ADOPT_TIMEOUT,
                help="Seconds for all network calls of one hook run together (also the per-request timeout "
                     "unless [glance] timeout sets one)."),
        cfg.BoolOpt("adopt_by_conversion", default=False,
                    help="Adopt a base Nova converted from a qcow2 without raw-digest statement by downloading "
                         "the qcow2 from Glance and converting it again."),
        cfg.Opt("adopt_conversion_max_size", type=Size(parse_size), default=DEFAULT_CONVERSION_MAX_SIZE,
                help="Most bytes the image adopted by conversion may have (Glance's size and the bytes "
                     "streamed); K, M, G, T are powers of 1024. Also imgsign boot adopt --max-size."),
        cfg.Opt("adopt_conversion_timeout", type=Seconds(positive=True), default=DEFAULT_CONVERSION_TIMEOUT,
                help="Seconds for the download and conversion of adoption by conversion, on top of "
                     "adopt_timeout."),
    ]


def glance_opts() -> list[cfg.Opt]:
    """``[glance]``: how self-adoption reaches Glance (keystoneauth; a password plugin shown for the sample)."""
    from keystoneauth1 import loading as ks_loading

    options: list[cfg.Opt] = (ks_loading.get_session_conf_options() + ks_loading.get_adapter_conf_options()
               + ks_loading.get_auth_common_conf_options())
    names = {option.dest for option in options}
    return options + [option for option in ks_loading.get_auth_plugin_conf_options("password")
                      if option.dest not in names]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """boot.conf's own sections, for oslo-config-generator (namespace ``imgsign.boot``; the key manager's
    are namespaces ``imgsign`` and ``castellan.config``)."""
    return [(GROUP, boot_opts()), (GLANCE_GROUP, glance_opts())]


def load_options(path: str | None) -> cfg.ConfigOpts:
    """boot.conf at ``path`` (None: the defaults) in a private ConfigOpts, every value checked.

    The environment never overrides the file (``use_env=False``): the hook's validated snapshot is
    keyed by the file alone."""
    from keystoneauth1 import loading as ks_loading
    from oslo_config import cfg

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


def _settings_from(conf: cfg.ConfigOpts, path: str | None) -> BootSettings:
    """The ``[boot]`` values of a loaded boot.conf (``adopt`` resolved)."""
    boot = conf[GROUP]
    if boot.policy_file and boot.trusted_certificate_ids:
        raise InputError(f"{path or 'boot.conf'}: [boot] sets both policy_file and trusted_certificate_ids: set one "
                         "(a trust policy's trust stores name the trusted certificates)")
    adopt = boot.adopt if boot.adopt is not None else bool(conf[GLANCE_GROUP].auth_type)
    return BootSettings(
        path=path, mode=boot.mode, trusted_certificate_ids=tuple(boot.trusted_certificate_ids),
        max_fast_path_age=float(boot.max_fast_path_age), seal_bases=boot.seal_bases,
        lock_timeout=float(boot.lock_timeout), instances_path=boot.instances_path, state_dir=boot.state_dir,
        log_file=boot.log_file or None, allow_unverified=tuple(boot.allow_unverified), adopt=bool(adopt),
        adopt_timeout=float(boot.adopt_timeout), adopt_by_conversion=bool(boot.adopt_by_conversion),
        adopt_conversion_max_size=int(boot.adopt_conversion_max_size),
        adopt_conversion_timeout=float(boot.adopt_conversion_timeout), policy_file=boot.policy_file or None)


def validate(path: str | None) -> BootSettings:
    """boot.conf at ``path`` (None: the defaults) checked in full (every section), without a snapshot."""
    settings = _settings_from(load_options(path), path)
    if path is None:
        return settings
    from imgsign.conf import raw_sections

    found = {name.lower(): values for name, values in raw_sections(path).items()}.get("nova")
    if found is None:
        return settings
    from imgsign.compute.server_trust import load_settings

    section = {name: values[-1] for name, values in found.items()}
    checked = load_settings(path, section)  # an invalid [nova] value is an error at start, as every other
    # The snapshot keeps what the hook needs on every call, never a credential ([nova] holds keystoneauth's
    # password): the look-up's own settings, and the digest of the whole section, so that a kept token is
    # still dropped when any credential changes.
    kept = {name: value for name, value in section.items() if name in _NOVA_SNAPSHOT_OPTIONS}
    if checked is not None:
        kept["section_sha256"] = checked.digest
    return dataclasses.replace(settings, nova=tuple(sorted(kept.items())))
