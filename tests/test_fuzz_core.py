"""Property-based fuzzing of every core parser of untrusted input.

Each input either parses or raises an :class:`imgsign.errors.ImgsignError`, never anything
else.  ``IMGSIGN_FUZZ_EXAMPLES`` (default 200) sets the examples per test; the tests that
start OpenSSL or the command line run a tenth or a fortieth of that.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import properties
from imgsign.algorithms import HashMethod, KeyType
from imgsign.cli._common import load_properties
from imgsign.errors import ImgsignError
from imgsign.keys.loading import load_private_key, public_key_from_spki
from imgsign.properties import SignatureProperties, properties_from_document
from imgsign.signature_value import check_signature_value, decode_dss_signature_strict
from tests.conftest import CERT_UUID, cert_of, key_of, run_cli

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=max(10, EXAMPLES // 10), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI = settings(max_examples=max(4, EXAMPLES // 40), deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: Key sizes a key of each type can have (bits).
KEY_SIZES = {KeyType.RSA_PSS: [1024, 2048, 3072, 4096, 8192], KeyType.DSA: [1024, 2048, 3072]} | {
    k: [s] for k, s in ((KeyType.ECC_SECP384R1, 384), (KeyType.ECC_SECP521R1, 521), (KeyType.ECC_SECT409K1, 409),
                        (KeyType.ECC_SECT409R1, 409), (KeyType.ECC_SECT571K1, 571), (KeyType.ECC_SECT571R1, 571))
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
#: Values near the valid ones, so parsing gets past the first checks.
property_values = {
    properties.SIGNATURE: st.one_of(st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode()),
                                    st.text(alphabet="ABCDabcd0123+/=-_ \n\t\u00e9\u2028", max_size=80), json_values),
    properties.HASH_METHOD: st.one_of(st.sampled_from([h.value for h in HashMethod] + ["sha256", "SHA-1", ""]),
                                      json_values),
    properties.KEY_TYPE: st.one_of(st.sampled_from([k.value for k in KeyType] + ["RSA", "ECC_SECP256R1", ""]),
                                   json_values),
    properties.CERT_UUID: st.one_of(st.uuids().map(str), st.text(max_size=300), json_values),
}
property_mappings = st.fixed_dictionaries({}, optional=property_values).flatmap(
    lambda fixed: st.dictionaries(st.text(max_size=10), json_values, max_size=3).map(lambda extra: extra | fixed))
documents = st.one_of(json_values, property_mappings, property_mappings.map(lambda p: {"id": "x", "properties": p}))


def parses_or_refuses(parse: Callable[..., Any], *args: Any) -> None:
    try:
        parse(*args)
    except ImgsignError:
        pass


@FAST
@given(property_mappings)
def test_from_mapping(mapping):
    parses_or_refuses(SignatureProperties.from_mapping, mapping)


@FAST
@given(documents)
def test_properties_from_document(document):
    try:
        found = properties_from_document(document)
    except ImgsignError:
        return
    parses_or_refuses(SignatureProperties.from_mapping, found)


@FAST
@given(st.one_of(st.text(max_size=200), st.text(alphabet="ABCabc019+/= \r\n\t\u00a0\u3000-_", max_size=200)))
def test_decode_signature(text):
    parses_or_refuses(properties.decode_signature, text)


signature_bytes = st.one_of(
    st.binary(max_size=1200),
    # DER-looking: a SEQUENCE of two INTEGERs with lengths that may lie
    st.tuples(st.binary(max_size=80), st.binary(max_size=80), st.integers(0, 300), st.integers(0, 300)).map(
        lambda t: bytes([0x30, min(t[2], 255), 0x02, len(t[0]) % 256]) + t[0] + bytes([0x02, t[3] % 256]) + t[1]),
)


@FAST
@given(st.sampled_from(sorted(KEY_SIZES, key=lambda k: k.value)).flatmap(
    lambda k: st.tuples(st.just(k), st.sampled_from(KEY_SIZES[k]))), signature_bytes)
def test_check_signature_value(key, signature):
    key_type, key_size = key
    parses_or_refuses(check_signature_value, signature, key_type, key_size)


@FAST
@given(signature_bytes)
def test_decode_dss_signature_strict(signature):
    try:
        r, s = decode_dss_signature_strict(signature)
    except ImgsignError:
        return
    assert isinstance(r, int) and isinstance(s, int)


@FAST
@given(st.one_of(st.binary(max_size=3000), documents.map(lambda d: json.dumps(d).encode()),
                 st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                 st.integers(1, 6000).map(lambda n: b'{"a": ' + b"9" * n + b"}")))
def test_load_properties(data):
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as handle:
        handle.write(data)
        handle.flush()
        parses_or_refuses(lambda path: SignatureProperties.from_mapping(load_properties(path)), handle.name)


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` truncated, with bytes flipped, or with bytes inserted."""
    return st.one_of(
        st.integers(0, len(original)).map(lambda n: original[:n]),
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(1, 255)), min_size=1, max_size=4).map(
            lambda flips: bytes(b ^ dict(flips).get(i, 0) for i, b in enumerate(original))),
        st.tuples(st.integers(0, len(original)), st.binary(min_size=1, max_size=64)).map(
            lambda t: original[:t[0]] + t[1] + original[t[0]:]),
    )


def _der(pem: bytes) -> bytes:
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    return base64.b64decode(body)


KEY_TYPES_TO_MUTATE = ["RSA-PSS", "ECC_SECP384R1", "ECC_SECT571R1"]


@SLOW
@given(st.one_of(st.binary(max_size=2000),
                 *(mutations(key_of(k).read_bytes()) for k in KEY_TYPES_TO_MUTATE),
                 *(mutations(_der(key_of(k).read_bytes())) for k in KEY_TYPES_TO_MUTATE)),
       st.none() | st.binary(max_size=20))
def test_load_private_key(data, passphrase):
    parses_or_refuses(load_private_key, data, passphrase)


def _spki(key_type: str) -> bytes:
    from imgsign import load_certificate
    from imgsign.certificates import certificate_spki_der

    return certificate_spki_der(load_certificate(cert_of(key_type).read_bytes()))


#: A 1024-bit RSASSA-PSS SubjectPublicKeyInfo with parameters (SHA-256, MGF1-SHA-256, salt 32), from openssl genpkey.
RSASSA_PSS_SPKI = bytes.fromhex(
    "3081d3304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06"
    "096086480165030402010500a20302012003818d0030818902818100dbeee2091f22a8bbd8f53982cec1d0fc253b8bc40df840da0d"
    "5653ab4888125397ff229b6a8ccc1794191f3d47a331b02fe726136ca54cc89359d29795f1736d3016505806acc74796a2bd2679c2"
    "5ef3c069983688e9ace5206827ef73c4007cff3489c3e16282715ea8b4681364c36000b6495d487881690bfabaca65c81423020301"
    "0001"
)


@SLOW
@given(st.one_of(st.binary(max_size=1000), mutations(RSASSA_PSS_SPKI),
                 *(mutations(_spki(k)) for k in ["RSA-PSS", "DSA", "ECC_SECT409K1"])))
def test_public_key_from_spki(data):
    parses_or_refuses(public_key_from_spki, data)


@FAST
@given(mutations(RSASSA_PSS_SPKI), st.sampled_from(list(HashMethod)))
def test_rsassa_pss_parameters(data, hash_method):
    """The parameters of a (damaged) RSASSA-PSS key are read or refused; enforcing them never crashes."""
    try:
        key = public_key_from_spki(data)
        key.check_hash_method(hash_method)
    except ImgsignError:
        pass


def test_rsassa_pss_spki_keeps_its_parameters():
    key = public_key_from_spki(RSASSA_PSS_SPKI)
    assert "RSASSA-PSS (SHA256, salt >= 32)" in key.describe()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "disk.img"
    path.write_bytes(os.urandom(10_000))
    return path


@CLI
@given(st.one_of(documents.map(lambda d: json.dumps(d).encode()), st.binary(max_size=500)),
       st.sampled_from(["RSA-PSS", "ECC_SECT571R1"]))
def test_verify_command_on_random_properties(image, tmp_path, document, key_type):
    """The whole command: a refusal with its exit code (never 1, never a traceback), or a pass."""
    props = tmp_path / "props.json"
    props.write_bytes(document)
    result = run_cli("verify", image, "--properties", props, "--cert", cert_of(key_type), "--json",
                     env={"IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3")})
    assert result.code not in (1, 2), result
    assert json.loads(result.stdout)["exit_code"] == result.code


def test_fuzz_inputs_include_a_valid_signature():
    """Sanity: the strategies' target is reachable (a real signature parses)."""
    from imgsign import sign

    with open(key_of("RSA-PSS"), "rb") as handle:
        signed = sign([b"data"], load_private_key(handle.read()), CERT_UUID)
    assert SignatureProperties.from_mapping(signed.as_dict()) == signed
