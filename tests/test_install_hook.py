"""``imgsign boot install-hook`` on real files in temporary directories, as root (as on a compute host),
and the hook it installs run as libvirt runs it (argv, domain XML on stdin, an empty environment).

``--libvirt-dir``, ``--config`` and ``--instances-path`` point at the temporary tree instead of
/etc/libvirt, /etc/imgsign/boot.conf and /var/lib/nova/instances; ``--libvirt-version`` stands in
for the ``libvirtd --version`` of a libvirt older than 6.5 (this machine's is 9.0).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imgsign import errors
from imgsign.compute import hook_entry, hook_install
from tests.conftest import REPO, run_cli
from tests.test_boot_hook import Host, domain_xml

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                                reason="installs root's files (chown root) as on a compute host")

def libvirt_env(**extra: str) -> dict[str, str]:
    """What libvirt gives a hook: no environment but these (it runs hooks with a clean one); plus the test
    session's ``IMGSIGN_RUN_DIR`` when it sets one, so that the hook's boot.conf snapshots stay out of the
    machine's /run/imgsign (a stand-in: libvirt would not pass it)."""
    env = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"}
    if os.environ.get("IMGSIGN_RUN_DIR"):
        env["IMGSIGN_RUN_DIR"] = os.environ["IMGSIGN_RUN_DIR"]
    return env | extra


class Tree:
    """A compute host's directories in a temp dir: libvirt's, imgsign's configuration, Nova's instances."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp
        self.libvirt = tmp / "etc-libvirt"
        self.libvirt.mkdir()
        self.hooks = self.libvirt / "hooks"
        self.config = tmp / "etc-imgsign" / "boot.conf"
        self.instances = tmp / "nova" / "instances"
        (self.instances / "_base").mkdir(parents=True)
        for directory in (self.instances, self.instances / "_base"):
            directory.chmod(0o1775)

    def install(self, *args: object, version: str | None = "9.0"):
        extra = ("--libvirt-version", version) if version else ()
        return run_cli("boot", "install-hook", "--libvirt-dir", self.libvirt, "--config", self.config,
                       "--instances-path", self.instances, *extra, *args)

    def untouched(self) -> None:
        """Nothing was written: no configuration directory, no hook directory."""
        assert not self.config.parent.exists()
        assert not (self.hooks / "qemu.d").exists()


def mode_of(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def test_installs_into_qemu_d_with_root_files_and_a_private_template(tree: Tree) -> None:
    result = tree.install()
    assert result.code == 0, result
    hook = tree.hooks / "qemu.d" / "imgsign"
    assert mode_of(hook) == (0, 0, 0o755)
    assert mode_of(tree.hooks / "qemu.d") == (0, 0, 0o755)
    assert mode_of(tree.config.parent) == (0, 0, 0o750)
    assert mode_of(tree.config) == (0, 0, 0o600)
    assert f"instances_path = {tree.instances}\n" in tree.config.read_text()
    assert not (tree.hooks / "qemu").exists()
    text = hook.read_text()
    assert text.startswith(f"#!{sys.executable} -I\n") and hook_install.MARKER in text
    assert repr(str(tree.config)) in text  # not the default path: libvirt gives the hook no environment
    for said in (f"installed {hook}", f"wrote {tree.config}", f"created {tree.config.parent}",
                 "systemctl restart libvirtd", "systemctl restart virtqemud"):
        assert said in result.stdout, result
    assert not [name for name in os.listdir(hook.parent) if name.startswith(".")]  # no temporary file left


def test_the_installed_hook_runs_as_libvirt_runs_it(tmp_path: Path) -> None:
    """A signed base boots, an unsigned one is refused (60), a call that checks nothing exits 0 silently:
    the installed file with libvirt's empty environment (it finds boot.conf by itself)."""
    (tmp_path / "host").mkdir()
    host = Host(tmp_path / "host")
    signed, _ = host.image()
    unsigned, _ = host.image(signed=False)
    (host.instances / "_base").chmod(0o1775)
    host.instances.chmod(0o1775)
    host.config.chmod(0o600)
    libvirt = tmp_path / "libvirt"
    libvirt.mkdir()
    installed = run_cli("boot", "install-hook", "--libvirt-dir", libvirt, "--config", host.config)
    assert installed.code == 0, installed
    assert f"checked {host.config}: root's, 0600" in installed.stdout
    hook = libvirt / "hooks" / "qemu.d" / "imgsign"

    def run(image_id: str, operation: str = "prepare", sub: str = "begin") -> subprocess.CompletedProcess[str]:
        instance, disk = host.instance(image_id)
        return subprocess.run([str(hook), f"instance-{instance[:8]}", operation, sub, "-"], capture_output=True,
                              text=True, input=domain_xml(instance, image_id, [(disk, "qcow2")]), env=libvirt_env(),
                              timeout=120, check=False)

    allowed = run(signed)
    assert (allowed.returncode, allowed.stderr) == (0, ""), allowed
    assert run(signed, "start", "begin").returncode == 0
    refused = run(unsigned)
    assert refused.returncode == errors.UnsignedImage.exit_code, refused
    assert "imgsign: refusing to start instance" in refused.stderr
    for operation, sub in (("release", "end"), ("migrate", "begin"), ("stopped", "end")):
        quiet = run(unsigned, operation, sub)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), quiet
    assert host.log.read_text().count('"allowed": true') >= 2


def test_idempotent_for_its_own_and_replaces_it_atomically_when_it_differs(tree: Tree) -> None:
    assert tree.install().code == 0
    hook = tree.hooks / "qemu.d" / "imgsign"
    before = hook.stat()
    again = tree.install()
    assert again.code == 0, again
    assert "unchanged" in again.stdout and "restart" not in again.stdout, again
    assert hook.stat().st_ino == before.st_ino and hook.stat().st_mtime_ns == before.st_mtime_ns
    hook.write_text(hook.read_text().replace("(imgsign ", "(imgsign 0.0.0 was "))  # an older imgsign's
    hook.chmod(0o700)
    updated = tree.install()
    assert updated.code == 0 and f"replaced imgsign hook {hook}" in updated.stdout, updated
    assert "0.0.0" not in hook.read_text() and mode_of(hook) == (0, 0, 0o755)


def test_another_hook_in_qemu_d_is_never_replaced(tree: Tree) -> None:
    (tree.hooks / "qemu.d").mkdir(parents=True)
    other = tree.hooks / "qemu.d" / "imgsign"
    other.write_text("#!/bin/sh\nexec /usr/local/bin/site-policy \"$@\"\n")
    other.chmod(0o755)
    result = tree.install()
    assert result.code == errors.InputError.exit_code, result
    assert f"another hook is installed as {other}: not replaced" in result.stderr
    assert other.read_text().startswith("#!/bin/sh\nexec /usr/local/bin/site-policy")
    assert not tree.config.parent.exists()  # refused before anything was written
    named = tree.install("--name", "50-imgsign")
    assert named.code == 0, named
    assert hook_install.MARKER in (tree.hooks / "qemu.d" / "50-imgsign").read_text()


def test_old_libvirt_gets_hooks_qemu_unless_another_hook_is_there(tree: Tree) -> None:
    result = tree.install(version="6.4")
    assert result.code == 0, result
    assert hook_install.MARKER in (tree.hooks / "qemu").read_text() and not (tree.hooks / "qemu.d").exists()
    (tree.hooks / "qemu").write_text("#!/bin/sh\nexit 0\n")
    refused = tree.install(version="6.4")
    assert refused.code == errors.InputError.exit_code, refused
    assert f"another hook is installed as {tree.hooks / 'qemu'}" in refused.stderr
    assert (tree.hooks / "qemu").read_text() == "#!/bin/sh\nexit 0\n"
    # libvirt >= 6.5 runs qemu.d/* after hooks/qemu: both hooks run, the other one stays.
    newer = tree.install()
    assert newer.code == 0, newer
    assert (tree.hooks / "qemu").read_text() == "#!/bin/sh\nexit 0\n"
    assert (tree.hooks / "qemu.d" / "imgsign").exists()


def test_a_hand_installed_copy_of_imgsigns_hook_is_named_never_replaced(tree: Tree) -> None:
    """The old README's install (hooks/libvirt-qemu copied to hooks/qemu): a copy may have been changed, so
    it is another hook; install-hook says to remove it (in qemu.d, the check would run twice)."""
    tree.hooks.mkdir()
    copy = tree.hooks / "qemu"
    text = "#!/usr/bin/python3\n" + (REPO / "hooks" / "libvirt-qemu").read_text().split("\n", 1)[1]
    copy.write_text(text)
    result = tree.install()
    assert result.code == 0, result
    assert copy.read_text() == text and (tree.hooks / "qemu.d" / "imgsign").exists()
    assert f"next: remove {copy}: it is a copy of imgsign's hook installed by hand" in result.stdout, result
    (tree.hooks / "qemu.d" / "imgsign").unlink()
    (tree.hooks / "qemu.d").rmdir()
    old = tree.install(version="6.4")
    assert old.code == errors.InputError.exit_code, old
    assert f"{copy} is a copy of imgsign's hook installed by hand: not replaced" in old.stderr, old
    assert copy.read_text() == text
    # The marker counts only where install-hook writes it, on the line after #!.
    assert not hook_install.is_imgsign_hook(f"#!/bin/sh\necho '{hook_install.MARKER}'\n".encode())


def test_paths_that_would_break_the_hook_script_are_refused(tree: Tree) -> None:
    for python, config in (("/opt/imgsign/bin/python3", f"{tree.root}/boot\nimport os.conf"),
                           ("/opt/x\n/python3", None), ("/" + "d" * 300 + "/python3", None), ("python3", None)):
        with pytest.raises(errors.InputError):
            hook_install.hook_script(python, "0", config)


@pytest.mark.parametrize("breakage", ["nova-owns-instances", "nova-owns-parent", "no-base", "group-writable-base",
                                      "instances-missing"])
def test_instances_path_the_hook_would_refuse_is_refused_before_anything_is_written(tree: Tree,
                                                                                      breakage: str) -> None:
    nova = 4242  # a uid that is not root, as Nova's user
    if breakage == "nova-owns-instances":
        os.chown(tree.instances, nova, nova)
    elif breakage == "nova-owns-parent":
        os.chown(tree.instances.parent, nova, nova)  # Nova's default: instances in its own home
    elif breakage == "no-base":
        (tree.instances / "_base").rmdir()  # Nova would create it as its own user
    elif breakage == "group-writable-base":
        (tree.instances / "_base").chmod(0o775)
        tree.config.parent.mkdir(mode=0o750)
        tree.config.write_text(f"[boot]\nseal_bases = owner\ninstances_path = {tree.instances}\n")
        tree.config.chmod(0o600)
    else:
        tree.instances = tree.root / "nowhere"
    result = tree.install()
    assert result.code == errors.InsecureState.exit_code, result
    assert "the hook would refuse every boot (exit 63)" in result.stderr and "chmod 1775" in result.stderr
    assert not (tree.hooks / "qemu.d").exists()
    if breakage != "group-writable-base":
        tree.untouched()


def test_an_immutable_base_directory_may_be_group_writable(tree: Tree) -> None:
    """As the hook: with seal_bases = immutable (the default) on a filesystem with the flag (ext4 here),
    nobody can rename a sealed base, so _base need not be sticky."""
    (tree.instances / "_base").chmod(0o775)
    assert hook_install.instances_path_problem(str(tree.instances), immutable=True) is None
    assert "_base" in (hook_install.instances_path_problem(str(tree.instances), immutable=False) or "")
    assert tree.install().code == 0


@pytest.mark.parametrize("breakage", ["group-readable", "world-readable", "not-root", "symlink", "dir-writable"])
def test_a_boot_conf_others_can_read_or_change_is_refused(tree: Tree, breakage: str) -> None:
    tree.config.parent.mkdir(mode=0o750)
    tree.config.write_text("[boot]\n[glance]\npassword = s3cret-password\n")
    tree.config.chmod(0o600)
    if breakage == "group-readable":
        tree.config.chmod(0o640)
    elif breakage == "world-readable":
        tree.config.chmod(0o604)
    elif breakage == "not-root":
        os.chown(tree.config, 4242, 0)
    elif breakage == "symlink":
        real = tree.root / "real.conf"
        tree.config.rename(real)
        tree.config.symlink_to(real)
    else:
        tree.config.parent.chmod(0o770)
    result = tree.install()
    assert result.code == errors.InsecureState.exit_code, result
    assert str(tree.config.parent if breakage == "dir-writable" else tree.config) in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert not (tree.hooks / "qemu.d").exists()


def test_a_hook_directory_others_can_write_is_refused(tree: Tree) -> None:
    (tree.hooks / "qemu.d").mkdir(parents=True)
    (tree.hooks / "qemu.d").chmod(0o777)
    result = tree.install()
    assert result.code == errors.InsecureState.exit_code, result
    assert "qemu.d" in result.stderr and not (tree.hooks / "qemu.d" / "imgsign").exists()


def test_a_python_others_can_change_is_refused(tree: Tree) -> None:
    """The hook runs as root: an interpreter in a directory others may write would be theirs to replace."""
    loose = tree.root / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    python = loose / "python3"
    python.write_text("")
    with pytest.raises(errors.InsecureState, match="the hook's Python"):
        hook_install.install(libvirt_dir=str(tree.libvirt), config_path=str(tree.config), config_is_default=False,
                             instances_path=str(tree.instances), python=str(python), version="0",
                             libvirt=(9, 0))
    tree.untouched()


def test_refusals_of_bad_options(tree: Tree) -> None:
    for args, message in ((("--name", "../qemu"),  "--name must be a plain file name"),
                          (("--libvirt-version", "new"), "--libvirt-version must look like 9.0")):
        result = tree.install(*args)
        assert result.code == errors.InputError.exit_code and message in result.stderr, result
    missing = run_cli("boot", "install-hook", "--libvirt-dir", tree.root / "no-libvirt", "--config", tree.config)
    assert missing.code == errors.InputError.exit_code and "is libvirt installed?" in missing.stderr, missing
    tree.untouched()


def test_libvirt_version_is_read_from_the_daemon() -> None:
    """This machine's libvirtd (Debian 12: 9.0) is found in root's sbin directories and is new enough."""
    found = hook_install.libvirt_version()
    if found is None:
        pytest.skip("no libvirtd or virtqemud here")
    assert found >= hook_install.QEMU_D_SINCE


def test_entry_point_checks_nothing_for_other_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console script's main answers every call but prepare/start begin at once, importing nothing."""
    for argv in (["vm", "release", "end", "-"], ["vm"], ["vm", "migrate", "begin", "-"]):
        monkeypatch.setattr(sys, "argv", ["imgsign-libvirt-hook", *argv])
        assert hook_entry.main() == 0
    code = ("import sys; sys.argv = ['imgsign-libvirt-hook', 'vm', 'restore', 'begin', '-']\n"
            "from imgsign.compute.hook_entry import main\n"
            "assert main() == 0\n"
            "assert not [m for m in sys.modules if m.startswith('imgsign.compute.libvirt_hook') or m == 'typing']\n")
    subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=60)


def test_an_installed_hook_whose_python_lost_imgsign_refuses_checked_starts_only(tmp_path: Path) -> None:
    """A broken install (the venv gone or changed) refuses prepare/start with a message, exit 1; every other
    call still exits 0 at once, importing nothing (a migration or a stop is not blocked by it)."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK) or subprocess.run([python, "-I", "-c", "import imgsign"],
                                                           capture_output=True, check=False).returncode == 0:
        pytest.skip(f"needs a {python} without imgsign")
    hook = tmp_path / "imgsign"
    hook.write_bytes(hook_install.hook_script(python, "0"))
    hook.chmod(0o755)
    env = libvirt_env(PYTHONPATH=str(REPO))  # -I: not even this finds the checkout
    refused = subprocess.run([str(hook), "vm", "prepare", "begin", "-"], input="", capture_output=True, text=True,
                             env=env, timeout=60, check=False)
    assert refused.returncode == 1 and "imgsign: refusing to start 'vm': cannot load imgsign" in refused.stderr, refused
    quiet = subprocess.run([str(hook), "vm", "release", "end", "-"], input="", capture_output=True, text=True,
                           env=env, timeout=60, check=False)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), quiet
