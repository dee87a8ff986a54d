"""What the gateway rewrites in Glance's answers: the version document's links (imgsign.gateway.discovery)
and the image records' locations (imgsign.gateway.locations); unit and fuzz tests.

tests/test_gateway_glance.py and tests/test_gateway_signing.py prove them against a real glance-api with
keystoneauth's discovery and Nova 34's own image API."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsign.gateway.discovery import NotRewritable, origin, rewrite_version_document
from imgsign.gateway.locations import NotRewritable as LocationsNotRewritable
from imgsign.gateway.locations import hide_locations, is_image_read

GATEWAY = "http://127.0.0.1:9293"
GLANCE = {"versions": [
    {"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": "https://glance.example.net:9292/v2/"}]},
    {"id": "v2.15", "status": "SUPPORTED", "links": [{"rel": "self", "href": "https://glance.example.net/v2/?x=1"}]},
    {"id": "v1.0", "status": "DEPRECATED", "links": [{"rel": "describedby", "href": "/relative/"}]},
]}


def test_every_absolute_link_points_at_the_gateway_and_keeps_its_path() -> None:
    out = json.loads(rewrite_version_document(json.dumps(GLANCE).encode(), GATEWAY))
    assert [link["href"] for v in out["versions"] for link in v["links"]] == [
        "http://127.0.0.1:9293/v2/", "http://127.0.0.1:9293/v2/?x=1", "/relative/"]
    assert [v["id"] for v in out["versions"]] == ["v2.16", "v2.15", "v1.0"]
    single = {"version": {"id": "v2.16", "links": [{"href": "https://glance:9292/v2/", "rel": "self"}]}}
    assert json.loads(rewrite_version_document(json.dumps(single).encode(), GATEWAY))["version"]["links"][0][
        "href"] == "http://127.0.0.1:9293/v2/"
    keystone_style = {"versions": {"values": [{"links": [{"href": "https://glance/v2/"}]}]}}
    assert json.loads(rewrite_version_document(json.dumps(keystone_style).encode(), GATEWAY))["versions"]["values"][
        0]["links"][0]["href"] == "http://127.0.0.1:9293/v2/"


@pytest.mark.parametrize("body", [b"", b"<html>error</html>", b'{"error": "x"}', b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_no_version_document_passes_unchanged(body: bytes) -> None:
    assert rewrite_version_document(body, GATEWAY) == body


@pytest.mark.parametrize("document", [{"versions": "v2"}, {"versions": 3},
                                      {"versions": [{"links": [{"href": 7}]}]}])
def test_a_version_document_that_cannot_be_rewritten_is_refused(document: object) -> None:
    with pytest.raises(NotRewritable):
        rewrite_version_document(json.dumps(document).encode(), GATEWAY)


def test_origin_brackets_ipv6() -> None:
    assert origin("127.0.0.1", 9293) == "http://127.0.0.1:9293"
    assert origin("::1", 9293) == "http://[::1]:9293"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=20)
hrefs = st.text(max_size=40) | st.builds(lambda host, path: f"https://{host}/{path}",
                                         st.from_regex(r"[a-z0-9.:-]{1,20}", fullmatch=True), st.text(max_size=20))
documents = st.fixed_dictionaries({"versions": st.lists(st.fixed_dictionaries(
    {"id": st.text(max_size=8), "links": st.lists(st.fixed_dictionaries({"href": hrefs}) | json_values, max_size=3)}),
    max_size=3)})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values | documents))
def test_fuzz_never_crashes_and_never_leaves_a_foreign_absolute_link(body: bytes) -> None:
    try:
        out = rewrite_version_document(body, GATEWAY)
    except NotRewritable:
        return
    if out == body:
        return
    document = json.loads(out)
    versions = document.get("versions")
    if isinstance(versions, dict):
        versions = versions.get("values")
    for version in [*(versions or []), document.get("version")]:
        if not isinstance(version, dict) or not isinstance(version.get("links"), list):
            continue
        for link in version["links"]:
            if isinstance(link, dict) and isinstance(link.get("href"), str):
                parts = urllib.parse.urlsplit(link["href"])
                if parts.scheme or parts.netloc:
                    assert link["href"].startswith(GATEWAY), link


# --- image records without their locations (imgsign.gateway.locations) ---------------------------------------



def test_image_reads_are_the_record_and_the_list() -> None:
    assert is_image_read("GET", "/v2/images/abc-1") and is_image_read("GET", "/v2/images")
    for method, path in [("PATCH", "/v2/images/abc"), ("GET", "/v2/images/abc/file"), ("GET", "/v2/images/"),
                         ("GET", "/v2/images/abc/locations"), ("HEAD", "/v2/images/abc")]:
        assert not is_image_read(method, path), (method, path)


def test_locations_and_direct_url_are_removed_from_records_and_lists() -> None:
    record = {"id": "a", "locations": [{"url": "rbd://fsid/images/a/snap"}], "direct_url": "rbd://x", "size": 3}
    assert json.loads(hide_locations(json.dumps(record).encode())) == {"id": "a", "size": 3}
    listing = {"images": [record, {"id": "b", "direct_url": "rbd://y"}], "first": "/v2/images"}
    assert json.loads(hide_locations(json.dumps(listing).encode())) == {
        "images": [{"id": "a", "size": 3}, {"id": "b"}], "first": "/v2/images"}
    escaped = b'{"id": "a", "locat\\u0069ons": [{"url": "rbd://z"}]}'  # the same key, spelt with an escape
    assert json.loads(hide_locations(escaped)) == {"id": "a"}
    for body in (b"not json", b"[1]", b'"text"'):
        assert hide_locations(body) == body
    with pytest.raises(LocationsNotRewritable):
        hide_locations(b'{"images": {"id": "a", "locations": []}}')


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_fuzz_no_record_keeps_a_location(body: bytes) -> None:
    try:
        out = hide_locations(body)
    except LocationsNotRewritable:
        return
    try:
        document = json.loads(out)
    except ValueError:
        assert out == body
        return
    if isinstance(document, dict):
        images = document.get("images")
        for record in [document, *(images if isinstance(images, list) else [])]:
            if isinstance(record, dict):
                assert "locations" not in record and "direct_url" not in record
