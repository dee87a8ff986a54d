"""``-f/--format``: one output option for every command that prints a result, as the ``openstack`` CLI has it.

``json`` prints the same documents as before this option existed (their keys are specified in the docs:
JSON output schemas), ``yaml`` the same document as YAML; ``table`` and ``value`` are what OSC's
formatters (cliff) print: a Field/Value table, or one value per line, for one object; a table with a
column per key, or one line of space-separated values per row, for a list. Nested values are shown as
compact JSON in a cell. ``yaml`` and ``table`` use PyYAML and prettytable, the libraries cliff's own
formatters use, from the extra ``imgsign[formats]``. Without ``-f`` a command prints what it always printed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from imgsign import errors

#: The formats every result has (a command may add its own, e.g. ``sign``'s ``openstack`` and ``env``).
FORMATS = ("json", "yaml", "table", "value")
EXTRA = "formats"


def format_option(default: str | None = None, extra: Sequence[str] = (),
                  legacy_json: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-f/--format`` (``fmt``: one of :data:`FORMATS` and ``extra``, or ``default``; None: the command's own
    text output) and, when ``legacy_json``, the old ``--json`` flag as a hidden alias of ``-f json``."""
    choices = [*FORMATS, *extra]
    shown = f" (default: {default})" if default else " (default: the command's text output)"

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if legacy_json and kwargs.pop("legacy_json", False):
                if kwargs.get("fmt") not in (None, "json"):
                    raise click.UsageError(f"--json and --format {kwargs['fmt']} exclude each other")
                kwargs["fmt"] = "json"
            check_available(kwargs.get("fmt"))  # before the command does anything (an upload, a store)
            return func(*args, **kwargs)

        command: Callable[..., Any] = wrapper
        if legacy_json:
            command = click.option("--json", "legacy_json", is_flag=True, hidden=True,
                                   help="Same as -f json (kept for scripts).")(command)
        return click.option("-f", "--format", "fmt", type=click.Choice(choices), default=default,
                            help=f"Output format: {', '.join(choices)}{shown}.")(command)

    return decorate


def render(data: Any, fmt: str, *, rows: Sequence[Mapping[str, Any]] | None = None,
           columns: Sequence[str] | None = None) -> str:
    """``data`` in ``fmt`` (one of :data:`FORMATS`), ending with a newline.

    ``json`` and ``yaml`` print ``data`` whole. ``table`` and ``value`` print ``rows`` when given (the list a
    document is about, e.g. an audit's images, with ``columns`` in that order), else ``data``: a mapping
    as one object, a list of mappings as rows.
    """
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        yaml = _need("yaml", "PyYAML")
        text: str = yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)
        return text
    shown = rows if rows is not None else data
    if isinstance(shown, Mapping):
        return _one(shown, fmt)
    if isinstance(shown, Sequence) and not isinstance(shown, str | bytes):
        return _many(list(shown), fmt, columns)
    return _cell(shown) + "\n"


def check_available(fmt: str | None) -> None:
    """:class:`~imgsign.errors.MissingExtra` now if ``fmt`` needs a library that is not installed."""
    if fmt == "yaml":
        _need("yaml", "PyYAML")
    elif fmt == "table":
        _need("prettytable", "prettytable")


def emit(data: Any, fmt: str, **kwargs: Any) -> None:
    """Print :func:`render`'s text on stdout."""
    click.echo(render(data, fmt, **kwargs), nl=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def _one(mapping: Mapping[str, Any], fmt: str) -> str:
    if fmt == "value":
        return "".join(_cell(v) + "\n" for v in mapping.values())
    table = _table(["Field", "Value"])
    for key, value in mapping.items():
        table.add_row([key, _cell(value)])
    return str(table.get_string()) + "\n"


def _many(items: list[Any], fmt: str, columns: Sequence[str] | None) -> str:
    rows = [item if isinstance(item, Mapping) else {"value": item} for item in items]
    names = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "value":
        return "".join(" ".join(_cell(row.get(n)) for n in names) + "\n" for row in rows)
    table = _table(names)
    for row in rows:
        table.add_row([_cell(row.get(n)) for n in names])
    text = str(table.get_string())
    return text + "\n" if text else ""  # no rows: nothing, as cliff prints


def _table(names: Sequence[str]) -> Any:
    prettytable = _need("prettytable", "prettytable")
    table = prettytable.PrettyTable(list(names), print_empty=False)
    table.align = "l"
    return table


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise errors.MissingExtra(f"this output format needs {package}: pip install 'imgsign[{EXTRA}]'") from None
