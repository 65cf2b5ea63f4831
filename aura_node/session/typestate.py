"""Typestate: a protocol role as a linear value whose *type* names its phase.

Theory of operation
-------------------

A role of a choreography is implemented as one ``@final`` class generic in its phase::

    @final
    class ToySession(ChoreographicProtocol[Toy, S], choreography="toy", role="dealer",
                     initial=Collecting):
        session_id: str                          # state fields, immutable
        def __init__(self: ToySession[Collecting], *, session_id: str) -> None:
            self._begin(session_id=session_id)
        @transition(source=Collecting, target=Done, action="gather", message=Vote, peer="voters")
        def close(self: ToySession[Collecting], quorum: QuorumOfSignedStatements
                  ) -> ToySession[Done]:
            return self._advance(ToySession[Done])
        @requires(Done)                          # a non-consuming, phase-restricted query
        def outcome(self: ToySession[Done]) -> bytes: ...

The concrete class binds ``C`` (the choreography marker) and stays generic in ``S`` only, so
annotations name just the phase: ``ToySession[Collecting]``. State fields are the class's
annotations; ``_begin(**fields)`` sets all of them, ``_advance(Cls[Phase], **changes)`` copies
them into the successor with changes.

What makes ``mypy --strict`` hold code to the phases:

* ``S`` is an **invariant** ``TypeVar``: ``ToySession[Collecting]`` and ``ToySession[Done]`` are
  unrelated types, whatever the phases are. Phases are ``@final`` marker classes that subclass
  only :class:`Phase` (enforced at class creation), so no phase is a subtype of another either.
* Every method annotates ``self`` with the phase it needs. Calling it on a value of another
  phase is an error at the call site::

      error: Invalid self argument "ToySession[Done]" to attribute function "close" with type
      "Callable[[ToySession[Collecting], QuorumOfSignedStatements], ToySession[Done]]"  [misc]

* ``__init__`` annotates ``self`` with the initial phase, so the public constructor only ever
  yields the initial phase: ``ToySession(...)`` is ``ToySession[Collecting]``, and even the
  explicit forgery ``ToySession[Done](...)`` is typed ``ToySession[Collecting]`` (mypy binds
  ``S`` from the ``self`` annotation), so it cannot be used where ``ToySession[Done]`` is wanted.
* A transition builds its successor with ``self._advance(ToySession[Done], **changes)``; the
  subscripted class is both the static return type (mypy checks it against the method's
  declared return type) and, at runtime, where the guard reads the target phase.
* The class is ``@final``: mypy rejects subclassing ("Cannot inherit from final class"), and the
  runtime refuses it too (a subclass could override a transition and bypass its guard).

What the checker cannot see - ``Any``, ``cast``, a value used again after a transition - the
runtime guard catches:

* Each value carries its phase. A transition (``@transition``) or a phase-restricted query
  (``@requires``) on the wrong phase raises :class:`~aura_node.errors.WrongPhaseError` naming
  the method, the required phase and the actual phase.
* Values are **linear**. A transition claims the value under a per-value lock (so of several
  concurrent transitions on one value exactly one wins), runs the pure body, and on success marks
  the value consumed, recording the method and the caller's ``file:line``. Any later use of the
  value - a transition, a query, reading a field - raises
  :class:`~aura_node.errors.ConsumedStateError` that says where it was consumed. If the body
  raises (say, a witness did not fit), nothing happened: the value stays live and the half-built
  successor is void.
* ``copy``, ``deepcopy`` and ``pickle`` are refused: a copy would give two successors of one
  state, i.e. a device that can equivocate. Persist evidence to the journal and rehydrate.
* Values are immutable; ``_advance`` copies the fields and applies the changes.

Each transition also *declares* what it does on the wire (``action``, ``message``, ``peer``), so
:mod:`aura_node.session.conformance` can check the class against the role's projected local
type.
"""

from __future__ import annotations

import functools
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, NoReturn, TypeVar, cast

from aura_node.errors import ConsumedStateError, LocalProtocolError, WrongPhaseError

__all__ = [
    "ACTIONS",
    "Action",
    "ChoreographicProtocol",
    "Phase",
    "TransitionDecl",
    "declared_transitions",
    "phase_of",
    "requires",
    "transition",
]

C = TypeVar("C")  # the choreography marker type
S = TypeVar("S")  # the phase; invariant on purpose (see the module doc)
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

Action = Literal["send", "recv", "gather", "timeout", "abort", "local"]
ACTIONS: frozenset[str] = frozenset(typing.get_args(Action))
# Actions that move a message: their declaration must name the message type.
_MESSAGE_ACTIONS = frozenset({"send", "recv", "gather"})


class Phase:
    """Base of phase markers. A phase is a type-level tag, never a value.

    Every phase subclasses ``Phase`` directly and is ``@final``; the runtime refuses a phase
    that subclasses another phase, so phases are pairwise unrelated.
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__bases__ != (Phase,):
            raise TypeError(
                f"phase {cls.__qualname__} must subclass Phase directly (bases: "
                f"{', '.join(b.__qualname__ for b in cls.__bases__)}); phases are unrelated"
            )

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__qualname__} is a phase marker type, not a value")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionDecl:
    """What one transition method does, as declared by ``@transition``."""

    method: str
    source: type[Phase]
    target: type[Phase]
    action: Action
    message: type | None
    peer: str | None
    #: for a ``local`` or ``send`` transition: the operator control action that runs it
    #: (``ctl``); a ``send`` with a command waits for the operator instead of running at once
    command: str | None = None
    #: for a ``timeout`` transition: the timer it handles (``None``: any timer)
    timer: str | None = None

    def describe(self) -> str:
        msg = self.message.__name__ if self.message is not None else "-"
        peer = f" with {self.peer}" if self.peer else ""
        return (
            f"{self.source.__name__} --{self.action} {msg}{peer}--> {self.target.__name__}"
            f" (method {self.method})"
        )


# --- the runtime guard -------------------------------------------------------------------------

_LIVE = "live"
_TRANSITIONING = "transitioning"
_CONSUMED = "consumed"
_PENDING = "pending"  # a successor built by _advance, live only once its transition commits
_VOID = "void"  # a successor whose transition failed; never usable

_STATE_ATTRS = (
    "_aura_phase",
    "_aura_status",
    "_aura_lock",
    "_aura_where",
    "_aura_running",
    "_aura_successor",
)


@dataclass(frozen=True, slots=True)
class _Running:
    """A transition in progress on one value."""

    decl: TransitionDecl
    site: str
    thread: int


def _caller_site(depth: int) -> str:
    frame = sys._getframe(depth + 1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _phase_name(phase: object) -> str:
    return getattr(phase, "__name__", repr(phase))


class ChoreographicProtocol(Generic[C, S]):
    """Base of every role's typestate class. See the module doc for the pattern.

    Class keywords: ``choreography`` and ``role`` (the names the projection uses) and
    ``initial`` (the phase the public constructor yields).
    """

    choreography: ClassVar[str]
    role: ClassVar[str]
    initial_phase: ClassVar[type[Phase]]
    #: the phase every non-final phase may abort to (class keyword ``abort``), or None
    abort_phase: ClassVar[type[Phase] | None]
    _aura_transitions: ClassVar[tuple[TransitionDecl, ...]]
    _aura_fields: ClassVar[frozenset[str]]

    def __init_subclass__(
        cls,
        *,
        choreography: str,
        role: str,
        initial: type[Phase],
        abort: type[Phase] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if base is not ChoreographicProtocol and issubclass(base, ChoreographicProtocol):
                raise TypeError(
                    f"{cls.__qualname__} subclasses the protocol class {base.__qualname__}, "
                    "which is final: a subclass could override a transition and skip its guard"
                )
        if not (isinstance(initial, type) and issubclass(initial, Phase)):
            raise TypeError(f"{cls.__qualname__}: initial={initial!r} is not a Phase subclass")
        cls.choreography = choreography
        cls.role = role
        cls.initial_phase = initial
        if abort is not None and not (isinstance(abort, type) and issubclass(abort, Phase)):
            raise TypeError(f"{cls.__qualname__}: abort={abort!r} is not a Phase subclass")
        cls.abort_phase = abort
        decls: list[TransitionDecl] = []
        for name, value in cls.__dict__.items():
            decl = getattr(value, "__aura_transition__", None)
            if isinstance(decl, TransitionDecl):
                if decl.method != name:
                    raise TypeError(
                        f"{cls.__qualname__}.{name}: transition declared for {decl.method!r}"
                    )
                decls.append(decl)
        cls._aura_transitions = tuple(decls)
        annotations = cls.__dict__.get("__annotations__", {})
        cls._aura_fields = frozenset(
            n
            for n, a in annotations.items()
            if not str(a).startswith(("ClassVar", "typing.ClassVar"))
        )

    # --- building values (used by the protocol class itself) --------------------------------

    def _begin(self, **fields: object) -> None:
        """Initialise a value in the class's initial phase. Call once, from ``__init__``."""
        if "_aura_status" in self.__dict__:
            raise LocalProtocolError(
                f"{type(self).__qualname__}._begin called twice on one value"
            )
        self._aura_check_fields(fields, complete=True)
        self._aura_init(type(self).initial_phase, _LIVE, fields)

    def _advance(self, successor: type[R], /, **changes: object) -> R:
        """Build the successor of this value inside a running transition.

        ``successor`` is the subscripted class, e.g. ``ToySession[RevealPhase]``: mypy checks it
        against the transition's return type, the runtime checks it against ``@transition``'s
        declared target. The successor is *pending* until the transition commits.
        """
        running = self.__dict__.get("_aura_running")
        if running is None or running.thread != threading.get_ident():
            raise LocalProtocolError(
                f"{type(self).__qualname__}._advance may only be called by a @transition "
                "method of this value while it runs"
            )
        if self.__dict__.get("_aura_successor") is not None:
            raise LocalProtocolError(
                f"{type(self).__qualname__}.{running.decl.method} built two successors"
            )
        phase = self._aura_phase_from_alias(successor)
        # a gather may also stay where it is: one more member answered, no quorum yet
        stays = running.decl.action == "gather" and phase is running.decl.source
        if phase is not running.decl.target and not stays:
            raise LocalProtocolError(
                f"{type(self).__qualname__}.{running.decl.method} is declared to go to "
                f"{running.decl.target.__name__} but built a {_phase_name(phase)} successor"
            )
        self._aura_check_fields(changes, complete=False)
        fields = {n: self.__dict__[n] for n in type(self)._aura_fields}
        fields.update(changes)
        new = object.__new__(type(self))
        new._aura_init(phase, _PENDING, fields)
        object.__setattr__(self, "_aura_successor", new)
        return cast(R, new)

    def _aura_abort(self, **changes: object) -> ChoreographicProtocol[C, Any]:
        """Consume this live value and return it in the class's ``abort`` phase (the abort
        edge every non-final phase has, declared once by the ``abort`` class keyword). Used by
        the authoring kit's dispatcher; the value's fields carry over, with ``changes`` (what
        the role's ``aborting`` hook learned from the abort) applied."""
        target = type(self).abort_phase
        if target is None:
            raise LocalProtocolError(
                f"{type(self).__qualname__} declares no abort phase (class keyword abort=...)"
            )
        self._aura_require_initialised()
        self._aura_check_fields(changes, complete=False)
        d = self.__dict__
        with d["_aura_lock"]:
            if d["_aura_status"] != _LIVE:
                raise self._aura_consumed_error()
            d["_aura_status"] = _CONSUMED
            d["_aura_where"] = f"the abort edge to {target.__name__}"
        fields = {n: d[n] for n in type(self)._aura_fields}
        fields.update(changes)
        new = object.__new__(type(self))
        new._aura_init(target, _LIVE, fields)
        return new

    @classmethod
    def _restore(cls, value_type: type[R], /, **fields: object) -> R:
        """A live value in any phase, for tests that sweep phases x transitions.

        Protocol code never calls it: after a crash the authoring kit rebuilds a role by
        replaying its journaled inputs through the transitions (``aura_node.protocols.kit``).
        """
        phase = cls._aura_phase_from_alias(value_type)
        new = object.__new__(cls)
        new._aura_check_fields(fields, complete=True)
        new._aura_init(phase, _LIVE, fields)
        return cast(R, new)

    # --- guard internals ---------------------------------------------------------------------

    @classmethod
    def _aura_phase_from_alias(cls, alias: object) -> type[Phase]:
        origin = typing.get_origin(alias)
        args = typing.get_args(alias)
        if origin is not cls or len(args) != 1:
            raise LocalProtocolError(
                f"expected {cls.__qualname__}[SomePhase], got {alias!r}"
            )
        phase = args[0]
        if not (isinstance(phase, type) and issubclass(phase, Phase)):
            raise LocalProtocolError(f"{cls.__qualname__}[{phase!r}]: {phase!r} is not a Phase")
        return phase

    def _aura_check_fields(self, fields: dict[str, object], *, complete: bool) -> None:
        known = type(self)._aura_fields
        unknown = sorted(set(fields) - known)
        if unknown:
            raise LocalProtocolError(
                f"{type(self).__qualname__} has no state field(s) {', '.join(unknown)}; "
                f"declared: {', '.join(sorted(known)) or '(none)'}"
            )
        if complete:
            missing = sorted(known - set(fields))
            if missing:
                raise LocalProtocolError(
                    f"{type(self).__qualname__} needs state field(s) {', '.join(missing)}"
                )

    def _aura_init(self, phase: type[Phase], status: str, fields: dict[str, object]) -> None:
        d = self.__dict__
        d.update(fields)
        d["_aura_phase"] = phase
        d["_aura_status"] = status
        d["_aura_lock"] = threading.Lock()
        d["_aura_where"] = None
        d["_aura_running"] = None
        d["_aura_successor"] = None

    def _aura_label(self) -> str:
        return f"{type(self).__qualname__}[{_phase_name(self.__dict__.get('_aura_phase'))}]"

    def _aura_consumed_error(self) -> ConsumedStateError:
        status = self.__dict__["_aura_status"]
        where = self.__dict__["_aura_where"]
        if status == _CONSUMED:
            return ConsumedStateError(
                f"this {self._aura_label()} value was consumed by {where}; "
                "use the value that transition returned"
            )
        if status == _TRANSITIONING:
            running = self.__dict__["_aura_running"]
            return ConsumedStateError(
                f"this {self._aura_label()} value is being consumed by transition "
                f"{running.decl.method} called at {running.site}"
            )
        if status == _PENDING:
            return ConsumedStateError(
                f"this {self._aura_label()} value is the successor of a transition "
                "that has not returned yet"
            )
        return ConsumedStateError(
            f"this {self._aura_label()} value is void: {where}"
        )

    def _aura_require_initialised(self) -> None:
        if "_aura_status" not in self.__dict__:
            raise LocalProtocolError(
                f"this {type(self).__qualname__} was not made by its constructor, a "
                "transition or _restore (object.__new__ bypass?)"
            )

    def _aura_check_phase(self, method: str, required: type[Phase]) -> None:
        actual = self.__dict__["_aura_phase"]
        if actual is not required:
            raise WrongPhaseError(
                f"{type(self).__qualname__}.{method} needs phase {required.__name__}, "
                f"but this value is in phase {_phase_name(actual)}"
            )

    def _aura_claim(self, decl: TransitionDecl, site: str) -> None:
        self._aura_require_initialised()
        with self.__dict__["_aura_lock"]:
            if self.__dict__["_aura_status"] != _LIVE:
                raise self._aura_consumed_error()
            self._aura_check_phase(decl.method, decl.source)
            self.__dict__["_aura_status"] = _TRANSITIONING
            self.__dict__["_aura_running"] = _Running(decl, site, threading.get_ident())

    def _aura_commit(self, result: object) -> None:
        d = self.__dict__
        running: _Running = d["_aura_running"]
        successor = d["_aura_successor"]
        # A sans-IO step may return (successor, effects...); the successor comes first.
        returned = result[0] if isinstance(result, tuple) and result else result
        if successor is None or returned is not successor:
            self._aura_abandon(f"transition {running.decl.method} did not return its successor")
            raise LocalProtocolError(
                f"{type(self).__qualname__}.{running.decl.method} must return the value built "
                f"by self._advance({type(self).__qualname__}[{running.decl.target.__name__}]) "
                "(alone, or first in a tuple with its effects)"
            )
        with d["_aura_lock"]:
            d["_aura_status"] = _CONSUMED
            d["_aura_where"] = f"transition {running.decl.method} called at {running.site}"
            d["_aura_running"] = None
            d["_aura_successor"] = None
        successor.__dict__["_aura_status"] = _LIVE

    def _aura_void(self, reason: str) -> None:
        """Make a live value unusable without a successor (e.g. a rejected candidate)."""
        self._aura_require_initialised()
        with self.__dict__["_aura_lock"]:
            if self.__dict__["_aura_status"] != _LIVE:
                raise self._aura_consumed_error()
            self.__dict__["_aura_status"] = _VOID
            self.__dict__["_aura_where"] = reason

    def _aura_abandon(self, reason: str) -> None:
        d = self.__dict__
        successor = d["_aura_successor"]
        if successor is not None:
            successor.__dict__["_aura_status"] = _VOID
            successor.__dict__["_aura_where"] = reason
        with d["_aura_lock"]:
            d["_aura_status"] = _LIVE
            d["_aura_running"] = None
            d["_aura_successor"] = None

    # --- linearity and immutability ------------------------------------------------------------

    if not TYPE_CHECKING:
        # Hidden from mypy: a visible __getattribute__/__setattr__ would make mypy accept any
        # attribute name on these classes.

        def __getattribute__(self, name: str) -> Any:
            if name[0] != "_":
                d = object.__getattribute__(self, "__dict__")
                status = d.get("_aura_status")
                if status is None:
                    object.__getattribute__(self, "_aura_require_initialised")()
                elif status != _LIVE and status != _TRANSITIONING:
                    raise object.__getattribute__(self, "_aura_consumed_error")()
            return object.__getattribute__(self, name)

        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(
                f"{type(self).__qualname__} values are immutable; a transition returns a new "
                f"value (tried to set {name!r})"
            )

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"{type(self).__qualname__} values are immutable")

    def __repr__(self) -> str:
        d = self.__dict__
        status = d.get("_aura_status", "uninitialised")
        where = d.get("_aura_where")
        extra = f" by {where}" if status == _CONSUMED and where else ""
        # Field values are not shown: they may hold secret shares.
        return f"<{self._aura_label()} {status}{extra}>"

    def _aura_refuse_copy(self, how: str) -> NoReturn:
        raise TypeError(
            f"a {self._aura_label()} is a linear typestate value and cannot be {how}: two "
            "copies could take two different transitions (a device that equivocates); "
            "journal the evidence and rehydrate instead"
        )

    def __copy__(self) -> NoReturn:
        self._aura_refuse_copy("copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        self._aura_refuse_copy("copied")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        self._aura_refuse_copy("pickled")

    def __reduce__(self) -> NoReturn:
        self._aura_refuse_copy("pickled")


# --- decorators ------------------------------------------------------------------------------


def _check_phase_type(what: str, phase: object) -> type[Phase]:
    if not (isinstance(phase, type) and issubclass(phase, Phase)):
        raise TypeError(f"{what}={phase!r} is not a Phase subclass")
    return phase


def transition(
    *,
    source: type[Phase],
    target: type[Phase],
    action: Action,
    message: type | None = None,
    peer: str | None = None,
    command: str | None = None,
    timer: str | None = None,
) -> Callable[[F], F]:
    """Declare a method as the transition ``source -> target`` and guard it at runtime.

    ``action`` says what happens on the wire: ``send``/``recv`` one message, ``gather`` a
    threshold of messages (the witness is the method's argument), ``timeout``, ``abort``, or a
    ``local`` step with no message. ``command`` names the operator control action that runs a
    ``local`` step or a ``send`` (an operator's decision that sends, e.g. an approval).
    The body must return ``self._advance(Cls[target], ...)``, alone or as the first item of a
    tuple (``(successor, effects)``, the sans-IO step shape).
    """
    _check_phase_type("source", source)
    _check_phase_type("target", target)
    if action not in ACTIONS:
        raise TypeError(f"action={action!r} is not one of {', '.join(sorted(ACTIONS))}")
    if action in _MESSAGE_ACTIONS and message is None:
        raise TypeError(f"a {action!r} transition must declare its message type")
    if message is not None and not isinstance(message, type):
        raise TypeError(f"message={message!r} is not a type")
    if command is not None and action not in ("local", "send"):
        raise TypeError(f"command={command!r} needs action 'local' or 'send', got {action!r}")
    if timer is not None and action != "timeout":
        raise TypeError(f"timer={timer!r} needs action='timeout', got {action!r}")

    def decorate(fn: F) -> F:
        decl = TransitionDecl(
            method=fn.__name__,
            source=source,
            target=target,
            action=action,
            message=message,
            peer=peer,
            command=command,
            timer=timer,
        )

        @functools.wraps(fn)
        def guarded(self: ChoreographicProtocol[Any, Any], /, *args: Any, **kwargs: Any) -> Any:
            site = _caller_site(1)
            self._aura_claim(decl, site)
            try:
                result = fn(self, *args, **kwargs)
            except BaseException:
                self._aura_abandon(f"transition {decl.method} called at {site} raised")
                raise
            self._aura_commit(result)
            return result

        guarded.__aura_transition__ = decl  # type: ignore[attr-defined]
        return cast(F, guarded)

    return decorate


def requires(phase: type[Phase]) -> Callable[[F], F]:
    """Guard a non-consuming method (a query) to ``phase``: wrong phase or a consumed value
    raise, the value stays live. Annotate ``self`` with the same phase for mypy."""
    _check_phase_type("phase", phase)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(self: ChoreographicProtocol[Any, Any], /, *args: Any, **kwargs: Any) -> Any:
            self._aura_require_initialised()
            status = self.__dict__["_aura_status"]
            if status != _LIVE and status != _TRANSITIONING:
                raise self._aura_consumed_error()
            self._aura_check_phase(fn.__name__, phase)
            return fn(self, *args, **kwargs)

        return cast(F, guarded)

    return decorate


def declared_transitions(cls: type[ChoreographicProtocol[Any, Any]]) -> tuple[TransitionDecl, ...]:
    """The transitions ``cls`` declares, in definition order."""
    if not (isinstance(cls, type) and issubclass(cls, ChoreographicProtocol)):
        raise TypeError(f"{cls!r} is not a ChoreographicProtocol class")
    if cls is ChoreographicProtocol:
        return ()
    return cls._aura_transitions


def phase_of(value: ChoreographicProtocol[Any, Any]) -> type[Phase]:
    """The runtime phase of a typestate value (live or not; for logs and rehydration)."""
    value._aura_require_initialised()
    phase: type[Phase] = value.__dict__["_aura_phase"]
    return phase
