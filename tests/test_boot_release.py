"""``imgsign boot release``: never a base an instance still uses (without --force), and --unused.

Real bases (``boot cache`` of signed images), real qcow2 overlays made by ``qemu-img create -b`` as
Nova makes an instance disk, in Nova's layout (``$instances_path/<uuid>/disk``).  On main, ``boot
release`` gave any base back without a look at the instances, and had no ``--unused``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from imgsign import errors
from imgsign.compute import base_users
from imgsign.compute.trust_record import cache_name
from tests.conftest import run_cli
from tests.test_boot_hook import Host
from tests.test_boot_race import immutable
from tests.test_real_images import qemu


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def release(host: Host, *args: object):
    return run_cli("boot", "release", *args, "--owner", "nobody", "--instances-path", host.instances,
                   "--state-dir", host.state)


def recorded(host: Host, image_id: str) -> bool:
    return (host.state / "records" / f"{cache_name(image_id)}.json").exists()


def overlay(host: Host, backing: Path | str, fmt: str = "raw", directory: str | None = None) -> Path:
    disk = host.instances / (directory or str(uuid.uuid4())) / f"disk{uuid.uuid4().hex[:6]}"
    disk.parent.mkdir(parents=True, exist_ok=True)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", fmt, disk)
    return disk


def test_a_base_an_instance_uses_is_kept_unless_forced(host):
    image_id, _ = host.image()
    _, disk = host.instance(image_id)
    refused = release(host, image_id)
    assert refused.code == errors.BaseBusy.exit_code, refused
    assert str(disk) in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert immutable(host.base(image_id)) and recorded(host, image_id), "nothing was released"
    forced = release(host, image_id, "--force")
    assert forced.code == 0 and "released" in forced.stdout, forced
    assert "WARNING" in forced.stderr and str(disk) in forced.stderr, forced.stderr
    assert not immutable(host.base(image_id)) and not recorded(host, image_id)


def test_uses_through_a_snapshot_chain_a_relative_name_and_another_spelling_are_found(host):
    """A chain disk -> snapshot -> base, a backing name relative to the overlay, and a path through a
    symbolic link to the instances directory all name the same base file."""
    chained, relative, spelled, unused = (host.image()[0] for _ in range(4))
    snapshot = overlay(host, host.base(chained), directory="snapshots-of-one")
    top = overlay(host, snapshot, fmt="qcow2", directory="one")
    rel_disk = host.instances / "two" / "disk"
    rel_disk.parent.mkdir()
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", f"../_base/{cache_name(relative)}", "-F", "raw", rel_disk)
    link = host.tmp / "nova-link"
    link.symlink_to(host.instances)
    other = overlay(host, link / "_base" / cache_name(spelled))
    found = base_users.users_of(str(host.instances), [cache_name(i) for i in (chained, relative, spelled, unused)])
    assert found[cache_name(chained)] == sorted([str(snapshot), str(top)])
    assert found[cache_name(relative)] == [str(rel_disk)]
    assert found[cache_name(spelled)] == [str(other)]
    assert found[cache_name(unused)] == []


def test_unused_releases_only_the_bases_no_instance_uses(host):
    used, unused, not_adopted = host.image()[0], host.image()[0], host.image(signed=False)[0]
    _, disk = host.instance(used)
    host.instance(not_adopted)
    released = release(host, "--unused")
    assert released.code == 0, released
    assert f"kept {host.base(used)}: used by {disk}" in released.stdout, released.stdout
    assert f"released {host.base(unused)}" in released.stdout, released.stdout
    assert str(host.base(not_adopted)) not in released.stdout, "a base without a record is not imgsign's"
    assert immutable(host.base(used)) and recorded(host, used)
    assert not immutable(host.base(unused)) and not recorded(host, unused)
    assert host.base(unused).stat().st_uid == 65534
    again = release(host, "--unused")
    assert again.code == 0 and "released" not in again.stdout, again


def test_a_header_that_cannot_be_read_counts_as_a_use(host):
    """An overlay the unprivileged reader cannot open (root's, 0600) may use any base: kept."""
    image_id, _ = host.image()
    _, disk = host.instance(image_id)
    os.chmod(disk, 0o600)
    kept = release(host, "--unused")
    assert kept.code == 0 and f"kept {host.base(image_id)}" in kept.stdout and "cannot be read" in kept.stdout, kept
    assert recorded(host, image_id)


def test_usage_errors(host):
    assert release(host).code == 2
    image_id, _ = host.image()
    assert release(host, image_id, "--unused").code == 2
    assert release(host, "--unused", "--force").code == 2
