"""The gateway's HTTP side: an aiohttp reverse proxy in front of the real Glance (the ``gateway`` extra).

Every request is forwarded as it came (method, path and query byte for byte, headers, tokens
included) and streamed both ways with back-pressure, so memory stays constant with image size and
uploads run concurrently.  Dropped: the hop-by-hop headers (RFC 9110 7.6.1: ``Connection`` and what
it names, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``),
``Host`` (the client sets Glance's) and ``Expect`` (the gateway answers ``100-continue`` itself).
Nothing is added: no default ``User-Agent``, ``Accept`` or ``Accept-Encoding``, and bodies pass
compressed or not as Glance sent them.  Glance's TLS certificate is verified (``ca_file`` or the
system's CAs).  Glance unreachable: 502; no answer within ``read_timeout``: 504; both with a one-line
JSON body naming the cause (never a token).  One answer is changed: Glance's version document
(``GET /``, ``GET /versions``), whose links are pointed at the gateway (:mod:`imgsign.gateway.discovery`),
else keystoneauth's discovery would send nova-compute straight to Glance.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from imgsign.errors import MissingExtra
from imgsign.gateway._http import (
    CHUNK,
    NOT_ADDED,
    REQUEST_DROPPED,
    RESPONSE_DROPPED,
    error_response,
    forwarded_headers,
)
from imgsign.gateway.config import GatewayConfig

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

    from imgsign.gateway.domains import DomainLookup
    from imgsign.gateway.host_key import HostSigner, ProjectKeyManager

LOG = logging.getLogger("imgsign.gateway")

def _aiohttp() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise MissingExtra("imgsign gateway needs aiohttp: pip install 'imgsign[gateway]'") from None


def ssl_context(config: GatewayConfig) -> ssl.SSLContext:
    """Verify Glance's certificate and host name (against ``ca_file`` if set, else the system's CAs)."""
    context = ssl.create_default_context(cafile=config.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Gateway:
    """The proxy: one client session to Glance, shared by every request."""

    def __init__(self, config: GatewayConfig, *, signer: HostSigner | None = None,
                 domains: DomainLookup | None = None, keys: ProjectKeyManager | None = None) -> None:
        """``signer``, ``domains`` and ``keys`` together turn on signing; without ``signer`` the gateway only
        forwards."""
        _aiohttp()
        self.config = config
        self._session: ClientSession | None = None
        self.signer = signer
        if signer is not None and (domains is None or keys is None):
            raise ValueError("signing needs a domain lookup and the key manager")
        self.domains = domains
        self.keys = keys

    async def start(self, _app: object = None) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=ssl_context(self.config), limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout,
                                        sock_read=self.config.read_timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=CHUNK,
                                              skip_auto_headers=NOT_ADDED)

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

    @property
    def session(self) -> ClientSession:
        if self._session is None:
            raise RuntimeError("the gateway's client session is not started")
        return self._session

    def url(self, path: str) -> Any:
        from yarl import URL

        return URL(self.config.glance_url + path, encoded=True)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Intercept what :mod:`imgsign.gateway.intercept` names; forward everything else."""
        from imgsign.gateway.discovery import VERSION_PATHS

        if request.method == "GET" and request.rel_url.raw_path in VERSION_PATHS:
            return await self.versions(request)
        if self.signer is not None and self.signer.config.hide_locations:
            from imgsign.gateway.locations import is_image_read

            if is_image_read(request.method, request.rel_url.raw_path):
                return await self.without_locations(request)
        if self.signer is not None:
            from imgsign.gateway import intercept

            path = request.rel_url.raw_path
            image_id = intercept.upload_target(request.method, path)
            if image_id is not None:
                from imgsign.gateway.signing import handle_upload

                return await handle_upload(self, request, image_id)
            image_id = intercept.location_target(request.method, path)
            if image_id is not None:
                from imgsign.gateway.signing import handle_location

                return await handle_location(self, request, image_id)
        return await self.proxy(request)

    async def proxy(self, request: web.Request, body: AsyncIterator[bytes] | None = None) -> web.StreamResponse:
        """Send ``request`` to Glance as it came (``body``: its body, if already partly read) and stream
        Glance's answer back."""
        import aiohttp
        from aiohttp import web

        target = self.url(request.raw_path)
        headers = forwarded_headers(request.headers.items(), REQUEST_DROPPED)
        if body is None and request.body_exists:
            body = request.content.iter_chunked(CHUNK)
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, target, headers=headers, data=body,
                                             allow_redirects=False, compress=None) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in forwarded_headers(upstream.headers.items(), RESPONSE_DROPPED):
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


    async def versions(self, request: web.Request) -> web.StreamResponse:
        """Glance's version document with its links pointing at the gateway."""
        from imgsign.gateway import discovery

        gateway_origin = discovery.origin(self.config.listen_host, self.config.listen_port)
        return await self.rewritten(request, lambda body: discovery.rewrite_version_document(body, gateway_origin),
                                    discovery.MAX_DOCUMENT, "Glance's version document")

    async def without_locations(self, request: web.Request) -> web.StreamResponse:
        """An image record (or list) without locations and direct_url (:mod:`imgsign.gateway.locations`)."""
        from imgsign.gateway import locations

        return await self.rewritten(request, locations.hide_locations, locations.MAX_DOCUMENT, "the image record")

    async def rewritten(self, request: web.Request, rewrite: Callable[[bytes], bytes], limit: int,
                        what: str) -> web.StreamResponse:
        """Glance's answer to a GET, asked for uncompressed, read whole (at most ``limit`` bytes) and passed
        through ``rewrite``; 502 when it is larger, encoded anyway, or ``rewrite`` raises ValueError: such an
        answer is never passed on as Glance gave it."""
        import aiohttp
        from aiohttp import web
        from multidict import CIMultiDict

        headers = [(name, value) for name, value in forwarded_headers(request.headers.items(), REQUEST_DROPPED)
                   if name.lower() != "accept-encoding"]
        try:
            async with self.session.get(self.url(request.raw_path), headers=headers, allow_redirects=False) as upstream:
                body = await _read_at_most(upstream.content, limit + 1)
                status, reason = upstream.status, upstream.reason
                answer_headers = forwarded_headers(upstream.headers.items(), RESPONSE_DROPPED)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            return _upstream_error(request, exc)
        encoded = [v for n, v in answer_headers if n.lower() == "content-encoding" and v.lower() != "identity"]
        try:
            if len(body) > limit:
                raise ValueError(f"it is larger than {limit} bytes")
            if encoded:
                raise ValueError(f"Glance sent it encoded ({encoded[0][:40]})")
            body = rewrite(body)
        except ValueError as exc:
            LOG.error("GET %s: cannot rewrite %s: %s", request.path, what, exc)
            return error_response(502, f"the gateway cannot rewrite {what}: {exc}")
        kept = CIMultiDict((n, v) for n, v in answer_headers if n.lower() not in ("content-length", "content-encoding"))
        return web.Response(status=status, reason=reason, body=body, headers=kept)


async def _read_at_most(stream: Any, size: int) -> bytes:
    """The body, whole, or its first ``size`` bytes (``StreamReader.read(n)`` returns what has arrived)."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = await stream.read(min(CHUNK, size - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _upstream_error(request: web.Request, exc: BaseException) -> web.Response:
    import aiohttp

    if isinstance(exc, asyncio.TimeoutError):
        LOG.warning("%s %s: Glance did not answer in time", request.method, request.path)
        return error_response(504, "Glance did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        LOG.error("%s %s: Glance's TLS certificate is not trusted: %s", request.method, request.path,
                  exc.certificate_error)
        return error_response(502, "Glance's TLS certificate is not trusted (see [gateway] ca_file)")
    LOG.error("%s %s: cannot reach Glance: %s", request.method, request.path, type(exc).__name__)
    return error_response(502, f"cannot reach Glance ({type(exc).__name__})")


def make_gateway(config: GatewayConfig) -> Gateway:
    """The gateway ``config`` describes: forwarding only, or signing with the host key (``[signing]``)."""
    _aiohttp()  # first: without the extra, MissingExtra names it
    signing = config.signing
    if signing is None:
        return Gateway(config)
    from imgsign.gateway.domains import VirshDomains
    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.keymanager.config import load

    conf = load(signing.key_manager_config)
    return Gateway(config, signer=HostSigner(signing, conf), domains=VirshDomains(signing.libvirt_uri),
                   keys=CastellanProjects(conf))


def serve(config: GatewayConfig) -> None:
    """Run the gateway until interrupted (SIGINT/SIGTERM)."""
    gateway = make_gateway(config)  # every key and certificate check first: a failure stops the start

    async def announce(_app: object) -> None:
        LOG.info("listening on %s:%d, forwarding to %s%s", config.listen_host, config.listen_port, config.glance_url,
                 "" if gateway.signer is None else f", signing as host {gateway.signer.config.host}")

    from aiohttp import web

    app = gateway.application()
    app.on_startup.append(announce)
    web.run_app(app, host=config.listen_host, port=config.listen_port, print=None,
                access_log=None, handle_signals=True)
