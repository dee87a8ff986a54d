"""The package layout: no import cycles, a stable public API, entry points that resolve."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

import imgsign

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "imgsign"

#: What ``import imgsign`` exported before the package was split by use (issue 9): it must not shrink.
PUBLIC_API = {
    "DEFAULT_POLICY", "HashMethod", "ImgsignError", "KeyType", "Policy", "PrivateKey", "PublicKey",
    "SignatureProperties", "Signer", "TrustAnchors", "Verifier", "VerifyingReader", "certificate_public_key",
    "check_signing_certificate", "load_certificate", "load_private_key", "properties_from_document",
    "public_key_from_spki", "sign", "validate_chain", "verify_digest", "verifying_iter",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """imgsign modules that ``path`` imports anywhere (functions included), TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_core_does_no_io_imports_of_the_sides() -> None:
    """The pure core never imports the compute side, the Glance side or the command line."""
    graph = _graph()
    sides = ("imgsign.compute", "imgsign.glance", "imgsign.cli", "imgsign.osc", "imgsign.gateway")
    for name, targets in graph.items():
        if name.startswith(sides) or name in ("imgsign", "imgsign.__main__"):
            continue
        leaks = {t for t in targets if t.startswith(sides)}
        assert not leaks, f"{name} imports {leaks}"


def test_public_api_unchanged() -> None:
    assert set(imgsign.__all__) == PUBLIC_API
    for name in PUBLIC_API:
        assert getattr(imgsign, name) is not None
    assert callable(imgsign.sign) and isinstance(imgsign.Signer, type)


def test_entry_points_resolve() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    targets = dict(project["scripts"])
    for group, entries in project["entry-points"].items():
        targets |= {f"{group}:{name}": target for name, target in entries.items()}
    assert set(targets) == {
        "imgsign", "imgsign-libvirt-hook", "castellan.drivers:imgsign", "glance.image_import.plugins:imgsign_verify",
        "glance.image_import.plugins:imgsign_resign", "oslo.config.opts:imgsign.glance_import",
        "openstack.cli.extension:imgsign", "openstack.imgsign.v1:image_sign", "openstack.imgsign.v1:image_verify",
        "openstack.imgsign.v1:image_audit",
        "oslo.config.opts:imgsign", "oslo.config.opts:imgsign.boot", "oslo.config.opts:imgsign.gateway",
    }
    for name, target in targets.items():
        if ":" not in target:  # OSC's openstack.cli.extension names a module (the plugin's API_NAME, make_client)
            plugin = importlib.import_module(target)
            assert plugin.API_NAME == name.rpartition(":")[2] and callable(plugin.make_client), name
            continue
        module, attr = target.split(":")
        if module == "imgsign.glance.plugin":  # needs Glance: check the definition without importing it
            tree = ast.parse((PACKAGE / "glance" / "plugin.py").read_text())
            assert attr in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name
            continue
        if module == "imgsign.osc.v1" and importlib.util.find_spec("osc_lib") is None:  # imgsign[osc] not here
            tree = ast.parse((PACKAGE / "osc" / "v1.py").read_text())
            assert attr in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, name
            continue
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_hook_script_imports_an_existing_module() -> None:
    script = (REPO / "hooks" / "libvirt-qemu").read_text()
    modules = re.findall(r"^\s*from (imgsign[\w.]*) import (\w+)", script, re.M)
    assert modules
    for module, attr in modules:
        assert hasattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("side", ["compute", "glance", "cli", "keymanager", "keys", "_internal", "gateway"])
def test_each_side_is_a_package(side: str) -> None:
    assert (PACKAGE / side / "__init__.py").is_file()


def test_every_exception_has_its_own_documented_exit_code() -> None:
    """One exception class, one exit code, one row in the documented table (doc/source/specs/exit-codes.md, as
    cosign documents its codes)."""
    from imgsign import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ImgsignError)]
    assert set(classes) == set(errors.ALL_ERRORS)
    codes = [c.exit_code for c in errors.ALL_ERRORS]
    assert len(codes) == len(set(codes)), "two exception classes share an exit code"
    assert errors.ImgsignError.exit_code == 1  # the base class only: "a bug"
    assert not {0, 1, 2} & {c.exit_code for c in errors.ALL_ERRORS if c is not errors.ImgsignError}
    table = (REPO / "doc" / "source" / "specs" / "exit-codes.md").read_text()
    for cls in errors.ALL_ERRORS:
        assert re.search(rf"^\| {cls.exit_code} \| `{cls.__name__}`", table, re.M), cls.__name__
