"""The boot hook adopts, by itself, a base Nova downloaded: properties from a real Glance 33, certificates
from the embedded key manager that Glance shares (tests/servers/glance.py).

The hook authenticates to Glance as a real client would, from ``[glance]`` in its ``boot.conf``:
keystoneauth's ``password`` plugin against the session's real Keystone (tests/servers/keystone.py) and
``endpoint_override``; Glance validates the token with keystonemiddleware. The hook's user is an admin
of project ``demo``, so Glance shows it the images it must adopt. The certificates are read from
``demo``'s Keystone project *id* in the key manager, which is what Glance reads them with.

``_base`` is filled by Nova 34's own code (tests/servers/nova.py, its cached venv): ``nova.virt.images.
fetch_to_raw`` for a disk image (download to ``<base>.part``, deep format inspection, ``qemu-img info``,
under ``force_raw_images`` a qcow2 converted to ``<base>.converted`` and renamed) and
``nova.virt.libvirt.utils.fetch_raw_image`` for a kernel or ramdisk, both running as the ``nova`` user
(uid 65534, owner of ``_base``) with the uploader's Keystone token, as nova-compute does.  Nova's own
``verify_glance_signatures`` is off in these tests: they prove what the hook decides by itself, and with
it on Nova would stop the tampered and re-labelled images before they reach ``_base`` (the hook's
refusals would go unexercised); besides, its check reads the certificate from the embedded key store, a
root-only file the nova user cannot open.  Nova's check on and off, as root, is run by
tests/test_libvirt_nova.py and tests/test_glance_e2e.py.  Boots go through the real hook
(``hooks/libvirt-qemu``, domain XML with Nova's metadata on stdin).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imgsign import errors
from imgsign.compute.trust_record import RecordStore
from tests.conftest import cert_of, key_of, pki, run_cli
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.nova import fetch_to_raw
from tests.test_adoption import as_nova
from tests.test_boot_hook import Host, domain_xml
from tests.test_compute_hardening import NOBODY, nova_writable_cache
from tests.test_glance_e2e import USER, _conf, _stored_id
from tests.test_real_images import qemu
from tests.test_self_adoption_offline import closed_url, silent_server

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

#: Roles of the hook's Glance user in project ``demo``.
HOOK_ROLES = ("admin", "member")
#: [boot] adopt_timeout of these tests: a hook run must end within it (plus Python's start and a read).
TIMEOUT = 4.0
SLACK = 6.0


class Cloud:
    """One Glance and the key manager it shares with the signer and the hook."""

    def __init__(self, root: Path, glance: GlanceServer, user_conf: Path, trusted_ca_id: str) -> None:
        self.root, self.glance, self.user_conf, self.trusted_ca_id = root, glance, user_conf, trusted_ca_id
        self.headers = glance.headers(USER)
        self.project_id = glance.project_id(USER)
        #: keystoneauth options of the hook's [glance] section.
        self.hook_auth = glance.keystone.keystoneauth_options(glance.keystone.project_user(USER, HOOK_ROLES).user)

    def image(self, path: Path, disk_format: str, properties: dict[str, str]) -> str:
        """Create and upload an image (Glance's own cursive check runs on the upload)."""
        body = {"name": "imgsign-adopt", "disk_format": disk_format, "container_format": "bare", **properties}
        created = requests.post(f"{self.glance.url}/v2/images", json=body, headers=self.headers, timeout=30)
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        with open(path, "rb") as data:
            uploaded = requests.put(f"{self.glance.url}/v2/images/{image_id}/file", data=data, timeout=60,
                                    headers={**self.headers, "Content-Type": "application/octet-stream"})
        assert uploaded.status_code == 204, uploaded.text
        return image_id

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Glance stopped (SIGSTOP): connections are accepted by the kernel and never answered."""
        os.kill(self.glance.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.glance.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone) -> Iterator[Cloud]:
    root = tmp_path_factory.mktemp("self-adoption")
    os.chmod(root, 0o755)
    keystore = root / "keystore.sqlite3"
    user_conf = _conf(root / "user.conf", keystore, keystone.project_user(USER).project_id)
    trusted_ca_id = _stored_id("-c", user_conf, "cert", "store", pki("intermediate-ca.pem"))
    with glance_server(root / "glance", keystone=keystone, keystore=keystore, import_methods=()) as glance:
        yield Cloud(root, glance, user_conf, trusted_ca_id)


class Compute(Host):
    """A compute host (``_base`` nova's) whose hook adopts from the cloud's Glance."""

    def __init__(self, tmp: Path, cloud: Cloud) -> None:
        self.cloud = cloud
        super().__init__(tmp)
        self.configure()  # Host's own configuration has no [glance]
        nova_writable_cache(self.instances)

    def configure(self, mode: str = "enforce", trusted: str | None = None, allow_unverified: str = "", *,
                  glance_url: str | None = None, adopt: str | None = None, key_manager: str | None = None,
                  boot_extra: str = "") -> None:
        trusted = self.cloud.trusted_ca_id if trusted is None else trusted
        self.config.write_text(
            f"[boot]\nmode = {mode}\ntrusted_certificate_ids = {trusted}\ninstances_path = {self.instances}\n"
            f"state_dir = {self.state}\nlog_file = {self.log}\nallow_unverified = {allow_unverified}\n"
            f"adopt_timeout = {TIMEOUT:g}\n" + (f"adopt = {adopt}\n" if adopt is not None else "") + boot_extra +
            f"\n[glance]\nendpoint_override = {glance_url or self.cloud.glance.url}\n{self.cloud.hook_auth}\n"
            + (key_manager or f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\n"
                              f"path = {self.cloud.glance.keystore}\n")
            + f"\n[imgsign]\nproject_id = {self.cloud.project_id}\n")

    def signed_image(self, fmt: str, *, sign: bool = True, pattern: str = "0x4f") -> tuple[Path, dict[str, str]]:
        """A real image (qemu-img/qemu-io) and its properties from ``imgsign sign --store-cert``."""
        path = self.tmp / f"{uuid.uuid4()}.{fmt}"
        qemu("qemu-img", "create", "-q", "-f", fmt, path, "64M")
        qemu("qemu-io", "-f", fmt, "-c", f"write -P {pattern} 0 3M", "-c", "write -P 0x21 40M 1M", path)
        if not sign:
            return path, {}
        signed = run_cli("-c", self.cloud.user_conf, "sign", path, "--key", key_of("RSA-PSS"), "--cert",
                         cert_of("RSA-PSS"), "--store-cert", "-q")
        assert signed.code == 0, signed
        return path, signed.json()

    def nova_download(self, image_id: str, *, force_raw: bool = True, function: str = "fetch_to_raw") -> Path:
        """Nova 34's own ``fetch_to_raw`` (or ``fetch_raw_image``) of the image into its base, as the nova user."""
        base = self.base(image_id)
        nova = fetch_to_raw(self.tmp / "nova", glance_url=self.cloud.glance.url,
                            token=self.cloud.headers["X-Auth-Token"], project_id=self.cloud.project_id,
                            image_id=image_id, dest=base, force_raw_images=force_raw,
                            verify_glance_signatures=False, user=NOBODY, function=function)
        assert nova.returncode == 0, nova.stderr[-3000:]
        assert base.stat().st_uid == NOBODY
        assert not [name for name in os.listdir(base.parent) if name.startswith(f"{base.name}.")]  # no .part left
        return base

    def boot_image(self, image_id: str, kernel_id: str | None = None, ramdisk_id: str | None = None):
        """An instance over the image's base (its overlay made as Nova makes it, and Nova's copies of the
        kernel and ramdisk bases), booted through the hook."""
        instance = str(uuid.uuid4())
        disk = self.instances / instance / "disk"
        disk.parent.mkdir(parents=True)
        base = self.base(image_id)
        backing_format = "qcow2" if base.read_bytes()[:4] == b"QFI\xfb" else "raw"
        qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", backing_format, disk)
        os_extra = ""
        for element, name, boot_file_id in (("kernel", "kernel", kernel_id), ("initrd", "ramdisk", ramdisk_id)):
            if boot_file_id is not None:  # imagebackend Raw.create_image: a copy of the base
                shutil.copyfile(self.base(boot_file_id), disk.parent / name)
                os_extra += f"\n    <{element}>{disk.parent / name}</{element}>"
        return self.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")], os_extra=os_extra))

    def nova_fetch_raw(self, image_id: str) -> Path:
        """libvirt_utils.fetch_raw_image (kernel and ramdisk), Nova's own: the data straight into the base."""
        return self.nova_download(image_id, function="fetch_raw_image")

    def record(self, image_id: str):
        return RecordStore(str(self.state)).get(image_id)


@pytest.fixture
def compute(cloud) -> Iterator[Compute]:
    path = Path(tempfile.mkdtemp(prefix="imgsign-selfadopt-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield Compute(path, cloud)
    shutil.rmtree(path, ignore_errors=True)


def assert_refused_and_nothing_recorded(compute: Compute, result, image_id: str, code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert text in result.stderr, result.stderr
    assert compute.record(image_id) is None
    assert compute.base(image_id).stat().st_uid == NOBODY, "a refused base is given back to nova"


# --- adopted at the first boot, then the O(1) check -------------------------------------------------


def test_raw_image_is_adopted_at_its_first_boot_and_later_boots_need_no_glance(compute, cloud):
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    base = compute.nova_download(image_id)
    first = compute.boot_image(image_id)
    assert first.returncode == 0, first.stderr
    adopted, checked = compute.log_entries()
    assert adopted["reason"] == "adopted" and adopted["allowed"] and adopted["image"] == image_id
    assert "properties from Glance" in adopted["message"]
    assert checked["allowed"] and "unchanged since its last verification" in checked["message"]
    record = compute.record(image_id)
    assert record is not None and record.cached_format == record.source_format == "raw"
    assert base.stat().st_uid == 0 and base.stat().st_mode & 0o7777 == 0o644  # sealed
    with cloud.stopped():  # no Glance any more: the second boot is the offline check
        second = compute.boot_image(image_id)
    assert second.returncode == 0, second.stderr  # a Glance call would have failed (70)
    assert [e["reason"] for e in compute.log_entries()[2:]] == ["ok"]


def test_qcow2_converted_by_nova_is_adopted_through_its_raw_statement(compute, cloud):
    path, properties = compute.signed_image("qcow2")
    assert "imgsign_raw_v1_signature" in properties
    image_id = cloud.image(path, "qcow2", properties)
    base = compute.nova_download(image_id, force_raw=True)
    assert base.read_bytes()[:4] != b"QFI\xfb"
    result = compute.boot_image(image_id)
    assert result.returncode == 0, result.stderr
    assert "raw, converted from qcow2" in compute.log_entries()[0]["message"]
    record = compute.record(image_id)
    assert record.cached_format == "raw" and record.source_format == "qcow2"


def test_qcow2_kept_by_nova_without_force_raw_is_adopted_as_the_signed_bytes(compute, cloud):
    path, properties = compute.signed_image("qcow2")
    image_id = cloud.image(path, "qcow2", properties)
    base = compute.nova_download(image_id, force_raw=False)
    assert base.read_bytes() == path.read_bytes()
    result = compute.boot_image(image_id)
    assert result.returncode == 0, result.stderr
    record = compute.record(image_id)
    assert record.cached_format == record.source_format == "qcow2"


def test_the_kernel_and_ramdisk_glance_names_for_the_image_are_adopted_with_it(compute, cloud):
    ids = {}
    for role, size in (("kernel", 2 << 20), ("ramdisk", 1 << 20)):
        path = compute.tmp / role
        path.write_bytes(os.urandom(size))
        signed = run_cli("-c", cloud.user_conf, "sign", path, "--key", key_of("RSA-PSS"), "--cert",
                         cert_of("RSA-PSS"), "--store-cert", "-q")
        assert signed.code == 0, signed
        ids[role] = cloud.image(path, "raw", signed.json())
        compute.nova_fetch_raw(ids[role])
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", {**properties, "kernel_id": ids["kernel"], "ramdisk_id": ids["ramdisk"]})
    compute.nova_download(image_id)
    result = compute.boot_image(image_id, ids["kernel"], ids["ramdisk"])
    assert result.returncode == 0, result.stderr
    entries = compute.log_entries()
    adopted = [e["message"] for e in entries if e["reason"] == "adopted"]
    assert len(adopted) == 3 and "(kernel_id of image" in adopted[1] and "(ramdisk_id of image" in adopted[2]
    assert all(compute.record(i) is not None for i in (image_id, *ids.values()))
    assert [e["allowed"] for e in entries] == [True] * len(entries) and len(entries) == 6


def test_warn_mode_adopts_too(compute, cloud):
    compute.configure("warn")
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    compute.nova_download(image_id)
    result = compute.boot_image(image_id)
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    assert compute.record(image_id) is not None


# --- refusals ------------------------------------------------------------------------------------------


def test_unsigned_image_is_refused(compute, cloud):
    path, _ = compute.signed_image("raw", sign=False)
    image_id = cloud.image(path, "raw", {})
    compute.nova_download(image_id)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.UnsignedImage.exit_code,
                                        "has no img_signature properties")


def test_a_raw_statement_of_another_image_is_refused(compute, cloud):
    _, other = compute.signed_image("qcow2", pattern="0x11")
    path, properties = compute.signed_image("qcow2")
    moved = {**properties, **{k: v for k, v in other.items() if k.startswith("imgsign_raw_v1_")}}
    assert moved != properties
    image_id = cloud.image(path, "qcow2", moved)  # img_signature is valid: Glance accepts it
    compute.nova_download(image_id, force_raw=True)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.RawStatementError.exit_code,
                                        "cannot adopt")


def test_a_converted_base_without_raw_statement_is_refused_without_reading_it(compute, cloud):
    path, properties = compute.signed_image("qcow2")
    image_id = cloud.image(path, "qcow2", {k: v for k, v in properties.items()
                                           if not k.startswith("imgsign_raw_v1_")})
    compute.nova_download(image_id, force_raw=True)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.RawStatementError.exit_code,
                                        "only with [boot] adopt_by_conversion = true")


def without_statement(properties: dict[str, str]) -> dict[str, str]:
    """What a qcow2 signed by another tool has: img_signature* only (still valid over the qcow2)."""
    return {k: v for k, v in properties.items() if not k.startswith("imgsign_raw_v1_")}


def test_a_converted_base_without_raw_statement_is_adopted_by_conversion_when_the_option_is_on(compute, cloud):
    compute.configure(boot_extra="adopt_by_conversion = true\nadopt_conversion_timeout = 120\n")
    path, properties = compute.signed_image("qcow2")
    image_id = cloud.image(path, "qcow2", without_statement(properties))
    base = compute.nova_download(image_id, force_raw=True)
    assert base.read_bytes()[:4] != b"QFI\xfb"
    first = compute.boot_image(image_id)
    assert first.returncode == 0, first.stderr
    adopted, checked = compute.log_entries()
    assert adopted["reason"] == "adopted" and "raw, converted from qcow2" in adopted["message"]
    assert checked["allowed"] and "unchanged since its last verification" in checked["message"]
    record = compute.record(image_id)
    assert record.cached_format == "raw" and record.source_format == "qcow2"
    assert sorted(os.listdir(base.parent)) == [base.name]  # the download and its conversion left nothing
    with cloud.stopped():  # adopted once: the next boot needs no Glance
        assert compute.boot_image(image_id).returncode == 0


def test_adoption_by_conversion_refuses_a_base_that_is_not_the_conversion(compute, cloud):
    compute.configure(boot_extra="adopt_by_conversion = true\n")
    path, properties = compute.signed_image("qcow2")
    image_id = cloud.image(path, "qcow2", without_statement(properties))
    base = compute.nova_download(image_id, force_raw=True)
    as_nova('printf "\\377" | dd of="$1" bs=1 seek=1048576 conv=notrunc status=none', base)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.InvalidSignature.exit_code,
                                        "is not the raw conversion of its signed qcow2")
    assert sorted(os.listdir(base.parent)) == [base.name]


def test_adoption_by_conversion_refuses_an_image_over_its_size_cap_before_downloading(compute, cloud):
    compute.configure(boot_extra="adopt_by_conversion = true\nadopt_conversion_max_size = 64K\n")
    path, properties = compute.signed_image("qcow2")
    image_id = cloud.image(path, "qcow2", without_statement(properties))
    compute.nova_download(image_id, force_raw=True)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.InputError.exit_code,
                                        f"larger than {64 * 1024} bytes, the size limit of adoption by conversion")


def test_a_base_changed_between_download_and_boot_is_refused(compute, cloud):
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    base = compute.nova_download(image_id)
    as_nova('printf "\\377" | dd of="$1" bs=1 seek=1048576 conv=notrunc status=none', base)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.InvalidSignature.exit_code,
                                        "does not match img_signature")


def test_an_image_glance_does_not_have_is_refused(compute, cloud):
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    compute.nova_download(image_id)
    deleted = requests.delete(f"{cloud.glance.url}/v2/images/{image_id}", headers=cloud.headers, timeout=30)
    assert deleted.status_code == 204, deleted.text
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.ImageNotFound.exit_code, "no image")


def test_adopt_false_leaves_the_base_unrecorded(compute, cloud):
    compute.configure(adopt="false")
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    compute.nova_download(image_id)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.UnsignedImage.exit_code,
                                        "has no trust record")
    assert "cannot adopt" not in result.stderr


# --- an unreachable Glance or key manager: refused in time (enforce), allowed with a warning (warn) ---


def test_a_stopped_glance_refuses_the_boot_within_the_timeout(compute, cloud):
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    compute.nova_download(image_id)
    with cloud.stopped():
        result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.GlanceUnavailable.exit_code,
                                        "did not answer within")
    assert result.elapsed < TIMEOUT + SLACK, result.elapsed
    compute.configure("warn")
    with cloud.stopped():
        warned = compute.boot_image(image_id)
    assert warned.returncode == 0 and "WARNING" in warned.stderr and "did not answer within" in warned.stderr
    assert warned.elapsed < TIMEOUT + SLACK, warned.elapsed
    compute.configure("enforce")  # Glance answers again: adopted now
    assert compute.boot_image(image_id).returncode == 0
    assert compute.record(image_id) is not None


def test_glance_refusing_connections_refuses_the_boot(compute, cloud):
    compute.configure(glance_url=closed_url())
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    compute.nova_download(image_id)
    result = compute.boot_image(image_id)
    assert_refused_and_nothing_recorded(compute, result, image_id, errors.GlanceUnavailable.exit_code,
                                        "unavailable")


def test_a_hung_key_manager_refuses_the_boot_within_the_timeout(compute, cloud):
    path, properties = compute.signed_image("raw")
    image_id = cloud.image(path, "raw", properties)
    compute.nova_download(image_id)
    with silent_server() as url:
        compute.configure(key_manager=f"[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {url}\n"
                                      "root_token_id = imgsign-test\n")
        result = compute.boot_image(image_id)
        assert_refused_and_nothing_recorded(compute, result, image_id, errors.KeyManagerError.exit_code,
                                            "key manager did not answer within")
        assert result.elapsed < TIMEOUT + SLACK, result.elapsed
        compute.configure("warn", key_manager=f"[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {url}\n"
                                              "root_token_id = imgsign-test\n")
        warned = compute.boot_image(image_id)
    assert warned.returncode == 0 and "WARNING" in warned.stderr and "key manager" in warned.stderr, warned.stderr
    assert warned.elapsed < TIMEOUT + SLACK, warned.elapsed

