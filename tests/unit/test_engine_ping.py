"""Ping role machines: conformance with the projected local types, drivers, rehydration."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import ConsumedStateError, RemoteProtocolError, WrongPhaseError
from aura_node.protocols import engine as eng
from aura_node.protocols.ping.choreography import Ping, PingAbort, Pong
from aura_node.protocols.ping.roles import (
    SPEC,
    AwaitingPong,
    PingInitiator,
    PingInitiatorDriver,
    PingResponder,
    PingResponderDriver,
)
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import NodeServices
from aura_node.session.conformance import check_conformance
from aura_node.session.typestate import phase_of

SID = "ab" * 16
SERVICES = NodeServices(self_name="a", self_role="device",
                        device_key=DeviceKey.from_seed(b"a" * 32), peers={})


@pytest.mark.parametrize("cls", [PingInitiator, PingResponder])
def test_role_machines_conform_to_the_projection(cls: type) -> None:
    check_conformance(cls, REGISTRY["ping"].project(cls.role))


def test_spec_covers_every_message_of_the_choreography() -> None:
    assert set(SPEC.message_types.values()) == set(REGISTRY["ping"].messages)
    assert eng.PROTOCOLS["ping"] is SPEC


def test_typestate_is_linear_and_phase_checked() -> None:
    ready = PingInitiator(session_id=SID, nonce=b"n" * 16)
    waiting, ping = ready.send_ping(1.0)
    assert ping == Ping(nonce=b"n" * 16)
    with pytest.raises(ConsumedStateError):
        ready.send_ping(2.0)
    with pytest.raises(RemoteProtocolError, match="echoes nonce"):
        waiting.receive_pong(Pong(nonce=b"x" * 16), 2.0)
    done = waiting.receive_pong(Pong(nonce=b"n" * 16), 2.0)  # still live after the bad one
    with pytest.raises(WrongPhaseError):
        done.time_out()  # type: ignore[misc]


def _start(role: str, **kw: object) -> eng.Start:
    roles = {"a": "initiator", "b": "responder"}
    return eng.Start(session=SID, choreography="ping", role=role,
                     self_name="a" if role == "initiator" else "b", roles=roles,
                     params={"timeout": 5.0}, now=100.0, entropy=bytes(range(32)), **kw)


def test_initiator_driver_round_trip_and_timeout() -> None:
    d = PingInitiatorDriver(SERVICES)
    effects = d.start(_start("initiator"))
    assert effects == [eng.Send(to=("b",), message=Ping(nonce=bytes(range(16)))),
                       eng.ArmTimer(name="deadline", deadline=105.0)]
    assert d.status()["phase"] == "AwaitingPong"
    t = PingInitiatorDriver(SERVICES)
    t.start(_start("initiator"))
    assert t.on_timer(eng.TimerFired(name="deadline", now=105.0)) == [
        eng.Fail(code="timeout", reason="no Pong from b within 5 s")]
    assert t.is_final and t.status()["phase"] == "Failed"


@dataclass(frozen=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def _records(*items: tuple[str, object]) -> list[Rec]:
    return [Rec(seq=i, ts=100.0, session=SID, kind=k, body=eng.encode_body(b))  # type: ignore[arg-type]
            for i, (k, b) in enumerate(items)]


def test_initiator_rehydration_is_conservative() -> None:
    from aura_node.crypto.keys import DeviceKey
    from aura_node.protocols.envelope import encode_envelope, seal

    start = _start("initiator")
    start_body = eng.StartBody(choreography="ping", role="initiator", self_name="a",
                               roles=dict(start.roles), params={"timeout": 5.0}, now=100.0,
                               entropy=start.entropy)
    # a start without the journaled Ping proves nothing was promised: give up
    assert PingInitiatorDriver.rehydrate(_records((eng.KIND_START, start_body)), SERVICES) is None
    env = seal(DeviceKey.from_seed(b"a" * 32), choreography="ping", session=SID,
               message=Ping(nonce=start.entropy[:16]))
    recs = _records((eng.KIND_START, start_body),
                    (eng.KIND_OUT, eng.OutBody(to=["b"], envelope=encode_envelope(env))))
    d = PingInitiatorDriver.rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "AwaitingPong"
    assert d._state is not None and phase_of(d._state) is AwaitingPong
    # a journaled Ping whose nonce is not the start's entropy: contradictory, refuse
    bad = seal(DeviceKey.from_seed(b"a" * 32), choreography="ping", session=SID,
               message=Ping(nonce=b"z" * 16))
    assert PingInitiatorDriver.rehydrate(_records(
        (eng.KIND_START, start_body),
        (eng.KIND_OUT, eng.OutBody(to=["b"], envelope=encode_envelope(bad)))), SERVICES) is None


def test_responder_resumes_a_pong_it_never_journaled() -> None:
    from aura_node.crypto.keys import DeviceKey
    from aura_node.protocols.envelope import encode_envelope, seal

    start_body = eng.StartBody(choreography="ping", role="responder", self_name="b",
                               roles={"b": "responder", "a": "initiator"}, params={},
                               now=100.0, entropy=b"e" * 32, opened_by="a")
    env = seal(DeviceKey.from_seed(b"a" * 32), choreography="ping", session=SID,
               message=Ping(nonce=b"n" * 16))
    recs = _records((eng.KIND_START, start_body),
                    (eng.KIND_IN, eng.InBody(sender="a", sender_role="initiator",
                                             envelope=encode_envelope(env), now=100.0)))
    d = PingResponderDriver.rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "Answering"
    assert d.resume(101.0) == [eng.Send(to=("a",), message=Pong(nonce=b"n" * 16)),
                               eng.Complete(result={})]


def test_on_abort_moves_both_roles_to_failed() -> None:
    i = PingInitiatorDriver(SERVICES)
    i.start(_start("initiator"))
    i.on_abort("bye", by_peer="b")
    assert i.status()["phase"] == "Failed"
    r = PingResponderDriver(SERVICES)
    r.start(_start("responder", opened_by="a"))
    r.on_abort("deadline", by_peer=None)
    assert r.status()["phase"] == "Failed"
    assert PingAbort(reason="x").reason == "x"
