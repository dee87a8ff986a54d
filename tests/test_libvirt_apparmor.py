"""``seal_bases = owner`` under libvirt's sVirt AppArmor driver: the profile that keeps qemu off the base.

With ``seal_bases = owner`` the base is not immutable and libvirt's DAC driver makes it the qemu
user's at each start (tests/test_libvirt_e2e.py, ``test_owner_sealed_base_is_handed_to_the_qemu_user_
after_start_begin``): what then stops a guest's qemu from writing it is mandatory access control. On
an AppArmor host that is libvirt's ``security_driver = "apparmor"``: virt-aa-helper writes a profile
for each guest (``/etc/apparmor.d/libvirt/libvirt-<uuid>`` and its ``.files``) in which the disk
the guest writes, the overlay, is ``rwk`` and every backing file, the base among them, ``r``; qemu
runs confined by it. This test starts the private libvirtd with that driver, boots a guest through the
hook with ``seal_bases = owner``, and shows the profile: the base read-only in it, qemu confined
(enforce), and a process in that profile, as the qemu user that owns the base by then, refused a
write open of the base that the same user outside the profile is granted.

It needs the kernel's AppArmor (``/sys/kernel/security/apparmor``, ``aa-status --enabled``);
containers usually have none, and then the test is skipped with that reason.
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess

import pytest

from tests.conftest import release
from tests.servers.libvirt import APPARMOR_FS, apparmor_unavailable, libvirt_daemon, unavailable
from tests.test_libvirt_e2e import QEMU_USER, Guest, assert_running
from tests.test_libvirt_e2e import host as host  # noqa: F401 - the fixture

pytestmark = pytest.mark.libvirt


@pytest.fixture(scope="module")
def libvirt():
    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    reason = apparmor_unavailable()
    if reason:
        pytest.skip(f"no AppArmor to show the sVirt profile for seal_bases = owner: {reason}")
    with libvirt_daemon(security_driver="apparmor") as server:
        yield server


def _open_for_append_as(user: str, path, profile: str | None) -> subprocess.CompletedProcess[str]:
    """Open ``path`` for appending (writing nothing) as ``user``, inside AppArmor ``profile`` if given."""
    entry = pwd.getpwnam(user)
    confine = ["aa-exec", "-p", profile, "--"] if profile else []
    return subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                           "--", *confine, "sh", "-c", ': >> "$1"', "append", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)


def _loaded_profiles() -> str:
    with open(f"{APPARMOR_FS}/profiles") as profiles:
        return profiles.read()


def test_owner_sealed_base_is_read_only_in_the_guests_apparmor_profile(libvirt, host):
    assert shutil.which("aa-exec") is not None, "aa-exec (apparmor package) is needed to enter the profile"
    image_id, _ = host.image()
    base = release(host.base(image_id))
    host.config.write_text(host.config.read_text().replace("[boot]\n", "[boot]\nseal_bases = owner\n"))
    guest = Guest(libvirt, host, image_id)
    started = guest.start()
    assert started.returncode == 0, started.stderr
    pid = assert_running(guest)
    assert [e["allowed"] for e in guest.entries()] == [True, True], guest.entries()
    # DAC alone would let qemu write the base now: it is the qemu user's.
    assert base.stat().st_uid == pwd.getpwnam(QEMU_USER).pw_uid

    profile = f"libvirt-{guest.instance}"
    files = (libvirt.workdir / "apparmor.d-libvirt" / f"{profile}.files").read_text()
    rules = dict(re.findall(r'^\s*"([^"]+)"\s+(\w+),\s*$', files, re.MULTILINE))
    assert rules.get(str(base)) == "r", files  # the base: read only
    assert rules.get(str(guest.disk)) == "rwk", files  # the overlay: the guest's own writes
    with open(f"/proc/{pid}/attr/current") as current:
        assert current.read().strip() == f"{profile} (enforce)"
    assert f"{profile} (enforce)" in _loaded_profiles()

    # The profile, not the owner, keeps the base: the qemu user may open it for writing outside the
    # profile, and may not inside it.
    assert _open_for_append_as(QEMU_USER, base, None).returncode == 0
    confined = _open_for_append_as(QEMU_USER, base, profile)
    assert confined.returncode != 0 and "Permission denied" in confined.stderr, confined
    libvirt.virsh("destroy", guest.name)
    assert f"{profile} " not in _loaded_profiles()  # unloaded with the guest
