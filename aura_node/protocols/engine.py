"""The engine interface: how one protocol role ("driver") plugs into the node runtime.

Theory of operation
-------------------
A driver is the device-side implementation of one role of one choreography, written sans-IO
(h11 style): the runtime feeds it *inputs* and it answers with a list of *effects*. It never
awaits, never reads a clock, never draws randomness and never touches the journal or a socket;
``now`` and ``entropy`` arrive inside the inputs. That makes every driver deterministic and
testable without a node, and lets the runtime enforce the invariants in one place:

inputs (runtime -> driver)
    :class:`Start`          a new session: ids, this device's role, the role assignment
                            (device name -> role), validated params, ``now``, fresh entropy.
    :class:`MessageIn`      a verified inbound message: the signature already checked against
                            the sender's pinned key, the session binding checked, and the
                            role's monitor already accepted it.
    :class:`TimerFired`     a timer the driver armed reached its (absolute, wall-clock) deadline.
    :class:`ControlAction`  an operator action on a running session (approve, veto, ...).

effects (driver -> runtime)
    :class:`Send`           send a message Struct to device names (the runtime checks it
                            against the role's monitor, seals and signs it, journals it, and
                            only then hands it to the transport: *journal before send*).
    :class:`RecordEvidence` append a record of the driver's own ``kind`` (state its
                            rehydration needs that is not a message, e.g. a verified witness).
    :class:`ArmTimer` / :class:`CancelTimer`   absolute deadline in wall-clock seconds.
    :class:`Reply`          the answer to the :class:`ControlAction` being handled.
    :class:`Complete` / :class:`Fail`          the session's end with a result or an error.

All effects of one input are journaled together (one group commit shared with every other
session's effects) before any of them leaves the device. A driver method that raises aborts
that session only: the runtime journals a ``session.fail`` record and logs the session id.

Rehydration
-----------
The runtime journals, per session: ``session.start`` (the :class:`Start` input),
``msg.in``/``msg.out`` (every envelope received and sent, as signed bytes), ``timer.*``,
driver records, and ``session.complete``/``session.fail``. After a restart it hands a
session's records, in journal order, to ``DriverClass.rehydrate(evidence)``: a *pure fold*
that rebuilds the driver, or returns ``None`` when the evidence proves too little to continue
(the runtime then aborts the session cleanly). It must be conservative: never claim a later
phase than the evidence proves; on ambiguity pick the earlier/safer state or give up.
:func:`parse_evidence` turns raw records into typed :data:`Evidence` so drivers don't decode
runtime record bodies by hand. Messages the driver had sent are *not* re-sent by the driver:
the runtime re-sends the journaled envelopes itself (never regenerated, so no equivocation),
and re-arms journaled timers; then it calls ``driver.resume(now)`` for work the evidence shows
was due but never journaled.

:data:`PROTOCOLS` maps a choreography name to its :class:`ProtocolSpec`; later protocols
(genesis, DKD, recovery) register theirs with :func:`register_protocol`.

This module is pure (no trio, no I/O).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import msgspec

from aura_node.errors import LocalProtocolError, ProtocolError
from aura_node.protocols.envelope import Envelope, decode_envelope
from aura_node.protocols.services import NodeServices

# --- journal record kinds written by the runtime ------------------------------------------------

KIND_START = "session.start"
KIND_IN = "msg.in"
KIND_OUT = "msg.out"
KIND_TIMER_ARM = "timer.arm"
KIND_TIMER_CANCEL = "timer.cancel"
KIND_TIMER_FIRED = "timer.fired"
KIND_CONTROL = "session.control"
KIND_COMPLETE = "session.complete"
KIND_FAIL = "session.fail"
KIND_MISBEHAVIOUR = "misbehaviour"
RUNTIME_KINDS = frozenset(
    {
        KIND_START, KIND_IN, KIND_OUT, KIND_TIMER_ARM, KIND_TIMER_CANCEL, KIND_TIMER_FIRED,
        KIND_CONTROL, KIND_COMPLETE, KIND_FAIL, KIND_MISBEHAVIOUR,
    }
)


class ParamsError(LocalProtocolError):
    """Session parameters given by the operator do not validate."""

    code = "bad_params"


class DriverError(ProtocolError):
    """A driver broke the engine contract (bad effect, unknown timer, ...)."""

    code = "driver_error"


class NondeterminismError(DriverError):
    """Replaying a session's journaled inputs did not reproduce its journaled messages (the
    runtime aborts that session with this code; see ``protocols.kit``)."""

    code = "nondeterminism"


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """A new session. ``roles`` maps device names (this device's included) to roles.

    For a session opened by a peer's message (a responder), ``opened_by`` names that peer and
    ``roles`` holds only this device and the opener; the opening message follows immediately as
    a :class:`MessageIn`, and multi-party drivers learn the rest of the assignment from it.
    """

    session: str
    choreography: str
    role: str
    self_name: str
    roles: Mapping[str, str]
    params: Mapping[str, Any]
    now: float
    entropy: bytes
    opened_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageIn:
    """A verified, monitor-accepted inbound message (sender = the peer's configured name)."""

    sender: str
    sender_role: str
    message: msgspec.Struct
    envelope: Envelope
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    name: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlAction:
    action: str
    args: Mapping[str, Any]
    now: float


Input = Start | MessageIn | TimerFired | ControlAction

# --- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    to: tuple[str, ...]
    message: msgspec.Struct


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordEvidence:
    """A driver record. ``kind`` should be ``"<choreography>.<what>"``; never a runtime kind."""

    kind: str
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmTimer:
    """Arm (or re-arm) timer ``name`` for an absolute wall-clock ``deadline`` (seconds)."""

    name: str
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The control reply for the :class:`ControlAction` being handled."""

    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Complete:
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail:
    code: str
    reason: str
    #: tell every other role (the choreography's abort message); False: this role's own end
    #: only, for a role whose last message already told the others (a DKD refusal)
    tell_peers: bool = True


Effect = Send | RecordEvidence | ArmTimer | CancelTimer | Reply | Complete | Fail

# --- journal evidence ---------------------------------------------------------------------------


class EvidenceRecord(Protocol):
    """What a journal record looks like to a driver (``aura_node.journal.JournalRecord``)."""

    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def session(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def body(self) -> bytes: ...


class StartBody(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``session.start``: the :class:`Start` input (entropy included, it is the
    driver's only source of nonces, so a rehydrated driver derives the same ones)."""

    choreography: str
    role: str
    self_name: str
    roles: dict[str, str]
    params: dict[str, Any]
    now: float
    entropy: bytes
    opened_by: str | None = None

    def to_input(self, session: str) -> Start:
        return Start(
            session=session, choreography=self.choreography, role=self.role,
            self_name=self.self_name, roles=dict(self.roles), params=dict(self.params),
            now=self.now, entropy=self.entropy, opened_by=self.opened_by,
        )


class InBody(msgspec.Struct, frozen=True, kw_only=True):
    sender: str
    sender_role: str
    envelope: bytes
    now: float


class OutBody(msgspec.Struct, frozen=True, kw_only=True):
    to: list[str]
    envelope: bytes


class TimerBody(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    deadline: float = 0.0


class ControlBody(msgspec.Struct, frozen=True, kw_only=True):
    action: str
    args: dict[str, Any]
    now: float


class CompleteBody(msgspec.Struct, frozen=True, kw_only=True):
    result: dict[str, Any]


class FailBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    reason: str


class RejectionBody(msgspec.Struct, frozen=True, kw_only=True):
    """Body of a driver's ``<choreography>.rejected`` record: a peer message the driver refused
    while the session carries on (the runtime logs one line per such record)."""

    peer: str
    code: str
    reason: str


def rejection(kind: str, *, peer: str, code: str, reason: str) -> RecordEvidence:
    """The evidence record of a peer message a driver refused; ``kind`` is
    ``"<choreography>.rejected"``."""
    return RecordEvidence(kind=kind, body=encode_body(RejectionBody(peer=peer, code=code,
                                                                     reason=reason)))


def decode_rejection(body: bytes) -> RejectionBody | None:
    """A ``*.rejected`` body, or ``None`` when it does not decode as one."""
    try:
        return _rejection_decoder.decode(body)
    except msgspec.DecodeError:
        return None


class MisbehaviourBody(msgspec.Struct, frozen=True, kw_only=True):
    peer: str
    code: str
    reason: str
    envelope: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    seq: int
    start: Start


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    seq: int
    sender: str
    sender_role: str
    envelope: Envelope
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    seq: int
    to: tuple[str, ...]
    envelope: Envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerEvent:
    seq: int
    event: str  # "arm" | "cancel" | "fired"
    name: str
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Controlled:
    seq: int
    action: str
    args: Mapping[str, Any]
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    seq: int
    ok: bool
    result: Mapping[str, Any]
    code: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverRecord:
    seq: int
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Misbehaved:
    seq: int
    peer: str
    code: str
    reason: str


Evidence = Started | Received | Sent | TimerEvent | Controlled | Ended | DriverRecord | Misbehaved

_enc = msgspec.msgpack.Encoder()
_rejection_decoder = msgspec.msgpack.Decoder(RejectionBody)
_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
    KIND_START: msgspec.msgpack.Decoder(StartBody),
    KIND_IN: msgspec.msgpack.Decoder(InBody),
    KIND_OUT: msgspec.msgpack.Decoder(OutBody),
    KIND_TIMER_ARM: msgspec.msgpack.Decoder(TimerBody),
    KIND_TIMER_CANCEL: msgspec.msgpack.Decoder(TimerBody),
    KIND_TIMER_FIRED: msgspec.msgpack.Decoder(TimerBody),
    KIND_CONTROL: msgspec.msgpack.Decoder(ControlBody),
    KIND_COMPLETE: msgspec.msgpack.Decoder(CompleteBody),
    KIND_FAIL: msgspec.msgpack.Decoder(FailBody),
    KIND_MISBEHAVIOUR: msgspec.msgpack.Decoder(MisbehaviourBody),
}


def encode_body(body: msgspec.Struct) -> bytes:
    return _enc.encode(body)


def parse_record(record: EvidenceRecord) -> Evidence:
    """Type one journal record of a session (raises :class:`DriverError` on a bad body)."""
    kind = record.kind
    dec = _decoders.get(kind)
    if dec is None:
        return DriverRecord(seq=record.seq, kind=kind, body=record.body)
    try:
        b = dec.decode(record.body)
    except msgspec.DecodeError as exc:
        raise DriverError(f"journal record {record.seq} ({kind}) does not decode: {exc}") from None
    if isinstance(b, StartBody):
        return Started(seq=record.seq, start=b.to_input(record.session))
    if isinstance(b, InBody):
        return Received(seq=record.seq, sender=b.sender, sender_role=b.sender_role,
                        envelope=decode_envelope(b.envelope), now=b.now)
    if isinstance(b, OutBody):
        return Sent(seq=record.seq, to=tuple(b.to), envelope=decode_envelope(b.envelope))
    if isinstance(b, TimerBody):
        return TimerEvent(seq=record.seq, event=kind.removeprefix("timer."), name=b.name,
                          deadline=b.deadline)
    if isinstance(b, ControlBody):
        return Controlled(seq=record.seq, action=b.action, args=b.args, now=b.now)
    if isinstance(b, CompleteBody):
        return Ended(seq=record.seq, ok=True, result=b.result, code="", reason="")
    if isinstance(b, FailBody):
        return Ended(seq=record.seq, ok=False, result={}, code=b.code, reason=b.reason)
    assert isinstance(b, MisbehaviourBody)
    return Misbehaved(seq=record.seq, peer=b.peer, code=b.code, reason=b.reason)


def parse_evidence(records: Sequence[EvidenceRecord]) -> list[Evidence]:
    """Type a session's records, in journal order."""
    return [parse_record(r) for r in sorted(records, key=lambda r: r.seq)]


def decode_message(envelope: Envelope, message_type: type[msgspec.Struct]) -> Any:
    """Decode a journaled envelope's body (already verified when it was journaled)."""
    return msgspec.msgpack.decode(envelope.body, type=message_type)


# --- drivers -------------------------------------------------------------------------------------


class ProtocolDriver(ABC):
    """Base of every role implementation. Subclass once per role; see the module docstring.

    Every handler returns the effects of that input in order. Raising aborts the session
    (journaled as ``session.fail`` with code ``driver_error``) and nothing else.
    """

    #: the choreography and role this class implements (checked against the spec)
    choreography: ClassVar[str]
    role: ClassVar[str]

    def __init__(self, services: NodeServices) -> None:
        #: this node's key, pinned peers, accounts and protocol settings (never mutate
        #: ``services.accounts`` before the evidence that justifies it is durable)
        self.services = services

    @property
    @abstractmethod
    def roles(self) -> Mapping[str, str]:
        """Device name -> role, as far as this driver knows it (the monitor needs the
        sender's role for every inbound message)."""

    @abstractmethod
    def start(self, inp: Start) -> list[Effect]: ...

    @abstractmethod
    def on_message(self, inp: MessageIn) -> list[Effect]: ...

    def on_timer(self, inp: TimerFired) -> list[Effect]:
        """Default: any timer is the session deadline; abort."""
        return [Fail(code="timeout", reason=f"timer {inp.name!r} expired")]

    def resume(self, now: float) -> list[Effect]:
        """Called once after :meth:`rehydrate` (and after the runtime re-sent the journaled
        envelopes and re-armed the journaled timers): the effects of work the evidence shows
        was due but not yet journaled (e.g. a reply computed but not durably sent). Must not
        produce anything the journal already holds a different version of. Default: none."""
        return []

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        """The session is being aborted by the runtime (``by_peer`` None: a deadline, a
        ``Fail`` effect's fan-out, or a step that raised) or by a peer's abort message
        (``by_peer`` its name). The runtime journals and sends everything itself; a driver
        only moves its typestate to the abort phase. Must not raise. Default: nothing."""
        return None

    def accepts_abort_from(self, sender: str, sender_role: str) -> bool:
        """May ``sender`` (in ``sender_role``) end this session with the choreography's abort
        message? Asked before the monitor sees the abort. ``False``: the runtime drops that
        abort (logged, not journaled, the monitor not stepped) and the session carries on - for
        a role whose safety depends on *not* being stopped by a particular peer (a recovery
        device's veto window must not be closable by the new device). Must be pure. Default:
        every role's abort ends the session."""
        return True

    def rejects_message(
        self, sender: str, sender_role: str, message: msgspec.Struct
    ) -> str | None:
        """A reason to refuse ``message`` BEFORE the monitor steps, or ``None``. For a message
        whose acceptance would move the role's local type past a point its safety depends on
        (a recovery device must not leave its veto window on a completion that does not prove
        the secret was rebuilt): the runtime journals the refusal as ``misbehaviour`` with the
        signed envelope, does not step the monitor, and the session carries on. Must be pure
        and must not change the driver. Default: no objection."""
        return None

    def on_control(self, inp: ControlAction) -> list[Effect]:
        raise LocalProtocolError(
            f"{self.choreography}/{self.role} has no control action {inp.action!r}"
        )

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """JSON-able view for ``ctl session``; must include ``"phase"``; never secrets."""

    @property
    @abstractmethod
    def is_final(self) -> bool: ...

    @classmethod
    @abstractmethod
    def rehydrate(cls, evidence: Sequence[EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        """Rebuild from the session's journal records (pure, conservative); ``None`` when the
        evidence proves too little to continue (the runtime then aborts the session)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Opener:
    """An inbound message type that opens a new session on this device."""

    sender_role: str
    role: str


def _no_bindings(start: Start, opening: msgspec.Struct | None) -> dict[str, int]:
    return {}


def _no_params(params: Mapping[str, Any]) -> dict[str, Any]:
    if params:
        raise ParamsError(f"this protocol takes no parameters, got {sorted(params)}")
    return {}


def _no_params_from_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class StartCommand:
    """A control command (``aura-node ctl call NAME --args JSON``) that starts a session of its
    protocol with this device in the initiator role, declared by the protocol (pure functions of
    the request's arguments); the node serves every declared command the same way.

    ``roles(args, self_name)`` gives the session's role assignment (device name -> role) and
    ``params(args)`` its parameters (validated by the protocol's params); either raises
    ``ValueError``/``KeyError``/``TypeError``/:class:`ParamsError` with a message for the
    operator. The request's ``timeout`` argument (seconds) is reserved: how long to wait for the
    session's result. ``wait=False`` answers with the session id as soon as the start is durable.
    """

    name: str
    help: str
    roles: Callable[[Mapping[str, Any], str], Mapping[str, str]]
    params: Callable[[Mapping[str, Any]], Mapping[str, Any]] = _no_params_from_args
    wait: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolSpec:
    """How the runtime runs one choreography."""

    choreography: str
    #: role -> driver class
    drivers: Mapping[str, type[ProtocolDriver]]
    #: message type name (envelope ``step``) -> message Struct
    message_types: Mapping[str, type[msgspec.Struct]]
    #: message type name -> how a responder session is opened by it
    openers: Mapping[str, Opener] = field(default_factory=dict)
    #: the role the operator's device takes when it starts a session
    initiator_role: str = ""
    #: checks and normalises operator parameters; raises :class:`ParamsError`
    validate_params: Callable[[Mapping[str, Any]], dict[str, Any]] = _no_params
    #: role-set sizes / thresholds to project this session's local type with (the choreo
    #: ``project(role, bindings)``), from the start input and, for a responder, the opening
    #: message
    bindings: Callable[[Start, msgspec.Struct | None], dict[str, int]] = _no_bindings
    #: the control commands this protocol declares (served by the node, ``ctl call``)
    commands: tuple[StartCommand, ...] = ()

    def __post_init__(self) -> None:
        for role, cls in self.drivers.items():
            if cls.role != role or cls.choreography != self.choreography:
                raise DriverError(
                    f"driver {cls.__name__} implements {cls.choreography}/{cls.role}, "
                    f"registered as {self.choreography}/{role}"
                )
        for name, op in self.openers.items():
            if name not in self.message_types:
                raise DriverError(f"opener {name!r} is not a message of {self.choreography}")
            if op.role not in self.drivers:
                raise DriverError(f"opener {name!r} opens role {op.role!r} with no driver")
        if self.initiator_role and self.initiator_role not in self.drivers:
            raise DriverError(f"initiator role {self.initiator_role!r} has no driver")

    def driver_class(self, role: str) -> type[ProtocolDriver]:
        try:
            return self.drivers[role]
        except KeyError:
            raise DriverError(
                f"{self.choreography} has no driver for role {role!r} "
                f"(has: {', '.join(sorted(self.drivers))})"
            ) from None


#: choreography name -> spec; the protocols register here (see :func:`register_protocol`)
PROTOCOLS: dict[str, ProtocolSpec] = {}


def register_protocol(spec: ProtocolSpec, *, supersede: bool = False) -> ProtocolSpec:
    """Register ``spec`` under its choreography's name; ``supersede``: replace the one there
    (an upgrade to a higher version of the choreography, checked by the caller)."""
    if (not supersede and spec.choreography in PROTOCOLS
            and PROTOCOLS[spec.choreography] is not spec):
        raise DriverError(f"protocol {spec.choreography!r} is registered twice")
    PROTOCOLS[spec.choreography] = spec
    return spec


#: modules whose import registers a built-in protocol (later issues append genesis, dkd, ...)
BUILTIN_PROTOCOL_MODULES: tuple[str, ...] = (
    "aura_node.protocols.ping.roles",
    "aura_node.protocols.dkd.roles",
    "aura_node.protocols.genesis.roles",
    "aura_node.protocols.recovery.roles",
    "aura_node.protocols.account_sync.roles",
    "aura_node.protocols.reshare.roles",
)


def load_protocols(extra_modules: Sequence[str] = ()) -> Mapping[str, ProtocolSpec]:
    """Import the built-in protocol modules (and ``extra_modules``, see ``run --plugin``) so
    they register, and return :data:`PROTOCOLS`."""
    import importlib

    for name in (*BUILTIN_PROTOCOL_MODULES, *extra_modules):
        importlib.import_module(name)
    return PROTOCOLS
