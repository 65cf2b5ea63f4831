"""In-memory multi-driver harness: several devices' pure drivers wired through engine effects.

What it models of the real runtime (so protocol tests exercise the same contract):

* every ``Send`` is sealed into a real signed :class:`Envelope` with the sender's device key,
  journaled (``msg.out``) before it is queued; a receiver opens it with the sender's *pinned*
  key (``open_envelope``: bad signatures never reach a driver), drops exact duplicates by
  digest, checks the role's choreography :class:`Monitor` (early messages are buffered and
  retried, other monitor rejections are journaled as ``misbehaviour``), journals ``msg.in``
  and only then calls the driver;
* a session on a responder is opened by the spec's opener message (``Start.opened_by``);
* timers are absolute deadlines fired by :meth:`Cluster.fire_timers`;
* every input's effects are appended to the device's journal as one group
  (``Device.groups``), so "crash at an append point" = keep a prefix of groups and rebuild the
  driver with ``DriverClass.rehydrate(records, services)``.

Delivery order is chosen by a ``random.Random`` (random order, optional duplicates).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aura_node.choreo import Monitor
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import BadSignatureError, RemoteProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import Envelope, open_envelope, seal
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import NodeServices


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


@dataclass(slots=True)
class SessionState:
    driver: eng.ProtocolDriver
    monitor: Monitor | None
    early: list[tuple[str, Envelope, msgspec.Struct]] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    result: Mapping[str, Any] | None = None
    error: tuple[str, str] | None = None
    timers: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Device:
    name: str
    key: DeviceKey
    services: NodeServices
    #: journal: groups of records, one group per input (atomic, like a group commit)
    groups: list[list[Record]] = field(default_factory=list)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    misbehaviour: list[tuple[str, str, str]] = field(default_factory=list)
    seq: int = 0

    def records(self, session: str | None = None) -> list[Record]:
        return [r for g in self.groups for r in g if session is None or r.session == session]


@dataclass(frozen=True, slots=True)
class InFlight:
    sender: str
    to: str
    wire: Envelope


class Cluster:
    def __init__(self, devices: Mapping[str, Device], spec: eng.ProtocolSpec, *,
                 rng: random.Random | None = None, duplicate_rate: float = 0.0) -> None:
        self.devices = dict(devices)
        self.spec = spec
        self.rng = rng or random.Random(0)
        self.duplicate_rate = duplicate_rate
        self.queue: list[InFlight] = []
        self.now = 1000.0
        self.down: set[str] = set()
        #: hook to tamper with an envelope in flight (misbehaving-peer tests)
        self.tamper: Callable[[InFlight], InFlight | None] | None = None

    # -- plumbing ----------------------------------------------------------------------------

    def _monitor(self, role: str, binds: Mapping[str, int]) -> Monitor:
        return Monitor(REGISTRY[self.spec.choreography].project(role, dict(binds)))

    def _append(self, dev: Device, group: list[tuple[str, str, bytes]]) -> None:
        recs = []
        for session, kind, body in group:
            dev.seq += 1
            recs.append(Record(seq=dev.seq, ts=self.now, session=session, kind=kind, body=body))
        if recs:
            dev.groups.append(recs)

    def _apply(self, dev: Device, sid: str, st: SessionState, effects: list[eng.Effect],
               group: list[tuple[str, str, bytes]]) -> None:
        roles = st.driver.roles
        outgoing: list[InFlight] = []
        for eff in effects:
            if isinstance(eff, eng.Send):
                if st.monitor is not None:
                    for role in dict.fromkeys(roles[n] for n in eff.to):
                        st.monitor.check_outbound(role, eff.message)
                env = seal(dev.key, choreography=self.spec.choreography, session=sid,
                           message=eff.message)
                group.append((sid, eng.KIND_OUT, eng.encode_body(
                    eng.OutBody(to=list(eff.to), envelope=msgspec.msgpack.encode(env)))))
                outgoing.extend(InFlight(sender=dev.name, to=n, wire=env) for n in eff.to)
            elif isinstance(eff, eng.RecordEvidence):
                group.append((sid, eff.kind, eff.body))
            elif isinstance(eff, eng.ArmTimer):
                st.timers[eff.name] = eff.deadline
                group.append((sid, eng.KIND_TIMER_ARM, eng.encode_body(
                    eng.TimerBody(name=eff.name, deadline=eff.deadline))))
            elif isinstance(eff, eng.CancelTimer):
                st.timers.pop(eff.name, None)
                group.append((sid, eng.KIND_TIMER_CANCEL, eng.encode_body(
                    eng.TimerBody(name=eff.name))))
            elif isinstance(eff, eng.Complete):
                st.result = dict(eff.result)
                st.timers.clear()
                group.append((sid, eng.KIND_COMPLETE, eng.encode_body(
                    eng.CompleteBody(result=dict(eff.result)))))
            elif isinstance(eff, eng.Fail):
                st.error = (eff.code, eff.reason)
                st.timers.clear()
                group.append((sid, eng.KIND_FAIL, eng.encode_body(
                    eng.FailBody(code=eff.code, reason=eff.reason))))
        self._append(dev, group)
        self.queue.extend(outgoing)  # journal before send

    # -- driving -----------------------------------------------------------------------------

    def start(self, name: str, *, session: str, params: Mapping[str, Any],
              roles: Mapping[str, str], entropy: bytes) -> None:
        dev = self.devices[name]
        params = self.spec.validate_params(params)
        start = eng.Start(session=session, choreography=self.spec.choreography,
                          role=roles[name], self_name=name, roles=dict(roles), params=params,
                          now=self.now, entropy=entropy)
        driver = self.spec.driver_class(roles[name])(dev.services)
        binds = self.spec.bindings(start, None)
        st = SessionState(driver=driver, monitor=self._monitor(roles[name], binds))
        dev.sessions[session] = st
        group = [(session, eng.KIND_START, eng.encode_body(_start_body(start)))]
        self._apply(dev, session, st, driver.start(start), group)

    def deliver(self, item: InFlight) -> None:
        if self.tamper is not None:
            tampered = self.tamper(item)
            if tampered is None:
                return
            item = tampered
        if item.to in self.down:
            return
        dev = self.devices[item.to]
        sender_key = dev.services.member(item.sender).public_key
        env = item.wire
        try:
            opened = open_envelope(env, link_device_id=sender_key.device_id, link_key=sender_key,
                                   message_types=self.spec.message_types)
        except (BadSignatureError, RemoteProtocolError) as exc:
            dev.misbehaviour.append((item.sender, exc.code, exc.message))
            return
        sid = env.session
        st = dev.sessions.get(sid)
        if st is None:
            opener = self.spec.openers.get(env.step)
            if opener is None:
                dev.misbehaviour.append((item.sender, "no_session", f"{env.step} for {sid}"))
                return
            start = eng.Start(session=sid, choreography=self.spec.choreography, role=opener.role,
                              self_name=dev.name, roles={dev.name: opener.role,
                                                         item.sender: opener.sender_role},
                              params={}, now=self.now, entropy=_entropy(dev.name, sid),
                              opened_by=item.sender)
            driver = self.spec.driver_class(opener.role)(dev.services)
            binds = self.spec.bindings(start, opened.message)
            st = SessionState(driver=driver, monitor=self._monitor(opener.role, binds))
            dev.sessions[sid] = st
            group = [(sid, eng.KIND_START, eng.encode_body(_start_body(start)))]
            self._apply(dev, sid, st, driver.start(start), group)
        self._receive(dev, sid, st, item.sender, env, opened.message)

    def _receive(self, dev: Device, sid: str, st: SessionState, sender: str, env: Envelope,
                 message: msgspec.Struct) -> None:
        if env.digest in st.seen:
            return  # exact duplicate: dropped
        role = st.driver.roles.get(sender)
        if role is None:
            dev.misbehaviour.append((sender, "no_role", f"{sender} has no role in {sid}"))
            return
        if st.monitor is not None:
            try:
                st.monitor.check_inbound(role, message, member=sender)
            except RemoteProtocolError as exc:
                if exc.code == "early_message":
                    st.early.append((sender, env, message))
                    return
                dev.misbehaviour.append((sender, exc.code, exc.message))
                self._append(dev, [(sid, eng.KIND_MISBEHAVIOUR, eng.encode_body(
                    eng.MisbehaviourBody(peer=sender, code=exc.code, reason=exc.message)))])
                return
        st.seen.add(env.digest)
        group = [(sid, eng.KIND_IN, eng.encode_body(eng.InBody(
            sender=sender, sender_role=role, envelope=msgspec.msgpack.encode(env),
            now=self.now)))]
        if st.result is not None or st.error is not None:
            self._append(dev, group)
            return
        effects = st.driver.on_message(eng.MessageIn(sender=sender, sender_role=role,
                                                     message=message, envelope=env,
                                                     now=self.now))
        self._apply(dev, sid, st, effects, group)
        early, st.early = st.early, []
        for s, e, m in early:
            self._receive(dev, sid, st, s, e, m)

    def run(self, *, max_steps: int = 10_000) -> None:
        """Deliver everything queued, in random order (with duplicates), until quiet."""
        steps = 0
        while self.queue and steps < max_steps:
            steps += 1
            i = self.rng.randrange(len(self.queue))
            item = self.queue.pop(i)
            if self.duplicate_rate and self.rng.random() < self.duplicate_rate:
                self.queue.append(item)
            self.deliver(item)

    def fire_timers(self, now: float) -> None:
        self.now = now
        for dev in self.devices.values():
            for sid, st in dev.sessions.items():
                for name, deadline in list(st.timers.items()):
                    if deadline <= now and st.result is None and st.error is None:
                        del st.timers[name]
                        group = [(sid, eng.KIND_TIMER_FIRED, eng.encode_body(
                            eng.TimerBody(name=name, deadline=deadline)))]
                        effects = st.driver.on_timer(eng.TimerFired(name=name, now=now))
                        self._apply(dev, sid, st, effects, group)

    # -- crashes -----------------------------------------------------------------------------

    def crash_and_restore(self, name: str, sid: str, *, keep_groups: int) -> bool:
        """Cut ``name``'s journal to its first ``keep_groups`` groups, drop its in-memory
        session, rehydrate the driver from the session's records and re-send the journaled
        envelopes. False when the driver refused (the session would be aborted)."""
        dev = self.devices[name]
        dev.groups = dev.groups[:keep_groups]
        records = dev.records(sid)
        dev.sessions.pop(sid, None)
        if not records:
            return True
        evidence = eng.parse_evidence(records)
        start = next(e for e in evidence if isinstance(e, eng.Started)).start
        cls = self.spec.driver_class(start.role)
        driver = cls.rehydrate(records, dev.services)
        if driver is None:
            return False
        opening = None
        for e in evidence:
            if isinstance(e, eng.Received):
                opening = eng.decode_message(e.envelope, self.spec.message_types[e.envelope.step])
                break
        monitor = self._monitor(start.role, self.spec.bindings(start, opening))
        st = SessionState(driver=driver, monitor=monitor)
        for e in evidence:
            if isinstance(e, eng.Received):
                st.seen.add(e.envelope.digest)
                monitor.check_inbound(e.sender_role, eng.decode_message(
                    e.envelope, self.spec.message_types[e.envelope.step]), member=e.sender)
            elif isinstance(e, eng.Sent):
                msg = eng.decode_message(e.envelope, self.spec.message_types[e.envelope.step])
                for role in dict.fromkeys(driver.roles[n] for n in e.to):
                    monitor.check_outbound(role, msg)
                self.queue.extend(InFlight(sender=name, to=n, wire=e.envelope) for n in e.to)
            elif isinstance(e, eng.TimerEvent):
                if e.event == "arm":
                    st.timers[e.name] = e.deadline
                else:
                    st.timers.pop(e.name, None)
            elif isinstance(e, eng.Ended):
                if e.ok:
                    st.result = e.result
                else:
                    st.error = (e.code, e.reason)
        dev.sessions[sid] = st
        self._apply(dev, sid, st, driver.resume(self.now), [])
        return True

    def result(self, name: str, sid: str) -> Mapping[str, Any] | None:
        st = self.devices[name].sessions.get(sid)
        return None if st is None else st.result

    def error(self, name: str, sid: str) -> tuple[str, str] | None:
        st = self.devices[name].sessions.get(sid)
        return None if st is None else st.error


def _start_body(start: eng.Start) -> eng.StartBody:
    return eng.StartBody(choreography=start.choreography, role=start.role,
                         self_name=start.self_name, roles=dict(start.roles),
                         params=dict(start.params), now=start.now, entropy=start.entropy,
                         opened_by=start.opened_by)


def _entropy(name: str, sid: str) -> bytes:
    import hashlib

    return hashlib.sha256(f"sim-entropy/{name}/{sid}".encode()).digest()


def account_devices(n: int, t: int, *, seed: int = 1, extra: int = 0) -> dict[str, Device]:
    """``n`` devices ``d1..dn`` holding a ``t``-of-``n`` account (genesis dealt in memory), all
    pinned to each other, plus ``extra`` non-holder devices ``x1..`` pinned too."""
    from aura_node.crypto.dealing import Holder, deal_account
    from aura_node.crypto.group import seeded_rng
    from aura_node.protocols.account import (
        AccountEstablished,
        AccountHolder,
        AccountRecord,
        AccountStore,
        genesis_held_share,
    )
    from aura_node.protocols.services import PeerInfo

    keys = {f"d{i}": DeviceKey.from_seed(bytes([seed, i]) * 16) for i in range(1, n + 1)}
    keys.update({f"x{i}": DeviceKey.from_seed(bytes([seed, 100 + i]) * 16)
                 for i in range(1, extra + 1)})
    names = [f"d{i}" for i in range(1, n + 1)]
    dealing = deal_account(
        threshold=t,
        holders=[Holder(index=i + 1, public_key=keys[nm].public) for i, nm in enumerate(names)],
        session_id="genesis", rng=seeded_rng(bytes([seed]) * 8))
    record = AccountRecord(
        account_id=dealing.account_id, public_key=dealing.public_key.to_bytes(), threshold=t,
        devices=tuple(AccountHolder(name=names[i], device_id=s.device_id, index=s.index,
                                    public_share=s.public_share.to_bytes())
                      for i, s in enumerate(dealing.shares)),
        device_commitments=dealing.commitments.to_bytes())
    devices: dict[str, Device] = {}
    for name, key in keys.items():
        store = AccountStore()
        if name in names:
            i = names.index(name)
            store.add(AccountEstablished(account=record, shares=(genesis_held_share(
                holder_set="devices", index=i + 1, sealed=dealing.shares[i].sealed,
                session_id="genesis"),)))
        peers = {o: PeerInfo(name=o, role="device", public_key=k.public)
                 for o, k in keys.items() if o != name}
        services = NodeServices(self_name=name, self_role="device", device_key=key,
                                peers=peers, accounts=store)
        devices[name] = Device(name=name, key=key, services=services)
    return devices
