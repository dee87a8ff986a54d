"""Glance's version document, pointed at the gateway (pure: no I/O).

Nova finds Glance with a keystoneauth adapter (``[glance] endpoint_override``, ``min_version 2.0``):
keystoneauth fetches the version document from the override and then uses the ``href`` of the version
it chose, which Glance writes as its own URL (``public_endpoint``, else the URL it was called at).
Passed through unchanged, that link would send nova-compute's uploads around the gateway, unsigned.
So the gateway rewrites the links of the document it forwards (``GET /`` and ``GET /versions``):
every absolute ``href`` keeps its path and query and gets the gateway's own scheme, host and port.
"""

from __future__ import annotations

import json
import urllib.parse

#: The paths whose answer is Glance's version document.
VERSION_PATHS = frozenset({"/", "/versions"})
#: Largest version document read (Glance's is about 2 KiB).
MAX_DOCUMENT = 256 * 1024


class NotRewritable(ValueError):
    """The answer claims to be a version document but its links cannot be rewritten (a ValueError: the
    gateway answers 502 for it)."""


def origin(host: str, port: int) -> str:
    """The gateway's own ``http://host:port`` (IPv6 literals bracketed)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _rewrite_links(version: object, base: urllib.parse.SplitResult) -> None:
    if not isinstance(version, dict):
        return
    links = version.get("links")
    if not isinstance(links, list):
        return
    for link in links:
        if not isinstance(link, dict) or "href" not in link:
            continue
        href = link["href"]
        if not isinstance(href, str):
            raise NotRewritable("a version link's href is not text")
        parts = urllib.parse.urlsplit(href)
        if parts.scheme or parts.netloc:
            link["href"] = urllib.parse.urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))


def rewrite_version_document(body: bytes, gateway_origin: str) -> bytes:
    """``body`` with every absolute link of its versions pointing at ``gateway_origin``.

    A body that is not a JSON object with ``versions`` or ``version`` (an error page, say) comes back
    unchanged: it names no endpoint to follow.  A version document whose links cannot be rewritten
    raises :class:`NotRewritable`: it is never passed on with Glance's own links.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(document, dict) or not ("versions" in document or "version" in document):
        return body
    base = urllib.parse.urlsplit(gateway_origin)
    versions = document.get("versions")
    if isinstance(versions, dict):  # keystone's style: {"versions": {"values": [...]}}
        versions = versions.get("values")
    if "versions" in document and not isinstance(versions, list):
        raise NotRewritable("the version document's versions are not a list")
    for version in versions or []:
        _rewrite_links(version, base)
    _rewrite_links(document.get("version"), base)
    return json.dumps(document, separators=(",", ":")).encode()
