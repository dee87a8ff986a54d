"""Fuzzing the raw-digest statement: every properties mapping parses/verifies or raises an ImgsignError.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200, a few seconds); run longer by hand,
e.g. ``IMGSIGN_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_raw_statement.py``.
"""

from __future__ import annotations

import hashlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import HashMethod, Signer, errors, load_certificate, load_private_key
from imgsign.certificates import certificate_public_key
from imgsign.raw_statement import NAMES, make_raw_statement, parse_raw_statement, verify_raw_statement
from tests.conftest import CERT_UUID, cert_of, key_of

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_TYPE = "ECC_SECP384R1"  # fast to verify
_KEY = load_private_key(key_of(KEY_TYPE).read_bytes())
_PUBLIC = certificate_public_key(load_certificate(cert_of(KEY_TYPE).read_bytes()))
_DIGEST = hashlib.sha256(b"image").digest()
_SIGNED = Signer(_KEY, CERT_UUID, HashMethod.SHA256).sign_digest(_DIGEST)
VALID = {**_SIGNED.as_dict(),
         **make_raw_statement(_KEY, _SIGNED, _DIGEST, hashlib.sha256(b"raw").digest(), 3).as_dict()}

_ALPHABET = "0123456789abcdefABCDEF+/=-_ \n\x00é"
values = st.one_of(
    st.text(alphabet=_ALPHABET, max_size=200),
    st.text(max_size=40),
    st.integers(), st.none(), st.binary(max_size=20), st.lists(st.integers(), max_size=2),
)


@st.composite
def mutated(draw) -> dict[str, object]:
    """The valid properties with some values replaced, cut, extended or removed."""
    properties: dict[str, object] = dict(VALID)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([*NAMES, *_SIGNED.as_dict()]))
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


@FUZZ
@given(mutated())
def test_parse_raw_statement_parses_or_refuses(properties: dict[str, object]) -> None:
    try:
        parse_raw_statement(properties)
    except errors.ImgsignError:
        pass


@FUZZ
@given(mutated())
def test_verify_raw_statement_verifies_or_refuses(properties: dict[str, object]) -> None:
    try:
        statement = verify_raw_statement(properties, _PUBLIC)
    except errors.ImgsignError:
        return
    # Whatever verifies states exactly what was signed.
    assert statement.as_dict() == {name: VALID[name] for name in NAMES}


@FUZZ
@given(st.dictionaries(st.sampled_from([*NAMES, "img_signature"]), values))
def test_arbitrary_mappings(properties: dict[str, object]) -> None:
    try:
        parse_raw_statement(properties)
    except errors.ImgsignError:
        pass
