"""A real nova-api (Nova 34.0.0 from PyPI) behind the harness Keystone, on SQLite, for per-server trust.

What is real
    Nova's compute API as a WSGI server loads it (``nova.wsgi.osapi_compute``: Nova's config, its
    service record, the ``api-paste.ini`` shipped in the package with keystonemiddleware's
    ``authtoken`` and Nova's ``keystonecontext``), served by a threaded wsgiref server
    (``nova_app/serve_api.py``) from the cached Nova venv of :mod:`tests.servers.nova`. Its API
    database, cell0 and cell1 are SQLite files made by ``nova-manage api_db sync``,
    ``cell_v2 map_cell0``, ``cell_v2 create_cell`` and ``db sync``. Tokens are the session Keystone's
    (tests/servers/keystone.py), validated by Nova's authtoken as the service user ``nova``; images
    are looked up in a real Glance (tests/servers/glance.py) with the user's token, as nova-api does.
    ``POST /servers`` (microversion 2.63, ``trusted_image_certificates``, ``networks: none``),
    ``POST /servers/{id}/action`` ``rebuild`` and ``GET /servers/{id}`` run Nova's own code
    (validation, policy, quota, the ``TrustedCerts`` object saved with the build request, then the
    instance's ``instance_extra``).

What is a stand-in (a debt)
    There is no message queue, conductor, scheduler, placement, neutron or compute host:
    ``transport_url = fake://`` keeps Nova's RPC casts in the API process, where ``nova_app/conductor.py``
    answers the two the tests cause (build, rebuild) by writing, with Nova's own objects, the records the
    real services leave on success (the instance ACTIVE in cell1; ACTIVE again after rebuild). No guest
    exists; the hook's tests boot their own domains (or feed the hook the XML libvirt would) named by
    the server's uuid.

Credentials of the hook
    A server is shown to a reader of its project or an admin, and Nova's database layer hides every
    other project's instances from a context that is not admin (``context_is_admin``, ``role:admin``):
    a policy rule alone cannot let a service user read them. The hook's Nova user (the ``service``
    project's ``imgsign-hook``, :meth:`NovaAPI.hook_user`) therefore has the ``admin`` role, as Nova's
    own service user usually has.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.servers.common import ServerError, clean_env, free_port, run_server, start_with_port_retry, tail
from tests.servers.glance import GlanceServer, imgsign_pylib
from tests.servers.keystone import SERVICE_PROJECT, KeystoneServer
from tests.servers.nova import nova_venv

APP_DIR = Path(__file__).resolve().with_name("nova_app")
START_TIMEOUT = 120.0
MICROVERSION = "2.63"
FLAVOR = "imgsign.tiny"


@dataclass
class NovaAPI:
    url: str
    workdir: Path
    log: Path
    api_log: Path
    keystone: KeystoneServer
    glance: GlanceServer
    flavor_id: str

    @property
    def compute_url(self) -> str:
        return f"{self.url}/v2.1"

    def headers(self, project: str, version: str = MICROVERSION) -> dict[str, str]:
        """A member of ``project``'s token and the microversion."""
        user = self.keystone.project_user(project)
        return {"X-Auth-Token": self.keystone.token(user.user), "OpenStack-API-Version": f"compute {version}"}

    def _call(self, method: str, path: str, project: str, body: dict | None = None, *,
              expect: Sequence[int] = (200, 202)) -> requests.Response:
        response = requests.request(method, f"{self.compute_url}{path}", json=body, timeout=60,
                                    headers=self.headers(project))
        if response.status_code not in expect:
            raise ServerError(f"nova-api {method} {path}: {response.status_code} {response.text[:500]}"
                              f"\n--- {self.api_log} (tail) ---\n{tail(self.api_log)}")
        return response

    def create_server(self, project: str, image_id: str, trusted_certs: Sequence[str] | None = None,
                      name: str = "imgsign-test") -> str:
        """``openstack server create --image IMAGE [--trusted-image-cert ID ...] --network none``; its id,
        once Nova serves it as ACTIVE."""
        server: dict[str, object] = {"name": name, "imageRef": image_id, "flavorRef": self.flavor_id,
                                     "networks": "none"}
        if trusted_certs is not None:
            server["trusted_image_certificates"] = list(trusted_certs)
        server_id = self._call("POST", "/servers", project, {"server": server}).json()["server"]["id"]
        self.wait_active(project, server_id)
        return server_id

    def rebuild(self, project: str, server_id: str, image_id: str, trusted_certs: Sequence[str] | None) -> None:
        """``openstack server rebuild --image IMAGE [--trusted-image-cert ID ... | --no-trusted-image-certs]``."""
        self._call("POST", f"/servers/{server_id}/action", project,
                   {"rebuild": {"imageRef": image_id, "trusted_image_certificates": trusted_certs}})
        self.wait_active(project, server_id)

    def show(self, project: str, server_id: str) -> dict:
        return self._call("GET", f"/servers/{server_id}", project, expect=(200,)).json()["server"]

    def wait_active(self, project: str, server_id: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            server = self.show(project, server_id)
            if server["status"] == "ACTIVE":
                return server
            if time.monotonic() > deadline:
                raise ServerError(f"server {server_id} is {server['status']}, not ACTIVE after {timeout:.0f}s"
                                  f"\n--- {self.api_log} (tail) ---\n{tail(self.api_log)}")
            time.sleep(0.1)

    def hook_user(self) -> str:
        """The hook's own Nova user (``imgsign-hook`` of the service project), given the admin role."""
        user = "imgsign-hook"
        self.keystone.account(user, SERVICE_PROJECT, ("service",))
        self.keystone.grant(user, "admin")
        return user


def _conf(workdir: Path, etc: Path, keystone: KeystoneServer, glance: GlanceServer, neutron_port: int) -> str:
    return f"""\
[DEFAULT]
host = imgsign-api
transport_url = fake://
state_path = {workdir}
log_file = {workdir / "nova.log"}
use_stderr = False

[api]
auth_strategy = keystone

[wsgi]
api_paste_config = {etc / "api-paste.ini"}

[api_database]
connection = sqlite:///{workdir / "nova_api.sqlite"}

[database]
connection = sqlite:///{workdir / "nova_cell1.sqlite"}

[glance]
api_servers = {glance.url}

[neutron]
endpoint_override = http://127.0.0.1:{neutron_port}

[oslo_concurrency]
lock_path = {workdir / "locks"}

[oslo_messaging_notifications]
driver = noop

{keystone.authtoken_conf("nova")}"""


def _manage(python: Path, etc: Path, workdir: Path, env: dict[str, str], *args: str) -> None:
    log = workdir / "nova-manage.log"
    with open(log, "ab") as out:
        out.write(f"$ nova-manage {' '.join(args)}\n".encode())
        out.flush()
        done = subprocess.run([str(python.parent / "nova-manage"), "--config-file", str(etc / "nova.conf"), *args],
                              cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=300)
    if done.returncode != 0:
        raise ServerError(f"nova-manage {' '.join(args)} failed ({done.returncode})\n--- {log} (tail) ---\n{tail(log)}")


def _ready(url: str) -> bool:
    response = requests.get(f"{url}/", timeout=5)
    if response.status_code != 200:
        raise ServerError(f"GET / answered HTTP {response.status_code}")
    return True


@contextlib.contextmanager
def nova_api_server(workdir: Path | None = None, *, keystone: KeystoneServer,
                    glance: GlanceServer) -> Iterator[NovaAPI]:
    """Run nova-api on a free 127.0.0.1 port until the block ends (see the module's docstring)."""
    python = nova_venv() / "bin" / "python"
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsign-nova-api-")))
        workdir = Path(workdir)
        etc, home = workdir / "etc", workdir / "home"
        for directory in (etc, home, workdir / "locks"):
            directory.mkdir(parents=True, exist_ok=True)
        keystone.account("nova", SERVICE_PROJECT, ("service",))
        (etc / "api-paste.ini").write_bytes((python.parents[1] / "etc" / "nova" / "api-paste.ini").read_bytes())
        neutron_port = free_port()
        (etc / "nova.conf").write_text(_conf(workdir, etc, keystone, glance, neutron_port))

        env = clean_env(home, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON"))
        env["OS_NOVA_CONFIG_DIR"] = str(etc)
        env["PYTHONPATH"] = str(imgsign_pylib(workdir / "pylib"))
        env["PYTHONWARNINGS"] = "ignore"
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        _manage(python, etc, workdir, env, "api_db", "sync")
        _manage(python, etc, workdir, env, "cell_v2", "map_cell0",
                "--database_connection", f"sqlite:///{workdir / 'nova_cell0.sqlite'}")
        _manage(python, etc, workdir, env, "cell_v2", "create_cell", "--name", "cell1", "--transport-url", "fake://",
                "--database_connection", f"sqlite:///{workdir / 'nova_cell1.sqlite'}")
        _manage(python, etc, workdir, env, "db", "sync")

        def start(port: int):
            url = f"http://127.0.0.1:{port}"
            return run_server("nova-api", [str(python), str(APP_DIR / "serve_api.py"), str(port), str(neutron_port),
                                                  str(os.getpid())],
                              workdir=workdir, env=env, ready=lambda: _ready(url), timeout=START_TIMEOUT,
                              other_logs=[workdir / "nova.log"])

        port, _proc = start_with_port_retry(start, stack)
        url = f"http://127.0.0.1:{port}"
        admin = {"X-Auth-Token": keystone.token(keystone.admin.user), "OpenStack-API-Version": "compute 2.63"}
        response = requests.post(f"{url}/v2.1/flavors", json={"flavor": {
            "name": FLAVOR, "ram": 64, "vcpus": 1, "disk": 1}}, headers=admin, timeout=60)
        if response.status_code != 200:
            raise ServerError(f"nova-api refused the flavor: {response.status_code} {response.text[:300]}"
                              f"\n--- nova.log (tail) ---\n{tail(workdir / 'nova.log')}")
        yield NovaAPI(url, workdir, workdir / "nova-api.log", workdir / "nova.log", keystone, glance,
                      response.json()["flavor"]["id"])


if __name__ == "__main__":  # manual use: python -m tests.servers.nova_api
    from tests.servers.glance import glance_server
    from tests.servers.keystone import keystone_server

    with tempfile.TemporaryDirectory() as scratch, keystone_server() as identity, \
            glance_server(keystone=identity, keystore=Path(scratch) / "keystore.sqlite3",
                          import_methods=()) as images, \
            nova_api_server(keystone=identity, glance=images) as nova:
        print(nova.url, nova.workdir, identity.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    sys.exit(0)
