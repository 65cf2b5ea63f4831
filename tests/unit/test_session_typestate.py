"""The runtime guard behind the typestate: phases, linearity, copies, concurrency."""

from __future__ import annotations

import copy
import pickle
import threading
import time
from typing import Any, TypeVar, cast, final

import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import ConsumedStateError, LocalProtocolError, WitnessError, WrongPhaseError
from aura_node.session.example import (
    VOTE_DOMAIN,
    Aborted,
    Collecting,
    Decided,
    Deciding,
    Decision,
    ToyCoordinator,
    Vote,
)
from aura_node.session.typestate import (
    ChoreographicProtocol,
    Phase,
    TransitionDecl,
    declared_transitions,
    phase_of,
    transition,
)
from aura_node.session.witness import QuorumOfSignedStatements, SignedStatement

S = TypeVar("S")
KEYS = [DeviceKey.from_seed(bytes([i]) * 32) for i in range(1, 6)]


def quorum(
    session_id: str = "s1", threshold: int = 3, payload: bytes = b"yes"
) -> QuorumOfSignedStatements:
    items = [
        SignedStatement.sign(
            k, domain=VOTE_DOMAIN, session_id=session_id, choreography="toy-vote", payload=payload
        )
        for k in KEYS[:threshold]
    ]
    return QuorumOfSignedStatements.verify(
        items,
        members=[k.public for k in KEYS],
        session_id=session_id,
        choreography="toy-vote",
        domain=VOTE_DOMAIN,
        threshold=threshold,
    )


def fresh() -> ToyCoordinator[Collecting]:
    return ToyCoordinator(session_id="s1", threshold=3)


def test_happy_path_phases_and_effects() -> None:
    s = fresh()
    assert phase_of(s) is Collecting
    d = s.collect(quorum())
    assert phase_of(d) is Deciding
    assert d.votes == (b"yes", b"yes", b"yes")
    done, msg = d.decide()
    assert phase_of(done) is Decided
    assert msg == Decision(session_id="s1", outcome=b"yes")
    assert done.result() == b"yes"
    # a query does not consume
    assert done.result() == b"yes"


def test_wrong_phase_names_required_and_actual() -> None:
    d = fresh().collect(quorum())
    any_d = cast(Any, d)  # what the type checker cannot see through
    with pytest.raises(WrongPhaseError) as exc:
        any_d.time_out()
    assert exc.value.message == (
        "ToyCoordinator.time_out needs phase Collecting, but this value is in phase Deciding"
    )
    assert exc.value.code == "wrong_phase"
    with pytest.raises(WrongPhaseError, match="result needs phase Decided.*phase Deciding"):
        any_d.result()
    # a wrong-phase call does not consume the value
    done, _ = d.decide()
    assert phase_of(done) is Decided


def test_consumed_value_names_method_and_call_site() -> None:
    s = fresh()
    s.time_out()
    line = test_consumed_value_names_method_and_call_site.__code__.co_firstlineno + 2
    with pytest.raises(ConsumedStateError) as exc:
        s.time_out()
    msg = exc.value.message
    assert "ToyCoordinator[Collecting] value was consumed by transition time_out" in msg
    assert f"test_session_typestate.py:{line}" in msg
    assert exc.value.code == "consumed_state"
    # every later use raises, including reading a field and calling another transition
    with pytest.raises(ConsumedStateError, match="consumed by transition time_out"):
        _ = s.session_id
    with pytest.raises(ConsumedStateError):
        s.collect(quorum())
    assert "consumed by transition time_out" in repr(s)


def test_values_are_immutable() -> None:
    s = fresh()
    with pytest.raises(AttributeError, match="immutable"):
        s.session_id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del s.threshold
    assert s.session_id == "s1"


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_copy_and_pickle_are_refused(how: str) -> None:
    s = fresh()
    ops = {
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "pickle": lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL),
    }
    with pytest.raises(TypeError, match="linear typestate value and cannot be"):
        ops[how](s)
    # the refusal left the value live and usable
    assert phase_of(s.time_out()) is Aborted


def test_pickle_refused_for_every_protocol() -> None:
    s = fresh()
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(s, protocol=proto)


def test_failed_transition_leaves_value_live() -> None:
    s = fresh()
    with pytest.raises(WitnessError, match="need session s1"):
        s.collect(quorum(session_id="other"))
    d = s.collect(quorum())
    assert phase_of(d) is Deciding


def _race(value: ToyCoordinator[Collecting], n: int) -> tuple[list[object], list[BaseException]]:
    """``n`` real threads released together all try the same transition on ``value``."""
    barrier = threading.Barrier(n)
    lock = threading.Lock()
    wins: list[object] = []
    losses: list[BaseException] = []

    def attempt() -> None:
        barrier.wait()
        try:
            r = value.time_out()
        except BaseException as exc:
            with lock:
                losses.append(exc)
        else:
            with lock:
                wins.append(r)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, losses


def test_concurrent_transitions_exactly_one_wins() -> None:
    n = 16
    for _ in range(25):
        wins, losses = _race(fresh(), n)
        assert len(wins) == 1
        assert len(losses) == n - 1
        assert all(isinstance(e, ConsumedStateError) for e in losses), losses


def test_concurrent_slow_transition_loser_sees_in_progress() -> None:
    """While one thread is inside a transition, another thread's attempt is refused."""
    inside = threading.Event()
    release = threading.Event()

    v = _Gate(blocker=(inside, release))
    results: list[object] = []

    def winner() -> None:
        results.append(v.go())

    t = threading.Thread(target=winner)
    t.start()
    assert inside.wait(5)
    with pytest.raises(ConsumedStateError, match="being consumed by transition go called at"):
        v.go()
    release.set()
    t.join()
    assert len(results) == 1
    with pytest.raises(ConsumedStateError, match="consumed by transition go"):
        v.go()


# --- a tiny protocol to attack the guard from inside ------------------------------------------


class _M:
    pass


@final
class _Start(Phase):
    pass


@final
class _End(Phase):
    pass


@final
class _Gate(ChoreographicProtocol[_M, S], choreography="gate", role="r", initial=_Start):
    blocker: tuple[threading.Event, threading.Event] | None

    def __init__(
        self: _Gate[_Start], *, blocker: tuple[threading.Event, threading.Event] | None = None
    ) -> None:
        self._begin(blocker=blocker)

    @transition(source=_Start, target=_End, action="local")
    def go(self: _Gate[_Start]) -> _Gate[_End]:
        if self.blocker is not None:
            inside, release = self.blocker
            inside.set()
            assert release.wait(5)
        return self._advance(_Gate[_End])

    @transition(source=_Start, target=_End, action="local")
    def wrong_target(self: _Gate[_Start]) -> _Gate[_End]:
        return self._advance(cast(Any, _Gate[_Start]))

    @transition(source=_Start, target=_End, action="local")
    def forgets_successor(self: _Gate[_Start]) -> _Gate[_End]:
        self._advance(_Gate[_End])
        return cast(Any, None)

    @transition(source=_Start, target=_End, action="local")
    def raises_after_advance(self: _Gate[_Start]) -> _Gate[_End]:
        nxt = self._advance(_Gate[_End])
        _LEAK.append(nxt)
        raise RuntimeError("boom")

    @transition(source=_Start, target=_End, action="local")
    def two_successors(self: _Gate[_Start]) -> _Gate[_End]:
        self._advance(_Gate[_End])
        return self._advance(_Gate[_End])

    @transition(source=_Start, target=_End, action="local")
    def unknown_field(self: _Gate[_Start]) -> _Gate[_End]:
        return self._advance(_Gate[_End], nonsense=1)


_LEAK: list[object] = []


def test_advance_outside_a_transition_is_refused() -> None:
    g = _Gate()
    with pytest.raises(LocalProtocolError, match="only be called by a @transition"):
        g._advance(_Gate[_End])
    assert phase_of(g) is _Start


def test_advance_to_undeclared_target_is_refused() -> None:
    g = _Gate()
    with pytest.raises(LocalProtocolError, match="declared to go to _End but built a _Start"):
        g.wrong_target()
    assert phase_of(g.go()) is _End  # the failed attempt left it live


def test_transition_must_return_its_successor() -> None:
    g = _Gate()
    with pytest.raises(LocalProtocolError, match="must return the value built by"):
        g.forgets_successor()
    assert phase_of(g.go()) is _End


def test_successor_of_failed_transition_is_void() -> None:
    g = _Gate()
    _LEAK.clear()
    with pytest.raises(RuntimeError, match="boom"):
        g.raises_after_advance()
    (leaked,) = _LEAK
    with pytest.raises(ConsumedStateError, match="void: transition raises_after_advance"):
        _ = cast(Any, leaked).blocker
    assert phase_of(g.go()) is _End


def test_two_successors_and_unknown_fields_are_refused() -> None:
    g = _Gate()
    with pytest.raises(LocalProtocolError, match="built two successors"):
        g.two_successors()
    with pytest.raises(LocalProtocolError, match="no state field"):
        g.unknown_field()
    assert phase_of(g.go()) is _End


def test_successor_is_not_usable_before_its_transition_returns() -> None:
    seen: list[BaseException] = []

    @final
    class _Peek(ChoreographicProtocol[_M, S], choreography="peek", role="r", initial=_Start):
        def __init__(self: _Peek[_Start]) -> None:
            self._begin()

        @transition(source=_Start, target=_End, action="local")
        def go(self: _Peek[_Start]) -> _Peek[_End]:
            nxt = self._advance(_Peek[_End])
            try:
                nxt.go2()
            except ConsumedStateError as exc:
                seen.append(exc)
            return nxt

        @transition(source=_End, target=_End, action="local")
        def go2(self: _Peek[_End]) -> _Peek[_End]:
            return self._advance(_Peek[_End])

    end = _Peek().go()
    assert len(seen) == 1 and "has not returned yet" in str(seen[0])
    assert phase_of(end.go2()) is _End


def test_object_new_bypass_is_refused_on_use() -> None:
    g = object.__new__(_Gate)
    with pytest.raises(LocalProtocolError, match="not made by its constructor"):
        g.go()
    with pytest.raises(LocalProtocolError, match="not made by its constructor"):
        _ = g.blocker


def test_begin_twice_is_refused() -> None:
    g = _Gate()
    with pytest.raises(LocalProtocolError, match="_begin called twice"):
        g._begin(blocker=None)


def test_subclassing_a_protocol_class_is_refused_at_runtime() -> None:
    with pytest.raises(TypeError, match="subclasses the protocol class ToyCoordinator"):

        class Sneaky(  # type: ignore[misc]
            ToyCoordinator[Collecting],
            choreography="toy-vote",
            role="coordinator",
            initial=Collecting,
        ):
            pass


def test_phases_are_unrelated_markers() -> None:
    with pytest.raises(TypeError, match="must subclass Phase directly"):

        class Later(Collecting):  # type: ignore[misc]
            pass

    with pytest.raises(TypeError, match="phase marker type, not a value"):
        Collecting()


def test_declarations_are_validated() -> None:
    with pytest.raises(TypeError, match="must declare its message type"):
        transition(source=_Start, target=_End, action="send")
    with pytest.raises(TypeError, match="not a Phase subclass"):
        transition(source=cast(Any, int), target=_End, action="local")
    with pytest.raises(TypeError, match="is not one of"):
        transition(source=_Start, target=_End, action=cast(Any, "teleport"))
    with pytest.raises(TypeError, match="initial=.* is not a Phase"):

        class NoInitial(
            ChoreographicProtocol[_M, S], choreography="x", role="r", initial=cast(Any, int)
        ):
            pass


def test_declared_transitions_in_definition_order() -> None:
    decls = declared_transitions(ToyCoordinator)
    assert decls == (
        TransitionDecl(
            method="collect", source=Collecting, target=Deciding, action="gather",
            message=Vote, peer="voters",
        ),
        TransitionDecl(
            method="decide", source=Deciding, target=Decided, action="send",
            message=Decision, peer="voters",
        ),
        TransitionDecl(
            method="time_out", source=Collecting, target=Aborted, action="timeout",
            message=None, peer=None,
        ),
    )
    assert decls[0].describe() == (
        "Collecting --gather Vote with voters--> Deciding (method collect)"
    )
    assert ToyCoordinator.choreography == "toy-vote"
    assert ToyCoordinator.role == "coordinator"
    assert ToyCoordinator.initial_phase is Collecting
    with pytest.raises(TypeError, match="not a ChoreographicProtocol"):
        declared_transitions(cast(Any, int))


def test_repr_hides_field_values() -> None:
    s = ToyCoordinator(session_id="secret-session", threshold=3)
    assert repr(s) == "<ToyCoordinator[Collecting] live>"


# --- sweeps -------------------------------------------------------------------------------------

_ALIASES: dict[type[Phase], Any] = {
    Collecting: ToyCoordinator[Collecting],
    Deciding: ToyCoordinator[Deciding],
    Decided: ToyCoordinator[Decided],
    Aborted: ToyCoordinator[Aborted],
}
_CALLS: dict[str, tuple[Any, ...]] = {"collect": (None,), "decide": (), "time_out": ()}


@pytest.mark.parametrize("phase", list(_ALIASES))
@pytest.mark.parametrize("method", sorted(_CALLS))
def test_phase_by_transition_sweep(phase: type[Phase], method: str) -> None:
    """Every (phase, transition) pair: the declared one moves to its target and consumes;
    every other one raises WrongPhaseError and leaves the value live and unchanged."""
    value: Any = ToyCoordinator._restore(
        _ALIASES[phase], session_id="s1", threshold=3, votes=(b"a",), outcome=b""
    )
    (decl,) = [d for d in declared_transitions(ToyCoordinator) if d.method == method]
    args = tuple(quorum() if a is None else a for a in _CALLS[method])
    if decl.source is phase:
        result = getattr(value, method)(*args)
        successor = result[0] if isinstance(result, tuple) else result
        assert phase_of(successor) is decl.target
        with pytest.raises(ConsumedStateError):
            getattr(value, method)(*args)
    else:
        with pytest.raises(WrongPhaseError, match=f"needs phase {decl.source.__name__}, but "
                           f"this value is in phase {phase.__name__}"):
            getattr(value, method)(*args)
        assert phase_of(value) is phase and value.session_id == "s1"


@final
class _Sleepy(ChoreographicProtocol[_M, S], choreography="sleepy", role="r", initial=_Start):
    def __init__(self: _Sleepy[_Start]) -> None:
        self._begin()

    @transition(source=_Start, target=_End, action="local")
    def go(self: _Sleepy[_Start]) -> _Sleepy[_End]:
        time.sleep(0.002)  # hold the claim long enough that the other threads collide with it
        return self._advance(_Sleepy[_End])


def test_concurrent_slow_transitions_exactly_one_wins() -> None:
    n = 12
    for _ in range(5):
        value = _Sleepy()
        barrier = threading.Barrier(n)
        outcomes: list[object] = []

        def attempt(
            v: _Sleepy[_Start] = value,
            b: threading.Barrier = barrier,
            out: list[object] = outcomes,
        ) -> None:
            b.wait()
            try:
                out.append(v.go())
            except ConsumedStateError as exc:
                out.append(exc)

        threads = [threading.Thread(target=attempt) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(outcomes) == n and len(winners) == 1
        assert phase_of(cast(Any, winners[0])) is _End
        assert any("being consumed by transition go" in str(o) for o in outcomes)
