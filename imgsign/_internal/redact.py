"""Secret option values never reach a message: found before anything is reported, scrubbed after.

A configuration that is invalid can be echoed back by whatever reads it: configparser quotes the
line it cannot parse, oslo.config names the "variable" after a ``$`` in a password, keystoneauth
and openstacksdk quote their settings. The hook's stderr becomes libvirt's start error and Nova's
instance fault. So the values of secret options (:func:`is_secret_option`: imgsign's one list) are
collected from the raw files and the environment before they are parsed (:func:`remember_file`,
:func:`remember`), and :func:`scrub` takes them, and every piece of them of :data:`PIECE_LENGTH`
characters or more, out of any text; the CLI's streams and the hook's stderr and log scrub everything they
write (:class:`imgsign._internal.untrusted.SafeStream`). Errors about configuration files also
never quote a line of them (:func:`describe_parse_error`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable

from imgsign._internal.untrusted import safe

#: Shortest secret that is taken out of messages (shorter ones say nothing).
MIN_LENGTH = 4
#: Shortest proper piece of a secret that is taken out of messages.  Not shorter: which words of a message
#: get redacted would tell the reader which short pieces the secret holds, and a reader who can put
#: words into a message (an image name, a hostile Glance's error page) could ask that question
#: piece by piece; guessing 8 characters at once is out of reach.  Errors never quote a secret option
#: or a configuration line in the first place (:func:`describe_parse_error`), so this is the second line.
PIECE_LENGTH = 8
#: What a scrubbed piece reads as.
MARK = "[redacted]"

#: Options whose values are secrets, by name, in every file imgsign reads: ``[glance]`` and
#: ``[barbican]``/``[vault]`` (keystoneauth, castellan), clouds.yaml/secure.yaml (openstacksdk),
#: PKCS#11 URIs and imgsign's own settings.
SECRET_OPTIONS = frozenset({
    "password", "passwd", "token", "passcode", "passphrase", "secret",
    "application_credential_secret", "client_secret", "access_token", "refresh_token", "id_token",
    "root_token_id", "approle_role_id", "approle_secret_id", "pin", "pin_value", "pin-value", "user_pin", "so_pin",
    "service_key",
    "secret_key", "aws_secret_access_key", "transport_url",
})
#: Names ending so are secrets too (``admin_password``, ``service_token`` ...).
_SECRET_SUFFIXES = ("password", "_passwd", "_secret", "_passphrase", "_token", "_pin", "_passcode")
#: The environment variables that hold secrets (openstacksdk, transit, the PKCS#11 PIN).
SECRET_VARIABLES = ("OS_PASSWORD", "OS_TOKEN", "OS_APPLICATION_CREDENTIAL_SECRET", "OS_CLIENT_SECRET",
                    "OS_PASSCODE", "OS_ACCESS_TOKEN", "VAULT_TOKEN", "BAO_TOKEN", "IMGSIGN_PKCS11_PIN")

_ASSIGNMENT = re.compile(r"^[ \t]*[\"']?([A-Za-z0-9_.-]+)[\"']?[ \t]*[=:](.*)$")
_lock = threading.Lock()
_secrets: set[str] = set()


def is_secret_option(name: str) -> bool:
    """Is ``name`` (an option, a clouds.yaml key, a PKCS#11 URI attribute) one whose value is a secret?"""
    key = name.strip().strip("\"'").lower()
    return key in SECRET_OPTIONS or key.endswith(_SECRET_SUFFIXES)


def remember(value: str | bytes | None) -> None:
    """Scrub ``value`` (and its stripped, quoted and escaped spellings) from every message from now on."""
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    forms = {value, value.strip(), value.strip().strip("\"'"), value.strip().rstrip(",").strip().strip("\"'")}
    for line in value.splitlines():
        forms.update((line, line.strip()))
    with _lock:
        for form in forms:
            if len(form) < MIN_LENGTH:
                continue
            _secrets.update(spelling for spelling in _spellings(form) if len(spelling) >= MIN_LENGTH)


def forget() -> None:
    """Forget every remembered secret (tests run many configurations in one process)."""
    with _lock:
        _secrets.clear()


def _spellings(value: str) -> set[str]:
    return {value, safe(value), repr(value)[1:-1], json.dumps(value)[1:-1],
            value.encode("unicode_escape").decode("ascii")}


def secrets_in_text(text: str) -> list[str]:
    """The values of secret options in a configuration text (INI or YAML), as written: each one's
    rest of line, without quotes and trailing comments too, and its continuation lines."""
    found: list[str] = []
    in_secret = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[:1] in ("#", ";"):
            continue
        if in_secret and line[:1] in (" ", "\t"):  # a continuation line of the secret
            found.append(line)
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            in_secret = is_secret_option(match.group(1))
            if in_secret:
                value = match.group(2)
                found.append(value)
                for cut in (" #", " ;", "\t#", "\t;"):
                    if cut in value:
                        found.append(value.split(cut, 1)[0])
        elif stripped.startswith("["):
            in_secret = False
        elif in_secret:  # not an assignment right after a secret: perhaps its broken tail
            found.append(line)
    return found


def remember_text(text: str) -> None:
    """:func:`remember` every secret option value in a configuration text."""
    for value in secrets_in_text(text):
        remember(value)


def remember_file(path: str | os.PathLike[str] | None) -> None:
    """:func:`remember` the secrets in the configuration file at ``path``, before anything parses it
    (a file that cannot be read is left to its parser to report)."""
    if path is None:
        return
    try:
        with open(path, "rb") as handle:
            data = handle.read(4 * 1024 * 1024)
    except (OSError, ValueError):
        return
    remember_text(data.decode("utf-8", "replace"))
    if b"\r" in data:
        remember_text(data.decode("utf-8", "replace").replace("\r", "\n"))


def remember_environment(environ: os._Environ[str] | dict[str, str] | None = None) -> None:
    """:func:`remember` the secrets in the environment variables openstacksdk and transit read."""
    env = os.environ if environ is None else environ
    for name in SECRET_VARIABLES:
        remember(env.get(name))


def _marks(text: str, secrets: Iterable[str]) -> list[bool]:
    """Which characters of ``text`` belong to a run that is a whole secret, or a piece of one at least
    :data:`PIECE_LENGTH` long."""
    marked = [False] * len(text)
    for secret in secrets:
        if len(secret) < MIN_LENGTH:
            continue
        size = min(PIECE_LENGTH, len(secret))
        grams = {secret[i:i + size] for i in range(len(secret) - size + 1)}
        start = 0
        while start <= len(text) - size:
            if text[start:start + size] not in grams:
                start += 1
                continue
            end = start + size  # grow the piece while it still is a piece of the secret
            while end < len(text) and text[start:end + 1] in secret:
                end += 1
            for i in range(start, end):
                marked[i] = True
            start += 1
    return marked


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every occurrence of ``secrets`` (default: every remembered one), and of every piece of
    them at least :data:`PIECE_LENGTH` characters long, replaced by :data:`MARK`."""
    if secrets is None:
        with _lock:
            pool = sorted(_secrets)
    else:
        pool = sorted({s for secret in secrets for s in _spellings(secret)})
    if not pool or not text:
        return text
    # One pass: what is left between marks holds no piece of MIN_LENGTH characters (a piece across a
    # mark is imgsign's text and fewer than MIN_LENGTH characters of the original on either side).
    marked = _marks(text, pool)
    if not any(marked):
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not marked[i]:
            out.append(char)
        elif i == 0 or not marked[i - 1]:
            out.append(MARK)
    return "".join(out)


def describe_parse_error(exc: BaseException) -> str:
    """What is wrong with a configuration file, by line number and option name, never quoting a line
    (configparser and oslo.config errors quote the line they could not read, which may be a secret)."""
    import configparser

    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: no [section] header before it"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(number) for number, _ in exc.errors[:10])
        return f"line {lines}: not 'name = value', a [section] header or a comment"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: section [{exc.section}] appears twice"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno}: option {exc.option} appears twice in [{exc.section}]"
    if isinstance(exc, UnicodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    found = re.search(r":(\d+), ", str(exc))  # oslo.config: "Failed to parse PATH: at PATH:LINE, ..."
    return f"line {found.group(1)} cannot be parsed" if found else f"it cannot be parsed ({type(exc).__name__})"


#: What a request body in a debug log reads as (:class:`LogFilter`).
OMITTED_BODY = "<request body omitted by imgsign: it may hold key material>"
#: Text that marks PEM key material, as it is and base64-encoded (Barbican's payloads).
_KEY_MARKS = ("-----BEGIN", "LS0tLS1CRUdJT")
#: keystoneauth's debug line for a request ends with the body: ``REQ: curl ... -d '<body>'``.
_REQUEST_BODY = re.compile(r"(?s) -d '.*\Z")


class LogFilter(logging.Filter):
    """A :mod:`logging` filter for ``--debug`` output: every record's text leaves without secrets.

    Request bodies that the HTTP clients log (keystoneauth's ``REQ: curl ... -d '...'``) are dropped whole:
    a key or certificate stored in Barbican travels in one, and no scrubber knows a key it was never
    told about; a line showing PEM material (a ``text/plain`` response body) is cut after its first
    colon. Then :func:`scrub` takes out every remembered secret. The record keeps its level and
    logger; its message becomes the cleaned text (arguments already merged in).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a logger's own bad format string: say so rather than lose the record
            text = f"<unformattable log record from {record.name}>"
        text = _REQUEST_BODY.sub(" -d '" + OMITTED_BODY + "'", text)
        if any(mark in text for mark in _KEY_MARKS):  # a logged response body holding a key or certificate
            text = text.split(":", 1)[0] + ": <omitted by imgsign: it holds key material>"
        record.msg = scrub(text)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True
