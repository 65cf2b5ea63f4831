"""The session runtime: commands in, and the class that puts the jobs together.

:class:`SessionRuntime` is the session table (``_table``) with effect application
(``_effects``), inbound delivery (``_inbound``) and rehydration (``_rehydrate``), plus the
commands: an operator's start or control action, a timer expiry, a peer's link coming up.

Retransmission: when a peer's link comes (back) up (:class:`~aura_node.sessions.PeerUp`,
from the daemon's link watcher or the simulation's restart), every active session re-sends
the envelopes it journaled for that peer as plain duplicates; together with the re-send of
our own journaled envelopes after a restart this makes delivery end-to-end at-least-once for
active sessions, whichever side crashed or lost the message.
"""

from __future__ import annotations

from aura_node.errors import AuraError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import encode_wire
from aura_node.sessions._effects import _start_record
from aura_node.sessions._inbound import InboundDelivery
from aura_node.sessions._rehydrate import Rehydration
from aura_node.sessions._steps import (
    Command,
    PeerUp,
    Resolve,
    SessionControl,
    StartSession,
    Step,
    TimerExpired,
    Transmit,
)
from aura_node.sessions._table import (
    IncompatibleVersionError,
    SessionEntry,
    SessionFailedError,
    UnknownSessionError,
)


class SessionRuntime(InboundDelivery, Rehydration):
    """A node's sessions: every input in, one :class:`Step` out (see the package doc)."""

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
            refused = self.version_refusal(
                cmd.choreography, sorted(n for n in cmd.roles if n != self.self_name))
            if refused is not None:
                raise IncompatibleVersionError(f"cannot start {cmd.choreography}: {refused}")
            roles = dict(cmd.roles)  # one copy, shared by the Start and the table entry
            start = eng.Start(
                session=cmd.session, choreography=cmd.choreography, role=spec.initiator_role,
                self_name=self.self_name, roles=roles, params=params, now=now,
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
                             monitor=monitor, last_activity=now, roles=roles)
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
