"""examples/quickstart.sh is safe to re-run: it never touches the user's key store or configuration."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO, assert_no_python_warning


def test_quickstart_twice_leaves_nothing_behind(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    user_conf = tmp_path / "user.conf"
    user_conf.write_text(f"[key_manager]\nbackend = imgsign\n[imgsign_embedded]\npath = {tmp_path / 'conf-store'}\n")
    env = {**os.environ, "IMGSIGN_QUICKSTART_PYTHON": sys.executable, "TMPDIR": str(scratch),
           "IMGSIGN_KEYSTORE": str(tmp_path / "env-store"), "IMGSIGN_CONFIG": str(user_conf),
           "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    for _ in range(2):
        run = subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh")], env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert run.returncode == 0, run
        assert "OK:" in run.stdout and "Traceback" not in run.stderr
        assert_no_python_warning(run.stderr)
    for store in ("env-store", "conf-store", "xdg/imgsign", "home/.local/share/imgsign"):
        assert not (tmp_path / store).exists(), store
    assert list(scratch.iterdir()) == []
