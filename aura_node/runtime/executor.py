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
    ) -> None:
        self._effects = effects
        self._append = append
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
        async with self._effects:
            while True:
                try:
                    first = await self._effects.receive()
                except trio.EndOfChannel:
                    return
                batch = [first]
                while len(batch) < self._max_steps:
                    try:
                        batch.append(self._effects.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self.execute(batch)

    async def execute(self, batch: Sequence[Step]) -> None:
        records = [(s.session, kind, body) for s in batch for kind, body in s.records]
        if records:
            # Shielded: once a group commit started, a shutdown lets it finish rather than
            # leave the device unsure whether it committed.
            with trio.CancelScope(shield=True):
                await self._append(records, self._clock())
            self.records += len(records)
            self.batches += 1
            if self._on_durable is not None:
                try:
                    self._on_durable(records)
                except Exception:  # a fold bug must not stop the sends of this batch
                    self._log.error("on_durable_failed", records=len(records), exc_info=True)
        for step in batch:
            for action in step.actions:
                await self._act(action, step.session)

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
