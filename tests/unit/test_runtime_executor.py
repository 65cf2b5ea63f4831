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
