"""The authoring kit: dispatch from declarations, abort edges, replay rehydration, registration.

Exercised through the shipped ping protocol (``aura_node.protocols.ping.roles``), which is
written only with the kit, and through small role classes that break the rules on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ALL, ChoreographyBuilder, choreography
from aura_node.crypto.keys import DeviceKey
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import encode_envelope, seal
from aura_node.protocols.kit import (
    NondeterminismError,
    RoleDriver,
    Step,
    final_phases,
    polled,
    protocol,
    unrepeatable,
)
from aura_node.protocols.ping.choreography import Ping, Pong
from aura_node.protocols.ping.roles import (
    SPEC,
    AwaitingPong,
    Completed,
    Failed,
    PingInitiator,
    PingResponder,
)
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import NodeServices
from aura_node.session.conformance import ConformanceError
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

SID = "ab" * 16
KEY_A = DeviceKey.from_seed(b"a" * 32)
SERVICES = NodeServices(self_name="a", self_role="device", device_key=KEY_A, peers={})
INITIATOR = SPEC.driver_class("initiator")
RESPONDER = SPEC.driver_class("responder")
ENTROPY = bytes(range(32))


def _start(role: str, **kw: Any) -> eng.Start:
    return eng.Start(session=SID, choreography="ping", role=role,
                     self_name="a" if role == "initiator" else "b",
                     roles={"a": "initiator", "b": "responder"},
                     params={"timeout": 5.0}, now=100.0, entropy=ENTROPY, **kw)


def _pong(nonce: bytes, now: float = 100.25) -> eng.MessageIn:
    env = seal(DeviceKey.from_seed(b"b" * 32), choreography="ping", session=SID,
               message=Pong(nonce=nonce))
    return eng.MessageIn(sender="b", sender_role="responder", message=Pong(nonce=nonce),
                         envelope=env, now=now)


def _nonce() -> bytes:
    d = INITIATOR(SERVICES)
    sends = [e for e in d.start(_start("initiator")) if isinstance(e, eng.Send)]
    assert len(sends) == 1 and isinstance(sends[0].message, Ping)
    return sends[0].message.nonce


def test_registration_builds_the_spec_from_the_declarations() -> None:
    assert eng.PROTOCOLS["ping"] is SPEC
    assert set(SPEC.message_types.values()) == set(REGISTRY["ping"].messages)
    assert SPEC.openers == {"Ping": eng.Opener(sender_role="initiator", role="responder")}
    assert SPEC.initiator_role == "initiator"
    assert final_phases(PingInitiator) == {Completed, Failed}


def test_params_are_validated_by_their_struct() -> None:
    assert SPEC.validate_params({}) == {"timeout": 10.0}
    assert SPEC.validate_params({"timeout": 3}) == {"timeout": 3.0}
    for bad, why in (({"timeout": 0}, "positive"), ({"timeout": True}, "bool"),
                     ({"nonce": 1}, "unknown field")):
        with pytest.raises(eng.ParamsError, match=why):
            SPEC.validate_params(bad)


def test_dispatch_send_on_start_then_pong_completes() -> None:
    d = INITIATOR(SERVICES)
    effects = d.start(_start("initiator"))
    nonce = _nonce()
    assert effects == [eng.Send(to=("b",), message=Ping(nonce=nonce)),
                       eng.ArmTimer(name="deadline", deadline=105.0)]
    assert nonce != ENTROPY[:16] and len(nonce) == 16  # derived, domain separated
    assert d.status() == {"phase": "AwaitingPong"}
    out = d.on_message(_pong(nonce))
    assert out == [eng.CancelTimer(name="deadline"),
                   eng.Complete(result={"peer": "b", "rtt_ms": 250.0})]
    assert d.is_final and d.status()["phase"] == "Completed"


def test_a_remote_error_rejects_the_message_and_keeps_the_session() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    out = d.on_message(_pong(b"x" * 16))
    assert len(out) == 1 and isinstance(out[0], eng.RecordEvidence)
    assert out[0].kind == "ping.rejected"
    body = eng.decode_rejection(out[0].body)
    assert body is not None and body.peer == "b" and "echoes nonce" in body.reason
    assert d.status()["phase"] == "AwaitingPong"  # still waiting for the right Pong
    assert d.on_message(_pong(_nonce()))[-1] == eng.Complete(
        result={"peer": "b", "rtt_ms": 250.0})


def test_declared_timeout_and_stale_timer() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    assert d.on_timer(eng.TimerFired(name="deadline", now=107.0)) == [
        eng.Fail(code="timeout", reason="no Pong from b within 5 s")]
    assert d.is_final and d.status()["phase"] == "Failed"
    assert d.on_timer(eng.TimerFired(name="deadline", now=108.0)) == []


def test_undeclared_timer_fails_the_session_and_wrong_message_is_refused() -> None:
    r = RESPONDER(SERVICES)
    assert r.start(_start("responder", opened_by="a")) == []
    out = r.on_timer(eng.TimerFired(name="other", now=101.0))
    assert len(out) == 1 and isinstance(out[0], eng.Fail) and out[0].code == "timeout"
    with pytest.raises(Exception, match="can't handle Pong from b .* phase=AwaitingPing"):
        r.on_message(_pong(b"n" * 16))


def test_abort_edges_from_the_class_keyword() -> None:
    i = INITIATOR(SERVICES)
    i.start(_start("initiator"))
    i.on_abort("bye", by_peer="b")
    assert i.status()["phase"] == "Failed" and i.is_final
    i.on_abort("again", by_peer=None)  # final: nothing to do, never raises
    r = RESPONDER(SERVICES)
    r.start(_start("responder", opened_by="a"))
    r.on_abort("deadline", by_peer=None)
    assert r.status()["phase"] == "Failed"


def test_unknown_control_action_names_what_exists() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    with pytest.raises(Exception, match="no control action 'approve' in phase AwaitingPong"):
        d.on_control(eng.ControlAction(action="approve", args={}, now=101.0))


# --- replay rehydration -------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def _records(*items: tuple[str, msgspec.Struct]) -> list[Rec]:
    return [Rec(seq=i, ts=100.0, session=SID, kind=k, body=eng.encode_body(b))
            for i, (k, b) in enumerate(items)]


def _start_body(role: str, **kw: Any) -> eng.StartBody:
    s = _start(role, **kw)
    return eng.StartBody(choreography="ping", role=role, self_name=s.self_name,
                         roles=dict(s.roles), params=dict(s.params), now=s.now,
                         entropy=s.entropy, opened_by=s.opened_by)


def _out(message: msgspec.Struct, to: str = "b") -> eng.OutBody:
    env = seal(KEY_A, choreography="ping", session=SID, message=message)
    return eng.OutBody(to=[to], envelope=encode_envelope(env))


def test_replay_reaches_the_journaled_phase() -> None:
    recs = _records((eng.KIND_START, _start_body("initiator")),
                    (eng.KIND_OUT, _out(Ping(nonce=_nonce()))))
    d = INITIATOR.rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "AwaitingPong"
    assert d.resume(101.0) == []  # the Ping is journaled: the runtime re-sends it, not us
    assert d.value is not None
    assert d.on_message(_pong(_nonce()))[-1] == eng.Complete(
        result={"peer": "b", "rtt_ms": 250.0})


def test_replay_resumes_sends_that_were_never_durable() -> None:
    d = INITIATOR.rehydrate(_records((eng.KIND_START, _start_body("initiator"))), SERVICES)
    assert d is not None and d.status()["phase"] == "AwaitingPong"
    assert d.resume(101.0) == [eng.Send(to=("b",), message=Ping(nonce=_nonce())),
                               eng.ArmTimer(name="deadline", deadline=105.0)]


def test_replay_that_disagrees_with_the_journal_is_nondeterminism() -> None:
    recs = _records((eng.KIND_START, _start_body("initiator")),
                    (eng.KIND_OUT, _out(Ping(nonce=b"z" * 16))))
    with pytest.raises(NondeterminismError, match=rf"session {SID}: replaying input record 0 "
                                                  r"sends Ping .*msg.out record 1"):
        INITIATOR.rehydrate(recs, SERVICES)
    extra = _records((eng.KIND_START, _start_body("initiator")),
                     (eng.KIND_OUT, _out(Ping(nonce=_nonce()))),
                     (eng.KIND_OUT, _out(Ping(nonce=_nonce()))))
    with pytest.raises(NondeterminismError, match="does not send"):
        INITIATOR.rehydrate(extra, SERVICES)
    assert NondeterminismError.code == "nondeterminism"


def test_replay_of_a_responder_with_a_ping_in_and_no_pong_out() -> None:
    ping = seal(KEY_A, choreography="ping", session=SID, message=Ping(nonce=b"n" * 16))
    recs = _records((eng.KIND_START, _start_body("responder", opened_by="a")),
                    (eng.KIND_IN, eng.InBody(sender="a", sender_role="initiator",
                                             envelope=encode_envelope(ping), now=100.0)))
    d = RESPONDER.rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "Completed"
    assert d.resume(101.0) == [eng.Send(to=("a",), message=Pong(nonce=b"n" * 16)),
                               eng.Complete(result={})]


# --- registration refuses what does not match the projection --------------------------------

S = TypeVar("S")


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Bye(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class HelloAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-hello", abort=HelloAbort)
def HELLO(c: ChoreographyBuilder) -> None:
    a = c.role("a")
    b = c.role("b")
    c.phase(a, "Greeting")
    c.phase(b, "Listening")
    c.send(a, b, Hello)
    c.phase(a, "Done")
    c.phase(b, "Done")


@final
class Greeting(Phase): ...
@final
class Listening(Phase): ...
@final
class Done(Phase): ...
@final
class Failed2(Phase): ...


class HelloChoreo:
    pass


@final
class WrongSender(ChoreographicProtocol[HelloChoreo, S], choreography="kit-hello", role="a",
                  initial=Greeting, abort=Failed2):
    def __init__(self: WrongSender[Greeting], step: Step[Any]) -> None:
        self._begin()

    @transition(source=Greeting, target=Done, action="send", message=Bye, peer="b")
    def greet(self: WrongSender[Greeting], step: Step[Any]) -> tuple[WrongSender[Done], Bye]:
        return self._advance(WrongSender[Done]), Bye(text="hi")


def test_registration_refuses_a_role_that_does_not_conform() -> None:
    with pytest.raises(eng.DriverError, match="abort=Failed"):
        protocol(HELLO, WrongSender)
    assert "kit-hello" not in eng.PROTOCOLS


def test_conformance_names_the_first_difference() -> None:
    from aura_node.session.conformance import check_conformance

    with pytest.raises(ConformanceError, match="Bye"):
        check_conformance(WrongSender, HELLO.project("a"))


def test_typestate_values_stay_linear_under_the_kit() -> None:
    from aura_node.errors import ConsumedStateError

    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    old = d.value
    assert isinstance(old, PingInitiator)
    d.on_abort("x", by_peer=None)
    with pytest.raises(ConsumedStateError, match="abort edge to Failed"):
        _ = old.nonce
    assert AwaitingPong is not Failed and PingResponder.abort_phase is Failed


# --- draws that replay cannot recompute, several sends per phase, role-set dispatch -----------


class Deal(msgspec.Struct, frozen=True, kw_only=True):
    blob: bytes


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    n: int


class DealAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-deal", abort=DealAbort)
def DEAL(c: ChoreographyBuilder) -> None:
    a = c.role("a")
    bs = c.role_set("bs", size="n", minimum=1)
    cs = c.role_set("cs", size="m", minimum=0)
    c.phase(a, "Dealing")
    c.phase(bs, "Waiting")
    c.phase(cs, "Waiting")
    c.send(a, bs, Deal)
    c.send(a, cs, Deal)
    c.phase(a, "Collecting")
    c.gather(bs, a, Ack, threshold=ALL, deadline="t")
    c.gather(cs, a, Ack, threshold=ALL, deadline="t")
    c.phase(a, "Dealt")


@final
class Dealing(Phase): ...
@final
class Collecting(Phase): ...
@final
class Dealt(Phase): ...


#: how many times the dealer's draw ran (replay must never run it)
DRAWS: list[bytes] = []


def _draw() -> bytes:
    DRAWS.append(os.urandom(16))
    return DRAWS[-1]


@final
class Dealer(ChoreographicProtocol[HelloChoreo, S], choreography="kit-deal", role="a",
             initial=Dealing, abort=Failed):
    drawn: bytes
    acked: tuple[str, ...]

    def __init__(self: Dealer[Dealing], step: Step[Any]) -> None:
        self._begin(drawn=b"", acked=())

    @unrepeatable(record="kit-deal.drawn")
    @transition(source=Dealing, target=Dealing, action="send", message=Deal, peer="bs")
    def deal_bs(self: Dealer[Dealing], step: Step[Any]
                ) -> tuple[Dealer[Dealing], dict[str, Deal]]:
        drawn = step.draw(_draw)
        return (self._advance(Dealer[Dealing], drawn=drawn),
                {n: Deal(blob=drawn + n.encode()) for n in step.members("bs")})

    @transition(source=Dealing, target=Collecting, action="send", message=Deal, peer="cs")
    def deal_cs(self: Dealer[Dealing], step: Step[Any]) -> tuple[Dealer[Collecting], Deal]:
        return self._advance(Dealer[Collecting]), Deal(blob=self.drawn)

    @transition(source=Collecting, target=Collecting, action="gather", message=Ack, peer="bs")
    def ack_b(self: Dealer[Collecting], ack: Ack, step: Step[Any]) -> Dealer[Collecting]:
        return self._advance(Dealer[Collecting], acked=(*self.acked, f"b:{step.sender}"))

    @polled
    @transition(source=Collecting, target=Dealt, action="gather", message=Ack, peer="cs")
    def ack_c(self: Dealer[Collecting], ack: Ack | None, step: Step[Any]
              ) -> Dealer[Collecting] | Dealer[Dealt]:
        acked = self.acked if ack is None else (*self.acked, f"c:{step.sender}")
        if len(acked) < len(step.members("bs")) + len(step.members("cs")):
            return self._advance(Dealer[Collecting], acked=acked)
        step.complete(acked=list(acked))
        return self._advance(Dealer[Dealt], acked=acked)

    @transition(source=Collecting, target=Failed, action="timeout")
    def time_out(self: Dealer[Collecting], step: Step[Any]) -> Dealer[Failed]:
        return self._advance(Dealer[Failed])


@pytest.fixture
def dealer() -> Iterator[type[RoleDriver]]:
    p = protocol(DEAL, Dealer, conformance_bindings={"n": 2, "m": 1})
    try:
        yield p.drivers["a"]
    finally:
        del eng.PROTOCOLS["kit-deal"]


def _deal_start(*cs: str) -> eng.Start:
    roles = {"a": "a", "b1": "bs", "b2": "bs", **dict.fromkeys(cs, "cs")}
    return eng.Start(session=SID, choreography="kit-deal", role="a", self_name="a",
                     roles=roles, params={}, now=100.0, entropy=ENTROPY)


def _ack(sender: str, role: str) -> eng.MessageIn:
    env = seal(KEY_A, choreography="kit-deal", session=SID, message=Ack(n=1))
    return eng.MessageIn(sender=sender, sender_role=role, message=Ack(n=1), envelope=env,
                         now=101.0)


def _journal(start: eng.Start, effects: list[eng.Effect]) -> list[Rec]:
    """The records the runtime journals for a start step (in effect order)."""
    recs = [Rec(seq=0, ts=100.0, session=SID, kind=eng.KIND_START, body=eng.encode_body(
        eng.StartBody(choreography=start.choreography, role=start.role,
                      self_name=start.self_name, roles=dict(start.roles), params={},
                      now=start.now, entropy=start.entropy)))]
    for e in effects:
        if isinstance(e, eng.Send):
            env = seal(KEY_A, choreography="kit-deal", session=SID, message=e.message)
            body = eng.encode_body(eng.OutBody(to=list(e.to), envelope=encode_envelope(env)))
            recs.append(Rec(seq=len(recs), ts=100.0, session=SID, kind=eng.KIND_OUT,
                            body=body))
        elif isinstance(e, eng.RecordEvidence):
            recs.append(Rec(seq=len(recs), ts=100.0, session=SID, kind=e.kind, body=e.body))
    return recs


def test_several_sends_in_one_phase_run_in_order_and_a_draw_is_journaled(
        dealer: type[RoleDriver]) -> None:
    d = dealer(SERVICES)
    effects = d.start(_deal_start("c1"))
    drawn = DRAWS[-1]
    # the self-loop send first (per member), its draw journaled with it, then the leaving send
    assert effects == [eng.Send(to=("b1",), message=Deal(blob=drawn + b"b1")),
                       eng.Send(to=("b2",), message=Deal(blob=drawn + b"b2")),
                       eng.RecordEvidence(kind="kit-deal.drawn", body=drawn),
                       eng.Send(to=("c1",), message=Deal(blob=drawn))]
    assert d.status()["phase"] == "Collecting"
    # one message type from two role sets (in the monitor's order): by the sender's role
    assert d.on_message(_ack("b1", "bs")) == []
    assert d.on_message(_ack("b2", "bs")) == []
    assert d.on_message(_ack("c1", "cs")) == [eng.Complete(
        result={"acked": ["b:b1", "b:b2", "c:c1"]})]


def test_a_polled_gather_completes_on_another_input_of_its_phase(
        dealer: type[RoleDriver]) -> None:
    d = dealer(SERVICES)
    d.start(_deal_start())  # no cs at all: its gather never gets a message
    assert d.status()["phase"] == "Collecting"  # polled, but the bs acks are not in yet
    assert d.on_message(_ack("b1", "bs")) == []
    assert d.on_message(_ack("b2", "bs")) == [eng.Complete(result={"acked": ["b:b1", "b:b2"]})]
    d = dealer(SERVICES)
    d.start(_deal_start("c1"))
    assert d.on_message(_ack("c1", "cs")) == d.on_message(_ack("b1", "bs")) == []
    assert d.on_message(_ack("b2", "bs")) == [eng.Complete(  # cs answered before the bs did
        result={"acked": ["c:c1", "b:b1", "b:b2"]})]


def test_replay_takes_an_unrepeatable_draw_from_the_journal(dealer: type[RoleDriver]) -> None:
    start = _deal_start("c1")
    recs = _journal(start, dealer(SERVICES).start(start))
    before = len(DRAWS)
    d = dealer.rehydrate(recs, SERVICES)
    assert len(DRAWS) == before  # not drawn again: the journaled record was used
    assert d is not None and d.status()["phase"] == "Collecting" and d.resume(101.0) == []
    # live again after the replay: the gather goes on from the restored value
    assert d.on_message(_ack("b1", "bs")) == d.on_message(_ack("b2", "bs")) == []
    assert isinstance(d.on_message(_ack("c1", "cs"))[-1], eng.Complete)


def test_replay_refuses_a_draw_the_journal_does_not_prove(dealer: type[RoleDriver]) -> None:
    start = _deal_start("c1")
    recs = _journal(start, dealer(SERVICES).start(start))
    drawn = next(r for r in recs if r.kind == "kit-deal.drawn")
    # a record that does not match the journaled sends
    forged = [Rec(r.seq, r.ts, r.session, r.kind, b"x" * 16) if r is drawn else r
              for r in recs]
    with pytest.raises(NondeterminismError, match="different content"):
        dealer.rehydrate(forged, SERVICES)
    with pytest.raises(NondeterminismError, match="holds no kit-deal.drawn record"):
        dealer.rehydrate([r for r in recs if r is not drawn], SERVICES)
    with pytest.raises(NondeterminismError, match="draws that replaying its inputs does not"):
        dealer.rehydrate([*recs, Rec(99, 100.0, SID, drawn.kind, drawn.body)], SERVICES)


def test_unrepeatable_and_polled_are_declared_where_they_apply() -> None:
    def recv(self: Any, m: Ack, step: Any) -> Any: ...

    receive = transition(source=Collecting, target=Dealt, action="recv", message=Ack,
                         peer="bs")(recv)
    with pytest.raises(TypeError, match="above the @transition of a send"):
        unrepeatable(record="x.y")(receive)
    with pytest.raises(TypeError, match="above a gather"):
        polled(receive)
    with pytest.raises(TypeError, match="above the @transition"):
        unrepeatable(record="x.y")(recv)  # below @transition: nothing declared yet


def test_a_draw_outside_an_unrepeatable_transition_is_refused() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    with pytest.raises(eng.DriverError, match="outside a transition declared @unrepeatable"):
        Step(d, now=1.0).draw(_draw)
