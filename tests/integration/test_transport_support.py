"""Support for the transport integration and fuzz tests (no tests here): real nodes, port 0."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from aura_node.config import NodeConfig, NodeSection, PeerConfig, TransportSection
from aura_node.crypto.keys import DeviceKey
from aura_node.transport import InboundData, PeerNetwork
from aura_node.transport.framing import ChoreographyVersion
from aura_node.transport.handshake import LocalIdentity, PinnedPeer, dial_handshake
from aura_node.transport.tls import tls_identity

#: what the test nodes advertise in their hello
REGISTRY: tuple[tuple[str, int, bytes], ...] = (("test", 1, bytes(range(32))),)


@dataclass
class Node:
    name: str
    key: DeviceKey
    registry: tuple[tuple[str, int, bytes], ...] = REGISTRY
    transport: TransportSection = field(default_factory=TransportSection)
    port: int = 0
    peers: tuple[PeerConfig, ...] = ()
    net: PeerNetwork | None = None
    inbox: trio.MemoryReceiveChannel[InboundData] | None = None
    scope: trio.CancelScope | None = None

    def config(self) -> NodeConfig:
        return NodeConfig(
            node=NodeSection(name=self.name, listen=f"127.0.0.1:{self.port}"),
            transport=self.transport,
            peers=self.peers,
        )

    def pin(self, name: str, key_hex: str, port: int) -> PeerConfig:
        return PeerConfig(name=name, public_key=key_hex, address=f"127.0.0.1:{port}")

    def pin_node(self, other: Node) -> PeerConfig:
        return self.pin(other.name, other.key.public.hex(), other.port)

    async def start(self, nursery: trio.Nursery, **kwargs: Any) -> None:
        send, recv = trio.open_memory_channel[InboundData](1000)
        self.net = PeerNetwork(
            key=self.key, config=self.config(), choreographies=self.registry, inbound=send,
            **kwargs,
        )
        self.inbox = recv
        self.scope = trio.CancelScope()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            assert self.scope is not None and self.net is not None
            with self.scope:
                await self.net.serve(task_status=task_status)

        host, port = await nursery.start(serve)
        self.port = port

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    def set_peers(self, *peers: PeerConfig) -> None:
        self.peers = peers
        assert self.net is not None
        self.net.update_peers(self.config())

    async def receive(self, timeout: float = 10.0) -> InboundData:
        assert self.inbox is not None
        with trio.fail_after(timeout):
            return await self.inbox.receive()


def node(name: str, seed: int, **transport: Any) -> Node:
    return Node(
        name=name,
        key=DeviceKey.from_seed(bytes([seed]) * 32),
        transport=replace(TransportSection(), **transport),
    )


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


def state(n: Node, peer: str) -> dict[str, object]:
    assert n.net is not None
    return n.net.link_states()[peer]


def settled(a: Node, b: Node) -> bool:
    """Duplicate resolution between two nodes that pin each other is over, seen from both ends.

    "up" on both sides is not enough: both dial, and each side goes up on the first link it
    completes, so for a moment a can be up on b's link while b is up on a's, and one of the
    two is about to be superseded (a closing link, and a short "down" on one side). Settled
    means both ends run the *same* link, the one the lower device id dialed, which nothing
    can supersede: a late duplicate only ever loses to it.
    """
    sa, sb = state(a, b.name), state(b, a.name)
    a_dials = a.key.device_id < b.key.device_id
    return (
        sa["state"] == sb["state"] == "up"
        and sa["connections"] == sb["connections"] == 1
        and sa["direction"] == ("outbound" if a_dials else "inbound")
        and sb["direction"] == ("inbound" if a_dials else "outbound")
    )


def no_link(n: Node, peer: str) -> bool:
    """``n`` has no established link to ``peer``: every one it had has ended and been logged
    ("link closed"/"link dropped" are logged before the link leaves the slot)."""
    s = state(n, peer)
    return s["connections"] == 0 and s["state"] != "up"


async def raw_link(
    me: Node, target: Node, *, max_frame_bytes: int = 1 << 20
) -> trio.SSLStream[trio.SocketStream]:
    """A hand-driven client that completes the real handshake with ``target`` as ``me``."""
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    local = LocalIdentity(
        node_name=me.name,
        device_id=me.key.device_id,
        tls=tls_identity(me.key),
        choreographies=tuple(ChoreographyVersion(name=n, version=v, hash=h)
                             for n, v, h in me.registry),
        max_frame_bytes=max_frame_bytes,
    )
    peer = PinnedPeer(
        name=target.name, public_key=target.key.public.raw, device_id=target.key.device_id
    )
    try:
        est = await dial_handshake(stream, local=local, peer=peer)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return est.stream


def events(logs: list[dict[str, Any]], node_name: str, event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("node") == node_name and e.get("event") == event]
