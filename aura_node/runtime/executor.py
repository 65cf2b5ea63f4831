"""The effect executor: journal first, then act.

Theory of operation
-------------------
One task reads :class:`~aura_node.sessions.Step` values from the bounded effect channel.
It takes every step already waiting (``receive_nowait``, up to ``max_steps``), appends all
their records in **one** group commit (one write, one fdatasync, one signed checkpoint, shared
by every session that had something to say meanwhile), and only when that append has returned
(the fsync covering it is done) runs the steps' actions in order: hand envelopes to the
transport, arm or cancel timers, answer waiting control requests. That is *journal before
send*, enforced in one place: no action of a step can run before its records are durable,
because the only code that runs actions is after the ``await`` of the append.

Steps of one session are produced in order by the single session-runtime task and consumed in
order here, so the journal order of a session equals the order its steps happened in.

*Pipelined* (with ``submit``, as the daemon runs it): the journal is handed batch N+1 while
batch N syncs, so the fsyncs follow each other without a round trip through this task in
between. Two tasks: the *committer* takes the waiting steps and queues their records with the
journal (``submit``: queued in order, not yet durable), then passes the batch to the *actor*,
which waits until that batch is durable and only then runs its actions, batch after batch in
the order they were queued. Journal before send is unchanged: an action still runs only after
the append of its own records returned. The hand-over is unbuffered, so at most two batches
are with the journal (one syncing, one queued); steps arriving meanwhile wait in the effect
channel and form the next batch. With ``append`` alone the executor is one task that appends
and then acts, batch by batch.

``on_durable`` (optional) sees every batch's records right after the append returned and
before any action runs: state that is a fold over durable evidence (the node's account store,
from ``account.established`` records) is updated there, never earlier, and is up to date before
any message or reply the same batch caused leaves the device.

A failed append (``JournalFailedError``) is fatal: it propagates and stops the node, since a
node that cannot persist evidence must not act (never retry an fsync). A failed send is not:
the envelope is in the journal and is re-sent after a restart or when the peer replays.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from aura_node.errors import AuraError
from aura_node.logs import get_logger
from aura_node.runtime.timers import TimerWheel
from aura_node.sessions import Arm, Disarm, Resolve, Step, Transmit

#: (session, kind, body) records + the batch timestamp -> durable when the await returns
AppendBatch = Callable[[Sequence[tuple[str, str, bytes]], float], Awaitable[None]]
#: sees the (session, kind, body) records of a batch once they are durable
DurableHook = Callable[[Sequence[tuple[str, str, bytes]]], None]


class PendingBatch(Protocol):
    """A batch queued with the journal; ``wait`` returns once it is durable."""

    async def wait(self) -> object: ...


#: queue (session, kind, body) records + the batch timestamp with the journal, after every batch
#: queued before; returns without waiting for the fsync (``GroupCommitJournal.submit_many``)
SubmitBatch = Callable[[Sequence[tuple[str, str, bytes]], float], Awaitable[PendingBatch]]


class PeerSender(Protocol):
    """``aura_node.transport.PeerNetwork``'s sending side."""

    async def send(self, peer_name: str, payload: bytes) -> None: ...
    def send_nowait(self, peer_name: str, payload: bytes) -> bool: ...


class EffectExecutor:
    def __init__(
        self,
        *,
        effects: trio.MemoryReceiveChannel[Step],
        append: AppendBatch,
        network: PeerSender,
        timers: TimerWheel,
        max_steps: int = 512,
        send_wait: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_durable: DurableHook | None = None,
        submit: SubmitBatch | None = None,
    ) -> None:
        self._effects = effects
        self._append = append
        self._submit = submit
        self._network = network
        self._timers = timers
        self._max_steps = max_steps
        self._send_wait = send_wait
        self._clock = clock
        self._on_durable = on_durable
        self._log = get_logger("aura_node.runtime.executor")
        self.batches = 0
        self.records = 0
        self.sent = 0
        self.send_failures = 0

    async def run(self) -> None:
        """Run until the effect channel is closed and drained (graceful shutdown)."""
        if self._submit is not None:
            await self._run_pipelined(self._submit)
            return
        async with self._effects:
            while (batch := await self._take()) is not None:
                await self.execute(batch)

    async def _take(self) -> list[Step] | None:
        """The next batch: the first waiting step and every step already queued behind it
        (up to ``max_steps``); None once the channel is closed and drained."""
        try:
            first = await self._effects.receive()
        except trio.EndOfChannel:
            return None
        batch = [first]
        while len(batch) < self._max_steps:
            try:
                batch.append(self._effects.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    async def execute(self, batch: Sequence[Step]) -> None:
        records = [(s.session, kind, body) for s in batch for kind, body in s.records]
        if records:
            # Shielded: once a group commit started, a shutdown lets it finish rather than
            # leave the device unsure whether it committed.
            with trio.CancelScope(shield=True):
                await self._append(records, self._clock())
            self._durable(records)
        await self._act_all(batch)

    def _durable(self, records: Sequence[tuple[str, str, bytes]]) -> None:
        """A batch's records are durable: count them, let ``on_durable`` fold them."""
        self.records += len(records)
        self.batches += 1
        if self._on_durable is not None:
            try:
                self._on_durable(records)
            except Exception:  # a fold bug must not stop the sends of this batch
                self._log.error("on_durable_failed", records=len(records), exc_info=True)

    async def _act_all(self, batch: Sequence[Step]) -> None:
        for step in batch:
            for action in step.actions:
                await self._act(action, step.session)

    # --- pipelined: queue batch N+1 with the journal while batch N syncs -------------------

    _Queued = tuple[Sequence[Step], list[tuple[str, str, bytes]], PendingBatch | None]

    async def _run_pipelined(self, submit: SubmitBatch) -> None:
        # unbuffered: the committer hands batch N+1 over only once the actor is done with
        # batch N, so at most two batches are with the journal
        to_actor, from_committer = trio.open_memory_channel[EffectExecutor._Queued](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._actor, from_committer)
                async with to_actor, self._effects:
                    while (batch := await self._take()) is not None:
                        records = [(s.session, kind, body) for s in batch
                                   for kind, body in s.records]
                        pending = None
                        if records:
                            # shielded like ``execute``: a queued group commit is seen through
                            with trio.CancelScope(shield=True):
                                pending = await submit(records, self._clock())
                        await to_actor.send((batch, records, pending))
        except BaseExceptionGroup as group:
            # one failure (a failed append) propagates as itself, as from ``execute``
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0],
                                                             BaseExceptionGroup):
                raise group.exceptions[0] from None
            raise

    async def _actor(self, queued: trio.MemoryReceiveChannel[EffectExecutor._Queued]) -> None:
        async with queued:
            async for batch, records, pending in queued:
                if pending is not None:
                    with trio.CancelScope(shield=True):
                        await pending.wait()  # journal before send: nothing acts before this
                    self._durable(records)
                await self._act_all(batch)

    async def _act(self, action: Transmit | Arm | Disarm | Resolve, session: str) -> None:
        if isinstance(action, Transmit):
            try:
                if not self._network.send_nowait(action.peer, action.payload):
                    # The peer's queue is full (slow or down). Wait a little (backpressure),
                    # but never let one peer stall every session: the envelope is journaled,
                    # and a restart or the peer's replay re-sends it.
                    with trio.move_on_after(self._send_wait) as scope:
                        await self._network.send(action.peer, action.payload)
                    if scope.cancelled_caught:
                        self.send_failures += 1
                        self._log.warning("send_dropped", session=session, peer=action.peer,
                                          reason=f"peer queue full for {self._send_wait:g} s")
                        return
                self.sent += 1
            except AuraError as exc:
                # Journaled already: a restart or the peer's replay re-sends it.
                self.send_failures += 1
                self._log.warning("send_failed", session=session, peer=action.peer,
                                  code=exc.code,
                                  reason=exc.message)
        elif isinstance(action, Arm):
            self._timers.arm(action.session, action.name, action.deadline, action.generation)
        elif isinstance(action, Disarm):
            self._timers.disarm(action.session, action.name)
        else:
            if action.error is not None:
                action.outcome.fail(action.error)
            else:
                action.outcome.set(action.value or {})

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "records": self.records, "sent": self.sent,
                "send_failures": self.send_failures}
