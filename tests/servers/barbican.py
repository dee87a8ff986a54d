"""A keystone-less Barbican 23 for castellan's ``barbican`` backend.

Server side
    Barbican 23.0.0 from PyPI, installed into its own cached venv (its pinned
    OpenStack dependencies would clash with the project's venv; the versions are
    fixed by ``barbican_app/constraints.txt``). It runs with SQLite, the
    ``simple_crypto`` plugin with a random KEK, ``[queue] enable = False`` (orders are
    processed inside the API request) and the ``unauthenticated-context`` paste
    pipeline of ``barbican_app/api-paste.ini``, served on 127.0.0.1 by
    ``barbican_app/serve.py`` (a threaded wsgiref server). The pipeline trusts the
    ``X-Project-Id`` and ``X-Roles`` headers instead of Keystone tokens.

    Workaround for Barbican 22/23 (``AttributeError: request_id``, every /v1 call a
    500 in that pipeline): the paste filter ``barbican_app/request_id_filter.py``
    sets ``req.request_id`` before ``UnauthenticatedContextMiddleware`` reads it.

Client side
    castellan's Barbican backend only talks to Keystone unless the context is an
    oslo.context ``RequestContext`` with a ``get_auth_plugin()``; :class:`NoAuthContext`
    returns :class:`NoAuthPlugin`, a keystoneauth plugin that authenticates nothing
    and just adds ``X-Project-Id: <project>`` and ``X-Roles: admin,member`` to every
    request (Barbican 23's default policy needs ``member`` to create secrets).
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from keystoneauth1 import plugin
from oslo_context import context as oslo_context

from tests.servers.common import ServerError, clean_env, ensure_venv, run_server, start_with_port_retry

BARBICAN = "barbican==23.0.0"
VENV_NAME = "barbican-23.0.0-venv"
APP_DIR = Path(__file__).resolve().with_name("barbican_app")
CONSTRAINTS = APP_DIR / "constraints.txt"
ROLES = ("member",)
START_TIMEOUT = 90.0


class NoAuthPlugin(plugin.BaseAuthPlugin):
    """keystoneauth plugin for Barbican's ``unauthenticated-context`` pipeline.

    It never contacts Keystone: the only "credentials" are the ``X-Project-Id`` and
    ``X-Roles`` headers that pipeline trusts.
    """

    def __init__(self, project_id: str, roles: Sequence[str] = ROLES, endpoint: str | None = None) -> None:
        super().__init__()
        self.project_id = project_id
        self.roles = tuple(roles)
        self.endpoint = endpoint

    def get_headers(self, session, **kwargs) -> dict[str, str]:
        return {"X-Project-Id": self.project_id, "X-Roles": ",".join(self.roles)}

    def get_endpoint(self, session, **kwargs) -> str | None:
        return self.endpoint

    def get_project_id(self, session, **kwargs) -> str:
        return self.project_id


class NoAuthContext(oslo_context.RequestContext):
    """A request context whose auth plugin is :class:`NoAuthPlugin`."""

    def __init__(self, project_id: str, roles: Sequence[str] = ROLES, endpoint: str | None = None,
                 **kwargs) -> None:
        super().__init__(project_id=project_id, roles=list(roles), **kwargs)
        self._auth_plugin = NoAuthPlugin(project_id, roles, endpoint)

    def get_auth_plugin(self) -> NoAuthPlugin:
        return self._auth_plugin


def barbican_venv() -> Path:
    """The cached venv holding Barbican, built on first use."""
    return ensure_venv(VENV_NAME, [BARBICAN], constraints=CONSTRAINTS,
                       check="import barbican.api.app, paste.deploy, oslo_middleware")


@dataclass
class BarbicanServer:
    url: str
    workdir: Path
    log: Path

    def castellan_config(self) -> str:
        """castellan config-file text selecting the ``barbican`` backend."""
        return "\n".join([
            "[key_manager]", "backend = barbican",
            "[barbican]", f"barbican_endpoint = {self.url}", "barbican_api_version = v1",
            # Orders complete inside the request ([queue] enable = False); the poll is a formality.
            "retry_delay = 1", "number_of_retries = 30",
        ]) + "\n"

    def context(self, project: str) -> NoAuthContext:
        """The no-auth castellan context of ``project``."""
        return NoAuthContext(project, endpoint=self.url)


def _barbican_conf(workdir: Path, port: int) -> str:
    kek = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return f"""\
[DEFAULT]
host_href = http://127.0.0.1:{port}
db_auto_create = True
log_file = {workdir / "barbican-api.log"}
use_stderr = False

[database]
connection = sqlite:///{workdir / "barbican.sqlite"}

[queue]
enable = False

[secretstore]
namespace = barbican.secretstore.plugin
enabled_secretstore_plugins = store_crypto

[crypto]
namespace = barbican.crypto.plugin
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = {kek}
"""


def _ready(url: str) -> bool:
    # A real /v1 call, so a broken pipeline (e.g. the request_id bug) fails start-up.
    request = urllib.request.Request(f"{url}/v1/secrets?limit=1", headers={
        "X-Project-Id": "imgsign-readiness-probe", "X-Roles": ",".join(ROLES), "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            raise ServerError(f"GET /v1/secrets answered HTTP {error.code}") from None
        raise


@contextlib.contextmanager
def barbican_server(workdir: Path | None = None) -> Iterator[BarbicanServer]:
    """Install (if needed) and run Barbican on a free 127.0.0.1 port.

    ``workdir`` (default: a temporary directory, removed afterwards) holds the
    server's HOME (``.barbican/barbican.conf``), its SQLite database and its logs
    (``barbican.log``: the server's output; ``barbican-api.log``: Barbican's own log).
    The server is stopped when the block ends.
    """
    python = barbican_venv() / "bin" / "python"
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsign-barbican-")))
        workdir = Path(workdir)
        home = workdir / "home"
        (home / ".barbican").mkdir(parents=True, exist_ok=True)
        env = clean_env(home, drop_prefixes=("OS_",))
        env["PYTHONWARNINGS"] = "ignore"

        def start(port: int):
            (home / ".barbican" / "barbican.conf").write_text(_barbican_conf(workdir, port))
            url = f"http://127.0.0.1:{port}"
            return run_server("barbican", [str(python), str(APP_DIR / "serve.py"), str(port), str(os.getpid())],
                              workdir=workdir, env=env, ready=lambda: _ready(url), timeout=START_TIMEOUT,
                              other_logs=[workdir / "barbican-api.log"])

        port, _ = start_with_port_retry(start, stack)
        yield BarbicanServer(f"http://127.0.0.1:{port}", workdir, workdir / "barbican.log")
