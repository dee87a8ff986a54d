"""Fuzzing adoption's untrusted input, the image properties: every mapping adopts the base or is refused
with an ImgsignError, and a refusal records nothing.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples (default 200, a few seconds); run longer by hand.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import HashMethod, Signer, errors, load_certificate, load_private_key
from imgsign.compute.adoption import adopt
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.policy import Policy
from imgsign.raw_statement import NAMES, make_raw_statement
from tests.conftest import CERT_UUID, cert_of, key_of

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

KEY_TYPE = "ECC_SECP384R1"  # fast to verify
_KEY = load_private_key(key_of(KEY_TYPE).read_bytes())
_CERT = load_certificate(cert_of(KEY_TYPE).read_bytes())
RAW = os.urandom(5000)  # the "conversion" in _base
_DIGEST = hashlib.sha256(b"the signed qcow2").digest()
_SIGNED = Signer(_KEY, CERT_UUID, HashMethod.SHA256).sign_digest(_DIGEST)
VALID = {**_SIGNED.as_dict(),
         **make_raw_statement(_KEY, _SIGNED, _DIGEST, hashlib.sha256(RAW).digest(), len(RAW)).as_dict()}
IMAGE_ID = "fuzzed-image"

values = st.one_of(st.text(alphabet="0123456789abcdef+/=-_ \n\x00é", max_size=120), st.text(max_size=30),
                   st.integers(), st.none(), st.binary(max_size=20), st.lists(st.integers(), max_size=2))


@st.composite
def mutated(draw) -> dict[str, object]:
    """The valid properties with some values replaced, cut, extended or removed (or left alone)."""
    properties: dict[str, object] = dict(VALID)
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([*NAMES, *_SIGNED.as_dict(), "disk_format"]))
        kind = draw(st.sampled_from(["replace", "cut", "extend", "remove"]))
        current = properties.get(name)
        if kind == "replace":
            properties[name] = draw(values)
        elif kind == "remove":
            properties.pop(name, None)
        elif isinstance(current, str):
            at = draw(st.integers(0, len(current)))
            properties[name] = current[:at] if kind == "cut" else current[:at] + draw(st.text(max_size=8)) + current[at:]
    return properties


@pytest.fixture
def compute(tmp_path: Path) -> tuple[Path, RecordStore]:
    base = tmp_path / "instances" / "_base" / cache_name(IMAGE_ID)
    base.parent.mkdir(parents=True)
    base.write_bytes(RAW)
    return tmp_path / "instances", RecordStore(str(tmp_path / "state"))


@FUZZ
@given(properties=mutated())
def test_adopt_adopts_or_refuses(compute: tuple[Path, RecordStore], properties: dict[str, object]) -> None:
    instances, records = compute
    try:
        record = adopt(str(instances), IMAGE_ID, properties, _CERT, records, policy=Policy(), immutable=True)
    except errors.ImgsignError:
        assert records.get(IMAGE_ID) is None
        return
    assert record.cached_sha256 == hashlib.sha256(RAW).digest() and record.signed_digest == _DIGEST
    records.remove(IMAGE_ID)  # the next example adopts afresh
