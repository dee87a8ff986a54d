"""Nova 34's own image download code, ``nova.virt.images.fetch_to_raw``, run against the test Glance.

Nova 34.0.0 from PyPI in a cached venv of its own (its pinned OpenStack dependencies
clash with the project's), plus imgsign's runtime dependencies, so that Nova's
``verify_glance_signatures`` check (cursive through castellan) can use imgsign's
embedded key manager as the Glance harness does: this checkout's imgsign reaches
Nova's Python through the same ``pylib`` directory (:func:`tests.servers.glance.imgsign_pylib`),
never installed into the shared venv. ``nova_app/fetch.py`` makes one call of
``fetch_to_raw`` with a nova.conf written here: what Nova's image cache does when
``_base`` lacks an image (download to ``.part``, deep format inspection, ``qemu-img
info`` checks, conversion to raw under ``force_raw_images``, rename).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers.common import clean_env, ensure_venv
from tests.servers.glance import imgsign_pylib

NOVA = "nova==34.0.0"
REQUIREMENTS = (NOVA, "pyasn1", "pyasn1-modules", "click", "defusedxml")
VENV_NAME = "nova-34.0.0-venv"
FETCH = Path(__file__).resolve().with_name("nova_app") / "fetch.py"


def nova_venv() -> Path:
    """The cached venv holding Nova, built on first use."""
    return ensure_venv(VENV_NAME, list(REQUIREMENTS),
                       check="import nova.virt.images, nova.image.glance, castellan, cursive, pyasn1_modules, "
                             "click, defusedxml")


def fetch_to_raw(workdir: Path, *, glance_url: str, keystore: Path, project: str, image_id: str, dest: Path,
                 force_raw_images: bool, verify_glance_signatures: bool,
                 user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Nova's ``fetch_to_raw`` of ``image_id`` into ``dest`` (as uid ``user``, e.g. the nova user)."""
    python = nova_venv() / "bin" / "python"
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nova.conf"
    conf.write_text(f"""\
[DEFAULT]
force_raw_images = {force_raw_images}
state_path = {workdir}

[glance]
api_servers = {glance_url}
verify_glance_signatures = {verify_glance_signatures}

[key_manager]
backend = imgsign

[imgsign_embedded]
path = {keystore}

[oslo_concurrency]
lock_path = {workdir}
""")
    conf.chmod(0o644)
    env = clean_env(workdir, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON"))
    env["PYTHONPATH"] = str(imgsign_pylib(workdir / "pylib"))
    env["PYTHONWARNINGS"] = "ignore"
    env["PATH"] = f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
    return subprocess.run([str(python), str(FETCH), str(conf), project, image_id, str(dest)], env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
                          user=user, group=user, extra_groups=[] if user is not None else None, cwd=workdir)
