"""A server's own trusted image certificates (Nova's ``trusted_image_certificates``): the pure part.

Nova keeps, with each server, the certificate ids its owner asked for
(``openstack server create --trusted-image-cert ID``, API microversion 2.63; changed by rebuild).
With ``[nova]`` in ``boot.conf`` the hook asks Nova for them (:mod:`imgsign.compute.nova_client`,
the network edge) and the boot check (:func:`imgsign.compute.boot.check_signer`) then requires the
signer, or a trusted certificate its chain was validated against, to be bound to one of the
server's ids as well as allowed by the host's ``[boot] trusted_certificate_ids``: the server's list
narrows, never widens.  Ids become certificates through the same sealed id -> fingerprint bindings
as the host's (:class:`~imgsign.compute.trust_record.AnchorStore`); an id this host never fetched
from the key manager names no certificate.

This module has no I/O: the ``[nova]`` settings read from the parsed ``boot.conf``, and Nova's
answer (status and body, as received) turned into the server's ids or one clear error:

* :class:`~imgsign.errors.NovaUnavailable` (85) when the answer is not a server document (an HTTP
  error, a redirect, not JSON, too large): ``[nova] trusted_certs_fallback`` decides
  (``refuse``, the default, or ``host``: the host's trusted certificates alone);
* :class:`~imgsign.errors.UnknownServer` (87) for 404: Nova does not know the instance;
* :class:`~imgsign.errors.NovaAnswerInvalid` (86) for a server document that cannot be the
  server's list (another server's id, no ``trusted_image_certificates`` field: an answer below
  microversion 2.63, a value that is not a list of ids, more ids than Nova allows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

from imgsign.errors import InputError, NovaAnswerInvalid, NovaUnavailable, UnknownServer

#: ``typing.TYPE_CHECKING`` without importing typing (the hook's every call would pay for it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SECTION = "nova"
MICROVERSION = "2.63"
#: Nova's own limit on a server's list (its API schema: ``maxItems: 50``).
MAX_IDS = 50
#: Longest id accepted (key-manager ids are UUIDs or short paths).
MAX_ID_LENGTH = 1024
#: Largest answer read from Nova (a server document is a few KiB).
MAX_BODY = 1024 * 1024
#: Largest header block of Nova's answer.
MAX_HEADER = 64 * 1024
#: Seconds for the whole look-up (Keystone and Nova) of one hook call.
DEFAULT_TIMEOUT = 5.0
FALLBACKS = ("refuse", "host")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


@dataclasses.dataclass(frozen=True)
class NovaSettings:
    """``[nova]`` of ``boot.conf``, as the hook needs it on every call (the keystoneauth options are
    read with oslo.config only when a token must be fetched)."""

    path: str
    fallback: str = "refuse"
    timeout: float = DEFAULT_TIMEOUT
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False
    #: SHA-256 of the section's text: a cached token and endpoint are used only for the same settings.
    digest: str = ""


def load_settings(path: str, section: Mapping[str, str] | None) -> NovaSettings | None:
    """The settings, None when the look-up is off (no ``[nova]`` section, or no ``auth_type`` in it)."""
    if section is None or not section.get("auth_type", "").strip():
        return None
    fallback = section.get("trusted_certs_fallback", "refuse").strip()
    if fallback not in FALLBACKS:
        raise InputError(f"{path}: [nova] trusted_certs_fallback must be refuse or host, not {fallback!r}")
    text = section.get("trusted_certs_timeout", f"{DEFAULT_TIMEOUT:g}").strip()
    try:
        timeout = float(text)
        if not 0 < timeout <= 300:
            raise ValueError
    except ValueError:
        raise InputError(f"{path}: [nova] trusted_certs_timeout must be a number of seconds above 0 and at most "
                         f"300, not {text!r}") from None
    insecure_text = section.get("insecure", "false").strip().lower()
    if insecure_text not in _BOOLEANS:
        raise InputError(f"{path}: [nova] insecure must be true or false, not {insecure_text!r}")
    canonical = json.dumps(sorted((key, value) for key, value in section.items()), ensure_ascii=True)
    return NovaSettings(path=path, fallback=fallback, timeout=timeout,
                        cafile=section.get("cafile", "").strip() or None,
                        certfile=section.get("certfile", "").strip() or None,
                        keyfile=section.get("keyfile", "").strip() or None,
                        insecure=_BOOLEANS[insecure_text],
                        digest=hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest())


def server_id_of(uuid: str) -> str:
    """The Nova server id of a domain (libvirt's ``<uuid>``, which Nova sets to the server's id)."""
    if not _UUID.fullmatch(uuid):
        raise UnknownServer(f"the domain's uuid {uuid[:80]!r} is not a UUID: it is no Nova server")
    return uuid.lower()


def parse_answer(status: int, body: bytes, server_id: str) -> tuple[str, ...]:
    """The server's trusted certificate ids from Nova's answer to ``GET /servers/{server_id}`` at
    microversion 2.63; ``()`` when the server has none (see the module docstring for the errors)."""
    if status == 404:
        raise UnknownServer(f"Nova has no server {server_id} (or the [nova] credentials cannot see it: they "
                            "need Nova's admin role to read other projects' servers)")
    if status in (401, 403):
        raise NovaUnavailable(f"Nova refused the [nova] credentials (HTTP {status}) for server {server_id}")
    if 300 <= status < 400:
        raise NovaUnavailable(f"Nova answered HTTP {status} for server {server_id} (redirects are not followed)")
    if status != 200:
        raise NovaUnavailable(f"Nova answered HTTP {status} for server {server_id}")
    if len(body) > MAX_BODY:
        raise NovaUnavailable(f"Nova's answer for server {server_id} is larger than {MAX_BODY} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise NovaUnavailable(f"Nova's answer for server {server_id} is not JSON") from None
    server = document.get("server") if isinstance(document, dict) else None
    if not isinstance(server, dict):
        raise NovaUnavailable(f"Nova's answer for server {server_id} is not a server document")
    answered = server.get("id")
    if not isinstance(answered, str) or answered.lower() != server_id:
        raise NovaAnswerInvalid(f"Nova answered the request for server {server_id} with "
                                f"{_brief(answered)} as the server's id")
    if "trusted_image_certificates" not in server:
        raise NovaAnswerInvalid(f"Nova's answer for server {server_id} has no trusted_image_certificates: it did not "
                                f"answer at microversion {MICROVERSION} (Nova too old, or not Nova)")
    return _ids(server["trusted_image_certificates"], server_id)


def parse_response(data: bytes, eof: bool, *, max_body: int = MAX_BODY) -> tuple[int, bytes] | None:
    """An HTTP/1.x answer to a ``GET`` (as the hook sends it, HTTP/1.0 with ``Connection: close``) read so
    far: ``(status, body)`` once complete, None while more is needed (``eof``: nothing more will come).

    :class:`~imgsign.errors.NovaUnavailable` for anything that is not a well-formed answer within the caps
    (headers past :data:`MAX_HEADER`, a body past ``max_body``, a truncated body, a compressed or
    otherwise encoded one).  Body framing: ``Transfer-Encoding: chunked``, else ``Content-Length``, else
    up to the end of the connection."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEADER + 4)
    if end < 0:
        if len(data) >= MAX_HEADER + 4:
            raise NovaUnavailable(f"Nova's answer has a header block larger than {MAX_HEADER} bytes")
        if eof:
            raise NovaUnavailable("Nova's answer ended before its headers did" if data else "Nova sent no answer")
        return None
    lines = data[:end].split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise NovaUnavailable("Nova's answer is not an HTTP/1.x response")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise NovaUnavailable("Nova's answer has a malformed header line")
        name, value = name.lower(), value.strip(b" \t")
        if name in headers and name in (b"content-length", b"transfer-encoding") and headers[name] != value:
            raise NovaUnavailable(f"Nova's answer has two different {name.decode()} headers")
        headers[name] = value
    if headers.get(b"content-encoding", b"identity").lower() != b"identity":
        raise NovaUnavailable("Nova's answer is compressed (the hook asks for Accept-Encoding: identity)")
    body = data[end + 4:]
    encoding = headers.get(b"transfer-encoding")
    if encoding is not None:
        if encoding.lower() != b"chunked":
            raise NovaUnavailable("Nova's answer has a transfer encoding other than chunked")
        decoded = _dechunk(body, eof, max_body)
        return None if decoded is None else (int(status.group(1)), decoded)
    length_text = headers.get(b"content-length")
    if length_text is not None:
        if not length_text.isdigit() or len(length_text) > 12:
            raise NovaUnavailable("Nova's answer has an invalid Content-Length")
        length = int(length_text)
        if length > max_body:
            raise NovaUnavailable(f"Nova's answer announces {length} bytes, more than the {max_body} the hook reads")
        if len(body) >= length:
            return int(status.group(1)), body[:length]
        if eof:
            raise NovaUnavailable("Nova's answer ended before its Content-Length")
        return None
    if len(body) > max_body:
        raise NovaUnavailable(f"Nova's answer is larger than {max_body} bytes")
    return (int(status.group(1)), body) if eof else None


def _dechunk(body: bytes, eof: bool, max_body: int) -> bytes | None:
    """A chunked body (trailers ignored), None while incomplete."""
    parts: list[bytes] = []
    total = position = 0
    while True:
        line_end = body.find(b"\r\n", position, position + 1024)
        if line_end < 0:
            if len(body) - position >= 1024:
                raise NovaUnavailable("Nova's answer has a malformed chunk size line")
            break
        size_text = body[position:line_end].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 8 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise NovaUnavailable("Nova's answer has a malformed chunk size line")
        size = int(size_text, 16)
        if size == 0:
            return b"".join(parts)
        total += size
        if total > max_body:
            raise NovaUnavailable(f"Nova's answer is larger than {max_body} bytes")
        start = line_end + 2
        if len(body) < start + size + 2:
            break
        if body[start + size:start + size + 2] != b"\r\n":
            raise NovaUnavailable("Nova's answer has a chunk that does not end where its size says")
        parts.append(body[start:start + size])
        position = start + size + 2
    if eof:
        raise NovaUnavailable("Nova's answer ended in the middle of its chunked body")
    return None


def _ids(value: Any, server_id: str) -> tuple[str, ...]:
    where = f"the trusted_image_certificates of server {server_id} in Nova's answer"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise NovaAnswerInvalid(f"{where} is a {type(value).__name__}, not a list of certificate ids")
    if not value:
        raise NovaAnswerInvalid(f"{where} is an empty list (Nova answers null for a server without one)")
    if len(value) > MAX_IDS:
        raise NovaAnswerInvalid(f"{where} has {len(value)} ids; Nova allows at most {MAX_IDS}")
    for item in value:
        if not isinstance(item, str):
            raise NovaAnswerInvalid(f"{where} holds a {type(item).__name__}, not a certificate id")
        if not 0 < len(item) <= MAX_ID_LENGTH or not item.isprintable():
            raise NovaAnswerInvalid(f"{where} holds an id that is empty, longer than {MAX_ID_LENGTH} characters "
                                    f"or not printable text: {_brief(item)}")
    return tuple(dict.fromkeys(value))


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
