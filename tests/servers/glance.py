"""A Glance 33 behind the harness Keystone, with imgsign's import plugins and castellan backend.

Server side
    Glance 33.0.0 from PyPI, installed into its own cached venv (its pinned
    OpenStack dependencies would clash with the project's venv; the versions are
    fixed by ``glance_app/constraints.txt``), together with imgsign's own runtime
    dependencies that Glance lacks (pyasn1, pyasn1-modules, click).

    imgsign itself is not installed into that venv: the venv is shared by every
    checkout and pytest-xdist worker, while imgsign's code and entry points belong
    to the checkout under test. Each server instead gets a ``pylib`` directory on
    its ``PYTHONPATH`` holding a symlink to this checkout's ``imgsign`` package and
    a minimal ``imgsign-<version>.dist-info`` whose ``entry_points.txt`` is
    generated from this checkout's ``pyproject.toml``. Glance (stevedore) and
    castellan find the ``glance.image_import.plugins`` and ``castellan.drivers``
    entry points there, exactly as after ``pip install``, with no shared state to
    race on and no install step.

    The API runs under a threaded wsgiref server (``glance_app/serve.py``; Glance
    33 has no standalone server) on 127.0.0.1 with SQLite (``glance-manage
    db_sync``), the ``file`` store, ``glance-direct`` imports with a staging
    directory, castellan ``[key_manager] backend = imgsign`` on a given embedded
    store, and the paste pipeline of ``glance_app/glance-api-paste.ini``: Glance's
    ``keystone`` flavour (keystonemiddleware's ``authtoken``, then ``context``),
    validating tokens with the session's Keystone (tests/servers/keystone.py) as the
    service user ``glance``. The request context's project is the token's project
    id, as in production; :meth:`GlanceServer.headers` gets a real token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.servers.common import ServerError, clean_env, ensure_venv, run_server, start_with_port_retry, tail
from tests.servers.keystone import KeystoneServer

GLANCE = "glance==33.0.0"
#: imgsign's runtime dependencies that Glance does not already bring.
IMGSIGN_DEPENDENCIES = ("pyasn1", "pyasn1-modules", "click", "rfc3161-client")
VENV_NAME = "glance-33.0.0-venv"
APP_DIR = Path(__file__).resolve().with_name("glance_app")
CONSTRAINTS = APP_DIR / "constraints.txt"
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
#: A project member, as the users who upload images are (not an admin: Glance admins see every project).
ROLES = ("member",)


def glance_venv() -> Path:
    """The cached venv holding Glance, built on first use."""
    return ensure_venv(VENV_NAME, [GLANCE, *IMGSIGN_DEPENDENCIES], constraints=CONSTRAINTS,
                       check="import glance.common.wsgi_app, glance.async_.flows.api_image_import, taskflow, cursive, "
                             "castellan, pyasn1_modules, click, rfc3161_client")


def imgsign_pylib(target: Path) -> Path:
    """A directory that makes this checkout's imgsign importable, entry points included."""
    import tomllib  # Python 3.11+, like Glance 33 itself

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    target.mkdir(parents=True, exist_ok=True)
    link = target / "imgsign"
    if not link.exists():
        link.symlink_to(REPO / "imgsign", target_is_directory=True)
    info = target / f"imgsign-{project['version']}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: imgsign\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return target


@dataclass
class GlanceServer:
    url: str
    workdir: Path
    #: The server process's output (request lines, tracebacks before logging is set up).
    log: Path
    #: Glance's own log (oslo.log), where the import flows log.
    api_log: Path
    staging_dir: Path
    images_dir: Path
    keystore: Path
    pid: int
    keystone: KeystoneServer

    def headers(self, project: str, roles: Sequence[str] = ROLES, **extra: str) -> dict[str, str]:
        """A real Keystone token of a user of ``project`` (Keystone project *name*) with ``roles``."""
        user = self.keystone.project_user(project, roles)
        return {"X-Auth-Token": self.keystone.token(user.user), **extra}

    def project_id(self, project: str) -> str:
        """The Keystone id of ``project`` (what Glance calls the image owner, and the key manager's project)."""
        return self.keystone.project_id(project)

    def castellan_config(self) -> str:
        """castellan config-file text for the key manager this Glance uses."""
        return f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {self.keystore}\n"

    def dump_threads(self) -> str:
        """Every server thread's stack (faulthandler, see serve.py) and the end of the logs, for a stuck import."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)
            time.sleep(1)
        return f"--- {self.log} (tail) ---\n{tail(self.log, 300)}\n--- {self.api_log} (tail) ---\n{tail(self.api_log)}"

    def glance_log_text(self) -> str:
        try:
            return self.api_log.read_text(errors="replace")
        except OSError:
            return ""


def _api_conf(workdir: Path, keystore: Path, import_methods: Sequence[str], keystone: KeystoneServer,
              key_manager: str | None, policy_file: Path | None = None, show_direct_url: bool = False) -> str:
    # Multi-store configuration (the single-store [glance_store] stores/default_store options are
    # deprecated for removal): one file store "fs"; staging in Glance's reserved staging store.
    policy = "" if policy_file is None else f"\n[oslo_policy]\npolicy_file = {policy_file}\n"
    return f"""\
[DEFAULT]
log_file = {workdir / "glance-api.log"}
use_stderr = False
enabled_backends = fs:file
enabled_import_methods = [{", ".join(import_methods)}]
show_image_direct_url = {show_direct_url}

[database]
connection = sqlite:///{workdir / "glance.sqlite"}

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {workdir / "images"}

[os_glance_staging_store]
filesystem_store_datadir = {workdir / "staging"}

[os_glance_tasks_store]
filesystem_store_datadir = {workdir / "tasks"}

[paste_deploy]
config_file = {APP_DIR / "glance-api-paste.ini"}
{policy}
{key_manager or _embedded_key_manager(keystore)}

{keystone.authtoken_conf("glance")}"""


def _embedded_key_manager(keystore: Path) -> str:
    return f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n"


def policy_yaml(rules: Mapping[str, str]) -> str:
    """An oslo.policy file overriding ``rules`` (name -> check string); every other rule keeps Glance's default."""
    import json

    # JSON strings are YAML strings: any quote, colon or ``%(...)s`` in a check string stays as it is.
    return "".join(f"{json.dumps(name)}: {json.dumps(check)}\n" for name, check in rules.items())


def _ini(sections: Mapping[str, Mapping[str, str]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()) + "\n"
                   for name, options in sections.items())


def _ready(url: str, keystone: KeystoneServer) -> bool:
    # A real /v2 call through the pipeline (token validation included) and the database,
    # so a broken set-up fails start-up.
    token = keystone.token(keystone.project_user("readiness-probe").user)
    request = urllib.request.Request(f"{url}/v2/images?limit=1", headers={"X-Auth-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        raise ServerError(f"GET /v2/images answered HTTP {error.code}") from None


@contextlib.contextmanager
def glance_server(workdir: Path | None = None, *, keystone: KeystoneServer, keystore: Path, plugins: Sequence[str] = (),
                  import_options: Mapping[str, Mapping[str, str]] | None = None,
                  import_methods: Sequence[str] = ("glance-direct",),
                  key_manager: str | None = None, config: Mapping[str, str] | None = None,
                  python: Path | None = None, policy: Mapping[str, str] | None = None,
                  show_direct_url: bool = False) -> Iterator[GlanceServer]:
    """Install Glance (if needed) and run it on a free 127.0.0.1 port until the block ends.

    ``plugins`` is ``[image_import_opts] image_import_plugins``; ``import_options``
    more sections for ``glance-image-import.conf`` (e.g. ``imgsign_import``,
    ``image_conversion``); ``import_methods`` the ``enabled_import_methods`` (none: a
    Glance that only takes ``PUT /file`` uploads). ``keystone`` is the Keystone it validates tokens
    with (the session's ``keystone`` fixture). ``keystore`` is the embedded key manager's SQLite file,
    shared with the tests that store certificates and keys in it; ``key_manager`` (castellan
    config-file text, e.g. :meth:`BarbicanServer.castellan_config`) replaces it. ``workdir``
    (default: a temporary directory, removed afterwards) holds the configuration
    (``etc/``), database, staging and store directories, ``HOME`` and the logs.

    ``config`` (file name -> text, e.g. ``glance-api.conf`` and ``glance-image-import.conf``), when
    given, is written into ``etc/`` as it is, instead of the files the options above make: it must use
    ``workdir``'s layout (``images``, ``staging``, ``tasks``, ``glance-api.log``, ``glance.sqlite``).
    ``python``, when given, is the interpreter of an environment that has Glance and an installed
    imgsign (e.g. a wheel installed into a venv that borrows :func:`glance_venv`'s packages): it runs
    ``glance-manage`` and the API, and this checkout is not put on ``PYTHONPATH``.
    ``policy`` (oslo.policy rule name -> check string, e.g. ``upload_image``) overrides those rules of
    Glance's policy: it is written to ``etc/policy.yaml``, which the generated glance-api.conf names
    in ``[oslo_policy] policy_file`` (with ``config``, name it there yourself).  ``show_direct_url``: Glance's
    ``show_image_direct_url`` (image records name their store location, as RBD deployments set it).
    """
    installed = python is not None
    python = Path(python) if installed else glance_venv() / "bin" / "python"
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsign-glance-")))
        workdir = Path(workdir)
        etc, home = workdir / "etc", workdir / "home"
        for directory in (etc, home, workdir / "staging", workdir / "images", workdir / "tasks"):
            directory.mkdir(parents=True, exist_ok=True)
        policy_file = None
        if policy is not None:
            policy_file = etc / "policy.yaml"
            policy_file.write_text(policy_yaml(policy))
        if config is None:
            plugin_list = ", ".join(f"'{name}'" for name in plugins)
            import_opts = {"image_import_plugins": f"[{plugin_list}]"}
            config = {"glance-api.conf": _api_conf(workdir, keystore, import_methods, keystone, key_manager,
                                                   policy_file, show_direct_url),
                      "glance-image-import.conf": _ini({"image_import_opts": import_opts, **(import_options or {})})}
        for name, text in config.items():
            (etc / name).write_text(text)

        env = clean_env(home, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON"))
        env["OS_GLANCE_CONFIG_DIR"] = str(etc)
        if not installed:
            env["PYTHONPATH"] = str(imgsign_pylib(workdir / "pylib"))
        env["PYTHONWARNINGS"] = "ignore"
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"

        manage_log = workdir / "glance-manage.log"
        with open(manage_log, "wb") as out:
            sync = subprocess.run([str(python), "-m", "glance.cmd.manage", "--config-file",
                                   str(etc / "glance-api.conf"), "db_sync"], cwd=workdir, env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=300)
        if sync.returncode != 0:
            raise ServerError(f"glance-manage db_sync failed ({sync.returncode})\n--- {manage_log} (tail) ---\n"
                              f"{tail(manage_log)}")

        def start(port: int):
            url = f"http://127.0.0.1:{port}"
            return run_server("glance", [str(python), str(APP_DIR / "serve.py"), str(port), str(os.getpid())],
                              workdir=workdir, env=env, ready=lambda: _ready(url, keystone), timeout=START_TIMEOUT,
                              other_logs=[workdir / "glance-api.log"])

        port, proc = start_with_port_retry(start, stack)
        yield GlanceServer(f"http://127.0.0.1:{port}", workdir, workdir / "glance.log", workdir / "glance-api.log",
                           workdir / "staging", workdir / "images", Path(keystore), proc.pid, keystone)


def wait_for(what: str, probe, timeout: float = 60.0, interval: float = 0.2, on_timeout=None):
    """Poll ``probe()`` until it returns something truthy; return that, or fail naming ``what``
    (and adding what ``on_timeout()`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


if __name__ == "__main__":  # manual use: python -m tests.servers.glance KEYSTORE [PLUGIN ...]
    from tests.servers.keystone import keystone_server

    with keystone_server() as identity, glance_server(keystone=identity, keystore=Path(sys.argv[1]).resolve(),
                                                      plugins=sys.argv[2:]) as server:
        print(server.url, server.workdir, identity.url, identity.admin.password, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
