"""Local types: one role's view of a choreography, as a finite state machine.

A local type is data (h11's "transitions as a table"): the monitor, the renderers, the
conformance checker of ``aura_node.session`` and the test interpreter all read the same
``transitions`` tuple.

Actions:

- ``send``: this role sends ``message`` to ``peer`` (a role, or a role set: one logical send the
  runtime fans out to every member).
- ``recv``: this role receives ``message`` from ``peer``.
- ``gather``: this role collects ``message`` from ``threshold`` distinct members of the role set
  ``peer``; the transition fires when the threshold is met. A gather state always also has a
  ``timeout`` transition (its ``deadline`` names the duration the runtime binds from config).
- ``timeout``: the deadline of this state's wait passed (``peer`` is "", ``message`` None).
- ``abort``: this role gives up; the runtime then sends the abort message to every role.

Optional participants (``connect``/``disconnect`` in the DSL) add no new action, only marks,
so every reader of the table that ignores them still reads a correct machine:

- ``LocalTransition.connect``: on a ``recv``/``gather``, this message brings this role into the
  session (its session starts on it: the runtime opens a session for this role when it arrives);
  on a ``send``, this send brings ``peer`` into the session (before it, ``peer`` is not part of
  the session and must not be told anything, the abort message included).
- ``LocalType.optional``: this role joins only on a connect; its initial state waits for a
  connect message. ``LocalType.optional_roles``: every optional role of the choreography.
- ``LocalType.released``: final states reached because another role released this one
  (``disconnect``); like any final state, the session completes there.

A subtyping or compatibility check should treat a ``connect`` receive or send like the plain
one with the same peer and message, and compare the marks as part of the action.

Transitions marked ``implicit`` are the same in every non-final state (any role may abort from
anywhere, and the abort message is accepted everywhere); renderers draw them once as a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["send", "recv", "gather", "timeout", "abort"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTransition:
    source: str  # local state name
    action: Action
    peer: str  # role (or role set) name on the other side ("" for timeout/abort)
    message: type | None  # msgspec Struct class, None for timeout/abort
    target: str  # local state name
    threshold: int | None = None  # for gather: k, bound for this session
    threshold_expr: str | None = None  # for gather: the declared form, e.g. "t of n"
    deadline: str | None = None  # for gather/timeout: the deadline's declared name
    implicit: bool = False  # the any-state abort edges
    where: str = ""  # source file:line of the interaction this comes from
    connect: bool = False  # this message brings its receiver into the session (see above)

    def describe(self) -> str:
        name = self.message.__name__ if self.message is not None else ""
        # a connect is the same action, marked: "(connects)" says this message brings its
        # receiver into the session
        opens = " (connects)" if self.connect else ""
        if self.action == "send":
            return f"send {name} to {self.peer}{opens}"
        if self.action == "recv":
            return f"recv {name} from {self.peer}{opens}"
        if self.action == "gather":
            return f"gather {self.threshold_expr or self.threshold} {name} from {self.peer}{opens}"
        if self.action == "timeout":
            return f"timeout ({self.deadline})" if self.deadline else "timeout"
        return "abort"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalType:
    choreography: str
    role: str
    initial: str
    states: tuple[str, ...]
    final: frozenset[str]
    phases: Mapping[str, str]  # local state name -> phase label where labelled
    transitions: tuple[LocalTransition, ...]
    abort_state: str = ""
    abort_message: type | None = None
    bindings: Mapping[str, int] = field(default_factory=dict)  # sizes and thresholds bound
    set_sizes: Mapping[str, int] = field(default_factory=dict)  # role set name -> bound size
    optional: bool = False  # this role joins on a connect message (see above)
    released: frozenset[str] = frozenset()  # final states reached by a release
    optional_roles: frozenset[str] = frozenset()  # the choreography's optional roles
    _by_source: Mapping[str, tuple[LocalTransition, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        grouped: dict[str, list[LocalTransition]] = {s: [] for s in self.states}
        for t in self.transitions:
            grouped.setdefault(t.source, []).append(t)
        object.__setattr__(self, "_by_source", {s: tuple(ts) for s, ts in grouped.items()})

    def outgoing(self, state: str) -> tuple[LocalTransition, ...]:
        """Transitions leaving ``state`` (implicit abort edges included)."""
        try:
            return self._by_source[state]
        except KeyError:
            raise KeyError(
                f"{self.choreography}/{self.role} has no state {state!r} (has: {self.states})"
            ) from None

    def explicit(self, state: str) -> tuple[LocalTransition, ...]:
        """Transitions leaving ``state`` without the implicit abort edges."""
        return tuple(t for t in self.outgoing(state) if not t.implicit)
