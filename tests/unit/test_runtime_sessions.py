"""SessionRuntime: monitors in front of drivers, journal records before actions, isolation,
idempotent duplicates, rehydration and re-send from the journal (with a real journal)."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from aura_node.crypto.keys import DeviceKey
from aura_node.journal import JournalEntry
from aura_node.journal.group_commit import GroupCommitJournal
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import decode_wire, encode_wire, seal
from aura_node.protocols.ping.choreography import Ping, Pong
from aura_node.protocols.ping.roles import SPEC as PING
from aura_node.protocols.services import NodeServices, PeerInfo
from aura_node.runtime.executor import EffectExecutor
from aura_node.runtime.timers import TimerWheel
from aura_node.sessions import (
    Arm,
    Outcome,
    PeerDirectory,
    Resolve,
    SessionFailedError,
    SessionRuntime,
    StartSession,
    Step,
    TimerExpired,
    Transmit,
    UnknownSessionError,
    choreography_monitor,
)

KEYS = {"a": DeviceKey.from_seed(b"a" * 32), "b": DeviceKey.from_seed(b"b" * 32)}


@dataclass(frozen=True)
class Inbound:
    peer_name: str
    device_id: str
    payload: bytes


def services(name: str) -> NodeServices:
    other = "b" if name == "a" else "a"
    return NodeServices(self_name=name, self_role="device", device_key=KEYS[name],
                        peers={other: PeerInfo(name=other, role="device",
                                               public_key=KEYS[other].public)})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def runtime(name: str, clock: Clock, protocols: Any = None) -> SessionRuntime:
    other = "b" if name == "a" else "a"
    return SessionRuntime(
        key=KEYS[name], self_name=name,
        peers=PeerDirectory({other: KEYS[other].public}),
        protocols=protocols or {"ping": PING}, monitor_for=choreography_monitor, clock=clock,
        services=services(name),
    )


def start_ping(rt: SessionRuntime, peer: str, sid: str = "1" * 32) -> tuple[Step, Outcome]:
    reply = Outcome()
    step = rt.handle_command(StartSession(
        choreography="ping", params={"timeout": 5}, roles={rt.self_name: "initiator",
                                                           peer: "responder"},
        session=sid, entropy=bytes(range(32)), reply=reply))
    assert step is not None
    return step, reply


def deliver(step: Step, to: SessionRuntime, sender: str) -> Step | None:
    [payload] = [a.payload for a in step.actions if isinstance(a, Transmit)]
    return to.handle_inbound(Inbound(sender, KEYS[sender].device_id, payload))


def kinds(step: Step | None) -> list[str]:
    assert step is not None
    return [k for k, _ in step.records]


def test_ping_between_two_runtimes_journals_every_step_first() -> None:
    clock = Clock()
    a, b = runtime("a", clock), runtime("b", clock)
    s1, reply = start_ping(a, "b")
    assert kinds(s1) == ["session.start", "msg.out", "timer.arm"]
    assert [type(x).__name__ for x in s1.actions] == ["Transmit", "Arm", "Resolve"]
    clock.now += 0.004
    s2 = deliver(s1, b, "a")
    assert kinds(s2) == ["session.start", "msg.in", "msg.out", "session.complete"]
    s3 = deliver(s2, a, "b")  # type: ignore[arg-type]
    assert kinds(s3) == ["msg.in", "timer.cancel", "session.complete"]
    entry = a.get("1" * 32)
    assert entry.outcome == "completed" and entry.result == {"peer": "b", "rtt_ms": 4.0}
    assert entry.state == "Completed" and b.get("1" * 32).state == "Completed"
    # the waiters are resolved only by the executor's actions (after the journal append)
    assert not reply.done and not entry.final.done
    assert any(isinstance(x, Resolve) and x.outcome is entry.final for x in s3.actions)  # type: ignore[union-attr]


def test_duplicates_are_idempotent_and_a_replay_gets_the_journaled_answer() -> None:
    clock = Clock()
    a, b = runtime("a", clock), runtime("b", clock)
    s1, _ = start_ping(a, "b")
    s2 = deliver(s1, b, "a")
    assert s2 is not None
    assert deliver(s1, b, "a") is None  # the same envelope again: nothing happens
    [ping] = [x.payload for x in s1.actions if isinstance(x, Transmit)]
    replayed = decode_wire(ping).envelope
    s4 = b.handle_inbound(Inbound("a", KEYS["a"].device_id, encode_wire(replayed, replay=True)))
    [pong] = [x.payload for x in s2.actions if isinstance(x, Transmit)]
    assert s4 is not None and s4.records == []
    assert [x.payload for x in s4.actions if isinstance(x, Transmit)] == [pong]  # not regenerated
    assert b.duplicates == 2


def test_monitor_violation_is_journaled_as_misbehaviour_and_the_session_goes_on() -> None:
    clock = Clock()
    b = runtime("b", clock)
    start_ping(b, "a", sid="2" * 32)  # b is the initiator, awaiting a Pong
    # a (validly signed, pinned) sends a Ping into b's session, where only Pong may come
    env = seal(KEYS["a"], choreography="ping", session="2" * 32, message=Ping(nonce=b"x" * 16))
    step = b.handle_inbound(Inbound("a", KEYS["a"].device_id, encode_wire(env)))
    assert kinds(step) == ["misbehaviour"]
    assert step is not None and not step.actions
    body = eng.parse_record(_rec(step.records[0]))
    assert isinstance(body, eng.Misbehaved) and body.code == "unexpected_message"
    assert b.get("2" * 32).outcome == "active"


def test_bad_signature_and_unknown_sessions_touch_no_journal() -> None:
    clock = Clock()
    b = runtime("b", clock)
    forged = seal(KEYS["b"], choreography="ping", session="3" * 32, message=Ping(nonce=b""))
    assert b.handle_inbound(Inbound("a", KEYS["a"].device_id, encode_wire(forged))) is None
    pong = seal(KEYS["a"], choreography="ping", session="4" * 32, message=Pong(nonce=b""))
    assert b.handle_inbound(Inbound("a", KEYS["a"].device_id, encode_wire(pong))) is None
    assert b.handle_inbound(Inbound("a", KEYS["a"].device_id, b"\x93garbage")) is None
    assert b.sessions == {} and b.rejected == 3


class ExplodingResponder(PING.driver_class("responder")):  # type: ignore[misc]
    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        if isinstance(inp.message, Ping) and inp.envelope.session == "6" * 32:
            raise ZeroDivisionError("driver bug")
        return super().on_message(inp)


def test_an_exception_in_one_session_aborts_only_that_session() -> None:
    clock = Clock()
    protocols = {"ping": eng.ProtocolSpec(
        choreography="ping", drivers={**PING.drivers, "responder": ExplodingResponder},
        message_types=PING.message_types, openers=PING.openers, initiator_role="initiator",
        validate_params=PING.validate_params)}
    a, b = runtime("a", clock), runtime("b", clock, protocols)
    good, _ = start_ping(a, "b", sid="5" * 32)
    bad_reply = Outcome()
    bad = a.handle_command(StartSession(
        choreography="ping", params={}, roles={"a": "initiator", "b": "responder"},
        session="6" * 32, entropy=b"\xff" * 32, reply=bad_reply))
    assert bad is not None
    s_bad = deliver(bad, b, "a")
    assert kinds(s_bad) == ["session.start", "msg.in", "session.fail", "msg.out"]
    assert b.get("6" * 32).error == {"code": "driver_error",
                                     "reason": "ZeroDivisionError: driver bug"}
    # the abort reached the initiator as the choreography's abort message
    s_abort = deliver(s_bad, a, "b")  # type: ignore[arg-type]
    assert kinds(s_abort) == ["msg.in", "session.fail"]
    assert a.get("6" * 32).error["code"] == "aborted_by_peer"  # type: ignore[index]
    assert a.get("6" * 32).state == "Failed"
    s_good = deliver(good, b, "a")
    assert kinds(s_good)[-1] == "session.complete"
    assert b.get("5" * 32).outcome == "completed"


def test_deadline_fails_the_session_and_tells_the_peer() -> None:
    clock = Clock()
    a = runtime("a", clock)
    s1, _ = start_ping(a, "b")
    [arm] = [x for x in s1.actions if isinstance(x, Arm)]
    clock.now = arm.deadline
    step = a.handle_command(TimerExpired(session="1" * 32, name=arm.name,
                                         generation=arm.generation))
    assert kinds(step) == ["timer.fired", "session.fail", "msg.out"]
    assert a.get("1" * 32).error["code"] == "timeout"  # type: ignore[index]
    # a stale expiry of the same timer does nothing
    assert a.handle_command(TimerExpired(session="1" * 32, name=arm.name,
                                         generation=arm.generation)) is None


@dataclass(frozen=True)
class _Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def _rec(kb: tuple[str, bytes]) -> _Rec:
    return _Rec(seq=0, ts=0.0, session="", kind=kb[0], body=kb[1])


class Crash(Exception):
    """The process dies between the journal append and the send."""


class CrashingNetwork:
    async def send(self, peer_name: str, payload: bytes) -> None:
        raise Crash

    def send_nowait(self, peer_name: str, payload: bytes) -> bool:
        raise Crash


class RecordingNetwork:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, peer_name: str, payload: bytes) -> None:
        self.sent.append((peer_name, payload))

    def send_nowait(self, peer_name: str, payload: bytes) -> bool:
        self.sent.append((peer_name, payload))
        return True


async def _executor(gcj: GroupCommitJournal, net: Any, steps: list[Step]) -> EffectExecutor:
    async def append(records: Any, ts: float) -> None:
        await gcj.append_many([JournalEntry(session=s, kind=k, body=b, ts=ts)
                               for s, k, b in records])

    send, recv = trio.open_memory_channel[Step](len(steps) + 1)
    cmd_send, _ = trio.open_memory_channel[Any](10)
    ex = EffectExecutor(effects=recv, append=append, network=net,
                        timers=TimerWheel(cmd_send))
    for s in steps:
        send.send_nowait(s)
    send.close()
    await ex.run()
    return ex


async def test_crash_between_journal_and_send_resends_the_same_envelope(tmp_path: Path) -> None:
    clock = Clock()
    a1 = runtime("a", clock)
    s1, _ = start_ping(a1, "b")
    [original] = [x.payload for x in s1.actions if isinstance(x, Transmit)]
    async with GroupCommitJournal.open(tmp_path / "a", KEYS["a"]) as gcj:
        with pytest.raises(Crash):
            await _executor(gcj, CrashingNetwork(), [s1])
    # restart: a fresh runtime rebuilt only from the journal
    async with GroupCommitJournal.open(tmp_path / "a", KEYS["a"]) as gcj:
        by_session: dict[str, list[Any]] = {}
        for r in gcj.journal.records():
            by_session.setdefault(r.session, []).append(r)
        a2 = runtime("a", clock)
        steps = a2.rehydrate(by_session)
        entry = a2.get("1" * 32)
        assert entry.outcome == "active" and entry.state == "AwaitingPong"
        [resend] = [x for s in steps for x in s.actions if isinstance(x, Transmit)]
        again = decode_wire(resend.payload)
        assert again.replay is True
        assert again.envelope == decode_wire(original).envelope  # re-sent, not regenerated
        assert any(isinstance(x, Arm) for s in steps for x in s.actions)  # deadline re-armed
        net = RecordingNetwork()
        await _executor(gcj, net, steps)
        assert [p for p, _ in net.sent] == ["b"]
        # the responder answers; the rehydrated initiator completes
        b = runtime("b", clock)
        s2 = b.handle_inbound(Inbound("a", KEYS["a"].device_id, resend.payload))
        s3 = deliver(s2, a2, "b")  # type: ignore[arg-type]
        assert kinds(s3)[-1] == "session.complete"
        await _executor(gcj, RecordingNetwork(), [s3])  # type: ignore[list-item]
        assert await entry.final.wait() == {"peer": "b", "rtt_ms": 0.0}


async def test_failed_start_answers_the_operator_with_the_reason() -> None:
    clock = Clock()
    a = runtime("a", clock)
    reply = Outcome()
    assert a.handle_command(StartSession(
        choreography="ping", params={"timeout": -1}, roles={"a": "initiator", "b": "responder"},
        session="7" * 32, entropy=b"e" * 32, reply=reply)) is None
    with pytest.raises(eng.ParamsError, match="> 0"):
        await reply.wait()
    reply2 = Outcome()
    a.handle_command(StartSession(
        choreography="ping", params={}, roles={"a": "initiator", "zed": "responder"},
        session="8" * 32, entropy=b"e" * 32, reply=reply2))
    with pytest.raises(eng.ParamsError, match="not a pinned peer"):
        await reply2.wait()
    assert SessionFailedError.code == "session_failed"


def evicting_runtime(name: str, clock: Clock, gcj: GroupCommitJournal, *, cache: int,
                     retention: float = 600.0) -> SessionRuntime:
    other = "b" if name == "a" else "a"
    return SessionRuntime(
        key=KEYS[name], self_name=name, peers=PeerDirectory({other: KEYS[other].public}),
        protocols={"ping": PING}, monitor_for=choreography_monitor, clock=clock,
        services=services(name), ended_retention=retention, ended_cache=cache,
        journal_records=gcj.journal.session_records,
    )


async def test_ended_sessions_are_evicted_and_still_answered_from_the_journal(
    tmp_path: Path,
) -> None:
    clock = Clock()
    a = runtime("a", clock)
    async with GroupCommitJournal.open(tmp_path / "b", KEYS["b"]) as gcj:
        b = evicting_runtime("b", clock, gcj, cache=5, retention=100.0)
        exchanges: dict[str, tuple[Step, Step]] = {}
        for i in range(20):
            sid = f"{i + 1:032x}"
            s1, _ = start_ping(a, "b", sid)
            s2 = deliver(s1, b, "a")
            assert s2 is not None and kinds(s2)[-1] == "session.complete"
            await _executor(gcj, RecordingNetwork(), [s2])  # durable: final resolved
            exchanges[sid] = (s1, s2)
            clock.now += 1.0
            # the cache plus the one that ended since the last sweep
            assert len(b.sessions) <= 6
        assert b.evicted >= 14 and b.counts()["completed"] == 20
        old = f"{1:032x}"
        assert old not in b.sessions
        s1, s2 = exchanges[old]
        [ping] = [x.payload for x in s1.actions if isinstance(x, Transmit)]
        [pong] = [x.payload for x in s2.actions if isinstance(x, Transmit)]
        # a late duplicate of the opener: dropped, and no second session under that id
        dup_before = b.duplicates
        assert b.handle_inbound(Inbound("a", KEYS["a"].device_id, ping)) is None
        assert b.duplicates == dup_before + 1 and old not in b.sessions
        # a replay (the peer restarted): our journaled Pong again, byte for byte
        replay = encode_wire(decode_wire(ping).envelope, replay=True)
        step = b.handle_inbound(Inbound("a", KEYS["a"].device_id, replay))
        assert step is not None and step.records == []
        assert [(x.peer, x.payload) for x in step.actions if isinstance(x, Transmit)] == [
            ("a", pong)]
        # a *new* opener under the evicted id (a peer reusing it): refused, never re-opened
        rejected = b.rejected
        env = seal(KEYS["a"], choreography="ping", session=old, message=Ping(nonce=b"n" * 16))
        assert b.handle_inbound(Inbound("a", KEYS["a"].device_id, encode_wire(env))) is None
        assert b.rejected == rejected + 1 and old not in b.sessions
        # an operator start under a journaled id is refused too
        reply = Outcome()
        assert b.handle_command(StartSession(
            choreography="ping", params={"timeout": 5}, roles={"b": "initiator",
                                                               "a": "responder"},
            session=old, entropy=b"e" * 32, reply=reply)) is None
        with pytest.raises(eng.ParamsError, match="exists already"):
            await reply.wait()
        # ctl session ID answers from the journal
        view = b.describe(old)
        assert view["evicted"] is True and view["outcome"] == "completed"
        assert view["protocol"] == "ping" and view["role"] == "responder"
        assert view["messages_in"] == 1 and view["messages_out"] == 1
        assert isinstance(view["result"], dict) and "error" not in view
        kept = f"{20:032x}"
        assert b.describe(kept) == b.get(kept).detail() and "evicted" not in b.describe(kept)
        with pytest.raises(UnknownSessionError):
            b.describe("f" * 32)
        # the retention window: past it every ended session leaves memory
        clock.now += 200.0
        b.prune()
        assert b.sessions == {} and b.counts()["completed"] == 20


async def test_rehydration_keeps_only_the_newest_ended_sessions(tmp_path: Path) -> None:
    clock = Clock()
    a = runtime("a", clock)
    async with GroupCommitJournal.open(tmp_path / "b", KEYS["b"]) as gcj:
        b = runtime("b", clock)  # no eviction (no journal given): keeps all
        for i in range(8):
            s1, _ = start_ping(a, "b", f"{i + 1:032x}")
            s2 = deliver(s1, b, "a")
            await _executor(gcj, RecordingNetwork(), [s2])  # type: ignore[list-item]
            clock.now += 1.0
        assert len(b.sessions) == 8 and b.evicted == 0
        by_session: dict[str, list[Any]] = {}
        for r in gcj.journal.records():
            by_session.setdefault(r.session, []).append(r)
        b2 = evicting_runtime("b", clock, gcj, cache=3)
        b2.rehydrate(by_session)
        assert sorted(b2.sessions) == [f"{i:032x}" for i in (6, 7, 8)]
        assert b2.counts()["completed"] == 8
        assert b2.describe(f"{1:032x}")["outcome"] == "completed"


async def test_memory_per_ended_session_is_bounded(tmp_path: Path, full_run: bool) -> None:
    """Python-heap growth per ended session with and without eviction (printed; the assert
    is on the table size and on eviction saving most of it, not on timing)."""
    n = 600 if full_run else 150
    growth: dict[bool, float] = {}
    for evict in (False, True):
        clock = Clock()
        a = runtime("a", clock)
        async with GroupCommitJournal.open(tmp_path / f"b{evict}", KEYS["b"]) as gcj:
            b = (evicting_runtime("b", clock, gcj, cache=10) if evict else runtime("b", clock))
            # the initiator's side is made up front: only b's growth is measured
            opens = [start_ping(a, "b", f"{i + 1:032x}")[0] for i in range(20 + n)]
            for s1 in opens[:20]:  # warm up (first-use allocations), then the steady state
                await _executor(gcj, RecordingNetwork(), [deliver(s1, b, "a")])  # type: ignore[list-item]
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                for s1 in opens[20:]:
                    await _executor(gcj, RecordingNetwork(), [deliver(s1, b, "a")])  # type: ignore[list-item]
                    clock.now += 0.01
                gc.collect()
                growth[evict] = (tracemalloc.get_traced_memory()[0] - base) / n
            finally:
                tracemalloc.stop()
            if evict:
                assert len(b.sessions) <= 11
            else:
                assert len(b.sessions) == n + 20
    print(f"heap per ended session: kept {growth[False]:.0f} B, evicted {growth[True]:.0f} B")
    assert growth[True] < growth[False] / 2


def test_a_journal_the_replay_contradicts_aborts_that_session_as_nondeterminism() -> None:
    """Rehydration is the kit's replay: a journaled message the same inputs would not send
    (here a Ping with another nonce) aborts only that session, coded ``nondeterminism``."""
    from aura_node.protocols.envelope import encode_envelope

    clock = Clock()
    a1 = runtime("a", clock)
    honest, _ = start_ping(a1, "b", sid="1" * 32)
    tampered, _ = start_ping(a1, "b", sid="2" * 32)
    forged = seal(KEYS["a"], choreography="ping", session="2" * 32, message=Ping(nonce=b"z" * 16))
    records = []
    for kind, body in tampered.records:
        if kind == eng.KIND_OUT:
            body = eng.encode_body(eng.OutBody(to=["b"], envelope=encode_envelope(forged)))
        records.append((kind, body))
    by_session = {
        "1" * 32: [_Rec(seq=i, ts=0.0, session="1" * 32, kind=k, body=b)
                   for i, (k, b) in enumerate(honest.records)],
        "2" * 32: [_Rec(seq=10 + i, ts=0.0, session="2" * 32, kind=k, body=b)
                   for i, (k, b) in enumerate(records)],
    }
    a2 = runtime("a", clock)
    steps = a2.rehydrate(by_session)
    bad = a2.get("2" * 32)
    assert bad.outcome == "failed" and bad.error is not None
    assert bad.error["code"] == "nondeterminism"
    assert "2" * 32 in bad.error["reason"] and "Ping" in bad.error["reason"]
    fail = [k for s in steps if s.session == "2" * 32 for k, _ in s.records]
    assert eng.KIND_FAIL in fail  # journaled, and the peer is told (abort fan-out)
    good = a2.get("1" * 32)
    assert good.outcome == "active" and good.state == "AwaitingPong"


def test_a_retransmitted_early_message_is_delivered_once() -> None:
    """A message that comes before its turn is held as early; a retransmitted copy of it (a
    peer's link came back up) is a duplicate, not a second gather answer - before or after
    the held copy is delivered - so no misbehaviour is journaled and the session completes."""
    from aura_node.crypto.keys import DeviceKey as Key
    from tests.unit.test_kit import VOTE_PROTOCOL, Ack, Vote

    keys = {n: Key.from_seed(n.encode().ljust(32, b"-")) for n in ("c", "v1", "v2")}
    clock = Clock()
    rt = SessionRuntime(
        key=keys["c"], self_name="c",
        peers=PeerDirectory({n: keys[n].public for n in ("v1", "v2")}),
        protocols={"kit-vote": VOTE_PROTOCOL.spec}, monitor_for=choreography_monitor,
        clock=clock,
        services=NodeServices(self_name="c", self_role="device", device_key=keys["c"],
                              peers={n: PeerInfo(name=n, role="device",
                                                 public_key=keys[n].public)
                                     for n in ("v1", "v2")}))
    sid = "9" * 32
    assert rt.handle_command(StartSession(
        choreography="kit-vote", params={"k": 2, "n": 2},
        roles={"c": "coordinator", "v1": "voters", "v2": "voters"}, session=sid,
        entropy=b"e" * 32, reply=Outcome())) is not None

    def send(sender: str, message: Any, *, replay: bool = False) -> Step | None:
        env = seal(keys[sender], choreography="kit-vote", session=sid, message=message)
        return rt.handle_inbound(Inbound(sender, keys[sender].device_id,
                                         encode_wire(env, replay=replay)))

    ack = seal(keys["v1"], choreography="kit-vote", session=sid, message=Ack())
    for _ in range(2):  # v1's Ack before its turn, twice (the second: a retransmission)
        rt.handle_inbound(Inbound("v1", keys["v1"].device_id, encode_wire(ack)))
    send("v1", Vote(yes=True))
    steps = [send("v2", Vote(yes=False))]  # quorum: Tally goes out, the held Ack is due
    steps.append(rt.handle_inbound(Inbound("v1", keys["v1"].device_id, encode_wire(ack))))
    steps.append(send("v2", Ack()))
    records = [k for s in steps if s is not None for k, _ in s.records]
    assert eng.KIND_MISBEHAVIOUR not in records, records
    assert records.count(eng.KIND_IN) == 3  # Vote v2, the held Ack v1 (once), Ack v2
    assert rt.get(sid).outcome == "completed"
