"""The source distribution carries its tests: built from a copy of this tree with setuptools' PEP 517
``build_sdist`` (what ``python -m build --sdist`` calls; no network), unpacked, and a few fast test
modules run from the unpacked tree alone (its ``imgsign``, its ``tests/``, its ``certs-test/``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_install_guide import BUILD_IGNORE

#: Fast modules that read the tree's files: the layout (pyproject, hooks/, the README's exit codes) and the
#: certificate chains (certs-test/).
MODULES = ("tests/test_layout.py", "tests/test_chain.py")
#: Tracked files an sdist need not carry.
NOT_SHIPPED = {".gitignore"}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "imgsign"
    shutil.copytree(REPO, source, ignore=BUILD_IGNORE, symlinks=True)
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
                   cwd=source, check=True, capture_output=True, timeout=300)
    [built] = out.glob("imgsign-*.tar.gz")
    return built


def test_sdist_holds_every_tracked_file(sdist: Path) -> None:
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=False)
    if tracked.returncode != 0 or not tracked.stdout:
        pytest.skip("not a git checkout (an unpacked sdist itself): nothing to compare with")
    with tarfile.open(sdist) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = {name for name in tracked.stdout.splitlines() if (REPO / name).exists()} - shipped - NOT_SHIPPED
    assert not missing, f"tracked files missing from the sdist: {sorted(missing)}"
    for needed in ("certs-test/README.md", "hooks/libvirt-qemu", "examples/quickstart.sh",
                   "benchmarks/boot_verify.py", "tests/servers/glance_app", "tests/servers/keystone_app",
                   "LICENSE", "SECURITY.md"):
        assert any(name == needed or name.startswith(needed + "/") for name in shipped), needed


def test_tests_run_from_the_unpacked_sdist(sdist: Path, tmp_path: Path) -> None:
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            archive.extractall(tmp_path, filter="data")
        else:
            archive.extractall(tmp_path)  # noqa: S202 - our own archive, just built
    [tree] = tmp_path.iterdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST", "PYTHON"))}
    where = subprocess.run([sys.executable, "-c", "import imgsign; print(imgsign.__file__)"], cwd=tree, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tree), where  # the unpacked package, not this checkout's
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          *MODULES], cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
