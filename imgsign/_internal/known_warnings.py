"""The ``cryptography`` warnings imgsign handles itself, silenced by one shared, thread-safe filter.

Each is a decision imgsign has made, so the warning would only tell a user what imgsign already acts
on:

* ``DSA is deprecated``: DSA is one of OpenStack's eight key types; imgsign signs and verifies it on
  purpose (:mod:`imgsign._internal.pyca_dsa`).
* ``Parsed a serial number which wasn't positive``: RFC 5280 forbids such serial numbers, in a
  certificate or in an authorityKeyIdentifier; ``cryptography`` only warns today, imgsign refuses the
  certificate or CRL itself (:func:`imgsign.certificates.check_serials`).

:func:`quiet` wraps only the calls that parse keys, certificates and CRLs.  Its filters match each
warning's category and the start of its message, and nothing else: any other warning still reaches
the user (and the drift check, ``.ci/latest``, turns it into a failing test).  Warning filters are
process-wide, so imgsign's threads (``audit --jobs``) share one installation: the first to enter
installs the filters, the last to leave restores the list as it was.  Nothing is turned into an
error here: an "error" filter would raise in whichever thread happened to warn.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

try:
    from cryptography.utils import CryptographyDeprecationWarning as CATEGORY
except ImportError:  # pragma: no cover - every cryptography imgsign supports has it
    CATEGORY = UserWarning  # type: ignore[assignment,misc]

#: The starts of the messages silenced (regular expressions, matched at the start of the message).
DSA_DEPRECATED = r"DSA is deprecated"
NON_POSITIVE_SERIAL = r"Parsed a serial number which wasn't positive"
MESSAGES = (DSA_DEPRECATED, NON_POSITIVE_SERIAL)

_lock = threading.Lock()
_depth = 0
_saved: warnings.catch_warnings | None = None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run the body with the warnings of :data:`MESSAGES`, and only them, silenced.

    The filters go first in the list, so they hold under any other filter (``-W error`` included)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = warnings.catch_warnings()
            _saved.__enter__()
            for message in MESSAGES:
                warnings.filterwarnings("ignore", message=message, category=CATEGORY)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                _saved.__exit__(None, None, None)
                _saved = None
