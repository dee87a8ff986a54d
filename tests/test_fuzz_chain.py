"""Fuzzing the certificate and CRL loaders: every input loads or raises an ImgsignError.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200, a few seconds); run longer by hand,
e.g. ``IMGSIGN_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_chain.py``.
"""

from __future__ import annotations

import datetime
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.certificates import load_certificate
from imgsign.certificates import load_certificates
from imgsign.chain import TrustAnchors, load_crl, validate_chain
from tests.conftest import pki

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [pki(name).read_bytes() for name in (
    "intermediate-ca.crl.pem", "root-ca.crl.pem", "ecdsa-intermediate-ca.crl.pem", "leaf-rsa-pss.pem",
    "leaf-rsa-pss.der", "chain.pem", "leaf-ecc-sect571r1.pem", "intermediate-pss-ca.pem")]
SEEDS += [x509.load_pem_x509_crl(SEEDS[0]).public_bytes(serialization.Encoding.DER)]


@st.composite
def mutated(draw) -> bytes:
    """A test-PKI certificate, bundle or CRL (PEM or DER) with bytes flipped, cut, inserted or spliced."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:] = draw(st.sampled_from(SEEDS))[at:]
    return bytes(data)


INPUTS = st.one_of(st.binary(max_size=512), mutated(),
                   st.builds(lambda b: b"-----BEGIN X509 CRL-----\n" + b, st.binary(max_size=256)),
                   st.builds(lambda b: b"-----BEGIN CERTIFICATE-----\n" + b, st.binary(max_size=256)))


def loads_or_refuses(loader, data: bytes) -> object:
    try:
        return loader(data)
    except errors.ImgsignError:
        return None


@FUZZ
@given(INPUTS)
def test_load_crl(data):
    loads_or_refuses(load_crl, data)


@FUZZ
@given(INPUTS)
def test_load_certificates(data):
    found = loads_or_refuses(load_certificates, data)
    assert found is None or all(isinstance(c, x509.Certificate) for c in found)


@FUZZ
@given(INPUTS)
def test_load_certificate(data):
    loads_or_refuses(load_certificate, data)


# Validly signed CRLs whose extensions hold arbitrary bytes: the loader and the revocation check
# (which reads the issuingDistributionPoint, deltaCRLIndicator, certificateIssuer, reason) must refuse
# them cleanly, never crash.
CRL_OIDS = [ExtensionOID.ISSUING_DISTRIBUTION_POINT, ExtensionOID.DELTA_CRL_INDICATOR, ExtensionOID.CRL_NUMBER,
            ExtensionOID.FRESHEST_CRL, ExtensionOID.AUTHORITY_KEY_IDENTIFIER, x509.ObjectIdentifier("1.2.3.4")]
ENTRY_OIDS = [CRLEntryExtensionOID.CERTIFICATE_ISSUER, CRLEntryExtensionOID.CRL_REASON,
              CRLEntryExtensionOID.INVALIDITY_DATE, x509.ObjectIdentifier("1.2.3.5")]
KEY = serialization.load_pem_private_key(pki("intermediate-ca.key").read_bytes(), None)
ISSUER = x509.load_pem_x509_certificate(pki("intermediate-ca.pem").read_bytes())
ROOT = x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())
LEAF = x509.load_pem_x509_certificate(pki("leaf-rsa-pss.pem").read_bytes())
DER_VALUES = st.one_of(st.binary(max_size=48), st.sampled_from([
    b"\x30\x00", b"\x30\x03\x81\x01\xff", b"\x30\x03\x82\x01\xff", b"\x30\x03\x84\x01\xff", b"\x30\x02\x83\x00",
    b"\x02\x01\x05", b"\x0a\x01\x08", b"\x0a\x01\x63", b"\x30\x06\xa4\x04\x30\x02\x31\x00"]))


@FUZZ
@given(crl_extensions=st.lists(st.tuples(st.sampled_from(CRL_OIDS), DER_VALUES, st.booleans()), max_size=3,
                               unique_by=lambda e: e[0]),
       entry_extensions=st.lists(st.tuples(st.sampled_from(ENTRY_OIDS), DER_VALUES, st.booleans()), max_size=3,
                                 unique_by=lambda e: e[0]),
       serial=st.sampled_from([LEAF.serial_number, 0x4242]))
def test_signed_crl_with_arbitrary_extension_values(crl_extensions, entry_extensions, serial):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ISSUER.subject)
               .last_update(now - datetime.timedelta(days=1)).next_update(now + datetime.timedelta(days=1)))
    for oid, value, critical in crl_extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical)
    entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
    for oid, value, critical in entry_extensions:
        entry = entry.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical)
    data = builder.add_revoked_certificate(entry.build()).sign(KEY, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER)
    crl = loads_or_refuses(load_crl, data)
    if crl is None:
        return
    for require_crls in (False, True):
        try:
            validate_chain(LEAF, TrustAnchors([ROOT], [ISSUER], [crl], require_crls=require_crls))
        except errors.ImgsignError:
            pass


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_load(seed):
    """The unmutated seeds are valid (so the mutations start from real structures)."""
    data = SEEDS[seed]
    is_crl = b"X509 CRL" in data[:40] or seed == len(SEEDS) - 1
    assert (load_crl if is_crl else load_certificates)(data) is not None
