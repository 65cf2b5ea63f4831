"""The authoring kit: a protocol is its choreography and its role classes' transitions.

Theory of operation
-------------------
A protocol author writes two things: the choreography (``aura_node.choreo``) and, per role, one
typestate class (``aura_node.session.typestate``) whose ``@transition`` declarations say what the
role does in each phase. That declaration table is the single source of truth, the h11 way:
this module turns it into the runtime's :class:`~aura_node.protocols.engine.ProtocolDriver`
(dispatch), checks it against the projection when the protocol registers (conformance), and the
monitors and diagrams come from the same choreography. Nobody writes ``on_message`` /
``on_abort`` / ``rehydrate`` by hand.

Dispatch (one :class:`RoleDriver` per session, generic over the role class):

* **start**: the role class's constructor ``__init__(self: Role[Initial], step: Step[P])`` makes
  the initial value from the session's :class:`Step` (params, roles, journaled entropy, ``now``).
* **message** M from a member of role R in phase P: the transition declared
  ``(source=P, action="recv" | "gather", message=M)`` is called as ``method(value, msg, step)``.
  A ``gather`` is called once per arriving member and returns either its own phase (no quorum
  yet: it keeps what it learned in its fields) or its target (the witness is built).
* **timer** fired in phase P: the ``timeout`` transition from P (matching ``timer=`` if given);
  none declared and P not final: the session fails with code ``timeout``.
* **control action** A in phase P: the ``local`` transition from P declared ``command=A``,
  called as ``method(value, args, step)``; ``step.reply(...)`` answers the operator. A ``send``
  may carry ``command=A`` too (an operator's decision that goes on the wire, e.g. an approval):
  it does not run when the phase is reached but when the operator says so, returning
  ``(successor, message)`` like any send. An action with no transition in P, or one whose
  transition raises ``LocalProtocolError`` (bad operator arguments), is an operator's mistake:
  the reply says so (``error``, with the role's status) and nothing changes.
* **abort**, this side's or a peer's: the class keyword ``abort=Failed`` declares the abort edge
  of every non-final phase once; the kit moves the value there. An optional role-class hook
  ``aborting(self, reason, by_peer) -> Mapping[str, object]`` names field changes the abort
  phase's value takes (what the abort said, e.g. that a peer ended the session over a veto).
* After every input the kit **settles** the value: while the current phase has an automatic
  transition (a ``send``, or a ``local``, declared without ``command=``), it runs it -
  ``method(value, step)`` returning the successor and the message (sent to every device of the
  declared peer role) or a mapping device -> message (per-member content, e.g. sealed shares).
  Reaching a final phase (one with no outgoing transitions) ends the session: ``Complete``
  (with ``step.complete(...)``'s result) or, in the abort phase, ``Fail``. The end is always
  the last effect of its step, after the sends of the same step, whichever transition called
  ``step.complete`` / ``step.fail``.

Three rules for roles that talk to role sets (threshold protocols):

* **A send inside a phase** (``send`` with ``target == source``: the projection's self-loop,
  e.g. a member's answer to a gather before it waits for the result in the same phase) runs
  once each time the role *enters* that phase, not on every settle - staying in the phase (a
  gather that has no quorum yet, a late message) does not send it again. A phase's sends that
  stay run before the automatic transitions that leave it.
* **Choice between automatic transitions.** A phase may declare several automatic (leaving)
  transitions; the kit tries them in declaration order and runs the first that does not
  raise :class:`Decline` (raise it before asking for any effect; the guard keeps the value
  live). None chosen: the role waits for an input.
* **Late messages.** The monitor admits messages no projected transition of the current phase
  takes: a straggler of a gather that already has its quorum (members the quorum did not
  count), or a receive whose deadline passed. ``local`` with ``message=M`` (``target ==
  source``) declares what the role does with such an M in that phase, called like a receive
  (``method(value, msg, step)``); conformance ignores it (it is not on the projection's
  wire). Any other message with no transition in the current phase (the monitor let it
  through: a race, a peer's bug) is the peer's problem, not the session's: it is rejected
  (a ``<choreography>.rejected`` record, code ``wrong_phase``) and the session goes on.

A transition that raises :class:`~aura_node.errors.RemoteProtocolError` (a witness that does not
verify, a bad signature, a wrong nonce) *rejects that message*: the value stays live (the guard
voids the half-built successor), a ``<choreography>.rejected`` evidence record names the peer
and the reason, and the session goes on (:meth:`Step.reject` journals the same record for part
of a message and lets the transition go on). Any other exception aborts the session (the runtime
journals it and tells the peers).

Rehydration is **deterministic replay** (:meth:`RoleDriver.rehydrate`): the session's journaled
inputs - ``session.start`` with its entropy, ``msg.in``, ``timer.fired``, ``session.control`` -
are fed again, in journal order, to the same pure code. Randomness reaches protocol code only as
the journaled entropy (:meth:`Step.random`), time only as the journaled ``now`` (a timer's ``now``
is its deadline, live and in replay). Every message the replay sends must equal the journaled
one byte for byte; any difference raises :class:`NondeterminismError` (the runtime aborts the
session with code ``nondeterminism``, naming session, step and message). Sends the replay
produces beyond the journal were computed but never made durable (a crash inside the group
commit): :meth:`RoleDriver.resume` returns them, identical. Inputs journaled after the role
reached a final phase are skipped (nothing can change an ended role; a runtime journals nothing
for an ended session, a harness may). Protocol code never sees the journal.

Sends whose content cannot be recomputed (``@unrepeatable``)
-----------------------------------------------------------
Replay recomputes every send from journaled inputs, and :meth:`Step.random` is derived from the
journaled entropy, so anything drawn from it is derivable from the journal. A protocol that
must create a *secret* (the genesis dealer's account secret, and the HPKE ephemeral keys that
seal its shares) cannot draw it there: the journal is evidence and must hold no secret, nor
anything a secret follows from. Such a draw is a declared exception, one automatic transition
at a time::

    @unrepeatable(record="genesis.dealt")
    @transition(source=Dealing, target=..., action="send", ...)
    def deal(self, step):
        body = step.draw(lambda: encode(deal_with_os_randomness()))

Live, :meth:`Step.draw` calls ``make`` (which may use the OS CSPRNG) and journals what it
returns as a ``record`` record in the same step as the sends (so the draw and its messages are
durable together or not at all); ``make`` must return only public or sealed data, the secret
dies inside it. On replay the kit does not call ``make``: it hands back the body of the next
journaled ``record`` record, and the transition goes on deterministically from it. So replay
restores only what the journal proves, and the byte-for-byte check of the sends still holds:
sends recomputed from the journaled draw must equal the journaled ones. A replay that reaches
the draw with no such record left, or leaves one unused, is :class:`NondeterminismError`.

Several sends in one phase, one message from several role sets, polled gathers
-------------------------------------------------------------------------------
A choreography may label one phase around consecutive interactions (genesis: the dealer sends
``SealedShare`` to the devices, then ``SealedGuardianShare`` to the guardians, in ``Dealing``).
Conformance then wants a self-loop send (target = source) besides the send that leaves; by the
first rule above the kit runs a phase's self-loop sends first, once each per entry in
declaration order, then its leaving automatic transitions. Two receives or gathers of the same
message from different role sets in one phase are dispatched by the sender's role. A gather that
can be completed by another input of its phase is declared ``@polled``: besides its own
messages, its method is called with ``None`` for the message each time the role settles in its
source phase, and stays there or returns its target (it decides from its fields). That is how a
gather from a role set with no member in this session completes (genesis without guardians: the
monitor counts it complete on arrival, but no message will ever reach it), and how the last
gather of a phase completes when an earlier one's last message comes after its own (a harness
without monitors).

Registration (:func:`protocol`) builds the engine's ``ProtocolSpec`` from the declarations
(message types from the choreography, openers from the roles' first receives, parameter
validation from a msgspec ``params`` Struct), runs the conformance check of every role class
against its projection (refusing the protocol with the first difference) and registers it:
the engine spec (``engine.PROTOCOLS``) and, for a plugin, its choreography
(``registry.node_registry()``, whose hash the transport hello carries) in one call. Params are
the operator's, for the initiator; a responder, opened by a peer's message, gets the Struct's
defaults, or :class:`NoParams` when it has required fields. Control commands: with
``control=True`` the node serves ``NAME.start`` (this node as the initiator; the arguments are
the role assignment by role name plus the params) and ``NAME.COMMAND`` (``{"session": ID,
...}``) for every ``command=`` transition; :func:`command` declares a start command of its own
(a name, and pure functions from its arguments to the roles and params). Both are served by
``aura_node.runtime.kit_commands`` and reached with ``aura-node ctl call``.
Pure: no trio, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import msgspec

from aura_node.choreo import Choreography
from aura_node.errors import LocalProtocolError, RemoteProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import Envelope
from aura_node.protocols.registry import node_registry, register_choreography
from aura_node.protocols.services import NodeServices
from aura_node.session.conformance import check_conformance
from aura_node.session.typestate import (
    ChoreographicProtocol,
    Phase,
    TransitionDecl,
    declared_transitions,
    phase_of,
)

__all__ = [
    "Decline",
    "REGISTERED",
    "NoParams",
    "NondeterminismError",
    "Protocol",
    "RoleDriver",
    "Step",
    "command",
    "final_phases",
    "polled",
    "protocol",
    "unrepeatable",
]

P = TypeVar("P")
F = TypeVar("F", bound=Callable[..., Any])
RoleValue = ChoreographicProtocol[Any, Any]

#: domain separation for :meth:`Step.random`
_RANDOM_DOMAIN = b"aura-node/kit/random/v1\n"


NondeterminismError = eng.NondeterminismError


class Decline(Exception):
    """Raised by an automatic transition to leave a phase's choice to the next one declared."""


class WrongPhaseMessage(RemoteProtocolError):
    """A peer's message that no transition of the role's current phase takes."""

    code = "wrong_phase"


class NoParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The parameters of a protocol that takes none."""


# --- the step: what a transition sees and says -----------------------------------------------


class Step(Generic[P]):
    """One input being handled: the session's facts plus the effects a transition asks for.

    Handed to every transition (and the constructor). Everything here is journaled input
    (params, roles, ``now``, entropy) or an effect the runtime journals before it acts on it.
    """

    __slots__ = (
        "_effects", "_driver", "envelope", "now", "sender", "sender_role",
    )

    def __init__(self, driver: RoleDriver, *, now: float, sender: str = "",
                 sender_role: str = "", envelope: Envelope | None = None) -> None:
        self._driver = driver
        self._effects: list[eng.Effect] = []
        #: the journaled time of this input (a timer's is its deadline)
        self.now = now
        #: for a message input: the sending device's name and role, and the signed envelope
        self.sender = sender
        self.sender_role = sender_role
        self.envelope = envelope

    # facts
    @property
    def session(self) -> str:
        return self._driver.session

    @property
    def self_name(self) -> str:
        return self._driver.self_name

    @property
    def params(self) -> P:
        return cast(P, self._driver.params)

    @property
    def services(self) -> NodeServices:
        """This node's key, pinned peers, accounts and protocol settings."""
        return self._driver.services

    @property
    def roles(self) -> Mapping[str, str]:
        """Device name -> role, as far as this session knows it."""
        return self._driver.roles

    @property
    def entropy(self) -> bytes:
        """The session's journaled start entropy (prefer :meth:`random`)."""
        return self._driver.entropy

    @property
    def opened_by(self) -> str | None:
        return self._driver.opened_by

    def members(self, role: str) -> tuple[str, ...]:
        """The devices playing ``role`` (or role set) in this session, in assignment order."""
        return tuple(n for n, r in self._driver.roles.items() if r == role)

    def the(self, role: str) -> str:
        """The one device playing ``role``."""
        names = self.members(role)
        if len(names) != 1:
            raise eng.ParamsError(f"{self._driver.choreography} needs exactly one {role}, "
                                  f"got {list(names)}")
        return names[0]

    def random(self, n: int, label: str) -> bytes:
        """``n`` bytes derived from the journaled entropy and ``label`` (deterministic, so a
        replay after a crash draws the same ones). Never a secret: the journal holds the seed."""
        out = b""
        counter = 0
        key = self._driver.entropy
        while len(out) < n:
            msg = _RANDOM_DOMAIN + label.encode() + b"\0" + counter.to_bytes(4, "big")
            out += hmac.new(key, msg, hashlib.sha256).digest()
            counter += 1
        return out[:n]

    def draw(self, make: Callable[[], bytes]) -> bytes:
        """The one draw of a transition declared :func:`unrepeatable`: live, ``make()`` (which
        may use the OS CSPRNG; it must return only public or sealed bytes), journaled as the
        declared record; on replay, that journaled record's body (``make`` is not called)."""
        drv = self._driver
        kind, drv._drawing = drv._drawing, None
        if kind is None:
            raise eng.DriverError("step.draw outside a transition declared @unrepeatable, or "
                                  "twice in one")
        if drv._recalled is None:
            body = make()
            self._effects.append(eng.RecordEvidence(kind=kind, body=body))
            return body
        journaled = drv._recalled.get(kind)
        if not journaled:
            raise NondeterminismError(f"session {drv.session}: replay reaches a draw of {kind} "
                                      f"but the journal holds no {kind} record for it")
        return journaled.pop(0)

    # effects
    def learn_roles(self, roles: Mapping[str, str]) -> None:
        """Extend the session's role assignment (a responder learns it from the opening)."""
        self._driver.roles.update(roles)

    def arm(self, name: str, *, at: float) -> None:
        """Arm timer ``name`` for the absolute time ``at`` (re-arming replaces it)."""
        self._driver.timers[name] = at
        self._effects.append(eng.ArmTimer(name=name, deadline=at))

    def cancel(self, name: str) -> None:
        self._driver.timers.pop(name, None)
        self._effects.append(eng.CancelTimer(name=name))

    def record(self, kind: str, body: bytes) -> None:
        """Journal a record of this protocol's own ``kind`` (evidence that is not a message)."""
        self._effects.append(eng.RecordEvidence(kind=kind, body=body))

    def reject(self, exc: RemoteProtocolError) -> None:
        """Journal a ``<choreography>.rejected`` record for (part of) the message being handled
        and carry on: for a transition that keeps what else the message taught it (raising
        the error instead rejects the whole message and keeps nothing)."""
        self._effects.append(self._driver._rejection(self.sender, exc))

    def reply(self, **result: Any) -> None:
        """Answer the control action being handled."""
        self._effects.append(eng.Reply(result=result))

    def complete(self, **result: Any) -> None:
        """End the session successfully with ``result`` (when the role reaches a final phase)."""
        self._effects.append(eng.Complete(result=result))

    def fail(self, code: str, reason: str, *, tell_peers: bool = True) -> None:
        """End the session as failed (the runtime aborts it and tells every peer; with
        ``tell_peers=False`` it ends this role only: its last message already said why)."""
        self._effects.append(eng.Fail(code=code, reason=reason, tell_peers=tell_peers))

    def send(self, to: Sequence[str], message: msgspec.Struct) -> None:
        """An extra send inside a transition (prefer returning the message from a ``send``
        transition, which the declaration table describes)."""
        self._effects.append(eng.Send(to=tuple(to), message=message))


def unrepeatable(*, record: str) -> Callable[[F], F]:
    """Declare an automatic transition (a send or a decision) whose content cannot be
    recomputed on replay: it makes its one draw with :meth:`Step.draw`, journaled as
    ``record`` (see the module doc). Put it above ``@transition``."""
    def mark(fn: F) -> F:
        decl = getattr(fn, "__aura_transition__", None)
        if not isinstance(decl, TransitionDecl) or decl.action not in ("send", "local") \
                or decl.command is not None:
            raise TypeError(f"@unrepeatable({record!r}) on {fn.__name__}: put it above the "
                            "@transition of a send or of a local step without command")
        fn.__aura_unrepeatable__ = record  # type: ignore[attr-defined]
        return fn
    return mark


def polled(fn: F) -> F:
    """Declare a gather that another input of its phase may complete: the kit also calls it
    with ``None`` for the message whenever the role settles in its source phase (module doc).
    Put it above ``@transition``."""
    decl = getattr(fn, "__aura_transition__", None)
    if not isinstance(decl, TransitionDecl) or decl.action != "gather":
        raise TypeError(f"@polled on {fn.__name__}: put it above a gather's @transition")
    fn.__aura_polled__ = True  # type: ignore[attr-defined]
    return fn


# --- the generic driver --------------------------------------------------------------------


def final_phases(cls: type[RoleValue]) -> frozenset[type[Phase]]:
    """Phases with no declared way out (plus the abort phase): reaching one ends the role."""
    decls = declared_transitions(cls)
    # a late-message handler (local with message=) stays where it is: it is no way out
    sources = {d.source for d in decls if not (d.action == "local" and d.message is not None)}
    phases = {cls.initial_phase} | {d.target for d in decls} | sources
    if cls.abort_phase is not None:
        phases.add(cls.abort_phase)
    return frozenset(p for p in phases if p not in sources)


@dataclass(frozen=True, slots=True)
class _Table:
    """A role class's declarations indexed for dispatch."""

    inbound: Mapping[tuple[type[Phase], type], TransitionDecl]
    #: per phase, its automatic transitions in declaration order (several: a choice)
    automatic: Mapping[type[Phase], tuple[TransitionDecl, ...]]
    timeouts: Mapping[type[Phase], tuple[TransitionDecl, ...]]
    commands: Mapping[tuple[type[Phase], str], TransitionDecl]
    final: frozenset[type[Phase]]
    #: message types some phase gathers (a late one in another phase is a straggler)
    gathered: frozenset[type]
    #: receives/gathers of one message from several role sets in one phase, by sender role
    by_peer: Mapping[tuple[type[Phase], type, str], TransitionDecl] = field(
        default_factory=dict)
    #: per phase, the ``@polled`` gathers from it (method names, declaration order)
    polled: Mapping[type[Phase], tuple[str, ...]] = field(default_factory=dict)
    #: record kinds of the ``@unrepeatable`` draws this role makes
    draws: frozenset[str] = frozenset()

    @classmethod
    def of(cls, role_cls: type[RoleValue]) -> _Table:
        inbound: dict[tuple[type[Phase], type], TransitionDecl] = {}
        automatic: dict[type[Phase], list[TransitionDecl]] = {}
        timeouts: dict[type[Phase], list[TransitionDecl]] = {}
        commands: dict[tuple[type[Phase], str], TransitionDecl] = {}
        by_peer: dict[tuple[type[Phase], type, str], TransitionDecl] = {}
        name = role_cls.__qualname__
        decls = declared_transitions(role_cls)
        for d in decls:
            late = d.action == "local" and d.message is not None
            if late and (d.target is not d.source or d.command is not None):
                raise eng.DriverError(
                    f"{name}.{d.method}: a late-message handler (local with message=) stays "
                    f"in its phase {d.source.__name__} and is not a control command")
            if d.action in ("recv", "gather") or late:
                assert d.message is not None
                key = (d.source, d.message)
                other = inbound.get(key)
                if (other is not None and other.peer and d.peer
                        and (d.source, d.message, d.peer) not in by_peer
                        and other.peer != d.peer):  # told apart by the sender's role
                    by_peer[(d.source, d.message, other.peer)] = other
                    by_peer[(d.source, d.message, d.peer)] = d
                    continue
                if key in inbound:
                    raise eng.DriverError(
                        f"{name}: {d.method} and {inbound[key].method} both handle "
                        f"{d.message.__name__} in phase {d.source.__name__}")
                inbound[key] = d
            elif d.command is None and d.action in ("send", "local"):
                automatic.setdefault(d.source, []).append(d)
            elif d.action == "timeout":
                timeouts.setdefault(d.source, []).append(d)
            elif d.action in ("local", "send"):
                assert d.command is not None
                commands[(d.source, d.command)] = d
            elif d.action == "abort":
                raise eng.DriverError(
                    f"{name}.{d.method}: declare the abort phase once with the class keyword "
                    "abort=..., not one abort transition per phase")
        gathered = frozenset(d.message for d in inbound.values()
                             if d.action == "gather" and d.message is not None)
        # per phase: its sends that stay in it first (once per entry), then the leaving ones
        ordered = {k: (*(d for d in v if d.target is d.source),
                       *(d for d in v if d.target is not d.source))
                   for k, v in automatic.items()}
        polled: dict[type[Phase], list[str]] = {}
        draws: set[str] = set()
        for d in decls:
            method = getattr(role_cls, d.method)
            if d.action == "gather" and getattr(method, "__aura_polled__", False):
                polled.setdefault(d.source, []).append(d.method)
            kind = getattr(method, "__aura_unrepeatable__", None)
            if kind is not None:
                draws.add(kind)
        return cls(inbound, ordered, {k: tuple(v) for k, v in timeouts.items()}, commands,
                   final_phases(role_cls), gathered, by_peer,
                   {k: tuple(v) for k, v in polled.items()}, frozenset(draws))


class RoleDriver(eng.ProtocolDriver):
    """The runtime driver of one role, generated from its typestate class's declarations.

    Subclassed once per role by :func:`protocol` (``role_class``, ``spec`` set there); protocol
    authors never subclass it.
    """

    role_class: ClassVar[type[RoleValue]]
    params_type: ClassVar[type[msgspec.Struct]]
    table: ClassVar[_Table]
    #: message types of the choreography by envelope step name
    message_types: ClassVar[Mapping[str, type[msgspec.Struct]]]
    abort_type: ClassVar[type[msgspec.Struct]]
    #: the record an ``@unrepeatable`` transition now running may draw (module doc)
    _drawing: str | None = None
    #: during replay: journaled draw records by kind, oldest first (``None`` when live)
    _recalled: dict[str, list[bytes]] | None = None

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self.value: RoleValue | None = None
        self.session = ""
        self.self_name = services.self_name
        self.entropy = b""
        self.opened_by: str | None = None
        self.params: msgspec.Struct = NoParams()
        self._roles: dict[str, str] = {}
        #: timers this session armed: name -> deadline (a fired timer's ``now``)
        self.timers: dict[str, float] = {}
        self.result: dict[str, Any] = {}
        self._pending: list[eng.Effect] = []
        #: the phase the last settle ended in, and whether its send-in-place ran since entry
        self._entered: type[Phase] | None = None
        #: methods of the sends that stay in their phase, run since the role entered it
        #: (a tuple, not a set: a handful of names at most, and every in-flight session
        #: holds one; the empty tuple is shared)
        self._done_in_place: tuple[str, ...] = ()

    @property
    def roles(self) -> dict[str, str]:
        return self._roles

    # --- inputs ------------------------------------------------------------------------------

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self.session, self.entropy, self.opened_by = inp.session, inp.entropy, inp.opened_by
        self.self_name = inp.self_name
        self._roles = dict(inp.roles)
        self.params = _convert_params(type(self).params_type, inp.params)
        step: Step[Any] = Step(self, now=inp.now)
        self.value = type(self).role_class(step)  # type: ignore[call-arg]
        return self._settle(step)

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        value = self._live()
        phase = phase_of(value)
        table = type(self).table
        decl = (table.by_peer.get((phase, type(inp.message), inp.sender_role))
                or table.inbound.get((phase, type(inp.message))))
        if decl is None and type(inp.message) in table.gathered:
            # a straggler: a member's answer to a gather that already reached its quorum (the
            # monitor accepts each member once); its msg.in is journaled, nothing else to do
            return []
        if decl is None:
            # the monitor let it through (a race, a peer's bug): the peer's problem, not the
            # session's - rejected and journaled, the session goes on
            return [self._rejection(inp.sender, WrongPhaseMessage(
                f"can't handle {type(inp.message).__name__} from {inp.sender} "
                f"({inp.sender_role}) when role={self.role} and phase={phase.__name__}"))]
        step: Step[Any] = Step(self, now=inp.now, sender=inp.sender,
                               sender_role=inp.sender_role, envelope=inp.envelope)
        try:
            self.value = getattr(value, decl.method)(inp.message, step)
        except RemoteProtocolError as exc:
            return [*step._effects, self._rejection(inp.sender, exc)]
        return self._settle(step)

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        deadline = self.timers.pop(inp.name, None)
        now = inp.now if deadline is None else deadline
        value = self._live()
        phase = phase_of(value)
        if phase in type(self).table.final:
            return []  # a stale timer: the role is done
        for decl in type(self).table.timeouts.get(phase, ()):
            if decl.timer is None or decl.timer == inp.name:
                step: Step[Any] = Step(self, now=now)
                self.value = getattr(value, decl.method)(step)
                return self._settle(step, timed_out=True)
        return [eng.Fail(code="timeout",
                         reason=f"{self.choreography} {self.role}: timer {inp.name!r} expired "
                                f"in phase {phase.__name__}")]

    def on_control(self, inp: eng.ControlAction) -> list[eng.Effect]:
        value = self._live()
        phase = phase_of(value)
        decl = type(self).table.commands.get((phase, inp.action))
        if decl is None:
            # an operator's mistake (a command twice, or too late) must not end the session:
            # it is refused in the reply and nothing changes
            known = sorted({c for (_, c) in type(self).table.commands})
            why = (f"{self.choreography}/{self.role} has no control action {inp.action!r} "
                   f"in phase {phase.__name__} (its actions: {', '.join(known) or 'none'})")
            return [eng.Reply(result={**self.status(), "error": why})]
        step: Step[Any] = Step(self, now=inp.now)
        mark = len(step._effects)
        try:
            returned = getattr(value, decl.method)(dict(inp.args), step)
        except LocalProtocolError as exc:  # bad operator arguments: refused, nothing changes
            return [eng.Reply(result={**self.status(), "error": exc.message})]
        if decl.action == "send":  # an operator's decision that sends (an approval, a veto)
            self.value, out = returned
            step._effects[mark:mark] = self._sends(decl, out, step)
        else:
            self.value = returned
        effects = self._settle(step)
        if not any(isinstance(e, eng.Reply) for e in effects):
            effects.append(eng.Reply(result={"phase": phase_of(self._live()).__name__}))
        return effects

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        value = self.value
        if value is None or phase_of(value) in type(self).table.final:
            return
        hook = getattr(type(self).role_class, "aborting", None)
        changes = {} if hook is None else dict(hook(value, reason, by_peer))
        self.value = value._aura_abort(**changes)

    def accepts_abort_from(self, sender: str, sender_role: str) -> bool:
        hook = getattr(type(self).role_class, "accepts_abort_from", None)
        if hook is None or self.value is None:
            return True
        return bool(hook(self.value, sender, sender_role))

    def rejects_message(self, sender: str, sender_role: str, message: msgspec.Struct
                        ) -> str | None:
        hook = getattr(type(self).role_class, "screen", None)
        if hook is None or self.value is None:
            return None
        return cast("str | None", hook(self.value, sender, sender_role, message))

    def resume(self, now: float) -> list[eng.Effect]:
        pending, self._pending = self._pending, []
        return pending

    def status(self) -> dict[str, Any]:
        if self.value is None:
            return {"phase": "Starting"}
        out: dict[str, Any] = {"phase": phase_of(self.value).__name__}
        describe = getattr(self.value, "describe", None)
        if describe is not None:
            out.update(describe())
        return out

    @property
    def is_final(self) -> bool:
        return self.value is not None and phase_of(self.value) in type(self).table.final

    # --- internals ---------------------------------------------------------------------------

    def _live(self) -> RoleValue:
        if self.value is None:
            raise LocalProtocolError(f"{self.choreography}/{self.role}: session not started")
        return self.value

    def _rejection(self, peer: str, exc: RemoteProtocolError) -> eng.RecordEvidence:
        return eng.rejection(f"{self.choreography}.rejected", peer=peer, code=exc.code,
                             reason=str(exc))

    def _settle(self, step: Step[Any], *, timed_out: bool = False) -> list[eng.Effect]:
        """Run the automatic transitions (sends, decisions) until the role waits or ends."""
        table = type(self).table
        for _ in range(1000):
            value = self._live()
            phase = phase_of(value)
            if phase is not self._entered:
                self._entered, self._done_in_place = phase, ()
            if any(isinstance(e, eng.Fail) for e in step._effects):
                break
            for decl in table.automatic.get(phase, ()):
                in_place = decl.target is decl.source
                if in_place and decl.method in self._done_in_place:
                    continue  # sent once since the role entered this phase
                mark = len(step._effects)
                try:
                    self._automatic(decl, step)
                except Decline:
                    self._drawing = None
                    del step._effects[mark:]
                    continue
                if in_place:
                    self._done_in_place = (*self._done_in_place, decl.method)
                break
            else:
                if self._poll_gathers(phase, step):
                    continue
                break  # nothing (more) to do on its own: the role waits for an input
        else:  # pragma: no cover - a declaration table with a cycle of automatic steps
            raise eng.DriverError(f"{self.choreography}/{self.role}: automatic transitions "
                                  "do not stop")
        effects = step._effects
        # the end goes last: a transition may call step.complete() before the automatic send
        # that follows it, and the runtime stops applying effects at the end (stable sort)
        effects.sort(key=lambda e: isinstance(e, eng.Complete | eng.Fail))
        phase = phase_of(self._live())
        ended = any(isinstance(e, eng.Complete | eng.Fail) for e in effects)
        if phase in table.final and not ended:
            if phase is type(self).role_class.abort_phase:
                effects.append(eng.Fail(
                    code="timeout" if timed_out else "aborted",
                    reason=f"{self.choreography} {self.role} ended in {phase.__name__}"))
            else:
                effects.append(eng.Complete(result={}))
        for e in effects:
            if isinstance(e, eng.Complete):
                self.result = dict(e.result)
        return effects

    def _automatic(self, decl: TransitionDecl, step: Step[Any]) -> None:
        """Run one automatic transition (a send or a decision) on the live value."""
        value = self._live()
        method = getattr(value, decl.method)
        self._drawing = getattr(method, "__aura_unrepeatable__", None)
        mark = len(step._effects)
        try:
            returned = method(step)
        finally:
            # at most one draw per run: a path that sends nothing random need not draw (replay
            # takes that path again from the same inputs and does not look for a record)
            self._drawing = None
        if decl.action == "send":
            # the message goes first, then what the transition armed or recorded with it
            self.value, out = returned
            step._effects[mark:mark] = self._sends(decl, out, step)
        else:
            self.value = returned

    def _poll_gathers(self, phase: type[Phase], step: Step[Any]) -> bool:
        """Call the ``@polled`` gathers from ``phase`` with no message; True when one moved
        the role on."""
        for name in type(self).table.polled.get(phase, ()):
            self.value = getattr(self._live(), name)(None, step)
            if phase_of(self.value) is not phase:
                return True
        return False

    def _sends(self, decl: TransitionDecl, out: object, step: Step[Any]) -> list[eng.Effect]:
        if isinstance(out, Mapping):
            for msg in out.values():
                self._check_out(decl, msg)
            return [eng.Send(to=(name,), message=msg) for name, msg in out.items()]
        self._check_out(decl, out)
        assert decl.peer is not None
        to = step.members(decl.peer)
        return [eng.Send(to=to, message=cast(msgspec.Struct, out))] if to else []

    def _check_out(self, decl: TransitionDecl, msg: object) -> None:
        if decl.message is not None and not isinstance(msg, decl.message):
            raise eng.DriverError(
                f"{type(self).role_class.__qualname__}.{decl.method} is declared to send "
                f"{decl.message.__name__} but returned {type(msg).__name__}")

    # --- rehydration by deterministic replay -----------------------------------------------------

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        drv = cls(services)
        replayed: list[tuple[int, eng.Send]] = []  # (input seq, send)
        journaled: list[eng.Sent] = []
        started = False
        last: list[eng.Effect] = []
        parsed = eng.parse_evidence(evidence)
        if cls.table.draws:  # @unrepeatable: replay takes the draws from the journal (module doc)
            drv._recalled = {k: [ev.body for ev in parsed if isinstance(ev, eng.DriverRecord)
                                 and ev.kind == k] for k in cls.table.draws}
        for ev in parsed:
            effects: list[eng.Effect] | None = None
            if isinstance(ev, eng.Started):
                if started:
                    raise NondeterminismError(f"session {ev.start.session} started twice")
                started = True
                effects = drv.start(ev.start)
            elif not started:
                continue
            elif drv.is_final and not isinstance(ev, eng.Sent):
                continue  # the role had ended: nothing journaled after that can change it
            elif isinstance(ev, eng.Received):
                msg = eng.decode_message(ev.envelope, cls.message_types[ev.envelope.step])
                if isinstance(msg, cls.abort_type):
                    drv.on_abort(getattr(msg, "reason", ""), by_peer=ev.sender)
                    continue
                effects = drv.on_message(eng.MessageIn(
                    sender=ev.sender, sender_role=ev.sender_role, message=msg,
                    envelope=ev.envelope, now=ev.now))
            elif isinstance(ev, eng.TimerEvent) and ev.event == "fired":
                effects = drv.on_timer(eng.TimerFired(name=ev.name, now=ev.deadline))
            elif isinstance(ev, eng.Controlled):
                effects = drv.on_control(eng.ControlAction(action=ev.action, args=ev.args,
                                                           now=ev.now))
            elif isinstance(ev, eng.Sent):
                journaled.append(ev)
            if effects is not None:
                replayed.extend((ev.seq, e) for e in effects if isinstance(e, eng.Send))
                last = effects
        if not started:
            return None
        unused = sorted(k for k, left in (drv._recalled or {}).items() if left)
        if unused:
            raise NondeterminismError(f"session {drv.session}: the journal holds {unused[0]} "
                                      "draws that replaying its inputs does not make")
        drv._recalled = None  # from here on the driver is live: a new draw is a fresh one
        abort_step = cls.abort_type.__name__
        own = [s for s in journaled if s.envelope.step != abort_step]
        session = drv.session
        for i, sent in enumerate(own):
            if i >= len(replayed):
                raise NondeterminismError(
                    f"session {session}: the journal holds {sent.envelope.step} "
                    f"(msg.out record {sent.seq}) that replaying its inputs does not send")
            seq, again = replayed[i]
            body = msgspec.msgpack.encode(again.message)
            if (sent.envelope.step != type(again.message).__name__
                    or sent.envelope.body != body or tuple(sent.to) != again.to):
                raise NondeterminismError(
                    f"session {session}: replaying input record {seq} sends "
                    f"{type(again.message).__name__} to {list(again.to)}, but the journal "
                    f"holds {sent.envelope.step} to {list(sent.to)} (msg.out record "
                    f"{sent.seq}) with different content")
        missing = [s for _, s in replayed[len(own):]]
        if missing:
            # computed but never durable (a crash inside the group commit): due again, identical
            drv._pending = [*missing, *(e for e in last if not isinstance(e, eng.Send))]
        return drv


def _convert_params(params_type: type[msgspec.Struct], params: Mapping[str, Any]
                    ) -> msgspec.Struct:
    try:
        return msgspec.convert(dict(params), params_type)
    except msgspec.ValidationError as exc:
        raise eng.ParamsError(f"parameters do not fit {params_type.__name__}: {exc}") from None


# --- registration --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Protocol:
    """A registered protocol: its choreography, role classes, parameters and engine spec."""

    choreography: Choreography
    roles: Mapping[str, type[RoleValue]]
    params: type[msgspec.Struct]
    spec: eng.ProtocolSpec
    drivers: Mapping[str, type[RoleDriver]] = field(default_factory=dict)
    #: the node serves ``NAME.start`` and ``NAME.COMMAND`` control commands (module doc)
    control: bool = False

    @property
    def commands(self) -> tuple[str, ...]:
        """The operator commands its ``command=`` transitions declare, sorted."""
        return tuple(sorted({d.command for cls in self.roles.values()
                             for d in declared_transitions(cls) if d.command is not None}))


def command(
    name: str,
    help: str,
    *,
    roles: Callable[[Mapping[str, Any], str], Mapping[str, str]],
    params: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    wait: bool = True,
) -> eng.StartCommand:
    """Declare a control command that starts a session (see ``engine.StartCommand``):
    ``roles(args, self_name)`` -> device name -> role, ``params(args)`` -> session params."""
    if not name or any(c.isspace() for c in name):
        raise eng.DriverError(f"command name {name!r} must be non-empty without spaces")
    return eng.StartCommand(name=name, help=help, roles=roles,
                            params=params or (lambda args: {}), wait=wait)


def _params_of(role: str, initiator: str, params: type[msgspec.Struct]
               ) -> type[msgspec.Struct]:
    """Params are the operator's, given to the initiator; a responder starts from a peer's
    message with none, so its ``step.params`` is the Struct's defaults, or :class:`NoParams`
    when the Struct has required fields (annotate that role's steps ``Step[NoParams]``)."""
    if role == initiator:
        return params
    try:
        msgspec.convert({}, params)
    except msgspec.ValidationError:
        return NoParams
    return params


#: every protocol registered with :func:`protocol`, by choreography name
REGISTERED: dict[str, Protocol] = {}


def _default_bindings(chor: Choreography
                      ) -> Callable[[eng.Start, msgspec.Struct | None], dict[str, int]]:
    """Role-set sizes and thresholds for a session's monitor: the int params named like a
    declared size or threshold (other params, an amount say, are not bindings), and on the
    initiator, which knows the whole assignment, each role set's size from its members."""
    sizes = {r.name: r.size for r in chor.decl.roles if r.size is not None}
    declared = {*sizes.values(), *(t.name for t in chor.decl.thresholds)}

    def bindings(start: eng.Start, opening: msgspec.Struct | None) -> dict[str, int]:
        out = {k: v for k, v in start.params.items()
               if k in declared and isinstance(v, int) and not isinstance(v, bool)}
        if start.opened_by is None:
            for role, size in sizes.items():
                out.setdefault(size, sum(r == role for r in start.roles.values()))
        return out

    return bindings


def protocol(
    chor: Choreography,
    *roles: type[RoleValue],
    params: type[msgspec.Struct] = NoParams,
    responder_params: type[msgspec.Struct] | None = None,
    control: bool = False,
    initiator: str | None = None,
    openers: Mapping[str, eng.Opener] | None = None,
    bindings: Callable[[eng.Start, msgspec.Struct | None], dict[str, int]] | None = None,
    conformance_bindings: Mapping[str, int] | None = None,
    commands: Sequence[eng.StartCommand] = (),
) -> Protocol:
    """Register a protocol: check every role class against its projection, build one driver per
    role from its declarations, and register the engine spec.

    ``initiator``: the role the operator's device takes when it starts a session (default: the
    first role class). ``openers``: which inbound message opens a session on a responder
    (default: every role's first receive, from its initial phase). ``bindings``: role-set sizes
    and thresholds of a session for its monitor (default: the int params named like a declared
    size or threshold, and on the initiator the role sets' sizes from the assignment).
    ``commands``: start commands of its own (:func:`command`); ``control``: see the module doc.
    ``responder_params``: the params type of the roles a message opens (default: ``params``
    when all its fields have defaults, else :class:`NoParams`).
    """
    name = chor.name
    known = node_registry().get(name)
    # a higher version of a registered choreography is an upgrade: it replaces the protocol
    # on this node (the older version stays declared, see protocols.registry)
    upgrade = known is not None and known is not chor and chor.version > known.version
    if known is not None and known is not chor and not upgrade:
        raise eng.DriverError(f"a choreography named {name!r} is registered already"
                              + (f" (version {known.version}; an upgrade declares a higher "
                                 f"version)" if chor.version == known.version else ""))
    by_role: dict[str, type[RoleValue]] = {}
    for cls in roles:
        if cls.choreography != name:
            raise eng.DriverError(f"{cls.__qualname__} implements choreography "
                                  f"{cls.choreography!r}, registered with {name!r}")
        if cls.role not in chor.roles:
            raise eng.DriverError(f"{cls.__qualname__} plays role {cls.role!r}; {name} has "
                                  f"roles {', '.join(chor.roles)}")
        if cls.role in by_role:
            raise eng.DriverError(f"two classes play {name}/{cls.role}")
        abort = cls.abort_phase
        if abort is None or abort.__name__ != chor.decl.abort_phase:
            raise eng.DriverError(
                f"{cls.__qualname__} must declare abort={chor.decl.abort_phase} (the "
                f"choreography's abort phase), got {getattr(abort, '__name__', None)}")
        check_conformance(cls, chor.project(cls.role, dict(conformance_bindings or {}) or None))
        by_role[cls.role] = cls
    messages: dict[str, type[msgspec.Struct]] = {}
    for m in chor.messages:
        if not (isinstance(m, type) and issubclass(m, msgspec.Struct)):
            raise eng.DriverError(f"{name}: message {m!r} is not a msgspec Struct")
        messages[m.__name__] = m
    abort_type = messages[chor.decl.abort_message.__name__]
    drivers: dict[str, type[RoleDriver]] = {}
    first = initiator if initiator is not None else roles[0].role
    for role, cls in by_role.items():
        drivers[role] = cast(type[RoleDriver], type(
            f"{cls.__name__}Driver", (RoleDriver,),
            {"choreography": name, "role": role, "role_class": cls,
             "params_type": (responder_params if responder_params is not None
                             and role != first else _params_of(role, first, params)),
             "table": _Table.of(cls), "message_types": messages, "abort_type": abort_type,
             "__module__": cls.__module__},
        ))
    if openers is None:
        openers = {}
        for role, cls in by_role.items():
            for d in declared_transitions(cls):
                if (d.source is cls.initial_phase and d.action in ("recv", "gather")
                        and d.message is not None and d.peer is not None):
                    openers[d.message.__name__] = eng.Opener(sender_role=d.peer, role=role)

    def validate(raw: Mapping[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any], msgspec.to_builtins(_convert_params(params, raw)))

    spec = eng.register_protocol(eng.ProtocolSpec(
        choreography=name,
        drivers=drivers,
        message_types=messages,
        openers=openers,
        initiator_role=first,
        validate_params=validate,
        bindings=bindings or _default_bindings(chor),
        commands=tuple(commands),
    ), supersede=upgrade)
    register_choreography(chor)  # one registration: the spec above and the choreography
    proto = Protocol(choreography=chor, roles=by_role, params=params, spec=spec,
                     drivers=drivers, control=control)
    REGISTERED[name] = proto
    return proto
