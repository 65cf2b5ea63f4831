"""Rehydration: rebuild a session's typestate value from journal evidence after a crash.

Theory of operation
-------------------

A protocol implements :class:`Rehydration`: ``rehydrate_from_journal(evidence)`` is a *pure
fold* over the session's journal records (no clock, no I/O) that returns the typestate value the
evidence proves, or ``None`` when it proves nothing (the session never durably started). Values
are made with ``Cls._restore(Cls[Phase], **fields)``, the one deliberate way to create a
non-initial value.

Conservative rehydration (DESIGN.md invariant 2): when the evidence admits several states (a
torn batch, records that can be read two ways), the fold collects the candidates and
``resolve_ambiguous_state`` keeps the most conservative one: abort phases first (doing nothing
more is always safe), then the earliest phase in protocol order, then - between candidates of
one phase - the first the fold produced (journal order). The others are voided so nobody uses
them by mistake. :class:`PhaseOrder` makes "never claim a later phase than the evidence proves"
a check: ``order.check_not_later(claimed, proven)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from aura_node.errors import LocalProtocolError
from aura_node.session.typestate import ChoreographicProtocol, Phase, phase_of

__all__ = [
    "PhaseOrder",
    "Rehydration",
    "RehydrationError",
    "resolve_ambiguous_state",
]

E = TypeVar("E")
V = TypeVar("V", bound=ChoreographicProtocol[Any, Any])


class RehydrationError(LocalProtocolError):
    """A fold claimed more than its evidence proves, or used a phase outside the order."""

    code = "rehydration_overclaim"


@dataclass(frozen=True, slots=True)
class PhaseOrder:
    """A protocol's phases in forward order, plus its abort (safe terminal) phases."""

    forward: tuple[type[Phase], ...]
    aborts: frozenset[type[Phase]] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if len(set(self.forward)) != len(self.forward):
            raise ValueError("a phase appears twice in the forward order")
        if self.aborts & set(self.forward):
            raise ValueError("a phase cannot be both forward and abort")

    def rank(self, phase: type[Phase]) -> int:
        """-1 for abort phases (most conservative), else the index in the forward order."""
        if phase in self.aborts:
            return -1
        try:
            return self.forward.index(phase)
        except ValueError:
            raise RehydrationError(
                f"phase {phase.__name__} is not in the order "
                f"({', '.join(p.__name__ for p in self.forward)})"
            ) from None

    def is_later(self, a: type[Phase], b: type[Phase]) -> bool:
        """True if ``a`` claims more progress than ``b``."""
        return self.rank(a) > self.rank(b)

    def check_not_later(self, claimed: type[Phase], proven: type[Phase]) -> None:
        """Raise unless ``claimed`` is no later than what the evidence ``proven``."""
        if self.is_later(claimed, proven):
            raise RehydrationError(
                f"rehydration claims phase {claimed.__name__} but the evidence only proves "
                f"{proven.__name__}"
            )


def resolve_ambiguous_state(candidates: Iterable[V], *, order: PhaseOrder) -> V | None:
    """Keep the most conservative candidate (see the module doc); void the others.

    ``None`` if there are no candidates.
    """
    pool = list(candidates)
    if not pool:
        return None
    best = pool[0]
    best_rank = order.rank(phase_of(best))
    for cand in pool[1:]:
        r = order.rank(phase_of(cand))
        if r < best_rank:
            best, best_rank = cand, r
    for cand in pool:
        if cand is not best:
            cand._aura_void("discarded by resolve_ambiguous_state for a more conservative state")
    return best


class Rehydration(ABC, Generic[E, V]):
    """What a protocol implements to come back after a crash (see the module doc)."""

    phase_order: ClassVar[PhaseOrder]

    @abstractmethod
    def rehydrate_from_journal(self, evidence: Sequence[E]) -> V | None:
        """A pure fold over this session's journal evidence."""

    def resolve_ambiguous_state(self, candidates: Iterable[V]) -> V | None:
        return resolve_ambiguous_state(candidates, order=self.phase_order)
