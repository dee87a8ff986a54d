"""``cryptography``'s DSA, used knowingly and without its deprecation warning.

DSA is one of OpenStack's eight ``img_signature_key_type`` values, so imgsign keeps
signing and verifying it.  ``cryptography`` 51 deprecates DSA: every access to a name
of its ``dsa`` module, and every load of a DSA key or certificate key, warns
``DSA is deprecated ...``.  imgsign silences exactly that warning (its category and
its message), exactly where it uses DSA on purpose:

* the names of the ``dsa`` module are taken once, here, under :func:`quiet`;
* the few calls that may load a DSA key (a private key file, a SubjectPublicKeyInfo,
  a certificate's key) run under :func:`quiet`.

Any other warning, from ``cryptography`` or anyone, still reaches the user (and the
drift check, ``.ci/latest``, turns it into a failing test).  When a ``cryptography``
release removes DSA, :data:`AVAILABLE` is False, the names are None, and
:mod:`imgsign.keys.loading` sends DSA keys to the system OpenSSL instead.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeGuard

    from cryptography.hazmat.primitives.asymmetric import dsa

try:
    from cryptography.utils import CryptographyDeprecationWarning as _Category
except ImportError:  # pragma: no cover - every cryptography imgsign supports has it
    _Category = UserWarning  # type: ignore[assignment,misc]

#: The start of ``cryptography``'s DSA deprecation message (a regular expression, matched at the start).
MESSAGE = r"DSA is deprecated"


_lock = threading.Lock()
_depth = 0
_saved: warnings.catch_warnings | None = None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run the body with ``cryptography``'s DSA deprecation warning, and only it, silenced.

    The filter goes first in the list, so it holds under any other filter (``-W error`` included).
    ``warnings.catch_warnings`` is process-wide, so imgsign's threads (``audit --jobs``) share one:
    the first to enter installs it, the last to leave restores the filters.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = warnings.catch_warnings()
            _saved.__enter__()
            warnings.filterwarnings("ignore", message=MESSAGE, category=_Category)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                _saved.__exit__(None, None, None)
                _saved = None


_public: tuple[type, ...] = ()
_private: tuple[type, ...] = ()
_generate: Callable[[int], Any] | None = None

with quiet():
    try:
        from cryptography.hazmat.primitives.asymmetric import dsa as _dsa

        _public = (_dsa.DSAPublicKey,)
        _private = (_dsa.DSAPrivateKey,)
        _generate = _dsa.generate_private_key
    except (ImportError, AttributeError):  # a cryptography without DSA
        pass

#: Does the installed ``cryptography`` still offer DSA?
AVAILABLE = bool(_public and _private and _generate)


def is_public_key(key: object) -> TypeGuard[dsa.DSAPublicKey]:
    """Is ``key`` a ``cryptography`` DSA public key? (False when it has no DSA.)"""
    return isinstance(key, _public)


def is_private_key(key: object) -> TypeGuard[dsa.DSAPrivateKey]:
    """Is ``key`` a ``cryptography`` DSA private key? (False when it has no DSA.)"""
    return isinstance(key, _private)


def generate_private_key(bits: int) -> dsa.DSAPrivateKey:
    """A new ``cryptography`` DSA key of ``bits`` (p); only while :data:`AVAILABLE`."""
    if _generate is None:
        raise RuntimeError("this cryptography has no DSA: imgsign.keys.loading sends DSA to OpenSSL")
    with quiet():
        key: dsa.DSAPrivateKey = _generate(bits)
    return key
