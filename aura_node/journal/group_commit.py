"""Group commit for Trio: many appending tasks, one write + one fdatasync per batch.

Theory of operation
-------------------
Appenders put a request (their entries and a ``trio.Event``) on a bounded memory channel
(``queue_size`` requests; a full queue makes appenders wait: backpressure, not memory growth)
and wait on the event. One committer task takes the first waiting request, then every request
already queued (``receive_nowait``) up to ``max_batch`` entries, and runs
``Journal.append_batch`` for all of them in a worker thread (``trio.to_thread.run_sync``), so
the event loop keeps running while the disk syncs. Requests that arrive during that sync form
the next batch: the slower the disk, the larger the batches.

An append returns its ``JournalRecord`` only after the fsync covering its checkpoint. If the
waiting task is cancelled, its entries may still be (or become) durable: cancellation cannot
un-write a record. The worker thread is never abandoned, so shutdown drains the batch in
flight.

A failed write or fsync is never retried: the committer hands ``JournalFailedError`` to every
waiter of the failed batch, then to every queued and later request; ``failure`` says why.
The runtime is expected to stop the node on it (DESIGN.md: "fail the node").
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import JournalError, JournalFailedError
from aura_node.journal.format import JournalEntry, JournalRecord
from aura_node.journal.store import DEFAULT_MAX_BATCH, DEFAULT_SEGMENT_BYTES, Journal

DEFAULT_QUEUE_SIZE = 4096


@dataclass(slots=True, eq=False)
class _Request:
    entries: Sequence[JournalEntry]
    done: trio.Event = field(default_factory=trio.Event)
    records: list[JournalRecord] | None = None
    error: BaseException | None = None


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
        #: batches committed (one write + one fdatasync each); for tests and metrics
        self.batches = 0
        self.appended = 0

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

    # --- the committer ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer loop; returns after ``aclose`` once the queue is drained."""
        if self._running:
            raise RuntimeError("GroupCommitJournal.run is already running")
        self._running = True
        task_status.started()
        try:
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
                    await self._commit(batch)
        finally:
            self._stopped.set()

    async def _commit(self, batch: list[_Request]) -> None:
        if self._failure is not None:
            for req in batch:
                req.error = JournalFailedError(self._failure.message)
                req.done.set()
            return
        entries = [e for req in batch for e in req.entries]
        try:
            # never abandon the thread: shutdown waits for the fsync in flight
            records = await trio.to_thread.run_sync(self.journal.append_batch, entries)
        except JournalFailedError as exc:
            self._failure = exc
            for req in batch:
                req.error = JournalFailedError(exc.message)
                req.done.set()
            return
        except Exception as exc:
            # a bad entry (e.g. a reserved kind): nothing was written; fail only this batch's
            # requests one by one so a single bad request does not sink its neighbours
            await self._commit_one_by_one(batch, exc)
            return
        self.batches += 1
        self.appended += len(records)
        i = 0
        for req in batch:
            n = len(req.entries)
            req.records = records[i : i + n]
            i += n
            req.done.set()

    async def _commit_one_by_one(self, batch: list[_Request], first_error: Exception) -> None:
        if len(batch) == 1:
            batch[0].error = first_error
            batch[0].done.set()
            return
        for req in batch:
            await self._commit([req])

    async def aclose(self) -> None:
        """Stop accepting appends, commit what is queued, and wait for the committer."""
        if not self._closing:
            self._closing = True
            await self._send.aclose()
        if self._running:
            await self._stopped.wait()

