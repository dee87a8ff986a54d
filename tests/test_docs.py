"""The documentation (doc/source and the README): its code snippets run, and what it lists is complete.

Every ```python block of every page runs, the blocks of one page in order in one namespace, in a
fresh directory holding a key and certificate of the test PKI (certs-test/) as ``signer.key`` and
``signer.pem``, the CA certificates ``root-ca.pem`` and ``intermediate-ca.pem``, an image
``disk.img`` and a qcow2 ``disk.qcow2`` with its properties ``props.json``; ``$IMGSIGN_CONFIG`` names
an embedded key store in that directory and ``$HOME`` is it.  A block that cannot run there is
marked by the line ``% snippet: not-runnable (reason)`` right before it (a MyST comment: not
rendered).  doc/source/contributor/documentation.md documents both.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "doc" / "source"
CERTS = REPO / "certs-test"
SECTIONS = ("install", "admin", "user", "reference", "specs", "security", "performance", "contributor")
MARKER = re.compile(r"^%\s*snippet:\s*not-runnable\s*\((?P<reason>[^)]*)\)\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the block's first code line, 1-based
    code: str
    skip_reason: str | None


def shown(page: Path) -> str:
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else str(page)


def pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), REPO / "README.md"]


def snippets(page: Path) -> list[Snippet]:
    """The ```python blocks of a Markdown page (fences nest by length, as CommonMark's do)."""
    lines = page.read_text().split("\n")
    found: list[Snippet] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        end = index + 1
        while end < len(lines) and not (lines[end].startswith(fence[0] * len(fence))
                                        and lines[end].strip(fence[0]).strip() == ""):
            end += 1
        if info.split()[:1] in (["python"], ["py"]):
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = MARKER.match(previous.strip())
            if previous.strip().startswith("%") and "snippet" in previous and not marker:
                raise AssertionError(f"{shown(page)}:{index}: a snippet marker is "
                                     "'% snippet: not-runnable (reason)', with the reason")
            found.append(Snippet(page, index + 2, "\n".join(lines[index + 1:end]),
                                 marker["reason"].strip() if marker else None))
        index = end + 1
    return found


RUNNER = r"""
import json, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__doc_snippet__"}
for page, line, code in blocks:
    try:
        exec(compile("\n" * (line - 1) + code, page, "exec"), namespace)
    except BaseException as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == page]
        where = frames[-1].lineno if frames else line
        print(f"{page}:{where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def workspace(directory: Path) -> dict[str, str]:
    """The files the snippets read, and the environment they run in."""
    for name, source in (("signer.key", "leaf-rsa-pss.key"), ("signer.pem", "leaf-rsa-pss.pem"),
                         ("root-ca.pem", "root-ca.pem"), ("intermediate-ca.pem", "intermediate-ca.pem")):
        shutil.copyfile(CERTS / source, directory / name)
    (directory / "disk.img").write_bytes(os.urandom(3 << 20))
    qemu_img = shutil.which("qemu-img")
    if qemu_img:
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(directory / "disk.qcow2"), "64M"], check=True)
    else:  # only its bytes are read; the name is the README's
        shutil.copyfile(directory / "disk.img", directory / "disk.qcow2")
    import imgsign

    key = imgsign.load_private_key((directory / "signer.key").read_bytes())
    cert = imgsign.load_certificate((directory / "signer.pem").read_bytes())
    with open(directory / "disk.qcow2", "rb") as image:
        props = imgsign.sign(image, key, "5f0c3f8e-5a6e-4cd1-a8a4-3b2f0a0e9d11", certificate=cert)
    (directory / "props.json").write_text(props.to_json())
    (directory / "imgsign.conf").write_text(
        f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {directory / 'keystore.sqlite3'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSIGN_", "OS_"))}
    env.update(IMGSIGN_CONFIG=str(directory / "imgsign.conf"), HOME=str(directory),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


PAGES_WITH_PYTHON = [page for page in pages() if snippets(page)]


def test_the_snippet_test_finds_the_library_snippets() -> None:
    """Not vacuous: the library page has runnable blocks, and the parser sees a marked one as marked."""
    library = [s for s in snippets(DOCS / "user" / "library.md") if s.skip_reason is None]
    assert len(library) >= 3
    assert all("imgsign.signer(" not in s.code for page in pages() for s in snippets(page))


def test_a_marked_snippet_is_skipped_with_its_reason(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# T\n\n% snippet: not-runnable (needs a Glance server)\n```python\nraise SystemExit(3)\n```\n"
                    "````md\n```python\nnested, not a block of this page\n```\n````\n```python\nx = 1\n```\n")
    found = snippets(page)
    assert [(s.line, s.skip_reason) for s in found] == [(5, "needs a Glance server"), (13, None)]
    page.write_text("# T\n\n% snippet: not-runnable\n```python\npass\n```\n")
    with pytest.raises(AssertionError, match="with the reason"):
        snippets(page)


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=shown)
def test_python_snippets_run(page: Path, tmp_path: Path) -> None:
    blocks = [[shown(s.page), s.line, s.code] for s in snippets(page) if s.skip_reason is None]
    if not blocks:
        pytest.skip("every block is marked not runnable")
    env = workspace(tmp_path)
    run = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_a_failing_snippet_names_its_page_and_line(tmp_path: Path) -> None:
    blocks = [["doc/source/x.md", 7, "a = 1\nb = a + undefined_name\n"]]
    run = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.startswith("doc/source/x.md:8: NameError"), run.stderr


# --- what the documentation lists ---------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_index_globs_its_pages(section: str) -> None:
    """Helpers add pages to these directories in parallel: the index must pick them up by itself."""
    index = (DOCS / section / "index.md").read_text()
    assert re.search(r"```\{toctree\}\n(:[a-z]+:.*\n)*:glob:\n(:[a-z]+:.*\n)*\n\*\n```", index), section


def test_every_page_starts_with_a_title() -> None:
    for page in DOCS.rglob("*.md"):
        assert page.read_text().startswith("# "), page.relative_to(REPO)


def test_readme_is_short_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert "bash examples/quickstart.sh" in readme and "bash .ci/run" in readme
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme):
        assert (REPO / target).exists(), target


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    documented = (DOCS / "reference" / "environment.md").read_text()
    code = "\n".join(p.read_text() for p in [*(REPO / "imgsign").rglob("*.py"), REPO / "hooks" / "libvirt-qemu"])
    for variable in sorted(set(re.findall(r"\bIMGSIGN_[A-Z0-9_]+\b", code))):
        assert f"`{variable}`" in documented, variable


def test_every_oslo_config_namespace_is_in_the_configuration_reference() -> None:
    """Each namespace of the ``oslo.config.opts`` entry points has its show-options block."""
    namespaces = {ep.name for ep in importlib.metadata.distribution("imgsign").entry_points
                  if ep.group == "oslo.config.opts"}
    assert namespaces
    reference = (DOCS / "reference" / "configuration.md").read_text()
    shown = re.findall(r"```\{show-options\}\n((?:[^`\n]+\n)+)```", reference)  # MyST's directive
    shown += re.findall(r"```\{eval-rst\}\n\.\. show-options::\n((?:[^`\n]*\n)+)```", reference)  # reST's
    listed = {line.strip() for block in shown for line in block.splitlines() if line.strip()}
    assert set(namespaces) <= listed, set(namespaces) - listed


def test_every_library_name_the_docs_mention_exists() -> None:
    """The README once showed ``imgsign.signer(...)``, a module, not a function: every dotted
    ``imgsign.x.y`` name in the documents must import, and be callable where the text calls it
    (file names such as imgsign.conf and config namespaces aside)."""
    namespaces = {ep.name for ep in importlib.metadata.entry_points(group="oslo.config.opts")}
    mentions = {(match[1], bool(match[2])) for page in pages()
                for match in re.finditer(r"(?<![\w/.-])(imgsign(?:\.[A-Za-z_]\w*)+)(\()?", page.read_text())}
    wrong = []
    for name, called in sorted(mentions):
        if name in namespaces or name == "imgsign.conf":
            continue
        parts = name.split(".")
        for split in range(len(parts), 0, -1):
            try:
                target: object = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attribute in parts[split:]:
                    target = getattr(target, attribute)
            except AttributeError:
                wrong.append(f"{name}: no such name")
            else:
                if called and not callable(target):
                    wrong.append(f"{name}(...): not callable")
            break
    assert len(mentions) > 10 and not wrong, wrong
