"""The intercepted requests: a snapshot's upload is staged, signed and imported; a location is refused.

Glance is called with the headers Nova sent (its user's token and service token): the gateway acts
for Nova, with Nova's rights, and never with credentials of its own.  For a signed upload:

1. ``GET`` the image; :func:`~imgsign.gateway.intercept.decide` (and libvirt) say pass, refuse or sign;
2. ``PUT /v2/images/{id}/stage`` with Nova's body, hashed in the same pass (image data that starts
   like a DSSE PAE is refused, see :mod:`imgsign.provenance`);
3. sign the digest with the host key; read the base image (``base_image_ref``) for the provenance;
4. ``PATCH`` the ``img_signature*`` and ``imgsign_provenance_v1_*`` properties (any left from before
   are removed in the same patch);
5. ``POST /import`` (glance-direct): Glance's own signature check, and any import plugin, run;
6. poll until the image is ``active`` (answer Nova 204) or the import failed (answer the error).
Any failure answers Nova with an error, so that its ``delete_image_on_error`` removes the image.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from imgsign.errors import ImgsignError
from imgsign.gateway import intercept
from imgsign.gateway._http import CHUNK, HOP_BY_HOP, error_response
from imgsign.properties import NAMES as SIGNATURE_NAMES
from imgsign.properties import SignatureProperties
from imgsign.provenance import PAE_HEADER, PREFIX, BaseImage, Provenance, refuse_envelope_lookalike

if TYPE_CHECKING:
    from aiohttp import web

    from imgsign.gateway.host_key import HostSigner, ProjectKeyManager
    from imgsign.gateway.server import Gateway

LOG = logging.getLogger("imgsign.gateway")
JSON_PATCH = "application/openstack-images-v2.1-json-patch"
#: Headers of Nova's request not sent with the gateway's own calls: they describe Nova's body, or what Nova
#: accepts back (the gateway reads Glance's JSON itself, uncompressed).
_BODY_HEADERS = frozenset({"host", "expect", "content-length", "content-type", "content-encoding", "content-md5",
                           "accept", "accept-encoding", "range", "if-match", "if-none-match"})
#: Longest JSON answer read from Glance (an image's JSON is a few KiB).
MAX_JSON = 1024 * 1024


class Refused(Exception):
    """Answer Nova with ``status`` and ``message`` (and sign nothing)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _auth_headers(request: web.Request) -> dict[str, str]:
    """Nova's headers for the gateway's own calls: tokens and request ids, nothing about a body."""
    connection = {token.strip().lower() for token in request.headers.get("Connection", "").split(",")}
    return {name: value for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP | _BODY_HEADERS | connection}


async def read_up_to(stream: Any, limit: int) -> tuple[bytes, bool]:
    """Read an aiohttp StreamReader to its end or to ``limit + 1`` bytes: (what was read, whether that is all)."""
    data = bytearray()
    while len(data) <= limit:
        chunk = await stream.read(limit + 1 - len(data))
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def _signer(gateway: Gateway) -> HostSigner:
    if gateway.signer is None:
        raise RuntimeError("the gateway has no signer")
    return gateway.signer


async def _json_call(gateway: Gateway, method: str, path: str, headers: Mapping[str, str], *,
                     body: object = None, content_type: str = "application/json") -> tuple[int, Any]:
    """Call Glance; (status, parsed JSON or the text of the answer)."""
    data = None if body is None else json.dumps(body).encode()
    call_headers = {**headers, "Accept": "application/json", "Accept-Encoding": "identity"}
    if data is not None:
        call_headers["Content-Type"] = content_type
    async with gateway.session.request(method, gateway.url(path), headers=call_headers, data=data,
                                       allow_redirects=False) as response:
        raw, complete = await read_up_to(response.content, MAX_JSON)
        if not complete:
            raise Refused(502, f"Glance's answer to {method} {path} is too large")
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")[:300]


async def handle_upload(gateway: Gateway, request: web.Request, image_id: str) -> web.StreamResponse:
    """``PUT /v2/images/{id}/file``: sign it if it is a snapshot of an instance of this host, else forward."""
    headers = _auth_headers(request)
    status, image = await _json_call(gateway, "GET", f"/v2/images/{image_id}", headers)
    if status != 200 or not isinstance(image, dict) or image.get("id") != image_id:
        return await gateway.proxy(request)  # Glance answers the upload itself (401, 404...)
    domain = None
    if intercept.is_candidate(image) and isinstance(image.get("instance_uuid"), str):
        if gateway.domains is None:
            raise RuntimeError("signing without a domain lookup")
        try:
            domain = await gateway.domains.find(str(image["instance_uuid"]))
        except ImgsignError as exc:
            LOG.error("image %s: cannot ask libvirt about instance %s: %s", image_id, image["instance_uuid"], exc)
            return error_response(503, f"the gateway cannot ask libvirt about the instance: {exc}")
    signing = _signer(gateway)
    decision = intercept.decide(image, domain, refuse_unmatched=signing.config.refuse_unmatched)
    LOG.info("PUT image %s: %s (%s)", image_id, decision.verdict.value, decision.reason)
    if decision.verdict is intercept.Verdict.FORWARD:
        return await gateway.proxy(request)
    if decision.verdict is intercept.Verdict.REFUSE:
        return error_response(403, f"imgsign gateway refuses this upload: {decision.reason}")
    import aiohttp

    try:
        await _sign_and_import(gateway, request, image, headers)
    except asyncio.TimeoutError:
        LOG.error("image %s: not signed: Glance did not answer in time", image_id)
        return error_response(504, "imgsign gateway: Glance did not answer in time; nothing was signed")
    except aiohttp.ClientError as exc:
        LOG.error("image %s: not signed: Glance call failed: %s", image_id, type(exc).__name__)
        return error_response(502, f"imgsign gateway: Glance call failed ({type(exc).__name__}); nothing was "
                                   f"signed")
    except Refused as refused:
        LOG.error("image %s: not signed: %s", image_id, refused.message)
        return error_response(refused.status, refused.message)
    except ImgsignError as exc:
        LOG.error("image %s: not signed: %s", image_id, exc)
        return error_response(502, f"imgsign gateway: {exc.reason}: {exc}")
    from aiohttp import web

    LOG.info("image %s: signed and imported", image_id)
    return web.Response(status=204)


async def _stage(gateway: Gateway, request: web.Request, image_id: str,
                 headers: Mapping[str, str]) -> tuple[bytes, int]:
    """Stream Nova's body to ``/stage`` while hashing it; (digest, size)."""
    signer = _signer(gateway)
    hasher = signer.hash_method.new()
    state = _StageState()

    async def body() -> AsyncIterator[bytes]:
        head = b""
        async for chunk in request.content.iter_chunked(CHUNK):
            if len(head) < len(PAE_HEADER):
                head += chunk[:len(PAE_HEADER) - len(head)]
                if len(head) == len(PAE_HEADER):
                    _check_head(head, state)
            hasher.update(chunk)
            state.size += len(chunk)
            yield chunk
        _check_head(head, state)

    stage_headers = {**headers, "Content-Type": "application/octet-stream"}
    if request.content_length is not None:
        stage_headers["Content-Length"] = str(request.content_length)
    try:
        async with gateway.session.put(gateway.url(f"/v2/images/{image_id}/stage"), headers=stage_headers,
                                       data=body(), allow_redirects=False) as response:
            text = (await response.content.read(4096)).decode("utf-8", "replace")
            status = response.status
    except Exception:
        if state.refused:
            raise Refused(403, state.refused) from None
        raise
    if state.refused:
        raise Refused(403, state.refused)
    if status != 204:
        raise Refused(status if 400 <= status < 600 else 502, f"Glance refused the staged data ({status}): "
                                                               f"{text[:300]}")
    return hasher.digest(), state.size


class _StageState:
    size = 0
    refused = ""


def _check_head(head: bytes, state: _StageState) -> None:
    try:
        refuse_envelope_lookalike(head)
    except ImgsignError as exc:
        state.refused = str(exc)
        raise


def _token(headers: Mapping[str, str]) -> str | None:
    return next((value for name, value in headers.items() if name.lower() == "x-auth-token"), None)


def _keys(gateway: Gateway) -> ProjectKeyManager:
    if gateway.keys is None:
        raise RuntimeError("signing without a key manager")
    return gateway.keys


async def _base(gateway: Gateway, image: Mapping[str, object], headers: Mapping[str, str]) -> BaseImage | None:
    """What the provenance says of the base image: None if the instance's image was not signed, or its
    signature properties are unusable, or its certificate cannot be read.

    Its certificate is read as the image owner reads it (their project, Nova's user token), as Nova did
    when it verified the base for this instance."""
    reference = image.get("base_image_ref")
    if not isinstance(reference, str) or not reference:
        return None
    status, base = await _json_call(gateway, "GET", f"/v2/images/{urllib.parse.quote(reference, safe='')}", headers)
    if status != 200 or not isinstance(base, dict) or not any(name in base for name in SIGNATURE_NAMES):
        return None
    try:
        signed = SignatureProperties.from_mapping(base)
    except ImgsignError as exc:
        LOG.warning("base image %s has unusable img_signature* properties (%s): stated as unsigned", reference, exc)
        return None
    try:
        certificate_sha256 = await _keys(gateway).certificate_sha256(str(image["owner"]), _token(headers),
                                                                     signed.certificate_uuid)
    except ImgsignError as exc:
        # E.g. a public base whose certificate is a secret of the operator's project, which the owner's
        # token may not read: the base cannot be named, and a verifier that requires a trusted base refuses
        # the snapshot. The snapshot itself is not refused (Nova's own upload would have no way around it).
        LOG.warning("base image %s: its certificate %s cannot be read with the owner's token (%s): stated as "
                    "unsigned", reference, signed.certificate_uuid, exc)
        return None
    try:
        return BaseImage(reference, hashlib.sha256(signed.signature).digest(), certificate_sha256,
                         signed.certificate_uuid)
    except ValueError:
        return None


async def _sign_and_import(gateway: Gateway, request: web.Request, image: Mapping[str, Any],
                           headers: Mapping[str, str]) -> None:
    signer = _signer(gateway)
    image_id = str(image["id"])
    digest, size = await _stage(gateway, request, image_id, headers)
    certificate_id = signer.config.certificate_id or await _keys(gateway).certificate_id(
        str(image["owner"]), _token(headers), signer.certificate_der)
    signed = await asyncio.to_thread(signer.sign, digest, certificate_id)
    base = await _base(gateway, image, headers)
    try:
        provenance = Provenance(image_id, signer.hash_method, digest, base, str(image["instance_uuid"]),
                                str(image["owner"]), signer.config.host,
                                datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0))
    except ValueError as exc:
        raise Refused(403, f"cannot state the provenance: {exc}") from None
    properties = {**signed.as_dict(), **await asyncio.to_thread(signer.provenance_properties, signed, provenance)}
    stale = [name for name in image if name in SIGNATURE_NAMES or name.startswith(PREFIX)]
    patch = [{"op": "remove", "path": f"/{name}"} for name in stale]
    patch += [{"op": "add", "path": f"/{name}", "value": value} for name, value in properties.items()]
    status, answer = await _json_call(gateway, "PATCH", f"/v2/images/{image_id}", headers, body=patch,
                                      content_type=JSON_PATCH)
    if status != 200:
        raise Refused(502, f"Glance refused the signature properties ({status}): {str(answer)[:300]}")
    status, answer = await _json_call(gateway, "POST", f"/v2/images/{image_id}/import", headers,
                                      body={"method": {"name": "glance-direct"}})
    if status != 202:
        raise Refused(502, f"Glance refused the glance-direct import ({status}): {str(answer)[:300]}")
    LOG.info("image %s: %d bytes staged, signed (%s), importing", image_id, size, signer.hash_method.value)
    await _wait_active(gateway, image_id, headers)


async def _wait_active(gateway: Gateway, image_id: str, headers: Mapping[str, str]) -> None:
    signer = _signer(gateway)
    deadline = time.monotonic() + signer.config.import_timeout
    delay = 0.2
    while True:
        status, image = await _json_call(gateway, "GET", f"/v2/images/{image_id}", headers)
        if status == 200 and isinstance(image, dict):
            state = image.get("status")
            if state == "active":
                return
            failed = image.get("os_glance_failed_import")
            if state in ("killed", "deleted", "queued") or (isinstance(failed, str) and failed):
                raise Refused(502, f"Glance's import of the signed image failed (status {state}"
                                   f"{', failed stores ' + failed if failed else ''}): see glance-api's log")
        elif status == 404:
            raise Refused(502, "the image was deleted while it was being imported")
        if time.monotonic() > deadline:
            raise Refused(504, f"Glance did not finish importing within {signer.config.import_timeout:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)


async def handle_location(gateway: Gateway, request: web.Request, image_id: str) -> web.StreamResponse:
    """A location added to a snapshot or backup is refused (403); everything else is forwarded."""
    body, complete = b"", True
    if request.body_exists:
        body, complete = await read_up_to(request.content, intercept.MAX_PATCH)
    rest_pending = not complete
    adds = request.method == "POST" or rest_pending or intercept.patch_adds_location(body)
    if adds:
        status, image = await _json_call(gateway, "GET", f"/v2/images/{image_id}", _auth_headers(request))
        if status == 200 and isinstance(image, dict) and image.get("image_type") in intercept.IMAGE_TYPES:
            LOG.info("image %s: location refused for a %s", image_id, image.get("image_type"))
            return error_response(403, "imgsign gateway: snapshots and backups are uploaded as data, which the "
                                       "host signs, not added as locations")

    async def replay() -> AsyncIterator[bytes]:
        yield body
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    return await gateway.proxy(request, replay() if request.body_exists else None)
