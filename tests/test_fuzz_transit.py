"""Fuzzing the transit backend's parsers: what the user types (``hashivault://`` references, settings)
and what the service sends back (``vault:vN:`` signatures, key descriptions, HTTP answers) either
parses or raises an ImgsignError, never anything else.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200, a few seconds); run longer by hand,
e.g. ``IMGSIGN_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_transit.py``.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.keys import transit

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = "s.fuzz-token-never-shown"
_SETTINGS = transit.TransitSettings("http://127.0.0.1:1", TOKEN)

_REFERENCE_ALPHABET = "hashivault:/kKey-._0 \n\x00é%?#@"
references = st.one_of(
    st.text(alphabet=_REFERENCE_ALPHABET, max_size=60),
    st.text(max_size=60).map(lambda s: "hashivault://" + s),
    st.from_regex(r"hashivault://[A-Za-z0-9_.-]{0,140}", fullmatch=True),
)


@FUZZ
@given(references)
@example("hashivault://")
@example("hashivault://a")
@example("hashivault://.a")
@example("hashivault://a/b")
def test_reference_parser(reference: str) -> None:
    try:
        name = transit.parse_reference(reference)
    except errors.ImgsignError as exc:
        assert exc.exit_code == errors.InputError.exit_code
        return
    assert reference == transit.SCHEME + name and name and "/" not in name


def test_reference_parser_examples() -> None:
    assert transit.parse_reference("hashivault://image-signer_2.prod") == "image-signer_2.prod"
    for bad in ("hashivault://", "hashivault://a/b", "hashivault://-a", "hashivault://a.", "hashivault://a b",
                "hashivault:/a", "HASHIVAULT://a", "pkcs11:object=a", "hashivault://" + "a" * 129):
        with pytest.raises(errors.InputError):
            transit.parse_reference(bad)


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n"
signatures = st.one_of(
    st.text(alphabet=_B64 + "vault:", max_size=120),
    st.builds(lambda v, b: f"vault:v{v}:{b}", st.integers(-2, 12), st.text(alphabet=_B64, max_size=80)),
    st.builds(lambda v, b: f"vault:v{v}:" + base64.b64encode(b).decode(), st.integers(0, 3), st.binary(max_size=64)),
    st.integers(), st.none(), st.binary(max_size=20), st.lists(st.text(max_size=3), max_size=2),
)


@FUZZ
@given(signatures, st.integers(1, 3))
@example("vault:v1:", 1)
@example("vault:v1:AA", 1)
@example("vault:v1:AB==", 1)
@example("vault:v01:AA==", 1)
def test_signature_parser(value: object, version: int) -> None:
    try:
        signature = transit.parse_signature(value, version)
    except errors.ImgsignError as exc:
        assert exc.exit_code == errors.SignerRefused.exit_code
        return
    assert value == f"vault:v{version}:" + base64.b64encode(signature).decode() and signature


def test_signature_parser_examples() -> None:
    assert transit.parse_signature("vault:v2:AAEC", 2) == b"\x00\x01\x02"
    for bad in ("vault:v1:AAEC", "vault:v2:AAE", "vault:v2:AAEC\n", "vault:v2:AA-_", "vault:v2:AAF=",
                "vault:v02:AAEC", "Vault:v2:AAEC", " vault:v2:AAEC", "vault:v2:", None, b"vault:v2:AAEC"):
        with pytest.raises(errors.SignerRefused):
            transit.parse_signature(bad, 2)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
key_descriptions = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from([*transit.SIGNING_KEY_TYPES, "aes256-gcm96", "ed25519", ""]) | json_values,
    "latest_version": st.integers(-1, 3) | json_values,
    "keys": st.dictionaries(st.sampled_from(["1", "2", "x"]),
                            st.fixed_dictionaries({}, optional={"public_key": json_values | st.sampled_from(
                                ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", ""])}) | json_values,
                            max_size=2) | json_values,
    "supports_signing": json_values,
})


@FUZZ
@given(key_descriptions)
def test_key_description_parser(data: dict) -> None:
    client = transit.TransitClient(_SETTINGS)
    try:
        key = transit._key_from(client, "k", data)
    except errors.ImgsignError as exc:
        assert exc.exit_code in (errors.SignerRefused.exit_code, errors.MechanismUnsupported.exit_code)
        return
    assert key.key_type is not None  # only a real public key of the claimed type gets this far


bodies = st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"data": json_values, "errors": json_values}).map(
        lambda v: json.dumps(v).encode()),
)


@FUZZ
@given(st.sampled_from([200, 204, 301, 307, 400, 401, 403, 404, 405, 429, 500, 502, 503]) | st.integers(100, 599),
       bodies)
@example(503, b'{"errors":["Vault is sealed"]}')
@example(400, json.dumps({"errors": [TOKEN]}).encode())
def test_http_answer_mapping(status: int, body: bytes) -> None:
    client = transit.TransitClient(_SETTINGS)
    try:
        data = client._result(status, body, "keys/k")
    except errors.ImgsignError as exc:
        assert exc.exit_code in range(42, 47) and TOKEN not in exc.message
        return
    assert 200 <= status < 300 and isinstance(data, dict)


environments = st.fixed_dictionaries({}, optional={
    name: st.one_of(st.text(max_size=30), st.sampled_from(
        ["http://127.0.0.1:8200", "https://bao.example:8200/", "http://bao.example", "https://[::1]:99999",
         "https://u:p@h", "ftp://h", "transit", "team/transit/", "../x", "/", "a//b"]))
    for name in ("VAULT_ADDR", "BAO_ADDR", "VAULT_NAMESPACE", "TRANSIT_SECRET_ENGINE_PATH")
} | {name: st.text(max_size=30) | st.from_regex(r"s\.[0-9a-f]{24}", fullmatch=True)
     for name in ("VAULT_TOKEN", "BAO_TOKEN")})


@FUZZ
@given(environments)
@example({"VAULT_ADDR": "http://[::1", "VAULT_TOKEN": "t"})
@example({"VAULT_ADDR": "http://h:0x1", "VAULT_TOKEN": "t"})
@example({"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t\u20ac"})
def test_settings_parser(environ: dict[str, str]) -> None:
    try:
        found = transit.settings(None, environ)
    except errors.ImgsignError as exc:
        assert exc.exit_code in (errors.InputError.exit_code, errors.SignerLoginError.exit_code,
                                 errors.SignerUnavailable.exit_code)
        for name in ("VAULT_TOKEN", "BAO_TOKEN"):
            if environ.get(name, "").startswith("s.") and len(environ[name]) == 26:
                assert environ[name] not in exc.message
        return
    assert found.address.startswith(("http://", "https://")) and found.token
    assert "token" not in repr(found) and (len(found.token) < 8 or found.token not in repr(found))


@settings(FUZZ, max_examples=max(EXAMPLES // 5, 10))  # each example makes a (refused) connection
@given(st.text(min_size=1, max_size=20))
@example("t\u20ac")
@example("t\r\nX-Injected: 1")
def test_any_token_either_is_refused_or_reaches_the_wire(token: str) -> None:
    """A token becomes an HTTP header: one that cannot (non-ASCII, control characters) is refused up front."""
    try:
        found = transit.settings(None, {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": token})
        transit.TransitClient(found).call("GET", "keys/k")  # nothing listens on port 1
    except errors.ImgsignError as exc:
        assert exc.exit_code in (errors.SignerLoginError.exit_code, errors.SignerUnavailable.exit_code)
        if exc.exit_code == errors.SignerUnavailable.exit_code:
            assert "cannot connect" in exc.message
