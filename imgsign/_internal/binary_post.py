"""One binary request to a hostile peer (a TSA, an OCSP responder): POST, read a small answer, or fail clearly.

Under :func:`imgsign._internal.netlimits.limited`: one wall-clock deadline for connect, headers
and body, a cap on the answer, no redirect followed, no compression asked for.  Only ``http`` and
``https`` URLs; an answer that is not ``200`` is refused.  Every failure is ``error`` (an
:class:`~imgsign.errors.ImgsignError` class) with one line saying what happened.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from imgsign._internal import netlimits
from imgsign._internal.deadline import Deadline
from imgsign._internal.untrusted import safe
from imgsign.errors import ImgsignError


def check_url(url: str, what: str, error: type[ImgsignError]) -> str:
    """``url`` if it is an absolute ``http``/``https`` URL with a host; else ``error``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(f"{what} URL must be an absolute http:// or https:// URL, not {safe(url[:120])!r}")
    return url


def post(url: str, body: bytes, *, content_type: str, accept: str, deadline: Deadline, error: type[ImgsignError],
         service: str, max_body: int) -> bytes:
    """POST ``body`` to ``url`` and return the answer's body (at most ``max_body`` bytes)."""
    import requests

    check_url(url, service, error)
    with netlimits.limited(deadline, error, service, max_body=max_body):
        try:
            response = requests.post(url, data=body, headers={"Content-Type": content_type, "Accept": accept},
                                     timeout=deadline.remaining() or 0.001, allow_redirects=False, stream=True)
            try:
                chunks = []
                total = 0
                for piece in response.iter_content(64 * 1024):
                    chunks.append(piece)
                    total += len(piece)
                    if total > max_body:
                        raise error(f"{service} sent an answer larger than {max_body} bytes; nothing more was read")
                answer = b"".join(chunks)
            finally:
                response.close()
        except requests.exceptions.SSLError:
            raise error(f"the TLS connection to {service} failed (untrusted certificate or handshake)") from None
        except requests.exceptions.Timeout:
            raise error(f"{service} did not answer {deadline.describe()}") from None
        except requests.exceptions.ConnectionError:
            raise error(f"cannot connect to {service} (refused, unreachable or closed early)") from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise error(f"the request to {service} failed ({type(exc).__name__})") from None
    if response.status_code != 200:
        reason = safe(str(response.reason or ""))[:60]
        raise error(f"{service} answered HTTP {response.status_code} {reason}".rstrip()
                    + " (only 200 is accepted; no redirect is followed)")
    if not answer:
        raise error(f"{service} answered with an empty body")
    return answer
