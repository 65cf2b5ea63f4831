"""Wrong-phase calls inside protocol code the runtime runs: the transitions of a role written
on the authoring kit (the kit's generated driver calls exactly these methods). Each is an error
for mypy --strict and for pyright, at the call."""

from __future__ import annotations

from typing import Any, TypeVar, final

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.protocols.kit import Step
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

S = TypeVar("S")


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    approve: bool


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    approved: bool


class BallotAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("typing-ballot", abort=BallotAbort)
def BALLOT(c: ChoreographyBuilder) -> None:
    counter, voters = c.role("counter"), c.role_set("voters", size="n")
    c.phase(counter, "Voting")
    c.gather(voters, counter, Vote, threshold=c.threshold("k", of=voters), deadline="timeout")
    c.phase(counter, "Announcing")
    c.send(counter, voters, Decision)
    c.phase(counter, "Done")


class Ballot:
    """Choreography marker type."""


@final
class Voting(Phase): ...
@final
class Announcing(Phase): ...
@final
class Done(Phase): ...
@final
class Failed(Phase): ...


@final
class Counter(ChoreographicProtocol[Ballot, S], choreography="typing-ballot", role="counter",
              initial=Voting, abort=Failed):
    yes: int

    def __init__(self: Counter[Voting], step: Step[Any]) -> None:
        self._begin(yes=0)

    @transition(source=Voting, target=Announcing, action="gather", message=Vote, peer="voters")
    def count(self: Counter[Voting], vote: Vote, step: Step[Any]
              ) -> Counter[Voting] | Counter[Announcing]:
        if vote.approve and self.yes + 1 >= 2:
            # skipping a phase: announce the decision before the quorum's phase is reached
            self.announce(step)  # E: Invalid self argument "Counter[Voting]" to attribute function "announce"
            return self._advance(Counter[Announcing], yes=self.yes + 1)
        return self._advance(Counter[Voting], yes=self.yes + vote.approve)

    @transition(source=Voting, target=Failed, action="timeout")
    def time_out(self: Counter[Voting], step: Step[Any]) -> Counter[Failed]:
        failed = self._advance(Counter[Failed])
        failed.count(Vote(approve=True), step)  # E: Invalid self argument "Counter[Failed]" to attribute function "count"
        return failed

    @transition(source=Announcing, target=Done, action="send", message=Decision, peer="voters")
    def announce(self: Counter[Announcing], step: Step[Any]
                 ) -> tuple[Counter[Done], Decision]:
        done = self._advance(Counter[Done])
        done.announce(step)  # E: Invalid self argument "Counter[Done]" to attribute function "announce"
        return done, Decision(approved=True)

    @transition(source=Voting, target=Voting, action="local", command="recount")
    def recount(self: Counter[Voting], args: dict[str, Any], step: Step[Any]
                ) -> Counter[Voting]:
        return self._advance(Counter[Announcing])  # E: Argument 1 to "_advance" of "ChoreographicProtocol" has incompatible type "type[Counter[Announcing]]"; expected "type[Counter[Voting]]"
