"""Conformance of typestate classes against hand-built local types (first difference wins)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo.local import LocalTransition, LocalType
from aura_node.errors import LocalProtocolError
from aura_node.session.conformance import (
    ConformanceError,
    PhaseEdge,
    check_conformance,
    local_phase_edges,
    phase_of_states,
)
from aura_node.session.example import Decision, ToyCoordinator, Vote
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

S = TypeVar("S")


def toy_local(**changes: Any) -> LocalType:
    base = LocalType(
        choreography="toy-vote",
        role="coordinator",
        initial="c0",
        states=("c0", "d0", "e0", "ab"),
        final=frozenset({"e0", "ab"}),
        phases={"c0": "Collecting", "d0": "Deciding", "e0": "Decided", "ab": "Aborted"},
        transitions=(
            LocalTransition(
                source="c0", action="gather", peer="voters", message=Vote, target="d0",
                threshold=3,
            ),
            LocalTransition(
                source="d0", action="send", peer="voters", message=Decision, target="e0"
            ),
            LocalTransition(
                source="c0", action="timeout", peer="voters", message=None, target="ab"
            ),
        ),
    )
    return replace(base, **changes)


def test_toy_coordinator_conforms() -> None:
    check_conformance(ToyCoordinator, toy_local())


def test_extra_local_transition_is_reported() -> None:
    class Cancel(msgspec.Struct, frozen=True):
        reason: str

    local = toy_local(
        transitions=(
            *toy_local().transitions,
            LocalTransition(source="c0", action="recv", peer="voters", message=Cancel, target="ab"),
        )
    )
    with pytest.raises(ConformanceError) as exc:
        check_conformance(ToyCoordinator, local)
    assert exc.value.message == (
        "ToyCoordinator vs local type toy-vote/coordinator: in phase Collecting the local type "
        "has Collecting --recv Cancel--> Aborted (recv Cancel with voters, states 'c0' -> 'ab') "
        "but ToyCoordinator declares no such transition"
    )
    assert exc.value.code == "typestate_nonconformant"
    assert isinstance(exc.value, LocalProtocolError)


def test_implicit_abort_transitions_need_not_be_declared() -> None:
    class Abort(msgspec.Struct, frozen=True):
        reason: str

    implicit = LocalTransition(
        source="d0", action="recv", peer="voters", message=Abort, target="ab", implicit=True
    )
    check_conformance(ToyCoordinator, toy_local(transitions=(*toy_local().transitions, implicit)))
    explicit = replace(implicit, implicit=False)
    with pytest.raises(ConformanceError, match="recv Abort"):
        check_conformance(
            ToyCoordinator, toy_local(transitions=(*toy_local().transitions, explicit))
        )


def test_undeclared_by_local_type_is_reported() -> None:
    local = toy_local(transitions=toy_local().transitions[:2])
    with pytest.raises(ConformanceError) as exc:
        check_conformance(ToyCoordinator, local)
    assert exc.value.message == (
        "ToyCoordinator vs local type toy-vote/coordinator: in phase Collecting "
        "ToyCoordinator.time_out declares Collecting --timeout--> Aborted, which the local type "
        "does not allow"
    )


def test_same_name_different_message_class_is_pointed_out() -> None:
    class Decision(msgspec.Struct, frozen=True):  # a look-alike from another module
        outcome: bytes

    t = toy_local().transitions
    local = toy_local(transitions=(t[0], replace(t[1], message=Decision), t[2]))
    with pytest.raises(ConformanceError, match="in phase Deciding the local type has Deciding "
                       "--send Decision--> Decided .*different class named Decision"):
        check_conformance(ToyCoordinator, local)


def test_wrong_target_phase_is_pointed_out() -> None:
    t = toy_local().transitions
    local = toy_local(transitions=(t[0], replace(t[1], target="ab"), t[2]))
    with pytest.raises(
        ConformanceError,
        match="Deciding --send Decision--> Aborted .*the other side has "
        "Deciding --send Decision--> Decided",
    ):
        check_conformance(ToyCoordinator, local)


def test_first_difference_is_the_earliest_phase() -> None:
    t = toy_local().transitions
    # two differences: Deciding's send goes elsewhere, Collecting's timeout is missing
    local = toy_local(transitions=(t[0], replace(t[1], target="ab")))
    with pytest.raises(ConformanceError, match="in phase Collecting .*time_out"):
        check_conformance(ToyCoordinator, local)


def test_names_and_initial_phase_must_match() -> None:
    with pytest.raises(ConformanceError, match="implements toy-vote/coordinator"):
        check_conformance(ToyCoordinator, toy_local(role="voter"))
    with pytest.raises(ConformanceError, match="implements toy-vote/coordinator"):
        check_conformance(ToyCoordinator, toy_local(choreography="dkd"))
    with pytest.raises(
        ConformanceError,
        match="initial phase is Collecting in the typestate but Deciding \\(state 'd0'\\)",
    ):
        check_conformance(ToyCoordinator, toy_local(initial="d0"))
    with pytest.raises(ConformanceError, match="initial state 'c0' has no phase label"):
        check_conformance(ToyCoordinator, toy_local(phases={"d0": "Deciding"}))


# --- unlabelled intermediate states collapse into their predecessor's phase ----------------------


class Ping(msgspec.Struct, frozen=True):
    n: int


class Pong(msgspec.Struct, frozen=True):
    n: int


class RelayChoreo:
    pass


@final
class Waiting(Phase):
    pass


@final
class Answered(Phase):
    pass


@final
class Closed(Phase):
    pass


@final
class Relay(ChoreographicProtocol[RelayChoreo, S], choreography="relay", role="server",
            initial=Waiting):
    last: int

    def __init__(self: Relay[Waiting]) -> None:
        self._begin(last=0)

    @transition(source=Waiting, target=Waiting, action="recv", message=Ping, peer="client")
    def receive(self: Relay[Waiting], ping: Ping) -> Relay[Waiting]:
        return self._advance(Relay[Waiting], last=ping.n)

    @transition(source=Waiting, target=Answered, action="send", message=Pong, peer="client")
    def answer(self: Relay[Waiting]) -> tuple[Relay[Answered], Pong]:
        return self._advance(Relay[Answered]), Pong(n=self.last)

    @transition(source=Answered, target=Closed, action="timeout")
    def expire(self: Relay[Answered]) -> Relay[Closed]:
        return self._advance(Relay[Closed])

    @transition(source=Answered, target=Closed, action="local")
    def close(self: Relay[Answered]) -> Relay[Closed]:
        return self._advance(Relay[Closed])


def relay_local(**changes: Any) -> LocalType:
    base = LocalType(
        choreography="relay",
        role="server",
        initial="w0",
        states=("w0", "w1", "a0", "a1"),
        final=frozenset({"a1"}),
        phases={"w0": "Waiting", "a0": "Answered", "a1": "Closed"},
        transitions=(
            LocalTransition(source="w0", action="recv", peer="client", message=Ping, target="w1"),
            LocalTransition(source="w1", action="send", peer="client", message=Pong, target="a0"),
            LocalTransition(
                source="a0", action="timeout", peer="client", message=None, target="a1"
            ),
        ),
    )
    return replace(base, **changes)


def test_unlabelled_states_take_the_nearest_labelled_predecessor_phase() -> None:
    local = relay_local()
    assert phase_of_states(local) == {
        "w0": "Waiting", "w1": "Waiting", "a0": "Answered", "a1": "Closed"
    }
    assert set(local_phase_edges(local)) == {
        PhaseEdge("Waiting", "recv", Ping, "Waiting"),
        PhaseEdge("Waiting", "send", Pong, "Answered"),
        PhaseEdge("Answered", "timeout", None, "Closed"),
    }
    # the relay's typestate declares the intra-phase recv as a self-loop: it conforms,
    # and its extra `local` step Answered -> Closed has no wire counterpart to compare
    check_conformance(Relay, local)


def test_relay_reports_a_missing_send_after_collapse() -> None:
    t = relay_local().transitions
    local = relay_local(
        transitions=(
            *t,
            LocalTransition(source="a0", action="send", peer="client", message=Pong, target="a1"),
        )
    )
    with pytest.raises(
        ConformanceError,
        match="in phase Answered the local type has Answered --send Pong--> Closed "
        "\\(send Pong with client, states 'a0' -> 'a1'\\)",
    ):
        check_conformance(Relay, local)


def test_local_step_into_a_phase_the_local_type_lacks_is_reported() -> None:
    t = relay_local().transitions
    local = relay_local(transitions=t[:2], phases={"w0": "Waiting", "a0": "Answered"})
    with pytest.raises(ConformanceError, match="local step .*close.* uses phase Closed"):
        check_conformance(Relay, local)


def test_declared_transition_from_an_unreachable_phase_is_reported() -> None:
    @final
    class Orphan(Phase):
        pass

    @final
    class Stray(ChoreographicProtocol[RelayChoreo, S], choreography="relay", role="server",
                initial=Waiting):
        def __init__(self: Stray[Waiting]) -> None:
            self._begin()

        @transition(source=Waiting, target=Waiting, action="recv", message=Ping, peer="client")
        def receive(self: Stray[Waiting]) -> Stray[Waiting]:
            return self._advance(Stray[Waiting])

        @transition(source=Waiting, target=Answered, action="send", message=Pong, peer="client")
        def answer(self: Stray[Waiting]) -> Stray[Answered]:
            return self._advance(Stray[Answered])

        @transition(source=Orphan, target=Answered, action="recv", message=Ping, peer="client")
        def ghost(self: Stray[Orphan]) -> Stray[Answered]:
            return self._advance(Stray[Answered])

    t = relay_local().transitions
    local = relay_local(transitions=t[:2], phases={"w0": "Waiting", "a0": "Answered"})
    with pytest.raises(ConformanceError, match="from phase Orphan, which no transition reaches"):
        check_conformance(Stray, local)
