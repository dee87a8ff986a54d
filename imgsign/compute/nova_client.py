"""Ask Nova's API for a server's ``trusted_image_certificates``: the network edge of per-server trust.

:func:`trusted_certificates` makes one ``GET /servers/{id}`` with ``OpenStack-API-Version: compute
2.63`` and hands the answer to :func:`imgsign.compute.server_trust.parse_answer`.  It is imported only
when ``[nova]`` is configured (a hook without it loads none of this).

Credentials: ``[nova]`` holds keystoneauth options, read as the hook's ``[glance]`` (``auth_type`` and
the plugin's options, session ``cafile``/``certfile``/``keyfile``/``insecure``, adapter
``endpoint_override``/``valid_interfaces``/``region_name``) with oslo.config and keystoneauth, which
only load when a token is needed.  The token (the auth plugin's headers) and the compute endpoint are
then kept, sealed, in the state directory (root's, 0600: the token is a secret, as the password in
``boot.conf`` is) until two minutes before the token expires; later calls send the request with the
standard library alone.  A 401 with a kept token fetches a new one once.  Any change to ``[nova]``
drops what was kept.

Nova is a hostile peer: the whole look-up (Keystone included) runs on a daemon thread the hook stops
waiting for at ``[nova] trusted_certs_timeout`` (default 5 s), and every socket read waits at most
what is left of it; an answer is read up to :data:`~imgsign.compute.server_trust.MAX_BODY` bytes and
no further; redirects are never followed; ``Accept-Encoding: identity`` is asked (a compressed body is
not JSON, so refused).
"""

from __future__ import annotations

import threading
import time

from imgsign._internal import redact
from imgsign._internal.deadline import Deadline
from imgsign.compute import server_trust
from imgsign.compute.sealed import Damaged, SealedStore
from imgsign.compute.server_trust import NovaSettings
from imgsign.errors import ImgsignError, NovaUnavailable

#: ``typing.TYPE_CHECKING`` without importing typing (the hook's every call would pay for it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Where the token and endpoint are kept: ``state_dir/nova/auth.json``.
CACHE_DIR = "nova"
CACHE_NAME = "auth"
#: A kept token is used until this many seconds before it expires.
EXPIRY_MARGIN = 120.0
SERVICE_TYPE = "compute"


def trusted_certificates(settings: NovaSettings, state_dir: str, server_id: str, *,
                         owner: int | None = None) -> tuple[str, ...]:
    """The ids of ``server_id``'s ``trusted_image_certificates`` (``()``: none), within the deadline.

    Raises :class:`~imgsign.errors.NovaUnavailable`, :class:`~imgsign.errors.NovaAnswerInvalid` or
    :class:`~imgsign.errors.UnknownServer` (:mod:`imgsign.compute.server_trust`), never anything else
    on account of what Nova or Keystone do."""
    server_id = server_trust.server_id_of(server_id)
    deadline = Deadline(settings.timeout, "[nova] trusted_certs_timeout")
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, _lookup(settings, SealedStore(state_dir, CACHE_DIR, owner=owner), server_id,
                                          deadline)))
        except BaseException as exc:  # noqa: BLE001 - handed to the hook's thread as it is
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="imgsign-nova", daemon=True)
    thread.start()
    thread.join(deadline.remaining())
    if not outcome:
        raise NovaUnavailable(f"Nova (or Keystone) did not answer for server {server_id} {deadline.describe()}")
    ok, value = outcome[0]
    if ok:
        result: tuple[str, ...] = value
        return result
    if isinstance(value, ImgsignError):
        raise value
    raise NovaUnavailable(f"asking Nova for server {server_id} failed ({type(value).__name__}: {value})")


def _lookup(settings: NovaSettings, cache: SealedStore, server_id: str, deadline: Deadline) -> tuple[str, ...]:
    kept = _kept(cache, settings)
    if kept is not None:
        status, body = _get(settings, kept[0], kept[1], server_id, deadline)
        if status != 401:
            return server_trust.parse_answer(status, body, server_id)
        cache.remove(CACHE_NAME)
    endpoint, headers, expires = _authenticate(settings, deadline)
    if expires is not None:
        cache.write(CACHE_NAME, {"settings": settings.digest, "endpoint": endpoint, "headers": headers,
                                 "expires": expires})
    status, body = _get(settings, endpoint, headers, server_id, deadline)
    return server_trust.parse_answer(status, body, server_id)


def _kept(cache: SealedStore, settings: NovaSettings) -> tuple[str, dict[str, str]] | None:
    """The kept endpoint and headers, if they are for these settings and the token is not about to expire."""
    try:
        body = cache.read(CACHE_NAME)
    except Damaged:
        return None
    if body is None or body.get("settings") != settings.digest:
        return None
    endpoint, headers, expires = body.get("endpoint"), body.get("headers"), body.get("expires")
    if not isinstance(endpoint, str) or not isinstance(headers, dict) or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()) or \
            not isinstance(expires, (int, float)) or time.time() > expires - EXPIRY_MARGIN:
        return None
    for value in headers.values():  # the token: never in a message
        redact.remember(value)
    return endpoint, headers


def _authenticate(settings: NovaSettings, deadline: Deadline) -> tuple[str, dict[str, str], float | None]:
    """keystoneauth from ``[nova]``: (compute endpoint, auth headers, epoch seconds the token expires or
    None when the plugin has no token to keep)."""
    from keystoneauth1 import exceptions as ks_errors
    from keystoneauth1 import loading as ks_loading
    from oslo_config import cfg

    from imgsign._internal import netlimits
    from imgsign.keymanager import config as km_config

    conf = cfg.ConfigOpts()
    ks_loading.register_session_conf_options(conf, server_trust.SECTION)
    ks_loading.register_auth_conf_options(conf, server_trust.SECTION)
    ks_loading.register_adapter_conf_options(conf, server_trust.SECTION)
    try:
        conf(args=[], project="imgsign", default_config_files=[settings.path])
        group = conf[server_trust.SECTION]
        auth = ks_loading.load_auth_from_conf_options(conf, server_trust.SECTION)
        remaining = max(deadline.remaining(), 0.001)
        session = ks_loading.load_session_from_conf_options(conf, server_trust.SECTION, auth=auth, timeout=remaining)
        interfaces = group.valid_interfaces
        override, region = group.endpoint_override, group.region_name
    except (ks_errors.ClientException, ValueError, cfg.Error) as exc:
        raise NovaUnavailable(f"the [nova] settings of the hook's configuration are not usable: "
                              f"{km_config.describe_error(exc)}") from None
    with netlimits.limited(deadline, NovaUnavailable, "Keystone (for Nova)"):
        try:
            headers = session.get_auth_headers(auth) or {}
            endpoint = override or session.get_endpoint(auth, service_type=SERVICE_TYPE,
                                                        interface=interfaces or None, region_name=region)
        except ks_errors.ClientException as exc:
            raise NovaUnavailable(f"Keystone did not give the hook a token or a compute endpoint for [nova]: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not endpoint:
        raise NovaUnavailable("Keystone's catalog has no compute endpoint for [nova] (set [nova] endpoint_override)")
    for value in headers.values():  # the token: never in a message
        redact.remember(str(value))
    auth_ref = getattr(auth, "auth_ref", None)
    expires = getattr(auth_ref, "expires", None)
    return str(endpoint), {str(k): str(v) for k, v in headers.items()}, \
        expires.timestamp() if expires is not None else None


def _get(settings: NovaSettings, endpoint: str, headers: dict[str, str], server_id: str,
         deadline: Deadline) -> tuple[int, bytes]:
    """``GET {endpoint}/servers/{id}`` at microversion 2.63 (HTTP/1.0, ``Connection: close``, on a plain
    socket: http.client and its email parser would cost every hook call about 20 ms): (status, body)."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise NovaUnavailable(f"the compute endpoint {endpoint[:200]!r} has an invalid port") from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise NovaUnavailable(f"the compute endpoint {endpoint[:200]!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if "/v2" not in path:  # an unversioned endpoint_override: the API Nova serves at 2.63
        path += "/v2.1"
    path = urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~") + "/servers/" + urllib.parse.quote(server_id, safe="")
    lines = [f"GET {path} HTTP/1.0", f"Host: {parts.netloc.rpartition('@')[2]}", "Accept: application/json",
             "Accept-Encoding: identity", f"OpenStack-API-Version: compute {server_trust.MICROVERSION}",
             f"X-OpenStack-Nova-API-Version: {server_trust.MICROVERSION}", "User-Agent: imgsign-boot-hook",
             "Connection: close", *(f"{name}: {value}" for name, value in headers.items())]
    if any(not line.isprintable() or not line.isascii() for line in lines):
        raise NovaUnavailable("the token or endpoint Keystone gave for [nova] holds characters that cannot go "
                              "into an HTTP request")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    where = f"Nova at {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    sock = None
    try:
        # An ASCII name as bytes: the resolver then needs no IDNA codec (a few ms more per call).
        address = host.encode("ascii") if host.isascii() else host
        sock = socket.create_connection((address, port), timeout=max(deadline.remaining(), 0.001))  # type: ignore[arg-type]
        if parts.scheme == "https":
            sock = _tls(settings).wrap_socket(sock, server_hostname=host)
        sock.sendall(request)
        data = b""
        while True:
            sock.settimeout(max(deadline.remaining(), 0.001))
            piece = sock.recv(65536)
            data += piece
            answer = server_trust.parse_response(data, eof=not piece)
            if answer is not None:
                return answer
            if deadline.expired:
                raise TimeoutError
    except (OSError, ValueError) as exc:
        what = "did not answer" if isinstance(exc, TimeoutError) else f"could not be reached or read ({exc})"
        raise NovaUnavailable(f"{where} {what} for server {server_id} {deadline.describe()}") from None
    finally:
        if sock is not None:
            sock.close()


def _tls(settings: NovaSettings) -> Any:
    """The TLS context of ``[nova]``'s ``cafile``/``certfile``/``keyfile``/``insecure``, as keystoneauth's session."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=settings.cafile)
        if settings.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if settings.certfile:
            context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise NovaUnavailable(f"the TLS settings of [nova] are not usable: {exc}") from None
    return context
