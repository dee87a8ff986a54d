"""CastellanStore's own logic, over a fake castellan manager (the real backends are in the conformance suite)."""

from __future__ import annotations

import pytest
from castellan.common import exception
from castellan.common.objects import opaque_data

from imgsign import errors
from imgsign.keymanager.castellan_store import CRL_NAME_PREFIX, CastellanStore


class FakeManager:
    def __init__(self, objects):
        self.objects = objects

    def list(self, context, object_type=None, metadata_only=False):
        return list(self.objects)

    def get(self, context, object_id, metadata_only=False):
        raise exception.ManagedObjectNotFoundError(uuid=object_id)


def opaque(i, crl=False):
    return opaque_data.OpaqueData(b"x", name=(CRL_NAME_PREFIX if crl else "") + f"o{i}", id=f"id-{i}")


def test_crls_are_listed_by_name():
    store = CastellanStore(FakeManager([opaque(1), opaque(2, crl=True)]), None, "fake key manager")
    assert store.get_crls() == [("id-2", b"x")]


def test_a_full_page_fails_closed():
    """castellan's Barbican driver returns one page of 10: a CRL beyond it would go unchecked."""
    store = CastellanStore(FakeManager([opaque(i) for i in range(10)]), None, "barbican key manager", list_limit=10)
    with pytest.raises(errors.KeyManagerError, match="--crl"):
        store.get_crls()
    assert CastellanStore(FakeManager([opaque(i) for i in range(9)]), None, "b", list_limit=10).get_crls() == []


def test_not_found_names_the_backend():
    store = CastellanStore(FakeManager([]), None, "fake key manager")
    with pytest.raises(errors.ObjectNotFound, match="fake key manager"):
        store.get_certificate("abc")


def test_barbican_driver_gets_the_page_limit():
    class BarbicanKeyManager(FakeManager):
        pass

    assert CastellanStore(BarbicanKeyManager([]), None, "b").list_limit == 10
    assert CastellanStore(FakeManager([]), None, "f").list_limit is None
