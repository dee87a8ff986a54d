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


def test_unreadable_crl_object_is_an_error_not_skipped():
    metadata_only = opaque_data.OpaqueData(None, name=CRL_NAME_PREFIX + "x", id="id-x")
    with pytest.raises(errors.KeyManagerError, match="without its data"):
        CastellanStore(FakeManager([metadata_only]), None, "fake key manager").get_crls()


def test_not_found_names_the_backend():
    store = CastellanStore(FakeManager([]), None, "fake key manager")
    with pytest.raises(errors.ObjectNotFound, match="fake key manager"):
        store.get_certificate("abc")
