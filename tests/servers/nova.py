"""Nova 34's own image download code, ``nova.virt.images.fetch_to_raw``, run against the test Glance.

Nova 34.0.0 from PyPI in a cached venv of its own (its pinned OpenStack dependencies
clash with the project's), plus imgsign's runtime dependencies, so that Nova's
``verify_glance_signatures`` check (cursive through castellan) can use imgsign's
embedded key manager as the Glance harness does: this checkout's imgsign reaches
Nova's Python through the same ``pylib`` directory (:func:`tests.servers.glance.imgsign_pylib`),
never installed into the shared venv. ``nova_app/fetch.py`` makes one call of
``fetch_to_raw`` with a nova.conf written here: what Nova's image cache does when
``_base`` lacks an image (download to ``.part``, deep format inspection, ``qemu-img
info`` checks, conversion to raw under ``force_raw_images``, rename), or of
``nova.virt.libvirt.utils.fetch_raw_image`` (how Nova's libvirt driver caches a kernel
or ramdisk: the data straight into the base, no inspection).

Nova reaches Glance with the user's Keystone token (the request context's
``auth_token``, handed over in the environment, never on a command line), as
``nova-compute`` does for the instance's owner; Glance validates it with the session's
Keystone. With ``verify_glance_signatures`` on, Nova's check reads the certificate
through castellan as the context's project (``project_id``, the Keystone project *id*
Glance stored it under) from the embedded key store ``keystore``: that SQLite file is
root's, so a run as the nova user (``user=``) must leave the check off.

With ``user=``, all of Nova runs as that uid (``setpriv``, no supplementary groups), so
every file it writes (the ``.part``, ``qemu-img convert``'s output, the base) is the
nova user's, as on a compute host. The cached venv (and, with pyenv, its base
interpreter) may live under root's home, which the nova user cannot traverse (Nova also
re-executes its own interpreter, for ``oslo_concurrency.prlimit`` around ``qemu-img
info``): :func:`_as_user` makes them reachable at their own paths in a private mount
namespace (``unshare --mount``) that ends with the process, so nothing outside it changes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.servers.common import clean_env, ensure_venv
from tests.servers.glance import imgsign_pylib

NOVA = "nova==34.0.0"
REQUIREMENTS = (NOVA, "pyasn1", "pyasn1-modules", "click", "defusedxml")
VENV_NAME = "nova-34.0.0-venv"
FETCH = Path(__file__).resolve().with_name("nova_app") / "fetch.py"
VERDICTS = Path(__file__).resolve().with_name("nova_app") / "verdicts.py"


def nova_venv() -> Path:
    """The cached venv holding Nova, built on first use."""
    return ensure_venv(VENV_NAME, list(REQUIREMENTS),
                       check="import nova.virt.images, nova.image.glance, castellan, cursive, pyasn1_modules, "
                             "click, defusedxml")


def _blocked(path: Path) -> Path | None:
    """The top-most directory above ``path`` that others cannot traverse (e.g. ``/root``), if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def _as_user(user: int, workdir: Path, trees: list[Path], command: list[str]) -> list[str]:
    """``command`` run as ``user`` (setpriv, no supplementary groups), with ``trees`` reachable by it.

    A tree under a directory the user cannot traverse (the cached venv and its base interpreter under
    root's home) stays at its own path: in a private mount namespace (``unshare --mount``, gone with the
    process) the tree is bind-mounted aside, an empty tmpfs (mode 0755) covers the closed directory, and
    the tree is bind-mounted back into it. Nothing outside the namespace changes; the user sees only
    those trees of the closed directory.
    """
    closed = {tree: _blocked(tree) for tree in trees}
    staged = {tree: workdir / f"mnt{index}" for index, tree in enumerate(trees) if closed[tree] is not None}
    script = ["set -e"]
    for tree, stage in staged.items():
        stage.mkdir(exist_ok=True)
        script.append(f"mount --bind '{tree}' '{stage}'")
    for cover in dict.fromkeys(closed[tree] for tree in staged):
        script.append(f"mount -t tmpfs -o mode=0755 imgsign-nova '{cover}'")
    for tree, stage in staged.items():
        script += [f"mkdir -p '{tree}'", f"mount --bind '{stage}' '{tree}'"]
    script.append(f'exec setpriv --reuid={user} --regid={user} --clear-groups -- "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "nova-fetch",
            *command]


def fetch_to_raw(workdir: Path, *, glance_url: str, token: str, project_id: str, image_id: str, dest: Path,
                 force_raw_images: bool = True, verify_glance_signatures: bool, keystore: Path | None = None,
                 user: int | None = None, function: str = "fetch_to_raw",
                 trusted_certificate_ids: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Nova's ``fetch_to_raw`` (or ``fetch_raw_image``) of ``image_id`` into ``dest``, as uid ``user`` (e.g. nova).

    ``token`` is a Keystone token of the image's user, ``project_id`` that token's project id.
    ``trusted_certificate_ids`` (key manager ids of CA certificates) turns on Nova's certificate
    validation: ``[glance] enable_certificate_validation`` with them as ``default_trusted_certificate_ids``.
    """
    if function not in ("fetch_to_raw", "fetch_raw_image"):
        raise ValueError(f"not a Nova download function: {function}")
    if (verify_glance_signatures or trusted_certificate_ids) and keystore is None:
        raise ValueError("verify_glance_signatures needs the key store Nova's check reads")
    validation = ("" if not trusted_certificate_ids else
                  "enable_certificate_validation = True\n"
                  f"default_trusted_certificate_ids = {','.join(trusted_certificate_ids)}\n")
    python = nova_venv() / "bin" / "python"
    workdir.mkdir(parents=True, exist_ok=True)
    key_manager = ("" if keystore is None
                   else f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n")
    conf = workdir / "nova.conf"
    conf.write_text(f"""\
[DEFAULT]
force_raw_images = {force_raw_images}
state_path = {workdir}

[glance]
api_servers = {glance_url}
verify_glance_signatures = {verify_glance_signatures}
{validation}
{key_manager}
[oslo_concurrency]
lock_path = {workdir}
""")
    conf.chmod(0o644)
    if user is not None:  # Nova's state and lock paths are its own
        os.chown(workdir, user, user)
    env = clean_env(workdir, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON"))
    env["PYTHONPATH"] = str(imgsign_pylib(workdir / "pylib"))
    env["PYTHONWARNINGS"] = "ignore"
    env["PATH"] = f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
    env["NOVA_AUTH_TOKEN"] = token
    command = [str(python), str(FETCH), str(conf), project_id, image_id, str(dest), function]
    if user is not None:
        command = _as_user(user, workdir, [python.parent.parent, Path(os.path.realpath(python)).parents[1]], command)
    return subprocess.run(command, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
                          cwd=workdir)


def verdicts(workdir: Path, cases: list[tuple[Path, str]], *, force_raw_images: bool = True) -> list[dict[str, object]]:
    """Nova 34's ``fetch_to_raw`` verdict on each ``(file, Glance disk_format)``, after its download
    (``nova_app/verdicts.py``: Glance is stood in for by the file itself): ``{"accepted", "error"}``."""
    import json

    python = nova_venv() / "bin" / "python"
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nova.conf"
    conf.write_text(f"[DEFAULT]\nforce_raw_images = {force_raw_images}\nstate_path = {workdir}\n\n"
                    f"[oslo_concurrency]\nlock_path = {workdir}\n")
    env = clean_env(workdir, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON"))
    env["PYTHONWARNINGS"] = "ignore"
    env["PATH"] = f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
    proc = subprocess.run([str(python), str(VERDICTS), str(conf), str(workdir)], env=env, capture_output=True,
                          text=True, timeout=600, check=False, cwd=workdir,
                          input=json.dumps([{"path": str(path), "disk_format": fmt} for path, fmt in cases]))
    if proc.returncode != 0:
        raise RuntimeError(f"Nova's inspection did not run: {proc.stderr[-2000:]}")
    result: list[dict[str, object]] = json.loads(proc.stdout)
    return result


UPLOAD = Path(__file__).resolve().with_name("nova_app") / "upload.py"
ADD_LOCATION = Path(__file__).resolve().with_name("nova_app") / "add_location.py"
IMAGE_LOCATIONS = Path(__file__).resolve().with_name("nova_app") / "image_locations.py"


def _image_api_script(script: Path, workdir: Path, glance_url: str, token: str,
                      *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (under nova_app/) in Nova's venv with a nova.conf naming ``glance_url`` and the user's
    ``token`` (``NOVA_AUTH_TOKEN``): ``script NOVA_CONF ARGS...``."""
    python = nova_venv() / "bin" / "python"
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nova.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {workdir}\n\n[glance]\napi_servers = {glance_url}\n\n"
                    f"[oslo_concurrency]\nlock_path = {workdir}\n")
    env = clean_env(workdir, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON"))
    env["PYTHONWARNINGS"] = "ignore"
    env["PATH"] = f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
    env["NOVA_AUTH_TOKEN"] = token
    return subprocess.run([str(python), str(script), str(conf), *args], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False, cwd=workdir)


def _last_json_line(proc: subprocess.CompletedProcess[str], what: str) -> Any:
    import json

    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"Nova's {what} did not run: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def upload_snapshot(workdir: Path, *, glance_url: str, token: str, project_id: str, image_id: str,
                    data: Path) -> subprocess.CompletedProcess[str]:
    """Nova's ``nova.image.glance.API().update`` with ``data``, as nova-compute uploads a snapshot."""
    return _image_api_script(UPLOAD, workdir, glance_url, token, project_id, image_id, str(data))


def add_location(workdir: Path, *, glance_url: str, token: str, project_id: str, image_id: str,
                 url: str) -> dict[str, object]:
    """Nova's ``nova.image.glance.API().update`` adding ``url`` as a location, as the libvirt driver's RBD
    direct snapshot does: ``{"error": Nova's exception class or None, "message", "falls_back"}``
    (``nova_app/add_location.py``; ``falls_back``: ``LibvirtDriver.snapshot()`` would then take the
    standard snapshot path)."""
    result: dict[str, object] = _last_json_line(
        _image_api_script(ADD_LOCATION, workdir, glance_url, token, project_id, image_id, url), "add_location")
    return result


def image_locations(workdir: Path, *, glance_url: str, token: str, project_id: str, image_id: str) -> list[str]:
    """The locations Nova's ``nova.image.glance.API().get(include_locations=True)`` sees for ``image_id``, as
    the libvirt driver's RBD clone and direct snapshot ask for them (``nova_app/image_locations.py``)."""
    locations: list[str] = _last_json_line(
        _image_api_script(IMAGE_LOCATIONS, workdir, glance_url, token, project_id, image_id), "image get")["locations"]
    return locations


SNAPSHOT = Path(__file__).resolve().with_name("nova_app") / "snapshot.py"
#: libvirt's Python binding for Nova's libvirt driver, at the version of the machine's libvirt (9.0.0 on
#: Debian 12): PyPI has only its source, built against libvirt-dev with pkg-config and a C compiler.
LIBVIRT_PYTHON_BUILD = ("libvirt-dev", "pkg-config", "gcc")


def libvirt_python() -> Path:
    """A cached directory holding libvirt-python for Nova's venv (``pip install --target``), built on first use.

    Kept out of the Nova venv itself so that the venv's other users do not rebuild it. The binding's
    version is the machine's libvirt's (``pkg-config --modversion libvirt``); the build packages are
    installed with ``apt-get`` when missing.
    """
    import fcntl
    import shutil

    from tests.servers.common import ServerError, cache_dir, tail

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "libvirt-python.install.log"

    def have_libvirt_dev() -> bool:
        return shutil.which("pkg-config") is not None and shutil.which("gcc") is not None and subprocess.run(
            ["pkg-config", "--exists", "libvirt"], check=False).returncode == 0

    if not have_libvirt_dev():
        # The libvirt harness's apt lock: one apt-get at a time on the machine.
        with open(root / ".libvirt-apt.lock", "w") as apt_lock, open(log, "ab") as out:
            fcntl.flock(apt_lock, fcntl.LOCK_EX)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *LIBVIRT_PYTHON_BUILD]
            for step in (install, ["apt-get", "update", "-q"], install):
                if have_libvirt_dev():
                    break
                subprocess.run(step, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               timeout=900, check=False)
    with open(root / ".libvirt-python.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = subprocess.run(["pkg-config", "--modversion", "libvirt"], capture_output=True, text=True,
                                 check=False).stdout.strip() if have_libvirt_dev() else ""
        if not version:
            raise ServerError(f"{', '.join(LIBVIRT_PYTHON_BUILD)} are missing and could not be installed:\n"
                              f"{tail(log)}")
        python = nova_venv() / "bin" / "python"
        target = root / f"libvirt-python-{version}-{Path(os.path.realpath(python)).name}"
        if (target / ".complete").is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        with open(log, "ab") as out:
            code = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
                                   "--target", str(target), f"libvirt-python=={version}"],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=900,
                                  check=False).returncode
        if code != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise ServerError(f"building libvirt-python {version} failed ({code}):\n{tail(log)}")
        (target / ".complete").write_text(version + "\n")
        return target


def snapshot_instance(workdir: Path, *, libvirt_uri: str, glance_url: str, token: str, request: dict[str, object],
                      snapshots_directory: Path, instances_path: Path) -> subprocess.CompletedProcess[str]:
    """Nova's ``compute.utils.create_image``, then ``LibvirtDriver.snapshot()`` (``nova_app/snapshot.py``).

    Runs as root with Nova's privsep daemon started directly (``[nova_sys_admin] helper_command``: no
    sudo or rootwrap here), talking to the libvirtd at ``libvirt_uri`` and to Glance at ``glance_url``
    (``[glance] endpoint_override``, as a host running the gateway configures it).
    """
    import json

    python = nova_venv() / "bin" / "python"
    binding = libvirt_python()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nova.conf"
    conf.write_text(f"""\
[DEFAULT]
state_path = {workdir}
instances_path = {instances_path}
compute_driver = libvirt.LibvirtDriver

[libvirt]
connection_uri = {libvirt_uri}
virt_type = qemu
snapshots_directory = {snapshots_directory}

[glance]
endpoint_override = {glance_url}

[nova_sys_admin]
helper_command = {python.parent / "privsep-helper"} --config-file {conf}

[oslo_concurrency]
lock_path = {workdir}
""")
    request_file = workdir / "request.json"
    request_file.write_text(json.dumps(request))
    env = clean_env(workdir, drop_prefixes=("OS_", "IMGSIGN_", "PYTHON", "LIBVIRT_"))
    env["PYTHONPATH"] = str(binding)
    env["PYTHONWARNINGS"] = "ignore"
    env["PATH"] = f"{python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    env["NOVA_AUTH_TOKEN"] = token
    return subprocess.run([str(python), str(SNAPSHOT), str(conf), str(request_file)], env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False,
                          cwd=workdir)
