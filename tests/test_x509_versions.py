"""A certificate or CRL whose version RFC 5280 lacks (not v1-v3, not v1-v2) is refused with a clear error.

``cryptography`` raises ``InvalidVersion`` for them, which is no ValueError: found by the CRL fuzz test
(tests/test_fuzz_certificate_reply.py) as a traceback, and the same held for certificates and OCSP
responses."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import decoder, encoder
from pyasn1_modules import rfc5280

import pytest

from imgsign import errors
from imgsign.certificates import load_certificate, load_certificates
from imgsign.chain import load_crl
from tests.conftest import pki, run_cli


def certificate_with_version(version: int) -> bytes:
    der = x509.load_pem_x509_certificate(pki("intermediate-ca.pem").read_bytes()).public_bytes(Encoding.DER)
    cert, _ = decoder.decode(der, asn1Spec=rfc5280.Certificate())
    cert["tbsCertificate"]["version"] = version
    return encoder.encode(cert)


def crl_with_version(version: int) -> bytes:
    der = x509.load_pem_x509_crl(pki("intermediate-ca.crl.pem").read_bytes()).public_bytes(Encoding.DER)
    crl, _ = decoder.decode(der, asn1Spec=rfc5280.CertificateList())
    crl["tbsCertList"]["version"] = version
    return encoder.encode(crl)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=3, max_value=2 ** 31))
def test_a_certificate_of_an_unknown_version_is_refused(version: int) -> None:
    der = certificate_with_version(version)
    with pytest.raises(errors.CertificateError):
        load_certificate(der)
    with pytest.raises(errors.CertificateError):
        load_certificates(der)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=2 ** 31))
def test_a_crl_of_an_unknown_version_is_refused(version: int) -> None:
    with pytest.raises(errors.CertificateError):
        load_crl(crl_with_version(version))


def test_the_cli_says_so(tmp_path) -> None:
    path = tmp_path / "v10.der"
    path.write_bytes(certificate_with_version(9))
    result = run_cli("cert", "store", path, env={"IMGSIGN_KEYSTORE": str(tmp_path / "k.sqlite3"),
                                                 "IMGSIGN_CONFIG": "", "HOME": str(tmp_path)})
    assert result.code == errors.CertificateError.exit_code and "Traceback" not in result.stderr, result
    assert "not a readable" in result.stderr
