"""Calls on a value of the wrong phase: each is an error at the call site."""

from __future__ import annotations

from aura_node.session.example import Collecting, Decided, Deciding, ToyCoordinator
from aura_node.session.witness import QuorumOfSignedStatements


def collecting(s: ToyCoordinator[Collecting]) -> None:
    s.decide()  # E: Invalid self argument "ToyCoordinator[Collecting]" to attribute function "decide"
    s.result()  # E: Invalid self argument "ToyCoordinator[Collecting]" to attribute function "result"


def deciding(s: ToyCoordinator[Deciding], q: QuorumOfSignedStatements) -> None:
    s.collect(q)  # E: Invalid self argument "ToyCoordinator[Deciding]" to attribute function "collect"
    s.time_out()  # E: Invalid self argument "ToyCoordinator[Deciding]" to attribute function "time_out"


def decided(s: ToyCoordinator[Decided]) -> None:
    s.decide()  # E: Invalid self argument "ToyCoordinator[Decided]" to attribute function "decide"


def reuse_of_the_old_phase(s: ToyCoordinator[Collecting], q: QuorumOfSignedStatements) -> None:
    d = s.collect(q)
    d.collect(q)  # E: Invalid self argument "ToyCoordinator[Deciding]" to attribute function "collect"


def phase_is_invariant(s: ToyCoordinator[Deciding]) -> ToyCoordinator[Collecting]:
    return s  # E: Incompatible return value type (got "ToyCoordinator[Deciding]", expected "ToyCoordinator[Collecting]")
