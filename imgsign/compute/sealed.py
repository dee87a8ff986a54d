"""Tamper-evident JSON files under a root-only state directory.

Each file is ``{"body": {...}, "hmac": hex}``; the HMAC-SHA256 key is a 32-byte
file in the state directory, created once with mode 0600 (the directory is
0700).  A file whose HMAC does not match is reported as damaged: callers treat
that as "unknown", never as "trusted".
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from typing import Any

from imgsign._internal.files import atomic_write
from imgsign.errors import InputError, TrustRecordError

KEY_FILE = "hmac.key"
KEY_SIZE = 32


class Damaged(Exception):
    """The sealed file exists but is unreadable, not JSON, or its HMAC does not match."""


class SealedStore:
    """A directory of sealed JSON documents, one file per name."""

    def __init__(self, state_dir: str, subdir: str) -> None:
        self.state_dir = state_dir
        self.directory = os.path.join(state_dir, subdir)
        self._key: bytes | None = None

    def _ensure_dirs(self) -> None:
        for directory in (self.state_dir, self.directory):
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create state directory {directory}: {exc.strerror}") from None

    def key(self, create: bool) -> bytes | None:
        """The HMAC key; made on first use when ``create`` (O_EXCL: concurrent makers agree)."""
        if self._key is not None:
            return self._key
        path = os.path.join(self.state_dir, KEY_FILE)
        if create:
            self._ensure_dirs()
            with contextlib.suppress(FileExistsError):
                fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, os.urandom(KEY_SIZE))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with contextlib.suppress(FileExistsError):
                    os.link(path + ".new", path)  # first one wins; never replaces an existing key
                os.unlink(path + ".new")
        try:
            with open(path, "rb") as handle:
                key = handle.read(KEY_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TrustRecordError(f"cannot read the state key {path}: {exc.strerror}") from None
        if len(key) != KEY_SIZE:
            raise TrustRecordError(f"the state key {path} is damaged ({len(key)} bytes)")
        self._key = key
        return key

    def _path(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise InputError(f"invalid state file name {name!r}")
        return os.path.join(self.directory, name + ".json")

    @staticmethod
    def _mac(key: bytes, name: str, body: dict[str, Any]) -> str:
        canonical = json.dumps({"name": name, "body": body}, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(key, canonical, hashlib.sha256).hexdigest()

    def write(self, name: str, body: dict[str, Any]) -> None:
        """Seal and write ``body`` atomically (the name is bound into the HMAC)."""
        key = self.key(create=True)
        if key is None:
            raise TrustRecordError(f"the state key in {self.state_dir} could not be created")
        document = {"body": body, "hmac": self._mac(key, name, body)}
        atomic_write(self._path(name), json.dumps(document, sort_keys=True, indent=1).encode(), mode=0o600)

    def read(self, name: str) -> dict[str, Any] | None:
        """The body, or None when there is no such file; :class:`Damaged` when it fails its seal."""
        path = self._path(name)
        try:
            with open(path, "rb") as handle:
                raw = handle.read(4 * 1024 * 1024)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Damaged(f"cannot read {path}: {exc.strerror}") from None
        key = self.key(create=False)
        if key is None:
            raise Damaged(f"{path} exists but the state key is missing")
        try:
            document = json.loads(raw)
            body, mac = document["body"], document["hmac"]
            if not isinstance(body, dict) or not isinstance(mac, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            raise Damaged(f"{path} is not a sealed JSON document") from None
        if not hmac.compare_digest(mac, self._mac(key, name, body)):
            raise Damaged(f"{path} does not match its seal (changed outside imgsign)")
        return body

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))
