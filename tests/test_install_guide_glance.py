"""The Glance host install guide (doc/source/install/glance.md), run as written on the built wheel.

What is real:

* the wheel, built from a copy of this tree (:func:`tests.test_install_guide.build_wheel`), installed by
  the guide's own lines (``pip freeze`` of Glance's packages as constraints, ``pip install`` of the
  wheel, ``pip check``) into **Glance's environment**: a new venv whose site-packages has a ``.pth``
  naming the cached Glance 33 venv's (tests/servers/glance.py ``glance_venv()``), so Glance is
  importable there; pip adds imgsign and the one dependency that venv lacks (``rfc3161-client``, from
  pip's index as an operator's would come) into the new venv; the shared cached venv is never changed
  (checked);
* ``glance-api.conf`` and ``glance-image-import.conf`` are the guide's ``ini`` blocks (each block goes
  to the last ``*.conf`` file the prose before it names), merged per file; ``service.conf`` and
  ``user.conf`` too;
* every ``sh`` line of the guide runs, in order, under ``bash -euo pipefail``: the service key and
  certificate stores with that environment's ``imgsign``, the uploader's ``upload`` and ``verify --image``
  with a workstation ``imgsign`` (the same wheel in a second venv that borrows this project's venv's
  packages, for the ``imgsign[openstack]`` extra);
* glance-api (Glance 33 under the harness's WSGI server, tests/servers/glance_app/serve.py) runs from
  that environment's Python, with no ``PYTHONPATH`` to this checkout, behind the session's real Keystone;
  the plugins and the embedded key manager are found through the installed wheel's entry points.

What is substituted (the deployment-specific parts the guide leaves to the operator, and paths):

* ``/opt/glance`` is the new venv; ``/var/lib/imgsign`` and ``/var/lib/glance`` are moved under the
  test's directory (``/var/lib/glance`` to the harness's Glance work directory, whose ``images`` and
  ``staging`` the page names);
* each ``<...>`` value of an ``ini`` block is the output of the ``sh`` line whose comment names that
  option (``# prints the id for service_key_id``);
* added to ``glance-api.conf`` (what the page calls "your deployment's as usual"): ``log_file``,
  ``[database]`` (SQLite), ``[os_glance_tasks_store]``, ``[paste_deploy]`` (the harness's keystone
  pipeline, tests/servers/glance_app/glance-api-paste.ini, instead of ``flavor = keystone``) and
  ``[keystone_authtoken]`` (tests/servers/keystone.py);
* the files the guide assumes: ``service.key``/``service.pem`` are the test PKI's ECC_SECP384R1 leaf,
  ``signing-ca.pem`` its intermediate CA, ``signer.key``/``signer.pem`` its RSA-PSS leaf, ``disk.qcow2``
  a small qcow2 written by qemu-io;
* ``OS_CLOUD=mycloud`` names a clouds.yaml entry (``$OS_CLIENT_CONFIG_FILE``) for a member of project
  ``demo`` of the session's Keystone, with ``image_endpoint_override`` (this Keystone has no catalog
  entry for Glance);
* "restart glance-api": glance-api is started once, after the configuration is complete;
* the guide's closing claim (an unsigned or tampered import fails, the image stays ``queued``) is
  checked with imports the test makes itself through Glance's API (a real token of ``demo``), the
  tampered one signed by the workstation ``imgsign sign --store-cert`` and then changed by one byte.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgsign import errors
from tests.conftest import REPO, cert_of, key_of, pki
from tests.servers.glance import APP_DIR, glance_server, glance_venv
from tests.test_glance_e2e import API, USER, flip_last_byte, make_qcow2
from tests.test_install_guide import build_wheel

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

GUIDE = REPO / "doc" / "source" / "install" / "glance.md"
#: The section whose commands an uploader runs on a workstation (the rest run on the Glance host).
UPLOADER = "The first signed upload"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
PLACEHOLDER = re.compile(r"^<.*>$")


def guide_blocks(text: str) -> list[tuple[str, str, str | None, str]]:
    """(section, language, the ``*.conf`` the prose before it names last, body) of each fenced block."""
    blocks, start = [], 0
    for match in FENCE.finditer(text):
        prose = text[start:match.start()]
        headings = re.findall(r"^## (.+)$", text[:match.start()], re.M)
        files = re.findall(r"`([\w.-]+\.conf)`", prose)
        blocks.append((headings[-1] if headings else "", match[1], files[-1] if files else None, match[2]))
        start = match.end()
    return blocks


def ini_files(blocks: list[tuple[str, str, str | None, str]]) -> dict[str, configparser.ConfigParser]:
    files: dict[str, configparser.ConfigParser] = {}
    for _, language, name, body in blocks:
        if language == "ini":
            assert name, f"an ini block names no file before it:\n{body}"
            parser = files.setdefault(name, configparser.ConfigParser(interpolation=None))
            parser.optionxform = str  # type: ignore[assignment,method-assign,unused-ignore]
            parser.read_string(body)
    return files


def render(parser: configparser.ConfigParser, extra: str = "") -> str:
    out = ["[DEFAULT]\n" + "".join(f"{k} = {v}\n" for k, v in parser.defaults().items())] if parser.defaults() else []
    for section in parser.sections():
        options = {k: v for k, v in parser.items(section, raw=True) if k not in parser.defaults()}
        out.append(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return "\n".join(out) + "\n" + extra


def sh_lines(body: str) -> list[tuple[str, str]]:
    """(command, comment) of each line (backslash continuations joined), comment-only lines dropped."""
    lines = []
    for line in body.replace("\\\n", " ").splitlines():
        command, _, comment = line.partition("  #")
        if command.strip() and not command.lstrip().startswith("#"):
            lines.append((command.strip(), comment.strip()))
    return lines


def substitute(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = re.sub(rf"(?<![\w./-]){re.escape(old)}", new.replace("\\", "\\\\"), text)
    return text


def borrowing_venv(base_python: Path, venv: Path, borrowed: list[str], with_pip: bool) -> Path:
    """A new venv whose site-packages has a .pth naming ``borrowed`` site-packages: its Python."""
    subprocess.run([str(base_python), "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)],
                   check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed-site-packages.pth").write_text("\n".join(borrowed) + "\n")
    return python


def purelib(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()


class Shell:
    """Runs the guide's ``sh`` lines one at a time, ``export`` lines kept for the next ones."""

    def __init__(self, cwd: Path, env: dict[str, str], pairs: list[tuple[str, str]]) -> None:
        self.cwd, self.env, self.pairs = cwd, env, pairs

    def run(self, command: str) -> str:
        """The command's stdout (its stderr is in :attr:`stderr`)."""
        command = substitute(command, self.pairs)
        self.stderr = ""
        exported = re.fullmatch(r"export (\w+)=(\S+)", command)
        if exported:
            self.env[exported[1]] = exported[2]
            return ""
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, f"`{command}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        self.stderr = proc.stderr
        return proc.stdout


def test_the_guide_sets_up_a_glance_host_from_the_wheel(tmp_path: Path, keystone) -> None:
    blocks = guide_blocks(GUIDE.read_text())
    host, glance_dir = tmp_path / "host", tmp_path / "host" / "glance"
    host.mkdir()
    (host / "dist").mkdir()
    build_wheel(tmp_path, host / "dist")
    glance_python = glance_venv() / "bin" / "python"
    glance_env = tmp_path / "opt" / "glance"
    shared_site = purelib(glance_python)
    shared_before = sorted(os.listdir(shared_site))
    borrowing_venv(glance_python, glance_env, [shared_site], with_pip=True)
    workstation = borrowing_venv(Path(sys.executable), tmp_path / "workstation",
                                 [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()],
                                 with_pip=False)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(workstation), "install", "-q", "--no-deps",
                    *(host / "dist").glob("*.whl")], check=True, capture_output=True, timeout=300)
    pairs = [("/opt/glance", str(glance_env)), ("/var/lib/imgsign", str(host / "var" / "lib" / "imgsign")),
             ("/var/lib/glance", str(glance_dir))]
    keystore = host / "var" / "lib" / "imgsign" / "keystore.sqlite3"
    for name, source in [("service.key", key_of("ECC_SECP384R1")), ("service.pem", cert_of("ECC_SECP384R1")),
                         ("signing-ca.pem", pki("intermediate-ca.pem")), ("signer.key", key_of("RSA-PSS")),
                         ("signer.pem", cert_of("RSA-PSS"))]:
        shutil.copy(source, host / name)
    make_qcow2(host / "disk.qcow2")
    files = ini_files(blocks)
    assert set(files) == {"glance-api.conf", "glance-image-import.conf", "service.conf", "user.conf"}, set(files)
    for name in ("service.conf", "user.conf"):
        (host / name).write_text(substitute(render(files[name]), pairs))

    # The Glance host: install, then the service key's commands; each printed id fills the ini placeholder
    # whose option the command's comment names.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGSIGN_", "PYTHON"))}
    env["PATH"] = f"{workstation.parent}{os.pathsep}{env['PATH']}"  # the uploader's `imgsign`
    shell = Shell(host, env, pairs)
    printed: dict[str, str] = {}
    outputs = []
    for section, language, _, body in blocks:
        if language == "sh" and section != UPLOADER:
            for command, comment in sh_lines(body):
                out = shell.run(command)
                outputs.append(out)
                for option in re.findall(r"\bfor (\w+)", comment):
                    printed[option] = out.strip()
    installed = re.findall(r"^Successfully installed (.+)$", "".join(outputs), re.M)
    # Nothing of Glance's changed: imgsign and, of its dependencies, only rfc3161-client, which Glance lacks
    # (unless the harness's shared Glance venv already holds it: the import-plugin tests need it there).
    names = [{re.sub(r"-[^-]+$", "", name) for name in line.split()} for line in installed]
    assert len(names) == 1 and "imgsign" in names[0] and names[0] <= {"imgsign", "rfc3161-client"}, installed
    assert sorted(os.listdir(shared_site)) == shared_before, "the shared Glance venv was changed"
    assert "No broken requirements found." in "".join(outputs), outputs
    where = subprocess.run([str(glance_env / "bin" / "python"), "-I", "-c",
                            "import glance, imgsign; print(imgsign.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert where.startswith(str(glance_env)) and str(REPO) not in where, where
    assert set(printed) == {"service_key_id", "service_certificate_id", "trusted_certificate_ids"}, printed

    api_conf, import_conf = files["glance-api.conf"], files["glance-image-import.conf"]
    for parser in (api_conf, import_conf):
        for section in parser.sections():
            for option, value in parser.items(section, raw=True):
                if PLACEHOLDER.match(value):
                    parser.set(section, option, printed[option])
    deployment = (f"[DEFAULT]\nlog_file = {glance_dir / 'glance-api.log'}\nuse_stderr = False\n\n"
                  f"[database]\nconnection = sqlite:///{glance_dir / 'glance.sqlite'}\n\n"
                  f"[os_glance_tasks_store]\nfilesystem_store_datadir = {glance_dir / 'tasks'}\n\n"
                  f"[paste_deploy]\nconfig_file = {APP_DIR / 'glance-api-paste.ini'}\n\n"
                  f"{keystone.authtoken_conf('glance')}")
    config = {"glance-api.conf": substitute(render(api_conf, deployment), pairs),
              "glance-image-import.conf": substitute(render(import_conf), pairs)}

    with glance_server(glance_dir, keystone=keystone, keystore=keystore, config=config,
                       python=glance_env / "bin" / "python") as server:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"PYTHONPATH=")], "glance-api must use the installed wheel"
        clouds = host / "clouds.yaml"
        user = keystone.project_user(USER)
        clouds.write_text(json.dumps({"clouds": {"mycloud": keystone.cloud(user.user,
                                                                           image_endpoint_override=server.url)}}))
        shell.env["OS_CLIENT_CONFIG_FILE"] = str(clouds)

        # The uploader: upload, the report's status, verify --image (its exit status: bash -e).
        uploaded = []
        for command, _ in [line for section, language, _, body in blocks if language == "sh" and section == UPLOADER
                           for line in sh_lines(body)]:
            uploaded.append(shell.run(command) + shell.stderr)
        report = json.loads((host / "upload.json").read_text())
        image_id = report["id"]
        assert uploaded[2] == "active\n", uploaded
        # verify --image: the bytes Glance serves, signed by the service key, its certificate chaining to signing-ca.pem
        assert uploaded[3].startswith(f"OK: Glance image {image_id} matches its signature (ECC_SECP384R1, "), uploaded
        assert re.search(r"certificate .*leaf-ecc-secp384r1.*, chain to trusted .*intermediate-ca", uploaded[3])
        shown = API(server).show(image_id)
        assert (shown["status"], shown["disk_format"]) == ("active", "raw"), shown
        assert shown["img_signature_key_type"] == "ECC_SECP384R1"  # the service key's, not the uploader's RSA-PSS
        assert shown["imgsign_original_img_signature_key_type"] == "RSA-PSS"
        log = server.glance_log_text()
        assert f"imgsign_verify: image {image_id}: signature by" in log
        assert f"imgsign_resign: image {image_id} re-signed" in log
        assert f"Successfully verified signature for image {image_id}" in log  # Glance's own check

        # "An import of an unsigned image, or of data that no longer matches its signature, fails".
        api = API(server)
        unsigned_id, task = api.import_image(make_qcow2(tmp_path / "unsigned.qcow2"))
        assert task["status"] == "failure", task
        assert f"imgsign_verify refused image {unsigned_id}: {errors.UnsignedImage.reason}:" in task["message"]
        assert api.show(unsigned_id)["status"] == "queued"
        tampered = make_qcow2(tmp_path / "tampered.qcow2")
        signed = shell.run(f"imgsign -c user.conf sign {tampered} --key signer.key --cert signer.pem --store-cert -q")
        flip_last_byte(tampered)
        tampered_id, task = api.import_image(tampered, json.loads(signed))
        assert task["status"] == "failure", task
        assert f"imgsign_verify refused image {tampered_id}: invalid-signature:" in task["message"], task
        assert api.show(tampered_id)["status"] == "queued"
