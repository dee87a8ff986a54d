"""The compute host install guide (doc/source/install/compute-host.md), run as written on the built wheel.

The wheel is built from a copy of this tree (``pip wheel --no-deps --no-build-isolation``: no
network for the build, the lock's setuptools) and installed by the guide's own commands into a fresh
venv, as ``/opt/imgsign`` would be; its dependencies come from pip's index as an operator's would.
Every ``sh`` block of the guide runs, in order, in one ``bash -eu`` with these documented stand-ins:

* paths: every absolute path the guide names below is moved into the test's directory
  (:func:`substitutions`); the same substitutions apply to the ``boot.conf`` the guide's
  ``install-hook`` writes (its ``state_dir`` and ``log_file``), so that no test touches the machine's
  ``/etc``, ``/opt`` or ``/var``;
* ``root:nova`` becomes ``root:daemon``: this machine has no ``nova`` group;
* lines starting with ``apt-get``, ``systemctl`` or ``docker`` are not run: they change the machine's
  packages and services (.ci/system-packages installs the packages; the libvirt test starts its own
  libvirtd after the hook is installed, which is what the restart is for).

Then the installed venv alone does what a compute host needs: ``imgsign boot cache`` puts a signed
image into ``_base`` (signed on the "workstation", this test run's imgsign), the hook that
``install-hook`` wrote and the ``imgsign-libvirt-hook`` console script decide as libvirt runs them
(argv, the domain XML on stdin, an empty environment), and, under the private libvirtd of
tests/servers/libvirt.py, a signed guest starts through that hook and an unsigned one does not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsign import errors
from imgsign.compute.trust_record import cache_name
from tests.conftest import CERT_UUID, REPO, cert_of, key_of, run_cli
from tests.test_boot_hook import domain_xml
from tests.test_install_hook import libvirt_env
from tests.test_real_images import qemu

GUIDE = REPO / "doc" / "source" / "install" / "compute-host.md"
NOT_RUN = ("apt-get ", "systemctl ", "docker ")
#: What a copy of the tree for building leaves out (local state, not sources).
BUILD_IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                      ".mypy_cache", ".ruff_cache", ".pytest_cache", "scratch")

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                                reason="the guide's commands run as root (chown root, install-hook)")


def guide_blocks(text: str) -> list[str]:
    """The guide's ``sh`` blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", text, re.S | re.M)


def substitutions(root: Path, venv: Path, etc_libvirt: Path, etc_imgsign: Path) -> list[tuple[str, str]]:
    return [("/opt/imgsign", str(venv)), ("/etc/libvirt", str(etc_libvirt)), ("/etc/imgsign", str(etc_imgsign)),
            ("/var/lib/nova", f"{root}/var/lib/nova"), ("/var/lib/imgsign", f"{root}/var/lib/imgsign"),
            ("/var/log/imgsign", f"{root}/var/log/imgsign"), ("root:nova", "root:daemon")]


def substitute(text: str, pairs: list[tuple[str, str]]) -> str:
    """``text`` with each path replaced where it starts a path (not inside one already moved: idempotent)."""
    for old, new in pairs:
        text = re.sub(rf"(?<![\w./-]){re.escape(old)}", new.replace("\\", "\\\\"), text)
    return text


def run_guide(wheel_dir: Path, pairs: list[tuple[str, str]], etc_imgsign: Path) -> str:
    """Run the guide's ``sh`` blocks in the wheel's directory; their output."""
    lines = [line for block in guide_blocks(GUIDE.read_text()) for line in block.splitlines()
             if not line.startswith(NOT_RUN)]
    script = "set -eux\n" + substitute("\n".join(lines), pairs) + "\n"
    env = libvirt_env(HOME=os.environ.get("HOME", "/root"), LC_ALL="C.UTF-8")
    proc = subprocess.run(["bash", "-c", script], cwd=wheel_dir, capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    assert proc.returncode == 0, f"the guide's commands failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    boot_conf = etc_imgsign / "boot.conf"
    boot_conf.write_text(substitute(boot_conf.read_text(), pairs))  # its state_dir and log_file: see the module doc
    return proc.stdout + proc.stderr


def build_wheel(scratch: Path, out: Path) -> Path:
    """The wheel built from a copy of this tree (made under ``scratch``) into ``out``: its path."""
    source = scratch / "imgsign"
    shutil.copytree(REPO, source, ignore=BUILD_IGNORE, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("imgsign-*-py3-none-any.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this tree, alone in its directory."""
    return build_wheel(tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the guide's /opt/imgsign goes (one per module: a second run of the guide reuses it)."""
    return tmp_path_factory.mktemp("opt") / "imgsign"


@pytest.fixture(autouse=True)
def _debian_python() -> None:
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("the guide uses Debian's /usr/bin/python3 (with python3-venv)")


class InstalledHost:
    """A compute host set up by the guide under ``root``, imaged with the installed venv's imgsign."""

    def __init__(self, root: Path, venv: Path, etc_libvirt: Path, etc_imgsign: Path) -> None:
        self.root, self.venv, self.etc_libvirt, self.config = root, venv, etc_libvirt, etc_imgsign / "boot.conf"
        self.instances = root / "var" / "lib" / "nova" / "instances"
        self.state = root / "var" / "lib" / "imgsign" / "boot"
        self.log = root / "var" / "log" / "imgsign" / "boot-hook.log"
        self.hook = etc_libvirt / "hooks" / "qemu.d" / "imgsign"

    def imgsign(self, *args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "imgsign"), *map(str, args)], capture_output=True, text=True,
                              timeout=300, check=False, env=libvirt_env(IMGSIGN_BOOT_CONFIG=str(self.config)))

    def image(self, signed: bool = True) -> str:
        """A signed qcow2 (signed by this run's imgsign, as on a workstation) put into _base by the installed
        venv's ``imgsign boot cache``; unsigned: converted into _base as Nova does without verifying."""
        image_id = str(uuid.uuid4())
        source = self.root / f"{image_id}.qcow2"
        qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "64M")
        qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", source)
        if not signed:
            qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source,
                 self.instances / "_base" / cache_name(image_id))
            return image_id
        signature = run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
        assert signature.code == 0, signature
        properties = self.root / f"{image_id}.json"
        properties.write_text(signature.stdout)
        cached = self.imgsign("boot", "cache", source, "--image-id", image_id, "--properties", properties,
                              "--cert", cert_of("RSA-PSS"), "--instances-path", self.instances,
                              "--state-dir", self.state)
        assert cached.returncode == 0, cached.stderr
        return image_id

    def instance(self, image_id: str) -> tuple[str, Path]:
        instance = str(uuid.uuid4())
        disk = self.instances / instance / "disk"
        disk.parent.mkdir(mode=0o755)
        qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", self.instances / "_base" / cache_name(image_id),
             "-F", "raw", disk)
        return instance, disk

    def run_hook(self, command: list[str], image_id: str, operation: str = "prepare",
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        instance, disk = self.instance(image_id)
        return subprocess.run([*command, f"instance-{instance[:8]}", operation, "begin", "-"], capture_output=True,
                              text=True, input=domain_xml(instance, image_id, [(disk, "qcow2")]),
                              env=env or libvirt_env(), timeout=120, check=False)


def test_the_guide_sets_up_a_compute_host_from_the_wheel(tmp_path: Path, wheel: Path, venv: Path) -> None:
    etc_libvirt, etc_imgsign = tmp_path / "etc" / "libvirt", tmp_path / "etc" / "imgsign"
    etc_libvirt.mkdir(parents=True)
    output = run_guide(wheel.parent, substitutions(tmp_path, venv, etc_libvirt, etc_imgsign), etc_imgsign)
    host = InstalledHost(tmp_path, venv, etc_libvirt, etc_imgsign)
    # imgsign --version, install-hook's report
    assert re.search(r"^imgsign \d", output, re.M) and "cryptography" in output, output
    assert f"installed {host.hook}" in output and "next: restart libvirt" in output, output
    # The venv alone: imgsign comes from it, not from this tree (no path to the checkout anywhere).
    where = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", "import imgsign; print(imgsign.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert where.startswith(str(venv)) and str(REPO) not in host.hook.read_text()
    assert host.hook.read_text().startswith(f"#!{venv}/bin/python3 -I\n")
    assert (os.stat(etc_imgsign).st_mode & 0o7777, os.stat(host.config).st_mode & 0o7777) == (0o750, 0o600)

    signed, unsigned = host.image(), host.image(signed=False)
    allowed = host.run_hook([str(host.hook)], signed)
    assert (allowed.returncode, allowed.stderr) == (0, ""), allowed
    assert host.run_hook([str(host.hook)], signed, "start").returncode == 0
    refused = host.run_hook([str(host.hook)], unsigned)
    assert refused.returncode == errors.UnsignedImage.exit_code, refused
    assert "imgsign: refusing to start instance" in refused.stderr
    # The console script in the venv's bin/ is the same hook (it reads $IMGSIGN_BOOT_CONFIG like the CLI).
    console = [str(venv / "bin" / "imgsign-libvirt-hook")]
    with_config = libvirt_env(IMGSIGN_BOOT_CONFIG=str(host.config))
    assert host.run_hook(console, signed, env=with_config).returncode == 0
    assert host.run_hook(console, unsigned, env=with_config).returncode == errors.UnsignedImage.exit_code
    assert host.log.exists() and '"allowed": true' in host.log.read_text()

    # The guide run again on the set-up host changes nothing (the upgrade path).
    again = run_guide(wheel.parent, substitutions(tmp_path, venv, etc_libvirt, etc_imgsign), etc_imgsign)
    assert f"{host.hook} is already this hook" in again and "next: restart" not in again, again


@pytest.fixture
def libvirt_guide(wheel: Path, venv: Path) -> Iterator[tuple[object, InstalledHost]]:
    """A private libvirtd whose hook the guide installed (before the daemon starts, as its restart would)."""
    from tests.servers.libvirt import libvirt_daemon, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    hosts: list[InstalledHost] = []

    def install(etc_libvirt: Path, etc_imgsign: Path) -> None:
        root = etc_libvirt.parent / "host"  # under the daemon's work directory: the qemu user can reach it
        root.mkdir(mode=0o755)
        run_guide(wheel.parent, substitutions(root, venv, etc_libvirt, etc_imgsign), etc_imgsign)
        hosts.append(InstalledHost(root, venv, etc_libvirt, etc_imgsign))

    with libvirt_daemon(install_hook=install) as server:
        yield server, hosts[0]


@pytest.mark.libvirt
def test_first_signed_boot_through_the_wheel_installed_hook(libvirt_guide) -> None:
    from tests.test_libvirt_e2e import Guest, assert_running

    libvirt, host = libvirt_guide
    signed, unsigned = host.image(), host.image(signed=False)
    guest = Guest(libvirt, host, signed)  # type: ignore[arg-type] - InstalledHost has what Guest uses
    started = guest.start()
    assert started.returncode == 0, started.stderr
    assert_running(guest)
    assert guest.calls()[:2] == [("prepare", "begin"), ("start", "begin")]  # the observer ran after imgsign's hook
    decisions = [line for line in host.log.read_text().splitlines() if guest.instance in line]
    assert len(decisions) == 2 and all('"allowed": true' in line for line in decisions), decisions
    refused = Guest(libvirt, host, unsigned).start()  # type: ignore[arg-type]
    assert refused.returncode != 0
    assert f"unexpected exit status {errors.UnsignedImage.exit_code}" in refused.stderr, refused.stderr
    assert "imgsign: refusing to start instance" in refused.stderr
