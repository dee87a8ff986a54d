"""Parsing and rendering the img_signature* properties."""

from __future__ import annotations

import base64
import shlex

import pytest

from imgsign import errors
from imgsign.algorithms import HashMethod, KeyType
from imgsign.properties import SignatureProperties, decode_signature, properties_from_document

GOOD = {
    "img_signature": base64.b64encode(b"\x01" * 256).decode(),
    "img_signature_hash_method": "SHA-256",
    "img_signature_key_type": "RSA-PSS",
    "img_signature_certificate_uuid": "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a",
}


def test_parse_round_trip():
    props = SignatureProperties.from_mapping(GOOD)
    assert props.hash_method is HashMethod.SHA256
    assert props.key_type is KeyType.RSA_PSS
    assert props.signature == b"\x01" * 256
    assert props.as_dict() == GOOD


def test_signature_is_one_padded_line():
    props = SignatureProperties(b"\xff" * 100, HashMethod.SHA256, KeyType.DSA, "id")
    text = props.as_dict()["img_signature"]
    assert "\n" not in text and text.endswith("=") and text == base64.b64encode(b"\xff" * 100).decode()


@pytest.mark.parametrize("missing", list(GOOD))
def test_missing_property_is_named(missing):
    props = dict(GOOD)
    del props[missing]
    with pytest.raises(errors.PropertiesError, match=f"missing image property: {missing}"):
        SignatureProperties.from_mapping(props)


def test_empty_property_counts_as_missing():
    with pytest.raises(errors.PropertiesError, match="img_signature_key_type"):
        SignatureProperties.from_mapping({**GOOD, "img_signature_key_type": ""})


@pytest.mark.parametrize("name", ["sha-256", "SHA256", "MD5", "SHA-1", "SHA3-256"])
def test_unknown_hash_method(name):
    with pytest.raises(errors.UnsupportedAlgorithm, match="unknown hash method"):
        SignatureProperties.from_mapping({**GOOD, "img_signature_hash_method": name})


@pytest.mark.parametrize("name", ["rsa-pss", "RSA", "ECC_SECP256R1", "ED25519", "ECC_secp384r1"])
def test_unknown_key_type(name):
    with pytest.raises(errors.UnsupportedAlgorithm, match="unknown key type"):
        SignatureProperties.from_mapping({**GOOD, "img_signature_key_type": name})


def test_exact_openstack_names():
    assert [h.value for h in HashMethod] == ["SHA-224", "SHA-256", "SHA-384", "SHA-512"]
    assert [k.value for k in KeyType] == [
        "RSA-PSS", "DSA", "ECC_SECP384R1", "ECC_SECP521R1",
        "ECC_SECT409K1", "ECC_SECT409R1", "ECC_SECT571K1", "ECC_SECT571R1",
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc$def", "unexpected character '\\$'"),
        (base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode(), "URL-safe"),
        ("QUJD", None),  # valid: decodes to b"ABC"
        ("QUJ", "wrong length or padding"),
        ("QU=JD", "unexpected character|padding"),
        ("====", "misplaced"),
        ("QUJD\u00e9", "unexpected character"),
    ],
)
def test_base64_strictness(value, message):
    if message is None:
        assert decode_signature(value) == b"ABC"
        return
    with pytest.raises(errors.PropertiesError, match=message):
        decode_signature(value)


def test_wrapped_base64_is_accepted():
    raw = bytes(range(256)) * 2
    wrapped = base64.encodebytes(raw).decode()  # 76-column lines, like `base64` without -w 0
    assert "\n" in wrapped.strip()
    assert decode_signature(wrapped) == raw


def test_non_string_values_refused():
    with pytest.raises(errors.PropertiesError, match="must be a string"):
        SignatureProperties.from_mapping({**GOOD, "img_signature_certificate_uuid": 12})


def test_certificate_id_must_be_printable():
    with pytest.raises(errors.PropertiesError, match="key manager id"):
        SignatureProperties.from_mapping({**GOOD, "img_signature_certificate_uuid": "a b"})


def test_openstack_image_show_document():
    doc = {"id": "x", "name": "cirros", "properties": dict(GOOD, os_hash_algo="sha512")}
    assert SignatureProperties.from_mapping(properties_from_document(doc)).as_dict() == GOOD
    assert properties_from_document(GOOD) is GOOD
    with pytest.raises(errors.PropertiesError, match="JSON object"):
        properties_from_document(["not", "an", "object"])


def test_render_formats():
    props = SignatureProperties.from_mapping(GOOD)
    args = shlex.split(props.to_openstack())
    assert args[0::2] == ["--property"] * 4
    assert dict(a.split("=", 1) for a in args[1::2]) == GOOD
    env = dict(line.split("=", 1) for line in shlex.split(props.to_env()))
    assert env["IMG_SIGNATURE_KEY_TYPE"] == "RSA-PSS" and env["IMG_SIGNATURE"] == GOOD["img_signature"]
    assert "signature=<256 bytes>" in repr(props)
