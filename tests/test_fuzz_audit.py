"""Fuzzing the audit of one image record: Glance's properties are untrusted, so any dict gives a report.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200, a few seconds); run longer by hand,
e.g. ``IMGSIGN_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_audit.py``.
"""

from __future__ import annotations

import datetime
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors, load_private_key, sign
from imgsign.algorithms import HashMethod, KeyType
from imgsign.audit import AuditPolicy, ImageReport, assess
from imgsign.certificates import load_certificate
from imgsign.chain import TrustAnchors, load_crl
from imgsign.policy import Policy
from imgsign.properties import NAMES
from tests.conftest import pki

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DATA = b"fuzzed image data" * 100
SIGNED = {stem: sign([DATA], load_private_key(pki(stem + ".key").read_bytes()), stem, HashMethod.SHA256).as_dict()
          for stem in ("leaf-rsa-pss", "leaf-ecc-secp384r1", "leaf-dsa", "leaf-revoked", "leaf-untrusted")}
CERTIFICATES = {stem: pki(stem + ".pem").read_bytes() for stem in SIGNED}
CERTIFICATES["garbage"] = b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"
ANCHORS = TrustAnchors([load_certificate(pki("root-ca.pem").read_bytes())],
                       [load_certificate(pki("intermediate-ca.pem").read_bytes())],
                       [load_crl(pki("intermediate-ca.crl.pem").read_bytes())])


def lookup(cert_id: str) -> bytes:
    if cert_id not in CERTIFICATES:
        raise errors.ObjectNotFound(f"no certificate {cert_id[:40]!r}")
    return CERTIFICATES[cert_id]


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)
NEAR_VALID = st.one_of(
    st.sampled_from([h.value for h in HashMethod] + [k.value for k in KeyType] + list(CERTIFICATES)),
    st.sampled_from([p["img_signature"] for p in SIGNED.values()]),
    st.sampled_from([p["img_signature"] for p in SIGNED.values()]).map(lambda s: s[:-3] + "A=="),
    st.sampled_from([p["img_signature"] for p in SIGNED.values()]).map(lambda s: s.replace("+", "-")),
)


@st.composite
def records(draw) -> dict[str, object]:
    """A signed record with some properties replaced or dropped, or an arbitrary dict."""
    record: dict[str, object] = dict(draw(st.sampled_from(list(SIGNED.values()))))
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True)):
        choice = draw(st.sampled_from(["drop", "json", "near"]))
        if choice == "drop":
            record.pop(name)
        else:
            record[name] = draw(JSON_VALUES if choice == "json" else NEAR_VALID)
    record.update(draw(st.dictionaries(st.sampled_from(["id", "name", "status", "owner", "size"]), JSON_VALUES,
                                       max_size=3)))
    return record


@given(record=st.one_of(records(), st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)),
                                                     JSON_VALUES, max_size=6)),
       days=st.integers(0, 1_000_000), at=st.datetimes(datetime.datetime(1970, 1, 2), datetime.datetime(2200, 1, 1)),
       trusted=st.booleans(), data=st.sampled_from([DATA, DATA[:-1], b""]))
@FUZZ
def test_any_record_gives_a_report(record, days, at, trusted, data):
    policy = AuditPolicy(ANCHORS if trusted else None, Policy(at=at), expiry_days=days)
    try:
        assessment = assess(record, lookup, policy)
        report = assessment.verify_data(lambda: [data])
    except errors.ImgsignError:
        return
    assert isinstance(report, ImageReport)
    json.dumps(report.as_dict())
    assert report.passed == (not report.failures)
    if report.signed and report.passed:  # a passing signed image was verified over exactly what was signed
        assert data == DATA and report.data.size == len(DATA)
