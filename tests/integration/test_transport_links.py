"""Peer links over real sockets (127.0.0.1, port 0) and real mutual TLS 1.3."""

from __future__ import annotations

import trio
import trio.testing
from structlog.testing import capture_logs

from aura_node.errors import TransportError
from aura_node.logs import get_logger
from aura_node.transport import handshake, preface, tls
from aura_node.transport.framing import Close, Data, Frame, FrameDecoder, FrameEncoder, Hello
from aura_node.transport.handshake import Established, PinnedPeer
from aura_node.transport.link import InboundData, LinkCounters, PeerLink
from aura_node.transport.queue import PayloadQueue
from tests.integration.test_transport_support import (
    events,
    no_link,
    node,
    raw_link,
    settled,
    state,
    wait_until,
)


def _dropped(logs: list[dict[str, object]], node_name: str, peer: str) -> list[dict[str, object]]:
    return [e for e in events(logs, node_name, "link dropped") if e["peer"] == peer]


async def test_two_nodes_exchange_data_both_ways() -> None:
    a, b = node("a", 1), node("b", 2)
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        a.set_peers(a.pin_node(b))
        b.set_peers(b.pin_node(a))
        assert a.net is not None and b.net is not None
        for i in range(50):
            await a.net.send("b", b"a->b %d" % i)
            assert b.net.send_nowait("a", b"b->a %d" % i)
        got_b = [await b.receive() for _ in range(50)]
        got_a = [await a.receive() for _ in range(50)]
        assert {g.payload for g in got_b} == {b"a->b %d" % i for i in range(50)}
        assert {g.payload for g in got_a} == {b"b->a %d" % i for i in range(50)}
        assert {(g.peer_name, g.device_id) for g in got_b} == {("a", a.key.device_id)}
        assert {(g.peer_name, g.device_id) for g in got_a} == {("b", b.key.device_id)}
        # Both dialed: the duplicate may still be resolving (a side can be "down" for a moment
        # between its superseded link and the survivor); the pair must end up on one link.
        await wait_until(lambda: settled(a, b))
        sa, sb = state(a, "b"), state(b, "a")
        assert sa["frames_out"] == sb["frames_in"] == 50
        assert sb["frames_out"] == sa["frames_in"] == 50
        n.cancel_scope.cancel()


async def test_three_nodes_all_pairs() -> None:
    nodes = [node(f"n{i}", 10 + i) for i in range(3)]
    async with trio.open_nursery() as n:
        for x in nodes:
            await x.start(n)
        for x in nodes:
            x.set_peers(*(x.pin_node(y) for y in nodes if y is not x))
        for x in nodes:
            for y in nodes:
                if x is not y:
                    assert x.net is not None
                    await x.net.send(y.name, f"{x.name}->{y.name}".encode())
        for y in nodes:
            got = sorted([(await y.receive()).payload for _ in range(2)])
            assert got == sorted(f"{x.name}->{y.name}".encode() for x in nodes if x is not y)
        n.cancel_scope.cancel()


async def test_unknown_peer_is_refused_on_both_sides_and_logged() -> None:
    with capture_logs() as logs:
        a, c = node("a", 1), node("c", 3)
        async with trio.open_nursery() as n:
            await a.start(n)
            await c.start(n)
            # c pins a; a has never heard of c (c's certificate is valid, just not pinned).
            c.set_peers(c.pin_node(a))
            await wait_until(lambda: bool(events(logs, "c", "outbound connection refused")))
            await wait_until(lambda: bool(events(logs, "a", "inbound connection refused")))
            n.cancel_scope.cancel()
    refused = events(logs, "a", "inbound connection refused")[0]
    assert refused["code"] == "unknown_peer"
    assert c.key.public.hex() in refused["reason"] and "unknown peer" in refused["reason"]
    told = events(logs, "c", "outbound connection refused")[0]
    assert told["code"] == "refused_by_peer" and told["peer"] == "a"
    assert "[unknown_peer]" in told["reason"] and c.key.public.hex() in told["reason"]
    assert state(c, "a")["state"] != "up"
    assert "unknown_peer" in str(state(c, "a")["last_error"])


async def test_mismatched_pinned_key_is_refused() -> None:
    with capture_logs() as logs:
        a, b = node("a", 1), node("b", 2)
        impostor_key_hex = node("x", 9).key.public.hex()
        async with trio.open_nursery() as n:
            await a.start(n)
            await b.start(n)
            a.set_peers(a.pin_node(b))
            # b pins "a" at a's address, but with some other device's key.
            b.set_peers(b.pin("a", impostor_key_hex, a.port))
            await wait_until(lambda: bool(events(logs, "b", "outbound connection refused")))
            await wait_until(lambda: len(events(logs, "a", "inbound connection refused")) >= 1)
            await wait_until(lambda: len(events(logs, "a", "outbound connection refused")) >= 1)
            n.cancel_scope.cancel()
    b_out = events(logs, "b", "outbound connection refused")[0]
    assert b_out["code"] == "peer_key_mismatch"
    assert a.key.public.hex() in b_out["reason"] and impostor_key_hex in b_out["reason"]
    a_in = events(logs, "a", "inbound connection refused")[0]
    assert a_in["code"] == "refused_by_peer" and "peer_key_mismatch" in a_in["reason"]
    # And the other direction: b does not know a's real key at all.
    a_out = events(logs, "a", "outbound connection refused")[0]
    assert a_out["code"] == "refused_by_peer" and "unknown_peer" in a_out["reason"]
    assert state(a, "b")["state"] != "up" and state(b, "a")["state"] != "up"


async def test_different_choreographies_still_link_and_each_side_learns_the_others() -> None:
    """An upgraded node (another version of a choreography, or one more) links with a peer
    that did not upgrade: the hello carries the versions, the session layer judges them."""
    a, b = node("a", 1), node("b", 2)
    b.registry = (("test", 2, b"\xee" * 32), ("test", 1, bytes(range(32))),
                  ("plugin-only", 1, b"\x01" * 32))
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        a.set_peers(a.pin_node(b))
        b.set_peers(b.pin_node(a))
        await wait_until(lambda: settled(a, b))
        assert a.net is not None and b.net is not None
        assert a.net.peer_choreographies("b") == b.registry
        assert b.net.peer_choreographies("a") == a.registry
        await a.net.send("b", b"after an upgrade")
        assert (await b.receive()).payload == b"after an upgrade"
        n.cancel_scope.cancel()
    assert a.net.peer_choreographies("nobody") is None


async def test_reconnect_after_peer_restart_and_queued_messages_wait() -> None:
    a = node("a", 1, reconnect_max_seconds=0.5)
    b = node("b", 2, reconnect_max_seconds=0.5)
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        a.set_peers(a.pin_node(b))
        b.set_peers(b.pin_node(a))
        assert a.net is not None
        await a.net.send("b", b"before")
        assert (await b.receive()).payload == b"before"
        # Stop b only once the pair runs one link: a's "down" must mean no link at all, not
        # the moment between a superseded duplicate and its replacement, which would take
        # "while down" off the queue.
        await wait_until(lambda: settled(a, b))
        b.stop()
        await wait_until(lambda: no_link(a, "b"))
        # Queued while the link is down: waits in the bounded queue.
        assert a.net.send_nowait("b", b"while down")
        assert state(a, "b")["queued"] == 1
        await b.start(n)  # same key, same port, peers from before
        assert (await b.receive()).payload == b"while down"
        await wait_until(lambda: state(a, "b")["state"] == "up")
        await a.net.send("b", b"after")
        assert (await b.receive()).payload == b"after"
        n.cancel_scope.cancel()


async def test_simultaneous_dial_resolves_to_exactly_one_link() -> None:
    for trial in range(3):
        a, b = node("a", 1 + 2 * trial), node("b", 2 + 2 * trial)
        async with trio.open_nursery() as n:
            await a.start(n)
            await b.start(n)
            # Pin both at once: both dial each other at the same time.
            a.set_peers(a.pin_node(b))
            b.set_peers(b.pin_node(a))
            # The surviving link is the one the lower device id dialed, seen from both ends
            # (waited for, not slept for: how long resolution takes depends on the machine).
            await wait_until(lambda a=a, b=b: settled(a, b))  # type: ignore[misc]
            await trio.sleep(0.2)  # and it stays that way: no flapping, no third link
            sa, sb = state(a, "b"), state(b, "a")
            lower_is_a = a.key.device_id < b.key.device_id
            assert sa["state"] == sb["state"] == "up"
            assert sa["direction"] == ("outbound" if lower_is_a else "inbound")
            assert sb["direction"] == ("inbound" if lower_is_a else "outbound")
            # A duplicate still in its handshake when we looked may have come up since: it
            # loses at once and drains in order, so the count returns to one.
            await wait_until(
                lambda a=a, b=b: (
                    state(a, "b")["connections"] == state(b, "a")["connections"] == 1  # type: ignore[misc]
                )
            )
            assert a.net is not None and b.net is not None
            await a.net.send("b", b"x")
            assert (await b.receive()).payload == b"x"
            n.cancel_scope.cancel()


async def test_backpressure_send_blocks_when_peer_never_reads() -> None:
    a = node("a", 1, peer_queue_frames=8)
    r = node("r", 5)
    payload = b"\x00" * 65536
    async with trio.open_nursery() as n:
        await a.start(n)
        a.set_peers(a.pin(r.name, r.key.public.hex(), 1))  # port 1: a's own dials fail
        stream = await raw_link(r, a)  # r handshakes, then never reads
        await wait_until(lambda: state(a, "r")["state"] == "up")
        assert a.net is not None
        sent = 0
        with trio.move_on_after(2.0) as blocked:
            while True:
                await a.net.send("r", payload)
                sent += 1
        assert blocked.cancelled_caught, "send never blocked"
        # Bounded: the queue plus what the kernel's socket buffers hold, not unbounded growth.
        assert sent < 400, sent
        assert state(a, "r")["queued"] == 8
        assert a.net.send_nowait("r", payload) is False
        await trio.aclose_forcefully(stream)
        n.cancel_scope.cancel()


async def test_silent_peer_is_detected_by_idle_timeout() -> None:
    with capture_logs() as logs:
        a, r = node("a", 1), node("r", 5)
        async with trio.open_nursery() as n:
            await a.start(n, keepalive_seconds=0.1)
            a.set_peers(a.pin(r.name, r.key.public.hex(), 1))
            stream = await raw_link(r, a)
            await wait_until(lambda: bool(events(logs, "a", "link dropped")), timeout=5)
            await trio.aclose_forcefully(stream)
            n.cancel_scope.cancel()
    dropped = events(logs, "a", "link dropped")[0]
    assert dropped["code"] == "link_timeout" and dropped["peer"] == "r"


async def test_protocol_violations_drop_only_that_link() -> None:
    """Oversized, malformed and unexpected frames from r drop r's link; a<->b carries on."""
    big = FrameEncoder(max_frame_bytes=1 << 30)
    cases = {
        "frame_too_large": (5000).to_bytes(4, "big") + b"\x00" * 10,
        "frame_invalid": (3).to_bytes(4, "big") + b"\xc1\xc1\xc1",
        "unexpected_frame": big.encode(
            Hello(version=1, device_id="0" * 32, node_name="r", choreographies=())
        ),
    }
    for code, wire in cases.items():
        with capture_logs() as logs:
            a, b, r = node("a", 1, max_frame_bytes=4096), node("b", 2), node("r", 5)
            async with trio.open_nursery() as n:
                await a.start(n)
                await b.start(n)
                a.set_peers(a.pin_node(b), a.pin(r.name, r.key.public.hex(), 1))
                b.set_peers(b.pin_node(a))
                stream = await raw_link(r, a, max_frame_bytes=4096)
                await stream.send_all(big.encode(Data(payload=b"fine")) + wire)
                assert (await a.receive()).payload == b"fine"
                await wait_until(lambda: bool(_dropped(logs, "a", "r")))
                # The peer is told why before the socket closes.
                reply = b""
                with trio.move_on_after(2):
                    try:
                        while chunk := await stream.receive_some():
                            reply += chunk
                    except trio.BrokenResourceError:
                        pass  # no TLS close_notify after the Close frame: fine
                assert code.encode() in reply
                await trio.aclose_forcefully(stream)
                assert a.net is not None and b.net is not None
                await b.net.send("a", b"still here")
                assert (await a.receive()).payload == b"still here"
                await a.net.send("b", b"me too")
                assert (await b.receive()).payload == b"me too"
                n.cancel_scope.cancel()
        dropped = _dropped(logs, "a", "r")[0]
        assert dropped["code"] == code, dropped
        # Only that link: the a<->b pair (including its duplicate resolution) dropped nothing.
        assert not _dropped(logs, "a", "b") and not _dropped(logs, "b", "a")
        if code == "frame_too_large":
            assert "5000" in dropped["reason"] and "4096" in dropped["reason"]


async def test_update_peers_unpins_and_send_refuses_unknown_names() -> None:
    a, b = node("a", 1), node("b", 2)
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        a.set_peers(a.pin_node(b))
        b.set_peers(b.pin_node(a))
        assert a.net is not None
        await a.net.send("b", b"1")
        assert (await b.receive()).payload == b"1"
        a.set_peers()
        await wait_until(lambda: state(b, "a")["state"] != "up")
        assert a.net.link_states() == {}
        try:
            await a.net.send("b", b"2")
        except TransportError as exc:
            assert exc.code == "no_such_peer" and "'b'" in exc.message
        else:
            raise AssertionError("send to an unpinned peer must fail")
        n.cancel_scope.cancel()


async def test_stopping_a_node_closes_its_links_in_order() -> None:
    with capture_logs() as logs:
        a, b = node("a", 1), node("b", 2)
        async with trio.open_nursery() as n:
            await a.start(n)
            await b.start(n)
            a.set_peers(a.pin_node(b))
            b.set_peers(b.pin_node(a))
            # Stop a running pair, not one still resolving duplicate links.
            await wait_until(lambda: settled(a, b))
            b.stop()
            # Not `state != "up"`: every link a has to b must have ended (and been logged).
            await wait_until(lambda: no_link(a, "b"))
            n.cancel_scope.cancel()
    closed = [e for e in events(logs, "a", "link closed") if e.get("code") == "shutdown"]
    assert closed and closed[0]["peer"] == "b"
    assert not [e for e in events(logs, "a", "link dropped") if e["peer"] == "b"]


async def test_close_in_flight_when_the_node_stops_still_reaches_the_peer() -> None:
    """Regression: a Close the writer is about to send survives its node being stopped.

    The race behind a flaky "link dropped" on an orderly stop: a node attaches a duplicate
    that loses (its writer still waits for activation), closes it as superseded, and is
    stopped before that writer runs. The writer used to mark its Close sent and then write
    it unshielded: trio's cancellation check at the start of ``send_all`` stopped it before a
    byte left, and ``run`` skipped the "shutdown" Close because one was "sent". The peer got
    a bare EOF (or a reset) on a link it ran and logged a fault. Here r's end is a hand-made
    PeerLink in exactly that state; a is a real node.
    """
    with capture_logs() as logs:
        a, r = node("a", 1), node("r", 5)
        async with trio.open_nursery() as n:
            await a.start(n)
            a.set_peers(a.pin(r.name, r.key.public.hex(), 1))  # port 1: a's own dials fail
            stream = await raw_link(r, a)
            inbox, _unused = trio.open_memory_channel[InboundData](1)
            r_link = PeerLink(
                Established(
                    stream=stream,
                    peer=PinnedPeer(
                        name="a", public_key=a.key.public.raw, device_id=a.key.device_id
                    ),
                    dialer_device_id=r.key.device_id,
                    decoder=FrameDecoder(max_frame_bytes=1 << 20),
                ),
                outbound=True,
                queue=PayloadQueue(4),
                inbound=inbox,
                counters=LinkCounters(),
                encoder=FrameEncoder(max_frame_bytes=1 << 20),
                keepalive_seconds=5.0,
                idle_timeout=15.0,
                log=get_logger("aura_node.transport", node="r"),
            )
            r_scope = trio.CancelScope()

            async def run_r_link() -> None:
                with r_scope:
                    await r_link.run()

            n.start_soon(run_r_link)
            await wait_until(lambda: state(a, "r")["state"] == "up")
            await trio.testing.wait_all_tasks_blocked()  # r's writer waits for activation
            # No checkpoint between the two: the orderly close starts, then r is "stopped".
            r_link.close("superseded", "duplicate link: kept the other one")
            r_scope.cancel()
            await wait_until(lambda: state(a, "r")["state"] != "up")
            n.cancel_scope.cancel()
    assert not events(logs, "a", "link dropped"), events(logs, "a", "link dropped")
    closed = events(logs, "a", "link closed")
    assert [(e["peer"], e["code"]) for e in closed] == [("r", "superseded")], closed


async def test_dialer_stopped_while_waiting_for_hello_ack_says_shutdown() -> None:
    """The acceptor goes live when it sends HelloAck; a dialer stopped before reading it must
    end with Close("shutdown") like a link (and close its socket), not vanish: the acceptor
    would log "link dropped" for an orderly stop. r accepts by hand and never sends HelloAck.
    """
    b, r = node("b", 2), node("r", 5)
    r_tls = tls.tls_identity(r.key)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as n:
            await b.start(n)
            b.set_peers(b.pin("r", r.key.public.hex(), port))
            sock = await listeners[0].accept()
            try:
                _, cert = await handshake._read_preface(sock, (preface.Kind.CERT,))
                await sock.send_all(preface.encode_certificate(r_tls.certificate_der))
                await handshake._read_preface(sock, (preface.Kind.ACCEPT,))
                stream = await handshake._tls(
                    sock,
                    tls.server_context(r_tls, cert),
                    server_side=True,
                    peer=PinnedPeer(
                        name="b", public_key=b.key.public.raw, device_id=b.key.device_id
                    ),
                )
                decoder = FrameDecoder(max_frame_bytes=1 << 20)
                hello = await handshake._read_frame(stream, decoder, "Hello")
                assert isinstance(hello, Hello)
                b.stop()  # b is waiting for our HelloAck
                frames = decoder.frames() + await _frames_until_eof(stream)
            finally:
                await trio.aclose_forcefully(sock)
            n.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()
    assert frames == [Close(code="shutdown", reason="the node is shutting down")], frames


async def _frames_until_eof(stream: trio.SSLStream[trio.SocketStream]) -> list[Frame]:
    """What the other end sends until it closes (a reset counts as the end)."""
    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    with trio.fail_after(10):
        while True:
            try:
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                break
            if not data:
                break
            decoder.feed(data)
    return decoder.frames()
