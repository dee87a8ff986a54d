"""Network phases (imgsign._internal.netlimits): a wall-clock deadline on every socket, whatever library
opened it, a cap on every body read through requests, and nothing changed outside a phase.

None of this exists on main before this branch (1f59a47): there a read that trickles is bounded per
read only, and ``urllib``/``requests`` read an answer whole.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
import requests

from imgsign import errors
from imgsign._internal import netlimits
from imgsign._internal.deadline import Deadline
from tests.servers.hostile import Hostile, Route, hostile_server

BODY = b"x" * 4096
SLACK = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Hostile]:
    with hostile_server([Route("GET", "/thing", 200, BODY, {"Content-Type": "application/octet-stream"})],
                        tmp_path_factory.mktemp("netlimits")) as running:
        yield running


def test_the_deadline_is_pure_arithmetic_on_a_clock():
    now = [100.0]
    deadline = Deadline(2.5, "[x] timeout", clock=lambda: now[0])
    assert deadline.remaining() == 2.5 and not deadline.expired
    now[0] = 102.5
    assert deadline.remaining() == 0.0 and deadline.expired
    assert deadline.describe() == "within 2.5 s ([x] timeout)"
    later = Deadline(1, "y", clock=lambda: now[0])  # ends at 103.5, after the first one's 102.5
    assert deadline.sooner(later) is deadline and later.sooner(deadline) is deadline
    assert deadline.sooner(None) is deadline
    with pytest.raises(ValueError):
        Deadline(0, "z")


@pytest.mark.parametrize("behaviour", ["trickle", "trickle-headers", "stall", "silent"])
def test_a_slow_peer_is_cut_at_the_deadline_whatever_library_reads_it(server, behaviour):
    """urllib (not requests) with a 30 s per-read timeout: the phase's one-second deadline still wins."""
    start = time.monotonic()
    with pytest.raises(errors.GlanceUnavailable) as caught, \
            netlimits.limited(Deadline(1.0, "the test"), errors.GlanceUnavailable, "the peer"):
        with urllib.request.urlopen(f"{server.url(behaviour)}/thing", timeout=30) as response:
            response.read()
    assert time.monotonic() - start < 1.0 + SLACK
    assert caught.value.message == "the peer did not answer within 1 s (the test)"


def test_a_connect_after_the_deadline_is_refused(server):
    with pytest.raises(errors.KeyManagerError, match="did not answer within"), \
            netlimits.limited(Deadline(0.2, "the test"), errors.KeyManagerError, "the key manager"):
        time.sleep(0.3)
        requests.get(f"{server.url()}/thing", timeout=30)


@pytest.mark.parametrize("behaviour", ["huge", "huge-chunked", "gzip-bomb"])
def test_a_body_over_the_cap_is_refused_after_reading_the_cap(server, behaviour):
    with pytest.raises(errors.SignerRefused, match="larger than 1 MiB"), \
            netlimits.limited(None, errors.SignerUnavailable, "transit", max_body=1024 * 1024,
                              too_large=errors.SignerRefused):
        requests.get(f"{server.url(behaviour)}/thing", timeout=30).content  # noqa: B018 - reads the body


def test_a_phase_asks_for_no_compression_and_follows_no_redirect(server):
    with netlimits.limited(Deadline(5, "the test"), errors.GlanceUnavailable, "Glance"):
        redirected = requests.get(f"{server.url('redirect')}/thing", timeout=30)
    assert redirected.status_code == 302 and "Location" not in redirected.headers
    sent = [r for r in server.requests() if r["target"].startswith("/redirect/")]
    assert sent[-1]["headers"]["accept-encoding"] == "identity"
    assert not [r for r in server.requests() if r["target"] == "/ok/thing"]


def test_outside_a_phase_nothing_changes(server):
    """The hooks are process-wide once installed, but inert without a phase on the thread."""
    with netlimits.limited(None, errors.GlanceUnavailable, "Glance"):
        pass
    answer = requests.get(f"{server.url('huge')}/thing", timeout=30)
    assert len(answer.content) > netlimits.MAX_DOCUMENT
    followed = requests.get(f"{server.url('redirect')}/thing", timeout=30)
    assert followed.status_code == 200 and followed.content == BODY
    assert "identity" not in server.requests()[-1]["headers"]["accept-encoding"]


def test_the_watchdog_never_shuts_down_a_socket_that_took_a_closed_ones_number():
    """A socket registered, closed, and its descriptor number reused by another socket: the deadline leaves
    the newcomer alone (its inode differs), so it can never cut a file or socket outside the phase."""
    phase = netlimits.Phase(Deadline(30, "the test"), None)
    first = socket.socket()
    phase.register(first)
    number = first.fileno()
    first.close()
    left, right = socket.socketpair()
    try:
        if left.fileno() != number:  # make the newcomer take the old number
            os.dup2(left.fileno(), number)
            newcomer = socket.socket(fileno=number)
        else:
            newcomer = left
        phase.fire()
        right.sendall(b"still here")
        assert newcomer.recv(64) == b"still here"
    finally:
        for sock in (left, right):
            sock.close()


def test_a_connection_kept_alive_from_before_the_phase_is_cut_at_the_deadline_too(server):
    """requests reuses a pooled connection (no new connect): the phase must still cut it at its deadline."""
    session = requests.Session()
    assert session.get(f"{server.url()}/thing", timeout=30).content == BODY  # pooled, kept alive
    start = time.monotonic()
    with pytest.raises(errors.GlanceUnavailable, match="did not answer within 1 s"), \
            netlimits.limited(Deadline(1.0, "the test"), errors.GlanceUnavailable, "Glance"):
        session.get(f"{server.url('trickle')}/thing", timeout=30).content  # noqa: B018 - reads the body
    assert time.monotonic() - start < 1.0 + SLACK
    connections = {r["peer"] for r in server.requests()[-2:]}
    assert len(connections) == 1, "the second request did not reuse the first one's connection"
