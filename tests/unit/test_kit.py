"""The authoring kit: dispatch from declarations, abort edges, replay rehydration, registration.

Exercised through the shipped ping protocol (``aura_node.protocols.ping.roles``), which is
written only with the kit, and through small role classes that break the rules on purpose.
"""

from __future__ import annotations

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
from aura_node.session.conformance import ConformanceError
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from tests.unit.kit_support import ENTROPY, KEY_A, SERVICES, SID, HelloChoreo, Rec
from tests.unit.kit_support import records as _records

INITIATOR = SPEC.driver_class("initiator")
RESPONDER = SPEC.driver_class("responder")


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
    for bad, why in (({"timeout": 0}, "Expected `float` >= 0|> 0"), ({"timeout": True}, "bool"),
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
    assert body is not None and body.code == "wrong_phase"
    assert "can't handle Pong from b" in body.reason
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


def test_unknown_control_action_is_refused_and_names_what_exists() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    # an operator's slip is answered, never an abort of the session
    [reply] = d.on_control(eng.ControlAction(action="approve", args={}, now=101.0))
    assert isinstance(reply, eng.Reply) and reply.result["phase"] == "AwaitingPong"
    assert "no control action 'approve' in phase AwaitingPong (its actions: none)" in (
        reply.result["error"])
    assert d.status()["phase"] == "AwaitingPong" and not d.is_final


# --- replay rehydration -------------------------------------------------------------------




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


# --- a gather over a role set, with a straggler ------------------------------------------------


class Ballot(msgspec.Struct, frozen=True, kw_only=True):
    question: str


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    yes: bool


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    yes: int
    voters: list[str]


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    pass


class VoteAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-vote", abort=VoteAbort, abort_phase="VoteFailed")
def VOTE(c: ChoreographyBuilder) -> None:
    coord = c.role("coordinator")
    voters = c.role_set("voters", size="n", minimum=2)
    k = c.threshold("k", of=voters, minimum=1)
    c.phase(coord, "Asking")
    c.phase(voters, "Waiting")
    c.send(coord, voters, Ballot)
    c.phase(coord, "Counting")
    c.phase(voters, "Voting")
    c.gather(voters, coord, Vote, threshold=k, deadline="vote_timeout")
    c.phase(coord, "Announcing")
    c.phase(voters, "Hearing")
    c.send(coord, voters, Tally)
    c.phase(coord, "Confirming")
    c.phase(voters, "Acking")
    c.gather(voters, coord, Ack, threshold=k, deadline="vote_timeout")
    c.phase(coord, "Closed")
    c.phase(voters, "Closed")


class VoteParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    k: int
    n: int


class VoteChoreo:
    pass


@final
class Asking(Phase): ...
@final
class Counting(Phase): ...
@final
class Announcing(Phase): ...
@final
class Confirming(Phase): ...
@final
class Closed(Phase): ...
@final
class Waiting(Phase): ...
@final
class Voting(Phase): ...
@final
class Hearing(Phase): ...
@final
class Acking(Phase): ...
@final
class VoteFailed(Phase): ...


@final
class Coordinator(ChoreographicProtocol[VoteChoreo, S], choreography="kit-vote",
                  role="coordinator", initial=Asking, abort=VoteFailed):
    votes: tuple[tuple[str, bool], ...]
    acks: frozenset[str]

    def __init__(self: Coordinator[Asking], step: Step[VoteParams]) -> None:
        self._begin(votes=(), acks=frozenset())
        step.arm("deadline", at=step.now + 10)

    @transition(source=Asking, target=Counting, action="send", message=Ballot, peer="voters")
    def ask(self: Coordinator[Asking], step: Step[VoteParams]
            ) -> tuple[Coordinator[Counting], Ballot]:
        return self._advance(Coordinator[Counting]), Ballot(question="lunch?")

    @transition(source=Counting, target=Announcing, action="gather", message=Vote,
                peer="voters")
    def count(self: Coordinator[Counting], vote: Vote, step: Step[VoteParams]
              ) -> Coordinator[Counting] | Coordinator[Announcing]:
        from aura_node.errors import RemoteProtocolError

        if any(who == step.sender for who, _ in self.votes):
            raise RemoteProtocolError(f"{step.sender} voted twice")
        votes = (*self.votes, (step.sender, vote.yes))
        if len(votes) < step.params.k:
            return self._advance(Coordinator[Counting], votes=votes)
        return self._advance(Coordinator[Announcing], votes=votes)

    @transition(source=Announcing, target=Confirming, action="send", message=Tally,
                peer="voters")
    def announce(self: Coordinator[Announcing], step: Step[VoteParams]
                 ) -> tuple[Coordinator[Confirming], Tally]:
        tally = Tally(yes=sum(y for _, y in self.votes), voters=[w for w, _ in self.votes])
        return self._advance(Coordinator[Confirming]), tally

    @transition(source=Confirming, target=Closed, action="gather", message=Ack, peer="voters")
    def confirm(self: Coordinator[Confirming], ack: Ack, step: Step[VoteParams]
                ) -> Coordinator[Confirming] | Coordinator[Closed]:
        acks = self.acks | {step.sender}
        if len(acks) < step.params.k:
            return self._advance(Coordinator[Confirming], acks=acks)
        step.cancel("deadline")
        step.complete(yes=sum(y for _, y in self.votes))
        return self._advance(Coordinator[Closed], acks=acks)


@final
class Voter(ChoreographicProtocol[VoteChoreo, S], choreography="kit-vote", role="voters",
            initial=Waiting, abort=VoteFailed):
    def __init__(self: Voter[Waiting], step: Step[VoteParams]) -> None:
        self._begin()

    @transition(source=Waiting, target=Voting, action="recv", message=Ballot,
                peer="coordinator")
    def receive(self: Voter[Waiting], ballot: Ballot, step: Step[VoteParams]) -> Voter[Voting]:
        return self._advance(Voter[Voting])

    @transition(source=Voting, target=Hearing, action="send", message=Vote,
                peer="coordinator")
    def vote(self: Voter[Voting], step: Step[VoteParams]) -> tuple[Voter[Hearing], Vote]:
        return self._advance(Voter[Hearing]), Vote(yes=step.random(1, "vote")[0] % 2 == 0)

    @transition(source=Hearing, target=Acking, action="recv", message=Tally,
                peer="coordinator")
    def hear(self: Voter[Hearing], tally: Tally, step: Step[VoteParams]) -> Voter[Acking]:
        return self._advance(Voter[Acking])

    @transition(source=Acking, target=Closed, action="send", message=Ack, peer="coordinator")
    def ack(self: Voter[Acking], step: Step[VoteParams]) -> tuple[Voter[Closed], Ack]:
        return self._advance(Voter[Closed]), Ack()


VOTE_PROTOCOL = protocol(VOTE, Coordinator, Voter, params=VoteParams,
                         conformance_bindings={"n": 3, "k": 2})
COORD = VOTE_PROTOCOL.spec.driver_class("coordinator")


def _vote_in(sender: str, message: msgspec.Struct, now: float = 101.0) -> eng.MessageIn:
    env = seal(DeviceKey.from_seed(sender.encode() * 16), choreography="kit-vote",
               session=SID, message=message)
    return eng.MessageIn(sender=sender, sender_role="voters", message=message, envelope=env,
                         now=now)


def test_a_gather_stays_until_its_quorum_then_the_kit_settles() -> None:
    assert VOTE_PROTOCOL.spec.openers == {
        "Ballot": eng.Opener(sender_role="coordinator", role="voters")}
    d = COORD(SERVICES)
    out = d.start(eng.Start(session=SID, choreography="kit-vote", role="coordinator",
                            self_name="c", roles={"c": "coordinator", "v1": "voters",
                                                  "v2": "voters", "v3": "voters"},
                            params={"k": 2, "n": 3}, now=100.0, entropy=ENTROPY))
    assert eng.Send(to=("v1", "v2", "v3"), message=Ballot(question="lunch?")) in out
    assert d.on_message(_vote_in("v1", Vote(yes=True))) == []
    assert d.status()["phase"] == "Counting"
    dup = d.on_message(_vote_in("v1", Vote(yes=False)))
    assert [type(e) for e in dup] == [eng.RecordEvidence] and "twice" in dup[0].body.decode(
        errors="replace")
    out = d.on_message(_vote_in("v2", Vote(yes=False)))
    assert out == [eng.Send(to=("v1", "v2", "v3"), message=Tally(yes=1, voters=["v1", "v2"]))]
    assert d.status()["phase"] == "Confirming"
    # v3's vote arrives after the quorum: a straggler, not a reason to abort
    assert d.on_message(_vote_in("v3", Vote(yes=True))) == []
    assert d.on_message(_vote_in("v1", Ack())) == []
    out = d.on_message(_vote_in("v3", Ack()))
    assert out == [eng.CancelTimer(name="deadline"), eng.Complete(result={"yes": 1})]
    assert d.is_final


def test_a_gather_that_times_out_fails_the_session() -> None:
    d = COORD(SERVICES)
    d.start(eng.Start(session=SID, choreography="kit-vote", role="coordinator", self_name="c",
                      roles={"c": "coordinator", "v1": "voters", "v2": "voters"},
                      params={"k": 2, "n": 2}, now=100.0, entropy=ENTROPY))
    d.on_message(_vote_in("v1", Vote(yes=True)))
    out = d.on_timer(eng.TimerFired(name="deadline", now=999.0))
    assert len(out) == 1 and isinstance(out[0], eng.Fail) and out[0].code == "timeout"
    assert "Counting" in out[0].reason
