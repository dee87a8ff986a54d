"""What the gateway's proxy and its interceptions share: chunk size, hop-by-hop headers, error answers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

#: Bytes read and written at a time; also bounds what is buffered per direction and request.
CHUNK = 256 * 1024

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
})
#: Request headers not forwarded besides the hop-by-hop ones.
REQUEST_DROPPED = frozenset({"host", "expect"})
#: Response headers aiohttp's server computes itself for what it sends.
RESPONSE_DROPPED = frozenset({"content-length"})
#: Headers aiohttp's client would add to a request that lacks them.
NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def forwarded_headers(headers: Iterable[tuple[str, str]],
                      dropped: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``headers`` without the hop-by-hop ones (those ``Connection`` names included) and ``dropped``."""
    pairs = list(headers)
    named = {token.strip().lower() for name, value in pairs if name.lower() == "connection"
             for token in value.split(",") if token.strip()}
    skip = HOP_BY_HOP | named | dropped
    return [(name, value) for name, value in pairs if name.lower() not in skip]


def error_response(status: int, message: str) -> web.Response:
    from aiohttp import web

    body = json.dumps({"error": {"code": status, "message": message, "source": "imgsign gateway"}})
    return web.Response(status=status, text=body, content_type="application/json")
