"""Key managers: where signing certificates (and optionally keys) live.

The signing and verification core never talks to a key manager.  The CLI and
the compute-side hook reach one through :class:`CertificateStore`, a small
interface; :class:`~imgsign.keymanager.castellan_store.CastellanStore` implements
it over any castellan backend (imgsign's embedded SQLite store, Barbican, Vault).
"""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """Metadata of an object in a key manager (never the secret itself)."""

    id: str
    kind: str
    name: str | None
    created: int | None
    algorithm: str | None = None
    bit_length: int | None = None


class CertificateStore(abc.ABC):
    """Fetch signing certificates by their ``img_signature_certificate_uuid``."""

    #: Human name of the backend for error messages, e.g. "embedded (/var/lib/imgsign/keystore.sqlite3)".
    description: str = "key manager"

    @abc.abstractmethod
    def get_certificate(self, cert_id: str) -> bytes:
        """DER bytes of the certificate ``cert_id``; raise ObjectNotFound or KeyManagerError."""

    def get_crls(self) -> list[tuple[str, bytes]]:
        """Stored certificate revocation lists as (id, DER); none by default."""
        return []
