"""Conformance: does a typestate class implement its role's projected local type?

Theory of operation
-------------------

The projection (:mod:`aura_node.choreo`) gives each role a *local type*: a finite state machine
of sends, receives, threshold gathers, timeouts and aborts. A protocol author writes the role's
typestate class, whose ``@transition`` methods declare the same things (source and target
phase, action, message). The two machines have different grain: a local type has many states
(one per interaction), a typestate one value type per *phase*. So we compare them at phase
grain:

1. Label every local state with a phase. A state the choreography labels (``phases``) has that
   phase; an unlabelled intermediate state belongs to the phase of its nearest labelled
   predecessor (breadth-first from the initial state, transitions in declaration order, so the
   choice is deterministic). The initial state must be labelled.
2. Each local transition becomes a phase edge ``(source phase, action, message, target phase)``;
   each ``@transition`` declaration another. Self-loops count: a send inside a phase must be
   declared too. Peers are shown in reports but not compared (role-set names belong to the
   choreography). ``local`` declarations have no counterpart on the wire and are not compared;
   their phases must still exist in the local type. Transitions the projection marks
   ``implicit`` (the abort path it adds to every state) may be declared but need not be, and
   a class that declares its abort phase once (class keyword ``abort=``) has every local
   ``abort`` edge into that phase, explicit ones included, and every deadline's ``timeout``
   into it (the authoring kit fails the session there when an undeclared timer fires).
3. Walk both phase graphs breadth-first from the initial phase, and at each phase compare the
   outgoing edges. The first difference raises :class:`ConformanceError`, naming the phase,
   the edge, which side has it, and the local states or method behind it.

Optional participants: a connect (``LocalTransition.connect``) is compared like the plain send
or receive it is (the mark is not an action of its own), so a class implementing an optional
role (``LocalType.optional``) declares its connect messages as the receives of its initial
phase - which is also what makes the kit open its session on them. A mismatch in that initial
phase says so, since the usual mistake is a class that acts before anybody connected it.

The checker is duck-typed on the attributes of ``aura_node.choreo.local.LocalType`` /
``LocalTransition`` (the :class:`LocalTypeView` protocol), so this module does not import the
choreography package.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol

from aura_node.errors import LocalProtocolError
from aura_node.session.typestate import (
    ChoreographicProtocol,
    TransitionDecl,
    declared_transitions,
)

__all__ = [
    "ConformanceError",
    "LocalTransitionView",
    "LocalTypeView",
    "PhaseEdge",
    "check_conformance",
    "local_phase_edges",
    "phase_of_states",
]


class ConformanceError(LocalProtocolError):
    """A typestate class and its projected local type differ."""

    code = "typestate_nonconformant"


class LocalTransitionView(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def message(self) -> type | None: ...
    @property
    def target(self) -> str: ...
    @property
    def threshold(self) -> int | None: ...


class LocalTypeView(Protocol):
    @property
    def choreography(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def initial(self) -> str: ...
    @property
    def states(self) -> Sequence[str]: ...
    @property
    def final(self) -> AbstractSet[str]: ...
    @property
    def phases(self) -> Mapping[str, str]: ...
    @property
    def transitions(self) -> Sequence[LocalTransitionView]: ...
    def outgoing(self, state: str) -> Sequence[LocalTransitionView]: ...


@dataclass(frozen=True, slots=True)
class PhaseEdge:
    """One phase-grain edge: what conformance compares."""

    source: str
    action: str
    message: type | None
    target: str

    def describe(self) -> str:
        msg = f" {self.message.__name__}" if self.message is not None else ""
        return f"{self.source} --{self.action}{msg}--> {self.target}"


def phase_of_states(local: LocalTypeView) -> dict[str, str]:
    """The phase of every local state reachable from the initial state (rule 1 above)."""
    initial_phase = local.phases.get(local.initial)
    if initial_phase is None:
        raise ConformanceError(
            f"local type {local.choreography}/{local.role}: initial state {local.initial!r} "
            "has no phase label"
        )
    phase = {local.initial: initial_phase}
    queue = deque([local.initial])
    while queue:
        state = queue.popleft()
        for t in local.outgoing(state):
            if t.target not in phase:
                phase[t.target] = local.phases.get(t.target, phase[state])
                queue.append(t.target)
    return phase


def local_phase_edges(local: LocalTypeView) -> dict[PhaseEdge, LocalTransitionView]:
    """Phase edges of the local type, each with the first local transition behind it."""
    phase = phase_of_states(local)
    edges: dict[PhaseEdge, LocalTransitionView] = {}
    for t in local.transitions:
        if t.source not in phase:
            continue  # unreachable; the choreography's well-formedness check reports it
        edge = PhaseEdge(phase[t.source], t.action, t.message, phase[t.target])
        # Keep an explicit transition in preference to an implicit one for the same edge.
        if edge not in edges or (_implicit(edges[edge]) and not _implicit(t)):
            edges[edge] = t
    return edges


def _implicit(t: LocalTransitionView) -> bool:
    """Transitions the projection adds to every non-final state (abort out, the abort message
    in from every peer) are marked ``implicit``: a typestate may declare them, need not."""
    return bool(getattr(t, "implicit", False))


def _decl_edge(d: TransitionDecl) -> PhaseEdge:
    return PhaseEdge(d.source.__name__, d.action, d.message, d.target.__name__)


def _bfs_phases(initial: str, edges: Sequence[PhaseEdge]) -> list[str]:
    order = [initial]
    seen = {initial}
    i = 0
    while i < len(order):
        here = order[i]
        i += 1
        for e in edges:
            if e.source == here and e.target not in seen:
                seen.add(e.target)
                order.append(e.target)
    return order


def check_conformance(
    cls: type[ChoreographicProtocol[Any, Any]], local_type: LocalTypeView
) -> None:
    """Raise :class:`ConformanceError` at the first difference between ``cls``'s declared
    transitions and ``local_type`` (any object with the :class:`LocalTypeView` attributes)."""
    local = local_type
    who = f"{cls.__qualname__} vs local type {local.choreography}/{local.role}"
    if (cls.choreography, cls.role) != (local.choreography, local.role):
        raise ConformanceError(
            f"{who}: {cls.__qualname__} implements {cls.choreography}/{cls.role}"
        )
    local_edges = local_phase_edges(local)
    state_phase = phase_of_states(local)
    initial = state_phase[local.initial]
    if cls.initial_phase.__name__ != initial:
        raise ConformanceError(
            f"{who}: initial phase is {cls.initial_phase.__name__} in the typestate but "
            f"{initial} (state {local.initial!r}) in the local type"
        )
    decls = declared_transitions(cls)
    known_phases = set(state_phase.values())
    for d in decls:
        if d.action == "local":
            for p in (d.source, d.target):
                if p.__name__ not in known_phases:
                    raise ConformanceError(
                        f"{who}: local step {d.describe()} uses phase {p.__name__}, which the "
                        f"local type does not have (phases: {', '.join(sorted(known_phases))})"
                    )
    typed: dict[PhaseEdge, TransitionDecl] = {}
    for d in decls:
        if d.action != "local":
            typed.setdefault(_decl_edge(d), d)

    # a class with ``abort=`` gets the abort and deadline edges into its abort phase from the
    # kit: its abort edge is declared once, and a timer with no timeout transition fails there
    abort = getattr(cls, "abort_phase", None)
    kit_edges = {e for e in local_edges
                 if abort is not None and e.action in ("timeout", "abort")
                 and e.target == abort.__name__}
    order = _bfs_phases(initial, [*local_edges, *typed])
    for here in order:
        for edge, t in local_edges.items():
            if (edge.source == here and edge not in typed and not _implicit(t)
                    and edge not in kit_edges):
                raise ConformanceError(
                    f"{who}: in phase {here} the local type has {edge.describe()} "
                    f"({t.action} {_name(t.message)} with {t.peer}, states {t.source!r} -> "
                    f"{t.target!r}) but {cls.__qualname__} declares no such transition"
                    f"{_near_miss(edge, typed)}{_optional_hint(local, here, initial)}"
                )
        for edge, d in typed.items():
            if edge.source == here and edge not in local_edges:
                raise ConformanceError(
                    f"{who}: in phase {here} {cls.__qualname__}.{d.method} declares "
                    f"{edge.describe()}, which the local type does not allow"
                    f"{_near_miss(edge, local_edges)}{_optional_hint(local, here, initial)}"
                )
    for edge, d in typed.items():
        if edge.source not in order:
            raise ConformanceError(
                f"{who}: {cls.__qualname__} declares {d.describe()} from phase "
                f"{edge.source}, which no transition reaches from the initial phase {initial}"
            )


def _optional_hint(local: LocalTypeView, phase: str, initial: str) -> str:
    if phase != initial or not getattr(local, "optional", False):
        return ""
    opens = sorted(
        _name(t.message)
        for t in local.outgoing(local.initial)
        if getattr(t, "connect", False) and t.action in ("recv", "gather")
    )
    return (
        f" ({local.role} is an optional role: its session starts on a connect message "
        f"({', '.join(opens)}), so its initial phase only receives that)"
    )


def _name(message: type | None) -> str:
    return message.__name__ if message is not None else "-"


def _near_miss(edge: PhaseEdge, others: Mapping[PhaseEdge, object]) -> str:
    """Point at the closest edge on the other side, which is usually the actual mistake."""
    for other in others:
        if other.source == edge.source and other.action == edge.action:
            if other.message is not edge.message and other.target == edge.target:
                if (
                    other.message is not None
                    and edge.message is not None
                    and other.message.__name__ == edge.message.__name__
                ):
                    return (
                        f"; the other side uses a different class named "
                        f"{edge.message.__name__} ({other.message.__module__})"
                    )
                return f"; the other side has {other.describe()}"
            if other.message is edge.message and other.target != edge.target:
                return f"; the other side has {other.describe()}"
    return ""
