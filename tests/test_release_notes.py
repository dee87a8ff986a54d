"""The release notes (releasenotes/notes/*.yaml) are what reno reads: file names as ``reno new`` makes
them, YAML mappings of reno's sections, each a list of non-empty texts (the prelude one text); with
reno installed (the ``docs`` extra), ``reno lint`` accepts them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

NOTES = REPO / "releasenotes" / "notes"
#: reno's default sections (reno.defaults.SECTIONS) and the prelude.
SECTIONS = {"features", "issues", "upgrade", "deprecations", "critical", "security", "fixes", "other"}


def test_notes_are_well_formed() -> None:
    notes = sorted(NOTES.glob("*"))
    assert notes, "no release notes"
    for path in notes:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*-[0-9a-f]{16}\.yaml", path.name), path.name
        body = yaml.safe_load(path.read_text())
        assert isinstance(body, dict) and body, path.name
        assert set(body) <= SECTIONS | {"prelude"}, (path.name, set(body) - SECTIONS)
        for section, items in body.items():
            if section == "prelude":
                assert isinstance(items, str) and items.strip(), path.name
                continue
            assert isinstance(items, list) and items, (path.name, section)
            assert all(isinstance(item, str) and item.strip() for item in items), (path.name, section)
    assert any("prelude" in yaml.safe_load(path.read_text()) for path in notes)


def test_reno_lint_accepts_them() -> None:
    if importlib.util.find_spec("reno") is None:
        pytest.skip("reno is not installed (the docs extra)")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True, check=False).returncode != 0:
        pytest.skip("reno reads the notes from git history: not a git checkout")
    lint = subprocess.run([sys.executable, "-c", "import sys; from reno.main import main; sys.exit(main(['lint']))"],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
