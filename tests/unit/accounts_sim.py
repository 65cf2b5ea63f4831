"""In-memory multi-driver harness for the account protocols (genesis, recovery).

It plays the node runtime's part around pure drivers, with the same contract: every effect of
one input is journaled as one atomic step *before* any message leaves; envelopes are really
signed (``envelope.seal``) and journaled as bytes; duplicates are dropped by digest; a driver
``Fail`` fans the choreography's abort message out; ``account.established`` records are added
to the node's :class:`AccountStore` once journaled. Delivery order is chosen by a seeded
``random.Random`` (with optional duplicates). :meth:`Sim.crash` drops a node's drivers and
rebuilds them with ``rehydrate`` from that node's journal, re-sending journaled envelopes and
calling ``resume`` exactly as the runtime does.

(The DKD engineer's ``protocol_sim.py`` should replace this once it exists.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aura_node.config import ProtocolSection
from aura_node.crypto.keys import DeviceKey
from aura_node.protocols import engine as eng
from aura_node.protocols.account import KIND_ACCOUNT, AccountStore, decode_established
from aura_node.protocols.envelope import Envelope, decode_envelope, encode_envelope, seal
from aura_node.protocols.services import NodeServices, PeerInfo, PeerRole


@dataclass(frozen=True, slots=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


@dataclass
class Entry:
    driver: eng.ProtocolDriver | None
    spec: eng.ProtocolSpec
    role: str
    seen: set[bytes] = field(default_factory=set)
    ended: bool = False
    outcome: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    timers: dict[str, float] = field(default_factory=dict)


@dataclass
class SimNode:
    name: str
    key: DeviceKey
    services: NodeServices
    journal: list[Rec] = field(default_factory=list)
    sessions: dict[str, Entry] = field(default_factory=dict)
    down: bool = False

    def records(self, session: str) -> list[Rec]:
        return [r for r in self.journal if r.session == session]

    def journal_bytes(self) -> bytes:
        return b"".join(r.kind.encode() + r.body for r in self.journal)


def make_keys(names: list[str]) -> dict[str, DeviceKey]:
    return {n: DeviceKey.from_seed(n.encode().ljust(32, b"\0")) for n in names}


class Sim:
    def __init__(
        self, roles: Mapping[str, PeerRole], *, seed: int = 0, duplicates: float = 0.0,
        pins: Mapping[str, list[str]] | None = None, cooldown: float = 60.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.duplicates = duplicates
        self.now = 1000.0
        keys = make_keys(list(roles))
        self.nodes: dict[str, SimNode] = {}
        for n, role in roles.items():
            visible = pins.get(n, list(roles)) if pins else list(roles)
            peers = {p: PeerInfo(name=p, role=roles[p], public_key=keys[p].public)
                     for p in visible if p != n}
            services = NodeServices(self_name=n, self_role=role, device_key=keys[n],
                                    peers=peers, accounts=AccountStore(),
                                    protocols=ProtocolSection(recovery_cooldown_seconds=cooldown))
            self.nodes[n] = SimNode(name=n, key=keys[n], services=services)
        self.queue: list[tuple[str, str, bytes]] = []  # (sender, recipient, envelope bytes)
        self._seq = 0
        self._sid = 0
        #: called before each journal step is appended; raise Crash to drop it (crash point)
        self.before_append: Callable[[str, list[tuple[str, bytes]]], None] | None = None

    # --- journal ---------------------------------------------------------------------------------

    def _append(self, node: SimNode, session: str, records: list[tuple[str, bytes]]) -> None:
        if self.before_append is not None:
            self.before_append(node.name, records)
        for kind, body in records:
            self._seq += 1
            node.journal.append(Rec(self._seq, self.now, session, kind, body))

    # --- sessions --------------------------------------------------------------------------------

    def start(self, node_name: str, choreography: str, *, roles: Mapping[str, str],
              params: Mapping[str, Any]) -> str:
        node = self.nodes[node_name]
        spec = eng.PROTOCOLS[choreography]
        self._sid += 1
        session = f"{self._sid:032x}"
        params = spec.validate_params(params)
        start = eng.Start(session=session, choreography=choreography,
                          role=spec.initiator_role, self_name=node_name, roles=dict(roles),
                          params=params, now=self.now, entropy=bytes(32))
        driver = spec.driver_class(spec.initiator_role)(node.services)
        entry = Entry(driver=driver, spec=spec, role=spec.initiator_role)
        node.sessions[session] = entry
        self._step(node, session, entry, lambda: driver.start(start), [_start_rec(start)])
        return session

    def control(self, node_name: str, session: str, action: str,
                args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        node = self.nodes[node_name]
        entry = node.sessions[session]
        assert entry.driver is not None and not entry.ended
        inp = eng.ControlAction(action=action, args=dict(args or {}), now=self.now)
        ctl = (eng.KIND_CONTROL, eng.encode_body(eng.ControlBody(
            action=action, args=dict(args or {}), now=self.now)))
        reply: dict[str, Any] = {}
        driver = entry.driver

        def run() -> list[eng.Effect]:
            effects = driver.on_control(inp)
            for e in effects:
                if isinstance(e, eng.Reply):
                    reply.update(e.result)
            return effects

        self._step(node, session, entry, run, [ctl])
        return reply

    def _step(self, node: SimNode, session: str, entry: Entry,
              fn: Callable[[], list[eng.Effect]], pre: list[tuple[str, bytes]]) -> None:
        try:
            effects = fn()
        except Exception as exc:  # the runtime: a raising step aborts the session
            code = getattr(exc, "code", "driver_error")
            effects = [eng.Fail(code=code, reason=str(exc))]
        records = list(pre)
        out: list[tuple[tuple[str, ...], Envelope]] = []
        accounts = []
        end: tuple[bool, dict[str, Any], str, str] | None = None
        for eff in effects:
            if isinstance(eff, eng.Send):
                env = seal(node.key, choreography=entry.spec.choreography, session=session,
                           message=eff.message)
                for to in eff.to:
                    assert to != node.name and to in node.services.peers, to
                records.append((eng.KIND_OUT, eng.encode_body(eng.OutBody(
                    to=list(eff.to), envelope=encode_envelope(env)))))
                out.append((eff.to, env))
            elif isinstance(eff, eng.RecordEvidence):
                records.append((eff.kind, eff.body))
                if eff.kind == KIND_ACCOUNT:
                    accounts.append(decode_established(eff.body))
            elif isinstance(eff, eng.ArmTimer):
                records.append((eng.KIND_TIMER_ARM, eng.encode_body(
                    eng.TimerBody(name=eff.name, deadline=eff.deadline))))
                entry.timers[eff.name] = eff.deadline
            elif isinstance(eff, eng.CancelTimer):
                if entry.timers.pop(eff.name, None) is not None:
                    records.append((eng.KIND_TIMER_CANCEL, eng.encode_body(
                        eng.TimerBody(name=eff.name))))
            elif isinstance(eff, eng.Reply):
                pass
            elif isinstance(eff, eng.Complete):
                records.append((eng.KIND_COMPLETE, eng.encode_body(
                    eng.CompleteBody(result=dict(eff.result)))))
                end = (True, dict(eff.result), "", "")
                break
            elif isinstance(eff, eng.Fail):
                records.append((eng.KIND_FAIL, eng.encode_body(
                    eng.FailBody(code=eff.code, reason=eff.reason))))
                end = (False, {}, eff.code, eff.reason)
                break
        if end is not None and not end[0] and entry.driver is not None:
            entry.driver.on_abort(end[3], by_peer=None)
            abort = self._abort_env(node, session, entry, f"{end[2]}: {end[3]}")
            if abort is not None:
                records.append(abort[0])
                out.append(abort[1])
        self._append(node, session, records)  # may raise Crash: nothing below happens
        for a in accounts:
            node.services.accounts.add(a)
        if end is not None:
            self._end(entry, end)
        for to, env in out:
            for n in to:
                self._post(node.name, n, env)

    def _abort_env(self, node: SimNode, session: str, entry: Entry, reason: str
                   ) -> tuple[tuple[str, bytes], tuple[tuple[str, ...], Envelope]] | None:
        assert entry.driver is not None
        to = tuple(n for n in entry.driver.roles
                   if n != node.name and n in node.services.peers)
        if not to:
            return None
        abort_type = entry.spec.message_types[f"{entry.spec.choreography.capitalize()}Abort"]
        msg = _abort_message(abort_type, session, reason)
        env = seal(node.key, choreography=entry.spec.choreography, session=session, message=msg)
        rec = (eng.KIND_OUT, eng.encode_body(eng.OutBody(to=list(to),
                                                          envelope=encode_envelope(env))))
        return rec, (to, env)

    @staticmethod
    def _end(entry: Entry, end: tuple[bool, dict[str, Any], str, str]) -> None:
        entry.ended = True
        entry.timers.clear()
        if end[0]:
            entry.outcome = end[1]
        else:
            entry.error = (end[2], end[3])

    def _post(self, sender: str, to: str, env: Envelope) -> None:
        data = encode_envelope(env)
        self.queue.append((sender, to, data))
        if self.duplicates and self.rng.random() < self.duplicates:
            self.queue.append((sender, to, data))

    # --- delivery --------------------------------------------------------------------------------

    def deliver_one(self) -> bool:
        ready = [i for i, (_, to, _) in enumerate(self.queue) if not self.nodes[to].down]
        if not ready:
            return False
        item = self.queue.pop(self.rng.choice(ready))
        try:
            self.receive(item[0], item[1], decode_envelope(item[2]))
        except Crash:
            self.queue.append(item)  # the sender re-sends once the link is back
            raise
        return True

    def receive(self, sender: str, to: str, env: Envelope) -> None:
        node = self.nodes[to]
        if sender not in node.services.peers:
            return  # the transport refuses unpinned peers
        spec = eng.PROTOCOLS[env.choreography]
        msg = eng.decode_message(env, spec.message_types[env.step])
        entry = node.sessions.get(env.session)
        pre: list[tuple[str, bytes]] = []
        opened: list[eng.Effect] = []  # a responder's start effects (e.g. a deadline timer)
        if entry is None:
            opener = spec.openers.get(env.step)
            if opener is None:
                return
            start = eng.Start(session=env.session, choreography=spec.choreography,
                              role=opener.role, self_name=to,
                              roles={to: opener.role, sender: opener.sender_role},
                              params={}, now=self.now, entropy=bytes(32), opened_by=sender)
            driver = spec.driver_class(opener.role)(node.services)
            entry = Entry(driver=driver, spec=spec, role=opener.role)
            node.sessions[env.session] = entry
            pre.append(_start_rec(start))
            opened = driver.start(start)
            assert not any(isinstance(e, eng.Send) for e in opened), opened
        if entry.ended or entry.driver is None or env.digest in entry.seen:
            return
        role = entry.driver.roles.get(sender)
        if role is None:
            rec = (eng.KIND_MISBEHAVIOUR, eng.encode_body(eng.MisbehaviourBody(
                peer=sender, code="no_role", reason=f"{sender} has no role",
                envelope=encode_envelope(env))))
            self._append(node, env.session, [*pre, rec])
            return
        entry.seen.add(env.digest)
        rec_in = (eng.KIND_IN, eng.encode_body(eng.InBody(
            sender=sender, sender_role=role, envelope=encode_envelope(env), now=self.now)))
        if env.step.endswith("Abort"):
            if not entry.driver.accepts_abort_from(sender, role):
                return  # the runtime drops it unjournaled (``accepts_abort_from``)
            fail = (eng.KIND_FAIL, eng.encode_body(eng.FailBody(
                code="aborted_by_peer", reason=f"{sender} aborted")))
            self._append(node, env.session, [*pre, rec_in, fail])
            entry.driver.on_abort(str(getattr(msg, "reason", "")), by_peer=sender)
            self._end(entry, (False, {}, "aborted_by_peer", str(getattr(msg, "reason", ""))))
            return
        inp = eng.MessageIn(sender=sender, sender_role=role, message=msg, envelope=env,
                            now=self.now)
        driver = entry.driver
        self._step(node, env.session, entry, lambda: [*opened, *driver.on_message(inp)],
                   [*pre, rec_in])

    def fire_timers(self) -> None:
        """Advance the clock to the next deadline and fire every timer due."""
        due = [(d, n, s, name) for n, node in self.nodes.items() if not node.down
               for s, e in node.sessions.items() if not e.ended
               for name, d in e.timers.items()]
        if not due:
            return
        self.now = max(self.now, min(d for d, *_ in due))
        for d, n, s, name in sorted(due):
            if d > self.now:
                continue
            node, entry = self.nodes[n], self.nodes[n].sessions[s]
            if entry.ended or name not in entry.timers or entry.driver is None:
                continue
            del entry.timers[name]
            inp = eng.TimerFired(name=name, now=self.now)
            fired = (eng.KIND_TIMER_FIRED, eng.encode_body(eng.TimerBody(name=name,
                                                                         deadline=d)))
            driver = entry.driver
            self._step(node, s, entry, lambda d=driver, i=inp: d.on_timer(i), [fired])

    def run(self, *, timers: bool = True, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if self.deliver_one():
                continue
            if not timers:
                return
            before = self.now
            pending = any(e.timers for node in self.nodes.values() for e in
                          node.sessions.values() if not e.ended)
            if not pending:
                return
            self.fire_timers()
            if self.now == before and not self.queue:
                return
        raise AssertionError("simulation did not settle")

    # --- crashes ---------------------------------------------------------------------------------

    def crash(self, name: str) -> None:
        """Lose every in-memory state of ``name`` and rebuild it from its journal."""
        node = self.nodes[name]
        accounts = AccountStore.from_bodies(r.body for r in node.journal
                                            if r.kind == KIND_ACCOUNT)
        node.services.accounts = accounts
        by_session: dict[str, list[Rec]] = {}
        for r in node.journal:
            by_session.setdefault(r.session, []).append(r)
        node.sessions = {}
        resend: list[tuple[str, str, Envelope]] = []
        for sid, recs in by_session.items():
            ev = eng.parse_evidence(recs)
            start = next((e.start for e in ev if isinstance(e, eng.Started)), None)
            if start is None:
                continue
            spec = eng.PROTOCOLS[start.choreography]
            entry = Entry(driver=None, spec=spec, role=start.role)
            node.sessions[sid] = entry
            for e in ev:
                if isinstance(e, eng.Received):
                    entry.seen.add(e.envelope.digest)
                elif isinstance(e, eng.Sent):
                    resend += [(name, n, e.envelope) for n in e.to]
                elif isinstance(e, eng.TimerEvent):
                    if e.event == "arm":
                        entry.timers[e.name] = e.deadline
                    else:
                        entry.timers.pop(e.name, None)
            end = next((e for e in ev if isinstance(e, eng.Ended)), None)
            if end is not None:
                self._end(entry, (end.ok, dict(end.result), end.code, end.reason))
                continue
            driver = spec.driver_class(start.role).rehydrate(recs, node.services)
            if driver is None:
                entry.timers.clear()
                self._append(node, sid, [(eng.KIND_FAIL, eng.encode_body(eng.FailBody(
                    code="driver_error", reason="rehydration proved too little")))])
                self._end(entry, (False, {}, "driver_error", "rehydration"))
                continue
            entry.driver = driver
        for sender, to, env in resend:
            self._post(sender, to, env)
        for sid, entry in node.sessions.items():
            if entry.driver is not None and not entry.ended:
                driver = entry.driver
                self._step(node, sid, entry, lambda d=driver: d.resume(self.now), [])


class Crash(Exception):
    """Raised from ``Sim.before_append`` to lose the step being journaled."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


def _start_rec(start: eng.Start) -> tuple[str, bytes]:
    return (eng.KIND_START, eng.encode_body(eng.StartBody(
        choreography=start.choreography, role=start.role, self_name=start.self_name,
        roles=dict(start.roles), params=dict(start.params), now=start.now,
        entropy=start.entropy, opened_by=start.opened_by)))


def _abort_message(abort_type: type[msgspec.Struct], session: str, reason: str
                   ) -> msgspec.Struct:
    fields = set(abort_type.__struct_fields__)
    kwargs: dict[str, Any] = {"reason": reason}
    if "session_id" in fields:
        kwargs["session_id"] = bytes.fromhex(session)
    return abort_type(**kwargs)
