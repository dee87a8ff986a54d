"""Fuzzing ``cert store --key``'s reading of a CA's reply, and the use of any certificate that loads: every
input is stored (used) or refused with an ImgsignError.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples (default 200); see tests/test_fuzz_chain.py.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from imgsign import errors
from imgsign.certificates import (
    certificate_for_key,
    certificate_public_key,
    certificate_spki_der,
    check_signing_certificate,
    describe,
    load_certificate,
)
from imgsign.certificates import load_certificates
from imgsign.policy import Policy
from tests.conftest import pki
from tests.test_fuzz_chain import FUZZ, INPUTS, mutated

#: The key of leaf-rsa-pss, which is in several seeds (alone, DER, and in chain.pem), so mutations often keep it.
KEY = certificate_public_key(load_certificate(pki("leaf-rsa-pss.pem").read_bytes()))
#: A CA's reply: its chain, then the certificate (or the certificate, then the chain).
REPLY = pki("chain.pem").read_bytes() + pki("leaf-rsa-pss.pem").read_bytes()
LEAF = pki("leaf-rsa-pss.pem").read_bytes()
REPLIES = st.one_of(INPUTS, st.builds(lambda chain, leaf: chain + leaf, mutated(), st.just(LEAF)),
                    st.builds(lambda leaf, chain: leaf + chain, st.just(LEAF), mutated()))


@FUZZ
@given(REPLIES)
def test_the_certificate_for_a_key_in_a_cas_reply(data):
    try:
        cert = certificate_for_key(load_certificates(data), KEY, "the key")
    except errors.ImgsignError:
        return
    assert certificate_public_key(cert).spki_der() == KEY.spki_der()


def test_the_reply_seeds_are_found():
    for data in (pki("leaf-rsa-pss.pem").read_bytes(), pki("leaf-rsa-pss.der").read_bytes(), REPLY):
        assert certificate_for_key(load_certificates(data), KEY, "the key").subject.rfc4514_string().find("leaf") > 0


@FUZZ
@given(REPLIES)
def test_a_certificate_that_loads_can_be_named_and_checked(data):
    """What the commands do with a certificate once loaded (name it, read its key, check its usage)
    works or raises an ImgsignError: ``cryptography`` parses parts lazily, the loaders must not."""
    for loader in (load_certificates, lambda d: [load_certificate(d)]):
        try:
            found = loader(data)
        except errors.ImgsignError:
            continue
        for cert in found:
            describe(cert)
            cert.issuer.rfc4514_string()
            for use in (certificate_spki_der, certificate_public_key,
                        lambda c: check_signing_certificate(c, Policy(ignore_certificate_dates=True))):
                try:
                    use(cert)
                except errors.ImgsignError:
                    pass


def test_a_certificate_with_a_malformed_name_is_refused_when_read(tmp_path):
    """Found by the fuzz test above: a certificate whose subject is not valid UTF-8 loaded, then
    ``cert store`` crashed naming it (exit 1, "internal error")."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.conftest import run_cli

    der = bytearray(x509.load_pem_x509_certificate(pki("intermediate-ca.pem").read_bytes()).public_bytes(Encoding.DER))
    subject_o = der.find(b"NOT FOR", der.find(b"NOT FOR") + 1)  # the issuer's O comes first, then the subject's
    der[subject_o + 2] = 0xE0  # not UTF-8 in a UTF8String
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    for data in (bytes(der), pem):
        for loader in (load_certificate, load_certificates):
            with pytest.raises(errors.CertificateError, match="not a readable"):
                loader(data)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(pem)
    stored = run_cli("cert", "store", bad, env={"IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3"), "IMGSIGN_CONFIG": ""})
    assert stored.code == errors.CertificateError.exit_code and "not a readable" in stored.stderr, stored


@FUZZ
@given(INPUTS)
def test_a_crl_that_loads_can_be_named_and_read(data):
    """The sibling for CRLs: what ``crl store``/``crl list`` and the revocation check read of a loaded CRL."""
    from imgsign.chain import crl_limits, load_crl

    try:
        crl = load_crl(data)
    except errors.ImgsignError:
        return
    crl.issuer.rfc4514_string()
    crl.last_update_utc, crl.next_update_utc, len(crl)  # noqa: B018
    crl_limits(crl)
    for entry in crl:
        entry.serial_number, entry.revocation_date_utc  # noqa: B018


def test_a_crl_with_a_malformed_issuer_is_refused_when_read(tmp_path):
    """``crl store`` crashed naming such a CRL (exit 1, "internal error")."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.chain import load_crl
    from tests.conftest import run_cli

    der = bytearray(x509.load_pem_x509_crl(pki("intermediate-ca.crl.pem").read_bytes()).public_bytes(Encoding.DER))
    der[der.find(b"NOT FOR") + 2] = 0xE0  # not UTF-8 in the issuer's UTF8String
    with pytest.raises(errors.CertificateError, match="not a readable certificate revocation list"):
        load_crl(bytes(der))
    bad = tmp_path / "bad.crl"
    bad.write_bytes(bytes(der))
    stored = run_cli("crl", "store", bad, env={"IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3"), "IMGSIGN_CONFIG": ""})
    assert stored.code == errors.CertificateError.exit_code and "not a readable" in stored.stderr, stored
