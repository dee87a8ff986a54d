"""The gateway's HTTP side: an aiohttp reverse proxy in front of the real Glance (the ``gateway`` extra).

Every request is forwarded as it came (method, path and query byte for byte, headers, tokens
included) and streamed both ways with back-pressure, so memory stays constant with image size and
uploads run concurrently.  Dropped: the hop-by-hop headers (RFC 9110 7.6.1: ``Connection`` and what
it names, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``),
``Host`` (the client sets Glance's) and ``Expect`` (the gateway answers ``100-continue`` itself).
Nothing is added: no default ``User-Agent``, ``Accept`` or ``Accept-Encoding``, and bodies pass
compressed or not as Glance sent them.  Glance's TLS certificate is verified (``ca_file`` or the
system's CAs).  Glance unreachable: 502; no answer within ``read_timeout``: 504; both with a one-line
JSON body naming the cause (never a token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

from imgsign.errors import MissingExtra
from imgsign.gateway.config import GatewayConfig

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

LOG = logging.getLogger("imgsign.gateway")
#: Bytes read and written at a time; also bounds what is buffered per direction and request.
CHUNK = 256 * 1024

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
})
#: Request headers not forwarded besides the hop-by-hop ones.
_REQUEST_DROPPED = frozenset({"host", "expect"})
#: Response headers aiohttp's server computes itself for what it sends.
_RESPONSE_DROPPED = frozenset({"content-length"})
#: Headers aiohttp's client would add to a request that lacks them.
_NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def _aiohttp() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise MissingExtra("imgsign gateway needs aiohttp: pip install 'imgsign[gateway]'") from None


def forwarded_headers(headers: Iterable[tuple[str, str]],
                      dropped: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``headers`` without the hop-by-hop ones (those ``Connection`` names included) and ``dropped``."""
    pairs = list(headers)
    named = {token.strip().lower() for name, value in pairs if name.lower() == "connection"
             for token in value.split(",") if token.strip()}
    skip = HOP_BY_HOP | named | dropped
    return [(name, value) for name, value in pairs if name.lower() not in skip]


def ssl_context(config: GatewayConfig) -> ssl.SSLContext:
    """Verify Glance's certificate and host name (against ``ca_file`` if set, else the system's CAs)."""
    context = ssl.create_default_context(cafile=config.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _error(status: int, message: str) -> web.Response:
    from aiohttp import web

    body = json.dumps({"error": {"code": status, "message": message, "source": "imgsign gateway"}})
    return web.Response(status=status, text=body, content_type="application/json")


class Gateway:
    """The proxy: one client session to Glance, shared by every request."""

    def __init__(self, config: GatewayConfig) -> None:
        _aiohttp()
        self.config = config
        self._session: ClientSession | None = None

    async def start(self, _app: object = None) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=ssl_context(self.config), limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout,
                                        sock_read=self.config.read_timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=CHUNK,
                                              skip_auto_headers=_NOT_ADDED)

    async def stop(self, _app: object = None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def application(self) -> web.Application:
        """The aiohttp application: every method and path goes to :meth:`forward`."""
        from aiohttp import web

        app = web.Application(client_max_size=1024 * 1024)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Send ``request`` to Glance as it came and stream Glance's answer back."""
        import aiohttp
        from aiohttp import web
        from yarl import URL

        if self._session is None:
            raise RuntimeError("the gateway's client session is not started")
        target = URL(self.config.glance_url + request.raw_path, encoded=True)
        headers = forwarded_headers(request.headers.items(), _REQUEST_DROPPED)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(request.method, target, headers=headers, data=body,
                                             allow_redirects=False, compress=None) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in forwarded_headers(upstream.headers.items(), _RESPONSE_DROPPED):
                    response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                if request.method != "HEAD":
                    async for chunk in upstream.content.iter_chunked(CHUNK):
                        await response.write(chunk)
                await response.write_eof()
                return response
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            if response is not None and response.prepared:
                # Half an answer is on its way: cut the connection, so the client sees a truncated body.
                LOG.error("%s %s: Glance's answer broke off: %s", request.method, request.path, type(exc).__name__)
                raise
            return _upstream_error(request, exc)


def _upstream_error(request: web.Request, exc: BaseException) -> web.Response:
    import aiohttp

    if isinstance(exc, asyncio.TimeoutError):
        LOG.warning("%s %s: Glance did not answer in time", request.method, request.path)
        return _error(504, "Glance did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        LOG.error("%s %s: Glance's TLS certificate is not trusted: %s", request.method, request.path,
                  exc.certificate_error)
        return _error(502, "Glance's TLS certificate is not trusted (see [gateway] ca_file)")
    LOG.error("%s %s: cannot reach Glance: %s", request.method, request.path, type(exc).__name__)
    return _error(502, f"cannot reach Glance ({type(exc).__name__})")


def serve(config: GatewayConfig) -> None:
    """Run the gateway until interrupted (SIGINT/SIGTERM)."""
    gateway = Gateway(config)  # first: without the extra, MissingExtra names it

    from aiohttp import web

    web.run_app(gateway.application(), host=config.listen_host, port=config.listen_port, print=None,
                access_log=None, handle_signals=True)
