"""What the gateway intercepts (pure decisions) and how it reads Nova's owner from a domain XML."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.gateway.domains import owner_project
from imgsign.gateway.intercept import (
    DomainInfo,
    Verdict,
    decide,
    location_target,
    patch_adds_location,
    upload_target,
)

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INSTANCE = "0f0e0d0c-0b0a-4909-8807-060504030201"
PROJECT = "c0ffee00c0ffee00c0ffee00c0ffee00"
SNAPSHOT = {"id": "img", "status": "queued", "image_type": "snapshot", "instance_uuid": INSTANCE, "owner": PROJECT}
HERE = DomainInfo(INSTANCE, "running", PROJECT)


def test_only_put_file_is_an_upload() -> None:
    assert upload_target("PUT", "/v2/images/abc-1/file") == "abc-1"
    for method, path in [("POST", "/v2/images/abc/file"), ("PUT", "/v2/images/abc/stage"),
                         ("PUT", "/v2/images/abc/file/"), ("PUT", "/v2/images/a/b/file"), ("PUT", "/v1/images/a/file"),
                         ("PUT", "/v2/images/../file"), ("PUT", "/v2/images/%2e%2e/file")]:
        assert upload_target(method, path) is None, (method, path)


def test_location_requests() -> None:
    assert location_target("PATCH", "/v2/images/abc") == "abc"
    assert location_target("POST", "/v2/images/abc/locations") == "abc"
    assert location_target("GET", "/v2/images/abc") is None
    assert location_target("POST", "/v2/images") is None


@pytest.mark.parametrize(("body", "adds"), [
    ([{"op": "add", "path": "/locations/-", "value": {}}], True),
    ([{"op": "replace", "path": "/locations", "value": []}], True),
    ([{"op": "add", "path": "/note", "value": "x"}], False),
    ([{"op": "remove", "path": "/instance_uuid"}], False),
    ({"op": "add"}, True),
    ([1], True),
    ([{"op": "add"}], True),
])
def test_patch_adds_location(body: object, adds: bool) -> None:
    assert patch_adds_location(json.dumps(body).encode()) is adds


def test_unreadable_patch_counts_as_a_location() -> None:
    assert patch_adds_location(b"{not json")
    assert patch_adds_location(b"[" * 100000)


@pytest.mark.parametrize(("image", "domain", "verdict"), [
    (SNAPSHOT, HERE, Verdict.SIGN),
    ({**SNAPSHOT, "image_type": "backup"}, HERE, Verdict.SIGN),
    ({**SNAPSHOT, "status": "active"}, HERE, Verdict.FORWARD),
    ({**SNAPSHOT, "image_type": "image"}, HERE, Verdict.FORWARD),
    ({k: v for k, v in SNAPSHOT.items() if k != "image_type"}, HERE, Verdict.FORWARD),
    (SNAPSHOT, None, Verdict.FORWARD),
    ({**SNAPSHOT, "instance_uuid": ""}, HERE, Verdict.FORWARD),
    (SNAPSHOT, DomainInfo(INSTANCE, "shut off", PROJECT), Verdict.SIGN),  # shelve powers off first
    (SNAPSHOT, DomainInfo(INSTANCE, "running", "another"), Verdict.REFUSE),
    (SNAPSHOT, DomainInfo(INSTANCE, "running", None), Verdict.REFUSE),
    ({**SNAPSHOT, "owner": None}, HERE, Verdict.REFUSE),
    (SNAPSHOT, DomainInfo("another-uuid", "running", PROJECT), Verdict.REFUSE),
])
def test_decide(image: dict, domain: DomainInfo | None, verdict: Verdict) -> None:
    assert decide(image, domain, refuse_unmatched=False).verdict is verdict


def test_unmatched_snapshots_can_be_refused_by_configuration() -> None:
    assert decide(SNAPSHOT, None, refuse_unmatched=True).verdict is Verdict.REFUSE
    assert decide({**SNAPSHOT, "image_type": "image"}, None, refuse_unmatched=True).verdict is Verdict.FORWARD


NOVA_XML = f"""<domain type='qemu'>
  <name>instance-00000001</name>
  <uuid>{INSTANCE.upper()}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:owner>
        <nova:user uuid="u1">demo</nova:user>
        <nova:project uuid="{PROJECT}">demo</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="base-1"/>
    </nova:instance>
  </metadata>
</domain>"""


def test_owner_project_from_nova_metadata() -> None:
    assert owner_project(NOVA_XML.encode()) == (INSTANCE, PROJECT)
    assert owner_project(b"<domain><uuid>x</uuid></domain>") == ("x", None)


def test_two_owners_or_hostile_xml_are_errors() -> None:
    doubled = NOVA_XML.replace("</nova:owner>", '<nova:project uuid="other"/></nova:owner>')
    with pytest.raises(errors.InputError):
        owner_project(doubled.encode())
    with pytest.raises(errors.InputError):
        owner_project(b'<!DOCTYPE d [<!ENTITY e "x">]><domain>&e;</domain>')
    with pytest.raises(errors.InputError):
        owner_project(b"<network/>")


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | st.sampled_from([NOVA_XML[:n] for n in range(0, len(NOVA_XML), 7)]).map(str.encode))
def test_owner_project_never_raises_anything_else(xml: bytes) -> None:
    try:
        owner_project(xml)
    except errors.InputError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(["status", "image_type", "instance_uuid", "owner", "id"]),
                       st.one_of(st.none(), st.integers(), st.sampled_from(["queued", "snapshot", "backup",
                                                                            INSTANCE, PROJECT, ""])), max_size=5),
       st.one_of(st.none(), st.builds(DomainInfo, st.sampled_from([INSTANCE, "x"]), st.just("running"),
                                      st.sampled_from([PROJECT, None, "other"]))))
def test_decide_signs_only_an_exact_match(image: dict, domain: DomainInfo | None) -> None:
    decision = decide(image, domain, refuse_unmatched=False)
    if decision.verdict is Verdict.SIGN:
        assert image["status"] == "queued" and image["image_type"] in ("snapshot", "backup")
        assert domain is not None and domain.uuid == image["instance_uuid"] and domain.project_id == image["owner"]
