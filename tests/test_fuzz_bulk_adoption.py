"""Fuzzing ``boot adopt --all``'s properties input (untrusted JSON): every document parses into image
id -> properties or raises an ImgsignError, and every id parsed has a base-file name.

``IMGSIGN_FUZZ_EXAMPLES`` sets the examples per test (default 200, a few seconds); run longer by hand.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.compute.bulk_adoption import images_from_mapping, images_from_show_outputs, not_a_base
from imgsign.compute.trust_record import cache_name

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What json.loads can give: lone surrogates included (JSON "\ud800" escapes).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["\ud800", "id", "properties", "img_signature", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12) | st.sampled_from(["id", "properties", "img_signature", "\udc80"]), children, max_size=4),
    max_leaves=8,
)
documents = st.one_of(json_values, st.dictionaries(st.text(max_size=40) | st.just("\ud800"), json_values, max_size=4))


def _check(images: dict) -> None:
    for image_id, properties in images.items():
        assert isinstance(image_id, str) and len(cache_name(image_id)) == 40
        assert hasattr(properties, "get")


@FUZZ
@given(document=documents)
def test_mapping_parses_or_refuses(document: object) -> None:
    try:
        images = images_from_mapping(document, "fuzz")
    except errors.ImgsignError:
        return
    _check(images)


@FUZZ
@given(outputs=st.lists(documents, max_size=3))
def test_show_outputs_parse_or_refuse(outputs: list[object]) -> None:
    try:
        images = images_from_show_outputs((f"file {n}", document) for n, document in enumerate(outputs))
    except errors.ImgsignError:
        return
    _check(images)


@FUZZ
@given(text=st.text(max_size=200))
def test_mapping_from_any_text_parses_or_refuses(text: str) -> None:
    try:
        document = json.loads(text)
    except ValueError:
        return
    try:
        _check(images_from_mapping(document, "fuzz"))
    except errors.ImgsignError:
        pass


@FUZZ
@given(name=st.text(max_size=60), is_directory=st.booleans())
def test_only_sha1_names_of_files_are_bases(name: str, is_directory: bool) -> None:
    if not_a_base(name, is_directory) is None:
        assert not is_directory and len(name) == 40 and set(name) <= set("0123456789abcdef")
