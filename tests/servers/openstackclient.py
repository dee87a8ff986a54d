"""The ``openstack`` command (python-openstackclient), for the README's journeys run as written.

Installed on first use into a cached venv of its own (:func:`tests.servers.common.ensure_venv`), pinned
by the Keystone harness's constraints file so its OpenStack libraries are the ones the test cloud was
tested with; never into the project's venv. :func:`openstack_bin` is the directory to put on ``PATH``.
"""

from __future__ import annotations

from pathlib import Path

from tests.servers.common import ensure_venv
from tests.servers.keystone import CONSTRAINTS

OPENSTACKCLIENT = "python-openstackclient==10.5.0"
VENV_NAME = "openstackclient-10.5.0-venv"


def openstack_bin() -> Path:
    """The ``bin`` directory of the cached venv that holds the ``openstack`` command."""
    venv = ensure_venv(VENV_NAME, [OPENSTACKCLIENT], constraints=CONSTRAINTS,
                       check="import openstackclient.shell, openstackclient.image.v2.image")
    return venv / "bin"


#: The same ``openstack`` command with imgsign[osc] installed, for the plugin's tests (a venv of its own, so
#: the README's journeys keep running the plain command).
IMGSIGN_VENV_NAME = "openstackclient-10.5.0-imgsign-venv"
#: What the wheel of this checkout is built from.
CHECKOUT_FILES = ("pyproject.toml", "README.md", "LICENSE", "imgsign")


def _imgsign_requirements(repo: Path) -> list[str]:
    """imgsign[osc]'s own requirements (its dependencies and the extras osc pulls in), from pyproject.toml."""
    import tomllib

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["osc"]]
    found: list[str] = []
    for requirement in wanted:
        if requirement.startswith("imgsign["):
            for extra in requirement[len("imgsign["):-1].split(","):
                wanted.extend(extras[extra.strip()])
        elif requirement not in found:
            found.append(requirement)
    return found


def openstack_with_imgsign_bin() -> Path:
    """The ``bin`` directory of a cached venv holding python-openstackclient 10.5.0 and this checkout's
    imgsign[osc] (its dependencies cached with the venv; imgsign itself reinstalled from a wheel of the
    checkout whenever its files change)."""
    import fcntl
    import hashlib
    import shutil
    import subprocess
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[2]
    venv = ensure_venv(IMGSIGN_VENV_NAME, [OPENSTACKCLIENT, *_imgsign_requirements(repo)], constraints=CONSTRAINTS,
                       check="import openstackclient.shell, osc_lib, cliff, castellan, yaml, prettytable")
    digest = hashlib.sha256()
    for name in CHECKOUT_FILES:
        path = repo / name
        for file in sorted(path.rglob("*") if path.is_dir() else [path]):
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(repo)).encode() + b"\0" + file.read_bytes() + b"\0")
    marker = venv / ".imgsign-checkout"
    with open(venv.parent / f".{IMGSIGN_VENV_NAME}.checkout.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == digest.hexdigest():
            return venv / "bin"
        with tempfile.TemporaryDirectory(prefix="imgsign-wheel-") as work:
            source = Path(work) / "src"
            source.mkdir()
            for name in CHECKOUT_FILES:
                if (repo / name).is_dir():
                    shutil.copytree(repo / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
                elif (repo / name).exists():
                    shutil.copy2(repo / name, source / name)
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(Path(work) / "dist"), str(source)], check=True, stdin=subprocess.DEVNULL, timeout=600)
            [wheel] = (Path(work) / "dist").glob("imgsign-*.whl")
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--force-reinstall",
                            "-q", str(wheel)], check=True, stdin=subprocess.DEVNULL, timeout=600)
        marker.write_text(digest.hexdigest())
    return venv / "bin"
