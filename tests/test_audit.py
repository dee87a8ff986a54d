"""imgsign.audit: one image record, real test-PKI certificates, every verdict the audit can reach."""

from __future__ import annotations

import datetime
import json
import os

import pytest

from imgsign import errors, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.audit import AuditPolicy, ChainStatus, DataStatus, ImageReport, assess
from imgsign.certificates import load_certificate
from imgsign.chain import TrustAnchors, load_crl
from imgsign.policy import Policy
from tests.conftest import pki

DATA = os.urandom(512 * 1024 + 11)
STEMS = ("leaf-rsa-pss", "leaf-ecc-secp384r1", "leaf-expired", "leaf-untrusted", "leaf-revoked",
         "leaf-no-digital-signature", "leaf-rsa-1024")
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


def lookup(cert_id: str) -> bytes:
    """The key manager: the test PKI by file stem."""
    if cert_id not in STEMS:
        raise errors.ObjectNotFound(f"test store: no certificate {cert_id}")
    return pki(cert_id + ".pem").read_bytes()


def record(stem: str | None, data: bytes = DATA, **extra: object) -> dict[str, object]:
    """A Glance image record, signed by the test PKI's ``stem`` (unsigned for None)."""
    image: dict[str, object] = {"id": f"id-{stem}", "name": f"image {stem}", "status": "active", "owner": "p1",
                                "disk_format": "raw", "size": len(data)}
    if stem is not None:
        key = load_private_key(pki(stem + ".key").read_bytes())
        image.update(sign([data], key, stem, HashMethod.SHA256, policy=Policy(allow_weak_keys=True)).as_dict())
    return {**image, **extra}


def anchors(**options: object) -> TrustAnchors:
    return TrustAnchors([load_certificate(pki("root-ca.pem").read_bytes())],
                        [load_certificate(pki("intermediate-ca.pem").read_bytes())],
                        [load_crl(pki(n).read_bytes()) for n in ("intermediate-ca.crl.pem", "root-ca.crl.pem")],
                        **options)  # type: ignore[arg-type]


def audit(image: dict[str, object], *, at: datetime.datetime = NOW, data: bytes | None = None,
          **options: object) -> ImageReport:
    policy = AuditPolicy(options.pop("anchors", anchors()), Policy(at=at), **options)  # type: ignore[arg-type]
    assessment = assess(image, lookup, policy)
    report = assessment.report if data is None else assessment.verify_data(lambda: [data])
    json.dumps(report.as_dict())  # always serialisable
    return report


def reasons(report: ImageReport) -> list[str]:
    return [p.reason for p in report.failures]


def test_signed_valid_trusted():
    report = audit(record("leaf-rsa-pss"), data=DATA)
    assert report.passed and report.signed and report.properties_problem is None
    assert (report.key_type, report.hash_method) == ("RSA-PSS", "SHA-256")
    cert = report.certificate
    assert cert is not None and cert.id == "leaf-rsa-pss" and "leaf" in (cert.subject or "").lower()
    assert cert.not_after == datetime.datetime(2075, 1, 1, tzinfo=datetime.timezone.utc)
    assert cert.days_left == (cert.not_after - NOW).days and not cert.expires_soon and cert.problem is None
    assert report.chain.status is ChainStatus.TRUSTED and len(report.chain.path) == 3
    assert report.data.status is DataStatus.VERIFIED and report.data.size == len(DATA)
    as_dict = report.as_dict()
    assert as_dict["passed"] is True and as_dict["certificate"]["not_after"] == "2075-01-01T00:00:00Z"
    assert as_dict["chain"]["status"] == "trusted" and as_dict["data"]["status"] == "verified"


def test_without_download_the_data_is_not_checked():
    report = audit(record("leaf-ecc-secp384r1"))
    assert report.passed and report.data.status is DataStatus.NOT_CHECKED


def test_without_trust_anchors_the_chain_is_not_checked():
    report = audit(record("leaf-untrusted"), anchors=None)
    assert report.passed and report.chain.status is ChainStatus.NOT_CHECKED


def test_unsigned():
    report = audit(record(None), data=DATA)
    assert not report.signed and reasons(report) == ["unsigned-image"]
    assert report.failures[0].exit_code == errors.UnsignedImage.exit_code
    assert report.data.status is DataStatus.SKIPPED and report.certificate is None
    allowed = audit(record(None), allow_unsigned=True)
    assert allowed.passed and not allowed.signed


@pytest.mark.parametrize("change, message", [
    ({"img_signature": "not base64!"}, "img_signature is not valid base64: unexpected character '!'"),
    ({"img_signature_hash_method": "MD5"}, "MD5"),
    ({"img_signature_key_type": None}, "missing image property: img_signature_key_type"),
    ({"img_signature_certificate_uuid": "a b"}, "must be a key manager id"),
    ({"img_signature": 12}, "must be a string, not int"),
])
def test_malformed_properties(change, message):
    report = audit(record("leaf-rsa-pss", **change), data=DATA)
    problem = report.properties_problem
    assert problem is not None and message in problem.message and report.failures == (problem,)
    assert problem.exit_code in (errors.PropertiesError.exit_code, errors.UnsupportedAlgorithm.exit_code)
    assert report.data.status is DataStatus.SKIPPED and report.certificate is None


def test_partial_set_of_properties_is_malformed_not_unsigned():
    report = audit(record(None, img_signature_hash_method="SHA-256"))
    assert report.signed and reasons(report) == ["invalid-properties"]
    assert "img_signature, img_signature_key_type, img_signature_certificate_uuid" in report.failures[0].message


def test_expired_certificate():
    report = audit(record("leaf-expired"), data=DATA)
    cert = report.certificate
    assert cert is not None and cert.problem is not None and cert.problem.reason == "certificate-expired"
    assert cert.days_left is not None and cert.days_left < 0 and not cert.expires_soon
    assert "certificate-expired" in reasons(report) and report.chain.status is ChainStatus.UNTRUSTED
    assert report.data.status is DataStatus.VERIFIED  # the data is intact; the signer is not acceptable


def test_certificate_expiring_within_the_window():
    soon = datetime.datetime(2074, 12, 10, tzinfo=datetime.timezone.utc)  # leaf-rsa-pss ends 2075-01-01
    report = audit(record("leaf-rsa-pss"), at=soon)
    assert report.certificate is not None and report.certificate.expires_soon
    assert report.certificate.days_left == 22 and report.certificate.problem is None
    assert report.chain.status is ChainStatus.TRUSTED and report.chain.expires_soon
    assert reasons(report) == ["expires-soon"]  # the chain's earliest notAfter is the same certificate's
    assert "22 day(s) left, within the 30-day window" in report.failures[0].message
    assert report.failures[0].exit_code == errors.PolicyViolation.exit_code
    assert audit(record("leaf-rsa-pss"), at=soon, expiry_days=22).passed
    assert audit(record("leaf-rsa-pss"), at=soon, expiry_days=0).passed
    ignoring = AuditPolicy(anchors(), Policy(at=soon, ignore_certificate_dates=True))
    assert assess(record("leaf-rsa-pss"), lookup, ignoring).report.passed


def test_untrusted_chain():
    report = audit(record("leaf-untrusted"), data=DATA)
    assert report.chain.status is ChainStatus.UNTRUSTED and reasons(report) == ["untrusted-certificate"]
    assert report.chain.problem is not None and "does not chain to any of the 1 trusted" in report.chain.problem.message


def test_revoked_by_crl():
    report = audit(record("leaf-revoked"))
    assert report.chain.status is ChainStatus.REVOKED and reasons(report) == ["certificate-revoked"]
    assert report.failures[0].exit_code == errors.CertificateRevoked.exit_code
    assert "keyCompromise" in report.failures[0].message or "key_compromise" in report.failures[0].message


def test_missing_required_crl_is_a_chain_error():
    no_crls = TrustAnchors(anchors().trusted, anchors().intermediates, [], require_crls=True)
    report = audit(record("leaf-rsa-pss"), anchors=no_crls)
    assert report.chain.status is ChainStatus.ERROR and reasons(report) == ["certificate-error"]


def test_unknown_certificate_id():
    image = record("leaf-rsa-pss", img_signature_certificate_uuid="no-such-certificate")
    report = audit(image, data=DATA)
    assert report.certificate is not None and report.certificate.subject is None
    assert reasons(report) == ["not-found"] and report.failures[0].exit_code == errors.ObjectNotFound.exit_code
    assert report.chain.status is ChainStatus.NOT_CHECKED and report.data.status is DataStatus.SKIPPED


def test_certificate_that_may_not_sign_and_weak_key():
    usage = audit(record("leaf-no-digital-signature"))
    assert usage.certificate is not None and usage.certificate.problem is not None
    assert "digitalSignature" in usage.certificate.problem.message and not usage.passed
    weak = audit(record("leaf-rsa-1024"))
    assert weak.key_problem is not None and reasons(weak) == ["weak-key"]


def test_declared_key_type_does_not_match_the_certificate():
    report = audit(record("leaf-rsa-pss", img_signature_key_type="DSA"), data=DATA)
    assert report.key_problem is not None and reasons(report) == ["key-type-mismatch"]
    assert report.data.status is DataStatus.SKIPPED


def test_tampered_data_is_invalid():
    tampered = bytearray(DATA)
    tampered[1000] ^= 1
    report = audit(record("leaf-rsa-pss"), data=bytes(tampered))
    assert report.data.status is DataStatus.INVALID and reasons(report) == ["invalid-signature"]
    assert report.failures[0].exit_code == errors.InvalidSignature.exit_code


def test_data_that_cannot_be_read_keeps_its_error_code():
    assessment = assess(record("leaf-rsa-pss"), lookup, AuditPolicy(anchors(), Policy(at=NOW)))

    def no_data() -> list[bytes]:
        raise errors.ImageHasNoData("image id-leaf-rsa-pss is queued: it has no data")

    def broken() -> object:
        yield DATA[:1000]
        raise errors.GlanceUnavailable("connection reset while reading the image data")

    report = assessment.verify_data(no_data)
    assert report.data.status is DataStatus.ERROR and report.failures[0].exit_code == 72
    report = assessment.verify_data(broken)  # type: ignore[arg-type]
    assert report.data.status is DataStatus.ERROR and report.failures[0].exit_code == 70
    assert assessment.verify_data(lambda: [DATA]).passed  # the assessment is reusable


def test_non_string_identity_fields_are_shown_not_trusted():
    report = audit(record(None, id=["x"], name={"a": 1}, status=3), allow_unsigned=True)
    assert report.id == "['x']" and report.name == "{'a': 1}" and report.status == "3"


def test_expiry_window_bounds():
    for days in (-1, 1_000_001):
        with pytest.raises(ValueError):
            AuditPolicy(expiry_days=days)
    assert audit(record("leaf-rsa-pss"), at=datetime.datetime(9000, 1, 1, tzinfo=datetime.timezone.utc),
                 expiry_days=1_000_000).certificate.days_left < 0


def test_table_shows_names_from_glance_without_control_characters():
    from imgsign.cli.audit import _document, _table

    policy = AuditPolicy(anchors(), Policy(at=NOW))
    hostile = record(None, name="\x1b[2J\x1b[31mevil\nname\r", id="id-\x07")
    reports = [assess(image, lookup, policy).report for image in (hostile, record("leaf-rsa-pss"))]
    table = _table(reports, policy, download=False)
    assert "\x1b" not in table and "\r" not in table and "\x07" not in table
    lines = table.splitlines()
    # Shown as visible escapes (issue 18, class 4: one cleaner for every message), no longer as "?".
    assert lines[1].split()[:3] == ["id-\\x07", "\\x1b[2J\\x1b[31mevil\\nname\\r", "(unsigned)"]
    assert lines[1].endswith("FAIL")
    assert lines[2].split()[-1] == "pass" and "imgsign test leaf-rsa-pss" in lines[2]
    assert "  unsigned-image: the image has no img_signature* properties" in lines
    assert lines[-1] == ("2 image(s): 1 pass, 1 fail; expiry window 30 day(s); chains checked; "
                         "data not downloaded (--download)")
    document = json.loads(json.dumps(_document(reports, policy, False, None)))
    assert document["summary"] == {"images": 2, "passed": 1, "failed": 1, "unsigned": 1, "expiring": 0,
                                   "data_invalid": 0}
    assert document["images"][0]["name"] == "\x1b[2J\x1b[31mevil\nname\r"  # JSON escapes it, keeps it exact
    assert document["trusted"] == ["O=imgsign test PKI - NOT FOR PRODUCTION,CN=imgsign test root-ca"]


def test_unusable_cloud_settings_exit_with_their_code(cli, tmp_path):
    result = cli("audit", "--os-cloud", "no-such-cloud",
                 env={"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"), "HOME": str(tmp_path)})
    assert result.code == errors.InputError.exit_code, result
    assert result.stderr.startswith("imgsign: error: cannot use cloud 'no-such-cloud'") and result.stdout == ""


def test_data_check_holds_one_chunk_not_the_image():
    from tests.test_memory import BUDGET, MIB, peak_of

    chunks = 96  # 96 MiB streamed, fresh bytes each time, as a download delivers them
    key = load_private_key(pki("leaf-ecc-secp384r1.key").read_bytes())
    image = record(None, **sign((bytes(MIB) for _ in range(chunks)), key, "leaf-ecc-secp384r1").as_dict())
    assessment = assess(image, lookup, AuditPolicy(anchors(), Policy(at=NOW)))
    reports = []
    peak = peak_of(lambda: reports.append(assessment.verify_data(lambda: (bytes(MIB) for _ in range(chunks)))))
    assert reports[-1].passed and reports[-1].data.size == chunks * MIB
    assert peak < BUDGET, f"peak {peak / MIB:.1f} MiB"


def test_intermediate_expiring_within_the_window():
    """A signer valid for years under an intermediate CA that ends in 19 days: the chain fails the window."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    root = load_certificate(pki("root-ca.pem").read_bytes())
    root_key = serialization.load_pem_private_key(pki("root-ca.key").read_bytes(), None)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    start, ca_end = NOW - datetime.timedelta(days=300), NOW + datetime.timedelta(days=19, hours=1)
    ca = (x509.CertificateBuilder().subject_name(name("short-lived CA")).issuer_name(root.subject)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(ca_end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()), critical=False)
          .sign(root_key, hashes.SHA384()))
    signer_key = load_private_key(pki("leaf-ecc-secp384r1.key").read_bytes())
    leaf_public = load_certificate(pki("leaf-ecc-secp384r1.pem").read_bytes()).public_key()
    leaf = (x509.CertificateBuilder().subject_name(name("signer under a short-lived CA")).issuer_name(ca.subject)
            .public_key(leaf_public).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(NOW + datetime.timedelta(days=700))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    image = record(None, **sign([DATA], signer_key, "short", HashMethod.SHA256).as_dict())
    policy = AuditPolicy(TrustAnchors([root], [ca]), Policy(at=NOW))
    report = assess(image, {"short": leaf.public_bytes(serialization.Encoding.PEM)}.__getitem__, policy).report
    assert report.certificate is not None and not report.certificate.expires_soon
    assert report.chain.status is ChainStatus.TRUSTED and report.chain.expires_soon
    assert report.chain.not_after == ca.not_valid_after_utc
    assert reasons(report) == ["expires-soon"]
    assert "a certificate on the chain to" in report.failures[0].message
    assert "within the 30-day window" in report.failures[0].message
    assert assess(image, {"short": leaf.public_bytes(serialization.Encoding.PEM)}.__getitem__,
                  AuditPolicy(policy.anchors, Policy(at=NOW), expiry_days=19)).report.passed
