"""``imgsign boot release`` next to a real libvirtd (tests/servers/libvirt.py) with a running TCG guest.

The guest's overlay lies outside the instances path, where the instance-directory scan cannot see
it: only libvirt (asked read-only) knows that the running domain uses the base.
"""

from __future__ import annotations

import uuid

import pytest

from imgsign import errors
from tests.conftest import run_cli
from tests.test_libvirt_e2e import Guest, assert_running, host, libvirt  # noqa: F401 - fixtures
from tests.test_real_images import qemu

pytestmark = pytest.mark.libvirt


def test_a_base_a_running_domain_uses_is_kept_until_the_domain_stops(libvirt, host):  # noqa: F811
    image_id, _ = host.image()
    disk = host.tmp / "elsewhere" / str(uuid.uuid4()) / "disk"
    disk.parent.mkdir(parents=True)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", host.base(image_id), "-F", "raw", disk)
    guest = Guest(libvirt, host, image_id, disk)
    started = guest.start()
    assert started.returncode == 0, started.stderr
    assert_running(guest)

    def release(*args: str):
        return run_cli("boot", "release", *args, "--owner", "nobody", "--instances-path", host.instances,
                       "--state-dir", host.state, "--libvirt-uri", libvirt.uri)

    kept = release("--unused")
    assert kept.code == 0 and f"domain {guest.name} (disk vda)" in kept.stdout, kept
    assert "released" not in kept.stdout, kept
    refused = release(image_id)
    assert refused.code == errors.BaseBusy.exit_code and guest.name in refused.stderr, refused
    libvirt.virsh("destroy", guest.name)
    freed = release("--unused")
    assert freed.code == 0 and f"released {host.base(image_id)}" in freed.stdout, freed
