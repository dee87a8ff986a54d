"""Castellan key-manager conformance: the same checks for every backend.

Today the suite runs against imgsign's embedded backend, selected exactly as a
castellan user would (``[key_manager] backend = imgsign``); the real OpenBao and
Barbican servers join the ``backend`` parametrisation with issue 3.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import sys

import pytest
from castellan import key_manager
from castellan.common import exception
from castellan.common.objects import opaque_data, passphrase, private_key, public_key, symmetric_key, x_509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from oslo_config import cfg
from oslo_context import context as oslo_context

from tests.conftest import cert_of


def _conf(tmp_path, store_path: str | None) -> cfg.ConfigOpts:
    lines = ["[key_manager]", "backend = imgsign"]
    if store_path:
        lines += ["[imgsign_embedded]", f"path = {store_path}"]
    config_file = tmp_path / "castellan.conf"
    config_file.write_text("\n".join(lines) + "\n")
    conf = cfg.ConfigOpts()
    conf(args=[], project="imgsign-test", default_config_files=[str(config_file)])
    return conf


@pytest.fixture(params=["embedded"])
def backend(request, tmp_path):
    """A castellan KeyManager chosen through castellan's own [key_manager] backend option."""
    manager = key_manager.API(_conf(tmp_path, str(tmp_path / "store" / "keystore.sqlite3")))
    assert type(manager).__name__ == "EmbeddedKeyManager"
    return manager


def ctx(project: str = "project-a") -> oslo_context.RequestContext:
    return oslo_context.RequestContext(project_id=project)


def _objects():
    key = ec.generate_private_key(ec.SECP384R1())
    private_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    from cryptography import x509

    cert_der = x509.load_pem_x509_certificate(cert_of("RSA-PSS").read_bytes()).public_bytes(
        serialization.Encoding.DER)
    return {
        "X509": x_509.X509(cert_der, name="signer"),
        "PrivateKey": private_key.PrivateKey("EC", 384, private_der, name="k"),
        "PublicKey": public_key.PublicKey("EC", 384, public_der, name="k"),
        "SymmetricKey": symmetric_key.SymmetricKey("AES", 256, os.urandom(32), name="aes"),
        "OpaqueData": opaque_data.OpaqueData(b"\x00\xffopaque\n", name="blob"),
        "Passphrase": passphrase.Passphrase(b"correct horse", name="pw"),
    }


@pytest.mark.parametrize("kind", ["X509", "PrivateKey", "PublicKey", "SymmetricKey", "OpaqueData", "Passphrase"])
def test_store_get_round_trip_is_byte_identical(backend, kind):
    original = _objects()[kind]
    object_id = backend.store(ctx(), original)
    got = backend.get(ctx(), object_id)
    assert type(got) is type(original)
    assert got.get_encoded() == original.get_encoded()
    assert got.name == original.name and got.id == object_id and isinstance(got.created, int)
    if hasattr(original, "algorithm"):
        assert (got.algorithm, got.bit_length) == (original.algorithm, original.bit_length)
    meta = backend.get(ctx(), object_id, metadata_only=True)
    assert meta.is_metadata_only() and meta.get_encoded() is None and meta.name == original.name


def test_list_filters_by_type_and_project(backend):
    ids = {kind: backend.store(ctx(), obj) for kind, obj in _objects().items()}
    other = backend.store(ctx("project-b"), x_509.X509(b"\x30\x00", name="other"))
    listed = backend.list(ctx())
    assert {o.id for o in listed} == set(ids.values())
    certs = backend.list(ctx(), object_type=x_509.X509)
    assert [o.id for o in certs] == [ids["X509"]]
    assert all(o.is_metadata_only() for o in backend.list(ctx(), metadata_only=True))
    assert [o.id for o in backend.list(ctx("project-b"))] == [other]
    assert backend.list(ctx("project-c")) == []


def test_delete_then_get_is_not_found(backend):
    object_id = backend.store(ctx(), opaque_data.OpaqueData(b"x"))
    backend.delete(ctx(), object_id)
    with pytest.raises(exception.ManagedObjectNotFoundError):
        backend.get(ctx(), object_id)
    with pytest.raises(exception.ManagedObjectNotFoundError):
        backend.delete(ctx(), object_id)


def test_projects_are_isolated(backend):
    object_id = backend.store(ctx("project-a"), passphrase.Passphrase(b"secret-of-a"))
    for action in (lambda c: backend.get(c, object_id), lambda c: backend.delete(c, object_id),
                   lambda c: backend.add_consumer(c, object_id, {"service": "x", "resource_type": "y",
                                                                 "resource_id": "z"})):
        with pytest.raises(exception.ManagedObjectNotFoundError) as info:
            action(ctx("project-b"))
        assert "secret-of-a" not in str(info.value)
    assert backend.get(ctx("project-a"), object_id).get_encoded() == b"secret-of-a"


def test_no_context_is_forbidden(backend):
    with pytest.raises(exception.Forbidden):
        backend.store(None, opaque_data.OpaqueData(b"x"))
    with pytest.raises(exception.Forbidden):
        backend.list(None)


def test_create_key_and_key_pair(backend):
    key_id = backend.create_key(ctx(), "AES", 256, name="volume-key")
    key = backend.get(ctx(), key_id)
    assert isinstance(key, symmetric_key.SymmetricKey) and len(key.get_encoded()) == 32
    private_id, public_id = backend.create_key_pair(ctx(), "RSA", 2048)
    private = serialization.load_der_private_key(backend.get(ctx(), private_id).get_encoded(), None)
    public = serialization.load_der_public_key(backend.get(ctx(), public_id).get_encoded())
    assert private.public_key().public_numbers() == public.public_numbers()


def test_consumers_block_delete_unless_forced(backend):
    object_id = backend.store(ctx(), opaque_data.OpaqueData(b"x"))
    consumer = {"service": "image", "resource_type": "image", "resource_id": "abc"}
    backend.add_consumer(ctx(), object_id, consumer)
    assert backend.get(ctx(), object_id).consumers == [consumer]
    with pytest.raises(exception.KeyManagerError):
        backend.delete(ctx(), object_id)
    backend.remove_consumer(ctx(), object_id, consumer)
    backend.add_consumer(ctx(), object_id, consumer)
    backend.delete(ctx(), object_id, force=True)


# --- embedded-only properties ------------------------------------------------------


def test_embedded_store_file_modes(tmp_path):
    store = tmp_path / "fresh" / "dir" / "keystore.sqlite3"
    manager = key_manager.API(_conf(tmp_path, str(store)))
    manager.store(ctx(), opaque_data.OpaqueData(b"x"))
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    for path in store.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_embedded_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSIGN_KEYSTORE", str(tmp_path / "env.sqlite3"))
    manager = key_manager.API(_conf(tmp_path, None))
    assert manager.path == str(tmp_path / "env.sqlite3")


def test_embedded_unusable_path_names_backend_and_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    manager = key_manager.API(_conf(tmp_path, str(blocker / "keystore.sqlite3")))
    with pytest.raises(exception.KeyManagerError) as info:
        manager.store(ctx(), passphrase.Passphrase(b"do-not-leak"))
    message = str(info.value)
    assert "embedded key manager" in message and "[imgsign_embedded] path" in message
    assert "do-not-leak" not in message


def _worker(args):
    conf_path, worker = args
    conf = cfg.ConfigOpts()
    conf(args=[], project="imgsign-test", default_config_files=[conf_path])
    manager = key_manager.API(conf)
    stored = []
    for i in range(10):
        value = f"worker-{worker}-item-{i}".encode()
        object_id = manager.store(ctx(), opaque_data.OpaqueData(value))
        assert manager.get(ctx(), object_id).get_encoded() == value
        stored.append((object_id, value))
    return stored


def test_embedded_20_processes_store_and_get_concurrently(tmp_path):
    conf = _conf(tmp_path, str(tmp_path / "shared.sqlite3"))
    conf_path = str(tmp_path / "castellan.conf")
    with multiprocessing.get_context("spawn").Pool(20) as pool:
        results = pool.map(_worker, [(conf_path, n) for n in range(20)])
    expected = dict(item for stored in results for item in stored)
    assert len(expected) == 200
    manager = key_manager.API(conf)
    listed = {o.id: o.get_encoded() for o in manager.list(ctx(), object_type=opaque_data.OpaqueData)}
    assert listed == expected


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
