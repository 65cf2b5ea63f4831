"""The session table: entries, counters, eviction, answers about evicted sessions.

One :class:`SessionEntry` per session this node runs or ran (driver, monitor, seen digests,
sent envelopes, armed timers, early messages, the ``final`` outcome), plus the counters
``ctl status`` reads and the pinned :class:`PeerDirectory`.

Bounded memory: an ended session keeps its table entry (result, seen digests, sent
envelopes) only ``ended_retention`` seconds and among the ``ended_cache`` most recently ended;
older ones are evicted, oldest-ended first, once their end is durable (``final`` resolved). The
journal keeps everything, so with ``journal_records`` (the journal's indexed
``session_records``) an evicted session is still answered from it: a late duplicate is dropped,
a replay gets our journaled envelopes again, any other message is refused as for a closed
session, an opener never starts a second session under a journaled id, and
:meth:`SessionTable.describe` reports it. Without ``journal_records`` nothing is evicted.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from aura_node.config import NodeConfig
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import LocalProtocolError, ProtocolError
from aura_node.logs import get_logger
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import Envelope
from aura_node.protocols.registry import Advertised, session_refusal
from aura_node.protocols.services import NodeServices
from aura_node.sessions._steps import Outcome


class SessionFailedError(ProtocolError):
    """A session ended in failure; ``failure_code`` is the driver's or runtime's code."""

    code = "session_failed"

    def __init__(self, message: str, *, failure_code: str) -> None:
        super().__init__(message)
        self.failure_code = failure_code



class UnknownSessionError(LocalProtocolError):
    code = "unknown_session"


class IncompatibleVersionError(LocalProtocolError):
    """A session of a choreography cannot start with a peer holding an incompatible version
    of it (the message names the choreography and both versions)."""

    code = "incompatible_version"


class RoleMonitor(Protocol):
    """The choreography monitor of one role in one session (``_monitors``)."""

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


def _unknown_peer(_name: str) -> Sequence[Advertised] | None:
    return None


def peer_directory(cfg: NodeConfig) -> PeerDirectory:
    return PeerDirectory({p.name: DevicePublicKey.from_hex(p.public_key) for p in cfg.peers})


class SessionTable:
    """The session table: entries by id, the counters ``ctl status`` reads, and eviction
    of ended sessions (answered from the journal afterwards)."""

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
        #: ended sessions still in ``sessions``, oldest-ended first. An OrderedDict, not a
        #: dict: ``prune`` runs on every input and pops from the front, which a plain dict
        #: does in O(1) only amortised over its rebuilds (its first live entry drifts right
        #: past deleted slots); the linked list finds the oldest in O(1) every time
        self._ended: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0
        self._active: set[str] = set()
        self._ended_outcomes = {"completed": 0, "failed": 0}
        self._ended_states: dict[str, int] = {}
        self._gen = itertools.count(1)
        self._log = get_logger("aura_node.runtime.sessions", node=self_name)
        self.accepted = 0
        self.rejected = 0
        #: the choreography versions this node advertises in its hello; empty: no version
        #: check (a table driven without a transport, e.g. the simulation)
        self.advertised: Sequence[Advertised] = ()
        #: what a peer's last hello advertised (None: never linked); the daemon sets it
        self.peer_choreographies: Callable[[str], Sequence[Advertised] | None] = _unknown_peer
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
        wait for the next call.

        Runs before every input, so it must cost O(1) plus O(1) per session it evicts: it
        looks at the oldest entry only, never copies or walks ``_ended`` (a copy of it per
        message was the intake regression of issue 14; ``test_intake_cost`` guards it)."""
        if self._journal_records is None:
            return 0  # nothing to answer evicted sessions from: keep them
        now = self._clock() if now is None else now
        horizon = now - self._ended_retention
        ended = self._ended
        gone = 0
        while ended:
            sid = next(iter(ended))
            if len(ended) <= self._ended_cache and ended[sid] > horizon:
                break
            entry = self.sessions.get(sid)
            if entry is not None and not entry.final.done:
                break
            ended.popitem(last=False)
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
        found = self._journal_records(session)
        if not found:
            return None  # the common case: every new session's opener asks
        records = sorted(found, key=lambda r: r.seq)
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

    def version_refusal(self, choreography: str, peers: Iterable[str]) -> str | None:
        """Why a session of ``choreography`` cannot run with ``peers`` (the first incompatible
        one), or ``None``. A peer never linked since this node started is not judged here:
        its own node refuses the session's first message if the versions do not fit."""
        if not self.advertised:
            return None
        for peer in peers:
            theirs = self.peer_choreographies(peer)
            if theirs is None:
                continue
            why = session_refusal(choreography, self.advertised, theirs, peer=peer)
            if why is not None:
                return why
        return None

    def get(self, session: str) -> SessionEntry:
        entry = self.sessions.get(session)
        if entry is None:
            raise UnknownSessionError(f"no session {session!r} on this node")
        return entry

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_hex(16)

    def _spec(self, choreography: str) -> eng.ProtocolSpec:
        spec = self.protocols.get(choreography)
        if spec is None:
            raise eng.ParamsError(
                f"no protocol {choreography!r} (have: {', '.join(sorted(self.protocols))})")
        return spec
