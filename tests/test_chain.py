"""Certificate chain validation on the certs-test/ PKI."""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from imgsign import errors
from imgsign.chain import TrustAnchors, load_certificates, load_crl, validate_chain
from imgsign.policy import Policy
from tests.conftest import LEAVES, pki


def cert(stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki(stem + ".pem").read_bytes())


def crl(stem: str) -> x509.CertificateRevocationList:
    return load_crl(pki(stem + ".crl.pem").read_bytes())


ALL_CRLS = ("root-ca", "intermediate-ca", "intermediate-revoked-ca")


def anchors(trusted, intermediates=(), crls=ALL_CRLS, **kw) -> TrustAnchors:
    return TrustAnchors([cert(s) for s in trusted], [cert(s) for s in intermediates], [crl(s) for s in crls], **kw)


def subjects(path):
    return [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value.split()[-1] for c in path]


@pytest.mark.parametrize("key_type", list(LEAVES))
def test_three_level_chain_for_every_leaf(key_type):
    path = validate_chain(cert(LEAVES[key_type]), anchors(["root-ca"], ["intermediate-ca"]))
    assert subjects(path) == [LEAVES[key_type], "intermediate-ca", "root-ca"]


def test_trusted_intermediate_is_enough_like_nova():
    path = validate_chain(cert("leaf-rsa-pss"), anchors(["intermediate-ca"]))
    assert subjects(path) == ["leaf-rsa-pss", "intermediate-ca"]


def test_pss_and_ecdsa_signed_issuers():
    assert len(validate_chain(cert("leaf-under-pss-intermediate"), anchors(["root-ca"], ["intermediate-pss-ca"]))) == 3
    path = validate_chain(cert("leaf-under-ecdsa-chain"), anchors(["ecdsa-root-ca"], ["ecdsa-intermediate-ca"]))
    assert subjects(path) == ["leaf-under-ecdsa-chain", "ecdsa-intermediate-ca", "ecdsa-root-ca"]


def test_missing_intermediate():
    with pytest.raises(errors.UntrustedCertificate, match="missing intermediate"):
        validate_chain(cert("leaf-rsa-pss"), anchors(["root-ca"]))


def test_untrusted_root():
    with pytest.raises(errors.UntrustedCertificate, match="leaf-untrusted"):
        validate_chain(cert("leaf-untrusted"), anchors(["root-ca"], ["intermediate-ca", "untrusted-root-ca"]))


@pytest.mark.parametrize("trusted, intermediates", [(["root-ca"], ["intermediate-expired-ca"]),
                                                    (["intermediate-expired-ca"], [])])
def test_expired_intermediate(trusted, intermediates):
    with pytest.raises(errors.UntrustedCertificate, match="not valid at validation time"):
        validate_chain(cert("leaf-under-expired-intermediate"), anchors(trusted, intermediates))


@pytest.mark.parametrize("trusted, intermediates", [(["root-ca"], ["not-a-ca"]), (["not-a-ca"], [])])
def test_issuer_without_ca_flag(trusted, intermediates):
    with pytest.raises(errors.UntrustedCertificate, match="basicConstraints.cA"):
        validate_chain(cert("leaf-issuer-not-ca"), anchors(trusted, intermediates))


def test_leaf_without_digital_signature_is_refused_by_the_verifier_not_the_chain():
    """The chain itself is fine; the signing-certificate check (imgsign.certificates) refuses it."""
    from imgsign.certificates import check_signing_certificate

    validate_chain(cert("leaf-no-digital-signature"), anchors(["root-ca"], ["intermediate-ca"]))
    with pytest.raises(errors.CertificateError, match="digitalSignature"):
        check_signing_certificate(cert("leaf-no-digital-signature"))


def test_expired_leaf():
    with pytest.raises(errors.UntrustedCertificate, match="leaf-expired.*not valid"):
        validate_chain(cert("leaf-expired"), anchors(["root-ca"], ["intermediate-ca"]))


def test_revoked_leaf():
    with pytest.raises(errors.CertificateRevoked, match="leaf-revoked.*key_compromise"):
        validate_chain(cert("leaf-revoked"), anchors(["root-ca"], ["intermediate-ca"]))
    # Without the CRL nothing is known about it.
    validate_chain(cert("leaf-revoked"), anchors(["root-ca"], ["intermediate-ca"], crls=()))


def test_revoked_intermediate():
    with pytest.raises(errors.CertificateRevoked, match="intermediate-revoked-ca"):
        validate_chain(cert("leaf-under-revoked-intermediate"), anchors(["root-ca"], ["intermediate-revoked-ca"]))


def test_revoked_trusted_intermediate_is_caught_when_its_issuer_is_known():
    with pytest.raises(errors.CertificateRevoked, match="intermediate-revoked-ca"):
        validate_chain(cert("leaf-under-revoked-intermediate"),
                       anchors(["intermediate-revoked-ca"], ["root-ca"]))


def test_cross_signed_cycle_terminates_quickly():
    start = time.monotonic()
    with pytest.raises(errors.UntrustedCertificate, match="cross-signed"):
        validate_chain(cert("leaf-under-cross"), anchors(["root-ca"], ["cross-a-ca", "cross-b-ca"]))
    assert time.monotonic() - start < 1.0
    # Trusting one of them is a valid (two- or three-level) chain.
    assert subjects(validate_chain(cert("leaf-under-cross"), anchors(["cross-b-ca"], ["cross-a-ca"])))[-1] == "cross-b-ca"


def test_depth_limit():
    with pytest.raises(errors.UntrustedCertificate, match="within 0 intermediate level"):
        validate_chain(cert("leaf-rsa-pss"), anchors(["root-ca"], ["intermediate-ca"], max_depth=0))
    assert len(validate_chain(cert("leaf-rsa-pss"), anchors(["root-ca"], ["intermediate-ca"], max_depth=1))) == 3
    assert len(validate_chain(cert("leaf-rsa-pss"), anchors(["intermediate-ca"], max_depth=0))) == 2


def test_no_trusted_certificates():
    with pytest.raises(errors.UntrustedCertificate, match="no trusted"):
        validate_chain(cert("leaf-rsa-pss"), TrustAnchors([]))


def test_required_crls():
    validate_chain(cert("leaf-rsa-pss"), anchors(["root-ca"], ["intermediate-ca"], require_crls=True))
    with pytest.raises(errors.CertificateError, match="no certificate revocation list"):
        validate_chain(cert("leaf-rsa-pss"), anchors(["root-ca"], ["intermediate-ca"], crls=(), require_crls=True))


def _crl_signed_by(key_stem, issuer_stem, last_update, next_update):
    key = serialization.load_pem_private_key(pki(key_stem + ".key").read_bytes(), None)
    return (x509.CertificateRevocationListBuilder().issuer_name(cert(issuer_stem).subject)
            .last_update(last_update).next_update(next_update).sign(key, hashes.SHA256()))


def test_stale_crl_fails_closed():
    day = datetime.timedelta(days=1)
    now = datetime.datetime.now(datetime.timezone.utc)
    stale = _crl_signed_by("intermediate-ca", "intermediate-ca", now - 30 * day, now - day)
    with pytest.raises(errors.CertificateError, match="out of date"):
        validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [stale]))


def test_forged_crl_fails_closed():
    """A CRL naming the intermediate as issuer but signed by another key is an error, not ignored."""
    now = datetime.datetime.now(datetime.timezone.utc)
    forged = _crl_signed_by("untrusted-root-ca", "intermediate-ca", now, now + datetime.timedelta(days=30))
    bad = TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [forged])
    with pytest.raises(errors.CertificateError, match="does not carry its signature"):
        validate_chain(cert("leaf-rsa-pss"), bad)


def test_loaders():
    assert len(load_certificates(pki("chain.pem").read_bytes())) == 2
    assert len(load_certificates(pki("leaf-rsa-pss.der").read_bytes())) == 1
    with pytest.raises(errors.CertificateError):
        load_certificates(b"junk")
    with pytest.raises(errors.CertificateError):
        load_crl(b"junk")
