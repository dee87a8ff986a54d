"""Text imgsign did not write, made safe to print: the one place it is cleaned.

Glance's error pages and image records, Keystone's and the key managers' answers, qemu-img's
output, certificate names and properties documents are anyone's text. Printed raw they can drive
the operator's terminal (escape sequences: window title, OSC 52 clipboard, cursor moves),
overwrite or fake output lines (CR, LF, line separators) and reorder what is read (bidi
overrides and isolates, zero-width characters). :func:`safe` shows every such character as a
visible escape (``\\x1b``, ``\\u202e``, ``\\n``) instead.

It is applied where foreign text enters a message, and again where every message, output line and
log line leaves the process (the CLI's streams, the hook's stderr and log): it is idempotent, so
text cleaned twice reads the same, and only imgsign's own newlines survive the second pass.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, TextIO

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def is_safe_char(char: str) -> bool:
    """Printable and without effect on a terminal or on how a line reads: not a control (C0, DEL,
    C1), format (bidi, zero-width), separator other than the space, surrogate, private-use or
    unassigned character."""
    return char.isprintable()


def safe(text: object, *, newlines: bool = False, limit: int | None = None) -> str:
    """``text`` with every character that is not :func:`is_safe_char` shown as an escape.

    ``newlines`` keeps ``\\n`` as is (for output whose line structure imgsign made); ``limit`` cuts
    the text to that many characters first (marked with ``...``). Never raises.
    """
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # noqa: BLE001 - an object that cannot say what it is says nothing
            text = f"<{type(text).__name__}>"
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (newlines and c == "\n") else _escape(c) for c in text)


def one_line(text: object, limit: int | None = 300) -> str:
    """Foreign text for a one-line message: runs of whitespace (line breaks included) made one space,
    then :func:`safe` (at most ``limit`` characters)."""
    return safe(" ".join(str(text).split()), limit=limit)


class SafeStream:
    """A text stream that passes everything written through ``scrub`` (for stderr:
    :func:`imgsign._internal.redact.scrub`; none for stdout, whose data must stay exact) and
    :func:`safe` (newlines kept): the last line of defence for a process's stdout or stderr.

    ``unfiltered`` is the stream underneath, for the few writers that need terminal control
    (the progress bar) and write only imgsign's own text. It has no ``buffer``: binary writes go
    through it as text or not at all.
    """

    def __init__(self, stream: IO[str], *, scrub: Callable[[str], str] | None = None) -> None:
        self.unfiltered = stream
        self._scrub = scrub
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.errors = getattr(stream, "errors", None) or "strict"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.unfiltered.write(safe(self._scrub(text) if self._scrub else text, newlines=True))
        return len(text)

    def writelines(self, lines: object) -> None:
        for line in lines:  # type: ignore[attr-defined]
            self.write(line)

    def flush(self) -> None:
        self.unfiltered.flush()

    def isatty(self) -> bool:
        return bool(self.unfiltered.isatty())

    def fileno(self) -> int:
        return self.unfiltered.fileno()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(getattr(self.unfiltered, "closed", False))

    def close(self) -> None:
        self.flush()


def unfiltered(stream: TextIO) -> TextIO:
    """The stream under a :class:`SafeStream` (``stream`` itself if it is not one)."""
    inner: TextIO = getattr(stream, "unfiltered", stream)
    return inner
