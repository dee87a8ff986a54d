"""imgsign: sign OpenStack VM images and verify them before they boot.

Signatures are the ``img_signature*`` image properties that Glance and Nova
(through cursive) check.  The public API::

    from imgsign import sign, Signer, Verifier, VerifyingReader, SignatureProperties

Every error is an :class:`imgsign.errors.ImgsignError` subclass with a CLI exit code.
"""

from __future__ import annotations

import importlib

#: ``typing.TYPE_CHECKING`` without importing typing: every process that imports imgsign (the boot hook
#: on each call) would pay for it (mypy treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Public name -> module that defines it.  Loaded on first use (PEP 562), so a short CLI run
#: imports only what it needs.
_EXPORTS = {
    "HashMethod": "imgsign.algorithms",
    "KeyType": "imgsign.algorithms",
    "TrustAnchors": "imgsign.chain",
    "validate_chain": "imgsign.chain",
    "certificate_public_key": "imgsign.certificates",
    "check_signing_certificate": "imgsign.certificates",
    "load_certificate": "imgsign.certificates",
    "ImgsignError": "imgsign.errors",
    "PrivateKey": "imgsign.keys",
    "PublicKey": "imgsign.keys",
    "load_private_key": "imgsign.keys.loading",
    "public_key_from_spki": "imgsign.keys.loading",
    "DEFAULT_POLICY": "imgsign.policy",
    "Policy": "imgsign.policy",
    "SignatureProperties": "imgsign.properties",
    "properties_from_document": "imgsign.properties",
    "Signer": "imgsign.signer",
    "sign": "imgsign.signer",
    "Verifier": "imgsign.verifier",
    "VerifyingReader": "imgsign.verifier",
    "verify_digest": "imgsign.verifier",
    "verifying_iter": "imgsign.verifier",
}

__all__ = [
    "DEFAULT_POLICY",
    "HashMethod",
    "ImgsignError",
    "KeyType",
    "Policy",
    "PrivateKey",
    "PublicKey",
    "SignatureProperties",
    "Signer",
    "TrustAnchors",
    "Verifier",
    "VerifyingReader",
    "certificate_public_key",
    "check_signing_certificate",
    "load_certificate",
    "load_private_key",
    "properties_from_document",
    "public_key_from_spki",
    "sign",
    "validate_chain",
    "verify_digest",
    "verifying_iter",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imgsign' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from imgsign.algorithms import HashMethod, KeyType
    from imgsign.certificates import certificate_public_key, check_signing_certificate, load_certificate
    from imgsign.chain import TrustAnchors, validate_chain
    from imgsign.errors import ImgsignError
    from imgsign.keys import PrivateKey, PublicKey
    from imgsign.keys.loading import load_private_key, public_key_from_spki
    from imgsign.policy import DEFAULT_POLICY, Policy
    from imgsign.properties import SignatureProperties, properties_from_document
    from imgsign.signer import Signer, sign
    from imgsign.verifier import Verifier, VerifyingReader, verify_digest, verifying_iter
