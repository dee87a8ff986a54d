"""The pure part of per-server trust: Nova's answer, its HTTP framing, ``[nova]`` settings, and the narrowing.

Nova and the HTTP peer are hostile (tests/test_nova_server_trust.py runs the real nova-api and a hostile
server): whatever they send, the parsers end in one of the documented errors, never another exception,
and the boot check never accepts a signer that either list excludes.
"""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.compute import server_trust
from imgsign.compute.boot import BootPolicy, check_signer
from imgsign.compute.server_trust import MAX_BODY, load_settings, parse_answer, parse_response
from imgsign.compute.trust_record import RecordStore, fingerprint

SERVER = "5e2b8a4c-1f9b-4c8e-9a53-0d6a7c1e2f00"
NOVA_ERRORS = (errors.NovaUnavailable, errors.NovaAnswerInvalid, errors.UnknownServer)


def answer(server: dict) -> bytes:
    return json.dumps({"server": server}).encode()


# --- Nova's answer ---------------------------------------------------------------------------------


def test_a_list_is_the_server_ids_and_null_is_none():
    assert parse_answer(200, answer({"id": SERVER, "trusted_image_certificates": ["a", "b", "a"]}), SERVER) == \
        ("a", "b")
    assert parse_answer(200, answer({"id": SERVER, "trusted_image_certificates": None}), SERVER) == ()
    assert parse_answer(200, answer({"id": SERVER.upper(), "trusted_image_certificates": None}), SERVER) == ()


@pytest.mark.parametrize(("status", "body", "error", "words"), [
    (404, b"{}", errors.UnknownServer, "Nova has no server"),
    (401, b"", errors.NovaUnavailable, "refused the [nova] credentials"),
    (302, b"", errors.NovaUnavailable, "redirects are not followed"),
    (503, b"", errors.NovaUnavailable, "HTTP 503"),
    (200, b"<html>", errors.NovaUnavailable, "not JSON"),
    (200, b"[" * 100_000, errors.NovaUnavailable, "not JSON"),
    (200, b" " * (MAX_BODY + 1), errors.NovaUnavailable, "larger than"),
    (200, b'{"servers": []}', errors.NovaUnavailable, "not a server document"),
    (200, answer({"id": "other", "trusted_image_certificates": None}), errors.NovaAnswerInvalid, "'other'"),
    (200, answer({"id": SERVER}), errors.NovaAnswerInvalid, "microversion 2.63"),
    (200, answer({"id": SERVER, "trusted_image_certificates": []}), errors.NovaAnswerInvalid, "empty list"),
    (200, answer({"id": SERVER, "trusted_image_certificates": {"a": 1}}), errors.NovaAnswerInvalid, "a dict"),
    (200, answer({"id": SERVER, "trusted_image_certificates": [None]}), errors.NovaAnswerInvalid, "NoneType"),
    (200, answer({"id": SERVER, "trusted_image_certificates": ["x"] * 51}), errors.NovaAnswerInvalid, "at most 50"),
    (200, answer({"id": SERVER, "trusted_image_certificates": ["x" * 1025]}), errors.NovaAnswerInvalid, "longer"),
    (200, answer({"id": SERVER, "trusted_image_certificates": ["\ud800"]}), errors.NovaAnswerInvalid, "printable"),
])
def test_what_is_not_the_server_list_is_a_clear_error(status, body, error, words):
    with pytest.raises(error) as raised:
        parse_answer(status, body, SERVER)
    assert words in raised.value.message


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.integers(100, 599), st.binary(max_size=300))
def test_any_bytes_end_in_a_nova_error_or_a_list(status, body):
    try:
        ids = parse_answer(status, body, SERVER)
    except NOVA_ERRORS:
        return
    assert status == 200 and all(isinstance(i, str) and i.isprintable() for i in ids)


@settings(max_examples=300, deadline=None)
@given(_json, st.sampled_from([SERVER, "other"]))
def test_any_server_document_ends_in_a_nova_error_or_a_list(value, server_id):
    body = answer({"id": server_id, "trusted_image_certificates": value})
    try:
        ids = parse_answer(200, body, SERVER)
    except NOVA_ERRORS:
        return
    assert server_id == SERVER
    assert value is None or (isinstance(value, list) and list(dict.fromkeys(value)) == list(ids))


# --- HTTP framing ----------------------------------------------------------------------------------


def _framed(status: int, body: bytes, framing: str, chunks: list[int]) -> bytes:
    head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n".encode()
    if framing == "length":
        return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    if framing == "chunked":
        out, position = [], 0
        for size in [*chunks, len(body)]:
            piece = body[position:position + max(size, 1)]
            if piece:
                out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            position += len(piece)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(out) + b"0\r\n\r\n"
    return head + b"\r\n" + body


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 599), st.binary(max_size=2000), st.sampled_from(["length", "chunked", "eof"]),
       st.lists(st.integers(1, 500), max_size=5), st.integers(1, 97))
def test_a_well_framed_answer_read_in_pieces_parses_back(status, body, framing, chunks, step):
    data = _framed(status, body, framing, chunks)
    for cut in range(0, len(data), step):
        partial = parse_response(data[:cut], eof=False)
        assert partial is None or partial == (status, body)
    assert parse_response(data, eof=True) == (status, body)
    if framing != "eof":
        assert parse_response(data, eof=False) == (status, body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_any_bytes_are_an_answer_more_needed_or_nova_unavailable(data, eof):
    try:
        parse_response(data, eof)
    except errors.NovaUnavailable:
        pass


@pytest.mark.parametrize(("data", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "ended before its Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "announces"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "two different"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n", "compressed"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "other than chunked"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "middle of its chunked body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n", "does not end"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x response"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, "header block larger"),
    (b"", "sent no answer"),
])
def test_malformed_framing_is_nova_unavailable(data, words):
    with pytest.raises(errors.NovaUnavailable) as raised:
        parse_response(data, eof=True)
    assert words in raised.value.message


def test_a_body_past_the_cap_is_refused_before_the_end():
    with pytest.raises(errors.NovaUnavailable, match="larger than"):
        parse_response(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (MAX_BODY + 1), eof=False)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{MAX_BODY + 1:x}\r\n".encode()
    with pytest.raises(errors.NovaUnavailable, match="larger than"):
        parse_response(chunked, eof=False)


# --- settings --------------------------------------------------------------------------------------


def test_no_nova_section_or_no_auth_type_is_off():
    assert load_settings("boot.conf", None) is None
    assert load_settings("boot.conf", {"endpoint_override": "http://nova"}) is None


@pytest.mark.parametrize(("section", "words"), [
    ({"trusted_certs_fallback": "allow"}, "must be refuse or host"),
    ({"trusted_certs_timeout": "0"}, "trusted_certs_timeout"),
    ({"trusted_certs_timeout": "nan"}, "trusted_certs_timeout"),
    ({"trusted_certs_timeout": "1000"}, "at most 300"),
    ({"insecure": "maybe"}, "insecure"),
])
def test_invalid_settings_are_input_errors(section, words):
    with pytest.raises(errors.InputError, match=words):
        load_settings("boot.conf", {"auth_type": "password", **section})


def test_the_settings_digest_changes_with_any_option():
    one = load_settings("boot.conf", {"auth_type": "password", "endpoint_override": "http://a"})
    two = load_settings("boot.conf", {"auth_type": "password", "endpoint_override": "http://b"})
    assert one is not None and two is not None and one.digest != two.digest and one.fallback == "refuse"


def test_a_domain_uuid_must_be_a_uuid():
    assert server_trust.server_id_of(SERVER.upper()) == SERVER
    with pytest.raises(errors.UnknownServer):
        server_trust.server_id_of("../../servers")


# --- the narrowing ---------------------------------------------------------------------------------


class _Record:
    """What check_signer reads of a trust record."""

    def __init__(self, certificate: bytes, anchors: tuple[str, ...]) -> None:
        self.certificate_der = certificate
        self.anchor_fingerprints = anchors
        self.image_id = "img"
        self.certificate_id = None

        class _Props:
            certificate_uuid = "claimed"

        self.properties = _Props()


CERTS = [f"cert-{n}".encode() for n in range(4)]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    store = RecordStore(str(tmp_path_factory.mktemp("state")))
    store.prepare()
    for n, cert in enumerate(CERTS):
        store.anchors.bind(f"id-{n}", cert)
    return store


_ids = st.lists(st.sampled_from([f"id-{n}" for n in range(4)] + ["never-fetched"]), max_size=3).map(tuple)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=2), _ids, _ids)
def test_the_server_list_only_narrows(records, signer, anchors, host, server):
    """Accepted exactly when the signer or an anchor is bound to a host id (or the host has none) AND to a
    server id (or the server has none)."""
    record = _Record(CERTS[signer], tuple(fingerprint(CERTS[a]) for a in anchors))
    names = {f"id-{n}" for n in [signer, *anchors]}
    expected = (not host or bool(names & set(host))) and (not server or bool(names & set(server)))
    policy = BootPolicy(trusted_certificate_ids=host, server_certificate_ids=server, server_id=str(uuid.uuid4()),
                        immutable_bases=True)
    try:
        check_signer(record, records, policy)  # type: ignore[arg-type]
        accepted = True
    except errors.UntrustedCertificate:
        accepted = False
    assert accepted == expected


def test_the_default_configuration_loads_nothing_of_per_server_trust(tmp_path):
    """No ``[nova]``: a hook call (cold and warm) imports neither module (tests/test_warm_boot.py keeps
    the rest of the warm module set)."""
    from tests.test_boot_hook import Host, domain_xml
    from tests.test_warm_boot import _modules_of_hook

    host = Host(tmp_path)
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    for operation in ("prepare", "start"):
        code, stderr, modules = _modules_of_hook(host, instance, xml, operation, tmp_path)
        assert code == 0, stderr
        assert not {"imgsign.compute.server_trust", "imgsign.compute.nova_client"} & set(modules)
