"""PeerUp: when a peer's link comes (back) up, the runtime re-sends it the journaled envelopes
its active sessions addressed to it (plain duplicates), and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from aura_node.crypto.keys import DeviceKey
from aura_node.protocols.envelope import decode_wire
from aura_node.protocols.ping.roles import SPEC as PING
from aura_node.protocols.services import NodeServices, PeerInfo
from aura_node.sessions import (
    Outcome,
    PeerDirectory,
    PeerUp,
    SessionRuntime,
    StartSession,
    Step,
    Transmit,
    choreography_monitor,
)

KEYS = {n: DeviceKey.from_seed(n.encode() * 32) for n in ("a", "b", "c")}


@dataclass(frozen=True)
class Inbound:
    peer_name: str
    device_id: str
    payload: bytes


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def runtime(name: str, clock: Clock) -> SessionRuntime:
    others = {n: k for n, k in KEYS.items() if n != name}
    services = NodeServices(self_name=name, self_role="device", device_key=KEYS[name],
                            peers={n: PeerInfo(name=n, role="device", public_key=k.public)
                                   for n, k in others.items()})
    return SessionRuntime(key=KEYS[name], self_name=name,
                          peers=PeerDirectory({n: k.public for n, k in others.items()}),
                          protocols={"ping": PING}, monitor_for=choreography_monitor,
                          clock=clock, services=services)


def ping(rt: SessionRuntime, peer: str, sid: str) -> Step:
    step = rt.handle_command(StartSession(
        choreography="ping", params={"timeout": 5}, roles={rt.self_name: "initiator",
                                                           peer: "responder"},
        session=sid, entropy=bytes(32), reply=Outcome()))
    assert step is not None
    return step


def transmits(step: Step | None) -> list[Transmit]:
    assert step is not None
    return [a for a in step.actions if isinstance(a, Transmit)]


def test_peer_up_resends_exactly_the_active_sessions_envelopes_to_that_peer() -> None:
    clock = Clock()
    a = runtime("a", clock)
    [sent_b] = transmits(ping(a, "b", "1" * 32))
    [sent_c] = transmits(ping(a, "c", "2" * 32))

    step = a.handle_command(PeerUp(peer="b"))
    assert step is not None and step.records == []  # already journaled: nothing to append
    [again] = transmits(step)
    assert len(step.actions) == 1
    assert again.peer == "b" and again.payload == sent_b.payload  # the same bytes
    assert not decode_wire(again.payload).replay  # a plain duplicate, not a replay
    [to_c] = transmits(a.handle_command(PeerUp(peer="c")))
    assert to_c == sent_c

    # an unknown peer, and a peer no session sent anything to, get nothing
    assert a.handle_command(PeerUp(peer="zz")) is None
    b = runtime("b", clock)
    assert b.handle_command(PeerUp(peer="a")) is None


def test_ended_sessions_are_not_resent_and_a_receiver_drops_the_duplicate() -> None:
    clock = Clock()
    a, b = runtime("a", clock), runtime("b", clock)
    [out] = transmits(ping(a, "b", "1" * 32))
    reply = b.handle_inbound(Inbound("a", KEYS["a"].device_id, out.payload))
    [pong] = transmits(reply)
    # b's responder session ended with its Pong: b re-sends nothing on a's link coming up
    assert not b.get("1" * 32).active
    assert b.handle_command(PeerUp(peer="a")) is None
    # a's session is still waiting: the duplicate Ping reaches b, which drops it by digest
    [dup] = transmits(a.handle_command(PeerUp(peer="b")))
    assert b.handle_inbound(Inbound("a", KEYS["a"].device_id, dup.payload)) is None
    assert b.duplicates == 1
    a.handle_inbound(Inbound("b", KEYS["b"].device_id, pong.payload))
    assert not a.get("1" * 32).active
    assert a.handle_command(PeerUp(peer="b")) is None


def test_a_receiver_that_lost_the_opener_opens_the_session_from_the_resend() -> None:
    clock = Clock()
    a = runtime("a", clock)
    ping(a, "b", "1" * 32)  # lost on the way: b never journaled it
    b = runtime("b", clock)
    [dup] = transmits(a.handle_command(PeerUp(peer="b")))
    reply = b.handle_inbound(Inbound("a", KEYS["a"].device_id, dup.payload))
    assert reply is not None and [k for k, _ in reply.records][0] == "session.start"
    [pong] = transmits(reply)
    a.handle_inbound(Inbound("b", KEYS["b"].device_id, pong.payload))
    assert a.get("1" * 32).outcome == "completed"
