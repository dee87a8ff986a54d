"""The seal an operator chose (``--seal``, ``[boot] seal_bases``) is the one on disk after every path.

``owner`` (root's and 0644, never immutable: SELinux hosts, where an immutable base breaks every later
start) must survive each command and hook path, first run and every later one; ``immutable`` likewise.
On main at 1f59a47 the owner cases of a second ``boot adopt`` (single, ``--all``, ``--by-conversion``)
fail: the "already adopted?" step checked the base under a default policy of its own and sealed it
immutable anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.conftest import cert_of, run_cli, seal_state
from tests.test_adoption import adopt, nova_download, signed_image
from tests.test_adoption_all import adopt_all, show_directory
from tests.test_adoption_by_conversion import make_image, signed_by_hand
from tests.test_boot_hook import Host
from tests.test_compute_hardening import NOBODY
from tests.test_concurrent_runs import Image, configure, hook_run, host

__all__ = ["host"]  # the fixture

SEALS = ["immutable", "owner"]


def assert_sealed_as(path: Path, seal: str) -> None:
    """Root's, 0644, and immutable exactly when the seal says so (the flag read with the FS_IOC_GETFLAGS
    ioctl, as ``lsattr`` reads it)."""
    owner, mode, immutable = seal_state(path)
    assert owner == 0 and mode == 0o644, (path, owner, oct(mode))
    assert immutable is (seal == "immutable"), f"{path}: immutable={immutable} under seal {seal}"
    if shutil.which("lsattr"):
        flags = os.popen(f"lsattr -- {path} 2>/dev/null").read().split()  # noqa: S605 - our own temp path
        if flags:
            assert ("i" in flags[0]) is (seal == "immutable"), flags


def instance_of(host: Host, image_id: str, props: Path) -> Image:
    instance, disk = host.instance(image_id)
    return Image(image_id, props, disk, instance)


def boots(host: Host, image: Image, seal: str, *, adopt_in_hook: bool = False) -> None:
    run = hook_run(host, image, adopt=adopt_in_hook).wait()
    assert run.code == 0, run.stderr
    assert_sealed_as(host.base(image.image_id), seal)


@pytest.mark.parametrize("seal", SEALS)
def test_boot_cache_and_boot_check_and_the_hook_check(host, seal):
    configure(host, seal)
    source, props = signed_image(host, "qcow2")
    image_id = str(uuid.uuid4())
    for _ in range(2):  # a first cache, and one that replaces the base
        cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props, "--cert",
                         cert_of("RSA-PSS"), "--instances-path", host.instances, "--state-dir", host.state,
                         "--seal", seal)
        assert cached.code == 0, cached
        assert_sealed_as(host.base(image_id), seal)
    for extra in ((), ("--no-cache",)):
        checked = run_cli("boot", "check", host.base(image_id), "--state-dir", host.state, "--seal", seal, *extra)
        assert checked.code == 0, checked
        assert_sealed_as(host.base(image_id), seal)
    image = instance_of(host, image_id, props)
    boots(host, image, seal)
    if seal == "owner":  # libvirt's DAC driver hands the base to qemu at each start: the hook seals it again
        os.chown(host.base(image_id), NOBODY, NOBODY)
    boots(host, image, seal)


@pytest.mark.parametrize("seal", SEALS)
def test_boot_adopt_once_and_again(host, seal):
    configure(host, seal)
    source, props = signed_image(host, "qcow2")
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, source)
    for _ in range(2):  # adopted, then "already adopted" (its record and seal checked again)
        adopted = adopt(host, image_id, props, "--seal", seal)
        assert adopted.code == 0, adopted
        assert_sealed_as(host.base(image_id), seal)
    boots(host, instance_of(host, image_id, props), seal)


@pytest.mark.parametrize("seal", SEALS)
def test_boot_adopt_all_once_and_again(host, seal):
    configure(host, seal)
    shown = []
    for fmt in ("raw", "qcow2"):
        source, props = signed_image(host, fmt)
        image_id = str(uuid.uuid4())
        nova_download(host, image_id, source)
        shown.append({"id": image_id, "name": fmt, "disk_format": fmt, "properties": json.loads(props.read_text())})
    directory = show_directory(host, *shown)
    for _ in range(2):  # adopted, then already sealed
        result = adopt_all(host, directory, "--seal", seal, "--json")
        assert result.code == 0, result
        for document in shown:
            assert_sealed_as(host.base(document["id"]), seal)


@pytest.mark.parametrize("seal", SEALS)
def test_boot_adopt_by_conversion_once_and_again(host, seal):
    configure(host, seal)
    original = make_image(host, "qcow2")
    props = signed_by_hand(host, original)
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, original)
    for _ in range(2):
        adopted = adopt(host, image_id, props, "--by-conversion", "--original", original, "--seal", seal)
        assert adopted.code == 0, adopted
        assert_sealed_as(host.base(image_id), seal)


@pytest.mark.parametrize("seal", SEALS)
def test_the_hook_adopting_by_itself(host, seal):
    """The hook's self-adoption (Glance and the key manager stood in for: tests/fault_child.py) seals as
    ``[boot] seal_bases`` says, and so does every later boot."""
    configure(host, seal)
    source, props = signed_image(host, "qcow2")
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, source)
    image = instance_of(host, image_id, props)
    boots(host, image, seal, adopt_in_hook=True)
    boots(host, image, seal, adopt_in_hook=True)
    boots(host, image, seal)
