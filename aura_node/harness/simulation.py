"""Deterministic simulation of the protocol layer: the same code, a seeded world.

Theory of operation
-------------------
In the FoundationDB/TigerBeetle spirit, everything that is not protocol code is replaced by a
seeded model, and everything that *is* protocol code is the real thing:

real                                            simulated
----                                            ---------
the session runtime (``SessionRuntime``:        network: per-message delay, drop, duplicate,
  session table, monitors in front of the         reorder (links are FIFO unless reordered)
  drivers, early messages, abort fan-out,       clock: virtual seconds; timers fire in order
  replay answers, rehydration)                  crashes: at a journal append (the group is lost,
pure drivers (genesis, DKD, recovery)             torn, or durable with its sends lost), then a
choreography monitors (``sessions._monitors``)    restart after a random downtime
signed envelopes (``DeviceKey.from_seed``)      operators: scheduled ``start`` / ``approve`` /
journal format (``BatchEncoder`` records,         ``veto`` calls
  signed checkpoints, ``scan_segment``)         executor + timer wheel: :meth:`Simulation._commit`

Each node runs the daemon's own :class:`~aura_node.sessions.SessionRuntime` over a
:class:`~aura_node.harness.sim_journal.MemoryJournal` (the on-disk format, in memory). The
runtime is synchronous at its core: every input (``handle_command`` for a start, a control
action or a timer expiry; ``handle_inbound`` for a payload; ``rehydrate`` after a restart)
returns a :class:`~aura_node.sessions.Step` of journal records and actions, and the
simulation does with it what the Trio executor does, in the same order: journal the records
(one group commit, where a crash may strike), then perform the actions - ``Transmit`` to the
seeded network, ``Arm``/``Disarm`` to the node's virtual timer table (fired back as
``TimerExpired`` with the armed generation), ``Resolve`` to the operator's waiting
:class:`~aura_node.sessions.Outcome`. A crash drops the runtime and its timers; a restart
builds a fresh runtime and hands it the journal, then tells every running peer's runtime that
its link to the restarted node is up (``PeerUp``, as the daemon's link watcher does), so they
re-send what their active sessions sent it.

:class:`Simulation` owns one ``random.Random(seed)``: every choice (delays, faults, session
ids, entropy, crash points, who runs what and when) is a draw from it, in an order that depends
only on earlier draws, so one seed gives one schedule and a byte-identical
:attr:`Simulation.log`. Crypto that the protocols draw from the OS on purpose (the genesis
secret, HPKE ephemeral keys) changes ciphertexts and keys between runs but never the schedule:
the log records structure (who, what step, when, which fault), not content.

Scenarios (:data:`SCENARIOS`) build a world, schedule operator actions, inject faults until a
heal time, run until nothing is left to do, and check the invariants over every node's
journal with the cluster checkers of :mod:`aura_node.harness.invariants` (journals verify,
evidence signed, no equivocation, DKD agreement, every session ended within its deadline after
the heal) plus scenario checks (one account view per account; every completed DKD derived the
key ``s·H`` computed directly from the shares; a recovered device holds the original account
key; a guardian releases its share only after an accepted ``ShareRequest`` and its own cooldown,
never after a veto or its own deadline).

The same world is the protocol tests' harness (there is no other in-memory runtime: a test
that drives a protocol drives the daemon's runtime). Tests observe what a node does, not what
a driver holds: :meth:`Simulation.describe` / :meth:`Simulation.status` (``ctl session show``),
the journal views of :class:`SimNode` (``sent``, ``rejections``, ``misbehaviour``,
``evidence``), :meth:`Simulation.timer`; they act as operators (:meth:`Simulation.start`,
:meth:`Simulation.control`, :meth:`Simulation.at`) or as a hostile peer or network
(``intercept`` to alter, drop or hold a payload in flight, :meth:`Simulation.inject` /
:meth:`Simulation.post` to deliver one now or later, sealed with the peer's own key), and crash
nodes (:meth:`Simulation.crash`, :meth:`Simulation.crash_at_append`). An account "as a genesis
would leave it" is dealt without running one by :func:`dealt_account` (pure: the record and
each holder's sealed share) and :meth:`Simulation.deal_account` (journaled on each holder):
the one dealt-account fixture of the tests and the benchmarks.

Use: ``python -m aura_node.harness.simulation --protocol all --seed 7 --seeds 1000``; a
failing seed prints its violations, and ``--seed N --log`` replays it with the event log
(``--runtime-log info`` adds the runtimes' own log lines on stderr).
Pure: no trio, no sockets, no wall clock, no disk.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

from aura_node.config import DkdRule, DkdSection, ProtocolSection
from aura_node.crypto import dkd
from aura_node.crypto.dealing import Holder
from aura_node.crypto.dealing import deal_account as deal_shares
from aura_node.crypto.group import Rng, Scalar, seeded_rng
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.shamir import reconstruct
from aura_node.errors import AuraError
from aura_node.harness import invariants as inv
from aura_node.harness.sim_journal import MemoryJournal
from aura_node.journal import format as jf
from aura_node.logs import configure_logging
from aura_node.protocols import engine as eng
from aura_node.protocols.account import (
    KIND_ACCOUNT,
    AccountEstablished,
    AccountHolder,
    AccountRecord,
    AccountStore,
    encode_established,
    genesis_held_share,
    open_held_share,
)
from aura_node.protocols.dkd.consent import KIND_CONSENT, ConsentKeeper
from aura_node.protocols.envelope import Envelope, decode_wire, encode_wire
from aura_node.protocols.epochs import KIND_EPOCH_FACT
from aura_node.protocols.services import NodeServices, PeerInfo, PeerRole
from aura_node.sessions import (
    Arm,
    Disarm,
    Outcome,
    PeerDirectory,
    PeerUp,
    Resolve,
    SessionControl,
    SessionEntry,
    SessionRuntime,
    StartSession,
    Step,
    TimerExpired,
    Transmit,
    choreography_monitor,
)

#: protocol deadlines in the simulated world (seconds of virtual time)
SIM_PROTOCOLS = ProtocolSection(
    recovery_cooldown_seconds=20.0, dkd_timeout_seconds=15.0, genesis_timeout_seconds=15.0,
    recovery_approval_timeout_seconds=30.0, recovery_share_timeout_seconds=20.0,
    reshare_timeout_seconds=15.0,
)
START_TIME = 1000.0
CRASH_MODES = ("lost", "torn", "after")


class SimulationError(AuraError):
    """The simulation itself was misused or did not settle."""

    code = "simulation_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What the world does wrong, until virtual time ``until`` (the heal)."""

    drop: float = 0.0
    duplicate: float = 0.0
    #: chance that a message leaves its link's FIFO order (extra delay up to reorder_window)
    reorder: float = 0.0
    reorder_window: float = 2.0
    #: one-way delay range, seconds
    delay: tuple[float, float] = (0.001, 0.05)
    #: chance that a node crashes at a journal append
    crash: float = 0.0
    downtime: tuple[float, float] = (0.2, 4.0)
    until: float = math.inf

    @classmethod
    def chaos(cls, until: float, *, intensity: float = 1.0) -> Faults:
        return cls(drop=0.05 * intensity, duplicate=0.1 * intensity, reorder=0.1 * intensity,
                   crash=0.03 * intensity, until=until)

    @property
    def settle_after(self) -> float:
        """Virtual time by which every fault's effect is over (crashed nodes are back)."""
        return self.until + self.downtime[1] + self.delay[1] + self.reorder_window


@dataclass(slots=True, kw_only=True)
class SimNode:
    name: str
    role: PeerRole
    key: DeviceKey
    peers: dict[str, PeerInfo]
    protocols: ProtocolSection
    journal: MemoryJournal
    accounts: AccountStore = field(default_factory=AccountStore)
    runtime: SessionRuntime | None = None
    #: (session, timer name) -> (deadline, generation): the Arm/Disarm actions performed, the
    #: node's timer wheel (lost in a crash; rehydration re-arms from the journal)
    timers: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    crashes: int = 0
    #: journal appends (group commits attempted) here: :meth:`Simulation.crash_at_append`
    appends: int = 0
    #: the node's ``[dkd]`` section and ``[[dkd.policy]]`` rules (its config: kept across
    #: restarts; the rate limiter's memory is not, as on a real node)
    dkd: DkdSection = field(default_factory=DkdSection)
    dkd_policy: tuple[DkdRule, ...] = ()

    @property
    def up(self) -> bool:
        return self.runtime is not None

    @property
    def services(self) -> NodeServices:
        if self.runtime is None:
            raise SimulationError(f"{self.name} is down")
        return self.runtime.services

    def session(self, sid: str) -> SessionEntry | None:
        return None if self.runtime is None else self.runtime.sessions.get(sid)

    def records(self, session: str | None = None) -> list[jf.JournalRecord]:
        return [r for r in self.journal.records() if session is None or r.session == session]

    def journal_bytes(self) -> bytes:
        """The node's journal as it would sit on disk (for "never journaled" checks)."""
        return bytes(self.journal.data)

    def evidence(self, session: str) -> list[eng.Evidence]:
        """The session's journal records parsed as protocol evidence, in journal order."""
        return eng.parse_evidence(self.records(session))

    def sent(self, session: str | None = None) -> list[tuple[tuple[str, ...], Envelope]]:
        """(recipients, envelope) of every ``msg.out`` journaled here (of ``session``)."""
        out = []
        for rec in self.records(session):
            if rec.kind == eng.KIND_OUT:
                ev = eng.parse_record(rec)
                assert isinstance(ev, eng.Sent)
                out.append((ev.to, ev.envelope))
        return out

    def sent_steps(self, session: str | None = None) -> list[str]:
        """The message type of every envelope journaled as sent here (of ``session``)."""
        return [env.step for _, env in self.sent(session)]

    def rejections(self, session: str | None = None) -> list[eng.RejectionBody]:
        """Peer messages a protocol refused here, as journaled (``<protocol>.rejected``)."""
        out = []
        for rec in self.records(session):
            if rec.kind.endswith(".rejected"):
                body = eng.decode_rejection(rec.body)
                assert body is not None, rec
                out.append(body)
        return out

    def misbehaviour(self, session: str | None = None) -> list[eng.MisbehaviourBody]:
        """Peer messages the runtime refused here and journaled as evidence (monitor
        violations, driver objections, senders without a role)."""
        return [msgspec.msgpack.decode(r.body, type=eng.MisbehaviourBody)
                for r in self.records(session) if r.kind == eng.KIND_MISBEHAVIOUR]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Link:
    """One payload as the transport hands it to the runtime (``InboundData``): the peer the
    link authenticated (its name as the receiver pins it, its device id) and the bytes."""

    peer_name: str
    device_id: str
    payload: bytes


@dataclass(slots=True)
class _Stats:
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    lost_down: int = 0
    crashes: int = 0
    appends: int = 0
    timers: int = 0


def node_key(seed: int, name: str) -> DeviceKey:
    return DeviceKey.from_seed(hashlib.sha256(f"aura-sim/{seed}/{name}".encode()).digest())


class Simulation:
    """A seeded world of nodes (see the module docstring)."""

    def __init__(
        self, seed: int, nodes: Mapping[str, PeerRole], *, faults: Faults | None = None,
        protocols: ProtocolSection = SIM_PROTOCOLS,
        pins: Mapping[str, Sequence[str]] | None = None,
        crash_at: Mapping[int, str] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = START_TIME
        self.faults = faults or Faults()
        #: append number (1-based, over all nodes) -> crash mode, whatever ``faults`` says
        self.crash_at = dict(crash_at or {})
        #: (node, its k-th append, 1-based) -> crash mode: see :meth:`crash_at_append`
        self.node_crash_at: dict[tuple[str, int], str] = {}
        #: a misbehaving network / peer for tests: called with (src, dst, payload) for every
        #: transmitted payload before the faults apply; returns the payload to send (possibly
        #: altered) or None to drop it. Draws nothing from the rng, so replay is unaffected.
        self.intercept: Callable[[str, str, bytes], bytes | None] | None = None
        #: nodes cut off from the network (everything to or from them is lost) until healed
        self.isolated: set[str] = set()
        #: an at-least-once transport: a payload for a down node (or whose journaling crashed
        #: the receiver) waits and is delivered again after the node's restart, instead of
        #: being lost. Off by default (the daemon's transport does not promise this; the
        #: runtime's re-send on ``PeerUp`` at the restart recovers what active sessions lost).
        self.hold_while_down = False
        self._held: dict[str, list[tuple[str, bytes]]] = {}
        self.log: list[str] = []
        self.stats = _Stats()
        self.steps = 0
        self._order = 0
        self._agenda: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._calls: dict[int, Callable[[], object]] = {}
        self._link_clock: dict[tuple[str, str], float] = {}
        keys = {n: node_key(seed, n) for n in nodes}
        self.nodes: dict[str, SimNode] = {}
        for name, role in nodes.items():
            visible = list(pins[name]) if pins and name in pins else list(nodes)
            peers = {p: PeerInfo(name=p, role=nodes[p], public_key=keys[p].public)
                     for p in visible if p != name}
            node = SimNode(name=name, role=role, key=keys[name], peers=peers,
                           protocols=protocols,
                           journal=MemoryJournal(keys[name], journal_id=f"sim-{name}"))
            node.runtime = self._runtime(node)
            self.nodes[name] = node

    # --- plumbing -------------------------------------------------------------------------------

    def _runtime(self, node: SimNode) -> SessionRuntime:
        """The node's real session runtime; time and entropy come from this world."""
        services = NodeServices(self_name=node.name, self_role=node.role, device_key=node.key,
                                peers=node.peers, accounts=node.accounts,
                                protocols=node.protocols,
                                dkd_consent=ConsentKeeper(section=node.dkd,
                                                          rules=node.dkd_policy))
        return SessionRuntime(
            key=node.key, self_name=node.name,
            peers=PeerDirectory({n: p.public_key for n, p in node.peers.items()}),
            protocols=_protocols(), monitor_for=choreography_monitor, services=services,
            clock=lambda: self.now, entropy=self.rng.randbytes)

    def set_dkd_policy(self, node: str, *, section: DkdSection | None = None,
                       rules: Sequence[DkdRule] = ()) -> None:
        """Configure ``node``'s DKD consent (as its config would); applies now and after
        restarts."""
        n = self.nodes[node]
        n.dkd, n.dkd_policy = section or DkdSection(), tuple(rules)
        if n.runtime is not None:
            n.runtime.services.dkd_consent = ConsentKeeper(section=n.dkd, rules=n.dkd_policy)

    def note(self, text: str) -> None:
        self.log.append(f"{self.now:.6f} {text}")

    def log_bytes(self) -> bytes:
        return ("\n".join(self.log) + "\n").encode()

    def log_digest(self) -> str:
        return hashlib.sha256(self.log_bytes()).hexdigest()

    def _schedule(self, at: float, kind: str, args: tuple[Any, ...]) -> None:
        self._order += 1
        heapq.heappush(self._agenda, (at, self._order, kind, args))

    def faulty(self) -> bool:
        return self.now < self.faults.until

    def new_session_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def node(self, name: str) -> SimNode:
        return self.nodes[name]

    def crash_at_append(self, node: str, k: int, mode: str = "lost") -> None:
        """Crash ``node`` at its ``k``-th journal append (1-based), whatever ``faults`` says;
        ``mode`` is one of :data:`CRASH_MODES`."""
        if mode not in CRASH_MODES:
            raise SimulationError(f"crash mode {mode!r} is not one of {CRASH_MODES}")
        self.node_crash_at[(node, k)] = mode

    def deal_account(self, devices: Sequence[str], t: int, guardians: Sequence[str] = (),
                     tg: int = 0, *, secret: Scalar | None = None) -> AccountRecord:
        """Give ``devices`` (``t`` of them needed) and ``guardians`` (``tg``) an account as a
        genesis would leave it, without running one: each holder journals its own
        ``account.established`` record (one append, as the genesis' last step would) and its
        account store learns it. The secret is drawn from this world's rng unless given."""
        sid = self.new_session_id()
        established = dealt_account(
            {n: self.nodes[n].key.public for n in devices}, t,
            {n: self.nodes[n].key.public for n in guardians}, tg, secret=secret,
            rng=seeded_rng(self.rng.randbytes(32)), session_id=sid)
        for name, est in established.items():
            node = self.nodes[name]
            if node.runtime is None:
                raise SimulationError(f"cannot deal an account to {name}: it is down")
            self._commit(node, Step(session=sid, ts=self.now, records=[
                (KIND_ACCOUNT, encode_established(est))]))
        self.note(f"dealt {t}-of-{len(devices)} account to {len(established)} holders")
        return next(iter(established.values())).account

    def journal_records(self, node: str, records: Sequence[tuple[str, bytes]], *,
                        session: str = "") -> bool:
        """Journal ``records`` ((kind, body) each) on ``node`` now, as one group commit
        followed by the node's account fold (evidence a test made offline, such as an epoch
        fact built without a reshare). False when the node crashed at this append."""
        n = self.nodes[node]
        if n.runtime is None:
            raise SimulationError(f"cannot journal on {node}: it is down")
        return self._commit(n, Step(session=session, ts=self.now, records=list(records)))

    # --- operators --------------------------------------------------------------------------------

    def at(self, when: float, label: str, fn: Callable[[], object]) -> None:
        """Run ``fn`` at virtual time ``when`` (an operator action, a scenario step)."""
        self._order += 1
        self._calls[self._order] = fn
        heapq.heappush(self._agenda, (when, self._order, "call", (label, self._order)))

    def start(self, node: str, choreography: str, *, roles: Mapping[str, str],
              params: Mapping[str, Any], session: str | None = None) -> str:
        """Start a session on ``node`` now (raises like ``ctl`` on bad params / a down node)."""
        n = self.nodes[node]
        if n.runtime is None:
            raise SimulationError(f"cannot start {choreography} on {node}: it is down")
        sid = session or self.new_session_id()
        reply = Outcome()
        step = n.runtime.handle_command(StartSession(
            choreography=choreography, params=params, roles=roles, session=sid,
            entropy=self.rng.randbytes(32), reply=reply))
        if step is None:  # refused before anything was journaled (bad parameters)
            assert reply.error is not None
            raise reply.error
        self.note(f"{node} start {choreography} {sid[:8]}")
        self._commit(n, step)
        return sid

    def control(self, node: str, session: str, action: str,
                args: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """An operator action; the runtime's answer, or None when the node crashed journaling
        it or the action ended the session in failure. Raises when the node is down or the
        session is not active there."""
        n = self.nodes[node]
        if n.runtime is None:
            raise SimulationError(f"cannot {action} on {node}: it is down")
        reply = Outcome()
        step = n.runtime.handle_command(SessionControl(
            session=session, action=action, args=dict(args or {}), reply=reply))
        if step is None:
            assert reply.error is not None
            raise reply.error
        self.note(f"{node} control {action} {session[:8]}")
        return reply.value if self._commit(n, step) else None

    # --- journal, crash, restart ------------------------------------------------------------------

    def _commit(self, node: SimNode, step: Step) -> bool:
        """Journal ``step`` (one group commit), then perform its actions as the executor does:
        sends to the network, timers to the virtual clock, answers to the waiting operator.
        False when the node crashed at this append point (no action runs)."""
        if step.records:
            self.stats.appends += 1
            node.appends += 1
            idx = self.stats.appends
            entries = [jf.JournalEntry(session=step.session, kind=k, body=b, ts=step.ts)
                       for k, b in step.records]
            batch = node.journal.encode(entries)
            mode = self.crash_at.get(idx, self.node_crash_at.get((node.name, node.appends)))
            if mode is None and self.faulty() and self.faults.crash > 0:
                if self.rng.random() < self.faults.crash:
                    mode = self.rng.choice(CRASH_MODES)
            if mode is not None:
                if mode == "torn":
                    node.journal.tear(batch, self.rng.randrange(len(batch.data)))
                elif mode == "after":
                    node.journal.commit(batch)
                self._crash(node, f"{mode} at append {idx}")
                return False
            node.journal.commit(batch)
            for kind, body in step.records:
                if kind in (KIND_ACCOUNT, KIND_EPOCH_FACT):  # the daemon's account fold
                    node.accounts.fold(kind, body)
                elif kind in (eng.KIND_COMPLETE, eng.KIND_FAIL):
                    self._note_end(node, step.session, kind, body)
        for action in step.actions:
            if isinstance(action, Transmit):
                self._transmit(node.name, action.peer, action.payload)
            elif isinstance(action, Arm):
                node.timers[(action.session, action.name)] = (action.deadline,
                                                              action.generation)
            elif isinstance(action, Disarm):
                node.timers.pop((action.session, action.name), None)
            elif isinstance(action, Resolve):
                if action.error is not None:
                    action.outcome.fail(action.error)
                else:
                    action.outcome.set(action.value or {})
        return True

    def _note_end(self, node: SimNode, sid: str, kind: str, body: bytes) -> None:
        if kind == eng.KIND_COMPLETE:
            self.note(f"{node.name} end {sid[:8]} completed")
        else:
            fail = msgspec.msgpack.decode(body, type=eng.FailBody)
            self.note(f"{node.name} end {sid[:8]} failed {fail.code}")

    def crash(self, name: str, *, downtime: float | None = None) -> None:
        """Crash ``name`` now (between steps); it restarts after ``downtime``."""
        self._crash(self.nodes[name], "by request", downtime=downtime)

    def _crash(self, node: SimNode, why: str, *, downtime: float | None = None) -> None:
        if node.runtime is None:
            return
        node.runtime = None
        node.timers.clear()
        node.crashes += 1
        self.stats.crashes += 1
        lo, hi = self.faults.downtime
        down = self.rng.uniform(lo, hi) if downtime is None else downtime
        self.note(f"{node.name} crash ({why}) down {down:.3f}")
        self._schedule(self.now + down, "restart", (node.name,))

    def restart(self, name: str) -> None:
        """Bring ``name`` back now: reopen its journal, rebuild accounts and sessions."""
        node = self.nodes[name]
        if node.runtime is not None:
            return
        node.journal.reopen()
        by_session = node.journal.by_session()
        node.accounts = AccountStore.from_records(
            (r.kind, r.body) for r in node.journal.records())
        rt = self._runtime(node)
        node.runtime = rt
        rt.services.dkd_consent.recall(  # as the daemon does at start-up
            ((sid, r.body) for sid, recs in by_session.items() for r in recs
             if r.kind == KIND_CONSENT), now=self.now)
        steps = rt.rehydrate(by_session)
        self.note(f"{name} restart sessions {len(rt.sessions)} steps {len(steps)}")
        for step in steps:
            if not self._commit(node, step):
                return  # crashed again while resuming
        # its links come back up: every peer that pins it re-sends what its active sessions
        # sent it (the daemon's PeerUp), covering what it lost while down or while journaling
        for peer in self.nodes.values():
            if peer.runtime is None or peer.name == name or name not in peer.peers:
                continue
            up = peer.runtime.handle_command(PeerUp(peer=name))
            if up is not None:
                self.note(f"{peer.name} peer-up {name} resend {len(up.actions)}")
                self._commit(peer, up)
        for src, payload in self._held.pop(name, []):
            self._schedule(self.now, "deliver", (src, name, payload))

    # --- network ------------------------------------------------------------------------------

    def inject(self, src: str, dst: str, message: Envelope | bytes, *,
               replay: bool = False) -> None:
        """Hand ``dst``'s runtime a payload from ``src``'s link now, past the network's
        faults and ``intercept`` (a misbehaving peer's forged or replayed message, or a held
        one delivered late). An envelope is framed as ``src``'s transport would frame it."""
        payload = message if isinstance(message, bytes) else encode_wire(message, replay=replay)
        self.note(f"inject {src}->{dst} {_describe(payload)}")
        self._deliver(src, dst, payload)

    def post(self, src: str, dst: str, message: Envelope | bytes, *,
             at: float | None = None) -> None:
        """Deliver a payload from ``src`` to ``dst`` at virtual time ``at`` (default: now,
        after what is already due now), past the faults and ``intercept``: for tests that hold
        a message back in ``intercept`` and let it go later."""
        payload = message if isinstance(message, bytes) else encode_wire(message)
        self._schedule(self.now if at is None else at, "deliver", (src, dst, payload))

    def _transmit(self, src: str, dst: str, payload: bytes) -> None:
        if src in self.isolated or dst in self.isolated:
            self.note(f"cut {src}->{dst} {_describe(payload)}")
            return
        if self.intercept is not None:
            altered = self.intercept(src, dst, payload)
            if altered is None:
                self.note(f"intercepted {src}->{dst} {_describe(payload)}")
                return
            payload = altered
        f = self.faults
        faulty = self.faulty()
        if faulty and f.drop and self.rng.random() < f.drop:
            self.stats.dropped += 1
            self.note(f"drop {src}->{dst} {_describe(payload)}")
            return
        copies = 2 if faulty and f.duplicate and self.rng.random() < f.duplicate else 1
        if copies == 2:
            self.stats.duplicated += 1
        link = (src, dst)
        for _ in range(copies):
            at = self.now + self.rng.uniform(*f.delay)
            if faulty and f.reorder and self.rng.random() < f.reorder:
                self.stats.reordered += 1
                at += self.rng.uniform(0.0, f.reorder_window)  # overtaken by later messages
            else:
                at = max(at, self._link_clock.get(link, 0.0))  # TCP: FIFO per link
                self._link_clock[link] = at
            self._schedule(at, "deliver", (src, dst, payload))

    def _deliver(self, src: str, dst: str, payload: bytes) -> None:
        node = self.nodes[dst]
        if node.runtime is None:
            if self.hold_while_down:
                self._held.setdefault(dst, []).append((src, payload))
                self.note(f"held {src}->{dst} {_describe(payload)} (down)")
                return
            self.stats.lost_down += 1
            self.note(f"lost {src}->{dst} {_describe(payload)} (down)")
            return
        self.stats.delivered += 1
        self.note(f"deliver {src}->{dst} {_describe(payload)}")
        # the link authenticates the sender's real key, pinned by the receiver or not (an
        # unpinned peer is refused by the runtime, as the transport would refuse the link)
        step = node.runtime.handle_inbound(_Link(
            peer_name=src, device_id=self.nodes[src].key.device_id, payload=payload))
        if step is not None and not self._commit(node, step) and self.hold_while_down:
            self._held.setdefault(dst, []).append((src, payload))  # not taken: sent again

    # --- the scheduler ----------------------------------------------------------------------------

    def _next_timer(self) -> tuple[float, SimNode, str, str, int] | None:
        best: tuple[float, SimNode, str, str, int] | None = None
        for node in self.nodes.values():
            if node.runtime is None:
                continue
            for (sid, name), (deadline, gen) in node.timers.items():
                if best is None or deadline < best[0]:
                    best = (deadline, node, sid, name, gen)
        return best

    def next_time(self) -> float | None:
        timer = self._next_timer()
        times = [t for t in (timer[0] if timer else None,
                             self._agenda[0][0] if self._agenda else None) if t is not None]
        return min(times) if times else None

    def step(self) -> bool:
        """Run the next event (a due timer wins a tie); False when nothing is left."""
        timer = self._next_timer()
        if timer is None and not self._agenda:
            return False
        self.steps += 1
        if timer is not None and (not self._agenda or timer[0] <= self._agenda[0][0]):
            deadline, node, sid, name, gen = timer
            self.now = max(self.now, deadline)
            self.stats.timers += 1
            self.note(f"{node.name} timer {name} {sid[:8]}")
            assert node.runtime is not None
            del node.timers[(sid, name)]
            step = node.runtime.handle_command(TimerExpired(session=sid, name=name,
                                                            generation=gen))
            if step is not None:
                self._commit(node, step)
            return True
        at, _, kind, args = heapq.heappop(self._agenda)
        self.now = max(self.now, at)
        if kind == "deliver":
            self._deliver(*args)
        elif kind == "restart":
            self.restart(args[0])
        else:
            label, order = args
            fn = self._calls.pop(order)
            try:
                fn()
            except AuraError as exc:  # an operator mistake (down node, ended session)
                self.note(f"call {label} refused: {exc.code}")
        return True

    def run(self, *, until: float | None = None, max_steps: int = 200_000) -> int:
        """Run events until none is left (or the next is after ``until``); the steps run.
        Raises :class:`SimulationError` past ``max_steps`` (a livelock)."""
        n = 0
        while True:
            if until is not None:
                nxt = self.next_time()
                if nxt is None or nxt > until:
                    self.now = max(self.now, until)
                    return n
            if not self.step():
                return n
            n += 1
            if n >= max_steps:
                raise SimulationError(
                    f"seed {self.seed}: no quiescence after {max_steps} steps at t={self.now:.3f}")

    # --- queries ------------------------------------------------------------------------------

    def describe(self, node: str, sid: str) -> dict[str, Any]:
        """What ``ctl session show`` answers on ``node`` for ``sid`` (its runtime's view:
        outcome, state, the protocol's own ``status``, result or error)."""
        n = self.nodes[node]
        if n.runtime is None:
            raise SimulationError(f"cannot describe {sid} on {node}: it is down")
        return n.runtime.describe(sid)

    def status(self, node: str, sid: str) -> dict[str, Any]:
        """The protocol's own status of ``sid`` on ``node`` (``describe(...)["status"]``)."""
        return dict(self.describe(node, sid).get("status") or {})

    def timer(self, node: str, sid: str, name: str) -> float | None:
        """The deadline of ``node``'s armed timer ``name`` of ``sid`` (None: not armed)."""
        armed = self.nodes[node].timers.get((sid, name))
        return None if armed is None else armed[0]

    def next_timer(self) -> float | None:
        """The earliest deadline armed on any up node (None: no timer armed)."""
        timer = self._next_timer()
        return None if timer is None else timer[0]

    def sessions(self, sid: str) -> dict[str, SessionEntry]:
        """Node name -> its session ``sid`` (up nodes that have it)."""
        out = {}
        for name, node in self.nodes.items():
            s = node.session(sid)
            if s is not None:
                out[name] = s
        return out

    def check(self, *, deadline: float | None = None, last_heal: float | None = None,
              ) -> inv.InvariantReport:
        """The cluster invariant checkers over every node's in-memory journal."""
        return check_journals(
            {n.name: (n.key, n.journal) for n in self.nodes.values()},
            deadline=deadline, last_heal=last_heal)


def _protocols() -> Mapping[str, eng.ProtocolSpec]:
    """The shipped protocols (imported here so they register with the engine)."""
    import aura_node.protocols.account_sync.roles
    import aura_node.protocols.dkd.roles
    import aura_node.protocols.genesis.roles
    import aura_node.protocols.recovery.roles
    import aura_node.protocols.reshare.roles  # noqa: F401

    return eng.PROTOCOLS


def _describe(payload: bytes) -> str:
    try:
        env = decode_wire(payload)
    except AuraError:
        return "junk"
    e = env.envelope
    return f"{e.choreography}/{e.step} {e.session[:8]}{' replay' if env.replay else ''}"


# --- invariants --------------------------------------------------------------------------------


def check_journals(journals: Mapping[str, tuple[DeviceKey, MemoryJournal]], *,
                   deadline: float | None = None, last_heal: float | None = None,
                   ) -> inv.InvariantReport:
    """:func:`aura_node.harness.invariants.check_invariants` over in-memory journals: the same
    per-record pass and the same checkers, the journal read through ``scan_segment``."""
    violations: list[inv.Violation] = []
    checked = dict.fromkeys(inv.INVARIANTS, 0)
    keys = {k.device_id: inv.NodeJournal(name=n, public_key=k.public, journal_dir=Path(n))
            for n, (k, _) in journals.items()}
    said: dict[tuple[str, str, str, str], dict[bytes, list[tuple[str, int]]]] = {}
    sessions: dict[tuple[str, str], Any] = {}
    choreo_of: dict[str, str] = {}
    for name, (_, journal) in journals.items():
        checked["journal_verifies"] += 1
        scan = journal.scan()
        if scan.problem is not None:
            violations.append(inv.Violation(invariant="journal_verifies", node=name,
                                            detail=f"{scan.problem}: {scan.reason}"))
        try:
            records = journal.records()
        except AuraError as exc:
            violations.append(inv.Violation(invariant="journal_verifies", node=name,
                                            detail=exc.message))
            continue
        for rec in records:
            try:
                ev = eng.parse_record(rec)
            except AuraError as exc:
                violations.append(inv.Violation(
                    invariant="journal_verifies", node=name, session=rec.session,
                    detail=f"record {rec.seq} ({rec.kind}) does not decode: {exc.message}"))
                continue
            s = sessions.setdefault((name, rec.session), inv._SessionOnNode(
                node=name, session=rec.session))
            if isinstance(ev, eng.Started):
                s.started_ts, s.choreography = rec.ts, ev.start.choreography
                s.params = dict(ev.start.params)
                choreo_of[rec.session] = ev.start.choreography
            elif isinstance(ev, eng.Ended):
                s.ended_ts, s.ok, s.result = rec.ts, ev.ok, dict(ev.result)
            elif isinstance(ev, eng.Sent | eng.Received):
                recipients = ev.to if isinstance(ev, eng.Sent) else (name,)
                if inv._signed_by_known_key(ev.envelope, keys, name, rec, violations, checked):
                    for to in recipients:
                        key = (ev.envelope.session, ev.envelope.sender, ev.envelope.step, to)
                        said.setdefault(key, {}).setdefault(ev.envelope.digest, []).append(
                            (name, rec.seq))
    inv._check_equivocation(said, keys, choreo_of, (), violations, checked)
    inv._check_dkd(sessions.values(), violations, checked)
    inv._check_ends(sessions.values(), deadline, last_heal, violations, checked)
    return inv.InvariantReport(checked=checked, violations=tuple(violations))


# --- worlds and scenarios -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """The outcome of one seeded scenario run."""

    seed: int
    protocol: str
    steps: int
    virtual_seconds: float
    log_digest: str
    stats: dict[str, int]
    outcomes: dict[str, int]
    invariants: inv.InvariantReport
    #: scenario checks that failed (beyond the cluster invariants)
    problems: tuple[str, ...]
    shape: dict[str, Any]

    @property
    def ok(self) -> bool:
        """No invariant violation, no failed scenario check."""
        return self.invariants.ok and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "protocol": self.protocol, "ok": self.ok, "steps": self.steps,
            "virtual_seconds": round(self.virtual_seconds, 6), "log_digest": self.log_digest,
            "stats": self.stats, "outcomes": self.outcomes, "shape": self.shape,
            "invariants": self.invariants.to_json(), "problems": list(self.problems),
        }


def genesis_params(devices: Sequence[str], t: int, guardians: Sequence[str], tg: int,
                   timeout: float) -> dict[str, Any]:
    p: dict[str, Any] = {"devices": list(devices), "threshold": t, "timeout": timeout}
    if guardians:
        p["guardians"] = list(guardians)
        p["guardian_threshold"] = tg
    return p


def genesis_roles(dealer: str, devices: Sequence[str], guardians: Sequence[str]
                  ) -> dict[str, str]:
    roles = {dealer: "dealer"}
    roles.update({d: "devices" for d in devices if d != dealer})
    roles.update(dict.fromkeys(guardians, "guardians"))
    return roles


def dealt_account(devices: Mapping[str, DevicePublicKey], t: int,
                  guardians: Mapping[str, DevicePublicKey] | None = None, tg: int = 0, *,
                  secret: Scalar | None = None, rng: Rng | None = None,
                  session_id: str = "dealt") -> dict[str, AccountEstablished]:
    """A genesis' output without its messages: the account secret (``secret``, else drawn
    from ``rng``, else the OS) shared ``t``-of-n among ``devices`` and ``tg``-of-m among
    ``guardians`` (name -> pinned key, Shamir indices in that order), as the public
    :class:`AccountRecord` every holder keeps plus each holder's own sealed share: holder
    name -> the ``account.established`` body it would journal. The one dealt-account fixture
    of the tests and benchmarks (:meth:`Simulation.deal_account` journals it into a world)."""
    if not devices:
        raise SimulationError("an account needs at least one device")
    guardians = dict(guardians or {})
    both = sorted(set(devices) & set(guardians))
    if both:
        raise SimulationError(f"{both} cannot be both devices and guardians of one account")
    s = secret if secret is not None else Scalar.random(rng)
    dealings = {}
    for holder_set, members, threshold in (("devices", devices, t),
                                           ("guardians", guardians, tg)):
        if members:
            dealings[holder_set] = (list(members), deal_shares(
                threshold=threshold, session_id=session_id, secret=s, rng=rng,
                role="device" if holder_set == "devices" else "guardian",
                holders=[Holder(index=i + 1, public_key=k)
                         for i, k in enumerate(members.values())]))
    names, dev = dealings["devices"]

    def holders(holder_set: str) -> tuple[AccountHolder, ...]:
        if holder_set not in dealings:
            return ()
        names, d = dealings[holder_set]
        return tuple(AccountHolder(name=names[i], device_id=sh.device_id, index=sh.index,
                                   public_share=sh.public_share.to_bytes())
                     for i, sh in enumerate(d.shares))

    record = AccountRecord(
        account_id=dev.account_id, public_key=dev.public_key.to_bytes(), threshold=t,
        devices=holders("devices"), device_commitments=dev.commitments.to_bytes(),
        guardians=holders("guardians"), guardian_threshold=tg if guardians else 0,
        guardian_commitments=(dealings["guardians"][1].commitments.to_bytes()
                              if guardians else b""))
    record.check()
    out: dict[str, AccountEstablished] = {}
    for holder_set, (names, d) in dealings.items():
        for name, sh in zip(names, d.shares, strict=True):
            out[name] = AccountEstablished(account=record, shares=(genesis_held_share(
                holder_set="devices" if holder_set == "devices" else "guardians",
                index=sh.index, sealed=sh.sealed, session_id=session_id),))
    return out


def create_account(sim: Simulation, dealer: str, devices: Sequence[str], t: int,
                   guardians: Sequence[str] = (), tg: int = 0) -> str:
    """Run a genesis to completion now (the caller decides whether faults are on)."""
    timeout = sim.nodes[dealer].protocols.genesis_timeout_seconds
    sid = sim.start(dealer, "genesis", roles=genesis_roles(dealer, devices, guardians),
                    params=genesis_params(devices, t, guardians, tg, timeout))
    sim.run()
    return sid


def reference_fingerprint(sim: Simulation, account_id: str, context: str) -> str:
    """The DKD key of ``context`` computed directly: ``s`` interpolated from the devices'
    shares (opened with their keys), ``K = s·H``, then the same KDF as the protocol."""
    shares = []
    threshold = 0
    for node in sim.nodes.values():
        est = node.accounts.accounts().get(account_id)
        if est is None:
            continue
        threshold = threshold or est.account.threshold
        for held in est.shares:
            if held.holder_set == "devices" and est.account.threshold > 1:
                shares.append(open_held_share(est.account, held, node.key))
            elif est.account.threshold == 1 and not shares:
                shares.append(open_held_share(est.account, held, node.key))
    s = reconstruct(shares, threshold=threshold) if threshold > 1 else shares[0].value
    k = dkd.dkd_base(account_id, context).mul(s)
    return dkd.derive(k, account_id, context).fingerprint


def _outcomes(sim: Simulation) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in sim.nodes.values():
        for rec in node.journal.records():
            if rec.kind == eng.KIND_COMPLETE:
                out["completed"] = out.get("completed", 0) + 1
            elif rec.kind == eng.KIND_FAIL:
                code = msgspec.msgpack.decode(rec.body, type=eng.FailBody).code
                out[f"failed:{code}"] = out.get(f"failed:{code}", 0) + 1
    return dict(sorted(out.items()))


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def _accounts_agree(sim: Simulation, problems: list[str]) -> None:
    """Every node that holds an account holds it under the same public key, and every holder
    that a genesis made (not a recovered device: it re-enrols as a one-device account) holds
    the same public record."""
    keys: dict[str, bytes] = {}
    views: dict[str, dict[str, Any]] = {}
    for node in sim.nodes.values():
        for aid, est in node.accounts.accounts().items():
            if keys.setdefault(aid, est.account.public_key) != est.account.public_key:
                problems.append(f"{node.name} holds account {aid} under another public key")
            if any(h.purpose.startswith("genesis/") for h in est.shares):
                view = est.account.to_json()
                if views.setdefault(aid, view) != view:
                    problems.append(f"{node.name} holds another record of account {aid}: "
                                    f"{view} vs {views[aid]}")


def scenario_genesis(sim: Simulation, shape: random.Random, heal: float
                     ) -> tuple[dict[str, Any], Callable[[list[str]], None], float]:
    n = shape.randint(2, 4)  # one device alone: see test_simulation (genesis binds n = 0)
    t = shape.randint(1, n)
    g = shape.randint(0, 3)
    tg = shape.randint(1, g) if g else 0
    devices, guardians = _names("d", n), _names("g", g)
    dealer = shape.choice(devices)
    timeout = SIM_PROTOCOLS.genesis_timeout_seconds
    when = sim.now + shape.uniform(0.0, 2.0)
    sids: list[str] = []
    sim.at(when, f"genesis on {dealer}", lambda: sids.append(sim.start(
        dealer, "genesis", roles=genesis_roles(dealer, devices, guardians),
        params=genesis_params(devices, t, guardians, tg, timeout))))

    def check(problems: list[str]) -> None:
        _accounts_agree(sim, problems)
        for sid in sids:
            for name, s in sim.sessions(sid).items():
                if s.outcome == "completed" and s.result is not None and s.role == "dealer":
                    view = sim.nodes[name].accounts.accounts().get(str(s.result["account_id"]))
                    if view is None or view.account.to_json() != s.result:
                        problems.append(f"dealer {name} completed genesis without holding "
                                        "the account it announced")

    return ({"devices": n, "threshold": t, "guardians": g, "guardian_threshold": tg,
             "dealer": dealer}, check, 2 * timeout + 5.0)


def scenario_dkd(sim: Simulation, shape: random.Random, heal: float
                 ) -> tuple[dict[str, Any], Callable[[list[str]], None], float]:
    n = shape.randint(2, 4)
    t = shape.randint(1, n)
    devices = _names("d", n)
    saved, sim.faults = sim.faults, Faults()
    create_account(sim, devices[0], devices, t)
    sim.faults = saved
    est = sim.nodes["d1"].accounts.only()
    account_id = est.account.account_id
    contexts = ("mail", "photos")
    runs = []
    sids: list[str] = []
    for _ in range(shape.randint(1, 3)):
        initiator = shape.choice(devices)
        others = [d for d in devices if d != initiator]
        k = shape.randint(max(t - 1, 0), len(others))
        subset = [initiator, *shape.sample(others, k)]
        context = shape.choice(contexts)
        when = sim.now + shape.uniform(0.0, 5.0)
        runs.append((initiator, subset, context))

        def go(initiator: str = initiator, subset: list[str] = subset,
               context: str = context) -> None:
            from aura_node.protocols.dkd.roles import session_params, session_roles

            node = sim.nodes[initiator]
            p = session_params({"context": context, "participants": subset}, node.services)
            sids.append(sim.start(initiator, "dkd", roles=session_roles(p), params=p))

        sim.at(when, f"dkd on {initiator}", go)
    policies = _consent_policies(sim, devices, sids)

    def check(problems: list[str]) -> None:
        refs = {c: reference_fingerprint(sim, account_id, c) for c in contexts}
        for node in sim.nodes.values():
            for rec in node.journal.records():
                if rec.kind != eng.KIND_COMPLETE:
                    continue
                res = msgspec.msgpack.decode(rec.body, type=eng.CompleteBody).result
                if "fingerprint" in res and res["fingerprint"] != refs[str(res["context"])]:
                    problems.append(f"{node.name} derived {res['fingerprint'][:16]} for "
                                    f"{res['context']!r}, s·H gives {refs[res['context']][:16]}")
        _consent_kept(sim, policies, problems)

    return ({"devices": n, "threshold": t, "sessions": [
        {"initiator": i, "participants": s, "context": c} for i, s, c in runs],
        "consent": policies},
        check, SIM_PROTOCOLS.dkd_timeout_seconds + 5.0)


def _consent_policies(sim: Simulation, devices: Sequence[str], sids: list[str]
                      ) -> dict[str, str]:
    """Some devices get a DKD consent policy: ``mail-only`` (photos refused), ``operator``
    (every request parked; an operator action on each session at a random time, approve or
    refuse) or ``rate-1`` (one request a minute). Drawn from a generator of its own, so the
    rest of the scenario's shape is what it was before consent existed."""
    rng = random.Random(f"dkd-consent/{sim.seed}")
    out: dict[str, str] = {}
    for d in devices:
        kind = rng.choice(("none", "none", "mail-only", "operator", "rate-1"))
        if kind == "none":
            continue
        out[d] = kind
        if kind == "mail-only":
            sim.set_dkd_policy(d, rules=[DkdRule(contexts=("mail",))])
        elif kind == "rate-1":
            sim.set_dkd_policy(d, section=DkdSection(rate_limit=1))
        else:
            sim.set_dkd_policy(d, rules=[DkdRule(approval="operator")])
            for i in range(3):
                action = rng.choice(("approve", "approve", "refuse"))

                def decide(d: str = d, i: int = i, action: str = action) -> object:
                    return sim.control(d, sids[i], action) if i < len(sids) else None

                sim.at(sim.now + rng.uniform(0.5, 12.0), f"{action} on {d}", decide)
    return out


def _consent_kept(sim: Simulation, policies: Mapping[str, str], problems: list[str]) -> None:
    """No participant's journal holds a commitment it sent against its policy: a ``mail-only``
    device never commits to a photos request, an ``operator`` device only after an approve."""
    from aura_node.protocols.dkd.choreography import DkdCommitment, DkdRequest

    for name, kind in policies.items():
        node = sim.nodes[name]
        by_session: dict[str, list[jf.JournalRecord]] = {}
        for rec in node.journal.records():
            if rec.session:
                by_session.setdefault(rec.session, []).append(rec)
        for sid, recs in by_session.items():
            evidence = eng.parse_evidence(recs)
            asked = [eng.decode_message(ev.envelope, DkdRequest) for ev in evidence
                     if isinstance(ev, eng.Received) and ev.envelope.step == "DkdRequest"]
            if not asked:
                continue
            committed = any(
                eng.decode_message(ev.envelope, DkdCommitment).commitment is not None
                for ev in evidence
                if isinstance(ev, eng.Sent) and ev.envelope.step == "DkdCommitment")
            approved = any(isinstance(ev, eng.Controlled) and ev.action == "approve"
                           for ev in evidence)
            if committed and kind == "mail-only" and asked[0].context != "mail":
                problems.append(f"{name} committed to {asked[0].context!r} in {sid[:8]} "
                                "against its mail-only policy")
            if committed and kind == "operator" and not approved:
                problems.append(f"{name} committed in {sid[:8]} without its operator's "
                                "approve")


def scenario_recovery(sim: Simulation, shape: random.Random, heal: float
                      ) -> tuple[dict[str, Any], Callable[[list[str]], None], float]:
    from aura_node.protocols.recovery import roles as rec

    devices = [d for d in sim.nodes if d.startswith("d")]
    guardians = [g for g in sim.nodes if g.startswith("g")]
    t = shape.randint(1, len(devices))
    tg = shape.randint(1, len(guardians))
    saved, sim.faults = sim.faults, Faults()
    create_account(sim, devices[0], devices, t, guardians, tg)
    sim.faults = saved
    orig = sim.nodes[devices[0]].accounts.only().account
    approvers = [g for g in guardians if shape.random() < 0.8]
    veto_by = shape.choice(devices) if shape.random() < 0.3 else None
    p = SIM_PROTOCOLS
    start = sim.now + shape.uniform(0.0, 2.0)
    sids: list[str] = []

    def go() -> None:
        node = sim.nodes["n1"]
        params = rec.start_params({"account": orig.account_id, "guardians": guardians},
                                  node.services)
        sids.append(sim.start("n1", "recovery", roles=rec.session_roles(params),
                              params=params))

    def act(node: str, action: str) -> Callable[[], object]:
        return lambda: sim.control(node, sids[0], action) if sids else None

    sim.at(start, "recovery on n1", go)
    for g in approvers:
        sim.at(start + shape.uniform(0.5, 10.0), f"approve on {g}", act(g, "approve"))
    veto_at = start + shape.uniform(1.0, 10.0 + p.recovery_cooldown_seconds)
    if veto_by is not None:
        sim.at(veto_at, f"veto on {veto_by}", act(veto_by, "veto"))

    def check(problems: list[str]) -> None:
        _accounts_agree(sim, problems)
        new = sim.nodes["n1"]
        for sid in sids:
            s = new.session(sid)
            if s is not None and s.outcome == "completed":
                est = new.accounts.accounts().get(orig.account_id)
                if est is None or est.account.public_key != orig.public_key:
                    problems.append("n1 completed recovery without the original account key")
                elif est.account.threshold == 1:
                    mine = reference_fingerprint(_only(sim, "n1"), orig.account_id, "mail")
                    theirs = reference_fingerprint(_without(sim, "n1"), orig.account_id,
                                                   "mail")
                    if mine != theirs:
                        problems.append("the recovered device derives another DKD key")
        for g in guardians:
            _release_rule(sim.nodes[g], problems)

    budget = (p.recovery_approval_timeout_seconds + p.recovery_cooldown_seconds
              + p.recovery_share_timeout_seconds + 10.0)
    return ({"devices": len(devices), "threshold": t, "guardians": len(guardians),
             "guardian_threshold": tg, "approvers": approvers, "veto": veto_by}, check, budget)


def scenario_reshare(sim: Simulation, shape: random.Random, heal: float
                     ) -> tuple[dict[str, Any], Callable[[list[str]], None], float]:
    """An account of d1..d3 (and 0..2 guardians) reshared once under faults: a device removed,
    one added, or the threshold changed, then (after every deadline) the holders' epoch-fact
    sync. Checks: every holder, old or new, is at the same epoch (the new one only if the
    coordinator completed), each new holder uses its share of it, and the devices of the
    newest epoch derive the same DKD key as the original ones."""
    from aura_node.protocols.reshare import roles as rr
    from aura_node.protocols.reshare.choreography import ReshPlan

    devices = ["d1", "d2", "d3"]
    guardians = [g for g in sim.nodes if g.startswith("g")]
    t = shape.randint(1, 3)
    tg = shape.randint(1, len(guardians)) if guardians else 0
    saved, sim.faults = sim.faults, Faults()
    create_account(sim, "d1", devices, t, guardians, tg)
    sim.faults = saved
    orig = sim.nodes["d1"].accounts.only().account
    want = reference_fingerprint(_among(sim, devices), orig.account_id, "mail")
    # remove-device needs t current devices that stay to deal: d3 leaves, so t <= 2
    op = shape.choice(["add-device", "reshare", *(["remove-device"] if t <= 2 else [])])
    coordinator = shape.choice(devices[:2])
    args: dict[str, Any] = {
        "add-device": {"name": "d4", "threshold": shape.randint(1, 4)},
        "remove-device": {"name": "d3", "threshold": shape.randint(1, 2)},
        "reshare": {"devices": [*devices, "d4"][: shape.randint(max(2, t), 4)],
                    "threshold": shape.randint(1, 2)},
    }[op]
    sids: list[str] = []
    plan: list[Any] = []

    def go() -> None:
        params = rr.plan_session(args, sim.nodes[coordinator].services,
                                 operation=op)  # type: ignore[arg-type]
        plan.append(msgspec.convert(params["plan"], ReshPlan))
        sids.append(sim.start(coordinator, "reshare",
                              roles=rr.session_roles(params, coordinator), params=params))

    sim.at(sim.now + shape.uniform(0.0, 2.0), f"{op} on {coordinator}", go)
    # once every deadline of the session has passed (a participant that signed waits four),
    # the links come up as the daemon's do: each holder syncs its epoch facts with the others
    timeout = SIM_PROTOCOLS.reshare_timeout_seconds
    sim.at(heal + (rr.OUTCOME_WAIT_DEADLINES + 3) * timeout, "account-sync",
           lambda: sync_accounts(sim))

    def check(problems: list[str]) -> None:
        if not sids:
            problems.append("the reshare never started")
            return
        everyone = {*devices, *(h.name for h in plan[0].devices),
                    *(h.name for h in plan[0].guardians), *guardians}
        # after the sync every holder old or new agrees on the epoch (a participant the
        # announcement never reached, or that restarted after the coordinator stopped
        # waiting, holds its share from when it signed, and the synced fact makes it current)
        current = {n: sim.nodes[n].accounts.current_epoch(orig.account_id) for n in everyone}
        if len(set(current.values())) != 1:
            problems.append(f"split epoch after account-sync: {current}")
            return
        if set(current.values()) == {0}:
            return  # aborted: the old epoch stays, checked by the DKD below only if it moved
        holders = [h.name for h in (*plan[0].devices, *plan[0].guardians)]
        for n in holders:
            try:
                est = sim.nodes[n].accounts.get(orig.account_id)
            except AuraError as exc:
                problems.append(f"{n} holds no usable share of the new epoch: {exc.message}")
                continue
            if est.epoch != current[n]:
                problems.append(f"{n} uses epoch {est.epoch}, the current one is {current[n]}")
        coordinator_end = sim.nodes[coordinator].session(sids[0])
        if coordinator_end is None or coordinator_end.outcome != "completed":
            problems.append("the epoch moved without the coordinator completing its session")
        new_devices = [h.name for h in plan[0].devices]
        got = reference_fingerprint(_among(sim, new_devices), orig.account_id, "mail")
        if got != want:
            problems.append("the new epoch's devices derive another DKD key")

    return ({"threshold": t, "guardians": len(guardians), "guardian_threshold": tg,
             "operation": op, "args": args, "coordinator": coordinator}, check,
            3 * SIM_PROTOCOLS.reshare_timeout_seconds + 10.0)


def sync_accounts(sim: Simulation, names: Sequence[str] | None = None) -> list[str]:
    """What the daemons do when their links come up: every up node of ``names`` (default:
    all) starts an ``account-sync`` with each up peer ``sync_peers`` names (one session per
    pair). Returns the session ids; run the simulation to let them finish."""
    from aura_node.protocols.account_sync.roles import CHOREOGRAPHY, sync_peers

    sids: list[str] = []
    pairs: set[frozenset[str]] = set()
    for name in names or list(sim.nodes):
        node = sim.nodes[name]
        if not node.up:
            continue
        for peer in sync_peers(node.accounts, node.peers):
            if not sim.nodes[peer].up or frozenset((name, peer)) in pairs:
                continue
            pairs.add(frozenset((name, peer)))
            sids.append(sim.start(name, CHOREOGRAPHY, roles={name: "initiator",
                                                             peer: "responder"}, params={}))
    return sids


class _View:
    """A subset of a simulation's nodes, for :func:`reference_fingerprint`."""

    def __init__(self, nodes: dict[str, SimNode]) -> None:
        self.nodes = nodes


def _only(sim: Simulation, name: str) -> Simulation:
    return _View({name: sim.nodes[name]})  # type: ignore[return-value]


def _among(sim: Simulation, names: Sequence[str]) -> Simulation:
    return _View({n: sim.nodes[n] for n in names})  # type: ignore[return-value]


def _without(sim: Simulation, name: str) -> Simulation:
    return _View({n: x for n, x in sim.nodes.items() if n != name})  # type: ignore[return-value]


def _release_rule(node: SimNode, problems: list[str]) -> None:
    """A guardian's journal shows its release rule held: every ``SealedRecoveryShare`` it sent
    comes after an accepted ``ShareRequest`` and its own cooldown timer, with no veto accepted
    and no deadline of its own fired before it."""
    seen: dict[str, set[str]] = {}
    for rec in node.journal.records():
        if rec.kind not in (eng.KIND_IN, eng.KIND_OUT, eng.KIND_TIMER_FIRED):
            continue
        ev = eng.parse_record(rec)
        mine = seen.setdefault(rec.session, set())
        if isinstance(ev, eng.Received):
            mine.add(ev.envelope.step)
        elif isinstance(ev, eng.TimerEvent):
            mine.add(f"timer:{ev.name}")
        elif isinstance(ev, eng.Sent) and ev.envelope.step == "SealedRecoveryShare":
            broken = [why for why, bad in (
                ("after journaling a veto", "RecoveryVeto" in mine),
                ("without a ShareRequest", "ShareRequest" not in mine),
                ("before its cooldown", "timer:cooldown" not in mine),
                ("after its own deadline", "timer:share-request" in mine)) if bad]
            for why in broken:
                problems.append(f"guardian {node.name} released its share in "
                                f"{rec.session[:8]} {why}")


Scenario = Callable[[Simulation, random.Random, float],
                    tuple[dict[str, Any], Callable[[list[str]], None], float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioSpec:
    run: Scenario
    nodes: Callable[[random.Random], dict[str, PeerRole]]


def _genesis_nodes(shape: random.Random) -> dict[str, PeerRole]:
    out: dict[str, PeerRole] = dict.fromkeys(_names("d", 4), "device")
    out.update(dict.fromkeys(_names("g", 3), "guardian"))
    return out


def _dkd_nodes(shape: random.Random) -> dict[str, PeerRole]:
    return dict.fromkeys(_names("d", 4), "device")


def _recovery_nodes(shape: random.Random) -> dict[str, PeerRole]:
    # two devices at least: a one-device genesis binds n = 0 (see test_simulation)
    out: dict[str, PeerRole] = dict.fromkeys(_names("d", shape.randint(2, 3)), "device")
    out.update(dict.fromkeys(_names("g", shape.randint(1, 3)), "guardian"))
    out["n1"] = "device"
    return out


def _reshare_nodes(shape: random.Random) -> dict[str, PeerRole]:
    out: dict[str, PeerRole] = dict.fromkeys(_names("d", 4), "device")
    out.update(dict.fromkeys(_names("g", shape.randint(0, 2)), "guardian"))
    return out


SCENARIOS: dict[str, ScenarioSpec] = {
    "genesis": ScenarioSpec(run=scenario_genesis, nodes=_genesis_nodes),
    "dkd": ScenarioSpec(run=scenario_dkd, nodes=_dkd_nodes),
    "recovery": ScenarioSpec(run=scenario_recovery, nodes=_recovery_nodes),
    "reshare": ScenarioSpec(run=scenario_reshare, nodes=_reshare_nodes),
}


def run_seed(seed: int, protocol: str, *, faults: Faults | None = None, fault_window: float = 20.0,
             max_steps: int = 200_000, keep: list[Simulation] | None = None) -> RunReport:
    """One seeded scenario: build, inject ``faults`` (rates; default :meth:`Faults.chaos`) for
    ``fault_window`` virtual seconds after the set-up, run until quiet, check. ``keep`` receives the
    :class:`Simulation` (for a test or a replay that wants to look inside)."""
    spec = SCENARIOS.get(protocol)
    if spec is None:
        raise SimulationError(f"no scenario {protocol!r} (have: {', '.join(SCENARIOS)})")
    shape = random.Random(f"aura-sim/{protocol}/{seed}")
    sim = Simulation(seed, spec.nodes(shape))
    if keep is not None:
        keep.append(sim)
    problems: list[str] = []
    shape_info, check, budget = spec.run(sim, shape, sim.now + fault_window)
    template = faults if faults is not None else Faults.chaos(0.0)
    sim.faults = replace(template, until=sim.now + fault_window)
    sim.note(f"faults until {sim.faults.until:.6f}")
    try:
        sim.run(max_steps=max_steps)
    except SimulationError as exc:
        problems.append(exc.message)
    for node in sim.nodes.values():  # a node still down at the end comes back (and settles)
        if not node.up:
            sim.restart(node.name)
    try:
        sim.run(max_steps=max_steps)
    except SimulationError as exc:
        problems.append(exc.message)
    report = sim.check(deadline=budget, last_heal=sim.faults.settle_after)
    try:
        check(problems)
    except AuraError as exc:
        problems.append(f"scenario check raised {exc.code}: {exc.message}")
    return RunReport(
        seed=seed, protocol=protocol, steps=sim.steps, virtual_seconds=sim.now - START_TIME,
        log_digest=sim.log_digest(), stats={k: getattr(sim.stats, k) for k in _Stats.__slots__},
        outcomes=_outcomes(sim), invariants=report, problems=tuple(problems), shape=shape_info)


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m aura_node.harness.simulation",
        description="Deterministic simulation of the protocols (seeded faults and crashes).")
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The simulation's options (also `aura-node cluster simulate`)."""
    # no argparse choices: a plugin (``cluster simulate --plugin``) may add scenarios, and it
    # is loaded after parsing; run_from_args checks the name
    ap.add_argument("--protocol", default="all", metavar="SCENARIO",
                    help=f"the scenario to run: {', '.join(SCENARIOS)}, one a plugin adds, or "
                         "all (default)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed")
    ap.add_argument("--steps", type=int, default=200_000, help="step budget per run")
    ap.add_argument("--fault-window", type=float, default=20.0,
                    help="virtual seconds of faults before the heal (default 20)")
    ap.add_argument("--intensity", type=float, default=1.0, help="fault rates x this")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--log", action="store_true", help="print each run's event log")
    ap.add_argument("--json", action="store_true", help="one JSON line per run")
    ap.add_argument("--runtime-log", default="error", metavar="LEVEL",
                    choices=["debug", "info", "warning", "error", "critical"],
                    help="the session runtimes' own log lines at LEVEL and above, to stderr "
                         "(default error)")


def run_from_args(args: argparse.Namespace) -> int:
    configure_logging(level=args.runtime_log, fmt="console", stream=sys.stderr)
    protocols = list(SCENARIOS) if args.protocol == "all" else [args.protocol]
    if args.protocol not in (*SCENARIOS, "all"):
        raise SimulationError(f"no scenario {args.protocol!r} (have: {', '.join(SCENARIOS)}, "
                              "all)")
    faults = Faults() if args.no_faults else Faults.chaos(0.0, intensity=args.intensity)
    failed = 0
    runs = 0
    t0 = time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        for protocol in protocols:
            keep: list[Simulation] = []
            report = run_seed(seed, protocol, faults=faults, fault_window=args.fault_window,
                              max_steps=args.steps, keep=keep)
            runs += 1
            failed += not report.ok
            if args.log:
                sys.stdout.write(keep[0].log_bytes().decode())
            if args.json:
                print(json.dumps(report.to_json(), sort_keys=True))
            elif not report.ok:
                print(f"FAIL seed {seed} {protocol}: shape {report.shape}")
                for v in report.invariants.violations:
                    print(f"  {v.invariant} [{v.node} {str(v.session)[:8]}]: {v.detail}")
                for p in report.problems:
                    print(f"  scenario: {p}")
                print(f"  replay: python -m aura_node.harness.simulation --protocol {protocol} "
                      f"--seed {seed} --log")
            elif args.seeds == 1:
                print(f"ok seed {seed} {protocol}: {report.steps} steps, "
                      f"{report.virtual_seconds:.1f} virtual s, outcomes {report.outcomes}, "
                      f"log {report.log_digest[:16]}")
    took = time.perf_counter() - t0
    print(f"simulation: {runs} runs, {runs - failed} passed, {failed} failed "
          f"({took:.1f} s)", file=sys.stderr if args.json else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
