"""The authoring kit: dispatch from declarations, abort edges, replay rehydration, registration.

Exercised through the shipped ping protocol (``aura_node.protocols.ping.roles``), which is
written only with the kit, and through small role classes that break the rules on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.crypto.keys import DeviceKey
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import encode_envelope, seal
from aura_node.protocols.kit import Decline, NondeterminismError, Step, final_phases, protocol
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
    # an input journaled after the role ended (a harness may keep one) is not replayed
    again = eng.InBody(sender="a", sender_role="initiator", envelope=encode_envelope(ping),
                       now=101.0)
    late = RESPONDER.rehydrate([*recs, Rec(seq=2, ts=101.0, session=SID, kind=eng.KIND_IN,
                                           body=eng.encode_body(again))], SERVICES)
    assert late is not None and late.status()["phase"] == "Completed"


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


# --- role sets: a send inside a phase, a choice, late messages ------------------------------


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    topic: str


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    yes: bool


class Result(msgspec.Struct, frozen=True, kw_only=True):
    yes: int


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool


class VoteAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-vote", abort=VoteAbort)
def VOTE(c: ChoreographyBuilder) -> None:
    a = c.role("a")
    voters = c.role_set("voters", size="n", minimum=1)
    k = c.threshold("k", of=voters, minimum=1)
    c.phase(a, "Asking")
    c.phase(voters, "Listening")
    c.send(a, voters, Ask)
    c.phase(a, "Counting")
    c.phase(voters, "Voting")
    c.gather(voters, a, Vote, threshold=k, deadline="t")
    c.phase(a, "Tallying")  # a sends Result and gathers Ack in this one phase
    c.send(a, voters, Result)
    c.gather(voters, a, Ack, threshold=k, deadline="t")
    c.phase(a, "Tallied")
    c.phase(voters, "Tallied")


@final
class Asking(Phase): ...
@final
class Counting(Phase): ...
@final
class Tallying(Phase): ...
@final
class Tallied(Phase): ...


class VoteParams(msgspec.Struct, frozen=True, kw_only=True):
    skip: bool = False


@final
class Asker(ChoreographicProtocol[HelloChoreo, S], choreography="kit-vote", role="a",
            initial=Asking, abort=Failed):
    votes: tuple[str, ...]
    late: tuple[str, ...]

    def __init__(self: Asker[Asking], step: Step[VoteParams]) -> None:
        self._begin(votes=(), late=())

    @transition(source=Asking, target=Tallied, action="local")
    def skip(self: Asker[Asking], step: Step[VoteParams]) -> Asker[Tallied]:
        if not step.params.skip:
            raise Decline
        step.complete(skipped=True)
        return self._advance(Asker[Tallied])

    @transition(source=Asking, target=Counting, action="send", message=Ask, peer="voters")
    def ask(self: Asker[Asking], step: Step[VoteParams]) -> tuple[Asker[Counting], Ask]:
        return self._advance(Asker[Counting]), Ask(topic="lunch")

    @transition(source=Counting, target=Tallying, action="gather", message=Vote, peer="voters")
    def count(self: Asker[Counting], msg: Vote, step: Step[VoteParams]
              ) -> Asker[Counting] | Asker[Tallying]:
        votes = (*self.votes, step.sender)
        if len(votes) < 2:
            return self._advance(Asker[Counting], votes=votes)
        return self._advance(Asker[Tallying], votes=votes)

    @transition(source=Tallying, target=Tallying, action="send", message=Result, peer="voters")
    def announce(self: Asker[Tallying], step: Step[VoteParams]
                 ) -> tuple[Asker[Tallying], Result]:
        return self._advance(Asker[Tallying]), Result(yes=len(self.votes))

    @transition(source=Tallying, target=Tallying, action="local", message=Vote)
    def late_vote(self: Asker[Tallying], msg: Vote, step: Step[VoteParams]) -> Asker[Tallying]:
        return self._advance(Asker[Tallying], late=(*self.late, step.sender))

    @transition(source=Tallying, target=Tallied, action="gather", message=Ack, peer="voters")
    def acked(self: Asker[Tallying], msg: Ack, step: Step[VoteParams]) -> Asker[Tallied]:
        step.complete(votes=list(self.votes), late=list(self.late))
        return self._advance(Asker[Tallied])

    @transition(source=Counting, target=Failed, action="timeout")
    def counting_timed_out(self: Asker[Counting], step: Step[VoteParams]) -> Asker[Failed]:
        return self._advance(Asker[Failed])

    @transition(source=Tallying, target=Failed, action="timeout")
    def tallying_timed_out(self: Asker[Tallying], step: Step[VoteParams]) -> Asker[Failed]:
        return self._advance(Asker[Failed])


def test_send_in_place_once_choice_by_decline_and_late_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "PROTOCOLS", dict(eng.PROTOCOLS))  # registered for this test only
    asker = protocol(VOTE, Asker, params=VoteParams).drivers["a"]
    roles = {"a": "a", "v1": "voters", "v2": "voters", "v3": "voters"}

    def start(skip: bool) -> tuple[Any, list[eng.Effect]]:
        d = asker(SERVICES)
        return d, d.start(eng.Start(session=SID, choreography="kit-vote", role="a",
                                    self_name="a", roles=roles, params={"skip": skip},
                                    now=1.0, entropy=ENTROPY))

    def vote(d: Any, sender: str, message: msgspec.Struct) -> list[eng.Effect]:
        env = seal(KEY_A, choreography="kit-vote", session=SID, message=message)
        return list(d.on_message(eng.MessageIn(sender=sender, sender_role="voters",
                                               message=message, envelope=env, now=2.0)))

    # the choice: `skip` declines unless asked to, then `ask` runs; its effects are not kept
    d, out = start(True)
    assert out == [eng.Complete(result={"skipped": True})] and d.is_final
    d, out = start(False)
    assert out == [eng.Send(to=("v1", "v2", "v3"), message=Ask(topic="lunch"))]
    assert vote(d, "v1", Vote(yes=True)) == []  # no quorum yet: the gather stays
    # quorum: Tallying entered, its send-in-place goes out once
    assert vote(d, "v2", Vote(yes=False)) == [
        eng.Send(to=("v1", "v2", "v3"), message=Result(yes=2))]
    # a straggler the monitor let through reaches the late handler; nothing is re-sent
    assert vote(d, "v3", Vote(yes=True)) == []
    assert d.status()["phase"] == "Tallying"
    assert vote(d, "v1", Ack(ok=True)) == [
        eng.Complete(result={"votes": ["v1", "v2"], "late": ["v3"]})]
    # the replay of that journal sends Ask and Result once each, as the journal says
    def env(message: msgspec.Struct) -> bytes:
        return encode_envelope(seal(KEY_A, choreography="kit-vote", session=SID,
                                    message=message))

    recs = _records(
        (eng.KIND_START, eng.StartBody(choreography="kit-vote", role="a", self_name="a",
                                       roles=roles, params={}, now=1.0, entropy=ENTROPY)),
        (eng.KIND_OUT, eng.OutBody(to=["v1", "v2", "v3"], envelope=env(Ask(topic="lunch")))),
        *[(eng.KIND_IN, eng.InBody(sender=v, sender_role="voters", envelope=env(Vote(yes=True)),
                                   now=2.0)) for v in ("v1", "v2")],
        (eng.KIND_OUT, eng.OutBody(to=["v1", "v2", "v3"], envelope=env(Result(yes=2)))),
        (eng.KIND_IN, eng.InBody(sender="v3", sender_role="voters",
                                 envelope=env(Vote(yes=True)), now=2.0)))
    again = asker.rehydrate(recs, SERVICES)
    assert again is not None and again.status()["phase"] == "Tallying"
    assert again.resume(3.0) == []


def test_a_late_handler_must_stay_in_its_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "PROTOCOLS", dict(eng.PROTOCOLS))

    @final
    class Leaver(ChoreographicProtocol[HelloChoreo, S], choreography="kit-vote", role="a",
                 initial=Asking, abort=Failed):
        @transition(source=Tallying, target=Tallied, action="local", message=Vote)
        def late_vote(self: Leaver[Tallying], msg: Vote, step: Step[Any]) -> Leaver[Tallied]:
            return self._advance(Leaver[Tallied])

    from aura_node.protocols.kit import _Table

    with pytest.raises(eng.DriverError, match="stays in its phase Tallying"):
        _Table.of(Leaver)
