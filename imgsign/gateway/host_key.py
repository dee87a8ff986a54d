"""The host's signing key and certificate, and the base images' certificates (I/O: key store, key manager)."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import threading
from typing import Any

from imgsign.gateway.config import SigningConfig
from imgsign.properties import SignatureProperties
from imgsign.provenance import Provenance, sign_provenance


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
        self.certificate_der = certificate.public_bytes(Encoding.DER)
        self.certificate_sha256 = hashlib.sha256(self.certificate_der).digest()
        self.key = open_signing_key(config.key, conf=conf)
        # The id is chosen per image (the copy in the owner's project); "-" only passes the constructor's check.
        self._signer = Signer(self.key, config.certificate_id or "-", config.hash_method, certificate=certificate)
        # Concurrent uploads sign from worker threads; a token session is not to be shared between them.
        self._lock = threading.Lock()

    @property
    def hash_method(self) -> Any:
        return self.config.hash_method

    def sign(self, digest: bytes, certificate_id: str) -> SignatureProperties:
        """The ``img_signature*`` properties for ``digest``, naming the certificate as ``certificate_id``."""
        import dataclasses

        from imgsign.properties import check_certificate_id

        check_certificate_id(certificate_id)
        with self._lock:
            signed = self._signer.sign_digest(digest)
        return dataclasses.replace(signed, certificate_uuid=certificate_id)

    def provenance_properties(self, signed: SignatureProperties, provenance: Provenance) -> dict[str, str]:
        with self._lock:
            return sign_provenance(self.key, signed, self.certificate_sha256, provenance)

    def close(self) -> None:
        self.key.close()


class ProjectKeyManager(abc.ABC):
    """The key manager as the image owner's project sees it (where Glance's and Nova's checks read)."""

    @abc.abstractmethod
    async def certificate_sha256(self, project_id: str, token: str | None, certificate_id: str) -> bytes:
        """SHA-256 (DER) of the certificate ``certificate_id`` in the project; an ImgsignError if it cannot be had."""

    @abc.abstractmethod
    async def certificate_id(self, project_id: str, token: str | None, certificate_der: bytes) -> str:
        """The id of ``certificate_der`` in the project, stored there first if it is not yet."""


HOST_CERTIFICATE_NAME = "imgsign compute host certificate"


class CastellanProjects(ProjectKeyManager):
    """castellan (imgsign.conf's ``[key_manager]``) with a context of the owner's project and Nova's user
    token, as Glance calls it for that user: Barbican files what is stored under the token's project."""

    def __init__(self, conf: Any) -> None:
        from castellan import key_manager

        from imgsign.errors import KeyManagerError
        from imgsign.keymanager.config import backend_name

        try:
            self.manager = key_manager.API(conf)
        except Exception as exc:  # noqa: BLE001 - stevedore/import/backend construction errors
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise KeyManagerError(f"cannot start key manager backend {backend_name(conf)!r}: {detail}") from None
        self._lock = threading.Lock()

    def _store(self, project_id: str, token: str | None) -> Any:
        from oslo_context import context as oslo_context

        from imgsign.keymanager.castellan_store import CastellanStore

        class _Context(oslo_context.RequestContext):
            def update_store(self) -> None:  # never the thread's current context
                pass

        return CastellanStore(self.manager, _Context(auth_token=token, project_id=project_id),
                              f"key manager, project {project_id}")

    def _sha256(self, project_id: str, token: str | None, certificate_id: str) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        from imgsign.keymanager.anchors import fetch_certificate

        certificate = fetch_certificate(self._store(project_id, token), certificate_id)
        return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()

    def _certificate_id(self, project_id: str, token: str | None, der: bytes) -> str:
        store = self._store(project_id, token)
        with self._lock:  # two concurrent first snapshots of one project store one copy
            found = store.find_certificate(der)
            return str(found) if found else str(store.store_certificate(der, name=HOST_CERTIFICATE_NAME))

    async def certificate_sha256(self, project_id: str, token: str | None, certificate_id: str) -> bytes:
        return await asyncio.to_thread(self._sha256, project_id, token, certificate_id)

    async def certificate_id(self, project_id: str, token: str | None, certificate_der: bytes) -> str:
        return await asyncio.to_thread(self._certificate_id, project_id, token, certificate_der)
