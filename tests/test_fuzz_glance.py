"""Fuzz the parsers of Glance's answers (image list pages, import methods, Content-Length).

Each input either parses or raises an :class:`imgsign.errors.ImgsignError`; a next page is only
ever a path under /v2/images. ``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200).
"""

from __future__ import annotations

import os

from hypothesis import example, given, settings
from hypothesis import strategies as st

from imgsign._internal.glance_api import parse_content_length, parse_image_page, parse_import_methods
from imgsign.errors import ImgsignError

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
next_links = st.one_of(json_values, st.text(max_size=60), st.sampled_from([
    "/v2/images?marker=x", "//evil.example/v2/images", "http://evil.example/v2/images?marker=a",
    "/v2/images/../../x", "/v2/images?a=b c", "/v2/imagesX", "/v2/images\n?x"]))


@FUZZ
@given(st.one_of(json_values, st.fixed_dictionaries({"images": st.lists(json_values, max_size=4),
                                                      "next": next_links})))
@example({"images": [], "next": "https://attacker.example/v2/images?marker=1"})
def test_image_page(page):
    try:
        images, following = parse_image_page(page)
    except ImgsignError:
        return
    assert all(isinstance(image, dict) for image in images)
    assert following is None or ((following == "/v2/images" or following.startswith("/v2/images?"))
                                 and all(0x21 <= ord(c) <= 0x7E for c in following))


@FUZZ
@given(st.one_of(json_values, st.fixed_dictionaries({"import-methods": st.one_of(
    json_values, st.fixed_dictionaries({"value": st.lists(json_values, max_size=4)}))})))
def test_import_methods(info):
    methods = parse_import_methods(info)
    assert all(isinstance(m, str) for m in methods)


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=30), st.integers(min_value=-5, max_value=10**30).map(str)))
@example("١٢٣")  # Unicode digits: int() takes them, HTTP does not
def test_content_length(value):
    try:
        length = parse_content_length(value)
    except ImgsignError:
        return
    assert (length is None) == (value is None)
    assert length is None or (length >= 0 and length == int(value.strip()) and value.strip().isascii())
