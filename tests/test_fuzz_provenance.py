"""Fuzzing the provenance reader: untrusted envelopes, statements and chunked properties give a
:class:`ProvenanceError` (the chunk codec alone: :class:`PropertiesError`), never a traceback or a pass.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os

from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import HashMethod, Signer, errors, load_certificate, load_private_key
from imgsign._internal import chunked
from imgsign.certificates import certificate_public_key
from imgsign.provenance import (
    PREFIX,
    Provenance,
    parse_envelope,
    parse_statement,
    sign_provenance,
    verify_provenance,
)
from tests.conftest import CERT_UUID, cert_of, key_of

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_TYPE = "ECC_SECP384R1"
_KEY = load_private_key(key_of(KEY_TYPE).read_bytes())
_CERT = load_certificate(cert_of(KEY_TYPE).read_bytes())
_PUBLIC = certificate_public_key(_CERT)
_FINGERPRINT = hashlib.sha256(_CERT.public_bytes(serialization.Encoding.DER)).digest()
_DIGEST = hashlib.sha256(b"image").digest()
_SIGNED = Signer(_KEY, CERT_UUID, HashMethod.SHA256).sign_digest(_DIGEST)
_PROVENANCE = Provenance("image-1", HashMethod.SHA256, _DIGEST, None, "instance-1", "project-1", "host-1",
                         datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
VALID = {**_SIGNED.as_dict(), **sign_provenance(_KEY, _SIGNED, _FINGERPRINT, _PROVENANCE)}
ENVELOPE = json.loads(chunked.join_value(VALID, PREFIX))
STATEMENT = json.loads(base64.b64decode(ENVELOPE["payload"]))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _paths(document: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*prefix, index))
    return found


def _replace(document: object, path: tuple, value: object) -> object:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@st.composite
def mutated_documents(draw, document: object) -> object:
    """``document`` with one member replaced, deleted or added."""
    path = draw(st.sampled_from(_paths(document)))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace" or not path:
        return _replace(document, path, draw(json_values))
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    if action == "delete":
        del target[path[-1]]
    elif isinstance(target, dict):
        target[draw(st.text(max_size=10))] = draw(json_values)
    else:
        target.append(draw(json_values))
    return copy


@FUZZ
@given(st.text(max_size=400) | st.builds(json.dumps, json_values) | st.builds(json.dumps, mutated_documents(ENVELOPE)))
def test_envelope_parser(text: str) -> None:
    try:
        parse_envelope(text)
    except errors.ProvenanceError:
        pass


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(), mutated_documents(STATEMENT)))
def test_statement_parser(payload: bytes) -> None:
    try:
        parse_statement(payload)
    except errors.ProvenanceError:
        pass


@FUZZ
@given(mutated_documents(STATEMENT))
def test_a_statement_changed_after_signing_never_verifies(statement: object) -> None:
    envelope = {**ENVELOPE, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}
    properties = {**_SIGNED.as_dict(), **chunked.split_value(PREFIX, json.dumps(envelope))}
    try:
        verify_provenance(properties, _PUBLIC, _FINGERPRINT)
    except errors.ProvenanceError:
        return
    raise AssertionError("a changed statement verified")


_chunk_names = st.sampled_from([*(f"{PREFIX}{i}" for i in range(12)), PREFIX + "count", PREFIX + "01", PREFIX,
                                PREFIX + "x", "img_signature"])
_chunk_values = st.one_of(st.text(max_size=300), st.sampled_from([v for k, v in VALID.items()]), st.integers(),
                          st.none())


@FUZZ
@given(st.dictionaries(_chunk_names, _chunk_values, max_size=6))
def test_damaged_properties_never_verify(changes: dict) -> None:
    properties = {**VALID, **changes}
    try:
        verify_provenance(properties, _PUBLIC, _FINGERPRINT)
    except (errors.ProvenanceError, errors.PropertiesError, errors.UnsupportedAlgorithm):
        return
    # Only an unchanged provenance may pass.
    assert {k: v for k, v in properties.items() if k.startswith(PREFIX)} == \
        {k: v for k, v in VALID.items() if k.startswith(PREFIX)}


@FUZZ
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1,
               max_size=chunked.CHUNK * 5))
def test_chunks_round_trip(value: str) -> None:
    properties = chunked.split_value("p_", value)
    assert all(len(v) <= chunked.CHUNK for v in properties.values())
    assert chunked.join_value(properties, "p_") == value


@FUZZ
@given(st.dictionaries(st.sampled_from(["p_count", "p_0", "p_1", "p_2", "p_00", "p_-1", "p_", "q"]),
                       st.one_of(st.text(max_size=300), st.integers(), st.none()), max_size=5))
def test_chunk_join_is_strict(properties: dict) -> None:
    try:
        value = chunked.join_value(properties, "p_")
    except errors.PropertiesError:
        return
    if value is not None:
        assert chunked.split_value("p_", value) == {k: v for k, v in properties.items() if k.startswith("p_")}
