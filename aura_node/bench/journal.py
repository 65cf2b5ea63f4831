"""`aura-node bench journal`: durable appends and open+verify, against floors from this run.

Figures (all on ``--dir``, default a fresh temp dir, so the floor and the journal share a disk):

* ``append batch=B group commit``: durable records/s of 300-byte bodies through
  ``GroupCommitJournal`` (what the runtime uses) with exactly B records per group commit (one
  write + one fdatasync + one signed checkpoint each), 4 tasks calling ``append_many`` so the
  pipeline can encode and sign batch N+1 while batch N syncs; against the floor ``raw``:
  ``os.write`` of B 300-byte records + ``os.fdatasync`` on a plain file, same batching;
* ``... vs sqlite``: the same figure against stdlib sqlite3, WAL, ``synchronous=FULL``, one
  transaction of B inserted rows per commit (the peer);
* ``append batch=B append_batch (sync)``: ``Journal.append_batch`` called in a loop, no
  pipelining: encode + sign + write + fdatasync back to back (the CPU cost shows here);
* ``... commit thread busy`` and ``... bytes per record``: where the group commit's time goes.
  The share of the wall time the commit thread spent in write + fdatasync (near 100%: the
  pipeline keeps the disk busy, so what is left is the disk's time for these bytes), and the
  bytes written per record (frame header, seq/ts/session/kind/prev fields and the batch's
  signed checkpoint) against the raw floor's 300;
* ``group commit, 64 tasks``: records/s through ``GroupCommitJournal`` with 64 Trio tasks each
  appending one record at a time (batches form on their own), against raw batch=1;
* ``open + verify``: ``Journal.open`` of a 1M-record journal (100k with ``--quick``): every
  checksum, link and checkpoint signature, plus the session index, in records/s.

Rounds interleave journal, raw and sqlite runs and report medians, because this machine's
fsync latency drifts by tens of percent over seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aura_node.bench import Figure
from aura_node.crypto.keys import DeviceKey
from aura_node.journal.format import JournalEntry
from aura_node.journal.store import Journal

PAYLOAD = 300
BATCHES = (1, 10, 100)


def _rate(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def _entries(b: int) -> list[JournalEntry]:
    body = os.urandom(PAYLOAD)
    return [JournalEntry(session="bench-session", kind="bench/record", body=body, ts=0.0)
            for _ in range(b)]


def _journal_run(root: Path, key: DeviceKey, b: int, n: int, tag: str) -> float:
    d = root / f"journal-{tag}"
    entries = _entries(b)
    j = Journal.open(d, key, max_batch=max(b, 1))
    try:
        j.append_batch(entries)  # create the segment outside the timed loop

        def go() -> int:
            for _ in range(n // b):
                j.append_batch(entries)
            return (n // b) * b

        return _rate(go)
    finally:
        j.close()
        shutil.rmtree(d)


def _raw_run(root: Path, b: int, n: int, tag: str) -> float:
    path = root / f"raw-{tag}"
    data = os.urandom(PAYLOAD) * b
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fdatasync(fd)

        def go() -> int:
            for _ in range(n // b):
                os.write(fd, data)
                os.fdatasync(fd)
            return (n // b) * b

        return _rate(go)
    finally:
        os.close(fd)
        path.unlink()


def _sqlite_run(root: Path, b: int, n: int, tag: str) -> float:
    path = root / f"sqlite-{tag}.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        rows = [(os.urandom(PAYLOAD),) for _ in range(b)]

        def go() -> int:
            for _ in range(n // b):
                con.execute("BEGIN")
                con.executemany("INSERT INTO r (body) VALUES (?)", rows)
                con.execute("COMMIT")
            return (n // b) * b

        return _rate(go)
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                p.unlink()


def _group_commit_run(root: Path, key: DeviceKey, n: int, tasks: int) -> float:
    import trio

    from aura_node.journal.group_commit import GroupCommitJournal

    d = root / "journal-gc"
    body = os.urandom(PAYLOAD)
    per_task = n // tasks

    async def main() -> float:
        async with GroupCommitJournal.open(d, key, max_batch=512) as gcj:
            async def worker(i: int) -> None:
                for _ in range(per_task):
                    await gcj.append(session=f"s{i}", kind="bench/record", body=body, ts=0.0)

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(tasks):
                    nursery.start_soon(worker, i)
            return per_task * tasks / (time.perf_counter() - t0)

    try:
        return trio.run(main)
    finally:
        shutil.rmtree(d)


def _pipelined_run(root: Path, key: DeviceKey, b: int, n: int, tag: str
                   ) -> tuple[float, float, float]:
    """Group commits of exactly ``b`` records through ``GroupCommitJournal``: 4 tasks each
    ``append_many`` ``b`` entries in a loop; ``max_batch=b`` keeps every fsync at ``b``
    records, and the pipeline encodes/signs the next batch while the current one syncs.
    Returns records/s, the commit thread's busy share of the wall time, bytes per record."""
    import trio

    from aura_node.journal.group_commit import GroupCommitJournal

    d = root / f"journal-pipe-{tag}"
    entries = _entries(b)
    tasks = 4
    per_task = max(1, n // b // tasks)

    async def main() -> tuple[float, float, float]:
        async with GroupCommitJournal.open(d, key, max_batch=b) as gcj:
            await gcj.append_many(entries)  # create the segment outside the timed part
            busy0, bytes0 = gcj.commit_seconds, gcj.committed_bytes

            async def worker() -> None:
                for _ in range(per_task):
                    await gcj.append_many(entries)

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(worker)
            dt = time.perf_counter() - t0
            assert gcj.batches == 1 + per_task * tasks  # one fsync per b records
            records = per_task * tasks * b
            return (records / dt, (gcj.commit_seconds - busy0) / dt,
                    (gcj.committed_bytes - bytes0) / records)

    try:
        return trio.run(main)
    finally:
        shutil.rmtree(d)


def _build_journal(d: Path, key: DeviceKey, n: int) -> None:
    body = os.urandom(PAYLOAD)
    chunk = 1000
    # many sessions, like a node that ran many protocol sessions
    with Journal.open(d, key, max_batch=chunk) as j:
        done = 0
        while done < n:
            k = min(chunk, n - done)
            j.append_batch([
                JournalEntry(session=f"session-{(done + i) // 50}", kind="bench/record",
                             body=body, ts=1.0)
                for i in range(k)
            ])
            done += k


def _verify_run(d: Path, key: DeviceKey, n: int) -> float:
    def go() -> int:
        with Journal.open(d, key) as j:
            assert j.record_count == n, (j.record_count, n)
        return n

    return _rate(go)


def run(args: argparse.Namespace) -> list[Figure]:
    quick = bool(getattr(args, "quick", False))
    base = getattr(args, "dir", None)
    root = Path(tempfile.mkdtemp(prefix="aura-bench-journal-", dir=base))
    key = DeviceKey.from_seed(bytes(range(32)))
    rounds = 3 if quick else 5
    # records per timed run, per batch size: about 0.2-0.5 s of fsyncs each
    sizes = {1: 300, 10: 2000, 100: 20000} if quick else {1: 1000, 10: 6000, 100: 50000}
    figures: list[Figure] = []
    try:
        for b in BATCHES:
            n = sizes[b]
            js, ps, raws, sq, busy, size = [], [], [], [], [], []
            for r in range(rounds):
                raws.append(_raw_run(root, b, n, f"{b}-{r}"))
                js.append(_journal_run(root, key, b, n, f"{b}-{r}"))
                rate, share, per_record = _pipelined_run(root, key, b, n, f"{b}-{r}")
                ps.append(rate)
                busy.append(share)
                size.append(per_record)
                sq.append(_sqlite_run(root, b, n, f"{b}-{r}"))
            jv, rv, sv = statistics.median(js), statistics.median(raws), statistics.median(sq)
            pv = statistics.median(ps)
            target = {1: ">= 0.75", 10: "", 100: ">= 0.6"}[b]
            figures.append(Figure(
                name=f"append batch={b} group commit", value=pv, unit="records/s", floor=rv,
                floor_name="raw write+fdatasync", target=target,
            ))
            figures.append(Figure(
                name=f"append batch={b} group commit vs sqlite", value=pv, unit="records/s",
                floor=sv, floor_name="sqlite WAL FULL", target="> 1.0",
            ))
            figures.append(Figure(
                name=f"append batch={b} append_batch (sync)", value=jv, unit="records/s",
                floor=rv, floor_name="raw write+fdatasync", target=target,
            ))
            figures.append(Figure(
                name=f"append batch={b} group commit: commit thread busy",
                value=100 * statistics.median(busy), unit="% of wall time",
            ))
            figures.append(Figure(
                name=f"append batch={b} group commit: bytes per record",
                value=statistics.median(size), unit="bytes", floor=float(PAYLOAD),
                floor_name="raw record", higher_is_better=False,
            ))
        n_gc = 2000 if quick else 20000
        raw1 = statistics.median(_raw_run(root, 1, sizes[1], f"gc-{r}") for r in range(rounds))
        figures.append(Figure(
            name="group commit, 64 tasks", value=_group_commit_run(root, key, n_gc, 64),
            unit="records/s", floor=raw1, floor_name="raw batch=1",
        ))
        n_verify = 100_000 if quick else 1_000_000
        d = root / "journal-verify"
        _build_journal(d, key, n_verify)
        vr = statistics.median(_verify_run(d, key, n_verify) for _ in range(3))
        figures.append(Figure(
            name=f"open + verify {n_verify:,} records", value=vr, unit="records/s",
            target=">= 300000",
        ))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures
