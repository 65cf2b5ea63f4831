"""Peer links over real sockets (127.0.0.1, port 0) and real mutual TLS 1.3."""

from __future__ import annotations

import trio
from structlog.testing import capture_logs

from aura_node.errors import TransportError
from aura_node.transport.framing import Data, FrameEncoder, Hello
from tests.integration.test_transport_support import (
    events,
    node,
    raw_link,
    state,
    wait_until,
)


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
        sa, sb = state(a, "b"), state(b, "a")
        assert sa["state"] == sb["state"] == "up"
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


async def test_registry_hash_mismatch_names_both_hashes_on_both_sides() -> None:
    with capture_logs() as logs:
        a, b = node("a", 1), node("b", 2)
        b.registry = b"\xee" * 32
        async with trio.open_nursery() as n:
            await a.start(n)
            await b.start(n)
            a.set_peers(a.pin_node(b))
            b.set_peers(b.pin_node(a))
            await wait_until(lambda: bool(events(logs, "a", "outbound connection refused")))
            await wait_until(lambda: bool(events(logs, "b", "outbound connection refused")))
            n.cancel_scope.cancel()
    ours, theirs = a.registry.hex(), b.registry.hex()
    for side in ("a", "b"):
        for ev in ("outbound connection refused", "inbound connection refused"):
            for e in events(logs, side, ev):
                assert "registry_mismatch" in (e["code"] + e["reason"])
                assert ours in e["reason"] and theirs in e["reason"], e
    assert events(logs, "a", "inbound connection refused")[0]["code"] == "registry_mismatch"
    assert events(logs, "a", "outbound connection refused")[0]["code"] == "refused_by_peer"
    assert ours in str(state(a, "b")["last_error"]) and theirs in str(state(a, "b")["last_error"])


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
        b.stop()
        await wait_until(lambda: state(a, "b")["state"] != "up")
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
            await wait_until(
                lambda a=a, b=b: (
                    state(a, "b")["connections"] == 1  # type: ignore[misc]
                    and state(b, "a")["connections"] == 1
                    and state(a, "b")["state"] == state(b, "a")["state"] == "up"
                )
            )
            await trio.sleep(0.2)  # and it stays that way
            sa, sb = state(a, "b"), state(b, "a")
            assert sa["connections"] == sb["connections"] == 1
            lower_is_a = a.key.device_id < b.key.device_id
            # The surviving link is the one the lower device id dialed, seen from both ends.
            assert sa["direction"] == ("outbound" if lower_is_a else "inbound")
            assert sb["direction"] == ("inbound" if lower_is_a else "outbound")
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
            Hello(version=1, device_id="0" * 32, node_name="r", registry_hash=b"x")
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
                await wait_until(lambda: bool(events(logs, "a", "link dropped")))
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
        dropped = events(logs, "a", "link dropped")[0]
        assert dropped["code"] == code and dropped["peer"] == "r", dropped
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
            await wait_until(lambda: state(a, "b")["state"] == state(b, "a")["state"] == "up")
            b.stop()
            await wait_until(lambda: state(a, "b")["state"] != "up")
            n.cancel_scope.cancel()
    closed = [e for e in events(logs, "a", "link closed") if e.get("code") == "shutdown"]
    assert closed and closed[0]["peer"] == "b"
    assert not [e for e in events(logs, "a", "link dropped") if e["peer"] == "b"]
