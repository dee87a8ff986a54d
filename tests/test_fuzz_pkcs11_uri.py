"""Property-based fuzzing of the PKCS#11 URI parser (``--key pkcs11:...`` is untrusted input).

Each input either parses or raises an :class:`imgsign.errors.ImgsignError`; a parsed URI
re-reads from its own description; the PIN never shows in the description or repr.
``IMGSIGN_FUZZ_EXAMPLES`` (default 200) sets the examples per test.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign.errors import ImgsignError
from imgsign.keys.pkcs11 import PATH_ATTRIBUTES, QUERY_ATTRIBUTES, is_reference, parse_uri

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = st.sampled_from([*PATH_ATTRIBUTES, *QUERY_ATTRIBUTES, "module-name", "x-vendor", "Token", "", "id"])
VALUES = st.text(alphabet=st.sampled_from("abcAZ09-._~%2F;?&=:/ \x00\u00e9#+"), max_size=24)
PAIRS = st.lists(st.tuples(NAMES, VALUES).map(lambda p: f"{p[0]}={p[1]}"), max_size=6)


def check(text: str) -> None:
    try:
        uri = parse_uri(text)
    except ImgsignError:
        return
    again = parse_uri(uri.describe())
    assert (again.token, again.object, again.id, again.serial, again.slot_id) == (
        uri.token, uri.object, uri.id, uri.serial, uri.slot_id)
    assert "pin-value" not in uri.describe() and "pin_value" not in repr(uri)

@FAST
@given(st.text(max_size=200))
def test_any_text_after_the_scheme(text):
    check("pkcs11:" + text)


@FAST
@given(PAIRS, PAIRS, st.sampled_from(["pkcs11:", "PKCS11:", "pkcs11:/"]))
def test_attribute_lists(path, query, scheme):
    check(scheme + ";".join(path) + ("?" + "&".join(query) if query else ""))


@FAST
@given(st.binary(max_size=40), st.text(max_size=30))
def test_percent_encoded_ids_and_labels(key_id, label):
    encoded_id = "".join(f"%{b:02x}" for b in key_id)
    encoded_label = "".join(f"%{b:02X}" for b in label.encode())
    text = f"pkcs11:token=t;object={encoded_label};id={encoded_id}?pin-value=secret%20pin"
    try:
        uri = parse_uri(text)
    except ImgsignError:
        return
    assert uri.id == key_id and uri.object == label and uri.pin_value == "secret pin"
    if "secret" not in label:  # the label is shown; the PIN never is
        assert "secret" not in repr(uri) and "secret" not in uri.describe()


def test_references_and_files():
    assert is_reference("pkcs11:token=a;object=b") and is_reference("PKCS11:object=b")
    assert not is_reference("./pkcs11.pem") and not is_reference("/etc/key.pem")
