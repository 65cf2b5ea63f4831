"""Inbound handshakes under a flood of trickling connections (issue 13): honest peers still
link within the handshake deadline, and the whole accept-to-hello time is bounded."""

from __future__ import annotations

import trio
from structlog.testing import capture_logs

from aura_node.transport import preface
from tests.integration.test_transport_support import events, node, state, wait_until

TRICKLERS = 300
HANDSHAKE_TIMEOUT = 4.0


async def _trickle(port: int, stop: trio.Event, connected: list[int]) -> None:
    """A connection that sends 7 of the 8 bytes of a preface header, one at a time, then
    holds the connection silently: it never completes, it only occupies the acceptor."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return
    connected.append(1)
    async with stream:
        try:
            for byte in preface.encode_accept()[:7]:
                await stream.send_all(bytes([byte]))
                with trio.move_on_after(0.05):
                    await stop.wait()
            with trio.move_on_after(60):
                await stream.receive_some(1)  # until the acceptor drops us
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def test_an_honest_peer_links_within_the_deadline_despite_300_tricklers() -> None:
    a = node("a", 1, handshake_timeout_seconds=HANDSHAKE_TIMEOUT)
    b = node("b", 2, handshake_timeout_seconds=HANDSHAKE_TIMEOUT)
    stop = trio.Event()
    connected: list[int] = []
    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            await a.start(n)
            await b.start(n)
            # a cannot dial b (b's pin points at a closed port): the link can only come up
            # through a's flooded listener.
            a.set_peers(a.pin(b.name, b.key.public.hex(), 1))
            for _ in range(TRICKLERS):
                n.start_soon(_trickle, a.port, stop, connected)
            await wait_until(lambda: len(connected) >= TRICKLERS, timeout=20)
            await trio.sleep(0.3)  # every slot of a is held by a trickler now
            started = trio.current_time()
            b.set_peers(b.pin_node(a))
            await wait_until(lambda: state(a, "b")["state"] == "up", timeout=HANDSHAKE_TIMEOUT,
                             what="b's link through the flood")
            took = trio.current_time() - started
            assert b.net is not None
            await b.net.send("a", b"through the flood")
            got = await a.receive()
            assert (got.peer_name, got.payload) == ("b", b"through the flood")
            stop.set()
            n.cancel_scope.cancel()
    assert took < HANDSHAKE_TIMEOUT
    refused = events(logs, "a", "inbound connection refused")
    # tricklers were cut (evicted or timed out) and said why; no honest handshake was refused
    assert refused and all(e["peer"] is None for e in refused)
    assert {e["code"] for e in refused} <= {"handshake_evicted", "link_timeout"}


async def test_the_deadline_covers_the_whole_accept_to_hello_time() -> None:
    # One trickler, alone: it is refused at the deadline counted from accept, not later.
    a = node("a", 1, handshake_timeout_seconds=0.5)
    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            await a.start(n)
            stream = await trio.open_tcp_stream("127.0.0.1", a.port)
            started = trio.current_time()
            await stream.send_all(b"AU")
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b""
            took = trio.current_time() - started
            await stream.aclose()
            n.cancel_scope.cancel()
    assert 0.4 <= took < 2.0
    (refused,) = events(logs, "a", "inbound connection refused")
    assert refused["code"] == "link_timeout"
    assert "from accept to hello" in refused["reason"]
