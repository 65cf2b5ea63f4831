"""The session runtime: the session table, monitors in front of drivers, effects out.

Theory of operation
-------------------
``SessionRuntime`` is synchronous at its core: each input (a command, an inbound payload, a
timer expiry) is handled by one plain method call that never awaits, so a session's state
changes atomically with respect to every other session, and returns the
:class:`~aura_node.runtime.steps.Step` to hand to the effect executor. Two small consumer tasks
(one per input channel) call these methods and push the steps into the bounded effect channel.

Inbound path (one payload from a pinned peer's link):

1. decode the :class:`~aura_node.protocols.envelope.WireMessage`; look up the protocol by the
   envelope's choreography; verify the signature with the *link's* pinned key (the sender field
   must be the link's device). Failures are logged and dropped: unsigned junk is no evidence,
   so the journal stays untouched.
2. find the session (or open a responder session if the message type is an opener); drop
   envelopes already journaled (same digest): a *replayed* duplicate is answered by re-sending
   this device's own journaled envelopes of that session to the sender.
3. ask the driver whether it objects (``rejects_message``: a message whose acceptance would
   move the local type past a point safety depends on, e.g. an unproven recovery completion),
   then check the message against the receiving role's monitor. An objection or a violation
   is journaled as ``misbehaviour`` (the signed envelope is evidence), logged with the
   reason, and dropped; the monitor does not move.
   The choreography's abort message ends the session unless the driver refuses that sender's
   abort (``accepts_abort_from``): then it is logged and dropped, and the session carries on.
4. hand the message to the driver; journal ``msg.in`` together with the records the driver's
   effects need, all in the same step, so inbound evidence is durable before anything it
   caused leaves the device.

Outbound: every ``Send`` effect is checked against the sending role's monitor (a violation is a
bug in our driver: the session aborts), sealed (signed) once, journaled as ``msg.out`` and only
then transmitted by the executor. A send to a role set is *one* interaction of the local type:
the monitor steps once per distinct recipient role, and a driver that gives each member its own
content (genesis seals a different share to every holder) emits one ``Send`` per member within
one step - those are the same interaction too (:class:`SendGroups`), so the monitor steps on
the first member of a role and again only when a member hears the same message type twice.

Retransmission: when a peer's link comes (back) up (:class:`~aura_node.runtime.steps.PeerUp`,
from the daemon's link watcher or the simulation's restart), every active session re-sends
the envelopes it journaled for that peer as plain duplicates; together with the re-send of
our own journaled envelopes after a restart this makes delivery end-to-end at-least-once for
active sessions, whichever side crashed or lost the message.

Bounded memory: an ended session keeps its table entry (result, seen digests, sent
envelopes) only ``ended_retention`` seconds and among the ``ended_cache`` most recently ended;
older ones are evicted, oldest-ended first, once their end is durable (``final`` resolved). The
journal keeps everything, so with ``journal_records`` (the journal's indexed
``session_records``) an evicted session is still answered from it: a late duplicate is dropped,
a replay gets our journaled envelopes again, any other message is refused as for a closed
session, an opener never starts a second session under a journaled id, and
:meth:`SessionRuntime.describe` reports it. Without ``journal_records`` nothing is evicted.

Isolation: any exception from a driver, or a local monitor violation, aborts only that session
(``session.fail`` journaled, logged with the session id); the step's other effects are dropped.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import (
    AuraError,
    BadSignatureError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from aura_node.logs import get_logger
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
from aura_node.protocols.services import NodeServices
from aura_node.runtime.steps import (
    Arm,
    Command,
    Disarm,
    Outcome,
    PeerUp,
    Resolve,
    SessionControl,
    StartSession,
    Step,
    TimerExpired,
    Transmit,
)


class SessionFailedError(ProtocolError):
    """A session ended in failure; ``failure_code`` is the driver's or runtime's code."""

    code = "session_failed"

    def __init__(self, message: str, *, failure_code: str) -> None:
        super().__init__(message)
        self.failure_code = failure_code


class DriverObjectionError(RemoteProtocolError):
    """The receiving role's driver refused a message before the monitor stepped."""

    code = "refused_by_protocol"


class UnknownSessionError(LocalProtocolError):
    code = "unknown_session"


class RoleMonitor(Protocol):
    """The choreography monitor of one role in one session (``runtime.monitors``)."""

    def check_inbound(self, sender_role: str, message: msgspec.Struct, *, member: str
                      ) -> None: ...
    def check_outbound(self, receiver_role: str, message: msgspec.Struct) -> None: ...
    def on_timeout(self) -> None: ...
    def on_abort(self) -> None: ...
    def is_abort(self, message: object) -> bool: ...
    def abort_message(self, reason: str) -> msgspec.Struct | None: ...
    def state(self) -> str: ...


#: (choreography, role, bindings of role-set sizes/thresholds) -> a fresh monitor
MonitorFactory = Callable[[str, str, Mapping[str, int]], RoleMonitor]

#: driver record kinds that reject a peer's message (``genesis.rejected``, ``dkd.rejected``,
#: ``recovery.rejected``, ``dkd.equivocation``): logged as they are journaled
REJECTION_SUFFIXES = (".rejected", ".equivocation")

#: early messages buffered per session until the monitor reaches their state
MAX_EARLY = 256


class InboundPayload(Protocol):
    """``aura_node.transport.InboundData``: who sent it (link-authenticated) and the bytes."""

    @property
    def peer_name(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


@dataclass(slots=True, kw_only=True)
class SessionEntry:
    id: str
    choreography: str
    role: str
    started: float
    driver: eng.ProtocolDriver | None
    monitor: RoleMonitor | None
    outcome: str = "active"  # active | completed | failed
    ended: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    opened_by: str | None = None
    #: the role assignment of the start input (drivers may learn more: ``driver.roles``)
    roles: dict[str, str] = field(default_factory=dict)
    #: digests of inbound envelopes journaled (duplicates are idempotent)
    seen: set[bytes] = field(default_factory=set)
    #: our journaled envelopes (recipients, envelope), re-sent after restarts and on replays
    sent: list[tuple[tuple[str, ...], Envelope]] = field(default_factory=list)
    timers: dict[str, int] = field(default_factory=dict)
    #: messages the monitor called early (allowed in a later state), retried after each step
    early: list[tuple[str, msgspec.Struct, Envelope, bytes]] = field(default_factory=list)
    last_activity: float = 0.0
    #: resolved (by the executor, after the fsync) when the session ends
    final: Outcome = field(default_factory=Outcome)

    @property
    def active(self) -> bool:
        return self.outcome == "active"

    @property
    def state(self) -> str:
        """The local state name (the driver's phase); ``Completed``/``Failed`` when the
        driver is gone (a session that ended before the last restart)."""
        if self.driver is not None:
            try:
                phase = self.driver.status().get("phase")
            except Exception:  # a status bug must not break listing
                phase = None
            if isinstance(phase, str) and (self.outcome == "active" or self.driver.is_final):
                return phase
        return {"active": "Active", "completed": "Completed", "failed": "Failed"}[self.outcome]

    def summary(self) -> dict[str, Any]:
        return {
            "session": self.id,
            "protocol": self.choreography,
            "role": self.role,
            "state": self.state,
            "outcome": self.outcome,
            "started": self.started,
            "ended": self.ended,
        }

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        if self.driver is not None:
            try:
                out["status"] = self.driver.status()
                out["roles"] = dict(self.driver.roles)
            except Exception as exc:
                out["status"] = {"error": repr(exc)}
        if self.monitor is not None:
            out["monitor_state"] = self.monitor.state()
        out["messages_in"] = len(self.seen)
        out["messages_out"] = len(self.sent)
        out["timers"] = sorted(self.timers)
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class PeerDirectory:
    """Pinned peers by name (rebuilt on ``reload``)."""

    def __init__(self, peers: Mapping[str, DevicePublicKey]) -> None:
        self._by_name = dict(peers)
        self._id_of = {n: k.device_id for n, k in self._by_name.items()}

    def key(self, name: str) -> DevicePublicKey | None:
        return self._by_name.get(name)

    def device_id(self, name: str) -> str | None:
        return self._id_of.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


class SessionRuntime:
    def __init__(
        self,
        *,
        key: DeviceKey,
        self_name: str,
        peers: PeerDirectory,
        protocols: Mapping[str, eng.ProtocolSpec],
        monitor_for: MonitorFactory,
        services: NodeServices,
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        resend_horizon: float = 60.0,
        ended_retention: float = 600.0,
        ended_cache: int = 10000,
        journal_records: Callable[[str], Sequence[eng.EvidenceRecord]] | None = None,
    ) -> None:
        self.key = key
        self.self_name = self_name
        self.peers = peers
        self.protocols = protocols
        self._monitor_for = monitor_for
        self.services = services
        self._clock = clock
        self._entropy = entropy
        self._resend_horizon = resend_horizon
        self._ended_retention = ended_retention
        self._ended_cache = ended_cache
        self._journal_records = journal_records
        self.sessions: dict[str, SessionEntry] = {}
        #: ended sessions still in ``sessions``, oldest-ended first (dicts keep insertion order)
        self._ended: dict[str, float] = {}
        self.evicted = 0
        self._active: set[str] = set()
        self._ended_outcomes = {"completed": 0, "failed": 0}
        self._ended_states: dict[str, int] = {}
        self._gen = itertools.count(1)
        self._log = get_logger("aura_node.runtime.sessions", node=self_name)
        self.accepted = 0
        self.rejected = 0
        self.duplicates = 0

    # --- queries (read-only, safe from any task: single-threaded) -----------------------------

    def counts(self) -> dict[str, int]:
        """Sessions by outcome: active, completed, failed."""
        return {"active": len(self._active), **self._ended_outcomes}

    def states(self) -> dict[str, int]:
        """Sessions by local state name (``ctl status``). Ended sessions are counted as they
        end (a node may hold many); only the active ones are asked for their phase."""
        out = dict(self._ended_states)
        for sid in self._active:
            state = self.sessions[sid].state
            out[state] = out.get(state, 0) + 1
        return out

    def active_sessions(self) -> list[SessionEntry]:
        return [self.sessions[sid] for sid in self._active]

    def _track(self, entry: SessionEntry) -> None:
        """Account for ``entry`` (new or just ended) in the counters."""
        if entry.active:
            self._active.add(entry.id)
            return
        self._active.discard(entry.id)
        self._ended_outcomes[entry.outcome] += 1
        state = entry.state
        self._ended_states[state] = self._ended_states.get(state, 0) + 1
        self._ended[entry.id] = entry.ended if entry.ended is not None else self._clock()

    def prune(self, now: float | None = None) -> int:
        """Evict ended sessions past the retention window or beyond the cache, oldest-ended
        first; returns how many went. A session whose end is not durable yet (its ``final``
        unresolved: the executor has not committed it) stops the sweep: it and anything newer
        wait for the next call. Cheap when there is nothing to do (looks at one entry)."""
        if self._journal_records is None:
            return 0  # nothing to answer evicted sessions from: keep them
        now = self._clock() if now is None else now
        horizon = now - self._ended_retention
        gone = 0
        for sid, ended in list(self._ended.items()):
            if len(self._ended) <= self._ended_cache and ended > horizon:
                break
            entry = self.sessions.get(sid)
            if entry is not None and not entry.final.done:
                break
            del self._ended[sid]
            self.sessions.pop(sid, None)
            gone += 1
        self.evicted += gone
        return gone

    def _journaled(self, session: str) -> tuple[float, list[eng.Evidence]] | None:
        """The evidence of a session evicted from (or never loaded into) the table, from the
        journal, with the time of its last record; None when the journal has no start record
        for it (or no journal is given)."""
        if self._journal_records is None:
            return None
        records = sorted(self._journal_records(session), key=lambda r: r.seq)
        if not records:
            return None
        evidence = eng.parse_evidence(records)
        if not any(isinstance(e, eng.Started) for e in evidence):
            return None
        return records[-1].ts, evidence

    def describe(self, session: str) -> dict[str, Any]:
        """``ctl session ID``: the table entry's detail, or for an ended session evicted from
        memory, what its journal says (``evicted: true``); ``UnknownSessionError`` else."""
        entry = self.sessions.get(session)
        if entry is not None:
            return entry.detail()
        journaled = self._journaled(session)
        if journaled is None:
            raise UnknownSessionError(f"no session {session!r} on this node")
        last_ts, evidence = journaled
        start = next(e.start for e in evidence if isinstance(e, eng.Started))
        end = next((e for e in evidence if isinstance(e, eng.Ended)), None)
        out: dict[str, Any] = {
            "session": session, "protocol": start.choreography, "role": start.role,
            "started": start.now, "evicted": True,
            "roles": dict(start.roles),
            "messages_in": sum(isinstance(e, eng.Received) for e in evidence),
            "messages_out": sum(isinstance(e, eng.Sent) for e in evidence),
        }
        if end is None:
            # only a session that could not be rehydrated is in the journal but not in memory
            out.update(state="Unknown", outcome="unknown", ended=None)
        elif end.ok:
            out.update(state="Completed", outcome="completed", result=dict(end.result))
        else:
            out.update(state="Failed", outcome="failed",
                       error={"code": end.code, "reason": end.reason})
        if end is not None:
            out["ended"] = last_ts
        return out

    def get(self, session: str) -> SessionEntry:
        entry = self.sessions.get(session)
        if entry is None:
            raise UnknownSessionError(f"no session {session!r} on this node")
        return entry

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_hex(16)

    # --- commands ---------------------------------------------------------------------------

    def handle_command(self, cmd: Command) -> Step | None:
        if self._ended:
            self.prune()
        if isinstance(cmd, StartSession):
            return self._start(cmd)
        if isinstance(cmd, SessionControl):
            return self._control(cmd)
        if isinstance(cmd, PeerUp):
            return self._peer_up(cmd.peer)
        return self._timer(cmd)

    def _peer_up(self, peer: str) -> Step | None:
        """Re-send to ``peer`` every journaled envelope an active session addressed to it.

        Plain duplicates (``replay=False``): a receiver that has an envelope drops it by
        digest and answers nothing (no re-send storm between two nodes); one that lost it
        (it was down, or crashed before journaling it) processes it now, and an opener
        re-opens the session it never journaled. Ended sessions are left alone: a peer that
        restarts re-sends its own envelopes as replays, and those are answered with ours.
        Sessions in id order and each session's envelopes in send order, so the per-link
        FIFO order of one session is kept and a seeded simulation stays deterministic."""
        if peer not in self.peers:
            return None
        step = Step(session="", ts=self._clock())
        sessions = 0
        for sid in sorted(self._active):
            entry = self.sessions[sid]
            before = len(step.actions)
            for to, env in entry.sent:
                if peer in to:
                    step.actions.append(Transmit(peer=peer, payload=encode_wire(env)))
            sessions += len(step.actions) > before
        if not step.actions:
            return None
        self._log.info("peer_up_resent", peer=peer, sessions=sessions,
                       resent=len(step.actions))
        return step

    def _start(self, cmd: StartSession) -> Step | None:
        now = self._clock()
        try:
            spec = self._spec(cmd.choreography)
            if not spec.initiator_role:
                raise eng.ParamsError(f"{cmd.choreography} cannot be started by an operator")
            params = spec.validate_params(cmd.params)
            for name in cmd.roles:
                if name != self.self_name and name not in self.peers:
                    raise eng.ParamsError(f"{name!r} is not a pinned peer of this node")
            if cmd.roles.get(self.self_name) != spec.initiator_role:
                raise eng.ParamsError(
                    f"this node must take role {spec.initiator_role!r} in the role assignment"
                )
            if cmd.session in self.sessions or self._journaled(cmd.session) is not None:
                raise eng.ParamsError(f"session {cmd.session} exists already")
            start = eng.Start(
                session=cmd.session, choreography=cmd.choreography, role=spec.initiator_role,
                self_name=self.self_name, roles=dict(cmd.roles), params=params, now=now,
                entropy=cmd.entropy,
            )
            driver = spec.driver_class(spec.initiator_role)(self.services)
            monitor = self._monitor_for(cmd.choreography, spec.initiator_role,
                                        spec.bindings(start, None))
        except AuraError as exc:
            cmd.reply.fail(exc)
            return None
        entry = SessionEntry(id=cmd.session, choreography=cmd.choreography,
                             role=spec.initiator_role, started=now, driver=driver,
                             monitor=monitor, last_activity=now, roles=dict(start.roles))
        self.sessions[entry.id] = entry
        self._active.add(entry.id)
        self._log.info("session_start", session=entry.id, choreography=entry.choreography,
                       role=entry.role, roles=dict(cmd.roles))
        step = self._run(entry, driver.start, start, [_start_record(start)], now)
        if entry.outcome == "failed" and entry.error is not None:
            # the start itself failed: the operator hears the reason, not just an id
            step.actions.append(Resolve(outcome=cmd.reply, error=SessionFailedError(
                f"session {entry.id} failed at start: {entry.error['reason']}",
                failure_code=entry.error["code"])))
        else:
            step.actions.append(Resolve(outcome=cmd.reply, value={"session": entry.id}))
        return step

    def _control(self, cmd: SessionControl) -> Step | None:
        entry = self.sessions.get(cmd.session)
        if entry is None or entry.driver is None or not entry.active:
            what = "no session" if entry is None else f"session is {entry.outcome}:"
            cmd.reply.fail(UnknownSessionError(
                f"cannot {cmd.action} {cmd.session!r}: {what} (active sessions only)"))
            return None
        now = self._clock()
        inp = eng.ControlAction(action=cmd.action, args=dict(cmd.args), now=now)
        rec = (eng.KIND_CONTROL, eng.encode_body(
            eng.ControlBody(action=cmd.action, args=dict(cmd.args), now=now)))
        step = self._run(entry, entry.driver.on_control, inp, [rec], now, reply=cmd.reply)
        self._retry_early(entry, now, step)
        if not any(isinstance(a, Resolve) and a.outcome is cmd.reply for a in step.actions):
            if entry.outcome == "failed" and entry.error is not None:
                step.actions.append(Resolve(outcome=cmd.reply, error=SessionFailedError(
                    entry.error["reason"], failure_code=entry.error["code"])))
            else:
                step.actions.append(Resolve(outcome=cmd.reply, value=entry.detail()))
        return step

    def _timer(self, cmd: TimerExpired) -> Step | None:
        entry = self.sessions.get(cmd.session)
        if entry is None or entry.driver is None or not entry.active:
            return None
        if entry.timers.get(cmd.name) != cmd.generation:
            return None  # re-armed or cancelled since
        del entry.timers[cmd.name]
        now = self._clock()
        self._log.info("timer_fired", session=entry.id, timer=cmd.name)
        rec = (eng.KIND_TIMER_FIRED, eng.encode_body(eng.TimerBody(name=cmd.name, deadline=now)))
        assert entry.monitor is not None
        try:
            entry.monitor.on_timeout()
        except AuraError as exc:
            return self._abort(entry, [rec], exc, now)
        step = self._run(entry, entry.driver.on_timer, eng.TimerFired(name=cmd.name, now=now),
                         [rec], now)
        self._retry_early(entry, now, step)
        return step

    # --- inbound ----------------------------------------------------------------------------

    def handle_inbound(self, data: InboundPayload) -> Step | None:
        peer = data.peer_name
        now = self._clock()
        try:
            wire = decode_wire(data.payload)
            env = wire.envelope
            spec = self.protocols.get(env.choreography)
            if spec is None:
                raise EnvelopeError(f"no protocol {env.choreography!r} on this node")
            key = self.peers.key(peer)
            if key is None or self.peers.device_id(peer) != data.device_id:
                raise EnvelopeError(f"{peer!r} is not a pinned peer (or its key changed)")
            opened = open_envelope(env, link_device_id=data.device_id, link_key=key,
                                   message_types=spec.message_types)
        except (RemoteProtocolError, BadSignatureError) as exc:
            self.rejected += 1
            self._log.warning("message_rejected", peer=peer, code=exc.code, reason=exc.message)
            return None

        if self._ended:
            self.prune(now)
        entry = self.sessions.get(env.session)
        if entry is None and self._journal_records is not None:
            journaled = self._journaled(env.session)
            if journaled is not None:
                # evicted from memory (ended long ago): answer from the journal, never re-open
                return self._inbound_evicted(env, journaled[1], peer, opened.digest,
                                             wire.replay, now)
        if entry is None:
            opener = spec.openers.get(env.step)
            if opener is None:
                self.rejected += 1
                self._log.info("unknown_session", session=env.session, peer=peer,
                               step=env.step, choreography=env.choreography)
                return None
            return self._open_responder(spec, opener, peer, opened.message, env,
                                        opened.digest, now)

        if entry.choreography != env.choreography:
            self.rejected += 1
            self._log.warning("message_rejected", session=entry.id, peer=peer,
                              code="wrong_choreography",
                              reason=f"session runs {entry.choreography}, "
                                     f"message is {env.choreography}/{env.step}")
            return None
        digest = opened.digest
        if digest in entry.seen:
            self.duplicates += 1
            if not wire.replay:
                return None
            # The peer restarted and re-sends from its journal: it may have lost what we sent.
            step = Step(session=entry.id, ts=now)
            for to, sent in entry.sent:
                if peer in to:
                    step.actions.append(Transmit(peer=peer, payload=encode_wire(sent)))
            self._log.info("replay_answered", session=entry.id, peer=peer,
                           resent=len(step.actions))
            return step if step.actions else None
        if entry.driver is None or not entry.active:
            self.rejected += 1
            self._log.info("session_closed", session=entry.id, peer=peer, step=env.step,
                           state=entry.outcome)
            return None
        return self._deliver(entry, peer, opened.message, env, digest, now, [])

    def _inbound_evicted(
        self, env: Envelope, evidence: Sequence[eng.Evidence], peer: str, digest: bytes,
        replay: bool, now: float,
    ) -> Step | None:
        """A message for a session only the journal remembers: the same answers the table
        entry would give (duplicate dropped, replay answered with our journaled envelopes,
        anything else refused as for a closed session), never a new session."""
        start = next(e.start for e in evidence if isinstance(e, eng.Started))
        if start.choreography != env.choreography:
            self.rejected += 1
            self._log.warning("message_rejected", session=env.session, peer=peer,
                              code="wrong_choreography",
                              reason=f"session ran {start.choreography}, "
                                     f"message is {env.choreography}/{env.step}")
            return None
        seen = any(isinstance(e, eng.Received) and e.envelope.digest == digest
                   for e in evidence)
        if not seen:
            self.rejected += 1
            self._log.info("session_closed", session=env.session, peer=peer, step=env.step,
                           state="evicted")
            return None
        self.duplicates += 1
        if not replay:
            return None
        step = Step(session=env.session, ts=now)
        for e in evidence:
            if isinstance(e, eng.Sent) and peer in e.to:
                step.actions.append(Transmit(peer=peer, payload=encode_wire(e.envelope)))
        self._log.info("replay_answered", session=env.session, peer=peer,
                       resent=len(step.actions), from_journal=True)
        return step if step.actions else None

    def _open_responder(
        self, spec: eng.ProtocolSpec, opener: eng.Opener, peer: str,
        message: msgspec.Struct, env: Envelope, digest: bytes, now: float,
    ) -> Step | None:
        start = eng.Start(
            session=env.session, choreography=spec.choreography, role=opener.role,
            self_name=self.self_name, roles={self.self_name: opener.role,
                                             peer: opener.sender_role},
            params={}, now=now, entropy=self._entropy(32), opened_by=peer,
        )
        try:
            driver = spec.driver_class(opener.role)(self.services)
            monitor = self._monitor_for(spec.choreography, opener.role,
                                        spec.bindings(start, message))
        except AuraError as exc:
            self._log.error("responder_open_failed", session=env.session, code=exc.code,
                            reason=exc.message)
            return None
        entry = SessionEntry(id=env.session, choreography=spec.choreography, role=opener.role,
                             started=now, driver=driver, monitor=monitor, opened_by=peer,
                             last_activity=now, roles=dict(start.roles))
        self.sessions[entry.id] = entry
        self._active.add(entry.id)
        self._log.info("session_opened", session=entry.id, choreography=entry.choreography,
                       role=entry.role, peer=peer)
        scratch = Step(session=entry.id, ts=now, records=[_start_record(start)])
        try:
            self._apply(entry, driver.start(start), scratch, now, None)
        except Exception as exc:
            return self._abort(entry, scratch.records[:1], exc, now)
        if not entry.active:
            return scratch
        return self._deliver(entry, peer, message, env, digest, now, scratch.records,
                             scratch.actions)

    def _deliver(
        self, entry: SessionEntry, peer: str, message: msgspec.Struct, env: Envelope,
        digest: bytes, now: float, pre: list[tuple[str, bytes]], pre_actions: Sequence[Any] = (),
    ) -> Step:
        step = Step(session=entry.id, ts=now, records=list(pre), actions=list(pre_actions))
        if self._deliver_one(entry, peer, message, env, digest, now, step):
            self._retry_early(entry, now, step)
        return step

    def _retry_early(self, entry: SessionEntry, now: float, step: Step) -> None:
        """The session advanced (a message, a timer, a control action): early messages may
        fit its new state now; deliver them in arrival order, adding to ``step``."""
        progress = True
        while progress and entry.early and entry.active:
            progress = False
            for item in list(entry.early):
                entry.early.remove(item)
                if self._deliver_one(entry, *item, now, step):
                    progress = True
                    break

    def _deliver_one(
        self, entry: SessionEntry, peer: str, message: msgspec.Struct, env: Envelope,
        digest: bytes, now: float, step: Step,
    ) -> bool:
        """Monitor-check and hand one message to the driver, adding to ``step``. True when the
        message was accepted (the session advanced)."""
        assert entry.driver is not None and entry.monitor is not None
        if not entry.active:
            return False
        sender_role = entry.driver.roles.get(peer)
        try:
            if sender_role is None:
                raise RemoteProtocolError(
                    f"{peer!r} has no role in session {entry.id} "
                    f"(roles: {dict(entry.driver.roles)})")
            if entry.monitor.is_abort(message) and not entry.driver.accepts_abort_from(
                    peer, sender_role):
                # this role may not end the session here (the driver says why it matters);
                # nothing changes, so nothing is journaled and the monitor is not stepped
                self._log.info("abort_not_accepted", session=entry.id, peer=peer,
                               role=sender_role,
                               reason=str(getattr(message, "reason", "")))
                return False
            objection = entry.driver.rejects_message(peer, sender_role, message)
            if objection is not None:
                raise DriverObjectionError(objection)
            entry.monitor.check_inbound(sender_role, message, member=peer)
        except RemoteProtocolError as exc:
            if exc.code == "early_message" and len(entry.early) < MAX_EARLY:
                entry.early.append((peer, message, env, digest))
                self._log.debug("message_early", session=entry.id, peer=peer, step=env.step)
                return False
            self.rejected += 1
            self._log.warning("misbehaviour", session=entry.id, peer=peer, code=exc.code,
                              reason=exc.message, step=env.step)
            body = eng.MisbehaviourBody(peer=peer, code=exc.code, reason=exc.message,
                                        envelope=encode_envelope(env))
            step.records.append((eng.KIND_MISBEHAVIOUR, eng.encode_body(body)))
            return False
        entry.seen.add(digest)
        self.accepted += 1
        entry.last_activity = now
        rec = (eng.KIND_IN, eng.encode_body(eng.InBody(
            sender=peer, sender_role=sender_role, envelope=encode_envelope(env), now=now)))
        if entry.monitor.is_abort(message):
            # the choreography's abort message: the session ends everywhere
            reason = str(getattr(message, "reason", "")) or "no reason given"
            step.records.append(rec)
            step.records.append((eng.KIND_FAIL, eng.encode_body(eng.FailBody(
                code="aborted_by_peer", reason=f"{peer} aborted: {reason}"))))
            self._finish(entry, step, now, error={"code": "aborted_by_peer",
                                                  "reason": f"{peer} aborted: {reason}"},
                         by_peer=peer)
            return True
        inp = eng.MessageIn(sender=peer, sender_role=sender_role, message=message,
                            envelope=env, now=now)
        sub = self._run(entry, entry.driver.on_message, inp, [rec], now)
        step.records.extend(sub.records)
        step.actions.extend(sub.actions)
        return True

    # --- running a driver -----------------------------------------------------------------------

    def _run(
        self, entry: SessionEntry, fn: Callable[[Any], list[eng.Effect]], inp: object,
        pre: list[tuple[str, bytes]], now: float, *, reply: Outcome | None = None,
    ) -> Step:
        scratch = Step(session=entry.id, ts=now, records=list(pre))
        try:
            effects = fn(inp)
            self._apply(entry, effects, scratch, now, reply)
        except Exception as exc:
            return self._abort(entry, pre, exc, now)
        return scratch

    def _apply(
        self, entry: SessionEntry, effects: Iterable[eng.Effect], step: Step, now: float,
        reply: Outcome | None,
    ) -> None:
        """Turn driver effects into journal records + actions (mutates ``step`` and ``entry``;
        on an exception the caller discards ``step`` and aborts the session)."""
        assert entry.driver is not None and entry.monitor is not None
        pending_sent: list[tuple[tuple[str, ...], Envelope]] = []
        groups = SendGroups()
        for eff in effects:
            if isinstance(eff, eng.Send):
                self._send(entry, eff, step, pending_sent, groups)
            elif isinstance(eff, eng.RecordEvidence):
                if eff.kind in eng.RUNTIME_KINDS:
                    raise eng.DriverError(f"driver may not write runtime record {eff.kind!r}")
                step.records.append((eff.kind, eff.body))
                if eff.kind.endswith(REJECTION_SUFFIXES):
                    self._log_rejection(entry, eff)
            elif isinstance(eff, eng.ArmTimer):
                gen = next(self._gen)
                step.records.append((eng.KIND_TIMER_ARM, eng.encode_body(
                    eng.TimerBody(name=eff.name, deadline=eff.deadline))))
                step.actions.append(Arm(session=entry.id, name=eff.name,
                                        deadline=eff.deadline, generation=gen))
                entry.timers[eff.name] = gen
            elif isinstance(eff, eng.CancelTimer):
                if entry.timers.pop(eff.name, None) is not None:
                    step.records.append((eng.KIND_TIMER_CANCEL, eng.encode_body(
                        eng.TimerBody(name=eff.name))))
                    step.actions.append(Disarm(session=entry.id, name=eff.name))
            elif isinstance(eff, eng.Reply):
                if reply is None:
                    raise eng.DriverError("Reply effect outside a control action")
                step.actions.append(Resolve(outcome=reply, value=eff.result))
            elif isinstance(eff, eng.Complete):
                result = dict(eff.result)
                step.records.append((eng.KIND_COMPLETE, eng.encode_body(
                    eng.CompleteBody(result=result))))
                self._finish(entry, step, now, result=result)
                break
            elif isinstance(eff, eng.Fail):
                step.records.append((eng.KIND_FAIL, eng.encode_body(
                    eng.FailBody(code=eff.code, reason=eff.reason))))
                self._finish(entry, step, now, error={"code": eff.code, "reason": eff.reason})
                break
            else:
                raise eng.DriverError(f"unknown effect {type(eff).__name__}")
        entry.sent.extend(pending_sent)

    def _log_rejection(self, entry: SessionEntry, eff: eng.RecordEvidence) -> None:
        """One clear line per peer message a driver rejected (``*.rejected``) or per
        equivocation it proved (``*.equivocation``); the record itself is the evidence."""
        self.rejected += 1
        if eff.kind.endswith(".equivocation"):
            try:
                peer = msgspec.msgpack.decode(eff.body).get("peer")
            except (msgspec.DecodeError, AttributeError):
                peer = None
            self._log.warning("protocol_rejected", session=entry.id, kind=eff.kind,
                              choreography=entry.choreography, peer=peer,
                              code="equivocation",
                              reason=f"{peer} signed two different messages for one step; "
                                     "both are journaled as evidence")
            return
        body = eng.decode_rejection(eff.body)
        self._log.warning("protocol_rejected", session=entry.id, kind=eff.kind,
                          choreography=entry.choreography,
                          peer=body.peer if body else None, code=body.code if body else "",
                          reason=body.reason if body else "")

    def _send(
        self, entry: SessionEntry, eff: eng.Send, step: Step,
        pending: list[tuple[tuple[str, ...], Envelope]], groups: SendGroups,
    ) -> None:
        assert entry.driver is not None and entry.monitor is not None
        roles = entry.driver.roles
        if not eff.to:
            raise eng.DriverError("Send effect with no recipients")
        members: list[tuple[str, str]] = []
        for name in eff.to:
            if name == self.self_name or name not in self.peers:
                raise eng.DriverError(f"cannot send to {name!r}: not a pinned peer")
            role = roles.get(name)
            if role is None:
                raise eng.DriverError(f"cannot send to {name!r}: no role in this session")
            members.append((name, role))
        groups.check(entry.monitor, members, eff.message)
        env = seal(self.key, choreography=entry.choreography, session=entry.id,
                   message=eff.message)
        step.records.append((eng.KIND_OUT, eng.encode_body(
            eng.OutBody(to=list(eff.to), envelope=encode_envelope(env)))))
        payload = encode_wire(env)
        step.actions.extend(Transmit(peer=name, payload=payload) for name in eff.to)
        pending.append((tuple(eff.to), env))

    def _finish(
        self, entry: SessionEntry, step: Step, now: float, *,
        result: dict[str, Any] | None = None, error: dict[str, str] | None = None,
        by_peer: str | None = None,
    ) -> None:
        for name in list(entry.timers):
            step.actions.append(Disarm(session=entry.id, name=name))
        entry.timers.clear()
        entry.early.clear()
        entry.ended = now
        if error is None:
            entry.outcome, entry.result = "completed", result or {}
            self._track(entry)
            step.actions.append(Resolve(outcome=entry.final, value=entry.result))
            self._log.info("session_completed", session=entry.id,
                           choreography=entry.choreography)
            return
        if entry.driver is not None:
            try:
                entry.driver.on_abort(error["reason"], by_peer=by_peer)
            except Exception as exc:  # the session is over either way
                self._log.warning("driver_on_abort_raised", session=entry.id, reason=repr(exc))
        if by_peer is None:
            self._fan_out_abort(entry, step, f"{error['code']}: {error['reason']}")
        entry.outcome, entry.error = "failed", error
        self._track(entry)
        step.actions.append(Resolve(outcome=entry.final, error=SessionFailedError(
            f"session {entry.id} failed: {error['code']}: {error['reason']}",
            failure_code=error["code"])))
        self._log.warning("session_failed", session=entry.id,
                          choreography=entry.choreography, **error)

    def _fan_out_abort(self, entry: SessionEntry, step: Step, reason: str) -> None:
        """Tell every other role the session is over, with the choreography's abort message
        (journaled, then sent, like any message)."""
        if entry.monitor is None or entry.driver is None:
            return
        try:
            message = entry.monitor.abort_message(reason)
            if message is None:
                return
            entry.monitor.on_abort()
            roles = {**entry.roles, **entry.driver.roles}
            to = tuple(n for n in roles if n != self.self_name and n in self.peers)
            for role in dict.fromkeys(roles[name] for name in to):
                entry.monitor.check_outbound(role, message)
        except Exception as exc:  # already final, or a broken driver: nothing to tell
            self._log.info("abort_not_sent", session=entry.id, reason=repr(exc))
            return
        if not to:
            return
        env = seal(self.key, choreography=entry.choreography, session=entry.id,
                   message=message)
        step.records.append((eng.KIND_OUT, eng.encode_body(
            eng.OutBody(to=list(to), envelope=encode_envelope(env)))))
        payload = encode_wire(env)
        step.actions.extend(Transmit(peer=name, payload=payload) for name in to)
        entry.sent.append((to, env))

    def _abort(self, entry: SessionEntry, pre: list[tuple[str, bytes]], exc: BaseException,
               now: float) -> Step:
        """An exception in a step: drop its effects, journal the abort, end only this session."""
        if isinstance(exc, AuraError):
            code, reason = exc.code, exc.message
        else:
            code, reason = "driver_error", f"{type(exc).__name__}: {exc}"
        self._log.error("session_step_raised", session=entry.id, code=code, reason=reason,
                        exc_info=not isinstance(exc, AuraError))
        step = Step(session=entry.id, ts=now, records=list(pre))
        step.records.append((eng.KIND_FAIL, eng.encode_body(eng.FailBody(code=code,
                                                                           reason=reason))))
        self._finish(entry, step, now, error={"code": code, "reason": reason})
        return step

    def _spec(self, choreography: str) -> eng.ProtocolSpec:
        spec = self.protocols.get(choreography)
        if spec is None:
            raise eng.ParamsError(
                f"no protocol {choreography!r} (have: {', '.join(sorted(self.protocols))})")
        return spec

    # --- rehydration -----------------------------------------------------------------------------

    def rehydrate(self, by_session: Mapping[str, Sequence[eng.EvidenceRecord]]) -> list[Step]:
        """Rebuild the session table from the journal; returns the steps to run first
        (re-sends of journaled envelopes, re-armed timers, aborts of unrecoverable sessions)."""
        now = self._clock()
        steps: list[Step] = []
        for sid, records in by_session.items():
            try:
                step = self._rehydrate_one(sid, records, now)
            except Exception as exc:  # one bad session must not keep the node down
                self._log.error("rehydrate_failed", session=sid, reason=repr(exc))
                continue
            if step is not None:
                steps.append(step)
        # journal order is start order: evict the oldest-*ended* first
        self._ended = dict(sorted(self._ended.items(), key=lambda kv: kv[1]))
        evicted = self.prune(now)
        self._log.info("rehydrated", sessions=len(self.sessions), evicted=evicted,
                       **self.counts())
        return steps

    def _rehydrate_one(
        self, sid: str, records: Sequence[eng.EvidenceRecord], now: float
    ) -> Step | None:
        records = sorted(records, key=lambda r: r.seq)
        evidence = eng.parse_evidence(records)
        start = next((e.start for e in evidence if isinstance(e, eng.Started)), None)
        if start is None:
            return None  # misbehaviour evidence about a session we never ran
        end = next((e for e in evidence if isinstance(e, eng.Ended)), None)
        entry = SessionEntry(id=sid, choreography=start.choreography, role=start.role,
                             started=start.now, driver=None, monitor=None,
                             opened_by=start.opened_by, roles=dict(start.roles),
                             last_activity=max(r.ts for r in records))
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
                entry.final.set(entry.result)
            else:
                entry.outcome, entry.error = "failed", {"code": end.code, "reason": end.reason}
                entry.final.fail(SessionFailedError(end.reason, failure_code=end.code))
            self._track(entry)
            if entry.last_activity >= now - self._resend_horizon:
                self._resend(entry, step)
            return step if step.actions else None

        spec = self.protocols.get(start.choreography)
        try:
            if spec is None:
                raise eng.DriverError(f"protocol {start.choreography!r} is not on this node")
            driver = spec.driver_class(start.role).rehydrate(records, self.services)
            if driver is None:
                raise eng.DriverError("the journal does not prove enough to continue")
            opening = next((_decode(spec, e.envelope) for e in evidence
                            if isinstance(e, eng.Received)), None) if start.opened_by else None
            monitor = self._monitor_for(start.choreography, start.role,
                                        spec.bindings(start, opening))
            # bring the monitor to the state the journal proves; the msg.out records of one
            # step are contiguous and share the batch timestamp: grouped as they were live
            ts_of = {r.seq: r.ts for r in records}
            groups, group_ts = SendGroups(), None
            for e in evidence:
                if not isinstance(e, eng.Sent) or ts_of.get(e.seq) != group_ts:
                    groups = SendGroups()
                    group_ts = ts_of.get(e.seq) if isinstance(e, eng.Sent) else None
                if isinstance(e, eng.Received):
                    monitor.check_inbound(e.sender_role, _decode(spec, e.envelope),
                                          member=e.sender)
                elif isinstance(e, eng.Sent):
                    msg = _decode(spec, e.envelope)
                    if monitor.is_abort(msg):
                        monitor.on_abort()
                        groups = SendGroups()
                    groups.check(monitor, [(name, driver.roles[name]) for name in e.to], msg)
                elif isinstance(e, eng.TimerEvent) and e.event == "fired":
                    monitor.on_timeout()
        except Exception as exc:
            entry.driver = None
            self._log.warning("rehydrate_abort", session=sid, reason=repr(exc))
            err = (exc if isinstance(exc, eng.NondeterminismError)
                   else eng.DriverError(f"rehydration failed: {exc}"))
            return self._abort(entry, [], err, now)
        entry.driver, entry.monitor = driver, monitor
        self._active.add(sid)
        self._log.info("session_rehydrated", session=sid, choreography=entry.choreography,
                       role=entry.role, phase=driver.status().get("phase"),
                       timers=sorted(timers))
        for name, deadline in timers.items():
            gen = next(self._gen)
            entry.timers[name] = gen
            step.actions.append(Arm(session=sid, name=name, deadline=deadline, generation=gen))
        self._resend(entry, step)
        resumed = self._run(entry, driver.resume, now, [], now)
        step.records.extend(resumed.records)
        step.actions.extend(resumed.actions)
        return step if step.actions or step.records else None

    def _resend(self, entry: SessionEntry, step: Step) -> None:
        for to, env in entry.sent:
            payload = encode_wire(env, replay=True)
            step.actions.extend(Transmit(peer=name, payload=payload) for name in to)


class SendGroups:
    """Which outbound interactions of one step the monitor has already stepped for.

    A send to a role set is one interaction of the local type, however it is split into
    ``Send`` effects: all members in one effect, or one effect per member with per-member
    content (sealed shares). Within one step the monitor is stepped for ``(role, message
    type)`` on its first member, and again only when a member already covered hears the same
    type again (then it is the next interaction, e.g. a second broadcast of that type).
    """

    __slots__ = ("_covered",)

    def __init__(self) -> None:
        self._covered: dict[tuple[str, type], set[str]] = {}

    def check(self, monitor: RoleMonitor, members: Sequence[tuple[str, str]],
              message: msgspec.Struct) -> None:
        """Check sending ``message`` to ``members`` ((name, role) pairs) with ``monitor``."""
        mtype = type(message)
        for name, role in members:
            key = (role, mtype)
            covered = self._covered.get(key)
            if covered is not None and name not in covered:
                covered.add(name)  # another member of a role set this step already sent to
                continue
            monitor.check_outbound(role, message)
            self._covered[key] = {name}


def _decode(spec: eng.ProtocolSpec, env: Envelope) -> Any:
    return eng.decode_message(env, spec.message_types[env.step])


def _start_record(start: eng.Start) -> tuple[str, bytes]:
    body = eng.StartBody(
        choreography=start.choreography, role=start.role, self_name=start.self_name,
        roles=dict(start.roles), params=dict(start.params), now=start.now,
        entropy=start.entropy, opened_by=start.opened_by,
    )
    return (eng.KIND_START, eng.encode_body(body))
