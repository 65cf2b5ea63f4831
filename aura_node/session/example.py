"""A toy protocol that exercises the typestate machinery end to end.

The coordinator of choreography ``toy-vote`` gathers a threshold of signed votes from the
``voters`` role set (or times out and aborts), then sends the decision: the most common vote,
ties broken by the smallest value. It is small enough to read in one go and is what the unit
and type tests drive; the shipped protocols (DKD, recovery) follow the same shape.

Phases::

    Collecting --gather Vote--> Deciding --send Decision--> Decided
    Collecting --timeout------> Aborted
"""

from __future__ import annotations

from collections import Counter
from typing import TypeVar, final

import msgspec

from aura_node.errors import WitnessError
from aura_node.session.typestate import ChoreographicProtocol, Phase, requires, transition
from aura_node.session.witness import QuorumOfSignedStatements

__all__ = [
    "VOTE_DOMAIN",
    "Aborted",
    "Collecting",
    "Decided",
    "Decision",
    "Deciding",
    "ToyCoordinator",
    "ToyVote",
    "Vote",
]

S = TypeVar("S")

VOTE_DOMAIN = "toy-vote/vote"


class ToyVote:
    """Choreography marker type (the ``C`` of ``ChoreographicProtocol[C, S]``)."""


@final
class Collecting(Phase):
    """Waiting for a threshold of votes."""


@final
class Deciding(Phase):
    """Votes verified; the decision is not sent yet."""


@final
class Decided(Phase):
    """Decision sent (terminal)."""


@final
class Aborted(Phase):
    """Deadline passed without a threshold (terminal)."""


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    choice: bytes


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    outcome: bytes


@final
class ToyCoordinator(
    ChoreographicProtocol[ToyVote, S],
    choreography="toy-vote",
    role="coordinator",
    initial=Collecting,
):
    session_id: str
    threshold: int
    votes: tuple[bytes, ...]
    outcome: bytes

    def __init__(self: ToyCoordinator[Collecting], *, session_id: str, threshold: int) -> None:
        self._begin(session_id=session_id, threshold=threshold, votes=(), outcome=b"")

    @transition(source=Collecting, target=Deciding, action="gather", message=Vote, peer="voters")
    def collect(
        self: ToyCoordinator[Collecting], quorum: QuorumOfSignedStatements
    ) -> ToyCoordinator[Deciding]:
        ev = quorum.evidence
        if ev.session_id != self.session_id or ev.threshold < self.threshold:
            raise WitnessError(
                f"quorum is for session {ev.session_id} with threshold {ev.threshold}; "
                f"need session {self.session_id} with threshold {self.threshold}"
            )
        return self._advance(ToyCoordinator[Deciding], votes=quorum.payloads)

    @transition(source=Deciding, target=Decided, action="send", message=Decision, peer="voters")
    def decide(self: ToyCoordinator[Deciding]) -> tuple[ToyCoordinator[Decided], Decision]:
        counts = Counter(self.votes)
        outcome = min(counts, key=lambda v: (-counts[v], v))
        nxt = self._advance(ToyCoordinator[Decided], outcome=outcome)
        return nxt, Decision(session_id=self.session_id, outcome=outcome)

    @transition(source=Collecting, target=Aborted, action="timeout")
    def time_out(self: ToyCoordinator[Collecting]) -> ToyCoordinator[Aborted]:
        return self._advance(ToyCoordinator[Aborted])

    @requires(Decided)
    def result(self: ToyCoordinator[Decided]) -> bytes:
        return self.outcome
