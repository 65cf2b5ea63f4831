"""Kit rules recovery needs: a send inside a phase once per entry, operator decisions that
send (``command=`` on a send), an operator's mistake answered without a change, the
``aborting`` hook, late-message handlers in a final phase."""

from __future__ import annotations

from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.crypto.keys import DeviceKey
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import seal
from aura_node.protocols.kit import Step, protocol
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from tests.unit.kit_support import ENTROPY, KEY_A, SERVICES, SID, Failed, HelloChoreo

S = TypeVar("S")




@final
class Done(Phase): ...



# --- sends inside a phase, operator sends, late handlers, abort hooks -------------------------


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    topic: str


class Note(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Vote(msgspec.Struct, frozen=True, kw_only=True):
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

    @transition(source=Done, target=Done, action="local", message=Vote, peer="voters")
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
                command="vote")
    def vote(self: Voter[Voting], args: dict[str, Any], step: Step[Any]
             ) -> tuple[Voter[Done], Vote]:
        step.reply(voted=True)
        return self._advance(Voter[Done]), Vote(salt=step.random(16, "salt"))

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


def test_a_send_inside_a_phase_runs_once_on_entry_and_a_late_handler_keeps_final(
        votes: eng.ProtocolSpec) -> None:
    d = votes.driver_class("a")(SERVICES)
    sent = [e.message for e in d.start(_votes_start("a")) if isinstance(e, eng.Send)]
    assert sent == [Ask(topic="lunch"), Note(text="0 votes so far")]
    assert d.on_message(_vote_in("b")) == []  # stays in Counting: no second Note
    assert d.status() == {"phase": "Counting", "votes": ["b"], "late": 0}
    assert d.on_message(_vote_in("c")) == [eng.Complete(result={})]
    # the late handler Done -> Done (local, message=) is no way out of Done
    assert d.is_final and d.status() == {"phase": "Done", "votes": ["b", "c"], "late": 0}


def test_an_operator_send_its_mistakes_and_the_abort_hook(votes: eng.ProtocolSpec) -> None:
    v = votes.driver_class("voters")(SERVICES)
    v.start(_votes_start("voters", opened_by="a"))
    early = v.on_control(eng.ControlAction(action="vote", args={}, now=100.5))
    assert early == [eng.Reply(result={"phase": "Idle", "why": "",
                                       "error": "kit-votes/voters has no control action 'vote' "
                                                "in phase Idle (its actions: vote)"})]
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


def test_declared_flags_are_checked_where_they_are_declared() -> None:
    with pytest.raises(TypeError, match="needs action 'local' or 'send'"):
        transition(source=Idle, target=Voting, action="recv", message=Ask, command="x")
