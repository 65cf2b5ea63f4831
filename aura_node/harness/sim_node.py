"""One simulated node: the session runtime's contract, synchronous and pure.

Theory of operation
-------------------
The Trio runtime (``aura_node/runtime/sessions.py``) keeps a session table in front of the pure
protocol drivers and turns every input into one *step*: journal records that must be durable
first, then the actions they allow (send, arm a timer, answer the operator). The simulation
needs exactly that contract without Trio, sockets, a clock or a disk, so :class:`SimRuntime`
replays it input by input:

* inbound bytes are decoded as a ``WireMessage``, verified with the *link's* pinned key
  (``open_envelope``; junk never reaches the journal), matched to a session (or open a
  responder session through the spec's opener), de-duplicated by digest (a *replayed*
  duplicate is answered by re-sending our own journaled envelopes of that session), checked
  by the receiving role's monitor (early messages are buffered and retried after every
  accepted one; other violations are journaled as ``misbehaviour``), journaled as ``msg.in``
  with whatever the driver's effects need, all in the same step;
* every ``Send`` is checked by the sending role's monitor once per distinct recipient *role*
  (a send to a role set is one logical send, see ``choreo.monitor``); the Sends of one message
  type to one role produced by one driver input are one logical send too (genesis seals a
  different share to each holder: a personalised broadcast). Each is sealed with the real
  device key and journaled as ``msg.out`` before its payloads are handed to the network;
* a ``Fail`` (or a raising driver, or a local monitor violation) aborts only that session and
  fans the choreography's abort message out to every other role; a peer's abort message ends
  the session as ``aborted_by_peer``;
* :meth:`SimRuntime.rehydrate` rebuilds the table from journal records exactly as the runtime
  does after a restart: ``DriverClass.rehydrate(records, services)``, the monitor brought to
  the state the journal proves, journaled timers re-armed, journaled envelopes re-sent with the
  replay hint, then ``driver.resume(now)``.

:class:`SessionMonitor` is the runtime's monitor adapter (a deadline is a no-op in a state
without one, because drivers also run local timers such as a recovery cooldown).

Time and entropy are inputs (``clock``/``entropy`` callables); nothing here reads the wall
clock or the OS random source, so a seeded caller gets the same steps every time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from aura_node.choreo import Monitor
from aura_node.errors import AuraError, BadSignatureError, LocalProtocolError, RemoteProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import (
    Envelope,
    EnvelopeError,
    decode_wire,
    encode_envelope,
    encode_wire,
    open_envelope,
    seal,
)
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import NodeServices

#: see :meth:`SimRuntime._retry_early`
RETRY_EARLY_AFTER_ANY_STEP = True

#: early messages buffered per session until the monitor reaches their state (as the runtime)
MAX_EARLY = 256


class SessionMonitor:
    """The runtime's view of one role's monitor in one session."""

    __slots__ = ("_abort_type", "monitor")

    def __init__(self, choreography: str, role: str, bindings: Mapping[str, int]) -> None:
        chor = REGISTRY.get(choreography)
        if chor is None:
            raise eng.DriverError(f"choreography {choreography!r} is not in the registry")
        self.monitor = Monitor(chor.project(role, dict(bindings) or None))
        self._abort_type = self.monitor.local_type.abort_message

    def check_inbound(self, sender_role: str, message: msgspec.Struct, *, member: str) -> None:
        self.monitor.check_inbound(sender_role, message, member=member)

    def check_outbound(self, receiver_role: str, message: msgspec.Struct) -> None:
        self.monitor.check_outbound(receiver_role, message)

    def on_timeout(self) -> None:
        """A driver timer fired: follow the state's deadline edge if it has one."""
        if self.monitor.can_time_out:
            self.monitor.timeout()

    def on_abort(self) -> None:
        if not self.monitor.is_final:
            self.monitor.abort()

    def is_abort(self, message: object) -> bool:
        return self._abort_type is not None and type(message) is self._abort_type

    def abort_message(self, reason: str) -> msgspec.Struct | None:
        t: Any = self._abort_type
        if t is None:
            return None
        fields = {f.name for f in msgspec.structs.fields(t)}
        return cast(msgspec.Struct, t(reason=reason[:500]) if "reason" in fields else t())

    def state(self) -> str:
        return str(self.monitor.state)


@dataclass(slots=True, kw_only=True)
class Step:
    """What one input asks for: records to journal (one group commit), then the sends."""

    session: str
    ts: float
    records: list[tuple[str, bytes]] = field(default_factory=list)
    #: (peer name, wire payload) in order; only after ``records`` are durable
    sends: list[tuple[str, bytes]] = field(default_factory=list)
    #: the operator's answer (control actions)
    reply: dict[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class SimSession:
    id: str
    choreography: str
    role: str
    started: float
    driver: eng.ProtocolDriver | None
    monitor: SessionMonitor | None
    roles: dict[str, str] = field(default_factory=dict)
    outcome: str = "active"  # active | completed | failed
    ended: float | None = None
    result: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    seen: set[bytes] = field(default_factory=set)
    sent: list[tuple[tuple[str, ...], Envelope]] = field(default_factory=list)
    #: timer name -> absolute deadline (virtual seconds)
    timers: dict[str, float] = field(default_factory=dict)
    early: list[tuple[str, msgspec.Struct, Envelope]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.outcome == "active"

    @property
    def phase(self) -> str:
        if self.driver is not None:
            try:
                ph = self.driver.status().get("phase")
            except Exception:  # a status bug must not break a report
                ph = None
            if isinstance(ph, str):
                return ph
        return {"active": "Active", "completed": "Completed", "failed": "Failed"}[self.outcome]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """An inbound message refused before or by the monitor (logged, maybe journaled)."""

    peer: str
    session: str
    code: str
    reason: str


class SimRuntime:
    """The session table of one simulated node (see the module docstring)."""

    def __init__(self, *, services: NodeServices, clock: Callable[[], float],
                 entropy: Callable[[], bytes]) -> None:
        self.services = services
        self.name = services.self_name
        self.key = services.device_key
        self._clock = clock
        self._entropy = entropy
        self.protocols = _protocols()
        self.sessions: dict[str, SimSession] = {}
        self.rejections: list[Rejection] = []
        self.duplicates = 0
        #: False (default): the Sends of one message type to members of one role that one
        #: driver input produces are one logical send (a broadcast, possibly personalised, as
        #: genesis' sealed shares are); True: one monitor check per Send, which rejects the
        #: genesis dealer's second share (kept to demonstrate that, see the tests)
        self.strict_outbound = False

    # --- commands ---------------------------------------------------------------------------

    def start(self, *, choreography: str, session: str, roles: Mapping[str, str],
              params: Mapping[str, Any]) -> Step:
        """Start a session as its initiator (raises ``ParamsError`` like ``ctl`` would)."""
        now = self._clock()
        spec = self._spec(choreography)
        if not spec.initiator_role:
            raise eng.ParamsError(f"{choreography} cannot be started by an operator")
        params = spec.validate_params(params)
        for name in roles:
            if name != self.name and name not in self.services.peers:
                raise eng.ParamsError(f"{name!r} is not a pinned peer of {self.name}")
        if roles.get(self.name) != spec.initiator_role:
            raise eng.ParamsError(f"{self.name} must take role {spec.initiator_role!r}")
        if session in self.sessions:
            raise eng.ParamsError(f"session {session} exists already")
        start = eng.Start(session=session, choreography=choreography, role=spec.initiator_role,
                          self_name=self.name, roles=dict(roles), params=params, now=now,
                          entropy=self._entropy())
        driver = spec.driver_class(spec.initiator_role)(self.services)
        monitor = SessionMonitor(choreography, spec.initiator_role, spec.bindings(start, None))
        entry = SimSession(id=session, choreography=choreography, role=spec.initiator_role,
                           started=now, driver=driver, monitor=monitor, roles=dict(roles))
        self.sessions[session] = entry
        return self._run(entry, driver.start, start, [start_record(start)], now)

    def control(self, session: str, action: str, args: Mapping[str, Any] | None = None) -> Step:
        entry = self.sessions.get(session)
        if entry is None or entry.driver is None or not entry.active:
            what = "no session" if entry is None else f"session is {entry.outcome}"
            raise LocalProtocolError(f"cannot {action} {session!r} on {self.name}: {what}")
        now = self._clock()
        inp = eng.ControlAction(action=action, args=dict(args or {}), now=now)
        rec = (eng.KIND_CONTROL, eng.encode_body(
            eng.ControlBody(action=action, args=dict(args or {}), now=now)))
        step = self._run(entry, entry.driver.on_control, inp, [rec], now, control=True)
        return self._retry_early(entry, step, now)

    def fire(self, session: str, name: str) -> Step | None:
        entry = self.sessions.get(session)
        if entry is None or entry.driver is None or not entry.active:
            return None
        if entry.timers.pop(name, None) is None:
            return None
        now = self._clock()
        rec = (eng.KIND_TIMER_FIRED, eng.encode_body(eng.TimerBody(name=name, deadline=now)))
        assert entry.monitor is not None
        try:
            entry.monitor.on_timeout()
        except AuraError as exc:
            return self._abort(entry, [rec], exc, now)
        step = self._run(entry, entry.driver.on_timer, eng.TimerFired(name=name, now=now),
                         [rec], now)
        return self._retry_early(entry, step, now)

    # --- inbound ----------------------------------------------------------------------------

    def inbound(self, peer: str, payload: bytes) -> Step | None:
        now = self._clock()
        try:
            wire = decode_wire(payload)
            env = wire.envelope
            spec = self.protocols.get(env.choreography)
            if spec is None:
                raise EnvelopeError(f"no protocol {env.choreography!r} on this node")
            info = self.services.peers.get(peer)
            if info is None:
                raise EnvelopeError(f"{peer!r} is not a pinned peer of {self.name}")
            opened = open_envelope(env, link_device_id=info.device_id, link_key=info.public_key,
                                   message_types=spec.message_types)
        except (RemoteProtocolError, BadSignatureError) as exc:
            self._reject(peer, "", exc.code, exc.message)
            return None
        entry = self.sessions.get(env.session)
        if entry is None:
            opener = spec.openers.get(env.step)
            if opener is None:
                self._reject(peer, env.session, "no_session",
                             f"{env.choreography}/{env.step} for unknown session {env.session}")
                return None
            return self._open_responder(spec, opener, peer, opened.message, env, now)
        if entry.choreography != env.choreography:
            self._reject(peer, entry.id, "wrong_choreography",
                         f"session runs {entry.choreography}, message is {env.choreography}")
            return None
        if env.digest in entry.seen:
            self.duplicates += 1
            if not wire.replay:
                return None
            step = Step(session=entry.id, ts=now)
            for to, sent in entry.sent:
                if peer in to:
                    step.sends.append((peer, encode_wire(sent)))
            return step if step.sends else None
        if entry.driver is None or not entry.active:
            return None
        return self._deliver(entry, peer, opened.message, env, now, [])

    def _open_responder(self, spec: eng.ProtocolSpec, opener: eng.Opener, peer: str,
                        message: msgspec.Struct, env: Envelope, now: float) -> Step | None:
        start = eng.Start(session=env.session, choreography=spec.choreography, role=opener.role,
                          self_name=self.name, roles={self.name: opener.role,
                                                      peer: opener.sender_role},
                          params={}, now=now, entropy=self._entropy(), opened_by=peer)
        try:
            driver = spec.driver_class(opener.role)(self.services)
            monitor = SessionMonitor(spec.choreography, opener.role,
                                     spec.bindings(start, message))
        except AuraError as exc:
            self._reject(peer, env.session, exc.code, exc.message)
            return None
        entry = SimSession(id=env.session, choreography=spec.choreography, role=opener.role,
                           started=now, driver=driver, monitor=monitor,
                           roles=dict(start.roles))
        self.sessions[entry.id] = entry
        scratch = Step(session=entry.id, ts=now, records=[start_record(start)])
        try:
            self._apply(entry, driver.start(start), scratch, now, control=False)
        except Exception as exc:
            return self._abort(entry, scratch.records[:1], exc, now)
        if not entry.active:
            return scratch
        return self._deliver(entry, peer, message, env, now, scratch.records, scratch.sends)

    def _deliver(self, entry: SimSession, peer: str, message: msgspec.Struct, env: Envelope,
                 now: float, pre: list[tuple[str, bytes]],
                 pre_sends: Sequence[tuple[str, bytes]] = ()) -> Step:
        step = Step(session=entry.id, ts=now, records=list(pre), sends=list(pre_sends))
        if self._deliver_one(entry, peer, message, env, now, step):
            progress = True
            while progress and entry.early and entry.active:
                progress = False
                for item in list(entry.early):
                    entry.early.remove(item)
                    if self._deliver_one(entry, *item, now, step):
                        progress = True
                        break
        return step

    def _retry_early(self, entry: SimSession, step: Step, now: float) -> Step:
        """After a timer or an operator action moved the monitor on, buffered early messages
        may fit: retry them (the Trio runtime retries only after an accepted inbound message,
        so a message made acceptable by a deadline stays buffered forever: reported)."""
        if not RETRY_EARLY_AFTER_ANY_STEP:
            return step
        progress = True
        while progress and entry.early and entry.active:
            progress = False
            for item in list(entry.early):
                entry.early.remove(item)
                if self._deliver_one(entry, *item, now, step):
                    progress = True
                    break
        return step

    def _deliver_one(self, entry: SimSession, peer: str, message: msgspec.Struct,
                     env: Envelope, now: float, step: Step) -> bool:
        assert entry.driver is not None and entry.monitor is not None
        if not entry.active:
            return False
        sender_role = entry.driver.roles.get(peer)
        try:
            if sender_role is None:
                raise RemoteProtocolError(f"{peer!r} has no role in session {entry.id}")
            entry.monitor.check_inbound(sender_role, message, member=peer)
        except RemoteProtocolError as exc:
            if exc.code == "early_message" and len(entry.early) < MAX_EARLY:
                if not any(e.digest == env.digest for _, _, e in entry.early):
                    entry.early.append((peer, message, env))
                return False
            self._reject(peer, entry.id, exc.code, exc.message)
            step.records.append((eng.KIND_MISBEHAVIOUR, eng.encode_body(eng.MisbehaviourBody(
                peer=peer, code=exc.code, reason=exc.message, envelope=encode_envelope(env)))))
            return False
        entry.seen.add(env.digest)
        rec = (eng.KIND_IN, eng.encode_body(eng.InBody(
            sender=peer, sender_role=sender_role, envelope=encode_envelope(env), now=now)))
        if entry.monitor.is_abort(message):
            reason = str(getattr(message, "reason", "")) or "no reason given"
            step.records.append(rec)
            step.records.append((eng.KIND_FAIL, eng.encode_body(eng.FailBody(
                code="aborted_by_peer", reason=f"{peer} aborted: {reason}"))))
            self._finish(entry, step, now, error=("aborted_by_peer", f"{peer} aborted: {reason}"),
                         by_peer=peer)
            return True
        inp = eng.MessageIn(sender=peer, sender_role=sender_role, message=message,
                            envelope=env, now=now)
        sub = self._run(entry, entry.driver.on_message, inp, [rec], now)
        step.records.extend(sub.records)
        step.sends.extend(sub.sends)
        return True

    # --- running a driver -------------------------------------------------------------------

    def _run(self, entry: SimSession, fn: Callable[[Any], list[eng.Effect]], inp: object,
             pre: list[tuple[str, bytes]], now: float, *, control: bool = False) -> Step:
        scratch = Step(session=entry.id, ts=now, records=list(pre))
        try:
            self._apply(entry, fn(inp), scratch, now, control=control)
        except Exception as exc:
            return self._abort(entry, pre, exc, now)
        return scratch

    def _apply(self, entry: SimSession, effects: Sequence[eng.Effect], step: Step, now: float,
               *, control: bool) -> None:
        assert entry.driver is not None and entry.monitor is not None
        pending: list[tuple[tuple[str, ...], Envelope]] = []
        logical: set[tuple[str, type]] = set()
        for eff in effects:
            if isinstance(eff, eng.Send):
                self._send(entry, eff, step, pending, logical)
            elif isinstance(eff, eng.RecordEvidence):
                if eff.kind in eng.RUNTIME_KINDS:
                    raise eng.DriverError(f"driver may not write runtime record {eff.kind!r}")
                step.records.append((eff.kind, eff.body))
            elif isinstance(eff, eng.ArmTimer):
                step.records.append((eng.KIND_TIMER_ARM, eng.encode_body(
                    eng.TimerBody(name=eff.name, deadline=eff.deadline))))
                entry.timers[eff.name] = eff.deadline
            elif isinstance(eff, eng.CancelTimer):
                if entry.timers.pop(eff.name, None) is not None:
                    step.records.append((eng.KIND_TIMER_CANCEL, eng.encode_body(
                        eng.TimerBody(name=eff.name))))
            elif isinstance(eff, eng.Reply):
                if not control:
                    raise eng.DriverError("Reply effect outside a control action")
                step.reply = dict(eff.result)
            elif isinstance(eff, eng.Complete):
                result = dict(eff.result)
                step.records.append((eng.KIND_COMPLETE, eng.encode_body(
                    eng.CompleteBody(result=result))))
                self._finish(entry, step, now, result=result)
                break
            elif isinstance(eff, eng.Fail):
                step.records.append((eng.KIND_FAIL, eng.encode_body(
                    eng.FailBody(code=eff.code, reason=eff.reason))))
                self._finish(entry, step, now, error=(eff.code, eff.reason))
                break
            else:
                raise eng.DriverError(f"unknown effect {type(eff).__name__}")
        entry.sent.extend(pending)

    def _send(self, entry: SimSession, eff: eng.Send, step: Step,
              pending: list[tuple[tuple[str, ...], Envelope]],
              logical: set[tuple[str, type]]) -> None:
        assert entry.driver is not None and entry.monitor is not None
        roles = entry.driver.roles
        if not eff.to:
            raise eng.DriverError("Send effect with no recipients")
        recipient_roles: dict[str, None] = {}
        for name in eff.to:
            if name == self.name or name not in self.services.peers:
                raise eng.DriverError(f"cannot send to {name!r}: not a pinned peer")
            role = roles.get(name)
            if role is None:
                raise eng.DriverError(f"cannot send to {name!r}: no role in this session")
            recipient_roles[role] = None
        for role in recipient_roles:
            if self.strict_outbound or (role, type(eff.message)) not in logical:
                entry.monitor.check_outbound(role, eff.message)
                logical.add((role, type(eff.message)))
        env = seal(self.key, choreography=entry.choreography, session=entry.id,
                   message=eff.message)
        step.records.append((eng.KIND_OUT, eng.encode_body(
            eng.OutBody(to=list(eff.to), envelope=encode_envelope(env)))))
        payload = encode_wire(env)
        step.sends.extend((name, payload) for name in eff.to)
        pending.append((tuple(eff.to), env))

    def _finish(self, entry: SimSession, step: Step, now: float, *,
                result: dict[str, Any] | None = None, error: tuple[str, str] | None = None,
                by_peer: str | None = None) -> None:
        entry.timers.clear()
        entry.early.clear()
        entry.ended = now
        if error is None:
            entry.outcome, entry.result = "completed", result or {}
            return
        if entry.driver is not None:
            try:
                entry.driver.on_abort(error[1], by_peer=by_peer)
            except Exception:  # the session is over either way
                pass
        if by_peer is None:
            self._fan_out_abort(entry, step, f"{error[0]}: {error[1]}")
        entry.outcome, entry.error = "failed", error

    def _fan_out_abort(self, entry: SimSession, step: Step, reason: str) -> None:
        if entry.monitor is None or entry.driver is None:
            return
        try:
            message = entry.monitor.abort_message(reason)
            if message is None:
                return
            entry.monitor.on_abort()
            roles = {**entry.roles, **entry.driver.roles}
            to = tuple(n for n in roles if n != self.name and n in self.services.peers)
            for role in dict.fromkeys(roles[n] for n in to):
                entry.monitor.check_outbound(role, message)
        except Exception:  # already final, or a broken driver: nothing to tell
            return
        if not to:
            return
        env = seal(self.key, choreography=entry.choreography, session=entry.id, message=message)
        step.records.append((eng.KIND_OUT, eng.encode_body(
            eng.OutBody(to=list(to), envelope=encode_envelope(env)))))
        payload = encode_wire(env)
        step.sends.extend((name, payload) for name in to)
        entry.sent.append((to, env))

    def _abort(self, entry: SimSession, pre: list[tuple[str, bytes]], exc: BaseException,
               now: float) -> Step:
        if isinstance(exc, AuraError):
            code, reason = exc.code, exc.message
        else:
            code, reason = "driver_error", f"{type(exc).__name__}: {exc}"
        step = Step(session=entry.id, ts=now, records=list(pre))
        step.records.append((eng.KIND_FAIL, eng.encode_body(eng.FailBody(code=code,
                                                                           reason=reason))))
        self._finish(entry, step, now, error=(code, reason))
        return step

    def _reject(self, peer: str, session: str, code: str, reason: str) -> None:
        self.rejections.append(Rejection(peer=peer, session=session, code=code, reason=reason))

    def _spec(self, choreography: str) -> eng.ProtocolSpec:
        spec = self.protocols.get(choreography)
        if spec is None:
            raise eng.ParamsError(f"no protocol {choreography!r}")
        return spec

    # --- rehydration ------------------------------------------------------------------------

    def rehydrate(self, by_session: Mapping[str, Sequence[eng.EvidenceRecord]]) -> list[Step]:
        """Rebuild the session table from journal records; the steps to run first (re-sends,
        aborts of unrecoverable sessions, what ``resume`` found due)."""
        now = self._clock()
        steps: list[Step] = []
        for sid, records in by_session.items():
            step = self._rehydrate_one(sid, records, now)
            if step is not None:
                steps.append(step)
        return steps

    def _rehydrate_one(self, sid: str, records: Sequence[eng.EvidenceRecord], now: float
                       ) -> Step | None:
        records = sorted(records, key=lambda r: r.seq)
        evidence = eng.parse_evidence(records)
        start = next((e.start for e in evidence if isinstance(e, eng.Started)), None)
        if start is None:
            return None  # misbehaviour evidence about a session we never ran
        end = next((e for e in evidence if isinstance(e, eng.Ended)), None)
        entry = SimSession(id=sid, choreography=start.choreography, role=start.role,
                           started=start.now, driver=None, monitor=None,
                           roles=dict(start.roles))
        timers: dict[str, float] = {}
        for e in evidence:
            if isinstance(e, eng.Received):
                entry.seen.add(e.envelope.digest)
            elif isinstance(e, eng.Sent):
                entry.sent.append((e.to, e.envelope))
            elif isinstance(e, eng.TimerEvent):
                if e.event == "arm":
                    timers[e.name] = e.deadline
                else:
                    timers.pop(e.name, None)
        self.sessions[sid] = entry
        step = Step(session=sid, ts=now)
        if end is not None:
            entry.ended = records[-1].ts
            if end.ok:
                entry.outcome, entry.result = "completed", dict(end.result)
            else:
                entry.outcome, entry.error = "failed", (end.code, end.reason)
            self._resend(entry, step)
            return step if step.sends else None
        spec = self.protocols.get(start.choreography)
        try:
            if spec is None:
                raise eng.DriverError(f"protocol {start.choreography!r} is not on this node")
            driver = spec.driver_class(start.role).rehydrate(records, self.services)
            if driver is None:
                raise eng.DriverError("the journal does not prove enough to continue")
            opening = next((_decode(spec, e.envelope) for e in evidence
                            if isinstance(e, eng.Received)), None) if start.opened_by else None
            monitor = SessionMonitor(start.choreography, start.role,
                                     spec.bindings(start, opening))
            logical: set[tuple[str, type]] = set()
            for e in evidence:  # bring the monitor to the state the journal proves
                if not isinstance(e, eng.Sent):
                    logical.clear()  # a new driver input: a new set of logical sends
                if isinstance(e, eng.Received):
                    monitor.check_inbound(e.sender_role, _decode(spec, e.envelope),
                                          member=e.sender)
                elif isinstance(e, eng.Sent):
                    msg = _decode(spec, e.envelope)
                    if monitor.is_abort(msg):
                        monitor.on_abort()
                    roles = {**entry.roles, **driver.roles}
                    for role in dict.fromkeys(roles[n] for n in e.to):
                        if self.strict_outbound or (role, type(msg)) not in logical:
                            monitor.check_outbound(role, msg)
                            logical.add((role, type(msg)))
                elif isinstance(e, eng.TimerEvent) and e.event == "fired":
                    monitor.on_timeout()
        except Exception as exc:
            entry.driver = None
            step = self._abort(entry, [], eng.DriverError(f"rehydration failed: {exc}"), now)
            self._resend(entry, step)
            return step
        entry.driver, entry.monitor = driver, monitor
        entry.timers = timers
        self._resend(entry, step)
        resumed = self._run(entry, driver.resume, now, [], now)
        step.records.extend(resumed.records)
        step.sends.extend(resumed.sends)
        return step if step.sends or step.records else None

    def _resend(self, entry: SimSession, step: Step) -> None:
        for to, env in entry.sent:
            payload = encode_wire(env, replay=True)
            step.sends.extend((name, payload) for name in to)


def _protocols() -> Mapping[str, eng.ProtocolSpec]:
    """The shipped protocols the simulation runs (imported here so they register)."""
    import aura_node.protocols.dkd.roles
    import aura_node.protocols.genesis.roles
    import aura_node.protocols.recovery.roles  # noqa: F401

    return eng.PROTOCOLS


def _decode(spec: eng.ProtocolSpec, env: Envelope) -> Any:
    return eng.decode_message(env, spec.message_types[env.step])


def start_record(start: eng.Start) -> tuple[str, bytes]:
    body = eng.StartBody(
        choreography=start.choreography, role=start.role, self_name=start.self_name,
        roles=dict(start.roles), params=dict(start.params), now=start.now,
        entropy=start.entropy, opened_by=start.opened_by,
    )
    return (eng.KIND_START, eng.encode_body(body))
