"""Every HTTP client imgsign has, against every misbehaviour of a hostile service (tests/servers/hostile.py).

Clients: the Glance client (image record, image list with paging, image data), Keystone through
keystoneauth (the token the Glance client asks for), castellan's Vault and Barbican backends through
:class:`~imgsign.keymanager.castellan_store.CastellanStore`, the OpenBao transit client, the POST the TSA
and OCSP clients make (:mod:`imgsign._internal.binary_post`), and the boot
hook's self-adoption (a real hook process: Glance's record, the key manager, the download of
adoption by conversion).  For each misbehaviour the answer must be a refusal with the service's exit
code, within the deadline (wall time measured, with slack), in bounded memory (``tracemalloc`` peak
in process; the hook's maximum RSS from ``wait4``), never an allowed boot, a hang or a traceback.

On main before this branch (1f59a47) this fails: trickling and stalled answers are only bounded
per read (a record at 5 bytes a second held the client for minutes; the hook's conversion download
ran past ``adopt_conversion_timeout``), huge and gzip-bombed answers were read whole (64 MiB and
512 MiB peaks), redirects were followed by castellan's Vault client, and a record of another image
was returned by the Glance client as the one asked for.
"""

from __future__ import annotations

import binascii
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsign import errors
from imgsign.keymanager import castellan_store
from tests.conftest import cert_of, key_of, run_cli
from tests.servers.hostile import BEHAVIOURS, HUGE, Hostile, Route, hostile_server, json_route
from tests.test_boot_hook import HOOK, Host, domain_xml
from tests.test_real_images import qemu

IMAGE_ID = "6b0d5c8e-1f7a-4c2e-9a53-0d5e1c6f7a11"
#: A qcow2 image Nova converted to raw, without a raw-digest statement: adopted by conversion.
QCOW2_ID = "0f3c2b1a-5d4e-4f60-9a7b-8c9d0e1f2a3b"
CERT_ID = "9c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
TOKEN = "hostile-test-token"
#: Deadline of one in-process client call, and the slack allowed on top (thread start, a GC pause).
DEADLINE = 1.5
SLACK = 1.5
#: Most a client may allocate while refusing (the cap is 4 MiB; requests joins what it read once).
MEMORY = 24 * 1024 * 1024
#: Behaviours a client may survive at the transport level because the content is not its to judge.
DATA_BEHAVIOURS_ACCEPTED = {"ok", "huge", "huge-chunked", "long-length", "other-image", "escapes"}


def _record(data: bytes, properties: dict[str, str]) -> dict[str, Any]:
    return {"id": IMAGE_ID, "name": "hostile", "status": "active", "disk_format": "raw", "container_format": "bare",
            "size": len(data), **properties}


def _routes(data: bytes, record: dict[str, Any], cert_der: bytes, cert_pem: bytes, transit_pem: str,
            qcow2: bytes, qcow2_record: dict[str, Any]) -> list[Route]:
    catalog = [
        {"type": "image", "name": "glance", "endpoints": [
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "id": "g",
             "url": "{base}/glance"}]},
        {"type": "key-manager", "name": "barbican", "endpoints": [
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "id": "b",
             "url": "{base}/barbican"}]},
    ]
    token = {"token": {"methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
                       "issued_at": "2026-01-01T00:00:00.000000Z", "catalog": catalog,
                       "user": {"id": "u", "name": "demo", "domain": {"id": "default", "name": "Default"}},
                       "project": {"id": "p", "name": "demo", "domain": {"id": "default", "name": "Default"}},
                       "roles": [{"id": "r", "name": "member"}]}}
    secret = {"secret_ref": f"{{base}}/barbican/v1/secrets/{CERT_ID}", "name": "signing", "status": "ACTIVE",
              "secret_type": "certificate", "content_types": {"default": "application/octet-stream"},
              "created": "2026-01-01T00:00:00", "updated": "2026-01-01T00:00:00", "algorithm": None,
              "bit_length": None, "mode": None, "expiration": None, "creator_id": "u"}
    vault = {"data": {"data": {"type": "certificate", "value": binascii.hexlify(cert_der).decode(), "name": "signing",
                               "created": 1767225600, "algorithm": None, "bit_length": None},
                      "metadata": {"version": 1}}}
    transit = {"data": {"type": "rsa-2048", "latest_version": 1, "name": "k",
                        "keys": {"1": {"public_key": transit_pem, "creation_time": "2026-01-01T00:00:00Z"}}}}
    return [
        json_route("GET", "/identity/v3/?", {"version": {  # Keystone's version discovery
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": "{base}/identity/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}},
                   tag="keystone"),
        json_route("POST", "/identity/v3/auth/tokens", token, status=201, tag="keystone",
                   headers={"X-Subject-Token": TOKEN}),
        json_route("GET", f"/glance/v2/images/{IMAGE_ID}", record, tag="glance"),
        Route("GET", f"/glance/v2/images/{IMAGE_ID}/file", 200, data, {"Content-Type": "application/octet-stream"},
              "glance-data"),
        json_route("GET", r"/glance/v2/images\?limit=200",
                   {"images": [record], "next": f"/v2/images?marker={IMAGE_ID}"}, tag="glance"),
        json_route("GET", rf"/glance/v2/images\?marker={IMAGE_ID}", {"images": []}, tag="glance"),
        json_route("GET", f"/vault/v1/secret/data/{CERT_ID}", vault, tag="vault"),
        json_route("GET", "/barbican/?", {"versions": {"values": [{  # Barbican's version discovery
            "id": "v1", "status": "stable", "links": [{"rel": "self", "href": "{base}/barbican/v1/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.key-manager-v1+json"}],
            "min_version": "1.0", "max_version": "1.1"}]}}, tag="barbican"),
        json_route("GET", f"/barbican/v1/secrets/{CERT_ID}", secret, tag="barbican"),
        Route("GET", f"/barbican/v1/secrets/{CERT_ID}/payload", 200, cert_pem,  # Barbican keeps certificates as PEM
              {"Content-Type": "application/octet-stream"}, "barbican"),
        json_route("GET", "/transit/v1/transit/keys/k", transit, tag="transit"),
        json_route("GET", f"/glance/v2/images/{QCOW2_ID}", qcow2_record),
        Route("GET", f"/glance/v2/images/{QCOW2_ID}/file", 200, qcow2, {"Content-Type": "application/octet-stream"},
              "glance-data"),
        Route("POST", "/binary", 200, BINARY_ANSWER, {"Content-Type": "application/timestamp-reply"}, "binary"),
    ]


class Fixture:
    def __init__(self, server: Hostile, data: bytes, record: dict[str, Any], cert_der: bytes, qcow2: Path) -> None:
        self.server, self.data, self.record, self.cert_der, self.qcow2 = server, data, record, cert_der, qcow2


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Iterator[Fixture]:
    # Imported before anything is measured: a first import under tracemalloc takes seconds.
    import barbicanclient.v1.client  # noqa: F401
    import castellan.key_manager.barbican_key_manager
    import castellan.key_manager.vault_key_manager  # noqa: F401
    import keystoneauth1.identity.v3  # noqa: F401
    import oslo_context.context  # noqa: F401
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    tmp = tmp_path_factory.mktemp("hostile")
    data = os.urandom(1024 * 1024)
    image = tmp / "image.raw"
    image.write_bytes(data)
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_ID)
    assert signed.code == 0, signed
    record = _record(data, signed.json())
    cert_der = x509.load_pem_x509_certificate(cert_of("RSA-PSS").read_bytes()).public_bytes(
        serialization.Encoding.DER)
    transit_pem = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    qcow2 = tmp / "image.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", qcow2, "8M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x4f 0 1M", qcow2)
    signed_qcow2 = run_cli("sign", qcow2, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_ID, "--no-raw-digest")
    assert signed_qcow2.code == 0, signed_qcow2
    qcow2_record = {**_record(qcow2.read_bytes(), signed_qcow2.json()), "id": QCOW2_ID, "disk_format": "qcow2"}
    routes = _routes(data, record, cert_der, cert_of("RSA-PSS").read_bytes(), transit_pem, qcow2.read_bytes(),
                     qcow2_record)
    with hostile_server(routes, tmp) as server:
        yield Fixture(server, data, record, cert_der, qcow2)


# --- the clients, in process ------------------------------------------------------------------------


def _glance(url: str, keystone: str | None = None) -> Any:
    from keystoneauth1 import session, token_endpoint
    from keystoneauth1.identity import v3

    from imgsign._internal.glance_api import GlanceClient

    if keystone is None:
        auth: Any = token_endpoint.Token(f"{url}/glance", TOKEN)
        return GlanceClient(session.Session(auth=auth), endpoint_override=f"{url}/glance", timeout=(1.0, 1.0))
    auth = v3.Password(auth_url=f"{keystone}/identity/v3", username="demo", password="secret", project_name="demo",
                       user_domain_id="default", project_domain_id="default")
    return GlanceClient(session.Session(auth=auth), interface="public", timeout=(1.0, 1.0))


def glance_record(url: str) -> object:
    return _glance(url).get_image(IMAGE_ID)


def glance_list(url: str) -> object:
    return list(_glance(url).iter_images())


def glance_data(url: str) -> object:
    from imgsign._internal.deadline import Deadline

    total = 0
    for chunk in _glance(url).iter_data(IMAGE_ID, 65536, deadline=Deadline(DEADLINE, "the test's deadline")):
        total += len(chunk)  # counted, never kept: the client must not buffer either
    return total


def keystone_then_glance(url: str) -> object:
    # The behaviour applies to Keystone only (tag): the catalog points at a well-behaved Glance.
    return _glance(url, keystone=url).get_image(IMAGE_ID)


def _store(conf_text: str, tmp: Path) -> Any:
    from imgsign.keymanager import config as km_config

    path = tmp / f"{uuid.uuid4()}.conf"
    path.write_text(conf_text)
    return km_config.open_store(km_config.load(str(path)))


def vault_certificate(url: str, tmp: Path) -> object:
    store = _store(f"[key_manager]\nbackend = vault\n[vault]\nvault_url = {url}/vault\nroot_token_id = {TOKEN}\n"
                   "kv_mountpoint = secret\nkv_version = 2\ntimeout = 30\n", tmp)
    return store.get_certificate(CERT_ID)  # within castellan_store.CALL_TIMEOUT, set to DEADLINE below


def barbican_certificate(url: str, tmp: Path) -> object:
    from keystoneauth1.identity import v3
    from oslo_context import context as oslo_context

    from imgsign.keymanager.castellan_store import CastellanStore

    class Context(oslo_context.RequestContext):  # how a service hands castellan its user's credentials
        def get_auth_plugin(self) -> Any:
            return v3.Password(auth_url=f"{url}/identity/v3", username="demo", password="secret",
                               project_name="demo", user_domain_id="default", project_domain_id="default")

    store = _store("[key_manager]\nbackend = barbican\n[barbican]\nbarbican_api_version = v1\n"
                   "barbican_endpoint_type = public\nbarbican_region_name = RegionOne\n", tmp)
    store = CastellanStore(store._manager, Context(project_id="p"), store.description)
    return store.get_certificate(CERT_ID)


def transit_key(url: str) -> object:
    from imgsign.keys import transit

    client = transit.TransitClient(transit.TransitSettings(f"{url}/transit", TOKEN, timeout=DEADLINE))
    return transit._key_from(client, "k", client.call("GET", "keys/k"))


#: What the TSA and OCSP stand-in answers (the client only carries bytes; their parsers judge them).
BINARY_ANSWER = b"\x30\x03\x02\x01\x00" * 40


def binary_post(url: str) -> object:
    """The one POST the TSA and OCSP clients make (imgsign._internal.binary_post)."""
    from imgsign._internal.binary_post import post
    from imgsign._internal.deadline import Deadline

    return post(f"{url}/binary", b"request", content_type="application/timestamp-query",
                accept="application/timestamp-reply", deadline=Deadline(DEADLINE, "the test's deadline"),
                error=errors.TimestampUnavailable, service="the TSA", max_body=64 * 1024)


#: client name -> (call, tag its behaviour applies to, exit codes of a refusal, behaviours it may survive)
CLIENTS: dict[str, tuple[Callable[..., object], str, set[int], set[str]]] = {
    "glance-record": (glance_record, "glance", {70}, {"ok"}),
    "glance-list": (glance_list, "glance", {70}, {"ok", "escapes", "other-image"}),
    "glance-data": (glance_data, "glance-data", {70}, DATA_BEHAVIOURS_ACCEPTED),
    "keystone": (keystone_then_glance, "keystone", {70}, {"ok", "other-image", "escapes"}),
    "vault": (vault_certificate, "vault", {50, 51}, {"ok", "other-image"}),
    "barbican": (barbican_certificate, "barbican", {50, 51}, {"ok", "other-image"}),
    "transit": (transit_key, "transit", {42, 43, 44, 45, 46}, {"ok", "other-image"}),
    "tsa-ocsp": (binary_post, "binary", {27}, {"ok", "other-image", "escapes", "long-length"}),
}


def _measured(call: Callable[[], object]) -> tuple[object, float, int]:
    """(the result or the exception, seconds, peak bytes allocated)."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        outcome: object = call()
    except Exception as exc:
        outcome = exc
    elapsed = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, elapsed, peak


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_refuses_every_misbehaviour_in_time_and_in_bounded_memory(hostile, client, behaviour,
                                                                                tmp_path, monkeypatch):
    monkeypatch.setattr(castellan_store, "CALL_TIMEOUT", DEADLINE, raising=False)
    call, tag, codes, survivable = CLIENTS[client]
    url = hostile.server.url(behaviour, tag)
    needs_tmp = client in ("vault", "barbican")
    outcome, elapsed, peak = _measured(lambda: call(url, tmp_path) if needs_tmp else call(url))
    # Each client's own limit is the in-process deadline or its 1 s + 1 s Glance request timeout.
    assert elapsed < 2 * 1.0 + SLACK, (client, behaviour, elapsed, outcome)
    assert peak < MEMORY, (client, behaviour, peak)
    if isinstance(outcome, errors.ImgsignError):
        assert outcome.exit_code in codes, (client, behaviour, outcome.exit_code, outcome.message)
        assert behaviour != "ok", (client, outcome.message)
        return
    assert not isinstance(outcome, Exception), (client, behaviour, repr(outcome))  # never anything but ours
    assert behaviour in survivable, (client, behaviour, "accepted", repr(outcome)[:200])
    if behaviour == "ok":
        expected = {"glance-record": hostile.record, "glance-list": [hostile.record], "keystone": hostile.record,
                    "glance-data": len(hostile.data), "vault": hostile.cert_der, "barbican": hostile.cert_der,
                    "tsa-ocsp": BINARY_ANSWER}
        if client in expected:
            assert outcome == expected[client], client
    if client == "glance-data" and behaviour != "ok":
        assert outcome in (len(hostile.data) - 1, len(hostile.data), HUGE), outcome  # never more than announced


def test_no_client_follows_a_redirect(hostile, tmp_path, monkeypatch):
    """A redirect is refused by every client, and nothing is sent to where it points (``/ok/...``, where a
    good answer waits), so no token follows it."""
    monkeypatch.setattr(castellan_store, "CALL_TIMEOUT", DEADLINE, raising=False)
    for name, (call, tag, codes, _) in CLIENTS.items():
        url = hostile.server.url("redirect", tag)
        seen = len(hostile.server.requests())
        with pytest.raises(errors.ImgsignError) as caught:
            call(url, tmp_path) if name in ("vault", "barbican") else call(url)
        assert caught.value.exit_code in codes, (name, caught.value.message)
        followed = [r["target"] for r in hostile.server.requests()[seen:] if r["target"].startswith("/ok/")]
        assert not followed, (name, followed)


# --- the boot hook ----------------------------------------------------------------------------------

#: [boot] adopt_timeout and adopt_conversion_timeout of the hook runs; the slack covers Python's start
#: and imports (keystoneauth, castellan, oslo) on a busy CI machine.
HOOK_TIMEOUT = 1.5
HOOK_SLACK = 5.0
#: Most the hook's maximum RSS may be (its imports take about 100 MiB; a 64 MiB answer read whole, or
#: the 512 MiB gzip bomb inflated, would pass it).
HOOK_MEMORY = 170 * 1024 * 1024


def _hook(host: Host, image_id: str, hostile: Fixture, *, glance: str, vault: str, extra: str = "",
          base: bytes | None = None, keystone: str | None = None) -> tuple[int, str, float, int]:
    """Boot an instance over an unrecorded base of ``image_id`` through the real hook: (exit code,
    stderr, seconds, maximum RSS in bytes).  With ``keystone`` the hook gets a token there (password
    auth) and Glance's endpoint from its catalog, else it uses ``glance`` with a token of its own."""
    credentials = (f"auth_type = admin_token\nendpoint = {glance}/glance\ntoken = {TOKEN}\n" if keystone is None
                   else f"auth_type = password\nauth_url = {keystone}/identity/v3\nusername = demo\n"
                        "password = secret\nproject_name = demo\nuser_domain_id = default\n"
                        "project_domain_id = default\nvalid_interfaces = public\n")
    host.config.write_text(
        host.config.read_text() + f"adopt_timeout = {HOOK_TIMEOUT:g}\n{extra}"
        f"\n[glance]\n{credentials}"
        f"\n[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {vault}/vault\nroot_token_id = {TOKEN}\n"
        "kv_mountpoint = secret\nkv_version = 2\ntimeout = 30\n")
    (host.instances / "_base").mkdir(parents=True, exist_ok=True)
    if base is None:
        host.base(image_id).write_bytes(hostile.data)
    else:
        host.base(image_id).write_bytes(base)
    instance, disk = host.instance(image_id)
    rss = host.tmp / "maxrss"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _MEASURED, str(rss), sys.executable, str(HOOK),
                             f"instance-{instance[:8]}", "prepare", "begin", "-"],
                            input=domain_xml(instance, image_id, [(disk, "qcow2")]).encode(), capture_output=True,
                            timeout=60, env={**os.environ, "IMGSIGN_BOOT_CONFIG": str(host.config)})
    elapsed = time.monotonic() - start
    return result.returncode, result.stderr.decode(errors="replace"), elapsed, int(rss.read_text()) * 1024


#: Runs a command and writes its maximum RSS (KiB, from the kernel's accounting of the reaped child) to argv[1].
_MEASURED = ("import resource, subprocess, sys\n"
             "code = subprocess.call(sys.argv[2:])\n"
             "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
             "sys.exit(code)\n")


def _judge(code: int, stderr: str, elapsed: float, rss: int, behaviour: str, codes: set[int],
           survivable: set[str], bound: float) -> None:
    assert "Traceback" not in stderr, stderr
    assert elapsed < bound + HOOK_SLACK, (behaviour, elapsed, stderr)
    assert rss < HOOK_MEMORY, (behaviour, rss // 2 ** 20, stderr)
    if behaviour in survivable and code == 0:
        return
    assert behaviour != "ok", (code, stderr)
    assert code in codes, (behaviour, code, stderr)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_the_hook_refuses_a_hostile_glance_within_adopt_timeout(hostile, behaviour, tmp_path):
    """Glance's image record misbehaves; the key manager is well-behaved."""
    host = Host(tmp_path)
    code, stderr, elapsed, rss = _hook(host, IMAGE_ID, hostile, glance=hostile.server.url(behaviour, "glance"),
                                       vault=hostile.server.url())
    _judge(code, stderr, elapsed, rss, behaviour, {70}, {"ok"}, HOOK_TIMEOUT)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_the_hook_refuses_a_hostile_keystone_within_adopt_timeout(hostile, behaviour, tmp_path):
    """Keystone's token answer misbehaves (the catalog it names points at a well-behaved Glance)."""
    host = Host(tmp_path)
    code, stderr, elapsed, rss = _hook(host, IMAGE_ID, hostile, glance="", vault=hostile.server.url(),
                                       keystone=hostile.server.url(behaviour, "keystone"))
    _judge(code, stderr, elapsed, rss, behaviour, {70}, {"ok", "other-image"}, HOOK_TIMEOUT)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_the_hook_refuses_a_hostile_key_manager_within_adopt_timeout(hostile, behaviour, tmp_path):
    """castellan's Vault backend meets the misbehaviour; Glance is well-behaved."""
    host = Host(tmp_path)
    code, stderr, elapsed, rss = _hook(host, IMAGE_ID, hostile, glance=hostile.server.url(),
                                       vault=hostile.server.url(behaviour, "vault"))
    _judge(code, stderr, elapsed, rss, behaviour, {50, 51}, {"ok", "other-image"}, HOOK_TIMEOUT)


@pytest.mark.parametrize("behaviour", [b for b in BEHAVIOURS if b not in ("other-image", "escapes")])  # JSON only
def test_the_hook_refuses_a_hostile_download_within_adopt_conversion_timeout(hostile, behaviour, tmp_path):
    """Adoption by conversion: the qcow2's data misbehaves (the record and the key manager do not).  A
    larger original than adopt_conversion_max_size is an input error (10), one that does not verify 31."""
    host = Host(tmp_path)
    raw = tmp_path / "nova.raw"
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", hostile.qcow2, raw)  # what Nova did
    code, stderr, elapsed, rss = _hook(
        host, QCOW2_ID, hostile, glance=hostile.server.url(behaviour, "glance-data"), vault=hostile.server.url(),
        extra=f"adopt_by_conversion = true\nadopt_conversion_timeout = {HOOK_TIMEOUT:g}\n"
              "adopt_conversion_max_size = 16M\n", base=raw.read_bytes())
    _judge(code, stderr, elapsed, rss, behaviour, {70, 10, 31}, {"ok"}, 2 * HOOK_TIMEOUT)
