"""Certificate chain validation on the certs-test/ PKI."""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from imgsign import errors
from imgsign.certificates import load_certificates
from imgsign.chain import TrustAnchors, load_crl, validate_chain
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
    with pytest.raises(errors.CertificateError, match="no complete certificate revocation list"):
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


# --- CRL scope (RFC 5280 §6.3): delta, partitioned and indirect CRLs are never the complete CRL ----------

DAY = datetime.timedelta(days=1)
IDP = dict(full_name=None, relative_name=None, only_contains_user_certs=False, only_contains_ca_certs=False,
           only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False)
#: An extension no one processes (a private OID), to mark critical.
UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


def scoped_crl(issuer_stem, *, revoke=(), extensions=(), entry_extensions=()):
    """A current CRL signed by ``issuer_stem`` with CRL ``extensions`` ((value, critical) pairs),
    revoking the serials of the ``revoke`` stems; ``entry_extensions`` go on each entry."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = serialization.load_pem_private_key(pki(issuer_stem + ".key").read_bytes(), None)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(cert(issuer_stem).subject)
               .last_update(now - DAY).next_update(now + 30 * DAY)
               .add_extension(x509.CRLNumber(7), critical=False))
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    for serial in revoke:
        entry = (x509.RevokedCertificateBuilder()
                 .serial_number(serial if isinstance(serial, int) else cert(serial).serial_number)
                 .revocation_date(now - DAY))
        for value, critical in entry_extensions:
            entry = entry.add_extension(value, critical=critical)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(key, hashes.SHA256())


def idp(**kw):
    return x509.IssuingDistributionPoint(**{**IDP, **kw}), True


NOT_COMPLETE = {
    "delta": [(x509.DeltaCRLIndicator(6), True)],
    "only-ca-certs": [idp(only_contains_ca_certs=True)],
    "only-attribute-certs": [idp(only_contains_attribute_certs=True)],
    "only-some-reasons": [idp(only_some_reasons=frozenset({x509.ReasonFlags.key_compromise}))],
    "indirect": [idp(indirect_crl=True)],
    "other-distribution-point": [idp(full_name=[x509.UniformResourceIdentifier("http://crl.example/p1.crl")])],
    "unknown-critical-extension": [(UNKNOWN, True)],
}


@pytest.mark.parametrize("kind", list(NOT_COMPLETE))
def test_scoped_or_delta_crl_is_not_the_complete_crl_of_a_leaf(kind):
    """Base commit: any CRL with the issuer's name and signature satisfied require_crls, so with
    only such a CRL the revoked leaf (revoked in the real, complete CRL) validated."""
    only = scoped_crl("intermediate-ca", extensions=NOT_COMPLETE[kind])
    trust = ([cert("root-ca")], [cert("intermediate-ca")])
    no_complete = r"no complete certificate revocation list from .*intermediate-ca"
    with pytest.raises(errors.CertificateError, match=no_complete):
        validate_chain(cert("leaf-revoked"), TrustAnchors(*trust, [only, crl("root-ca")], require_crls=True))
    # The complete CRL alongside it still decides: revoked.
    with pytest.raises(errors.CertificateRevoked):
        validate_chain(cert("leaf-revoked"), TrustAnchors(*trust, [only, crl("root-ca"), crl("intermediate-ca")],
                                                          require_crls=True))


def test_user_only_crl_does_not_cover_a_ca_and_ca_only_crl_covers_it():
    user_only = scoped_crl("root-ca", extensions=[idp(only_contains_user_certs=True)])
    ca_only = scoped_crl("root-ca", extensions=[idp(only_contains_ca_certs=True)])
    trust = ([cert("root-ca")], [cert("intermediate-ca")])
    leaf_crl = crl("intermediate-ca")
    with pytest.raises(errors.CertificateError, match="no complete .* covering .*intermediate-ca.*only end-entity"):
        validate_chain(cert("leaf-rsa-pss"), TrustAnchors(*trust, [user_only, leaf_crl], require_crls=True))
    validate_chain(cert("leaf-rsa-pss"), TrustAnchors(*trust, [ca_only, leaf_crl], require_crls=True))
    # and a leaf's issuer with a user-only CRL is covered
    validate_chain(cert("leaf-rsa-pss"), TrustAnchors(
        *trust, [ca_only, scoped_crl("intermediate-ca", extensions=[idp(only_contains_user_certs=True)])],
        require_crls=True))


def test_distribution_point_crl_covers_only_the_certificates_that_name_it():
    url = x509.UniformResourceIdentifier("http://crl.example/p1.crl")
    partition = scoped_crl("intermediate-ca", extensions=[idp(full_name=[url])])
    # leaf-rsa-pss has no cRLDistributionPoints, so the partition is not its CRL
    with pytest.raises(errors.CertificateError, match="distribution point"):
        validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")],
                                                          [partition, crl("root-ca")], require_crls=True))


@pytest.mark.parametrize("entry_extension", [
    pytest.param((UNKNOWN, True), id="unknown-critical-entry-extension"),
    pytest.param((x509.CertificateIssuer([x509.DirectoryName(x509.Name.from_rfc4514_string("CN=other CA"))]), True),
                 id="certificate-issuer"),
])
def test_crl_with_unprocessed_entry_extensions_is_not_complete(entry_extension):
    other = scoped_crl("intermediate-ca", revoke=[0x7777], entry_extensions=[entry_extension])
    with pytest.raises(errors.CertificateError, match="no complete certificate revocation list"):
        validate_chain(cert("leaf-revoked"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")],
                                                          [other, crl("root-ca")], require_crls=True))


@pytest.mark.parametrize("kind", list(NOT_COMPLETE))
def test_revocation_in_a_scoped_or_delta_crl_still_counts(kind):
    """Decision: an entry the issuer signed for the certificate's serial means revoked, whatever the
    CRL's scope (serials are unique per issuer; this can only refuse more)."""
    scoped = scoped_crl("intermediate-ca", revoke=["leaf-rsa-pss"], extensions=NOT_COMPLETE[kind])
    with pytest.raises(errors.CertificateRevoked, match="leaf-rsa-pss"):
        validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [scoped]))


def test_indirect_crl_entries_for_other_issuers_are_theirs():
    """After a certificateIssuer entry extension the serials are another CA's (RFC 5280 §5.3.3)."""
    other = x509.CertificateIssuer([x509.DirectoryName(x509.Name.from_rfc4514_string("CN=other CA"))])
    indirect = scoped_crl("intermediate-ca", revoke=["leaf-rsa-pss"], extensions=[idp(indirect_crl=True)],
                          entry_extensions=[(other, True)])
    validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [indirect]))
    own = x509.CertificateIssuer([x509.DirectoryName(cert("intermediate-ca").subject)])
    mine = scoped_crl("intermediate-ca", revoke=["leaf-rsa-pss"], extensions=[idp(indirect_crl=True)],
                      entry_extensions=[(own, True)])
    with pytest.raises(errors.CertificateRevoked):
        validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [mine]))


def test_remove_from_crl_is_not_a_revocation():
    lifted = scoped_crl("intermediate-ca", revoke=["leaf-rsa-pss"], extensions=NOT_COMPLETE["delta"],
                        entry_extensions=[(x509.CRLReason(x509.ReasonFlags.remove_from_crl), False)])
    validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [lifted]))


def test_complete_crl_with_reasons_and_noncritical_extensions_is_complete():
    complete = scoped_crl("intermediate-ca", revoke=[0x7777], extensions=[(UNKNOWN, False)],
                          entry_extensions=[(x509.CRLReason(x509.ReasonFlags.superseded), False)])
    validate_chain(cert("leaf-rsa-pss"), TrustAnchors([cert("root-ca")], [cert("intermediate-ca")],
                                                      [complete, crl("root-ca")], require_crls=True))
