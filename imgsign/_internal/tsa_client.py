"""Fetch an RFC 3161 timestamp token over a signature from a TSA (the I/O edge of :mod:`imgsign.timestamp`).

The TSA is a hostile peer: one deadline for the whole exchange, an answer of at most
:data:`MAX_ANSWER` bytes, no redirect, and the answer must be a granted response to this very
request (nonce, imprint).  Given TSA trust anchors, the token is also verified before it is
returned, so a signer learns at once that the TSA is not the one verifiers trust.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509

from imgsign import timestamp
from imgsign._internal.binary_post import post
from imgsign._internal.deadline import Deadline
from imgsign.errors import TimestampError, TimestampUnavailable

#: Largest TSA answer read (a token with a certificate chain is a few KiB).
MAX_ANSWER = 64 * 1024
#: Default time allowed for the whole exchange with the TSA.
DEFAULT_TIMEOUT = 30.0


def fetch_token(url: str, signature: bytes, *, hash_method: str = "SHA-256", timeout: float = DEFAULT_TIMEOUT,
                roots: Sequence[x509.Certificate] = ()) -> bytes:
    """The TimeStampToken (DER) the TSA at ``url`` issues over ``signature``.

    :class:`TimestampUnavailable` when the TSA cannot be reached in time or gives no usable answer;
    :class:`TimestampError` when ``roots`` are given and the token does not verify against them.
    """
    request = timestamp.make_request(signature, hash_method)
    answer = post(url, request.der, content_type="application/timestamp-query", accept="application/timestamp-reply",
                  deadline=Deadline(timeout, "[imgsign] tsa_timeout"), error=TimestampUnavailable,
                  service=f"the TSA at {url}", max_body=MAX_ANSWER)
    try:
        token = timestamp.token_from_response(answer, request)
    except TimestampError as exc:
        raise TimestampUnavailable(f"the TSA at {url} gave no usable timestamp: {exc.message}") from None
    if roots:
        timestamp.verify(token, signature, roots, now=datetime.datetime.now(datetime.timezone.utc))
    return token
