"""imgsign's embedded key manager: a castellan backend in one local SQLite file.

Registered as ``imgsign`` in castellan's ``castellan.drivers`` entry-point
group, so any castellan user (imgsign, cursive, Glance, Nova) selects it with::

    [key_manager]
    backend = imgsign

    [imgsign_embedded]
    path = /var/lib/imgsign/keystore.sqlite3

With no ``path`` the store is ``$IMGSIGN_KEYSTORE``, else
``/var/lib/imgsign/keystore.sqlite3`` for root, else
``$XDG_DATA_HOME/imgsign/keystore.sqlite3`` (``~/.local/share/...``).

Objects are kept exactly as castellan hands them over (DER for certificates and
asymmetric keys, raw bytes otherwise) and belong to the context's project: an
object stored for one project is invisible to every other.  The database runs in
WAL mode and every change is one ``BEGIN IMMEDIATE`` transaction, so concurrent
processes neither corrupt nor lose anything.  The directory is created 0700 and
the file 0600.  Secrets are never logged or put into error messages.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from castellan.common import exception
from castellan.common.objects import (
    key,
    managed_object,
    opaque_data,
    passphrase,
    private_key,
    public_key,
    symmetric_key,
    x_509,
)
from castellan.key_manager import key_manager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from oslo_config import cfg

BACKEND = "imgsign"
GROUP = "imgsign_embedded"
ENV_PATH = "IMGSIGN_KEYSTORE"
SYSTEM_PATH = "/var/lib/imgsign/keystore.sqlite3"
BUSY_TIMEOUT_MS = 30_000

OPTS: list[cfg.Opt] = [
    cfg.StrOpt("path", help="SQLite file of the embedded key manager "
                            f"(default: ${ENV_PATH}, {SYSTEM_PATH} for root, else $XDG_DATA_HOME/imgsign/)."),
]

_CLASSES: dict[str, type[managed_object.ManagedObject]] = {
    cls.managed_type(): cls
    for cls in (opaque_data.OpaqueData, passphrase.Passphrase, private_key.PrivateKey,
                public_key.PublicKey, symmetric_key.SymmetricKey, x_509.X509)
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    type        TEXT NOT NULL,
    name        TEXT,
    created     INTEGER NOT NULL,
    expiration  TEXT,
    algorithm   TEXT,
    bit_length  INTEGER,
    consumers   TEXT NOT NULL DEFAULT '[]',
    value       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_owner_type ON objects (owner, type);
"""


def default_path() -> str:
    """Where the store lives when ``[imgsign_embedded] path`` is not set."""
    from_env = os.environ.get(ENV_PATH)
    if from_env:
        return from_env
    if os.geteuid() == 0:
        return SYSTEM_PATH
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "imgsign", "keystore.sqlite3")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL mode (persistent: once per database).

    Two connections switching a fresh database at once can get "database is locked" at
    once: SQLite does not wait on the busy timeout there, to avoid a deadlock.  So
    retry, with growing pauses, for up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.002
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() + pause > deadline:
            raise sqlite3.OperationalError("database is locked (cannot switch it to WAL mode)")
        time.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
        pause = min(pause * 2, 0.25)


def _owner(context: Any) -> str:
    """The project that owns objects stored through ``context``; no context, no access."""
    if context is None:
        raise exception.Forbidden()
    owner = getattr(context, "project_id", None) or getattr(context, "tenant", None)
    return str(owner) if owner else ""


class EmbeddedKeyManager(key_manager.KeyManager):
    """A castellan ``KeyManager`` over a local SQLite database."""

    def __init__(self, configuration: cfg.ConfigOpts | None) -> None:
        self.conf = configuration if configuration is not None else cfg.CONF
        self.conf.register_opts(OPTS, group=GROUP)
        configured = self.conf[GROUP].path
        self.path = os.path.abspath(os.path.expanduser(configured or default_path()))
        self._setting = f"[{GROUP}] path" if configured else (
            f"${ENV_PATH}" if os.environ.get(ENV_PATH) else f"default path (set [{GROUP}] path)")
        self._ready = False

    def list_options_for_discovery(self) -> list[tuple[str | None, list[cfg.Opt]]]:
        return [(GROUP, OPTS)]

    # --- storage ------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException | str) -> exception.KeyManagerError:
        return exception.KeyManagerError(
            reason=f"embedded key manager ({BACKEND}) cannot {what} {self.path} (from {self._setting}): {exc}"
        )

    def _prepare(self) -> None:
        """Create the directory (0700) and database file (0600) once."""
        if self._ready:
            return
        directory = os.path.dirname(self.path)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except OSError as exc:
            raise self._fail("create", exc.strerror or exc) from None
        self._ready = True

    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction (``BEGIN IMMEDIATE`` when writing)."""
        self._prepare()
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._fail("open", exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail("use", exc) from None
        finally:
            conn.close()

    def _insert(self, owner: str, obj: managed_object.ManagedObject, expiration: str | None) -> str:
        value = obj.get_encoded()
        if value is None:
            raise exception.KeyManagerError(reason="cannot store an object without a value (metadata only)")
        object_id = str(uuid.uuid4())
        with self._connect(write=True) as conn:
            conn.execute(
                "INSERT INTO objects (id, owner, type, name, created, expiration, algorithm, bit_length, value)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (object_id, owner, obj.managed_type(), obj.name, int(time.time()), expiration,
                 getattr(obj, "algorithm", None), getattr(obj, "bit_length", None), bytes(value)),
            )
        return object_id

    @staticmethod
    def _build(row: sqlite3.Row | tuple[Any, ...], metadata_only: bool) -> managed_object.ManagedObject:
        object_id, type_, name, created, algorithm, bit_length, consumers, value = row
        cls = _CLASSES.get(type_)
        if cls is None:
            raise exception.UnknownManagedObjectTypeError(type=type_)
        fields = {"name": name, "created": created, "consumers": json.loads(consumers),
                  "value": None if metadata_only else bytes(value).hex()}
        if issubclass(cls, key.Key):
            fields.update(algorithm=algorithm, bit_length=bit_length)
        return cls.from_dict(fields, id=object_id, metadata_only=metadata_only, consumers=fields["consumers"])

    _SELECT = "SELECT id, type, name, created, algorithm, bit_length, consumers, value FROM objects WHERE owner = ?"

    # --- castellan KeyManager API ---------------------------------------------

    def store(self, context: Any, managed_object: managed_object.ManagedObject,
              expiration: str | None = None) -> str:
        owner = _owner(context)
        if managed_object.managed_type() not in _CLASSES:
            raise exception.KeyManagerError(reason=f"unsupported object type {type(managed_object).__name__}")
        return self._insert(owner, managed_object, expiration)

    def get(self, context: Any, managed_object_id: str, metadata_only: bool = False) -> managed_object.ManagedObject:
        owner = _owner(context)
        if managed_object_id is None:
            raise exception.KeyManagerError(reason="object id is None")
        with self._connect(write=False) as conn:
            row = conn.execute(self._SELECT + " AND id = ?",
                               (owner, str(managed_object_id))).fetchone()
        if row is None:
            raise exception.ManagedObjectNotFoundError(uuid=managed_object_id)
        return self._build(row, metadata_only)

    def list(self, context: Any, object_type: type[managed_object.ManagedObject] | None = None,
             metadata_only: bool = False) -> builtins.list[managed_object.ManagedObject]:
        owner = _owner(context)
        query = self._SELECT
        args: list[Any] = [owner]
        if object_type is not None:
            if object_type.managed_type() not in _CLASSES:
                raise exception.KeyManagerError(reason=f"unsupported object type {object_type.__name__}")
            query += " AND type = ?"
            args.append(object_type.managed_type())
        with self._connect(write=False) as conn:
            rows = conn.execute(query + " ORDER BY created, id", args).fetchall()
        return [self._build(row, metadata_only) for row in rows]

    @staticmethod
    def _consumers_of(conn: sqlite3.Connection, object_id: str, owner: str) -> builtins.list[dict[str, str]]:
        """The object's consumers; not found unless it exists for this owner."""
        row = conn.execute("SELECT consumers FROM objects WHERE id = ? AND owner = ?",
                           (str(object_id), owner)).fetchone()
        if row is None:
            raise exception.ManagedObjectNotFoundError(uuid=object_id)
        return list(json.loads(row[0]))

    def delete(self, context: Any, managed_object_id: str, force: bool = False) -> None:
        owner = _owner(context)
        with self._connect(write=True) as conn:
            if self._consumers_of(conn, managed_object_id, owner) and not force:
                raise exception.KeyManagerError(
                    reason=f"object {managed_object_id} has consumers; delete it with force=True")
            conn.execute("DELETE FROM objects WHERE id = ? AND owner = ?", (str(managed_object_id), owner))

    def create_key(self, context: Any, algorithm: str, length: int, expiration: str | None = None,
                   name: str | None = None) -> str:
        owner = _owner(context)
        if length <= 0 or length % 8:
            raise exception.KeyManagerError(reason=f"invalid key length {length}")
        key = symmetric_key.SymmetricKey(algorithm, length, os.urandom(length // 8), name=name)
        return self._insert(owner, key, expiration)

    def create_key_pair(self, context: Any, algorithm: str, length: int, expiration: str | None = None,
                        name: str | None = None) -> tuple[str, str]:
        owner = _owner(context)
        algorithm_name = algorithm.upper()
        pair: Any
        if algorithm_name == "RSA":
            if not 1024 <= length <= 16384:  # OpenSSL's maximum; larger ones take hours
                raise exception.KeyManagerError(reason=f"RSA key length {length} is not between 1024 and 16384")
            pair = rsa.generate_private_key(public_exponent=65537, key_size=length)
        elif algorithm_name == "DSA":
            if length not in (1024, 2048, 3072, 4096):
                raise exception.KeyManagerError(reason=f"DSA key length {length} is not 1024, 2048, 3072 or 4096")
            from imgsign.algorithms import KeyType
            from imgsign.keys.loading import new_private_key

            made = new_private_key(KeyType.DSA, length)  # cryptography's DSA, or OpenSSL's once it has none
            return self._insert_pair(owner, algorithm_name, length, made.export_pkcs8_der(),
                                     made.public_key().spki_der(), name, expiration)
        elif algorithm_name in ("EC", "ECDSA"):
            curves: dict[int, Callable[[], ec.EllipticCurve]] = {256: ec.SECP256R1, 384: ec.SECP384R1,
                                                                 521: ec.SECP521R1}
            if length not in curves:
                raise exception.KeyManagerError(reason=f"no EC curve of {length} bits (256, 384 or 521)")
            pair = ec.generate_private_key(curves[length]())
        else:
            raise NotImplementedError(f"embedded key manager makes RSA, DSA and EC key pairs, not {algorithm}")
        private_der = pair.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        public_der = pair.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        return self._insert_pair(owner, algorithm_name, length, private_der, public_der, name, expiration)

    def _insert_pair(self, owner: str, algorithm: str, length: int, private_der: bytes, public_der: bytes,
                     name: str | None, expiration: str | None) -> tuple[str, str]:
        private_id = self._insert(owner, private_key.PrivateKey(algorithm, length, private_der, name=name),
                                  expiration)
        public_id = self._insert(owner, public_key.PublicKey(algorithm, length, public_der, name=name),
                                 expiration)
        return private_id, public_id

    def _update_consumers(self, context: Any, managed_object_id: str, consumer: dict[str, str], add: bool) -> None:
        owner = _owner(context)
        with self._connect(write=True) as conn:
            consumers = [c for c in self._consumers_of(conn, managed_object_id, owner) if c != consumer]
            if add:
                consumers.append(dict(consumer))
            conn.execute("UPDATE objects SET consumers = ? WHERE id = ?",
                         (json.dumps(consumers, sort_keys=True), str(managed_object_id)))

    def add_consumer(self, context: Any, managed_object_id: str, consumer_data: dict[str, str]) -> None:
        self._update_consumers(context, managed_object_id, consumer_data, add=True)

    def remove_consumer(self, context: Any, managed_object_id: str, consumer_data: dict[str, str]) -> None:
        self._update_consumers(context, managed_object_id, consumer_data, add=False)
