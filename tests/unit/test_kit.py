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
from aura_node.protocols.kit import NondeterminismError, Step, final_phases, protocol
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
    # a message with no transition in this phase is the peer's problem: rejected, not fatal
    r = RESPONDER(SERVICES)
    r.start(_start("responder", opened_by="a"))
    (rej,) = r.on_message(_pong(b"n" * 16))
    assert isinstance(rej, eng.RecordEvidence) and rej.kind == "ping.rejected"
    body = eng.decode_rejection(rej.body)
    assert body.code == "wrong_phase" and "can't handle Pong from b" in body.reason
    assert r.status()["phase"] == "AwaitingPing" and not r.is_final


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


# --- sends inside a phase, operator sends, stragglers, abort hooks, journal-kept sends --------


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    topic: str


class Note(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    #: drawn fresh (os.urandom): replay cannot recompute it
    salt: bytes


class VotesAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-votes", abort=VotesAbort)
def VOTES(c: ChoreographyBuilder) -> None:
    a = c.role("a")
    voters = c.role_set("voters", size="n")
    k = c.threshold("k", of=voters)
    c.phase(a, "Asking")
    c.phase(voters, "Idle")
    c.send(a, voters, Ask)
    c.phase(a, "Counting")
    c.phase(voters, "Voting")
    c.send(a, voters, Note)  # a send inside the phase Counting
    c.gather(voters, a, Vote, threshold=k, deadline="vote_timeout")
    c.phase(a, "Done")
    c.phase(voters, "Done")


@final
class Asking(Phase): ...
@final
class Counting(Phase): ...
@final
class Idle(Phase): ...
@final
class Voting(Phase): ...


@final
class Asker(ChoreographicProtocol[HelloChoreo, S], choreography="kit-votes", role="a",
            initial=Asking, abort=Failed):
    votes: tuple[str, ...]
    late: int

    def __init__(self: Asker[Asking], step: Step[Any]) -> None:
        self._begin(votes=(), late=0)

    @transition(source=Asking, target=Counting, action="send", message=Ask, peer="voters")
    def ask(self: Asker[Asking], step: Step[Any]) -> tuple[Asker[Counting], Ask]:
        return self._advance(Asker[Counting]), Ask(topic="lunch")

    @transition(source=Counting, target=Counting, action="send", message=Note, peer="voters")
    def note(self: Asker[Counting], step: Step[Any]) -> tuple[Asker[Counting], Note]:
        return self._advance(Asker[Counting]), Note(text=f"{len(self.votes)} votes so far")

    @transition(source=Counting, target=Done, action="gather", message=Vote, peer="voters")
    def count(self: Asker[Counting], vote: Vote, step: Step[Any]
              ) -> Asker[Counting] | Asker[Done]:
        votes = (*self.votes, step.sender)
        if len(votes) < 2:
            return self._advance(Asker[Counting], votes=votes)
        return self._advance(Asker[Done], votes=votes)

    @transition(source=Counting, target=Failed, action="timeout")
    def too_few(self: Asker[Counting], step: Step[Any]) -> Asker[Failed]:
        return self._advance(Asker[Failed])

    @transition(source=Done, target=Done, action="gather", message=Vote, peer="voters")
    def straggler(self: Asker[Done], vote: Vote, step: Step[Any]) -> Asker[Done]:
        return self._advance(Asker[Done], late=self.late + 1)

    def describe(self) -> dict[str, Any]:
        return {"votes": list(self.votes), "late": self.late}


@final
class Voter(ChoreographicProtocol[HelloChoreo, S], choreography="kit-votes", role="voters",
            initial=Idle, abort=Failed):
    why: str

    def __init__(self: Voter[Idle], step: Step[Any]) -> None:
        self._begin(why="")

    @transition(source=Idle, target=Voting, action="recv", message=Ask, peer="a")
    def asked(self: Voter[Idle], ask: Ask, step: Step[Any]) -> Voter[Voting]:
        return self._advance(Voter[Voting])

    @transition(source=Voting, target=Voting, action="recv", message=Note, peer="a")
    def noted(self: Voter[Voting], note: Note, step: Step[Any]) -> Voter[Voting]:
        return self._advance(Voter[Voting])

    @transition(source=Voting, target=Done, action="send", message=Vote, peer="a",
                command="vote", replay="journal")
    def vote(self: Voter[Voting], args: dict[str, Any], step: Step[Any]
             ) -> tuple[Voter[Done], Vote]:
        import os

        step.reply(voted=True)
        return self._advance(Voter[Done]), Vote(salt=os.urandom(16))

    def aborting(self, reason: str, by_peer: str | None) -> dict[str, object]:
        return {"why": f"{by_peer}: {reason}"}

    def describe(self) -> dict[str, Any]:
        return {"why": self.why}


@pytest.fixture
def votes() -> Any:
    try:
        yield protocol(VOTES, Asker, Voter, conformance_bindings={"n": 3, "k": 2}).spec
    finally:
        eng.PROTOCOLS.pop("kit-votes", None)


def _votes_start(role: str, **kw: Any) -> eng.Start:
    return eng.Start(session=SID, choreography="kit-votes", role=role,
                     self_name="a" if role == "a" else "b",
                     roles={"a": "a", "b": "voters", "c": "voters", "d": "voters"},
                     params={}, now=100.0, entropy=ENTROPY, **kw)


def _vote_in(sender: str) -> eng.MessageIn:
    msg = Vote(salt=b"s" * 16)
    env = seal(DeviceKey.from_seed(sender.encode() * 32), choreography="kit-votes",
               session=SID, message=msg)
    return eng.MessageIn(sender=sender, sender_role="voters", message=msg, envelope=env,
                         now=101.0)


def test_a_send_inside_a_phase_runs_once_on_entry_and_a_straggler_gather_conforms(
        votes: eng.ProtocolSpec) -> None:
    d = votes.driver_class("a")(SERVICES)
    sent = [e.message for e in d.start(_votes_start("a")) if isinstance(e, eng.Send)]
    assert sent == [Ask(topic="lunch"), Note(text="0 votes so far")]
    assert d.on_message(_vote_in("b")) == []  # stays in Counting: no second Note
    assert d.status() == {"phase": "Counting", "votes": ["b"], "late": 0}
    assert d.on_message(_vote_in("c")) == [eng.Complete(result={})]
    # the straggler gather Done -> Done conformed at registration and is no way out of Done
    assert d.is_final and d.status() == {"phase": "Done", "votes": ["b", "c"], "late": 0}


def test_an_operator_send_its_mistakes_and_the_abort_hook(votes: eng.ProtocolSpec) -> None:
    v = votes.driver_class("voters")(SERVICES)
    v.start(_votes_start("voters", opened_by="a"))
    early = v.on_control(eng.ControlAction(action="vote", args={}, now=100.5))
    assert early == [eng.Reply(result={"phase": "Idle", "why": "",
                                       "error": "vote is not possible in phase Idle"})]
    assert v.status()["phase"] == "Idle" and not v.is_final
    ask = seal(KEY_A, choreography="kit-votes", session=SID, message=Ask(topic="lunch"))
    v.on_message(eng.MessageIn(sender="a", sender_role="a", message=Ask(topic="lunch"),
                               envelope=ask, now=101.0))
    out = v.on_control(eng.ControlAction(action="vote", args={}, now=102.0))
    assert [type(e) for e in out] == [eng.Send, eng.Reply, eng.Complete]
    assert out[0].to == ("a",) and out[1] == eng.Reply(result={"voted": True})  # type: ignore[union-attr]
    w = votes.driver_class("voters")(SERVICES)
    w.start(_votes_start("voters", opened_by="a"))
    w.on_abort("a aborted: gone", by_peer="a")
    assert w.status() == {"phase": "Failed", "why": "a: a aborted: gone"}


def test_replay_keeps_the_journaled_message_of_a_replay_journal_send(
        votes: eng.ProtocolSpec) -> None:
    ask = seal(KEY_A, choreography="kit-votes", session=SID, message=Ask(topic="lunch"))
    start = _votes_start("voters", opened_by="a")
    vote = seal(DeviceKey.from_seed(b"b" * 32), choreography="kit-votes", session=SID,
                message=Vote(salt=b"j" * 16))
    recs = _records(
        (eng.KIND_START, eng.StartBody(choreography="kit-votes", role="voters", self_name="b",
                                       roles=dict(start.roles), params={}, now=100.0,
                                       entropy=ENTROPY, opened_by="a")),
        (eng.KIND_IN, eng.InBody(sender="a", sender_role="a", envelope=encode_envelope(ask),
                                 now=100.0)),
        (eng.KIND_CONTROL, eng.ControlBody(action="vote", args={}, now=101.0)),
        (eng.KIND_OUT, eng.OutBody(to=["a"], envelope=encode_envelope(vote))))
    d = votes.driver_class("voters").rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "Done" and d.resume(102.0) == []
    # the type and the recipients are still checked
    wrong = [*recs[:3], Rec(seq=3, ts=100.0, session=SID, kind=eng.KIND_OUT, body=eng.encode_body(
        eng.OutBody(to=["c"], envelope=encode_envelope(vote))))]
    with pytest.raises(NondeterminismError, match="sends Vote to \\['a'\\]"):
        votes.driver_class("voters").rehydrate(wrong, SERVICES)
    # never durable: sent fresh by resume
    d = votes.driver_class("voters").rehydrate(recs[:3], SERVICES)
    assert d is not None
    (fresh,) = [e for e in d.resume(102.0) if isinstance(e, eng.Send)]
    assert isinstance(fresh.message, Vote) and fresh.message.salt != b"j" * 16


def test_declared_flags_are_checked_where_they_are_declared() -> None:
    with pytest.raises(TypeError, match="replay='journal' needs action='send'"):
        transition(source=Idle, target=Voting, action="recv", message=Ask, replay="journal")
    with pytest.raises(TypeError, match="needs action 'local' or 'send'"):
        transition(source=Idle, target=Voting, action="recv", message=Ask, command="x")
