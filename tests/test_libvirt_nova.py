"""Glance → Nova 34's own download code → imgsign adoption → a real libvirt boot through the hook.

A signed image is uploaded to the real glance-api harness (tests/servers/glance.py; its
certificate stored in the embedded key manager the way ``imgsign sign --store-cert``
does), ``_base`` is filled by ``nova.virt.images.fetch_to_raw`` from nova 34.0.0 in its
own venv (tests/servers/nova.py) under both ``force_raw_images`` settings and with
Nova's own ``verify_glance_signatures`` on and off, the base is adopted with
``imgsign boot adopt`` (certificate from the key manager), and the guest starts under
the private libvirtd (tests/servers/libvirt.py) with the hook installed.

Glance validates Keystone tokens (the session's Keystone, tests/servers/keystone.py);
Nova downloads with the uploader's token and its project id. With its signature check
on, Nova runs as root: the check reads the test's embedded key store (a root-only
SQLite file standing in for Barbican); with it off, Nova runs as the nova user
(uid 65534) and the base is nova's until ``imgsign boot adopt`` seals it.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest
import requests

from imgsign.compute.trust_record import cache_name
from tests.conftest import cert_of, key_of, run_cli
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.libvirt import libvirt_daemon, unavailable
from tests.servers.nova import fetch_to_raw
from tests.test_boot_hook import Host
from tests.test_compute_hardening import NOBODY, nova_writable_cache
from tests.test_libvirt_e2e import Guest, assert_running
from tests.test_real_images import qemu

pytestmark = [pytest.mark.libvirt, pytest.mark.servers]
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 and Nova 34 need Python 3.11 or later", allow_module_level=True)

PROJECT = "demo"
TIMEOUT = 30


@pytest.fixture(scope="module")
def stack(keystone):
    """The private libvirtd and a glance-api sharing one embedded key store (in the libvirt scratch tree)."""
    reason = unavailable()
    if reason:
        pytest.skip(f"no private libvirtd on this machine: {reason}")
    with libvirt_daemon() as libvirt:
        keystore = libvirt.workdir / "keystore.sqlite3"
        conf = libvirt.workdir / "user.conf"
        conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
                        f"[imgsign]\nproject_id = {keystone.project_user(PROJECT).project_id}\n")
        with glance_server(libvirt.workdir / "glance", keystone=keystone, keystore=keystore) as glance:
            yield libvirt, glance, conf, keystore


def upload_signed(glance: GlanceServer, conf, path) -> tuple[str, dict]:
    """``imgsign sign --store-cert`` the image, create it in Glance with those properties, PUT its data."""
    signed = run_cli("-c", conf, "sign", path, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                     "--store-cert", "-q")
    assert signed.code == 0, signed
    headers = glance.headers(PROJECT)
    body = {"name": "nova-e2e", "disk_format": "qcow2", "container_format": "bare", **signed.json()}
    created = requests.post(f"{glance.url}/v2/images", json=body, headers=headers, timeout=TIMEOUT)
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    with open(path, "rb") as data:
        put = requests.put(f"{glance.url}/v2/images/{image_id}/file", data=data, timeout=TIMEOUT,
                           headers={**headers, "Content-Type": "application/octet-stream"})
    assert put.status_code == 204, put.text
    shown = requests.get(f"{glance.url}/v2/images/{image_id}", headers=headers, timeout=TIMEOUT)
    assert shown.status_code == 200 and shown.json()["status"] == "active", shown.text
    return image_id, shown.json()


@pytest.mark.parametrize("force_raw, verify", [(True, True), (False, False)],
                         ids=["force_raw-verify", "keep_qcow2-no_verify"])
def test_base_written_by_novas_own_download_is_adopted_and_boots(stack, force_raw, verify):
    libvirt, glance, conf, keystore = stack
    root = libvirt.workdir / f"host-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    host = Host(root)
    host.config = libvirt.boot_config
    host.configure("enforce")
    source = root / "image.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "64M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x4f 0 3M", "-c", "write -P 0x21 40M 1M", source)
    image_id, shown = upload_signed(glance, conf, source)

    # The image cache as the install guide sets it up; Nova's check reads the root-only key store, so with the
    # check on Nova runs as root, with it off as the nova user (its base is then nova's, as on a host).
    base = nova_writable_cache(host.instances) / cache_name(image_id)
    nova_uid = 0 if verify else NOBODY
    nova = fetch_to_raw(root / "nova", glance_url=glance.url, token=glance.headers(PROJECT)["X-Auth-Token"],
                        project_id=glance.project_id(PROJECT), keystore=keystore, image_id=image_id, dest=base,
                        force_raw_images=force_raw, verify_glance_signatures=verify,
                        user=None if verify else nova_uid)
    assert nova.returncode == 0, nova.stderr[-3000:]
    assert base.stat().st_uid == nova_uid
    assert ("Image signature verification succeeded" in nova.stderr) is verify, nova.stderr[-3000:]
    assert sorted(os.listdir(base.parent)) == [base.name]  # no .part or .converted left
    magic = base.read_bytes()[:4]
    assert (magic == b"QFI\xfb") is not force_raw

    # Not yet adopted: the hook refuses the boot (no trust record), libvirt does not start qemu.
    instance = str(uuid.uuid4())
    disk = host.instances / instance / "disk"
    disk.parent.mkdir()
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw" if force_raw else "qcow2", disk)
    refused = Guest(libvirt, host, image_id, disk)
    result = refused.start()
    assert result.returncode != 0 and "no trust record" in result.stderr, result.stderr
    libvirt.virsh("undefine", refused.name)
    logged = len(refused.entries())

    properties = root / "image.json"
    properties.write_text(json.dumps(shown))
    adopted = run_cli("-c", conf, "boot", "adopt", image_id, "--properties", properties,
                      "--instances-path", host.instances, "--state-dir", host.state, "--json")
    assert adopted.code == 0, adopted
    assert adopted.json()["format"] == ("raw" if force_raw else "qcow2"), adopted

    guest = Guest(libvirt, host, image_id, disk)
    started = guest.start()
    assert started.returncode == 0, started.stderr
    assert_running(guest)
    entries = guest.entries()[logged:]
    assert [(e["file"], e["allowed"]) for e in entries] == [(str(base), True)] * 2, entries


def test_novas_own_check_refuses_a_signature_changed_in_glance(stack):
    """The same download with verify_glance_signatures on, after the image's img_signature was replaced
    in Glance: Nova's own check (cursive, certificate through castellan) refuses and leaves no file."""
    libvirt, glance, conf, keystore = stack
    root = libvirt.workdir / f"host-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    source = root / "image.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "16M")
    image_id, shown = upload_signed(glance, conf, source)
    forged = shown["img_signature"][::-1]
    patched = requests.patch(f"{glance.url}/v2/images/{image_id}", timeout=TIMEOUT,
                             json=[{"op": "replace", "path": "/img_signature", "value": forged}],
                             headers={**glance.headers(PROJECT),
                                      "Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert patched.status_code == 200, patched.text
    base = root / "instances" / "_base" / cache_name(image_id)
    base.parent.mkdir(parents=True)
    nova = fetch_to_raw(root / "nova", glance_url=glance.url, token=glance.headers(PROJECT)["X-Auth-Token"],
                        project_id=glance.project_id(PROJECT), keystore=keystore, image_id=image_id, dest=base,
                        force_raw_images=True, verify_glance_signatures=True)
    assert nova.returncode == 1, nova.stderr[-3000:]
    assert "Image signature verification failed" in nova.stderr, nova.stderr[-3000:]
    assert os.listdir(base.parent) == []
