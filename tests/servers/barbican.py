"""A Barbican 23 behind the harness Keystone, for castellan's ``barbican`` backend.

Server side
    Barbican 23.0.0 from PyPI, installed into its own cached venv (its pinned
    OpenStack dependencies would clash with the project's venv; the versions are
    fixed by ``barbican_app/constraints.txt``). It runs with SQLite, the
    ``simple_crypto`` plugin with a random KEK, ``[queue] enable = False`` (orders are
    processed inside the API request) and Barbican's keystone pipeline
    (``barbican_app/api-paste.ini``: keystonemiddleware's ``authtoken``, then
    ``context``), validating tokens with the session's Keystone
    (tests/servers/keystone.py) as the service user ``barbican``; served on 127.0.0.1
    by ``barbican_app/serve.py`` (a threaded wsgiref server).

Client side
    As Glance and Nova call castellan: an oslo.context ``RequestContext`` carrying a
    user's Keystone token and project id (:meth:`BarbicanServer.context`), and
    ``[barbican] auth_endpoint`` naming Keystone, which castellan's driver needs to
    turn the token into a keystoneauth ``Token`` plugin.
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

from oslo_context import context as oslo_context

from tests.servers.common import ServerError, clean_env, ensure_venv, run_server, start_with_port_retry
from tests.servers.keystone import KeystoneServer

BARBICAN = "barbican==23.0.0"
VENV_NAME = "barbican-23.0.0-venv"
APP_DIR = Path(__file__).resolve().with_name("barbican_app")
CONSTRAINTS = APP_DIR / "constraints.txt"
ROLES = ("member",)
START_TIMEOUT = 90.0


def barbican_venv() -> Path:
    """The cached venv holding Barbican, built on first use."""
    return ensure_venv(VENV_NAME, [BARBICAN], constraints=CONSTRAINTS,
                       check="import barbican.api.app, paste.deploy, oslo_middleware")


@dataclass
class BarbicanServer:
    url: str
    workdir: Path
    log: Path
    keystone: KeystoneServer

    def castellan_config(self) -> str:
        """castellan config-file text selecting the ``barbican`` backend."""
        return "\n".join([
            "[key_manager]", "backend = barbican",
            "[barbican]", f"barbican_endpoint = {self.url}", "barbican_api_version = v1",
            f"auth_endpoint = {self.keystone.auth_url}",
            # Orders complete inside the request ([queue] enable = False); the poll is a formality.
            "retry_delay = 1", "number_of_retries = 30",
        ]) + "\n"

    def context(self, project: str, roles: Sequence[str] = ROLES) -> oslo_context.RequestContext:
        """The castellan context of a user of ``project`` (a Keystone project name; made on first use):
        that user's real token and the project's id, as Glance and Nova pass their request context."""
        account = self.keystone.project_user(project, roles)
        return oslo_context.RequestContext(auth_token=self.keystone.token(account.user),
                                           project_id=account.project_id, user_id=account.user_id,
                                           roles=list(account.roles))


def _barbican_conf(workdir: Path, port: int, keystone: KeystoneServer) -> str:
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

{keystone.authtoken_conf("barbican")}"""


def _ready(url: str, keystone: KeystoneServer) -> bool:
    # A real /v1 call through the pipeline (token validation included), so a broken set-up fails start-up.
    token = keystone.token(keystone.project_user("readiness-probe").user)
    request = urllib.request.Request(f"{url}/v1/secrets?limit=1", headers={
        "X-Auth-Token": token, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            raise ServerError(f"GET /v1/secrets answered HTTP {error.code}") from None
        raise


@contextlib.contextmanager
def barbican_server(workdir: Path | None = None, *, keystone: KeystoneServer) -> Iterator[BarbicanServer]:
    """Install (if needed) and run Barbican on a free 127.0.0.1 port, behind ``keystone``.

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
            (home / ".barbican" / "barbican.conf").write_text(_barbican_conf(workdir, port, keystone))
            url = f"http://127.0.0.1:{port}"
            return run_server("barbican", [str(python), str(APP_DIR / "serve.py"), str(port), str(os.getpid())],
                              workdir=workdir, env=env, ready=lambda: _ready(url, keystone), timeout=START_TIMEOUT,
                              other_logs=[workdir / "barbican-api.log"])

        port, _ = start_with_port_retry(start, stack)
        yield BarbicanServer(f"http://127.0.0.1:{port}", workdir, workdir / "barbican.log", keystone)
