"""Fuzzing what the boot hook's self-adoption reads before adopting: Glance's image record (its
``disk_format`` and raw-digest statement, written by whoever uploaded the image) and ``[boot] adopt`` /
``adopt_timeout`` / ``adopt_by_conversion`` / ``adopt_conversion_max_size`` / ``adopt_conversion_timeout``.  Every input is accepted or refused with an ImgsignError, never anything else.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples (default 200, a few seconds); run longer by hand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.compute.adoption import signature_properties
from imgsign._internal.sizes import parse_size
from imgsign.compute.self_adoption import _converted_without_statement
from imgsign.compute.boot_config import validate
from imgsign.properties import NAMES as SIGNATURE_NAMES
from imgsign.raw_statement import NAMES as RAW_NAMES

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3),
                           max_leaves=6)
keys = st.sampled_from(["disk_format", "id", *SIGNATURE_NAMES, *RAW_NAMES]) | st.text(max_size=12)
records = st.dictionaries(keys, json_values | st.sampled_from(["raw", "qcow2", "vmdk", "iso", ""]), max_size=12)

_DIR = Path(tempfile.mkdtemp(prefix="imgsign-fuzz-selfadopt-"))
BASES = {"raw": _DIR / "raw", "qcow2": _DIR / "qcow2", "missing": _DIR / "missing"}
BASES["raw"].write_bytes(b"\0" * 4096)
BASES["qcow2"].write_bytes(b"QFI\xfb" + b"\0" * 4092)


@FUZZ
@given(record=records, base=st.sampled_from(sorted(BASES)))
def test_any_glance_record_is_accepted_or_refused_with_an_imgsign_error(record, base):
    try:
        _converted_without_statement(str(BASES[base]), "fuzzed-image", record)
        signature_properties("fuzzed-image", record)
    except errors.ImgsignError:
        pass


@FUZZ
@given(adopt=st.text(max_size=12), timeout=st.text(max_size=12), glance=st.booleans())
def test_any_boot_options_parse_or_are_refused_with_an_imgsign_error(adopt, timeout, glance, tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "boot.conf"
    text = f"[boot]\nadopt = {adopt}\nadopt_timeout = {timeout}\n".replace("\r", "")
    path.write_text(text + ("[glance]\nauth_type = password\n" if glance else ""), errors="surrogateescape")
    try:
        boot = validate(str(path))
    except errors.ImgsignError:
        return
    assert isinstance(boot.adopt, bool) and 0 < boot.adopt_timeout < float("inf")


sizes = st.text(max_size=16) | st.from_regex(r"\s*[0-9]{1,22}\s*[kKmMgGtTxX]?(i?[bB])?\s*", fullmatch=True)


@FUZZ
@given(text=sizes)
def test_any_size_parses_to_a_positive_integer_or_is_refused(text):
    try:
        size = parse_size(text, "the size")
    except errors.ImgsignError:
        return
    assert isinstance(size, int) and size > 0


@FUZZ
@given(enabled=st.text(max_size=12) | st.sampled_from(["true", "off", "Yes"]), size=sizes,
       timeout=st.text(max_size=12) | st.sampled_from(["600", "0.5", "-1", "inf", "nan"]))
def test_any_conversion_options_parse_or_are_refused_with_an_imgsign_error(enabled, size, timeout,
                                                                          tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "boot.conf"
    text = (f"[boot]\nadopt_by_conversion = {enabled}\nadopt_conversion_max_size = {size}\n"
            f"adopt_conversion_timeout = {timeout}\n").replace("\r", "")
    path.write_text(text, errors="surrogateescape")
    try:
        boot = validate(str(path))
    except errors.ImgsignError:
        return
    assert isinstance(boot.adopt_by_conversion, bool) and boot.adopt_conversion_max_size > 0
    assert 0 < boot.adopt_conversion_timeout < float("inf")
