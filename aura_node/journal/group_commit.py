"""Group commit for Trio: many appending tasks, one write + one fdatasync per batch.

Theory of operation
-------------------
Appenders put a request (their entries and a ``trio.Event``) on a bounded memory channel
(``queue_size`` requests; a full queue makes appenders wait: backpressure, not memory growth)
and wait on the event. Two tasks form a two-stage pipeline:

* the *preparer* takes the first waiting request, then every request already queued
  (``receive_nowait``) up to ``max_batch`` entries, and encodes and signs them with
  ``Journal.prepare_batch`` (CPU, in the event loop thread);
* the *commit thread* (one long-lived worker started with ``trio.to_thread.run_sync``, fed by a
  ``queue.SimpleQueue``) writes and fdatasyncs each prepared batch with
  ``Journal.commit_batch`` and hands the outcome back with ``TrioToken.run_sync_soon``, so the
  event loop keeps running during the sync. One thread for the whole run rather than a
  ``to_thread`` call per batch, because a thread hand-off costs about as much as the fsync of
  a small batch on this class of machine.

At most ``PIPELINE_DEPTH`` (2) batches are with the thread: batch N+1 is encoded and signed
while batch N syncs (the GIL is released during fdatasync), and requests arriving meanwhile
form the batch after that: the slower the disk, the larger the batches.

An append returns its ``JournalRecord`` only after the fsync covering its checkpoint. If the
waiting task is cancelled, its entries may still be (or become) durable: cancellation cannot
un-write a record. The commit thread is never abandoned: on shutdown (or cancellation) it
commits the batches it was given, then exits, and ``run`` returns after it.

A failed write or fsync is never retried: the committer hands ``JournalFailedError`` to every
waiter of the failed batch, then to every queued and later request; ``failure`` says why.
The runtime is expected to stop the node on it (DESIGN.md: "fail the node").
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import trio

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import JournalError, JournalFailedError
from aura_node.journal.format import EncodedBatch, JournalEntry, JournalRecord
from aura_node.journal.store import DEFAULT_MAX_BATCH, DEFAULT_SEGMENT_BYTES, Journal

DEFAULT_QUEUE_SIZE = 4096


@dataclass(slots=True, eq=False)
class _Request:
    entries: Sequence[JournalEntry]
    done: trio.Event = field(default_factory=trio.Event)
    records: list[JournalRecord] | None = None
    error: BaseException | None = None


#: prepared batches handed to the commit thread and not yet delivered back: one syncing, one
#: waiting (encoded and signed while the first one syncs)
PIPELINE_DEPTH = 2


@dataclass(slots=True, eq=False)
class _Prepared:
    requests: list[_Request]
    encoded: EncodedBatch


def _fail_all(requests: list[_Request], failure: JournalFailedError) -> None:
    for req in requests:
        req.error = JournalFailedError(failure.message)
        req.done.set()


class GroupCommitJournal:
    """The Trio front end of a ``Journal``. Start it with ``open`` (an async context manager)
    or construct it around an open ``Journal`` and ``await nursery.start(gcj.run)``."""

    def __init__(
        self, journal: Journal, *, max_batch: int | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.journal = journal
        self.max_batch = journal.max_batch if max_batch is None else max_batch
        self._send, self._receive = trio.open_memory_channel[_Request](queue_size)
        self._failure: JournalFailedError | None = None
        self._closing = False
        self._running = False
        self._stopped = trio.Event()
        self._in_flight = trio.Semaphore(PIPELINE_DEPTH)
        #: batches committed (one write + one fdatasync each); for tests and metrics
        self.batches = 0
        self.appended = 0
        #: seconds the commit thread spent in ``commit_batch`` (write + fdatasync + the GIL
        #: waits around them) and bytes it wrote: ``aura-node bench journal`` compares them
        #: with the wall time and with raw writes to say where an append's time goes
        self.commit_seconds = 0.0
        self.committed_bytes = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        directory: str | os.PathLike[str],
        key: DeviceKey,
        *,
        journal_id: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> AsyncIterator[GroupCommitJournal]:
        """Open the journal (recovery scan in a thread), run the committer, and on exit drain
        queued appends and close the journal."""
        journal = await trio.to_thread.run_sync(
            lambda: Journal.open(
                directory, key, journal_id=journal_id, max_batch=max_batch,
                segment_bytes=segment_bytes,
            )
        )
        try:
            async with trio.open_nursery() as nursery:
                gcj = cls(journal, max_batch=max_batch, queue_size=queue_size)
                await nursery.start(gcj.run)
                try:
                    yield gcj
                finally:
                    with trio.CancelScope(shield=True):
                        await gcj.aclose()
        finally:
            journal.close()

    # --- state --------------------------------------------------------------------------------

    @property
    def failure(self) -> JournalFailedError | None:
        """The error that made the journal unusable, or None."""
        return self._failure

    # --- appending ----------------------------------------------------------------------------

    async def append(self, *, session: str, kind: str, body: bytes, ts: float) -> JournalRecord:
        """Append one record; returns it once it is durable (its checkpoint fsynced)."""
        records = await self.append_many(
            [JournalEntry(session=session, kind=kind, body=body, ts=ts)]
        )
        return records[0]

    async def append_many(self, entries: Sequence[JournalEntry]) -> list[JournalRecord]:
        """Append ``entries`` in order, all in the same group commit; returns their records
        once durable. Raises ``JournalFailedError`` after a write/fsync failure."""
        self._check_open()
        if not entries:
            return []
        req = _Request(entries=entries)
        try:
            await self._send.send(req)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._check_open()
            raise JournalError("journal group commit stopped") from None
        await req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.records is not None
        return req.records

    def _check_open(self) -> None:
        if self._failure is not None:
            raise JournalFailedError(self._failure.message)
        if self._closing:
            raise JournalError("journal group commit is shutting down")

    # --- the pipeline: preparer (encode + sign) -> commit thread (write + fdatasync) ---------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group commit pipeline; returns after ``aclose`` once the queue is drained."""
        if self._running:
            raise RuntimeError("GroupCommitJournal.run is already running")
        self._running = True
        token = trio.lowlevel.current_trio_token()
        commits: queue.SimpleQueue[_Prepared | None] = queue.SimpleQueue()
        try:
            async with trio.open_nursery() as nursery:
                # one long-lived worker thread for the whole run (not one per batch: a thread
                # hand-off costs ~100 us here, as much as the fsync of a small batch)
                nursery.start_soon(
                    partial(trio.to_thread.run_sync, self._commit_loop, commits, token)
                )
                task_status.started()
                try:
                    await self._preparer(commits)
                finally:
                    # also on cancellation: the thread commits what it was given, then exits
                    commits.put(None)
        finally:
            self._stopped.set()

    async def _preparer(self, commits: queue.SimpleQueue[_Prepared | None]) -> None:
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                count = len(first.entries)
                while count < self.max_batch:
                    try:
                        req = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(req)
                    count += len(req.entries)
                for prepared in self._prepare(batch):
                    # at most PIPELINE_DEPTH batches handed to the thread and not delivered
                    await self._in_flight.acquire()
                    commits.put(prepared)

    def _prepare(self, batch: list[_Request]) -> list[_Prepared]:
        """Encode and sign ``batch`` (in the event loop thread, while the previous batch is
        syncing in the commit thread). A bad entry fails only its own request."""
        if self._failure is not None:
            _fail_all(batch, self._failure)
            return []
        entries = [e for req in batch for e in req.entries]
        try:
            return [_Prepared(requests=batch, encoded=self.journal.prepare_batch(entries))]
        except JournalFailedError as exc:
            self._failure = self._failure or exc
            _fail_all(batch, exc)
            return []
        except ValueError as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done.set()
                return []
            return [p for req in batch for p in self._prepare([req])]

    def _commit_loop(
        self, commits: queue.SimpleQueue[_Prepared | None], token: trio.lowlevel.TrioToken
    ) -> None:
        """Runs in the commit thread: write + fdatasync each prepared batch in order and hand
        the outcome back to the event loop. A failed commit is never retried; the journal
        refuses every later batch by itself (``JournalFailedError``)."""
        while True:
            item = commits.get()
            if item is None:
                return
            t0 = time.perf_counter()
            try:
                records = self.journal.commit_batch(item.encoded)
            except Exception as exc:
                token.run_sync_soon(self._deliver, item, None, exc)
            else:
                # written only by this thread, read by the event loop after the fact
                self.commit_seconds += time.perf_counter() - t0
                self.committed_bytes += len(item.encoded.data)
                token.run_sync_soon(self._deliver, item, records, None)

    def _deliver(
        self, item: _Prepared, records: list[JournalRecord] | None, error: Exception | None
    ) -> None:
        """Event loop side of a commit: wake the waiters of ``item``."""
        self._in_flight.release()
        if error is not None or records is None:
            if isinstance(error, JournalFailedError):
                self._failure = self._failure or error
            failure = error if error is not None else JournalError("commit produced nothing")
            for req in item.requests:
                req.error = (
                    JournalFailedError(failure.message)
                    if isinstance(failure, JournalFailedError)
                    else failure
                )
                req.done.set()
            return
        self.batches += 1
        self.appended += len(records)
        i = 0
        for req in item.requests:
            n = len(req.entries)
            req.records = records[i : i + n]
            i += n
            req.done.set()

    async def aclose(self) -> None:
        """Stop accepting appends, commit what is queued, and wait for the committer."""
        if not self._closing:
            self._closing = True
            await self._send.aclose()
        if self._running:
            await self._stopped.wait()

