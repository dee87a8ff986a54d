"""imgsign: sign OpenStack VM images and verify them before they boot.

Signatures are the ``img_signature*`` image properties that Glance and Nova
(through cursive) check.  The public API::

    from imgsign import sign, Signer, Verifier, VerifyingReader, SignatureProperties

Every error is an :class:`imgsign.errors.ImgsignError` subclass with a CLI exit code.
"""

from imgsign.algorithms import HashMethod, KeyType
from imgsign.chain import TrustAnchors, validate_chain
from imgsign.certificates import certificate_public_key, check_signing_certificate, load_certificate
from imgsign.errors import ImgsignError
from imgsign.keys import PrivateKey, PublicKey, load_private_key, public_key_from_spki
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import SignatureProperties, properties_from_document
from imgsign.sign import Signer, sign
from imgsign.verify import Verifier, VerifyingReader, verify_digest, verifying_iter

__all__ = [
    "DEFAULT_POLICY",
    "HashMethod",
    "ImgsignError",
    "KeyType",
    "Policy",
    "PrivateKey",
    "PublicKey",
    "SignatureProperties",
    "TrustAnchors",
    "Signer",
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
