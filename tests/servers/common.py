"""Shared plumbing for the test servers: cached virtualenvs, free ports, processes.

Cached virtualenvs
    :func:`ensure_venv` builds a virtualenv once under :func:`cache_dir` and reuses
    it afterwards. A marker file, written only after ``pip install`` and an import
    check succeeded, records what the venv was built from (requirements, the hash
    of the constraints file, the Python it was made with); a venv without a
    matching marker (half-made, interrupted, outdated) is deleted and rebuilt. An
    exclusive ``flock`` serialises builders, so pytest-xdist workers that need the
    same venv at the same time build it once.

Server processes
    :func:`run_server` starts a command in its own session (process group), with
    stdout and stderr going to a log file in the server's scratch directory, waits
    until a readiness probe succeeds (or fails with the tail of that log), and on
    exit stops the whole process group: SIGTERM, then SIGKILL after a grace period.
    An ``atexit`` hook does the same for anything still running if the interpreter
    leaves without unwinding the context manager.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: Seconds allowed for one ``pip install`` of a server's packages (cold, from PyPI).
INSTALL_TIMEOUT = 900
MARKER = ".imgsign-venv-complete"
LOG_TAIL_LINES = 60


class ServerError(RuntimeError):
    """A test server could not be installed or started."""


def cache_dir() -> Path:
    if os.environ.get("IMGSIGN_TEST_CACHE"):
        return Path(os.environ["IMGSIGN_TEST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgsign-tests"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(name: str, requirements: Sequence[str], *, constraints: Path | None = None,
                check: str | None = None) -> Path:
    """Return the cached virtualenv ``name`` holding ``requirements``, building it if needed.

    ``check`` is Python code run in the new venv before it is marked complete.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / name
    expected = json.dumps({
        "requirements": list(requirements),
        "constraints": hashlib.sha256(constraints.read_bytes()).hexdigest() if constraints else None,
        "python": sys.version,
        "base_prefix": sys.base_prefix,
    }, sort_keys=True)
    marker = venv / MARKER
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == expected and _venv_python(venv).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        log = root / f"{name}.install.log"
        install = [str(_venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
        if constraints:
            install += ["--constraint", str(constraints)]
        steps = [[sys.executable, "-m", "venv", str(venv)], install + list(requirements)]
        if check:
            steps.append([str(_venv_python(venv)), "-c", check])
        with open(log, "wb") as out:
            for step in steps:
                out.write(f"$ {' '.join(step)}\n".encode())
                out.flush()
                try:
                    code = subprocess.run(step, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT).returncode
                except subprocess.TimeoutExpired:
                    code = f"timeout after {INSTALL_TIMEOUT}s"
                if code != 0:
                    out.close()
                    shutil.rmtree(venv, ignore_errors=True)
                    raise ServerError(f"building the cached venv {venv} failed ({code}) at: "
                                      f"{' '.join(step)}\n--- {log} (tail) ---\n{tail(log)}")
        marker.write_text(expected)
        return venv


def free_port(also_free: Sequence[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that is free now, as are ``port + offset`` for each offset."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + max(also_free, default=0) > 65535:
            continue
        try:
            for offset in also_free:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise ServerError("no free port on 127.0.0.1")


_RUNNING: set[subprocess.Popen] = set()


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and everything in its process group."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Stragglers that outlived the leader are still in the group: make sure of them too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _RUNNING.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_RUNNING):
        _stop(proc, grace=2.0)


@contextlib.contextmanager
def run_server(what: str, argv: Sequence[str], *, workdir: Path, env: dict[str, str],
               ready: Callable[[], bool], timeout: float,
               other_logs: Sequence[Path] = ()) -> Iterator[subprocess.Popen]:
    """Run ``argv`` as a server until the ``with`` block ends.

    Its stdout and stderr go to ``workdir/<what>.log``. ``ready`` is polled until it
    returns true; an exception from it counts as "not yet", except :class:`ServerError`,
    which means the server is up but broken. Raises
    :class:`ServerError` with the tails of that log and of ``other_logs`` (logs the
    server writes itself) if the process exits or is not ready within ``timeout``
    seconds.
    """
    log_path = workdir / f"{what}.log"

    def logs() -> str:
        return "".join(f"\n--- {path} (tail) ---\n{tail(path)}" for path in (log_path, *other_logs)
                       if path == log_path or path.exists())

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _RUNNING.add(proc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServerError(f"{what} exited with status {proc.returncode} during start-up{logs()}")
            try:
                if ready():
                    break
            except ServerError as error:  # the probe got a definite answer: broken, not starting
                raise ServerError(f"{what} failed its readiness probe: {error}{logs()}") from None
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{what} was not ready within {timeout:.0f}s{logs()}")
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc)


def start_with_port_retry(start: Callable[[int], contextlib.AbstractContextManager], stack: contextlib.ExitStack,
                          *, also_free: Sequence[int] = (), attempts: int = 3):
    """Enter ``start(port)`` on a free port, retrying with a new port if another process took it
    between :func:`free_port` and the server's bind."""
    for attempt in range(attempts):
        port = free_port(also_free)
        try:
            return port, stack.enter_context(start(port))
        except ServerError as error:
            if attempt == attempts - 1 or "address already in use" not in str(error).lower():
                raise
    raise AssertionError("unreachable")


def clean_env(home: Path, drop_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """The current environment for a server: HOME moved to ``home``, some variables dropped."""
    env = {key: value for key, value in os.environ.items()
           if not any(key.startswith(prefix) for prefix in drop_prefixes)}
    env["HOME"] = str(home)
    return env
