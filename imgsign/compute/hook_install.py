"""``imgsign boot install-hook``: put the libvirt qemu hook where libvirt reads it, after checking the host.

libvirt runs ``<libvirt dir>/hooks/qemu`` and, from libvirt 6.5 on (monolithic ``libvirtd`` and
modular ``virtqemud`` alike), every executable file in ``hooks/qemu.d/`` in name order; a start
fails when any of them exits non-zero.  The hook goes into ``qemu.d/<name>`` when that directory
exists or libvirt is new enough for it, else into ``hooks/qemu`` when no other hook is there.
Another hook is never replaced, not even a copy of imgsign's made by hand (it is named, for the operator
to remove); the hook this command wrote (its marker line) is replaced, atomically, only when it differs.

Before anything is written this checks what the hook will enforce, so that a host set up by this
command does not refuse every boot: the path to ``$instances_path/_base`` (the hook's exit 63, see
:func:`instances_path_problem`), the Python and the imgsign package the hook will run as root (only
root may change them), ``boot.conf`` (root's, 0600: it can hold a Glance password), its directory,
the state directory, and libvirt's hook directories.  Then it creates the configuration directory
(root, 0750) and a ``boot.conf`` template (root, 0600) when there is none, and writes the hook
(root, 0755; a temporary file renamed into place).

The hook written is a few lines for the Python that runs this command (normally a dedicated venv such
as ``/opt/imgsign``): the ``imgsign-libvirt-hook`` entry point's :func:`~imgsign.compute.hook_entry.main`,
behind the same early exit as ``hooks/libvirt-qemu`` (a call that checks nothing imports nothing),
in isolated mode (``-I``: no ``PYTHON*`` variable, user site or script directory on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import stat
import subprocess

from imgsign.compute import protection
from imgsign.compute.sealed import writable_by_others
from imgsign.errors import InputError, InsecureState

DEFAULT_LIBVIRT_DIR = "/etc/libvirt"
DEFAULT_NAME = "imgsign"
#: The first libvirt release that runs ``hooks/<driver>.d/*`` (for libvirtd and virtqemud alike).
QEMU_D_SINCE = (6, 5)
#: The line that marks a hook file as written by this command (and so replaceable by it).
MARKER = "# imgsign-libvirt-hook: written by `imgsign boot install-hook`"
#: Linux reads at most this much of a script's ``#!`` line (BINPRM_BUF_SIZE, 256 since Linux 5.1).
_SHEBANG_MAX = 255
#: Lines by which an imgsign hook installed by hand is recognised (to say so, never to replace it): a copy
#: of ``hooks/libvirt-qemu`` (older ones called ``libvirt_hook.main`` directly) or of the console script.
_OWN_CALLS = (b"from imgsign.compute.hook_entry import main", b"from imgsign.compute.libvirt_hook import main")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION = re.compile(r"(\d+)\.(\d+)")
#: Where libvirt's daemons are looked for when they are not on ``PATH`` (root's sbin directories).
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
#: The daemons that run qemu hooks: modular first (a host that has it runs it for qemu).
DAEMONS = ("virtqemud", "libvirtd")

HOOK_SCRIPT = '''\
#!{python} -I
{marker} (imgsign {version}).
# libvirt's qemu hook: imgsign refuses to start a guest whose image is not verified (exit status
# 60-66, 31, 24...); configuration {config}. Reinstall with the same command.
import sys

if sys.argv[2:4] not in (["prepare", "begin"], ["start", "begin"]):
    sys.exit(0)  # every other call: at once, nothing imported, nothing printed
{environment}try:
    from imgsign.compute.hook_entry import main
except Exception as exc:  # a broken install refuses the start
    print(f"imgsign: refusing to start {{sys.argv[1]!a}}: cannot load imgsign ({{str(exc)!a}})", file=sys.stderr)
    sys.exit(1)
sys.exit(main())
'''

BOOT_CONF_TEMPLATE = """\
# imgsign's boot hook configuration, written by `imgsign boot install-hook` (root, 0600: the
# [glance] section below may hold a password). Every option, with its default:
# doc/source/install/compute-host.md and the configuration reference.
[boot]
# enforce: refuse unsigned, changed or untrusted images; warn: log and allow
mode = enforce
# like Nova's [glance] default_trusted_certificate_ids; empty: any signer with a valid record
trusted_certificate_ids =
# seconds an unchanged base imgsign verified may be accepted without reading it again
max_fast_path_age = 86400
# immutable: seal verified bases with chattr +i; owner: root's and 0644 only (SELinux hosts)
seal_bases = {seal}
# seconds to wait while another imgsign run works on the same base, then refuse (66)
lock_timeout = 30
# Nova's [DEFAULT] instances_path; it and its _base must be root's (see the guide)
instances_path = {instances_path}
state_dir = /var/lib/imgsign/boot
log_file = /var/log/imgsign/boot-hook.log
# kinds of storage imgsign cannot verify, allowed with a warning (e.g. Cinder volumes: block, network)
allow_unverified =

# To let the hook adopt bases Nova downloaded itself, add Glance credentials of its own and the key
# manager (see the guide), e.g.:
# [glance]
# auth_type = password
# auth_url = https://keystone.example:5000/v3
# username = imgsign-hook
# password = ...
# user_domain_name = Default
# project_name = service
# project_domain_name = Default
"""


@dataclasses.dataclass
class Report:
    """What :func:`install` found and did (``done``), and what the operator must do next (``next``)."""

    hook: str
    python: str
    changed: bool = False
    done: list[str] = dataclasses.field(default_factory=list)
    next: list[str] = dataclasses.field(default_factory=list)


def hook_script(python: str, version: str, config: str | None = None) -> bytes:
    """The hook file's bytes: ``python`` runs :func:`imgsign.compute.hook_entry.main`; ``config``, when not
    the default ``boot.conf``, becomes ``IMGSIGN_BOOT_CONFIG`` (libvirt runs hooks with an empty environment)."""
    if any(char.isspace() for char in python) or not python.isprintable() or not os.path.isabs(python):
        raise InputError(f"the hook's interpreter must be an absolute path without spaces, not {python!r}")
    if len(f"#!{python} -I") > _SHEBANG_MAX:
        raise InputError(f"the hook's interpreter path {python} is too long for a #! line ({_SHEBANG_MAX} bytes): "
                         "install imgsign into a venv with a shorter path")
    environment = ""
    if config is not None:
        if not config.isprintable():
            raise InputError(f"the hook's configuration path must be printable, not {config!r}")
        environment = ('import os\n\n'
                       f'os.environ.setdefault("IMGSIGN_BOOT_CONFIG", {config!r})  # libvirt passes no environment\n')
    return HOOK_SCRIPT.format(python=python, marker=MARKER, version=version, config=config or "/etc/imgsign/boot.conf",
                              environment=environment).encode()


def is_imgsign_hook(data: bytes) -> bool:
    """Was this hook file written by this command (its marker line), so that it may replace it?"""
    lines = data.split(b"\n", 2)
    return len(lines) > 1 and lines[1].startswith(MARKER.encode())  # the line after the #! line


def looks_like_imgsign_hook(data: bytes) -> bool:
    """Is this a copy of imgsign's hook made by hand (``hooks/libvirt-qemu``, the console script)?  Such a
    file is named to the operator, never replaced: a copy may have been changed."""
    return any(call in data for call in _OWN_CALLS)


def _another_hook(path: str, data: bytes) -> str:
    """The refusal's text for another hook at ``path``."""
    if looks_like_imgsign_hook(data):
        return (f"{path} is a copy of imgsign's hook installed by hand: not replaced (a copy may have been "
                "changed); remove it and run this command again")
    return f"another hook is installed as {path}: not replaced"


def libvirt_version(explicit: str | None = None) -> tuple[int, int] | None:
    """libvirt's (major, minor): ``explicit`` (``"9.0"``), else what ``virtqemud``/``libvirtd --version``
    says; None when no daemon is found here (e.g. a container image built before libvirt is)."""
    if explicit is not None:
        found = _VERSION.match(explicit.strip())
        if not found:
            raise InputError(f"--libvirt-version must look like 9.0, not {explicit!r}")
        return int(found.group(1)), int(found.group(2))
    path = os.environ.get("PATH", "") + ":" + _SBIN
    for daemon in DAEMONS:
        command = shutil.which(daemon, path=path)
        if command is None:
            continue
        try:
            out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        found = _VERSION.search(out)
        if found:
            return int(found.group(1)), int(found.group(2))
    return None


def _check_directory(path: str, what: str) -> bool:
    """Raise :class:`InsecureState` when ``path`` is not a directory only root can change; False if missing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise InputError(f"cannot inspect {what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InsecureState(f"{what} {path} is not a directory (or is a symbolic link)")
    problem = writable_by_others(info, 0)
    if problem:
        raise InsecureState(f"{what} {path} is {problem}: whoever can write it can change what runs as root "
                            f"(`chown root:root {path} && chmod go-w {path}`)")
    return True


def instances_path_problem(instances_path: str, *, immutable: bool) -> str | None:
    """Why the hook would refuse every verified base under ``instances_path`` (its exit 63), or None.

    The hook (:meth:`protected <imgsign.compute.libvirt_hook>`, :func:`protection.replaceable_by_others`)
    requires every directory from ``/`` down to ``_base``, as given and as resolved, to be root's and not
    writable by group or others, unless it is sticky (the entries in it, the next directory or a sealed
    base, are root's) or, for ``_base`` with ``seal_bases = immutable``, the bases in it are immutable.
    ``_base`` must exist: Nova would create it as its own user.
    """
    base = os.path.join(os.path.normpath(instances_path), "_base")
    for candidate in dict.fromkeys((base, os.path.realpath(base))):
        parts = candidate.split(os.sep)
        for depth in range(1, len(parts) + 1):
            directory = os.sep.join(parts[:depth]) or os.sep
            try:
                info = os.stat(directory)
            except OSError as exc:
                return f"{directory}: {exc.strerror}"
            if not stat.S_ISDIR(info.st_mode):
                return f"{directory} is not a directory"
            if info.st_uid != 0:
                return f"directory {directory} belongs to uid {info.st_uid}, not root"
            if not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_mode & stat.S_ISVTX:
                continue
            if depth == len(parts) and immutable and _has_immutable_flag(directory):
                continue  # _base: sealed bases are immutable, nobody can rename them
            mode = stat.S_IMODE(info.st_mode)
            return f"others may rename or replace the entries of directory {directory} (mode {mode:04o})"
    return None


def _has_immutable_flag(directory: str) -> bool:
    """Does the filesystem of ``directory`` have the immutable flag (ext4, XFS, btrfs; not NFS, old tmpfs)?"""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return protection.is_immutable(fd) is not None
    finally:
        os.close(fd)


def check_instances_path(instances_path: str, *, immutable: bool) -> None:
    """:func:`instances_path_problem` as :class:`InsecureState` (exit 63, as the hook would), with the fix."""
    problem = instances_path_problem(instances_path, immutable=immutable)
    if problem is None:
        return
    instances = os.path.normpath(instances_path)
    raise InsecureState(
        f"instances path {instances}: {problem}; the hook would refuse every boot (exit 63): a user other than "
        f"root could re-point a verified base. Make every directory down to {instances}/_base root's and not "
        f"writable by others, or sticky: e.g. `chown root:root {os.path.dirname(instances)}; "
        f"install -d -o root -g nova -m 1775 {instances} {instances}/_base; "
        f"chown root:nova {instances} {instances}/_base; chmod 1775 {instances} {instances}/_base` "
        "(doc/source/install/compute-host.md, 'The instances path')")


def check_private_file(path: str, what: str) -> bool:
    """Raise :class:`InsecureState` unless ``path`` is a regular file of root's that only root can read
    (``boot.conf`` can hold a Glance password); False when it does not exist."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise InputError(f"cannot inspect {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InsecureState(f"{what} {path} is not a regular file (or is a symbolic link)")
    if info.st_uid != 0 or info.st_mode & 0o077:
        raise InsecureState(f"{what} {path} is owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}: "
                            "it can hold a Glance password and decides what boots, so it must be root's and 0600 "
                            f"(`chown root:root {path} && chmod 0600 {path}`)")
    problem = protection.replaceable_by_others(path)
    if problem is not None:
        raise InsecureState(f"{what} {path}: {problem}; whoever can replace it decides what boots")
    return True


def _check_runtime(python: str) -> None:
    """The interpreter and the imgsign package the hook runs as root: only root may change them."""
    import imgsign

    for path, what in ((python, "the hook's Python"), (imgsign.__file__ or "", "the imgsign package")):
        problem = protection.replaceable_by_others(path)
        if problem:
            raise InsecureState(f"{what} {path}: {problem}; libvirt runs the hook as root, so only root may be "
                                "able to change it (install imgsign into a root-owned venv such as /opt/imgsign)")


def _write(path: str, data: bytes, mode: int, *, replace: bool) -> None:
    """Write root's file ``path`` all at once (temporary file in its directory, fsync, rename); with
    ``replace=False`` a file that appeared meanwhile is never replaced."""
    import tempfile

    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".imgsign-", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InputError(f"{path} appeared while it was being written: not replaced") from None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _make_directory(path: str, mode: int) -> None:
    """Create root's directory ``path`` with ``mode`` (not the umask's)."""
    try:
        os.mkdir(path, 0o700)
        os.chown(path, 0, 0)
        os.chmod(path, mode)  # 0755 for libvirt's hook directories, 0750 for imgsign's
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror}") from None


def _read_hook(path: str) -> bytes | None:
    """The bytes of an existing hook file (None if there is none); a hook that is not a regular file is
    another one's (never followed, never replaced)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot inspect {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        return b"(not a regular file)"
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 20)
    except OSError as exc:
        raise InputError(f"cannot read the existing hook {path}: {exc.strerror}") from None


def choose_target(hooks_dir: str, name: str, version: tuple[int, int] | None) -> tuple[str, bool]:
    """(the hook's path, whether ``qemu.d`` must be created) for this libvirt."""
    qemu_d = os.path.join(hooks_dir, "qemu.d")
    if os.path.isdir(qemu_d) or (version is not None and version >= QEMU_D_SINCE):
        return os.path.join(qemu_d, name), not os.path.isdir(qemu_d)
    legacy = os.path.join(hooks_dir, "qemu")
    existing = _read_hook(legacy)
    if existing is not None and not is_imgsign_hook(existing):
        seen = "no libvirt daemon found here" if version is None else f"libvirt {version[0]}.{version[1]}"
        raise InputError(
            f"{_another_hook(legacy, existing)}, and {qemu_d} does not exist ({seen}; libvirt reads qemu.d "
            f"from 6.5 on): not replaced. With libvirt >= 6.5 pass --libvirt-version (or create {qemu_d}); "
            f"otherwise call imgsign-libvirt-hook from {legacy} yourself")
    return legacy, False


def install(*, libvirt_dir: str = DEFAULT_LIBVIRT_DIR, name: str = DEFAULT_NAME, config_path: str,
            config_is_default: bool, instances_path: str | None, python: str, version: str,
            libvirt: tuple[int, int] | None, check_instances: bool = True) -> Report:
    """Check the host, then install the hook; see the module's documentation.  Raises
    :class:`InsecureState` (63) when something the hook relies on could be changed by another user,
    :class:`InputError` (10) for anything else that stops it (another hook in the way, a bad option)."""
    from imgsign.compute.libvirt_hook import load_config

    if not _NAME.fullmatch(name):
        raise InputError(f"--name must be a plain file name (letters, digits, '.', '_', '-'), not {name!r}")
    if os.geteuid() != 0:
        raise InputError("install-hook must run as root: the hook, boot.conf and their directories are root's")
    if not os.path.isdir(libvirt_dir):
        raise InputError(f"libvirt's configuration directory {libvirt_dir} does not exist (is libvirt installed? "
                         "--libvirt-dir names another one)")
    report = Report(hook="", python=python)

    # 1. Everything the hook relies on, before anything is written.
    _check_runtime(python)
    config_dir = os.path.dirname(os.path.abspath(config_path))
    config_dir_exists = _check_directory(config_dir, "configuration directory")
    config_exists = check_private_file(config_path, "hook configuration")
    if config_exists:
        config = load_config(config_path)
        if instances_path is not None and os.path.normpath(instances_path) != os.path.normpath(config.instances_path):
            raise InputError(f"--instances-path {instances_path} differs from {config_path}'s [boot] instances_path "
                             f"{config.instances_path}: the hook reads the latter")
        instances_path = config.instances_path
        immutable = config.policy.immutable_bases
        _check_directory(config.state_dir, "the hook's state directory")
    else:
        instances_path = instances_path or "/var/lib/nova/instances"
        if not os.path.isabs(instances_path):
            raise InputError(f"--instances-path must be an absolute path, not {instances_path!r}")
        immutable = True
    seal = "immutable" if immutable else "owner"
    if check_instances:
        check_instances_path(instances_path, immutable=immutable)
    _check_directory(libvirt_dir, "libvirt's configuration directory")
    hooks_dir = os.path.join(libvirt_dir, "hooks")
    hooks_dir_exists = _check_directory(hooks_dir, "libvirt's hook directory")
    _check_directory(os.path.join(hooks_dir, "qemu.d"), "libvirt's hook directory")
    target, make_qemu_d = choose_target(hooks_dir, name, libvirt)
    report.hook = target
    script = hook_script(python, version, None if config_is_default else os.path.abspath(config_path))
    existing = _read_hook(target)
    if existing is not None and not is_imgsign_hook(existing):
        raise InputError(f"{_another_hook(target, existing)} (give imgsign's hook another --name, or remove "
                         "that one)")
    legacy = os.path.join(hooks_dir, "qemu")
    legacy_copy = target != legacy and looks_like_imgsign_hook(_read_hook(legacy) or b"")

    # 2. The configuration directory and a template boot.conf.
    if not config_dir_exists:
        _make_directory(config_dir, 0o750)
        report.done.append(f"created {config_dir} (root:root, 0750)")
    if config_exists:
        report.done.append(f"checked {config_path}: root's, 0600")
    else:
        _write(config_path, BOOT_CONF_TEMPLATE.format(instances_path=instances_path, seal=seal).encode(), 0o600,
               replace=False)
        report.done.append(f"wrote {config_path} (root:root, 0600): a template with mode = enforce and "
                           f"instances_path = {instances_path}")
        report.next.append(f"review {config_path} (trusted_certificate_ids; [glance] credentials to let the hook "
                           "adopt bases Nova downloaded itself)")
    if check_instances:
        report.done.append(f"checked {instances_path} and its _base: only root can re-point a verified base")
    else:
        report.next.append(f"{instances_path} was NOT checked (--no-instances-check): until it and its _base are "
                           "root's and sticky, the hook refuses every boot (63); run this command again on the host")

    # 3. The hook.
    for directory, exists in ((hooks_dir, hooks_dir_exists), (os.path.dirname(target), not make_qemu_d)):
        if not exists and not os.path.isdir(directory):
            _make_directory(directory, 0o755)
            report.done.append(f"created {directory} (root:root, 0755)")
    info = os.lstat(target) if existing is not None else None
    if existing == script and info is not None and info.st_uid == 0 and info.st_gid == 0 \
            and stat.S_IMODE(info.st_mode) == 0o755:
        report.done.append(f"{target} is already this hook (root:root, 0755): unchanged")
    else:
        _write(target, script, 0o755, replace=existing is not None)
        report.changed = True
        report.done.append(f"{'replaced imgsign hook' if existing is not None else 'installed'} {target} "
                           f"(root:root, 0755), running {python}")
    if legacy_copy:
        report.next.append(f"remove {legacy}: it is a copy of imgsign's hook installed by hand, which libvirt runs "
                           f"as well as {target} (the same check twice); this command does not remove it")
    if report.changed:
        report.next.append("restart libvirt so that it finds the hook: `systemctl restart libvirtd` (monolithic "
                           "daemon) or `systemctl restart virtqemud` (modular daemons); in a container, restart it "
                           "(e.g. `docker restart nova_libvirt`)")
    return report
