"""A small Glance v2 REST client over a keystoneauth1 session (the calls imgsign needs, nothing more).

Any keystoneauth1 ``Session`` works: one built from ``clouds.yaml``/``OS_*``
(:mod:`imgsign._internal.openstack_auth`), from an oslo.config file
(``keystoneauth1.loading``), or a token-and-endpoint session. The image
endpoint comes from the session's catalog (``service_type="image"``) unless
``endpoint_override`` names it.

Every failure is an :class:`imgsign.errors.ImgsignError`: Glance unreachable,
a 5xx, 401 or 403 is :class:`~imgsign.errors.GlanceUnavailable` (70); an unknown
image :class:`~imgsign.errors.ImageNotFound` (71); an image without data
:class:`~imgsign.errors.ImageHasNoData` (72). A download that ends early raises;
it never looks like a shorter image.

Limits (:mod:`imgsign._internal.netlimits`): every call that answers a JSON document (with the
Keystone calls it makes) ends within the request timeout's connect plus read seconds *in total*,
however slowly Glance sends, and reads at most :data:`~imgsign._internal.netlimits.MAX_DOCUMENT`
(4 MiB); a stream of image data is never buffered, must not be compressed (``Accept-Encoding:
identity`` is sent, any other ``Content-Encoding`` is refused), must not pass its
``Content-Length``, and ends by the deadline its caller gives (the hook's
``adopt_conversion_timeout``); without one, each read waits at most the read timeout.  An uploaded
body has no total deadline (it may be gigabytes); Glance's answer to it is capped.  Redirects are
never followed.  Going over a limit is :class:`~imgsign.errors.GlanceUnavailable` (70).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from imgsign import errors
from imgsign._internal import netlimits
from imgsign._internal.deadline import Deadline
from imgsign._internal.untrusted import one_line, safe

if TYPE_CHECKING:
    import requests
    from keystoneauth1.session import Session

#: (connect, read) seconds for one request: each socket read waits at most the read timeout, and a call
#: that answers a JSON document ends within their sum in total (a wall-clock deadline).
DEFAULT_TIMEOUT = (10.0, 120.0)
#: Images per page when listing.
PAGE_SIZE = 200
#: Most pages of a listing (two million images): a Glance that keeps naming new pages is refused.
MAX_PAGES = 10_000
#: Glance's JSON-patch media type for PATCH /v2/images/{id}.
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
_VERSION_SUFFIX = re.compile(r"/v2(\.\d+)?/?$")
_NEXT_PAGE = re.compile(r"/v2/images(\?[\x21-\x7e]*)?")


def _brief(response: requests.Response) -> str:
    """Glance's own words about a refusal, on one short line."""
    try:  # the first 4 KiB at most: an error page says what it says at its start
        text = next(response.iter_content(4096), b"").decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a body that cannot be read says nothing more
        text = ""
    text = one_line(re.sub(r"<[^>]*>", " ", text))
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


class SizedBody:
    """A request body of known length produced by an iterable: sent with a ``Content-Length``
    (never chunked, which not every WSGI server decodes), one chunk at a time."""

    def __init__(self, chunks: Iterable[bytes | memoryview], size: int) -> None:
        self._chunks = chunks
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self._chunks)


class GlanceClient:
    """Glance's image API (v2) through a keystoneauth1 session."""

    def __init__(self, session: Session, *, endpoint_override: str | None = None, interface: str | None = None,
                 region_name: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        from keystoneauth1 import adapter

        self._adapter = adapter.Adapter(session, service_type="image", endpoint_override=endpoint_override,
                                        interface=interface, region_name=region_name)
        self._timeout = timeout
        self._root: str | None = None

    def _phase(self, what: str, deadline: Deadline | None = None, *, bounded: bool = True) -> Any:
        """One call as a network phase: within the request timeout in total (and ``deadline``, whichever
        comes first; ``bounded=False``: ``deadline`` only), its answer capped at MAX_DOCUMENT."""
        total = Deadline(sum(self._timeout), "the Glance request timeout").sooner(deadline) if bounded else deadline
        return netlimits.limited(total, errors.GlanceUnavailable, f"Glance (asked to {what})")

    # --- plumbing ------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The image service's root URL (without a ``/v2`` suffix)."""
        if self._root is None:
            from keystoneauth1 import exceptions as ks

            try:
                found = self._adapter.get_endpoint()
            except ks.ClientException as exc:  # authentication (Keystone) comes first, then the catalog
                raise errors.GlanceUnavailable(
                    f"cannot authenticate or find the image service (Glance): {_first_line(exc)}") from None
            except Exception as exc:  # noqa: BLE001 - keystoneauth parsing a broken or hostile Keystone's answer
                raise errors.GlanceUnavailable(f"Keystone's answer is not usable ({type(exc).__name__}): cannot "
                                               "authenticate or find the image service (Glance)") from None
            if not found:
                raise errors.GlanceUnavailable("cannot find the image service (Glance) in the service catalog")
            self._root = _VERSION_SUFFIX.sub("", str(found).rstrip("/") + "/").rstrip("/")
        return self._root

    def _request(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> requests.Response:
        """One call to ``path`` (``/v2/...``); only transport and authentication failures raise here."""
        from keystoneauth1 import exceptions as ks

        # Only paths under the image endpoint, and no redirects (keystoneauth would re-send the token
        # to wherever a Location points): the token never goes to a host a response named.
        if not path.startswith("/v2/"):
            raise ValueError(f"not a Glance v2 path: {path!r}")
        try:
            return self._adapter.request(f"{self.endpoint}{path}", method, raise_exc=False, stream=stream,
                                         redirect=False, timeout=self._timeout,
                                         log=not stream and "data" not in kwargs, **kwargs)
        except ks.ClientException as exc:  # connection refused, timeouts, TLS, no token, no endpoint
            raise errors.GlanceUnavailable(f"Glance at {self.endpoint} is unavailable: {_first_line(exc)}") from None
        except errors.ImgsignError:  # from finding the endpoint: says what it is itself
            raise
        except Exception as exc:  # noqa: BLE001 - keystoneauth re-authenticating with a hostile Keystone, a cut body
            raise errors.GlanceUnavailable(f"Glance at {self.endpoint} is unavailable: the request failed "
                                           f"({type(exc).__name__})") from None

    def _check(self, response: requests.Response, what: str, image_id: str | None = None,
               refused: type[errors.ImgsignError] = errors.GlanceUnavailable) -> requests.Response:
        """``response`` if it is a success; otherwise the error its status means."""
        status = response.status_code
        if status < 300:
            return response
        brief = _brief(response)
        response.close()
        if status == 404 and image_id is not None:
            raise errors.ImageNotFound(f"Glance has no image {image_id} ({what}: {brief})")
        if status in (401, 403) or status >= 500 or status < 400:  # 3xx: redirects are not followed
            raise errors.GlanceUnavailable(f"Glance refused to {what} ({brief})")
        raise refused(f"Glance refused to {what} ({brief})")

    def _json(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise errors.GlanceUnavailable(f"Glance answered {what} with something that is not JSON") from None

    # --- reading ---------------------------------------------------------------------------------

    def get_image(self, image_id: str, deadline: Deadline | None = None) -> dict[str, Any]:
        """The image record (``GET /v2/images/{id}``): fields and properties in one mapping."""
        what = f"show image {image_id}"
        with self._phase(what, deadline):
            record = self._json(self._check(self._request("GET", f"/v2/images/{_quote(image_id)}"), what,
                                            image_id), what)
        if not isinstance(record, dict):
            raise errors.GlanceUnavailable(f"Glance answered {what} with something that is not an image record")
        if not isinstance(record.get("id"), str) or record["id"].lower() != image_id.lower():  # a UUID's case
            raise errors.GlanceUnavailable(f"Glance answered {what} with the record of another image "
                                           f"({str(record.get('id'))[:80]!r})")
        return record

    def iter_images(self, project_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every image the caller can see (only those owned by ``project_id`` if given), page by page."""
        from urllib.parse import urlencode

        query: dict[str, str | int] = {"limit": PAGE_SIZE}
        if project_id is not None:
            query["owner"] = project_id
        path: str | None = f"/v2/images?{urlencode(query)}"
        seen: set[str] = set()
        while path is not None:
            if path in seen:
                raise errors.GlanceUnavailable(f"Glance's image list pages loop (next page {path[:200]} again)")
            if len(seen) >= MAX_PAGES:
                raise errors.GlanceUnavailable(f"Glance's image list has more than {MAX_PAGES} pages; refused")
            seen.add(path)
            with self._phase("list images"):
                page = self._json(self._check(self._request("GET", path), "list images"), "list images")
            images, path = parse_image_page(page)
            yield from images

    def iter_data(self, image_id: str, chunk_size: int = 1024 * 1024,
                  deadline: Deadline | None = None) -> Iterator[bytes]:
        """Stream the image's data (``GET /v2/images/{id}/file``) in chunks of at most ``chunk_size``.

        Raises :class:`~imgsign.errors.ImageHasNoData` when Glance has none, and
        :class:`~imgsign.errors.GlanceUnavailable` when the body ends before its
        ``Content-Length`` (or breaks off), passes it, comes compressed, or does not end by
        ``deadline`` (the whole download, connect to last byte): a truncated image is never
        yielded as complete.
        """
        with netlimits.limited(deadline, errors.GlanceUnavailable, f"the download of image {image_id} from Glance",
                               action="end", max_body=None):
            yield from self._data(image_id, chunk_size)

    def _data(self, image_id: str, chunk_size: int) -> Iterator[bytes]:
        import requests

        what = f"download image {image_id}"
        response = self._check(self._request("GET", f"/v2/images/{_quote(image_id)}/file", stream=True,
                                             headers={"Accept-Encoding": "identity"}), what, image_id)
        with response:
            encoding = response.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise errors.GlanceUnavailable(f"Glance sent the data of image {image_id} compressed "
                                               f"({encoding[:40]!r}) though imgsign asked for it as it is; refused")
            if response.status_code == 204:
                raise errors.ImageHasNoData(f"image {image_id} has no data in Glance (status "
                                            f"{self._status_of(image_id)})")
            expected = parse_content_length(response.headers.get("Content-Length"))
            received = 0
            try:
                for chunk in response.iter_content(chunk_size):
                    received += len(chunk)
                    if expected is not None and received > expected:
                        raise errors.GlanceUnavailable(
                            f"Glance sent more than the {expected} bytes it announced for image {image_id}")
                    yield chunk
            except (requests.exceptions.RequestException, OSError) as exc:
                raise errors.GlanceUnavailable(
                    f"the download of image {image_id} broke off after {received} bytes"
                    + (f" of {expected}" if expected is not None else "") + f": {_first_line(exc)}") from None
            if expected is not None and received != expected:
                raise errors.GlanceUnavailable(
                    f"the download of image {image_id} ended after {received} of {expected} bytes")
            if received == 0 and expected is None:
                raise errors.ImageHasNoData(f"Glance sent no data for image {image_id}")

    def _status_of(self, image_id: str) -> str:
        try:
            return str(self.get_image(image_id).get("status"))
        except errors.ImgsignError:
            return "unknown"

    def import_methods(self) -> list[str]:
        """The import methods this Glance offers (``GET /v2/info/import``); [] where there is no such call."""
        with self._phase("list its import methods"):
            response = self._request("GET", "/v2/info/import")
            if response.status_code == 404:
                response.close()
                return []
            return parse_import_methods(self._json(self._check(response, "list its import methods"),
                                                   "the import-methods query"))

    # --- writing ---------------------------------------------------------------------------------

    def create_image(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Create an image record (``POST /v2/images``); Glance's refusal is an InputError (bad fields)."""
        what = "create the image"
        with self._phase(what):
            response = self._check(self._request("POST", "/v2/images", json=dict(fields)), what,
                                   refused=errors.InputError)
            record = self._json(response, what)
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise errors.GlanceUnavailable("Glance created an image but did not say its id")
        return record

    def update_image(self, image_id: str, properties: Mapping[str, str]) -> dict[str, Any]:
        """Set ``properties`` on the image (JSON patch: replace those it has, add the others)."""
        current = self.get_image(image_id)
        patch = [{"op": "replace" if name in current else "add", "path": f"/{name}", "value": value}
                 for name, value in properties.items()]
        what = f"set properties of image {image_id}"
        with self._phase(what):
            response = self._check(self._request("PATCH", f"/v2/images/{_quote(image_id)}", data=json.dumps(patch),
                                                 headers={"Content-Type": PATCH_TYPE}), what, image_id,
                                   refused=errors.ImportFailed)
            record = self._json(response, what)
        return record if isinstance(record, dict) else {}

    def stage(self, image_id: str, data: Iterable[bytes | memoryview], size: int) -> None:
        """Send ``size`` bytes to the staging area (``PUT /v2/images/{id}/stage``, for glance-direct)."""
        self._put_data(image_id, "stage", data, size)

    def upload(self, image_id: str, data: Iterable[bytes | memoryview], size: int) -> None:
        """Upload ``size`` bytes as the image's data (``PUT /v2/images/{id}/file``; Glance stores and
        checks a signature at once)."""
        self._put_data(image_id, "file", data, size)

    def _put_data(self, image_id: str, where: str, data: Iterable[bytes | memoryview], size: int) -> None:
        what = f"accept the data of image {image_id} (PUT /{where})"
        with self._phase(what, bounded=False):  # gigabytes may take long to send; the answer is capped
            response = self._request("PUT", f"/v2/images/{_quote(image_id)}/{where}", data=SizedBody(data, size),
                                     headers={"Content-Type": "application/octet-stream"})
            self._check(response, what, image_id, refused=errors.ImportFailed).close()

    def import_image(self, image_id: str, method: str = "glance-direct") -> None:
        """Start the import of the image's staged data (``POST /v2/images/{id}/import``)."""
        with self._phase(f"import image {image_id}"):
            self._check(self._request("POST", f"/v2/images/{_quote(image_id)}/import",
                                      json={"method": {"name": method}}),
                        f"import image {image_id}", image_id, refused=errors.ImportFailed).close()

    def delete_image(self, image_id: str) -> bool:
        """Delete the image; False if Glance had no such image (any more)."""
        with self._phase(f"delete image {image_id}"):
            response = self._request("DELETE", f"/v2/images/{_quote(image_id)}")
            if response.status_code == 404:
                response.close()
                return False
            self._check(response, f"delete image {image_id}", image_id).close()
        return True

    def wait_for_import(self, image_id: str, timeout: float, interval: float = 0.25, max_interval: float = 2.0,
                        sleep: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Poll the image until its import ended; return the record if it is ``active``.

        Polls every ``interval`` seconds at first, then less often (up to ``max_interval``).

        Raises :class:`~imgsign.errors.ImportFailed` when Glance reports the import as failed
        (``os_glance_failed_import``, a ``killed``/``deleted`` status, or the import task's
        failure message) and when it has not ended within ``timeout`` seconds; every call to
        Glance ends by then too (:class:`~imgsign.errors.GlanceUnavailable` if one does not).
        """
        import time

        pause = sleep or time.sleep
        deadline = time.monotonic() + timeout
        clock = Deadline(timeout, "--import-timeout")
        while True:
            record = self.get_image(image_id, clock)
            status = record.get("status")
            if status == "active":
                return record
            if record.get("os_glance_failed_import") or status in ("killed", "deleted", "deactivated"):
                raise errors.ImportFailed(f"Glance failed to import image {image_id}: "
                                          f"{self.import_failure(image_id) or f'status {status}'}")
            if status == "queued" and not record.get("os_glance_importing_to_stores"):
                # Back to queued with nothing left to import: the import ended without data.
                message = self.import_failure(image_id)
                if message:
                    raise errors.ImportFailed(f"Glance failed to import image {image_id}: {message}")
            if time.monotonic() > deadline:
                raise errors.ImportFailed(f"the import of image {image_id} did not end within {timeout:.0f}s "
                                          f"(status {status})")
            pause(min(interval, clock.remaining()))
            interval = min(max_interval, interval * 1.5)

    def import_failure(self, image_id: str) -> str | None:
        """The message of the image's failed import task, if Glance tells (``GET /v2/images/{id}/tasks``)."""
        try:
            with self._phase(f"list the tasks of image {image_id}"):
                response = self._request("GET", f"/v2/images/{_quote(image_id)}/tasks")
                if response.status_code != 200:
                    response.close()
                    return None
                tasks = self._json(response, "the task list").get("tasks", [])
        except (errors.ImgsignError, AttributeError):
            return None
        for task in tasks if isinstance(tasks, list) else []:
            if isinstance(task, dict) and task.get("status") == "failure":
                return one_line(task.get("message") or "the import task failed", limit=500)
        return None


def _quote(image_id: str) -> str:
    from urllib.parse import quote

    return quote(image_id, safe="")


def parse_content_length(value: str | None) -> int | None:
    """A ``Content-Length`` header's byte count (None without one); anything but digits is refused."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise errors.GlanceUnavailable(f"Glance sent an invalid Content-Length {value[:40]!r}")
    return int(text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return safe(text[0], limit=300) if text else type(exc).__name__


def parse_image_page(page: object) -> tuple[list[dict[str, Any]], str | None]:
    """The images of one ``GET /v2/images`` answer and the path of the next page (None: the last).

    The next page must be a path under ``/v2/images`` (Glance sends ``/v2/images?marker=...``):
    anything else, a URL to another host included, is refused rather than followed with the token.
    """
    images = page.get("images") if isinstance(page, dict) else None
    if not isinstance(images, list):
        raise errors.GlanceUnavailable("Glance answered the image list without an image list")
    following = page.get("next") if isinstance(page, dict) else None
    if following in (None, ""):
        return [image for image in images if isinstance(image, dict)], None
    if not isinstance(following, str) or not _NEXT_PAGE.fullmatch(following):
        raise errors.GlanceUnavailable(f"Glance named an unexpected next page of images: {str(following)[:200]!r}")
    return [image for image in images if isinstance(image, dict)], following


def parse_import_methods(info: object) -> list[str]:
    """The method names in a ``GET /v2/info/import`` answer ([] if it names none)."""
    methods = info.get("import-methods") if isinstance(info, dict) else None
    values = methods.get("value") if isinstance(methods, dict) else None
    return [m for m in values if isinstance(m, str)] if isinstance(values, list) else []
