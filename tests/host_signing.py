"""Host-signed images for the trust policy tests (TEST ONLY): what ``imgsign gateway`` sets on a snapshot.

The signature and the provenance statement are made by the library's own code (:class:`imgsign.Signer`,
:func:`imgsign.provenance.sign_provenance`), as the gateway makes them (imgsign/gateway/signing.py), with
a host certificate from :mod:`tests.policy_pki` carrying the compute host URI SAN.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

from imgsign import HashMethod, Signer, load_private_key
from imgsign._internal import chunked
from imgsign.provenance import PREFIX, BaseImage, Provenance, sign_provenance
from tests.policy_pki import CLOUD, Issued, make_host

__all__ = ["CLOUD", "CREATED", "INSTANCE", "base_image", "edit_statement", "host_signed", "make_host", "sign_image"]
#: When the test snapshots are made (inside policy_pki's default validity).
CREATED = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
INSTANCE = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"


def base_image(base_id: str, signer: Issued, certificate_id: str, base_properties: dict[str, str] | None = None,
               ) -> BaseImage:
    """The provenance's ``baseImage``: ``signer`` signed the base, stored in the key manager as ``certificate_id``."""
    signature = base64.b64decode(base_properties["img_signature"]) if base_properties else b"base signature"
    return BaseImage(base_id, hashlib.sha256(signature).digest(), bytes.fromhex(signer.fingerprint), certificate_id)


def sign_image(data: bytes, signer: Issued, certificate_id: str, hash_method: HashMethod = HashMethod.SHA384
               ) -> dict[str, str]:
    """The img_signature* properties of ``data`` signed by ``signer`` (as ``imgsign sign`` makes them)."""
    key = load_private_key(signer.key_pem)
    return Signer(key, certificate_id, hash_method).sign_digest(hashlib.new(hash_method.openssl_name, data).digest()
                                                                ).as_dict()


def host_signed(data: bytes, host: Issued, certificate_id: str, *, image_id: str, project: str,
                base: BaseImage | None, created: dt.datetime = CREATED, host_name: str = "compute-7",
                hash_method: HashMethod = HashMethod.SHA384, provenance_key: Issued | None = None) -> dict[str, str]:
    """What the gateway sets on a snapshot: img_signature* by ``host`` and the provenance statement
    (signed by ``provenance_key``'s key instead when given: a forgery, with the host certificate's keyid)."""
    key = load_private_key(host.key_pem)
    digest = hashlib.new(hash_method.openssl_name, data).digest()
    signed = Signer(key, certificate_id, hash_method).sign_digest(digest)
    provenance = Provenance(image_id, hash_method, digest, base, INSTANCE, project, host_name, created)
    statement_key = key if provenance_key is None else load_private_key(provenance_key.key_pem)
    if provenance_key is not None:  # sign_provenance checks the key made img_signature: forge around it
        forged_for = Signer(statement_key, certificate_id, hash_method).sign_digest(digest)
        made = sign_provenance(statement_key, forged_for, bytes.fromhex(host.fingerprint), provenance)
        return {**signed.as_dict(), **made}
    return {**signed.as_dict(), **sign_provenance(key, signed, bytes.fromhex(host.fingerprint), provenance)}


def edit_statement(properties: dict[str, str], change) -> dict[str, str]:
    """``properties`` with the statement inside the envelope passed through ``change`` (not signed again)."""
    envelope = json.loads(chunked.join_value(properties, PREFIX))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    change(statement)
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    kept = {k: v for k, v in properties.items() if not k.startswith(PREFIX)}
    return {**kept, **chunked.split_value(PREFIX, json.dumps(envelope))}
