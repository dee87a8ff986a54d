"""Strict DER / length checks on raw signature values (MalformedSignature)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from imgsign import errors
from imgsign.algorithms import KeyType
from imgsign.signature_value import check_signature_value, decode_dss_signature_strict


def test_canonical_der_accepted():
    sig = encode_dss_signature(12345678901234567890, 98765432109876543210)
    assert decode_dss_signature_strict(sig) == (12345678901234567890, 98765432109876543210)
    check_signature_value(sig, KeyType.ECC_SECP384R1, 384)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x30\x81\x06\x02\x01\x05\x02\x01\x07", "not canonical DER"),  # long-form length
        (b"\x30\x07\x02\x02\x00\x05\x02\x01\x07", "not canonical DER"),  # padded INTEGER
        (b"\x30\x06\x02\x01\x05\x02\x01\x07\x00", "trailing"),
        (b"\x30\x03\x02\x01\x05", "not a DER SEQUENCE"),  # one INTEGER only
        (b"\x04\x02\x01\x02", "not a DER SEQUENCE"),
        (b"\x30\x06\x02\x01\x05\x02\x01", "not a DER SEQUENCE"),  # truncated
        (b"garbage-not-der", "not a DER SEQUENCE"),
    ],
)
def test_malformed_der_refused(blob, message):
    with pytest.raises(errors.MalformedSignature, match=message):
        check_signature_value(blob, KeyType.DSA, 2048)


def test_zero_r_refused():
    with pytest.raises(errors.MalformedSignature, match="zero or negative"):
        check_signature_value(encode_dss_signature(0, 5), KeyType.ECC_SECP521R1, 521)


def test_rsa_length_must_match_modulus():
    check_signature_value(b"\x01" * 384, KeyType.RSA_PSS, 3072)
    with pytest.raises(errors.MalformedSignature, match="384 bytes, this one is 383"):
        check_signature_value(b"\x01" * 383, KeyType.RSA_PSS, 3072)


def test_empty_signature():
    with pytest.raises(errors.MalformedSignature, match="empty"):
        check_signature_value(b"", KeyType.RSA_PSS, 2048)
