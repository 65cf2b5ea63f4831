"""Group commit under Trio: batching, durability of acknowledged appends, failure, shutdown."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import JournalError, JournalFailedError
from aura_node.journal import Journal, JournalEntry, JournalRecord, verify_journal
from aura_node.journal.group_commit import GroupCommitJournal

KEY = DeviceKey.from_seed(b"\x09" * 32)


class CountingSync:
    def __init__(self) -> None:
        self.calls = 0
        self.real = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.real(fd)


async def test_concurrent_appends_are_batched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = CountingSync()
    monkeypatch.setattr(os, "fdatasync", sync)
    tasks, per_task = 100, 5
    acked: list[JournalRecord] = []
    async with GroupCommitJournal.open(tmp_path, KEY, max_batch=64) as gcj:

        async def worker(i: int) -> None:
            for k in range(per_task):
                rec = await gcj.append(
                    session=f"s{i}", kind="test/append", body=f"{i}:{k}".encode(), ts=float(k)
                )
                assert rec.session == f"s{i}" and rec.body == f"{i}:{k}".encode()
                acked.append(rec)

        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(worker, i)
        assert gcj.appended == tasks * per_task
        batches = gcj.batches
    n = tasks * per_task
    assert len({r.seq for r in acked}) == n
    # batches formed: far fewer fsyncs than appends, and one fsync per batch
    assert batches < n / 4, batches
    assert sync.calls == batches  # (the directory fsync is an os.fsync, not counted)
    with Journal.open(tmp_path, KEY) as j:
        on_disk = {r.seq: r for r in j.records()}
        assert all(on_disk[r.seq] == r for r in acked)
        # each task's appends are in its own order in the session index
        for i in range(tasks):
            bodies = [r.body for r in j.session_records(f"s{i}")]
            assert bodies == [f"{i}:{k}".encode() for k in range(per_task)]


async def test_append_many_is_one_group_commit_in_order(tmp_path: Path) -> None:
    async with GroupCommitJournal.open(tmp_path, KEY) as gcj:
        before = gcj.batches
        recs = await gcj.append_many(
            [JournalEntry(session="x", kind="t/m", body=bytes([i]), ts=0.0) for i in range(10)]
        )
        assert gcj.batches == before + 1
        assert [r.body for r in recs] == [bytes([i]) for i in range(10)]
        assert [r.seq for r in recs] == list(range(recs[0].seq, recs[0].seq + 10))
        assert await gcj.append_many([]) == []


async def test_fsync_failure_fails_every_waiter_and_every_later_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with GroupCommitJournal.open(tmp_path, KEY, max_batch=8) as gcj:
        good = await gcj.append(session="a", kind="t/ok", body=b"ok", ts=0.0)
        calls: list[int] = []

        def broken(fd: int) -> None:
            calls.append(fd)
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        results: list[BaseException | JournalRecord] = []

        async def worker(i: int) -> None:
            try:
                results.append(await gcj.append(session="b", kind="t/x", body=b"%d" % i, ts=0))
            except JournalError as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(worker, i)
        assert len(results) == 40
        assert all(isinstance(r, JournalFailedError) for r in results), results
        assert all("Input/output error" in str(r) for r in results)
        assert len(calls) == 1  # never retried
        assert gcj.failure is not None
        monkeypatch.undo()
        with pytest.raises(JournalFailedError, match="Input/output error"):
            await gcj.append(session="c", kind="t/late", body=b"", ts=0.0)
        assert len(calls) == 1
    with Journal.open(tmp_path, KEY) as j:
        recs = list(j.records())
    # the failed batch was never acknowledged; its bytes may or may not have reached the disk
    # (here they sit in the page cache), but nothing after the failure was ever written
    assert recs[0] == good
    assert all(r.kind == "t/x" for r in recs[1:]) and len(recs) <= 1 + 8


async def test_a_bad_request_does_not_sink_its_batch_neighbours(tmp_path: Path) -> None:
    async with GroupCommitJournal.open(tmp_path, KEY) as gcj:
        outcome: dict[str, object] = {}

        async def good(i: int) -> None:
            outcome[f"g{i}"] = await gcj.append(session="s", kind="t/g", body=b"g", ts=0.0)

        async def bad() -> None:
            try:
                await gcj.append(session="s", kind="journal/forged", body=b"", ts=0.0)
            except ValueError as exc:
                outcome["bad"] = exc

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(good, i)
            nursery.start_soon(bad)
            for i in range(5, 10):
                nursery.start_soon(good, i)
        assert isinstance(outcome.pop("bad"), ValueError)
        assert len(outcome) == 10
        assert all(isinstance(r, JournalRecord) for r in outcome.values())
        assert gcj.failure is None


async def test_backpressure_with_a_tiny_queue_still_completes(tmp_path: Path) -> None:
    async with GroupCommitJournal.open(tmp_path, KEY, queue_size=1, max_batch=4) as gcj:
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(
                    lambda i=i: gcj.append(session="q", kind="t/q", body=b"%d" % i, ts=0.0)
                )
        assert gcj.appended == 30
    assert verify_journal(tmp_path, KEY.public).records == 30


async def test_shutdown_drains_queued_appends_and_refuses_new_ones(tmp_path: Path) -> None:
    acked: list[JournalRecord] = []
    async with trio.open_nursery() as outer:
        async with GroupCommitJournal.open(tmp_path, KEY, max_batch=4) as gcj:

            async def appender(i: int) -> None:
                acked.append(await gcj.append(session="d", kind="t/d", body=b"%d" % i, ts=0.0))

            for i in range(20):
                outer.start_soon(appender, i)
            # every appender is now queued or in the batch being synced; closing must drain
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(JournalError, match="shutting down|stopped"):
            await gcj.append(session="d", kind="t/late", body=b"", ts=0.0)
    assert len(acked) == 20
    with Journal.open(tmp_path, KEY) as j:
        assert sorted(r.seq for r in j.records()) == sorted(r.seq for r in acked)


async def test_run_can_be_started_in_a_nursery_around_an_open_journal(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY) as journal:
        gcj = GroupCommitJournal(journal)
        async with trio.open_nursery() as nursery:
            await nursery.start(gcj.run)
            rec = await gcj.append(session="n", kind="t/n", body=b"1", ts=2.0)
            assert journal.session_records("n") == [rec]
            await gcj.aclose()
