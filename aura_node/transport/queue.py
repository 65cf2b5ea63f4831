"""A bounded per-peer payload queue whose consumer takes whole batches (Trio).

Why not a ``trio`` memory channel: a link writer wants *everything queued so far* in one go
(one ``send_all`` per batch), and a channel costs a ``send_nowait`` plus a ``receive_nowait``
per payload, each a few hundred nanoseconds of Python. Here a put is a deque append and a
take pops a batch; waiting uses two :class:`trio.lowlevel.ParkingLot` s. Semantics:

* :meth:`PayloadQueue.put` waits while the queue holds ``capacity`` payloads (backpressure:
  the queue never grows past its bound); :meth:`put_nowait` returns ``False`` instead.
* :meth:`PayloadQueue.take` waits for at least one payload, then returns up to ``max_bytes``
  worth (at least one) in FIFO order and wakes as many waiting producers as it freed slots.
* :meth:`PayloadQueue.close` wakes everybody: producers get ``trio.ClosedResourceError``, the
  consumer gets ``trio.EndOfChannel`` once the queue is empty.

Both awaiting methods are checkpoints (cancellable while waiting; a completed put or take is
never undone by cancellation).
"""

from __future__ import annotations

from collections import deque

import trio


class PayloadQueue:
    __slots__ = ("_closed", "_items", "_not_empty", "_not_full", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[bytes] = deque()
        self._not_full = trio.lowlevel.ParkingLot()
        self._not_empty = trio.lowlevel.ParkingLot()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, payload: bytes) -> bool:
        if self._closed:
            raise trio.ClosedResourceError("the peer queue is closed")
        if len(self._items) >= self.capacity:
            return False
        self._items.append(payload)
        if self._not_empty:
            self._not_empty.unpark()
        return True

    async def put(self, payload: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.put_nowait(payload):
            await self._not_full.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def take_nowait(self, max_bytes: int) -> list[bytes]:
        """Up to ``max_bytes`` of payloads (at least one if any); ``[]`` when empty."""
        items = self._items
        if not items:
            if self._closed:
                raise trio.EndOfChannel
            return []
        out = [items.popleft()]
        size = len(out[0])
        while items and size < max_bytes:
            payload = items.popleft()
            out.append(payload)
            size += len(payload)
        if self._not_full:
            self._not_full.unpark(count=len(out))
        return out

    async def take(self, max_bytes: int) -> list[bytes]:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not (batch := self.take_nowait(max_bytes)):
            await self._not_empty.park()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def close(self) -> None:
        self._closed = True
        self._not_full.unpark_all()
        self._not_empty.unpark_all()
