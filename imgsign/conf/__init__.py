"""imgsign's configuration files, all read by oslo.config: the options, their types, and the checks at start.

One module per file, each with a ``list_opts()`` registered under the ``oslo.config.opts`` entry point
(so ``oslo-config-generator`` writes a sample and ``oslo_config.sphinxext`` documents it):

* ``imgsign.conf`` (namespace ``imgsign``, :mod:`imgsign.keymanager.config`): the key manager and trust;
* ``boot.conf`` (namespace ``imgsign.boot``, :mod:`imgsign.compute.boot_config`): the boot hook and
  ``imgsign boot``;
* Glance's configuration (namespace ``imgsign.glance_import``, :mod:`imgsign.conf.glance_import`).

oslo.config checks a value only when something reads it, and its message quotes the value (which
may be a secret).  :func:`check_values` reads every registered option once, at start, and names the
option, the file and what the option takes instead, never the value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from oslo_config import cfg, types

from imgsign.errors import InputError


class Seconds(types.Float):
    """A finite number of seconds, at least ``min`` (0), or more than 0 when ``positive``
    (oslo.config's ``Float`` accepts ``nan`` and ``inf``, which no timeout or age may be)."""

    def __init__(self, *, positive: bool = False, max: float | None = None) -> None:
        super().__init__(min=None if positive else 0, max=max,
                         type_name="number of seconds (more than 0)" if positive else "number of seconds")
        self.positive = positive

    def __call__(self, value: Any) -> float:
        seconds: float | None = super().__call__(value)
        if seconds is None:  # oslo.config's Float takes an empty value for None
            raise ValueError("empty")
        if not math.isfinite(seconds):
            raise ValueError("not a finite number of seconds")
        if self.positive and seconds <= 0:
            raise ValueError("must be more than 0")
        return seconds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Seconds) and (self.positive, self.max) == (other.positive, other.max)

    __hash__ = None  # type: ignore[assignment]


class Size(types.ConfigType):
    """A positive number of bytes, as ``parse`` reads it (``20G`` = 20 GiB): it raises
    :class:`~imgsign.errors.InputError` for anything else."""

    def __init__(self, parse: Callable[[str, str], int]) -> None:
        super().__init__(type_name="size in bytes (K, M, G, T: powers of 1024)")
        self.parse = parse

    def __call__(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        try:
            return self.parse(str(value), "the size")
        except InputError:
            raise ValueError("not a positive number of bytes") from None

    def _formatter(self, value: Any) -> str:
        return str(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Size)

    __hash__ = None  # type: ignore[assignment]


def raw_sections(path: str) -> dict[str, dict[str, list[str]]]:
    """The sections of the file at ``path`` as oslo.config's parser reads them (names as written, every value
    of a name); :class:`InputError` (never quoting a line) when it cannot."""
    from imgsign._internal import redact

    sections: dict[str, dict[str, list[str]]] = {}
    try:
        cfg.ConfigParser(path, sections).parse()
    except FileNotFoundError:
        raise InputError(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeError, cfg.ParseError) as exc:
        raise InputError(f"cannot read configuration {path}: {redact.describe_parse_error(exc)}") from None
    return sections


def check_values(conf: cfg.ConfigOpts, path: str | None, groups: Iterable[str] | None = None,
                 raw: Mapping[str, Mapping[str, list[str]]] | None = None) -> None:
    """Read every option of ``groups`` (default: every registered group) once, so that an invalid value
    (``max_chain_depth = lots``) is an :class:`InputError` at start naming the option and the file, not
    an error (or nothing) later, when some command happens to read it.  ``raw`` (:func:`raw_sections`)
    lets the message say when the value holds a ``#`` (an inline comment, which oslo.config keeps)."""
    names = list(groups) if groups is not None else [name for name in conf if _is_group(conf, name)]
    for group in names:
        for name in list(conf[group]):
            try:
                conf[group][name]
            except (cfg.ConfigFileValueError, cfg.ConfigSourceValueError, ValueError) as exc:
                raise InputError(_invalid(conf, group, name, path, raw)) from exc
            except cfg.Error as exc:  # a "$" that names no option, and such
                where = f" in {path}" if path else ""
                raise InputError(f"invalid value for [{group}] {name}{where}: {describe_error(exc)}") from None


def _is_group(conf: cfg.ConfigOpts, name: str) -> bool:
    try:
        return isinstance(conf[name], cfg.ConfigOpts.GroupAttr)
    except (cfg.Error, ValueError):  # an option of [DEFAULT], not a group
        return False


def _invalid(conf: cfg.ConfigOpts, group: str, name: str, path: str | None,
             raw: Mapping[str, Mapping[str, list[str]]] | None) -> str:
    """``invalid value for [group] name in FILE: it takes ...``, without the value."""
    try:
        kind = conf._get_opt_info(name, group)["opt"].type  # oslo.config has no public way from a name to its Opt
    except (AttributeError, KeyError, cfg.Error):
        kind = None
    if kind is None:
        takes = "a value of the option's type"
    elif isinstance(kind, types.List) and getattr(kind, "item_type", None) is not None:
        takes = f"a comma-separated list of {_describe(kind.item_type)}"
    else:
        takes = _describe(kind)
    where = f" in {path}" if path else ""
    message = f"invalid value for [{group}] {name}{where}: expected {takes}"
    written = [value for section, values in (raw or {}).items() if section.lower() == group.lower()
               for key, value in values.items() if key == name]
    if any("#" in text for values in written for text in values):
        message += ("; the value holds a '#': oslo.config reads a comment only on a line of its own, "
                    "never after a value")
    return message


def _describe(kind: Any) -> str:
    takes = getattr(kind, "type_name", None) or type(kind).__name__.lower()
    choices = getattr(kind, "choices", None)
    if choices:
        return f"one of {', '.join(str(choice) for choice in choices)}"
    bounds = [f"{word} {value:g}" if isinstance(value, float) else f"{word} {value}"
              for word, value in (("at least", getattr(kind, "min", None)), ("at most", getattr(kind, "max", None)))
              if value is not None]
    regex = getattr(kind, "regex", None)
    if regex is not None and getattr(regex, "pattern", None) == ABSOLUTE_PATH:
        takes = "an absolute path"
    elif regex is not None and getattr(regex, "pattern", None) == ABSOLUTE_PATH_OR_EMPTY:
        takes = "an absolute path, or nothing"
    elif regex is not None and getattr(regex, "pattern", None) == KEY_MANAGER_ID:
        takes = "key-manager ids (1-255 printable characters, no spaces)"
    return takes + (f" ({', '.join(bounds)})" if bounds else "")


def describe_error(exc: BaseException) -> str:
    """An oslo.config or keystoneauth error about a configuration, never quoting a line of it nor what
    follows a ``$`` (oslo.config takes ``pa$sword`` for a reference to an option "sword")."""
    from imgsign._internal import redact

    if isinstance(exc, (cfg.ConfigFileParseError, cfg.ParseError)):
        return redact.describe_parse_error(exc)
    if isinstance(exc, (cfg.NoSuchOptError, cfg.NoSuchGroupError, cfg.TemplateSubstitutionError)):
        return ("a value holds a '$' that does not name another option (oslo.config substitutes $name and "
                "${name}; write $$ for a '$')")
    return f"{type(exc).__name__}: {exc}"


#: ``regex`` of the options that take an absolute path (with or without an empty value) or key-manager ids.
ABSOLUTE_PATH = r"^/"
ABSOLUTE_PATH_OR_EMPTY = r"^(/.*)?$"
KEY_MANAGER_ID = r"^[!-~]{1,255}$"
