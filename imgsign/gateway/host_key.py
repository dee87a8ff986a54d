"""The host's signing key and certificate, and the base images' certificates (I/O: key store, key manager)."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

from imgsign.gateway.config import SigningConfig
from imgsign.gateway.provenance import Provenance, sign_provenance
from imgsign.properties import SignatureProperties


class HostSigner:
    """Signs digests and provenance with the host's key; every key and certificate check runs at start-up."""

    def __init__(self, config: SigningConfig, conf: Any = None) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding

        from imgsign._internal.files import read_small_file
        from imgsign.certificates import load_certificate
        from imgsign.keys.loading import open_signing_key
        from imgsign.signer import Signer

        self.config = config
        certificate = load_certificate(read_small_file(config.certificate, "host certificate"))
        self.certificate_sha256 = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
        self.key = open_signing_key(config.key, conf=conf)
        self._signer = Signer(self.key, config.certificate_id, config.hash_method, certificate=certificate)
        # Concurrent uploads sign from worker threads; a token session is not to be shared between them.
        self._lock = threading.Lock()

    @property
    def hash_method(self) -> Any:
        return self.config.hash_method

    def sign(self, digest: bytes) -> SignatureProperties:
        with self._lock:
            return self._signer.sign_digest(digest)

    def provenance_properties(self, signed: SignatureProperties, provenance: Provenance) -> dict[str, str]:
        with self._lock:
            return sign_provenance(self.key, signed, self.certificate_sha256, provenance)

    def close(self) -> None:
        self.key.close()


class CertificateSource(abc.ABC):
    """The SHA-256 (DER) of a certificate named by a base image's ``img_signature_certificate_uuid``."""

    @abc.abstractmethod
    async def sha256(self, certificate_id: str, image: Mapping[str, object]) -> bytes:
        """Raise an :class:`~imgsign.errors.ImgsignError` when the certificate cannot be had."""


class KeyManagerCertificates(CertificateSource):
    """Reads certificates from the key manager ``imgsign.conf`` configures (castellan, in a thread)."""

    def __init__(self, conf: Any) -> None:
        self.conf = conf

    def _fetch(self, certificate_id: str) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        from imgsign.keymanager.anchors import fetch_certificate
        from imgsign.keymanager.config import open_store

        certificate = fetch_certificate(open_store(self.conf), certificate_id)
        return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()

    async def sha256(self, certificate_id: str, image: Mapping[str, object]) -> bytes:
        return await asyncio.to_thread(self._fetch, certificate_id)
