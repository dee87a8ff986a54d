"""``cryptography``'s DSA, used knowingly and without its deprecation warning.

DSA is one of OpenStack's eight ``img_signature_key_type`` values, so imgsign keeps
signing and verifying it.  ``cryptography`` 51 deprecates DSA: every access to a name
of its ``dsa`` module, and every load of a DSA key or certificate key, warns
``DSA is deprecated ...``.  imgsign silences exactly that warning (its category and
its message), exactly where it uses DSA on purpose:

* the names of the ``dsa`` module are taken once, here, under :func:`quiet`;
* the few calls that may load a DSA key (a private key file, a SubjectPublicKeyInfo,
  a certificate's key) run under :func:`quiet`, the one shared filter of
  :mod:`imgsign._internal.known_warnings`.

Any other warning, from ``cryptography`` or anyone, still reaches the user (and the
drift check, ``.ci/latest``, turns it into a failing test).  When a ``cryptography``
release removes DSA, :data:`AVAILABLE` is False, the names are None, and
:mod:`imgsign.keys.loading` sends DSA keys to the system OpenSSL instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgsign._internal.known_warnings import DSA_DEPRECATED as MESSAGE
from imgsign._internal.known_warnings import quiet

if TYPE_CHECKING:
    from typing import TypeGuard

    from cryptography.hazmat.primitives.asymmetric import dsa

__all__ = ["AVAILABLE", "MESSAGE", "generate_private_key", "is_private_key", "is_public_key", "quiet"]

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
