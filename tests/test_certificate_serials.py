"""Certificates RFC 5280 forbids, a serial number that is zero or negative, are refused now, by every loader.

``cryptography`` 51 only warns about them ("will raise in a future release"); imgsign refuses them with a
certificate error (exit 20) wherever a certificate enters: a file, a PEM bundle, the key manager.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign._internal import asn1
from imgsign.certificates import load_certificate, load_certificates
from tests.conftest import CERT_UUID, key_of, pki, run_cli

LEAF = x509.load_pem_x509_certificate(pki("leaf-rsa-pss.pem").read_bytes())
CA_KEY = serialization.load_pem_private_key(pki("intermediate-ca.key").read_bytes(), None)


def der_integer(value: int) -> bytes:
    """Minimal two's-complement DER INTEGER (pyasn1 0.6 pads some negative values, which DER forbids)."""
    size = ((value if value >= 0 else ~value).bit_length() + 8) // 8
    return asn1.der_element(0x02, value.to_bytes(size, "big", signed=True))


def with_serial(serial: int) -> bytes:
    """The test PKI's RSA-PSS leaf with another serial number, signed again by its issuer (DER)."""
    tbs = asn1.der_sequence_elements(LEAF.tbs_certificate_bytes)
    tbs[1] = der_integer(serial)
    to_be_signed = asn1.der_sequence(*tbs)
    signature = CA_KEY.sign(to_be_signed, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    algorithm = asn1.der_sequence_elements(LEAF.public_bytes(serialization.Encoding.DER))[1]
    return asn1.der_signed(to_be_signed, algorithm, signature)


def pem(der: bytes) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


def test_the_builder_is_right():
    """The same serial number gives back the original certificate's fields (only the signature differs)."""
    same = x509.load_der_x509_certificate(with_serial(LEAF.serial_number))
    assert same.tbs_certificate_bytes == LEAF.tbs_certificate_bytes
    assert load_certificate(with_serial(7)).serial_number == 7


@pytest.mark.parametrize("serial", [0, -1, -(2**64)])
def test_every_loader_refuses(serial):
    der = with_serial(serial)
    for data in (der, pem(der)):
        with pytest.raises(errors.CertificateError, match="serial number (that )?is zero or negative.*RFC 5280"):
            load_certificate(data)
        with pytest.raises(errors.CertificateError, match="serial number (that )?is zero or negative"):
            load_certificates(data)
    with pytest.raises(errors.CertificateError, match="serial number (that )?is zero or negative"):
        load_certificates(pki("root-ca.pem").read_bytes() + pem(der))  # anywhere in a bundle


@settings(max_examples=60, deadline=None)
@given(serial=st.integers(min_value=-(2**159), max_value=2**159 - 1))
def test_positive_serials_load_and_others_are_refused(serial):
    der = with_serial(serial)
    if serial > 0:
        assert load_certificate(der).serial_number == serial
    else:
        with pytest.raises(errors.CertificateError, match="serial number (that )?is zero or negative"):
            load_certificate(der)


def test_the_command_line_refuses_them_as_certificate_errors(tmp_path):
    bad = tmp_path / "zero.pem"
    bad.write_bytes(pem(with_serial(0)))
    image = tmp_path / "disk.img"
    image.write_bytes(b"image" * 1000)
    props = tmp_path / "props.json"
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
    assert signed.code == 0, signed
    props.write_text(signed.stdout)
    config = tmp_path / "imgsign.conf"
    config.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'ks'}\n")
    env = {"IMGSIGN_CONFIG": str(config)}
    for args in (("verify", image, "--properties", props, "--cert", bad),
                 ("verify", image, "--properties", props, "--cert", pki("leaf-rsa-pss.pem"), "--trusted-file", bad),
                 ("cert", "store", bad),
                 ("sign", image, "--key", key_of("RSA-PSS"), "--cert", bad)):
        refused = run_cli(*args, env=env)
        assert refused.code == errors.CertificateError.exit_code, refused
        assert "is zero or negative, which RFC 5280" in refused.stderr, refused


def test_a_stored_certificate_with_a_zero_serial_is_refused_when_fetched(tmp_path):
    """A key manager that holds such a certificate (stored by anyone) does not get it past imgsign."""
    from castellan import key_manager
    from castellan.common.objects import x_509
    from oslo_config import cfg
    from oslo_context import context as oslo_context

    config = tmp_path / "imgsign.conf"
    config.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'ks'}\n"
                      f"\n[imgsign]\nproject_id = demo\n")
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[str(config)])
    uuid = key_manager.API(conf).store(oslo_context.RequestContext(project_id="demo"), x_509.X509(with_serial(-5)))
    image = tmp_path / "disk.img"
    image.write_bytes(b"image" * 1000)
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", uuid)
    assert signed.code == 0, signed
    props = tmp_path / "props.json"
    props.write_text(json.dumps(signed.json()))
    refused = run_cli("verify", image, "--properties", props, env={"IMGSIGN_CONFIG": str(config)})
    assert refused.code == errors.CertificateError.exit_code, refused
    assert "is zero or negative, which RFC 5280" in refused.stderr, refused


def test_a_non_positive_serial_in_an_extension_is_refused_too():
    """authorityKeyIdentifier's authorityCertSerialNumber: cryptography warns when the extension is read,
    so imgsign reads every extension at load time and refuses, in certificates and in CRLs."""
    import datetime

    from imgsign.chain import load_crl

    ca = x509.load_pem_x509_certificate(pki("intermediate-ca.pem").read_bytes())
    aki = x509.AuthorityKeyIdentifier(b"\x01" * 20, [x509.DirectoryName(ca.issuer)], 0)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(LEAF.subject).issuer_name(ca.subject)
            .public_key(LEAF.public_key()).serial_number(4242).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).add_extension(aki, critical=False)
            .sign(CA_KEY, hashes.SHA256()))  # type: ignore[arg-type]
    with pytest.raises(errors.CertificateError, match="refusing a certificate: it holds a serial number that is zero"):
        load_certificate(cert.public_bytes(serialization.Encoding.PEM))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now)
           .next_update(now + datetime.timedelta(days=1)).add_extension(aki, critical=False)
           .sign(CA_KEY, hashes.SHA256()))  # type: ignore[arg-type]
    with pytest.raises(errors.CertificateError, match="refusing a certificate revocation list: it holds a serial"):
        load_crl(crl.public_bytes(serialization.Encoding.PEM))


def test_a_certificate_whose_extensions_do_not_parse_is_refused_when_loaded():
    """A duplicated extension (RFC 5280 4.2: at most one instance of each) made cryptography raise
    DuplicateExtension, no ValueError, wherever the extensions were first read: an internal error. Found
    by the fuzz test of the loaders once they read every extension."""
    tbs = asn1.der_sequence_elements(LEAF.tbs_certificate_bytes)
    start, _ = asn1._der_header(tbs[-1], 0)  # [3] EXPLICIT Extensions
    extensions = asn1.der_sequence_elements(tbs[-1][start:])
    tbs[-1] = asn1.der_element(0xA3, asn1.der_sequence(*extensions, extensions[0]))
    to_be_signed = asn1.der_sequence(*tbs)
    signature = CA_KEY.sign(to_be_signed, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    algorithm = asn1.der_sequence_elements(LEAF.public_bytes(serialization.Encoding.DER))[1]
    der = asn1.der_signed(to_be_signed, algorithm, signature)
    for loader in (load_certificate, load_certificates):
        with pytest.raises(errors.CertificateError, match="has malformed extensions"):
            loader(pem(der))


def test_refusals_hold_across_threads_and_leave_every_other_warning_alone():
    """``audit --jobs`` loads certificates on several threads: each bad one is refused, each good one loads,
    no serial warning escapes, a warning of another kind raised meanwhile on another thread is still
    shown, and the filter list is as it was afterwards (a per-call ``catch_warnings`` restored it under
    the other threads' feet)."""
    import threading
    import warnings

    from cryptography.utils import CryptographyDeprecationWarning

    bad, good = with_serial(0), with_serial(99)
    LOADS = 40
    before = list(warnings.filters)
    failures: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        start = threading.Barrier(6)

        def loader() -> None:
            start.wait()
            for _ in range(LOADS):
                try:
                    load_certificate(bad)
                    failures.append("a zero serial loaded")
                except errors.CertificateError:
                    pass
                if load_certificate(good).serial_number != 99:
                    failures.append("a good certificate changed")

        def bystander() -> None:
            start.wait()
            for _ in range(40):
                warnings.warn("a bystander's deprecation", CryptographyDeprecationWarning, stacklevel=1)

        threads = [threading.Thread(target=loader) for _ in range(5)] + [threading.Thread(target=bystander)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        inside = list(warnings.filters)
    assert failures == []
    assert inside[1:] == before and inside[0][0] == "always"  # only the test's own filter: none left behind
    messages = {str(w.message) for w in seen}
    assert messages == {"a bystander's deprecation"}, messages
    assert sum(str(w.message) == "a bystander's deprecation" for w in seen) == 40
    assert warnings.filters == before
