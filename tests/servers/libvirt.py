"""A private libvirtd with real qemu (TCG) guests and imgsign's hook installed where libvirt reads it.

What runs
    Debian's ``libvirtd`` 9.0 and ``virtlogd`` as root (the system instance:
    ``dynamic_ownership``, the qemu user, immutable bases all need root), each in a
    mount namespace of its own (``unshare --mount``) in which the directories libvirt
    has compiled in are bind mounts of this harness's scratch directory:
    ``/etc/libvirt`` (``libvirtd.conf``, ``qemu.conf``, ``hooks/``), ``/run/libvirt``,
    ``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/etc/imgsign`` (the hook's
    ``boot.conf``, at the default path the installed hook reads). libvirt offers no
    option or variable to move these for the system instance (the hook directory
    is ``SYSCONFDIR/libvirt/hooks``), so this is the only way that leaves the
    machine's own files alone. Clients reach the daemon through
    ``qemu:///system?socket=<scratch>/run/libvirt-sock``.

    The hook is installed as the install guide says: ``hooks/libvirt-qemu`` copied to
    ``/etc/libvirt/hooks/qemu`` with its first line pointing at the Python that has
    imgsign (this test run's), configured by ``/etc/imgsign/boot.conf``. libvirt
    runs hooks with ``LC_ALL=C``, ``PATH`` and ``HOME`` only, so nothing reaches it
    through the environment. An observer, ``hooks/qemu.d/zz-observe`` (libvirt ≥ 6.5
    runs ``qemu.d/*`` after ``qemu``, in name order), keeps the XML libvirt passes on
    each call and runs a test's action for that operation if one is installed
    (:meth:`Libvirt.on_hook`).

    ``qemu.conf``: ``security_driver = "none"`` (no AppArmor/SELinux profiles written
    to the host; the DAC driver, which hands every image of a guest to the qemu user,
    always runs for the system instance), ``dynamic_ownership = 1`` as on a Nova
    host, ``cgroup_controllers = []`` (the host's cgroup trees stay untouched).

Boot time
    libvirtd re-probes QEMU's capabilities (about 4 s per binary, two binaries)
    whenever its cache entry looks outdated, and it checks that before every start.
    On these machines ``/dev/kvm`` exists and works for root but is ``0600 root``:
    the probe finds KVM, while the check before every start asks whether the qemu
    user can open ``/dev/kvm``, answers no, declares the cache outdated ("KVM was
    enabled when probing … but it is not available now") and probes again: about
    40 s per ``virsh start``. Giving the qemu user ``/dev/kvm`` (``0660 root:kvm``,
    as Debian's udev rule does) is not enough here: with KVM usable the check also
    compares the host's CPUID data, which differs from one libvirtd process to the
    next on these VMs ("host cpuid changed"), so each daemon start probes again.
    The guests are TCG (``<domain type='qemu'>``) and need no KVM, so each namespace
    sees a root-only node that is no KVM as ``/dev/kvm``: probe and check then agree that
    there is no KVM, as on a host without it, and the cache (``/var/cache/libvirt``,
    kept under the test cache directory) stays valid. The probe runs once per
    machine; a daemon starts in well under a second, a guest in about half a second.

Restoring
    Mount points that did not exist (``/run/libvirt``, ``/etc/imgsign``) are created
    and removed again by the last harness to stop (a shared ``flock``: removing a
    directory another namespace still mounts on would unmount it there). Every guest
    is destroyed, every daemon and qemu process stopped, and the scratch directory
    removed (immutable files in it released first).

The Debian packages are installed with ``apt-get`` when missing; :func:`unavailable`
says why the harness cannot run (not root, no ``unshare``, the install failed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.common import ServerError, cache_dir, clean_env, run_server, tail

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "hooks" / "libvirt-qemu"
PACKAGES = ("libvirt-daemon-system", "libvirt-daemon-driver-qemu", "qemu-system-x86", "libvirt-clients")
BINARIES = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64")
#: Machine path -> directory of the scratch tree bound over it in the daemons' namespaces.
BINDS = {"/etc/libvirt": "etc", "/run/libvirt": "run", "/var/lib/libvirt": "lib", "/var/log/libvirt": "log",
         "/etc/imgsign": "imgsign-etc"}
CAPS_CACHE = "/var/cache/libvirt"
#: The kernel's AppArmor interface (securityfs) and libvirt's per-guest profile directory.
APPARMOR_FS = "/sys/kernel/security/apparmor"
APPARMOR_LIBVIRT = "/etc/apparmor.d/libvirt"
KVM = "/dev/kvm"
START_TIMEOUT = 180.0  # a cold capabilities probe of both qemu binaries takes about 15 s here
INSTALL_TIMEOUT = 900

LIBVIRTD_CONF = """\
# The harness's libvirtd: local unix sockets only (the defaults); warnings and errors to its log.
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
QEMU_CONF = """\
security_driver = "none"
dynamic_ownership = 1
cgroup_controllers = [ ]
"""
NAMESPACE_SCRIPT = """\
#!/bin/sh
# Run "$@" in this (fresh, private) mount namespace with libvirt's directories bound to the harness's.
set -eu
{binds}
{kvm}
exec "$@"
"""
OBSERVER = """\
#!/bin/sh
# Test observer (libvirt runs it after imgsign's hook): keep the XML of this call, run the test's action.
cat > "{observed}/$(date +%s%N)-$1-$2-$3.xml"
if [ -x "{actions}/$2-$3" ]; then exec "{actions}/$2-$3" "$@" </dev/null; fi
exit 0
"""


def _missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]


def _install_packages() -> str | None:
    """apt-get install the packages (once per machine, serialised across workers); why not, or None."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".libvirt-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _missing_binaries():
            return None
        if shutil.which("apt-get") is None:
            return f"{', '.join(_missing_binaries())} missing and no apt-get to install {' '.join(PACKAGES)}"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log = root / "libvirt-apt.log"
        with open(log, "wb") as out:
            for step in (["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
                         ["apt-get", "update", "-q"],
                         ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    subprocess.run(step, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   timeout=INSTALL_TIMEOUT, check=False)
                if not _missing_binaries():
                    return None
        return f"apt-get could not install {' '.join(PACKAGES)}:\n{tail(log, 15)}"


_UNAVAILABLE: list[str | None] = []


def unavailable() -> str | None:
    """Why a private libvirtd cannot run on this machine (installing the packages if needed), or None."""
    if _UNAVAILABLE:
        return _UNAVAILABLE[0]
    reason: str | None
    if sys.platform != "linux" or os.geteuid() != 0:
        reason = "libvirtd's system instance (qemu user, dynamic_ownership, immutable bases) needs root on Linux"
    elif shutil.which("unshare") is None or shutil.which("mount") is None:
        reason = "util-linux's unshare and mount are needed to give libvirtd private directories"
    else:
        reason = _install_packages()
        if reason is None:
            probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs",
                                    "tmpfs", tempfile.gettempdir()], capture_output=True, text=True, check=False)
            if probe.returncode != 0:
                reason = f"cannot make a private mount namespace here (unshare --mount): {probe.stderr.strip()}"
    _UNAVAILABLE.append(reason)
    return reason


@dataclass
class Libvirt:
    """A running private libvirtd; :meth:`virsh` talks to it."""

    workdir: Path
    uri: str
    #: The hook's configuration, /etc/imgsign/boot.conf as the hook sees it (tests write it).
    boot_config: Path
    #: libvirtd's own log (warnings and errors).
    log: Path
    observed: Path
    actions: Path
    _restart: object = field(repr=False, default=None)

    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                                 f"--- {self.log} (tail) ---\n{tail(self.log, 30)}")
        return proc

    def state(self, domain: str) -> str:
        return self.virsh("domstate", domain).stdout.strip()

    def qemu_pid(self, domain: str) -> int | None:
        """The pid of the guest's qemu process if it runs (libvirt's pid file, checked against /proc)."""
        try:
            pid = int((self.workdir / "run" / "qemu" / f"{domain}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid in self.qemu_processes(domain) else None

    def qemu_processes(self, domain: str) -> list[int]:
        """Every qemu process on the machine whose -name is this guest's (nothing may be left after a refusal)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    args = (entry / "cmdline").read_bytes().split(b"\0")
                    if args and args[0].endswith(b"qemu-system-x86_64") and \
                            any(arg.startswith(f"guest={domain},".encode()) for arg in args):
                        found.append(int(entry.name))
        return found

    def qemu_cmdline(self, pid: int) -> list[str]:
        return [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]

    def on_hook(self, operation: str, sub: str, script: str | None) -> None:
        """Run ``script`` (sh, as root, with the hook's arguments) after imgsign's hook on that call;
        ``None`` removes it."""
        path = self.actions / f"{operation}-{sub}"
        if script is None:
            path.unlink(missing_ok=True)
            return
        path.write_text("#!/bin/sh\nset -eu\n" + script)
        path.chmod(0o755)

    def hook_calls(self, domain: str) -> list[tuple[str, str, str]]:
        """The (operation, sub-operation, domain XML) of each hook call for ``domain``, in order."""
        calls = []
        for path in sorted(self.observed.iterdir()):
            name, operation, sub = path.stem.split("-", 1)[1].rsplit("-", 2)
            if name == domain:
                calls.append((operation, sub, path.read_text()))
        return calls

    def restart_libvirtd(self) -> None:
        """Stop libvirtd (SIGTERM, as a service restart does) and start it again; guests keep running."""
        self._restart()  # type: ignore[operator]

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _kvm_lines(scratch: Path) -> str:
    """Shell lines giving the namespace a /dev/kvm that is no KVM (see the module doc): a root-only
    node of /dev/null's device, so that qemu's probe finds no KVM (its ioctls fail) and the qemu user
    may not open it. A character device, not a file: libvirt moves device mounts into each guest's
    private /dev, which fails for a file."""
    if not os.path.exists(KVM):
        return "# no /dev/kvm: the probe and the pre-start check agree already"
    null = os.stat("/dev/null").st_rdev
    node = scratch / "no-kvm"
    return (f"mount -t tmpfs -o mode=0755,size=16k tmpfs '{scratch}'\n"
            f"mknod -m 0600 '{node}' c {os.major(null)} {os.minor(null)}\n"
            f"mount --bind '{node}' {KVM}")


@contextlib.contextmanager
def _mount_points() -> Iterator[None]:
    """Create the missing mount points; the last harness to leave removes the ones harnesses created."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    record = root / "libvirt-created-mount-points"
    lock = open(root / ".libvirt-mount-points.lock", "w")  # noqa: SIM115 - held for the whole block
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        for target in BINDS:
            if not os.path.isdir(target):
                os.makedirs(target, mode=0o755, exist_ok=True)
                with open(record, "a") as out:
                    out.write(target + "\n")
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # another harness still runs: it removes them
        else:
            with contextlib.suppress(FileNotFoundError):
                for target in sorted(set(record.read_text().split()), reverse=True):
                    with contextlib.suppress(OSError):
                        os.rmdir(target)
                record.unlink()
        lock.close()


def _release_tree(root: Path) -> None:
    """Clear the immutable flag of every file below ``root`` (sealed bases), so it can be removed."""
    from imgsign.compute.protection import set_immutable

    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    set_immutable(fd, False)
                finally:
                    os.close(fd)


def _stop_guests(server: Libvirt) -> None:
    """Kill every guest's qemu (libvirt sees its monitor close: faster than ``virsh destroy``), undefine."""
    _kill_leftover_qemu(server.workdir / "run")
    deadline = time.monotonic() + 30
    while server.virsh("list", "--name", check=False).stdout.split() and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in server.virsh("list", "--all", "--name", check=False).stdout.split():
        server.virsh("destroy", name, check=False)
        server.virsh("undefine", name, "--nvram", check=False)


def _kill_leftover_qemu(run_dir: Path) -> None:
    for pidfile in (run_dir / "qemu").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def apparmor_unavailable() -> str | None:
    """Why libvirt's sVirt AppArmor driver cannot confine guests on this machine, or None."""
    if not os.path.isdir(APPARMOR_FS):
        return (f"the kernel offers no AppArmor here ({APPARMOR_FS} is missing: a container without the "
                "securityfs, or a kernel without AppArmor)")
    if shutil.which("aa-status", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        return "aa-status is missing (Debian's apparmor package)"
    enabled = subprocess.run(["aa-status", "--enabled"], capture_output=True, text=True, check=False,
                             env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"})
    if enabled.returncode != 0:
        return f"aa-status --enabled: AppArmor is not enabled in this kernel or namespace (exit {enabled.returncode})"
    if not os.path.isfile(f"{APPARMOR_LIBVIRT}/TEMPLATE.qemu"):
        return f"libvirt's AppArmor templates are missing ({APPARMOR_LIBVIRT}/TEMPLATE.qemu)"
    return None


@contextlib.contextmanager
def libvirt_daemon(workdir: Path | None = None, *, security_driver: str = "none",
                   install_hook: Callable[[Path, Path], None] | None = None) -> Iterator[Libvirt]:
    """Start virtlogd and libvirtd with private directories and imgsign's hook; stop and restore after.

    ``workdir`` (default: a new directory under /tmp, removed afterwards) must be
    reachable by the qemu user (mode 0755 on the way); guests' files may live in it.
    ``security_driver = "apparmor"`` turns libvirt's sVirt AppArmor driver on: virt-aa-helper
    writes each guest's profile into a private copy of ``/etc/apparmor.d/libvirt`` (bound over
    it in the namespace) and loads it into the kernel, which unloads it when the guest stops.
    ``install_hook(etc, imgsign_etc)``, when given, installs imgsign's hook and its boot.conf into the
    directories the daemon sees as ``/etc/libvirt`` and ``/etc/imgsign`` (before it starts, with
    ``hooks/qemu.d/`` and its observer in place) instead of the copy of ``hooks/libvirt-qemu`` above.
    """
    if security_driver not in ("none", "apparmor"):
        raise ValueError(f"unsupported security driver: {security_driver}")
    reason = unavailable() or (apparmor_unavailable() if security_driver == "apparmor" else None)
    if reason:
        raise ServerError(f"libvirtd cannot run here: {reason}")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="imgsign-libvirt-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            stack.callback(_release_tree, workdir)
        workdir = Path(workdir)
        workdir.chmod(0o755)
        dirs = {name: workdir / name for name in BINDS.values()}
        for directory in (*dirs.values(), workdir / "home", workdir / "dev", workdir / "observed",
                          workdir / "actions", dirs["etc"] / "hooks" / "qemu.d"):
            directory.mkdir(parents=True, exist_ok=True)
        caps = cache_dir() / "libvirt-capabilities-cache"
        caps.mkdir(parents=True, exist_ok=True)
        (dirs["etc"] / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (dirs["etc"] / "qemu.conf").write_text(
            QEMU_CONF.replace('security_driver = "none"', f'security_driver = "{security_driver}"'))
        (dirs["etc"] / "virtlogd.conf").write_text("")
        observer = dirs["etc"] / "hooks" / "qemu.d" / "zz-observe"
        observer.write_text(OBSERVER.format(observed=workdir / "observed", actions=workdir / "actions"))
        observer.chmod(0o755)
        boot_config = dirs["imgsign-etc"] / "boot.conf"
        if install_hook is None:
            hook = dirs["etc"] / "hooks" / "qemu"
            body = HOOK.read_text().split("\n", 1)[1]
            hook.write_text(f"#!{sys.executable}\n{body}")
            hook.chmod(0o755)
            boot_config.write_text("[boot]\n")
        else:
            install_hook(dirs["etc"], dirs["imgsign-etc"])
        binds = "\n".join(f"mount --bind '{dirs[name]}' {target}" for target, name in BINDS.items())
        binds += f"\nmount --bind '{caps}' {CAPS_CACHE}"
        if security_driver == "apparmor":
            profiles = workdir / "apparmor.d-libvirt"
            shutil.copytree(APPARMOR_LIBVIRT, profiles, symlinks=True, dirs_exist_ok=True)
            binds += f"\nmount --bind '{profiles}' {APPARMOR_LIBVIRT}"
        namespace = workdir / "namespace.sh"
        namespace.write_text(NAMESPACE_SCRIPT.format(binds=binds, kvm=_kvm_lines(workdir / "dev")))
        stack.enter_context(_mount_points())
        if not os.path.isdir(CAPS_CACHE):
            raise ServerError(f"{CAPS_CACHE} is missing: is libvirt-daemon installed whole?")

        env = clean_env(workdir / "home", drop_prefixes=("IMGSIGN_", "PYTHON", "LIBVIRT_", "VIRSH_"))
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        uri = f"qemu:///system?socket={dirs['run']}/libvirt-sock"

        def in_namespace(*argv: str) -> list[str]:
            return ["unshare", "--mount", "--propagation", "private", "/bin/sh", str(namespace), *argv]

        server = Libvirt(workdir, uri, boot_config, dirs["log"] / "libvirtd.log", workdir / "observed",
                         workdir / "actions")

        stack.callback(_kill_leftover_qemu, dirs["run"])
        stack.enter_context(run_server(
            "virtlogd", in_namespace("virtlogd", "-p", str(workdir / "virtlogd.pid")), workdir=workdir, env=env,
            ready=lambda: (dirs["run"] / "virtlogd-sock").exists(), timeout=30))

        def ready() -> bool:
            probe = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, text=True, env=env,
                                   timeout=START_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
            return probe.returncode == 0

        daemon = contextlib.ExitStack()

        def start() -> None:
            daemon.enter_context(run_server(
                "libvirtd", in_namespace("libvirtd", "-p", str(workdir / "libvirtd.pid"), "-f",
                                         "/etc/libvirt/libvirtd.conf"),
                workdir=workdir, env=env, ready=ready, timeout=START_TIMEOUT, other_logs=[server.log]))

        def restart() -> None:
            daemon.close()
            start()

        server._restart = restart
        start()
        stack.callback(daemon.close)
        stack.callback(_stop_guests, server)
        yield server


if __name__ == "__main__":  # manual use: python -m tests.servers.libvirt
    with libvirt_daemon() as running:
        print(running.uri, running.workdir, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
