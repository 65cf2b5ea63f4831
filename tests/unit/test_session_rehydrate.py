"""Conservative rehydration: the fold never claims more than its evidence proves."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.errors import ConsumedStateError
from aura_node.session.example import (
    Aborted,
    Collecting,
    Decided,
    Deciding,
    ToyCoordinator,
    ToyCoordinatorRehydration,
    ToyRecord,
)
from aura_node.session.rehydrate import PhaseOrder, RehydrationError, resolve_ambiguous_state
from aura_node.session.typestate import Phase, phase_of

ORDER = ToyCoordinatorRehydration.phase_order
PHASES: list[type[Phase]] = [Collecting, Deciding, Decided, Aborted]
ALIASES: dict[type[Phase], Any] = {
    Collecting: ToyCoordinator[Collecting],
    Deciding: ToyCoordinator[Deciding],
    Decided: ToyCoordinator[Decided],
    Aborted: ToyCoordinator[Aborted],
}


def restored(phase: type[Phase], tag: int = 0) -> ToyCoordinator[Any]:
    value: ToyCoordinator[Any] = ToyCoordinator._restore(
        ALIASES[phase], session_id=f"s{tag}", threshold=tag, votes=(), outcome=b""
    )
    return value


def test_phase_order_ranks_aborts_as_most_conservative() -> None:
    assert ORDER.rank(Aborted) == -1
    assert [ORDER.rank(p) for p in (Collecting, Deciding, Decided)] == [0, 1, 2]
    assert ORDER.is_later(Decided, Collecting) and not ORDER.is_later(Aborted, Collecting)
    ORDER.check_not_later(Deciding, Deciding)
    ORDER.check_not_later(Collecting, Deciding)
    with pytest.raises(RehydrationError) as exc:
        ORDER.check_not_later(Decided, Deciding)
    assert exc.value.message == (
        "rehydration claims phase Decided but the evidence only proves Deciding"
    )
    assert exc.value.code == "rehydration_overclaim"


def test_phase_order_rejects_bad_orders_and_unknown_phases() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        PhaseOrder((Collecting, Collecting))
    with pytest.raises(ValueError, match="both forward and abort"):
        PhaseOrder((Collecting,), frozenset({Collecting}))
    with pytest.raises(RehydrationError, match="not in the order"):
        PhaseOrder((Collecting,)).rank(Decided)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PHASES), min_size=1, max_size=8))
def test_resolve_picks_the_most_conservative_candidate(phases: list[type[Phase]]) -> None:
    candidates = [restored(p, i) for i, p in enumerate(phases)]
    chosen = resolve_ambiguous_state(candidates, order=ORDER)
    assert chosen is not None
    ranks = [ORDER.rank(p) for p in phases]
    best = min(ranks)
    # never a later phase than any candidate; ties go to the first one the fold produced
    assert ORDER.rank(phase_of(chosen)) == best
    assert chosen is candidates[ranks.index(best)]
    assert chosen.session_id == f"s{ranks.index(best)}"  # still live
    for c in candidates:
        if c is not chosen:
            with pytest.raises(ConsumedStateError, match="discarded by resolve_ambiguous_state"):
                _ = c.session_id


def test_resolve_with_no_candidates_is_none() -> None:
    assert resolve_ambiguous_state([], order=ORDER) is None
    assert ToyCoordinatorRehydration().resolve_ambiguous_state([]) is None


def test_restored_values_are_linear_too() -> None:
    v = ToyCoordinator._restore(ToyCoordinator[Collecting], session_id="s", threshold=1,
                                votes=(), outcome=b"")
    v.time_out()
    with pytest.raises(ConsumedStateError):
        v.time_out()


# --- the toy fold -------------------------------------------------------------------------------

_RECORD = st.sampled_from(["quorum", "decided", "aborted", "foreign"])


def _records(kinds: list[str]) -> list[ToyRecord]:
    out = [ToyRecord(kind="started", session_id="s", threshold=2)]
    for k in kinds:
        if k == "foreign":
            out.append(ToyRecord(kind="decided", session_id="other", outcome=b"x"))
        elif k == "quorum":
            out.append(ToyRecord(kind="quorum", session_id="s", votes=(b"a", b"a")))
        elif k == "decided":
            out.append(ToyRecord(kind="decided", session_id="s", outcome=b"a"))
        else:
            out.append(ToyRecord(kind="aborted", session_id="s"))
    return out


def _proven(kinds: list[str]) -> type[Phase]:
    """What the records prove, in journal order: a decision only counts after a quorum."""
    phase: type[Phase] = Collecting
    for k in kinds:
        if k == "aborted":
            return Aborted
        if k == "quorum" and phase is Collecting:
            phase = Deciding
        elif k == "decided" and phase is Deciding:
            phase = Decided
    return phase


@settings(max_examples=150, deadline=None)
@given(st.lists(_RECORD, max_size=8))
def test_fold_never_claims_a_later_phase_than_proven(kinds: list[str]) -> None:
    value = ToyCoordinatorRehydration().rehydrate_from_journal(_records(kinds))
    assert value is not None
    proven = _proven(kinds)
    ORDER.check_not_later(phase_of(value), proven)
    assert phase_of(value) is proven
    assert value.session_id == "s"


def test_fold_without_a_durable_start_is_none() -> None:
    fold = ToyCoordinatorRehydration()
    assert fold.rehydrate_from_journal([]) is None
    assert fold.rehydrate_from_journal([ToyRecord(kind="quorum", session_id="s")]) is None


def test_rehydrated_value_continues_the_protocol() -> None:
    value = ToyCoordinatorRehydration().rehydrate_from_journal(_records(["quorum"]))
    assert value is not None and phase_of(value) is Deciding
    done, decision = value.decide()
    assert decision.outcome == b"a" and done.result() == b"a"
