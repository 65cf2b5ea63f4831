"""EffectExecutor ordering against a real journal: nothing leaves before its fsync."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import AuraError, TransportError
from aura_node.journal import Journal, JournalEntry
from aura_node.journal.group_commit import GroupCommitJournal
from aura_node.runtime.executor import EffectExecutor
from aura_node.runtime.timers import TimerWheel
from aura_node.sessions import Outcome, Resolve, Step, Transmit

KEY = DeviceKey.from_seed(b"k" * 32)


class RecordingNetwork:
    """Records every send together with what the journal held on disk at that moment."""

    def __init__(self, journal: Journal, *, fail_for: str = "") -> None:
        self.journal = journal
        self.sent: list[tuple[str, bytes, set[bytes]]] = []
        self.fail_for = fail_for

    async def send(self, peer_name: str, payload: bytes) -> None:
        self.send_nowait(peer_name, payload)

    def send_nowait(self, peer_name: str, payload: bytes) -> bool:
        durable = {r.body for r in self.journal.records()}
        self.sent.append((peer_name, payload, durable))
        if peer_name == self.fail_for:
            raise TransportError(f"no link to {peer_name}")
        return True


def _append(gcj: GroupCommitJournal):  # type: ignore[no-untyped-def]
    async def append(records, ts):  # type: ignore[no-untyped-def]
        await gcj.append_many([JournalEntry(session=s, kind=k, body=b, ts=ts)
                               for s, k, b in records])
    return append


async def test_every_send_follows_the_fsync_of_its_records(tmp_path: Path) -> None:
    async with GroupCommitJournal.open(tmp_path / "j", KEY) as gcj:
        net = RecordingNetwork(gcj.journal)
        send, recv = trio.open_memory_channel[Step](100)
        cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
        ex = EffectExecutor(effects=recv, append=_append(gcj), network=net,
                            timers=TimerWheel(cmd_send))  # type: ignore[arg-type]
        replies = [Outcome() for _ in range(50)]
        for i in range(50):
            body = f"envelope-{i}".encode()
            send.send_nowait(Step(session=f"{i:032x}", ts=0.0, records=[("msg.out", body)],
                                  actions=[Transmit(peer="bob", payload=body),
                                           Resolve(outcome=replies[i], value={"i": i})]))
        send.close()
        await ex.run()
        # all 50 steps were waiting: one group commit, not fifty
        assert ex.batches == 1 and gcj.batches == 1
        assert [p for _, p, _ in net.sent] == [f"envelope-{i}".encode() for i in range(50)]
        for _peer, payload, durable in net.sent:
            assert payload in durable  # the record was in the journal before send ran
        assert all(r.done for r in replies)


async def test_a_send_failure_is_logged_and_the_rest_continues(tmp_path: Path) -> None:
    async with GroupCommitJournal.open(tmp_path / "j", KEY) as gcj:
        net = RecordingNetwork(gcj.journal, fail_for="carol")
        send, recv = trio.open_memory_channel[Step](10)
        cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
        ex = EffectExecutor(effects=recv, append=_append(gcj), network=net,
                            timers=TimerWheel(cmd_send))  # type: ignore[arg-type]
        send.send_nowait(Step(session="a" * 32, ts=0.0, records=[("msg.out", b"x")],
                              actions=[Transmit(peer="carol", payload=b"x"),
                                       Transmit(peer="bob", payload=b"x")]))
        send.close()
        await ex.run()
        assert [p for p, _, _ in net.sent] == ["carol", "bob"]
        assert ex.send_failures == 1 and ex.sent == 1


async def test_a_failed_append_sends_nothing(tmp_path: Path) -> None:
    sent: list[str] = []

    class Net:
        async def send(self, peer_name: str, payload: bytes) -> None:
            sent.append(peer_name)

        def send_nowait(self, peer_name: str, payload: bytes) -> bool:
            sent.append(peer_name)
            return True

    async def broken_append(records: object, ts: float) -> None:
        raise AuraError("disk on fire")

    send, recv = trio.open_memory_channel[Step](10)
    cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
    ex = EffectExecutor(effects=recv, append=broken_append, network=Net(),
                        timers=TimerWheel(cmd_send))  # type: ignore[arg-type]
    send.send_nowait(Step(session="a" * 32, ts=0.0, records=[("msg.out", b"x")],
                          actions=[Transmit(peer="bob", payload=b"x")]))
    send.close()
    with pytest.raises(AuraError, match="disk on fire"):
        await ex.run()
    assert sent == []


async def test_a_full_peer_queue_does_not_stall_other_sessions(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    class StuckThenFine:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send_nowait(self, peer_name: str, payload: bytes) -> bool:
            if peer_name == "slow":
                return False
            self.sent.append(peer_name)
            return True

        async def send(self, peer_name: str, payload: bytes) -> None:
            await trio.sleep_forever()  # the slow peer's queue never drains

    async def append(records: object, ts: float) -> None:
        return None

    net = StuckThenFine()
    send, recv = trio.open_memory_channel[Step](10)
    cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
    ex = EffectExecutor(effects=recv, append=append, network=net,
                        timers=TimerWheel(cmd_send), send_wait=0.5)  # type: ignore[arg-type]
    send.send_nowait(Step(session="a" * 32, ts=0.0, actions=[Transmit(peer="slow", payload=b"x"),
                                                           Transmit(peer="bob", payload=b"y")]))
    send.close()
    t0 = trio.current_time()
    await ex.run()
    assert net.sent == ["bob"] and ex.send_failures == 1
    assert trio.current_time() - t0 == pytest.approx(0.5)


def _submit(gcj: GroupCommitJournal):  # type: ignore[no-untyped-def]
    async def submit(records, ts):  # type: ignore[no-untyped-def]
        return await gcj.submit_many([JournalEntry(session=s, kind=k, body=b, ts=ts)
                                      for s, k, b in records])
    return submit


async def test_pipelined_every_send_follows_the_fsync_of_its_records(tmp_path: Path) -> None:
    async with GroupCommitJournal.open(tmp_path / "j", KEY) as gcj:
        net = RecordingNetwork(gcj.journal)
        send, recv = trio.open_memory_channel[Step](1)
        cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
        ex = EffectExecutor(effects=recv, append=_append(gcj), submit=_submit(gcj),
                            network=net, timers=TimerWheel(cmd_send))  # type: ignore[arg-type]
        replies = [Outcome() for _ in range(60)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ex.run)
            async with send:
                for i in range(60):  # a trickle: many small batches, several in flight
                    body = f"envelope-{i}".encode()
                    await send.send(Step(
                        session=f"{i % 7:032x}", ts=0.0, records=[("msg.out", body)],
                        actions=[Transmit(peer="bob", payload=body),
                                 Resolve(outcome=replies[i], value={"i": i})]))
        assert [p for _, p, _ in net.sent] == [f"envelope-{i}".encode() for i in range(60)]
        for _peer, payload, durable in net.sent:
            assert payload in durable  # the record was in the journal before send ran
        assert all(r.done for r in replies)
        assert ex.records == 60 and ex.batches == gcj.batches


class GatedJournal:
    """A journal whose batches become durable only when the test says so."""

    def __init__(self) -> None:
        self.submitted: list[list[bytes]] = []
        self.gates: list[trio.Event] = []
        self.fail: Exception | None = None

    async def submit(self, records: list[tuple[str, str, bytes]], ts: float) -> GatedJournal:
        self.submitted.append([b for _, _, b in records])
        self.gates.append(trio.Event())
        gate = self.gates[-1]
        outer = self

        class Pending:
            async def wait(self) -> None:
                await gate.wait()
                if outer.fail is not None:
                    raise outer.fail

        return Pending()  # type: ignore[return-value]


async def test_pipelined_batch_n_plus_1_is_queued_while_batch_n_syncs() -> None:
    sent: list[bytes] = []

    class Net:
        async def send(self, peer_name: str, payload: bytes) -> None:
            sent.append(payload)

        def send_nowait(self, peer_name: str, payload: bytes) -> bool:
            sent.append(payload)
            return True

    async def append(records: object, ts: float) -> None:
        raise AssertionError("the pipelined executor submits, it does not append")

    journal = GatedJournal()
    send, recv = trio.open_memory_channel[Step](10)
    cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
    ex = EffectExecutor(effects=recv, append=append, submit=journal.submit,  # type: ignore[arg-type]
                        network=Net(), timers=TimerWheel(cmd_send))  # type: ignore[arg-type]

    def step(name: bytes) -> Step:
        return Step(session="a" * 32, ts=0.0, records=[("msg.out", name)],
                    actions=[Transmit(peer="bob", payload=name)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex.run)
        send.send_nowait(step(b"n"))
        await trio.testing.wait_all_tasks_blocked()
        send.send_nowait(step(b"n+1"))
        await trio.testing.wait_all_tasks_blocked()
        # batch n+1 is with the journal although batch n is not durable yet
        assert journal.submitted == [[b"n"], [b"n+1"]]
        assert sent == []
        journal.gates[1].set()  # n+1 synced first (never happens; still must wait for n)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []
        journal.gates[0].set()
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"n", b"n+1"]  # each after its own records, in order
        send.close()
    assert ex.batches == 2


async def test_pipelined_a_failed_append_sends_nothing_and_propagates() -> None:
    sent: list[bytes] = []

    class Net:
        async def send(self, peer_name: str, payload: bytes) -> None:
            sent.append(payload)

        def send_nowait(self, peer_name: str, payload: bytes) -> bool:
            sent.append(payload)
            return True

    async def append(records: object, ts: float) -> None:
        raise AssertionError("unused")

    journal = GatedJournal()
    journal.fail = AuraError("disk on fire")
    send, recv = trio.open_memory_channel[Step](10)
    cmd_send, _cmd_recv = trio.open_memory_channel[object](10)
    ex = EffectExecutor(effects=recv, append=append, submit=journal.submit,  # type: ignore[arg-type]
                        network=Net(), timers=TimerWheel(cmd_send))  # type: ignore[arg-type]
    send.send_nowait(Step(session="a" * 32, ts=0.0, records=[("msg.out", b"x")],
                          actions=[Transmit(peer="bob", payload=b"x")]))
    send.close()

    async def sync_then_fail() -> None:
        await trio.testing.wait_all_tasks_blocked()
        journal.gates[0].set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_then_fail)
        # the failure itself comes out of run (no group around it), as without the pipeline
        with pytest.raises(AuraError, match="disk on fire"):
            await ex.run()
    assert sent == []
