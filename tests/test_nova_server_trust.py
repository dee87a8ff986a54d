"""A server's own trusted image certificates (Nova's ``--trusted-image-cert``) narrow what the hook allows.

Nova is real: nova-api 34 from PyPI (tests/servers/nova_api.py) on SQLite behind the session's real
Keystone, looking images up in a real Glance; servers are created and rebuilt through its API with
``trusted_image_certificates`` (microversion 2.63) and read back by the hook with its own ``[nova]``
credentials (keystoneauth ``password`` against the same Keystone). What stands in for Nova's
conductor and compute (the server going ACTIVE, the rebuild finishing) is said in that harness.

The hook runs as libvirt runs it (tests/test_boot_hook.py's :class:`Host`), the domain's ``<uuid>`` being
the server's id, its base cached by ``imgsign boot cache`` from the embedded key manager, so the hook
holds sealed id -> certificate bindings for the certificate ids A and B. The host trusts both.

Nova unreachable, slow or answering garbage or hostile documents is played by tests/servers/hostile.py
(a stand-in: nova-api cannot be made to answer a huge or malformed body; the credentials still come from
the real Keystone).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imgsign import errors
from tests.conftest import cert_of, key_of, run_cli
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.hostile import Hostile, hostile_server, json_route
from tests.servers.nova_api import NovaAPI, nova_api_server
from tests.test_boot_hook import Host, domain_xml
from tests.test_real_images import qemu
from tests.test_self_adoption_offline import closed_url

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 and Nova 34 need Python 3.11 or later", allow_module_level=True)

PROJECT = "alpha"
#: [nova] trusted_certs_timeout of the tests of a Nova that does not answer, and what a hook run may take
#: beyond it (Python's start); the others allow a cold call (keystoneauth's import, a Keystone token) on a
#: loaded machine more time.
TIMEOUT = 3.0
SLACK = 6.0
ANSWERING = 15.0


@dataclass
class Signed:
    image_id: str
    props: Path
    source: Path


class Cloud:
    """Keystone, Glance and nova-api; two certificates A and B in the embedded key manager."""

    def __init__(self, root: Path, glance: GlanceServer, nova: NovaAPI) -> None:
        self.root, self.glance, self.nova = root, glance, nova
        self.keystore = {"IMGSIGN_KEYSTORE": str(root / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(root)}
        self.cert_a = self._store(cert_of("RSA-PSS"))
        self.cert_b = self._store(cert_of("ECC_SECP384R1"))
        self.hook_auth = nova.keystone.keystoneauth_options(nova.hook_user())
        self.images: dict[str, Signed] = {}

    def _store(self, cert: Path) -> str:
        stored = run_cli("cert", "store", cert, env=self.keystore)
        assert stored.code == 0, stored
        return stored.stdout.strip()

    def signed(self, signer: str) -> Signed:
        """An image signed by ``signer`` ("A" or "B"), known to Glance (so Nova accepts it as imageRef)."""
        if signer not in self.images:
            key, cert_id = (key_of("RSA-PSS"), self.cert_a) if signer == "A" else (key_of("ECC_SECP384R1"), self.cert_b)
            image_id = str(uuid.uuid4())
            source = self.root / f"{signer}.qcow2"
            qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "16M")
            qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 0x{ord(signer):02x} 0 1M", source)
            signed = run_cli("sign", source, "--key", key, "--cert-uuid", cert_id, env=self.keystore)
            assert signed.code == 0, signed
            props = self.root / f"{signer}.json"
            props.write_text(signed.stdout)
            headers = self.glance.headers(PROJECT)
            created = requests.post(f"{self.glance.url}/v2/images", headers=headers, timeout=30, json={
                "id": image_id, "name": f"signed-by-{signer}", "disk_format": "qcow2", "container_format": "bare"})
            assert created.status_code == 201, created.text
            uploaded = requests.put(f"{self.glance.url}/v2/images/{image_id}/file", data=source.read_bytes(),
                                    headers={**headers, "Content-Type": "application/octet-stream"}, timeout=60)
            assert uploaded.status_code == 204, uploaded.text
            self.images[signer] = Signed(image_id, props, source)
        return self.images[signer]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone) -> Iterator[Cloud]:
    root = tmp_path_factory.mktemp("nova-server-trust")
    with glance_server(root / "glance", keystone=keystone, keystore=root / "glance-unused.sqlite3",
                       import_methods=()) as glance, \
            nova_api_server(root / "nova", keystone=keystone, glance=glance) as nova:
        yield Cloud(root, glance, nova)


class Compute(Host):
    """A compute host whose hook asks ``nova_url`` (default: the real nova-api) for servers' lists."""

    def __init__(self, tmp: Path, cloud: Cloud) -> None:
        self.cloud = cloud
        super().__init__(tmp)
        self.configure()

    def configure(self, mode: str = "enforce", trusted: str | None = None, allow_unverified: str = "", *,
                  nova_url: str | None = None, fallback: str = "refuse", nova: bool = True,
                  timeout: float = ANSWERING, key_manager: bool = False) -> None:
        trusted = f"{self.cloud.cert_a}, {self.cloud.cert_b}" if trusted is None else trusted
        text = (f"[boot]\nmode = {mode}\ntrusted_certificate_ids = {trusted}\ninstances_path = {self.instances}\n"
                f"state_dir = {self.state}\nlog_file = {self.log}\nallow_unverified = {allow_unverified}\n")
        if key_manager:  # self-adoption's key manager (no [glance]: nothing to adopt here)
            text += (f"adopt = true\n\n[key_manager]\nbackend = imgsign\n\n"
                     f"[imgsign_embedded]\npath = {self.cloud.keystore['IMGSIGN_KEYSTORE']}\n")
        if nova:
            text += (f"\n[nova]\n{self.cloud.hook_auth}endpoint_override = {nova_url or self.cloud.nova.compute_url}\n"
                     f"trusted_certs_fallback = {fallback}\ntrusted_certs_timeout = {timeout:g}\n")
        self.config.write_text(text)

    def cache(self, image: Signed) -> None:
        """``imgsign boot cache`` from the key manager: binds the signer's id (and the trusted ids) here."""
        if self.base(image.image_id).exists():
            return
        cached = run_cli("boot", "cache", image.source, "--image-id", image.image_id, "--properties", image.props,
                         "--trusted", self.cloud.cert_a, "--trusted", self.cloud.cert_b,
                         "--instances-path", self.instances, "--state-dir", self.state, env=self.cloud.keystore)
        assert cached.code == 0, cached

    def start(self, server_id: str, image: Signed, operation: str = "prepare"):
        """The hook for server ``server_id`` (the domain's uuid) booting ``image``."""
        self.cache(image)
        disk = self.instances / server_id / f"disk-{image.image_id[:8]}"
        if not disk.exists():
            disk.parent.mkdir(parents=True, exist_ok=True)
            qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base(image.image_id), "-F", "raw", disk)
        return self.hook(server_id, domain_xml(server_id, image.image_id, [(disk, "qcow2")]), operation)

    def last(self, prefix: str = "nova:") -> dict:
        return [entry for entry in self.log_entries() if entry["file"].startswith(prefix)][-1]


@pytest.fixture
def compute(tmp_path, cloud) -> Compute:
    os.chmod(tmp_path, 0o755)
    return Compute(tmp_path, cloud)


# --- the real nova-api ----------------------------------------------------------------------------


def test_server_created_with_a_trusted_cert_boots_only_that_signer(compute, cloud):
    """``--trusted-image-cert A``: an image signed by B is refused though the host trusts B; A's boots."""
    a, b = cloud.signed("A"), cloud.signed("B")
    server = cloud.nova.create_server(PROJECT, a.image_id, [cloud.cert_a])
    assert cloud.nova.show(PROJECT, server)["trusted_image_certificates"] == [cloud.cert_a]

    refused = compute.start(server, b)
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    assert f"trusted image certificates of server {server} in Nova ({cloud.cert_a})" in refused.stderr
    for operation in ("prepare", "start"):
        booted = compute.start(server, a, operation)
        assert booted.returncode == 0, booted.stderr
    assert compute.last()["reason"] == "server-trust" and cloud.cert_a in compute.last()["message"]


def test_server_without_a_list_is_decided_by_the_host_policy_alone(compute, cloud):
    a, b = cloud.signed("A"), cloud.signed("B")
    server = cloud.nova.create_server(PROJECT, b.image_id)
    assert cloud.nova.show(PROJECT, server)["trusted_image_certificates"] is None
    assert compute.start(server, b).returncode == 0
    assert compute.start(server, a).returncode == 0
    assert "no trusted image certificates of its own" in compute.last()["message"]
    compute.configure(trusted=cloud.cert_a)  # the host itself no longer trusts B
    assert compute.start(server, b).returncode == errors.UntrustedCertificate.exit_code


def test_the_server_list_never_widens_the_host_policy(compute, cloud):
    """A server that lists B on a host that trusts only A: B is still refused (by the host's list)."""
    b = cloud.signed("B")
    server = cloud.nova.create_server(PROJECT, b.image_id, [cloud.cert_b])
    compute.configure(trusted=cloud.cert_a)
    refused = compute.start(server, b)
    assert refused.returncode == errors.UntrustedCertificate.exit_code
    assert "not among the trusted certificate ids" in refused.stderr


def test_rebuild_with_another_list_changes_the_decision(compute, cloud):
    a, b = cloud.signed("A"), cloud.signed("B")
    server = cloud.nova.create_server(PROJECT, a.image_id, [cloud.cert_a])
    assert compute.start(server, b).returncode == errors.UntrustedCertificate.exit_code
    assert compute.start(server, a).returncode == 0

    cloud.nova.rebuild(PROJECT, server, b.image_id, [cloud.cert_b])  # openstack server rebuild --trusted-image-cert B
    assert cloud.nova.show(PROJECT, server)["trusted_image_certificates"] == [cloud.cert_b]
    assert compute.start(server, b).returncode == 0
    assert compute.start(server, a).returncode == errors.UntrustedCertificate.exit_code

    cloud.nova.rebuild(PROJECT, server, a.image_id, None)  # --no-trusted-image-certs: the host's policy alone
    assert cloud.nova.show(PROJECT, server)["trusted_image_certificates"] is None
    assert compute.start(server, a).returncode == 0
    assert compute.start(server, b).returncode == 0


def test_an_id_this_host_never_fetched_names_no_certificate(compute, cloud):
    """A server list naming an id the hook holds no binding for: refused, saying so."""
    a = cloud.signed("A")
    never = str(uuid.uuid4())
    server = cloud.nova.create_server(PROJECT, a.image_id, [never])
    refused = compute.start(server, a)
    assert refused.returncode == errors.UntrustedCertificate.exit_code
    assert f"never fetched from the key manager on this host, so naming no certificate here: {never}" in refused.stderr


def test_an_id_never_fetched_is_fetched_when_the_hook_has_a_key_manager(compute, cloud):
    """A host that cached A's image from a file (no id bound) and trusts any signer: the server's id of A
    names nothing here until the hook, with self-adoption's key manager configured, fetches and binds it
    (as adoption binds the trusted ids it fetches)."""
    a, b = cloud.signed("A"), cloud.signed("B")
    for image, cert in ((a, "RSA-PSS"), (b, "ECC_SECP384R1")):
        cached = run_cli("boot", "cache", image.source, "--image-id", image.image_id, "--properties", image.props,
                         "--cert", cert_of(cert), "--instances-path", compute.instances, "--state-dir", compute.state)
        assert cached.code == 0, cached
    compute.configure(trusted="")
    server = cloud.nova.create_server(PROJECT, a.image_id, [cloud.cert_a])
    refused = compute.start(server, a)
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    assert "never fetched from the key manager on this host" in refused.stderr
    compute.configure(trusted="", key_manager=True)
    booted = compute.start(server, a)
    assert booted.returncode == 0, booted.stderr
    assert compute.start(server, b).returncode == errors.UntrustedCertificate.exit_code
    unknown = cloud.nova.create_server(PROJECT, a.image_id, [str(uuid.uuid4())])
    refused = compute.start(unknown, a)  # the key manager has no such id: logged, then refused
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    assert "cannot fetch a trusted certificate of the server's list from the key manager" in refused.stderr


def test_a_domain_nova_does_not_know_is_refused(compute, cloud):
    refused = compute.start(str(uuid.uuid4()), cloud.signed("A"))
    assert refused.returncode == errors.UnknownServer.exit_code, refused.stderr
    assert "Nova has no server" in refused.stderr


def test_without_nova_configured_nothing_is_asked(compute, cloud):
    """No [nova] section: the hook does not look servers up (the default configuration)."""
    a = cloud.signed("A")
    compute.configure(nova=False)
    assert compute.start(str(uuid.uuid4()), a).returncode == 0
    assert not [entry for entry in compute.log_entries() if entry["file"].startswith("nova:")]


def test_the_token_is_kept_sealed_and_renewed_when_refused(compute, cloud):
    """The second call reuses the kept token (no Keystone call); a revoked or damaged one is replaced."""
    from imgsign.compute.nova_client import CACHE_DIR, CACHE_NAME
    from imgsign.compute.sealed import SealedStore

    a = cloud.signed("A")
    server = cloud.nova.create_server(PROJECT, a.image_id, [cloud.cert_a])
    assert compute.start(server, a).returncode == 0
    store = SealedStore(str(compute.state), CACHE_DIR)
    kept = store.read(CACHE_NAME)
    assert kept is not None and kept["headers"]["X-Auth-Token"]
    assert (compute.state / CACHE_DIR / f"{CACHE_NAME}.json").stat().st_mode & 0o077 == 0
    assert compute.start(server, a).returncode == 0
    assert store.read(CACHE_NAME) == kept  # reused, not fetched again
    store.write(CACHE_NAME, {**kept, "headers": {"X-Auth-Token": "revoked"}})  # Nova answers 401
    assert compute.start(server, a).returncode == 0
    renewed = store.read(CACHE_NAME)
    assert renewed is not None and renewed["headers"]["X-Auth-Token"] not in ("revoked", "")


# --- Nova unreachable, slow, broken or hostile ------------------------------------------------------


SERVER = "5e2b8a4c-1f9b-4c8e-9a53-0d6a7c1e2f00"
#: server id -> the document the hostile Nova answers for it.
HOSTILE_DOCUMENTS = {
    "11111111-1111-4111-8111-111111111111": {"server": {"id": SERVER, "trusted_image_certificates": None}},
    "22222222-2222-4222-8222-222222222222": {"server": {"id": "22222222-2222-4222-8222-222222222222",
                                                        "trusted_image_certificates": "cert-a"}},
    "33333333-3333-4333-8333-333333333333": {"server": {"id": "33333333-3333-4333-8333-333333333333",
                                                        "trusted_image_certificates": [7, {"id": "x"}]}},
    "44444444-4444-4444-8444-444444444444": {"server": {"id": "44444444-4444-4444-8444-444444444444",
                                                        "trusted_image_certificates": [f"c{i}" for i in range(5000)]}},
    "55555555-5555-4555-8555-555555555555": {"server": {"id": "55555555-5555-4555-8555-555555555555"}},
    "66666666-6666-4666-8666-666666666666": {"server": {"id": "66666666-6666-4666-8666-666666666666",
                                                        "trusted_image_certificates": ["ok", "\x1b]0;x\x07"]}},
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Iterator[Hostile]:
    routes = [json_route("GET", f"/v2.1/servers/{server}", document)
              for server, document in HOSTILE_DOCUMENTS.items()]
    routes.append(json_route("GET", f"/v2.1/servers/{SERVER}", {"server": {
        "id": SERVER, "trusted_image_certificates": ["cert-a"]}}))
    routes.append(json_route("GET", "/v2.1/servers/.*", {"itemNotFound": {"code": 404}}, status=404))
    with hostile_server(routes, tmp_path_factory.mktemp("hostile-nova")) as server:
        yield server


@pytest.mark.parametrize("behaviour", ["closed", "silent", "trickle-headers", "trickle", "stall", "huge",
                                       "huge-chunked", "gzip-bomb", "truncated", "reset", "redirect", "5xx",
                                       "escapes-error"])
@pytest.mark.parametrize("fallback", ["refuse", "host"])
def test_nova_unreachable_slow_or_broken_follows_the_fallback(compute, cloud, hostile, behaviour, fallback):
    """Within the deadline: refused with 85 (refuse), or decided by the host's policy with a warning (host)."""
    a = cloud.signed("A")
    url = closed_url() + "/v2.1" if behaviour == "closed" else hostile.url(behaviour) + "/v2.1"
    compute.configure(nova_url=url, fallback=fallback, timeout=TIMEOUT)
    start = time.monotonic()
    result = compute.start(SERVER, a)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + SLACK, (behaviour, elapsed)
    entry = compute.last()
    assert entry["reason"] == "nova-unavailable", entry
    if fallback == "refuse":
        assert result.returncode == errors.NovaUnavailable.exit_code, result.stderr
        assert "trusted_certs_fallback = refuse" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert entry["allowed"] and "decided by the host's trusted certificates alone" in entry["message"]
        assert "WARNING" in result.stderr
    assert "\x1b" not in result.stderr


@pytest.mark.parametrize(("server", "why"), [
    ("11111111-1111-4111-8111-111111111111", "as the server's id"),
    ("22222222-2222-4222-8222-222222222222", "is a str, not a list"),
    ("33333333-3333-4333-8333-333333333333", "holds a int, not a certificate id"),
    ("44444444-4444-4444-8444-444444444444", "has 5000 ids; Nova allows at most 50"),
    ("55555555-5555-4555-8555-555555555555", "did not answer at microversion 2.63"),
    ("66666666-6666-4666-8666-666666666666", "not printable text"),
])
@pytest.mark.parametrize("fallback", ["refuse", "host"])
def test_hostile_answers_are_refused_whatever_the_fallback(compute, cloud, hostile, server, why, fallback):
    compute.configure(nova_url=hostile.url() + "/v2.1", fallback=fallback)
    result = compute.start(server, cloud.signed("A"))
    assert result.returncode == errors.NovaAnswerInvalid.exit_code, result.stderr
    assert why in result.stderr and "\x1b" not in result.stderr


def test_a_hostile_nova_is_asked_with_the_microversion_and_never_followed(compute, cloud, hostile):
    compute.configure(nova_url=hostile.url("redirect") + "/v2.1")
    before = len(hostile.requests())
    compute.start(SERVER, cloud.signed("A"))
    sent = hostile.requests()[before:]
    assert len(sent) == 1 and sent[0]["target"] == f"/redirect/v2.1/servers/{SERVER}", sent
    headers = sent[0]["headers"]
    assert headers["openstack-api-version"] == "compute 2.63" and headers["accept-encoding"] == "identity"


def test_a_domain_uuid_that_is_no_uuid_is_refused(compute, cloud):
    result = compute.start("not-a-uuid", cloud.signed("A"))
    assert result.returncode == errors.UnknownServer.exit_code, result.stderr


def test_a_boot_with_no_image_does_not_ask_nova(compute, cloud, tmp_path):
    """A volume-backed server (no base in _base) boots with Nova unreachable under ``refuse``: its boot has
    nothing for a server's list to narrow."""
    compute.configure(nova_url=closed_url() + "/v2.1", allow_unverified="block")
    xml = domain_xml(SERVER, None, [], devices_extra='<disk type="block" device="disk"><driver name="qemu" '
                                                     'type="raw"/><source dev="/dev/null"/><target dev="vda"/></disk>')
    result = compute.hook(SERVER, xml)
    assert result.returncode == 0, result.stderr
    assert not [entry for entry in compute.log_entries() if entry["file"].startswith("nova:")]


def test_the_base_check_still_runs_after_a_host_fallback(compute, cloud):
    """Nova unreachable under ``host``: the host's own checks still refuse an untrusted signer."""
    a = cloud.signed("A")
    compute.configure(nova_url=closed_url() + "/v2.1", fallback="host", trusted=cloud.cert_b)
    refused = compute.start(SERVER, a)
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    assert compute.last()["reason"] == "nova-unavailable" and compute.last()["allowed"]


# --- cost ------------------------------------------------------------------------------------------


def test_a_lookup_with_a_kept_token_loads_no_keystoneauth_oslo_or_requests(compute, cloud, tmp_path):
    """With a kept token a hook call asks Nova with the standard library: the warm boot's module set stays
    free of the network stack (tests/test_warm_boot.py), plus only http.client."""
    from tests.test_warm_boot import HEAVY, _modules_of_hook

    a = cloud.signed("A")
    server = cloud.nova.create_server(PROJECT, a.image_id, [cloud.cert_a])
    assert compute.start(server, a).returncode == 0  # cold: token fetched and kept, base sealed
    xml = domain_xml(server, a.image_id, [(compute.instances / server / f"disk-{a.image_id[:8]}", "qcow2")])
    for operation in ("prepare", "start"):
        code, stderr, modules = _modules_of_hook(compute, server, xml, operation, tmp_path)
        assert code == 0, stderr
        assert [name for name in modules if name.startswith(HEAVY)] == [], operation
    assert compute.last()["reason"] == "server-trust"
