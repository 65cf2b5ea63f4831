"""Bad input at node level: junk on the TCP port, and junk *inside* an authenticated link from
a pinned peer (random payloads, forged and replayed envelopes). The node stays up, the journal
is untouched by unsigned junk, and other sessions carry on.

The frame layer itself (malformed, oversized, random frames) is the transport's
(``tests/integration/test_transport_*``); here the point is the node around it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.config import NodeConfig, NodeSection, PeerConfig
from aura_node.crypto.keys import DeviceKey
from aura_node.protocols.envelope import encode_wire, seal
from aura_node.protocols.ping.choreography import Ping, Pong
from aura_node.protocols.registry import advertised_choreographies
from aura_node.transport import PeerNetwork
from tests.integration.nodeproc import NodeProc, cluster, free_port

pytestmark = pytest.mark.e2e


def test_tcp_junk_is_refused_and_the_node_keeps_serving() -> None:
    with cluster(["a", "b"]) as [a, b]:
        a.start()
        b.start()
        a.wait_links_up(["b"])
        for junk in (b"\x00" * 10, os.urandom(4096), b"GET / HTTP/1.1\r\n\r\n",
                     (2**31).to_bytes(4, "big") + b"x"):
            with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
                s.sendall(junk)
                s.settimeout(0.5)  # the node may keep waiting for a TLS hello
                try:
                    while s.recv(4096):
                        pass
                except (ConnectionResetError, TimeoutError):
                    pass
        assert a.ctl("ping", peer="b")["peer"] == "b"
        assert b.proc is not None and b.proc.poll() is None
        assert a.stop() == 0 and b.stop() == 0


async def _as_pinned_peer(node: NodeProc, key: DeviceKey, port: int,
                          payloads: list[bytes]) -> None:
    cfg = NodeConfig(node=NodeSection(name="x", listen=f"127.0.0.1:{port}"),
                     peers=(PeerConfig(name=node.name, public_key=node.public_key,
                                       address=f"127.0.0.1:{node.port}"),))
    send, _recv = trio.open_memory_channel[Any](100)
    # the peer node runs the shipped protocols only; this process may hold test registrations
    net = PeerNetwork(key=key, config=cfg, choreographies=advertised_choreographies(),
                      inbound=send)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve)
        with trio.fail_after(15):
            while net.link_states()[node.name]["state"] != "up":
                await trio.sleep(0.02)
        for p in payloads:
            await net.send(node.name, p)
        with trio.fail_after(15):  # wait until the node has read them all
            while True:
                st_ = await trio.to_thread.run_sync(lambda: node.ctl("status"))
                m = st_["messages"]
                if m["rejected"] + m["accepted"] + m["duplicates"] >= len(payloads):
                    break
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=512), min_size=20, max_size=20))
def test_junk_inside_a_pinned_link_is_rejected_and_sessions_carry_on(
    randoms: list[bytes],
) -> None:
    x_key = DeviceKey.generate()
    x_port = free_port()
    with cluster(["a", "b"]) as [a, b]:
        b.pin_key("x", x_key.public.hex(), x_port)
        a.start()
        b.start()
        a.wait_links_up(["b"])
        sid = os.urandom(16).hex()
        good = seal(x_key, choreography="ping", session=sid, message=Ping(nonce=b"n" * 16))
        other = DeviceKey.generate()
        payloads = [
            *randoms,
            msgspec.msgpack.encode({"not": "an envelope"}),
            # signed by a key that is not x's: bad signature on x's link
            encode_wire(seal(other, choreography="ping", session=sid,
                             message=Ping(nonce=b"n" * 16))),
            # a Pong for a session nobody runs
            encode_wire(seal(x_key, choreography="ping", session=os.urandom(16).hex(),
                             message=Pong(nonce=b"n" * 16))),
            # unknown choreography
            encode_wire(seal(x_key, choreography="nope", session=sid, message=Ping(nonce=b""))),
            encode_wire(good),
            encode_wire(good),  # an exact duplicate: idempotent
        ]
        records_before = b.ctl("status")["journal"]["records"]
        trio.run(_as_pinned_peer, b, x_key, x_port, payloads)
        m = b.ctl("status")["messages"]
        assert m["accepted"] == 1 and m["duplicates"] == 1
        assert m["rejected"] == len(payloads) - 2
        # only the one valid Ping (start, msg.in, msg.out Pong, complete) reached the journal
        time.sleep(0.2)
        assert b.ctl("status")["journal"]["records"] - records_before == 4
        assert a.ctl("ping", peer="b")["peer"] == "b"
        assert b.proc is not None and b.proc.poll() is None
        assert a.stop() == 0 and b.stop() == 0
