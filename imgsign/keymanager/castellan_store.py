"""A :class:`CertificateStore` over any castellan key manager.

Every call is a network phase (:mod:`imgsign._internal.netlimits`) whatever the backend does
inside (castellan's Vault and Barbican drivers, keystoneauth, barbicanclient build their own HTTP
sessions): each answer is capped at 4 MiB (a certificate, a CRL, a page of secrets, a token),
redirects are not followed, and a call that fetches or stores one object ends within
:data:`CALL_TIMEOUT` seconds in total, however slowly the server answers; a listing (many pages)
has the cap only.  Going over either is :class:`~imgsign.errors.KeyManagerError` (50).  The boot
hook runs its key-manager calls under its own, shorter ``[boot] adopt_timeout``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from castellan.common import exception as castellan_errors
from castellan.common.objects import opaque_data, private_key, public_key, x_509

from imgsign._internal import netlimits
from imgsign._internal.deadline import Deadline
from imgsign.errors import KeyManagerError, ObjectNotFound
from imgsign.keymanager import CertificateStore, StoredObject

#: Secrets per page when listing Barbican (castellan's driver asks for barbicanclient's default
#: first page of 10 only; Barbican's default ``max_limit_paging`` is 100).
BARBICAN_PAGE_SIZE = 100
#: Listings of Barbican tried before giving up when secrets keep changing meanwhile.
BARBICAN_LIST_ATTEMPTS = 3

#: Seconds one call for one object may take in total (Keystone, redirects refused, every read).
CALL_TIMEOUT = 60.0

#: Name prefix that marks opaque data holding a certificate revocation list.
CRL_NAME_PREFIX = "X.509 CRL: "

_KINDS: dict[str, type] = {"certificate": x_509.X509, "private-key": private_key.PrivateKey,
                           "public-key": public_key.PublicKey}


class CastellanStore(CertificateStore):
    """Certificates and keys in a castellan backend, for one request context (project)."""

    def __init__(self, manager: Any, context: Any, description: str, project: Any = None) -> None:
        self._manager = manager
        self._context = context
        self.description = description
        #: The :class:`~imgsign.keymanager.config.Project` it works in, when the CLI opened it.
        self.project = project

    @contextlib.contextmanager
    def _calling(self, action: str, object_id: str | None = None, *, listing: bool = False) -> Iterator[None]:
        """One network phase (:data:`CALL_TIMEOUT` in total unless ``listing``); castellan and
        transport errors mapped to imgsign's, naming the backend, never a secret."""
        deadline = None if listing else Deadline(CALL_TIMEOUT, "a key-manager call")
        with netlimits.limited(deadline, KeyManagerError, self.description), self._errors(action, object_id):
            yield

    @contextlib.contextmanager
    def _errors(self, action: str, object_id: str | None) -> Iterator[None]:
        try:
            yield
        except castellan_errors.ManagedObjectNotFoundError:
            raise ObjectNotFound(f"no object {object_id} in {self.description}"
                                 + ("" if self.project is not None else " (for this project)")) from None
        except castellan_errors.Forbidden:
            raise KeyManagerError(f"{self.description} refused to {action}: forbidden") from None
        except (ObjectNotFound, KeyManagerError):
            raise
        except Exception as exc:  # noqa: BLE001 - any backend/transport failure
            detail = _summarise(exc)
            raise KeyManagerError(f"{self.description}: cannot {action}: {detail}") from None

    def get_certificate(self, cert_id: str) -> bytes:
        with self._calling("get the certificate", cert_id):
            obj = self._manager.get(self._context, cert_id)
        if not isinstance(obj, x_509.X509) or obj.format != "X.509":
            raise ObjectNotFound(f"object {cert_id} in {self.description} is not an X.509 certificate")
        return _payload(obj, cert_id, self.description)

    def store_certificate(self, der: bytes, name: str | None = None) -> str:
        with self._calling("store the certificate"):
            return str(self._manager.store(self._context, x_509.X509(der, name=name)))

    def find_certificate(self, der: bytes) -> str | None:
        """The id of a stored certificate with exactly these DER bytes that this context can read, if any.

        A certificate listed but not readable here (a Barbican secret that another user of the project
        made private with its ACL) is passed over: its id could not be read with this token either, and
        it must not make every look-up of the project fail."""
        with self._calling("list certificates", listing=True):
            for obj in self._list(x_509.X509, skip_unreadable=True):
                if bytes(obj.get_encoded()) == der:
                    return str(obj.id)
        return None

    def store_private_key(self, pkcs8_der: bytes, algorithm: str, bits: int, name: str | None = None) -> str:
        with self._calling("store the private key"):
            key = private_key.PrivateKey(algorithm, bits, pkcs8_der, name=name)
            return str(self._manager.store(self._context, key))

    def get_private_key(self, key_id: str) -> bytes:
        with self._calling("get the private key", key_id):
            obj = self._manager.get(self._context, key_id)
        if not isinstance(obj, private_key.PrivateKey):
            raise ObjectNotFound(f"object {key_id} in {self.description} is not a private key")
        return _payload(obj, key_id, self.description)

    def store_crl(self, der: bytes, issuer: str) -> str:
        """Store a CRL (castellan has no CRL type: opaque data named ``X.509 CRL: <issuer>``)."""
        with self._calling("store the CRL"):
            return str(self._manager.store(self._context, opaque_data.OpaqueData(der, name=CRL_NAME_PREFIX + issuer)))

    def get_crls(self) -> list[tuple[str, bytes]]:
        """Every stored CRL as (id, DER); any object that cannot be read is an error, never skipped."""
        with self._calling("list CRLs", listing=True):
            objects = self._list(opaque_data.OpaqueData)
            return [(str(o.id), _payload(o, str(o.id), self.description))
                    for o in objects if (o.name or "").startswith(CRL_NAME_PREFIX)]

    def list_objects(self, kind: str) -> list[StoredObject]:
        with self._calling(f"list {kind}s", listing=True):
            objects = self._list(_KINDS[kind], metadata_only=True)
        return [
            StoredObject(str(o.id), kind, o.name, o.created, getattr(o, "algorithm", None),
                         getattr(o, "bit_length", None))
            for o in objects
        ]

    def delete(self, object_id: str) -> None:
        with self._calling("delete", object_id):
            self._manager.delete(self._context, object_id)

    def _list(self, object_type: type, metadata_only: bool = False, skip_unreadable: bool = False) -> list[Any]:
        """All objects of ``object_type`` (call inside :meth:`_calling`); ``skip_unreadable``: leave out the
        Barbican secrets whose data this context is forbidden to read (else that is an error)."""
        if _is_barbican(self._manager):
            return _barbican_list_all(self._manager, self._context, object_type, metadata_only, skip_unreadable)
        return list(self._manager.list(self._context, object_type=object_type, metadata_only=metadata_only))


def _is_barbican(manager: Any) -> bool:
    """Is ``manager`` castellan's Barbican driver (checked without importing it)?"""
    module = sys.modules.get("castellan.key_manager.barbican_key_manager")
    return module is not None and isinstance(manager, module.BarbicanKeyManager)


def _barbican_list_all(manager: Any, context: Any, object_type: type, metadata_only: bool,
                       skip_unreadable: bool = False) -> list[Any]:
    """Every page of a Barbican listing, as castellan objects.

    castellan's ``BarbicanKeyManager.list`` returns barbicanclient's first page (10 secrets) and
    drops secrets it cannot read.  This pages with the barbicanclient castellan builds for the
    context (castellan's session, auth and endpoint) until an empty page, converts each secret
    with castellan's own conversion and lets any failure propagate.  Offset paging can skip a
    secret when another one is deleted meanwhile, so the listing must account for Barbican's
    ``total`` before and after it, or it is repeated (then a KeyManagerError).  ``skip_unreadable``:
    a secret listed whose data Barbican refuses to this context (403: its ACL makes it private to
    another user) is left out instead of failing the listing.
    """
    client = manager._get_barbican_client(context)
    secret_type = manager._secret_type_dict[object_type]
    for _ in range(BARBICAN_LIST_ATTEMPTS):
        before = _barbican_total(client, secret_type)
        found: dict[str, Any] = {}
        seen: set[str] = set()
        offset = 0
        while page := client.secrets.list(limit=BARBICAN_PAGE_SIZE, offset=offset, secret_type=secret_type,
                                          sort="created:asc"):
            for secret in page:
                seen.add(str(manager._retrieve_secret_uuid(secret.secret_ref) if secret.secret_ref else None))
                try:
                    obj = manager._get_castellan_object(secret, metadata_only)
                except Exception as exc:
                    if skip_unreadable and _forbidden(exc):
                        continue
                    raise
                found.setdefault(str(obj.id), obj)
            offset += len(page)
        if len(seen) == before == _barbican_total(client, secret_type):
            return list(found.values())
    raise KeyManagerError(f"the {secret_type} secrets kept changing while they were listed "
                          f"({BARBICAN_LIST_ATTEMPTS} attempts); try again")


def _forbidden(exc: BaseException) -> bool:
    """Is ``exc`` (or what it wraps) a 403 from Barbican (barbicanclient's ``HTTPClientError``, castellan's)?"""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, castellan_errors.Forbidden) or getattr(error, "status_code", None) == 403:
            return True
    return False


def _barbican_total(client: Any, secret_type: str) -> int:
    """How many secrets of ``secret_type`` Barbican says there are (its listing's ``total``)."""
    body = client.client.get("secrets", params={"limit": 1, "offset": 0, "secret_type": secret_type})
    return int(body["total"])


def _payload(obj: Any, object_id: str, where: str) -> bytes:
    """The object's bytes; a metadata-only answer is a key-manager error, never empty data."""
    encoded = obj.get_encoded()
    if encoded is None:
        raise KeyManagerError(f"object {object_id} in {where} came back without its data")
    return bytes(encoded)


def _summarise(exc: Exception) -> str:
    """A short, secret-free description of a backend failure."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    if names & {"ConnectionError", "NewConnectionError", "ConnectTimeout", "ConnectFailure"}:
        return "cannot connect to the server (is it running, and is the URL right?)"
    if names & {"Timeout", "ReadTimeout", "ConnectTimeout"}:
        return "the server did not answer in time"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
