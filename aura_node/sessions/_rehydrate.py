"""Rehydration: the session table rebuilt from the journal after a restart.

Ended sessions come back as table entries without a driver (answers to duplicates and
replays, eviction as usual). Each active session gets its driver back from the protocol's
``rehydrate`` and its monitor brought to the state the journal proves (journaled sends grouped
per step as they were live, :class:`~aura_node.sessions._effects.SendGroups`); its timers are
re-armed and its journaled envelopes re-sent as replays, so a peer that lost them while we
were down gets them again. A session whose journal does not prove enough to continue is
aborted (journaled; its driver is gone, so no abort message goes out); one that cannot be read
at all is logged and skipped, so one bad session never keeps the node down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import Envelope, encode_wire
from aura_node.sessions._effects import EffectApplication, SendGroups
from aura_node.sessions._steps import Arm, Step, Transmit
from aura_node.sessions._table import SessionEntry, SessionFailedError


class Rehydration(EffectApplication):
    """Rebuilding the session table from the journal after a restart."""

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
        self._ended = OrderedDict(sorted(self._ended.items(), key=lambda kv: kv[1]))
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


def _decode(spec: eng.ProtocolSpec, env: Envelope) -> Any:
    return eng.decode_message(env, spec.message_types[env.step])
