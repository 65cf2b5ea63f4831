"""Kit rules for roles that talk to role sets: a send inside a phase runs once per entry, a
choice between automatic transitions (``Decline``), late-message handlers, replay skipping
inputs journaled after the role ended."""

from __future__ import annotations

from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import encode_envelope, seal
from aura_node.protocols.kit import Decline, Step, protocol
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from tests.unit.kit_support import ENTROPY, KEY_A, SERVICES, SID, Failed, HelloChoreo
from tests.unit.kit_support import records as _records

S = TypeVar("S")









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


@choreography("kit-poll", abort=VoteAbort)
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
class Asker(ChoreographicProtocol[HelloChoreo, S], choreography="kit-poll", role="a",
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
        return d, d.start(eng.Start(session=SID, choreography="kit-poll", role="a",
                                    self_name="a", roles=roles, params={"skip": skip},
                                    now=1.0, entropy=ENTROPY))

    def vote(d: Any, sender: str, message: msgspec.Struct) -> list[eng.Effect]:
        env = seal(KEY_A, choreography="kit-poll", session=SID, message=message)
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
        return encode_envelope(seal(KEY_A, choreography="kit-poll", session=SID,
                                    message=message))

    recs = _records(
        (eng.KIND_START, eng.StartBody(choreography="kit-poll", role="a", self_name="a",
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
    class Leaver(ChoreographicProtocol[HelloChoreo, S], choreography="kit-poll", role="a",
                 initial=Asking, abort=Failed):
        @transition(source=Tallying, target=Tallied, action="local", message=Vote)
        def late_vote(self: Leaver[Tallying], msg: Vote, step: Step[Any]) -> Leaver[Tallied]:
            return self._advance(Leaver[Tallied])

    from aura_node.protocols.kit import _Table

    with pytest.raises(eng.DriverError, match="stays in its phase Tallying"):
        _Table.of(Leaver)
