"""A real Keystone 30 for the test servers: SQLite, fernet tokens, bootstrapped accounts.

Server side
    Keystone 30.0.0 from PyPI, installed into its own cached venv (versions fixed by
    ``keystone_app/constraints.txt``), served on 127.0.0.1 by ``keystone_app/serve.py``
    (a threaded wsgiref server around ``keystone.server.wsgi``). SQLite database,
    ``[token] provider = fernet`` with key repositories written by the harness (what
    ``keystone-manage fernet_setup`` would write: random Fernet keys ``0`` and ``1``),
    bcrypt at its lowest cost so password authentication stays cheap in tests.

    Start-up is kept cheap: the schema (``keystone-manage db_sync``, the slow part) is
    made once per cache and copied; each server then runs ``keystone-manage
    bootstrap`` (admin user, ``admin`` project, the ``admin``/``member``/``reader``
    roles with their implications, the identity endpoint) and creates the rest through
    the API. One Keystone serves a whole test session (the ``keystone`` fixture in
    tests/conftest.py).

Accounts (:data:`ACCOUNTS`)
    Projects ``alpha`` and ``beta`` with a member each (``alice``, ``bob``) and a
    reader of ``alpha`` (``carol``); project ``service`` with the service users
    ``glance`` and ``barbican`` (keystonemiddleware's ``auth_token`` validates user
    tokens with them: the ``service`` role), ``imgsign-hook`` and
    ``imgsign-gateway``. :meth:`KeystoneServer.account` makes more on demand
    (a project and its user, for tests that want a project of their own).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.servers.common import (
    ServerError,
    cache_dir,
    clean_env,
    ensure_venv,
    run_server,
    start_with_port_retry,
    tail,
)

KEYSTONE = "keystone==30.0.0"
VENV_NAME = "keystone-30.0.0-venv"
APP_DIR = Path(__file__).resolve().with_name("keystone_app")
CONSTRAINTS = APP_DIR / "constraints.txt"
START_TIMEOUT = 90.0
DOMAIN = "Default"
REGION = "RegionOne"
SERVICE_PROJECT = "service"
SERVICE_ROLE = "service"

#: (user, project, roles) made at start-up; every password is generated per server.
ACCOUNTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("alice", "alpha", ("member",)),
    ("bob", "beta", ("member",)),
    ("carol", "alpha", ("reader",)),
    ("glance", SERVICE_PROJECT, (SERVICE_ROLE,)),
    ("barbican", SERVICE_PROJECT, (SERVICE_ROLE,)),
    ("imgsign-hook", SERVICE_PROJECT, (SERVICE_ROLE,)),
    ("imgsign-gateway", SERVICE_PROJECT, (SERVICE_ROLE,)),
)


def keystone_venv() -> Path:
    """The cached venv holding Keystone, built on first use."""
    return ensure_venv(VENV_NAME, [KEYSTONE], constraints=CONSTRAINTS,
                       check="import keystone.server.wsgi, keystone.cmd.manage")


def _schema(venv: Path) -> Path:
    """An SQLite file holding Keystone's migrated, empty schema, made once per cache (db_sync is slow)."""
    target = cache_dir() / f"{VENV_NAME}.schema.sqlite"
    with open(cache_dir() / f".{VENV_NAME}.schema.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = (venv / ".imgsign-venv-complete").read_text()
        stamp_file = target.with_suffix(".stamp")
        if target.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
            return target
        with tempfile.TemporaryDirectory(prefix="imgsign-keystone-schema-") as scratch:
            db = Path(scratch) / "keystone.sqlite"
            conf = Path(scratch) / "keystone.conf"
            conf.write_text(f"[database]\nconnection = sqlite:///{db}\n")
            _manage(venv, conf, ["db_sync"], Path(scratch))
            shutil.copyfile(db, f"{target}.tmp")
            os.replace(f"{target}.tmp", target)
            stamp_file.write_text(stamp)
        return target


def _manage(venv: Path, conf: Path, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> None:
    log = workdir / f"keystone-manage-{args[0]}.log"
    with open(log, "wb") as out:
        done = subprocess.run([str(venv / "bin" / "keystone-manage"), "--config-file", str(conf), *args],
                              cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=300)
    if done.returncode != 0:
        raise ServerError(f"keystone-manage {args[0]} failed ({done.returncode})\n--- {log} (tail) ---\n{tail(log)}")


@dataclass(frozen=True)
class Account:
    """A Keystone user with roles on one project (ids as Keystone made them)."""

    user: str
    user_id: str
    password: str
    project: str
    project_id: str
    roles: tuple[str, ...]


@dataclass
class KeystoneServer:
    url: str
    workdir: Path
    log: Path
    admin: Account
    accounts: dict[str, Account] = field(default_factory=dict)
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _account_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def auth_url(self) -> str:
        return f"{self.url}/v3"

    # --- tokens ----------------------------------------------------------------------------------------------
    def issue_token(self, account: Account) -> str:
        """A new project-scoped token for ``account`` (password authentication)."""
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "id": account.user_id, "password": account.password}}},
            "scope": {"project": {"id": account.project_id}}}}
        response = requests.post(f"{self.auth_url}/auth/tokens", json=body, timeout=30)
        if response.status_code != 201:
            raise ServerError(f"Keystone refused a token for {account.user}: {response.status_code} "
                              f"{response.text[:300]}")
        return response.headers["X-Subject-Token"]

    def token(self, user: str) -> str:
        """A project-scoped token for ``user`` (cached for ten minutes; fernet tokens last an hour)."""
        with self._lock:
            cached = self._tokens.get(user)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        account = self.admin if user == self.admin.user else self.accounts[user]
        token = self.issue_token(account)
        with self._lock:
            self._tokens[user] = (token, time.monotonic() + 600)
        return token

    def project_id(self, project: str) -> str:
        """The id of ``project`` (one that has an account here)."""
        for account in (self.admin, *self.accounts.values()):
            if account.project == project:
                return account.project_id
        raise KeyError(project)

    # --- configuration for clients and services ---------------------------------------------------------------
    def auth(self, user: str) -> dict[str, str]:
        """keystoneauth ``password`` plugin options (clouds.yaml ``auth``) for ``user``."""
        account = self.admin if user == self.admin.user else self.accounts[user]
        return {"auth_url": self.auth_url, "username": account.user, "password": account.password,
                "project_name": account.project, "user_domain_name": DOMAIN, "project_domain_name": DOMAIN}

    def cloud(self, user: str, **extra: object) -> dict[str, object]:
        """A clouds.yaml ``clouds:`` entry authenticating as ``user``."""
        return {"auth_type": "password", "auth": self.auth(user), "region_name": REGION,
                "identity_api_version": 3, **extra}

    def authtoken_conf(self, service_user: str) -> str:
        """``[keystone_authtoken]`` for a service behind keystonemiddleware, validating with ``service_user``."""
        auth = self.auth(service_user)
        return "[keystone_authtoken]\n" + "".join(f"{key} = {value}\n" for key, value in {
            "www_authenticate_uri": self.auth_url, "auth_url": self.auth_url, "auth_type": "password",
            "username": auth["username"], "password": auth["password"], "project_name": auth["project_name"],
            "user_domain_name": DOMAIN, "project_domain_name": DOMAIN, "region_name": REGION,
            "service_token_roles_required": "True", "interface": "public",
        }.items()) + "\n"

    def keystoneauth_options(self, user: str) -> str:
        """The keystoneauth options of a config-file section (castellan, Nova, Glance style) for ``user``."""
        auth = self.auth(user)
        return "".join(f"{key} = {value}\n" for key, value in {
            "auth_type": "password", **auth}.items())

    # --- administration ---------------------------------------------------------------------------------------
    def _admin_call(self, method: str, path: str, json: dict | None = None) -> dict:
        response = requests.request(method, f"{self.auth_url}{path}", json=json, timeout=30,
                                    headers={"X-Auth-Token": self.token(self.admin.user)})
        if response.status_code >= 300:
            raise ServerError(f"Keystone {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else {}

    def _find(self, kind: str, name: str) -> str | None:
        found = self._admin_call("GET", f"/{kind}?name={name}")[kind]
        return found[0]["id"] if found else None

    def role_id(self, name: str) -> str:
        found = self._find("roles", name)
        if found is None:
            found = self._admin_call("POST", "/roles", {"role": {"name": name}})["role"]["id"]
        return found

    def account(self, user: str, project: str, roles: Sequence[str] = ("member",)) -> Account:
        """The account ``user`` of ``project`` with ``roles``, made if it does not exist yet."""
        with self._account_lock:
            return self._account(user, project, roles)

    def _account(self, user: str, project: str, roles: Sequence[str]) -> Account:
        existing = self.accounts.get(user)
        if existing is not None:
            if existing.project != project or not set(roles) <= set(existing.roles):
                raise ValueError(f"user {user} already exists as {existing}")
            return existing
        project_id = self._find("projects", project) or self._admin_call("POST", "/projects", {"project": {
            "name": project, "domain_id": "default"}})["project"]["id"]
        password = base64.urlsafe_b64encode(os.urandom(18)).decode()
        user_id = self._admin_call("POST", "/users", {"user": {
            "name": user, "domain_id": "default", "password": password,
            "default_project_id": project_id}})["user"]["id"]
        for role in roles:
            self._admin_call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{self.role_id(role)}")
        account = Account(user, user_id, password, project, project_id, tuple(roles))
        self.accounts[user] = account
        return account

    def grant(self, user: str, role: str) -> None:
        """Give ``user`` one more role on its project (tokens issued from now on carry it)."""
        account = self.accounts[user]
        self._admin_call("PUT", f"/projects/{account.project_id}/users/{account.user_id}/roles/{self.role_id(role)}")
        with self._lock:
            self._tokens.pop(user, None)

    def project_user(self, project: str, roles: Sequence[str] = ("member",)) -> Account:
        """A user of ``project`` with ``roles`` (``user-of-PROJECT``; both made on first use)."""
        suffix = "" if tuple(roles) == ("member",) else "-" + "-".join(roles)
        return self.account(f"user-of-{project}{suffix}", project, roles)


def _conf(workdir: Path) -> str:
    return f"""\
[DEFAULT]
log_file = {workdir / "keystone-api.log"}
use_stderr = False

[database]
connection = sqlite:///{workdir / "keystone.sqlite"}

[token]
provider = fernet

[fernet_tokens]
key_repository = {workdir / "fernet-keys"}

[fernet_receipts]
key_repository = {workdir / "fernet-receipts"}

[credential]
key_repository = {workdir / "credential-keys"}

[identity]
password_hash_algorithm = bcrypt
password_hash_rounds = 4
"""


def _write_key_repositories(workdir: Path) -> None:
    """What ``keystone-manage fernet_setup`` (and friends) write: a staged key ``0`` and a primary ``1``."""
    for name in ("fernet-keys", "fernet-receipts", "credential-keys"):
        repository = workdir / name
        repository.mkdir(mode=0o700, exist_ok=True)
        for index in ("0", "1"):
            path = repository / index
            path.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
            path.chmod(0o600)


def _ready(url: str) -> bool:
    with contextlib.closing(requests.get(f"{url}/v3", timeout=5)) as response:
        if response.status_code >= 500:
            raise ServerError(f"GET /v3 answered HTTP {response.status_code}")
        return response.status_code == 200


@contextlib.contextmanager
def keystone_server(workdir: Path | None = None) -> Iterator[KeystoneServer]:
    """Install (if needed), bootstrap and run Keystone on a free 127.0.0.1 port until the block ends."""
    venv = keystone_venv()
    python = venv / "bin" / "python"
    schema = _schema(venv)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsign-keystone-")))
        workdir = Path(workdir)
        etc, home = workdir / "etc", workdir / "home"
        for directory in (etc, home):
            directory.mkdir(parents=True, exist_ok=True)
        conf = etc / "keystone.conf"
        conf.write_text(_conf(workdir))
        _write_key_repositories(workdir)
        shutil.copyfile(schema, workdir / "keystone.sqlite")
        env = clean_env(home, drop_prefixes=("OS_", "PYTHON"))
        env["OS_KEYSTONE_CONFIG_DIR"] = str(etc)
        env["PYTHONWARNINGS"] = "ignore"
        admin_password = base64.urlsafe_b64encode(os.urandom(18)).decode()

        def start(port: int):
            url = f"http://127.0.0.1:{port}"
            # The password through the environment: not on a command line, and a leading "-" is no option.
            _manage(venv, conf, ["bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
                                 "--bootstrap-role-name", "admin", "--bootstrap-region-id", REGION,
                                 "--bootstrap-public-url", f"{url}/v3", "--bootstrap-internal-url", f"{url}/v3",
                                 "--bootstrap-admin-url", f"{url}/v3"], workdir,
                    {**env, "OS_BOOTSTRAP_PASSWORD": admin_password})
            return run_server("keystone", [str(python), str(APP_DIR / "serve.py"), str(port), str(os.getpid())],
                              workdir=workdir, env=env, ready=lambda: _ready(url), timeout=START_TIMEOUT,
                              other_logs=[workdir / "keystone-api.log"])

        port, _ = start_with_port_retry(start, stack)
        url = f"http://127.0.0.1:{port}"
        server = KeystoneServer(url, workdir, workdir / "keystone.log",
                                Account("admin", "", admin_password, "admin", "", ("admin",)))
        server.admin = _resolve_admin(server)
        for user, project, roles in ACCOUNTS:
            server.account(user, project, roles)
        yield server


def _resolve_admin(server: KeystoneServer) -> Account:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": DOMAIN}, "password": server.admin.password}}},
        "scope": {"project": {"name": "admin", "domain": {"name": DOMAIN}}}}}
    response = requests.post(f"{server.auth_url}/auth/tokens", json=body, timeout=30)
    if response.status_code != 201:
        raise ServerError(f"the bootstrapped admin cannot log in: {response.status_code} {response.text[:300]}")
    token = response.json()["token"]
    return Account("admin", token["user"]["id"], server.admin.password, "admin", token["project"]["id"],
                   ("admin",))


if __name__ == "__main__":  # manual use: python -m tests.servers.keystone
    with keystone_server() as running:
        print(running.url, running.workdir, running.admin.password, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
