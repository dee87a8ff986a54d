"""Sphinx configuration of imgsign's documentation (doc/source, OpenStack layout).

Build: ``sphinx-build -W --keep-going -b html doc/source doc/build/html`` (the ``docs`` extra:
``pip install -e '.[docs]'``).  Pages are Markdown (MyST); each section's ``index.md`` picks up
every page in its directory by glob, so a new page needs no toctree edit.
"""

from __future__ import annotations

import importlib.metadata

project = "imgsign"
copyright = "imgsign contributors"  # noqa: A001 - Sphinx's name
try:
    release = importlib.metadata.version("imgsign")
except importlib.metadata.PackageNotFoundError:  # building from a checkout without installing it
    release = "unreleased"
version = release

extensions = [
    "myst_parser",
    "sphinx_click",
    "oslo_config.sphinxext",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns: list[str] = []

# Anchors for every heading down to ####, so pages link to a section: [text](../specs/x.md#a-heading).
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

# Warnings are errors in CI (-W): a broken link to another page or heading fails the build.
nitpicky = False
html_theme = "alabaster"
html_title = f"imgsign {release}"
html_static_path: list[str] = []


def setup(app: object) -> None:
    """oslo.config's domain raises KeyError for a target it does not know when MyST asks every
    domain about an unresolved link; answer "not mine" instead, so the build reports the broken link
    as a warning (an error under -W) naming the page, rather than crashing."""
    from oslo_config.sphinxext import ConfigDomain

    resolve = ConfigDomain.resolve_xref

    def resolve_xref(self, env, fromdocname, builder, typ, target, node, contnode):  # type: ignore[no-untyped-def]
        try:
            return resolve(self, env, fromdocname, builder, typ, target, node, contnode)
        except KeyError:
            return None

    def resolve_any_xref(self, env, fromdocname, builder, target, node, contnode):  # type: ignore[no-untyped-def]
        return []  # its options are linked with :oslo.config:option:, never by a bare target

    ConfigDomain.resolve_xref = resolve_xref  # type: ignore[method-assign]
    ConfigDomain.resolve_any_xref = resolve_any_xref  # type: ignore[method-assign]
