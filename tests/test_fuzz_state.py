"""Fuzz the parsers of the compute side's state: trust records, sealed files, verified-cache entries.

Each input either parses or raises an :class:`imgsign.errors.ImgsignError`; a verified-cache lookup
of junk is None.  ``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imgsign.compute.boot import BootPolicy, check_base
from imgsign.compute.sealed import SealedStore
from imgsign.compute.trust_record import VERSION, AnchorStore, RecordStore, TrustRecord, cache_name
from imgsign.compute.verified_cache import DEFAULT_MAX_AGE, FileIdentity, VerifiedCache
from imgsign.errors import ImgsignError
from tests.conftest import CERT_UUID, cert_of

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
#: The tests that write sealed files (two fsyncs each) run a quarter as many.
FUZZ_IO = settings(FUZZ, max_examples=max(10, EXAMPLES // 4))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=80).map(bytes.hex),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

VALID_BODY = {
    "version": VERSION,
    "image_id": "img-1",
    "properties": {"img_signature": base64.b64encode(b"s" * 384).decode(), "img_signature_hash_method": "SHA-256",
                   "img_signature_key_type": "RSA-PSS", "img_signature_certificate_uuid": CERT_UUID},
    "certificate_der": base64.b64encode(cert_of("RSA-PSS").read_bytes()).decode(),
    "signed_digest": "00" * 32,
    "certificate_id": None,
    "anchor_fingerprints": ["ab" * 32],
    "cached_file": {"name": cache_name("img-1"), "format": "raw", "sha256": "11" * 32, "size": 5},
    "source_format": "raw",
    "recorded_at": "2026-01-01T00:00:00+00:00",
}


def _paths(body, prefix=()):
    """Every (path of keys) into a nested dict."""
    for key, value in body.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


PATHS = list(_paths(VALID_BODY))


@pytest.fixture(scope="module")
def state():
    with tempfile.TemporaryDirectory() as directory:
        yield directory


def test_the_valid_body_parses():
    record = TrustRecord.from_body(copy.deepcopy(VALID_BODY))
    assert record.to_body() == {**VALID_BODY, "recorded_at": record.recorded_at}


@FUZZ
@given(json_values)
def test_trust_record_from_arbitrary_json(value):
    with contextlib.suppress(ImgsignError):
        TrustRecord.from_body(value)


@FUZZ
@given(st.sampled_from(PATHS), json_values)
@example(("signed_digest",), "")  # once reached verify_digest's ValueError
def test_trust_record_with_one_field_replaced(path, value):
    body = copy.deepcopy(VALID_BODY)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        record = TrustRecord.from_body(body)
    except ImgsignError:
        return
    with tempfile.NamedTemporaryFile() as base:  # and what the hook does with a record that parsed
        base.write(b"12345")
        base.flush()
        with contextlib.suppress(ImgsignError):
            check_base(base.name, record, BootPolicy(immutable_bases=True))


@FUZZ_IO
@given(st.binary(max_size=300) | json_values.map(lambda v: repr(v).encode()))
def test_sealed_store_read_of_arbitrary_bytes(state, raw):
    store = SealedStore(state, "records")
    store.write("x", {"seed": 1})  # the key and directory exist
    with open(os.path.join(state, "records", "x.json"), "wb") as handle:
        handle.write(raw)
    with contextlib.suppress(ImgsignError):
        assert isinstance(store.read("x"), dict)
    assert VerifiedCache(state).lookup("x", FileIdentity(1, 2, 3, 4, 5), DEFAULT_MAX_AGE, "r") is None


@FUZZ_IO
@example({"id": "ca", "sha256": ["not", "hex"]})
@example({"id": "ca", "sha256": "AB" * 32})
@example({"identity": {"device": 1, "inode": 2, "size": 3, "mtime_ns": 4, "ctime_ns": 5}, "sha256": "00",
          "record": "r", "verified_at": 1e308})
@example({"identity": {"device": 1, "inode": 2, "size": 3, "mtime_ns": 4, "ctime_ns": 5}, "sha256": "00" * 32,
          "record": "r", "verified_at": "now"})
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=5))
def test_sealed_bodies_that_pass_their_seal(state, body):
    """What a root process sealed but an older or buggy imgsign wrote: parsed or refused, never a crash."""
    SealedStore(state, "records").write(cache_name("img-1"), body)
    SealedStore(state, "verified").write("x", body)
    SealedStore(state, "anchors").write(AnchorStore._name("ca"), body)
    with contextlib.suppress(ImgsignError):
        RecordStore(state).get("img-1")
    with contextlib.suppress(ImgsignError):
        found_anchor = AnchorStore(state).fingerprint("ca")
        assert found_anchor is None or len(found_anchor) == 64
    found = VerifiedCache(state).lookup("x", FileIdentity(1, 2, 3, 4, 5), DEFAULT_MAX_AGE, "r")
    assert found is None or len(found) == 32

