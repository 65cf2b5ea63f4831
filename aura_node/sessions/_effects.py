"""Effect application: a driver's effects become journal records and actions.

Outbound: every ``Send`` effect is checked against the sending role's monitor (a violation is a
bug in our driver: the session aborts), sealed (signed) once, journaled as ``msg.out`` and only
then transmitted by the executor. A send to a role set is *one* interaction of the local type:
the monitor steps once per distinct recipient role, and a driver that gives each member its own
content (genesis seals a different share to every holder) emits one ``Send`` per member within
one step - those are the same interaction too (:class:`SendGroups`), so the monitor steps on
the first member of a role and again only when a member hears the same message type twice.

Ending a session (``Complete``, ``Fail``, an exception) disarms its timers, resolves its
``final`` outcome after the journal commit, and on a local failure fans the choreography's
abort message out to every other role.

Isolation: any exception from a driver, or a local monitor violation, aborts only that session
(``session.fail`` journaled, logged with the session id); the step's other effects are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from aura_node.errors import AuraError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import Envelope, encode_envelope, encode_wire, seal
from aura_node.sessions._steps import Arm, Disarm, Outcome, Resolve, Step, Transmit
from aura_node.sessions._table import RoleMonitor, SessionEntry, SessionFailedError, SessionTable

#: driver record kinds that reject a peer's message (``genesis.rejected``, ``dkd.rejected``,
#: ``recovery.rejected``, ``dkd.equivocation``): logged as they are journaled
REJECTION_SUFFIXES = (".rejected", ".equivocation")


class EffectApplication(SessionTable):
    """Running a driver: its effects become journal records and actions."""

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
        # made on the first Send: most steps send nothing (a responder's start, a completion)
        pending_sent: list[tuple[tuple[str, ...], Envelope]] | None = None
        groups: SendGroups | None = None
        for eff in effects:
            if isinstance(eff, eng.Send):
                if groups is None or pending_sent is None:
                    groups, pending_sent = SendGroups(), []
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
                self._finish(entry, step, now, error={"code": eff.code, "reason": eff.reason},
                             tell_peers=eff.tell_peers)
                break
            else:
                raise eng.DriverError(f"unknown effect {type(eff).__name__}")
        if pending_sent:
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
        by_peer: str | None = None, tell_peers: bool = True,
    ) -> None:
        if entry.timers:
            step.actions.extend(Disarm(session=entry.id, name=name) for name in entry.timers)
            entry.timers.clear()
        if entry.early:
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
        if by_peer is None and tell_peers:
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



def _start_record(start: eng.Start) -> tuple[str, bytes]:
    body = eng.StartBody(
        choreography=start.choreography, role=start.role, self_name=start.self_name,
        roles=dict(start.roles), params=dict(start.params), now=start.now,
        entropy=start.entropy, opened_by=start.opened_by,
    )
    return (eng.KIND_START, eng.encode_body(body))
