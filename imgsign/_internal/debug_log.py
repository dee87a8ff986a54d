"""``--debug`` output without secrets: the :mod:`logging` filter the command line and the OSC plugin install.

Its own module so that nothing else pays for :mod:`logging` (the boot hook imports :mod:`redact` on every
call).
"""

from __future__ import annotations

import logging
import re

from imgsign._internal.redact import scrub

#: What a request body in a debug log reads as (:class:`LogFilter`).
OMITTED_BODY = "<request body omitted by imgsign: it may hold key material>"
#: Text that marks PEM key material, as it is and base64-encoded (Barbican's payloads).
_KEY_MARKS = ("-----BEGIN", "LS0tLS1CRUdJT")
#: keystoneauth's debug line for a request ends with the body: ``REQ: curl ... -d '<body>'``.
_REQUEST_BODY = re.compile(r"(?s) -d '.*\Z")


class LogFilter(logging.Filter):
    """A :mod:`logging` filter for ``--debug`` output: every record's text leaves without secrets.

    Request bodies that the HTTP clients log (keystoneauth's ``REQ: curl ... -d '...'``) are dropped whole:
    a key or certificate stored in Barbican travels in one, and no scrubber knows a key it was never
    told about; a line showing PEM material (a ``text/plain`` response body) is cut after its first
    colon. Then :func:`scrub` takes out every remembered secret. The record keeps its level and
    logger; its message becomes the cleaned text (arguments already merged in).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a logger's own bad format string: say so rather than lose the record
            text = f"<unformattable log record from {record.name}>"
        text = _REQUEST_BODY.sub(" -d '" + OMITTED_BODY + "'", text)
        if any(mark in text for mark in _KEY_MARKS):  # a logged response body holding a key or certificate
            text = text.split(":", 1)[0] + ": <omitted by imgsign: it holds key material>"
        record.msg = scrub(text)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True
