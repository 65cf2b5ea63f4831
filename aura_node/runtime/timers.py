"""Session timers: one task and a heap, not a task per timer.

Drivers arm timers with absolute *wall-clock* deadlines (so a deadline journaled before a
crash means the same instant after the restart). The wheel sleeps until the earliest one and
posts :class:`~aura_node.sessions.TimerExpired` to the command channel; the session
runtime decides whether it still matters (a timer re-armed or cancelled since has a newer
generation, and the stale expiry is ignored). Cancelling is lazy: the heap entry stays and is
skipped when it surfaces.

:class:`WaitDeadlines` does the same for the control handlers parked on a session's end
(``handlers.wait_session``): with 10,000 sessions in flight, a ``trio.move_on_after`` per
waiter (a cancel scope, its cancel status and a deadline entry: ~0.7 KiB each) is a tenth of
the memory an in-flight session may use; a heap entry and a slot in a dict are not.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from aura_node.errors import AuraError
from aura_node.sessions import Command, Outcome, TimerExpired

K = TypeVar("K")


class _DeadlineQueue(Generic[K]):
    """One task asleep until the earliest of many deadlines (a heap): :meth:`run` hands each
    due key to :meth:`_due`, which skips a stale one (cancelling is lazy)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, K]] = []
        self._counter = itertools.count()
        self._wake = trio.Event()

    def _push(self, deadline: float, key: K) -> int:
        """Queue ``key`` for ``deadline``; its sequence number (unique per queue)."""
        n = next(self._counter)
        entry = (deadline, n, key)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()  # a new earliest deadline: re-plan the sleep
        return n

    async def _due(self, n: int, key: K) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                _deadline, n, key = heapq.heappop(self._heap)
                await self._due(n, key)
            self._wake = trio.Event()
            if self._heap:
                with trio.move_on_after(max(0.0, self._heap[0][0] - self._clock())):
                    await self._wake.wait()
            else:
                await self._wake.wait()


class TimerWheel(_DeadlineQueue[tuple[str, str, int]]):
    def __init__(
        self,
        command_send: trio.MemorySendChannel[Command],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self._send = command_send
        self._armed: dict[tuple[str, str], int] = {}

    def arm(self, session: str, name: str, deadline: float, generation: int) -> None:
        self._armed[(session, name)] = generation
        self._push(deadline, (session, name, generation))

    def disarm(self, session: str, name: str) -> None:
        self._armed.pop((session, name), None)

    def disarm_session(self, session: str) -> None:
        for key in [k for k in self._armed if k[0] == session]:
            del self._armed[key]

    def armed(self, session: str) -> dict[str, int]:
        return {n: g for (s, n), g in self._armed.items() if s == session}

    def __len__(self) -> int:
        return len(self._armed)

    async def _due(self, n: int, key: tuple[str, str, int]) -> None:
        session, name, gen = key
        if self._armed.get((session, name)) != gen:
            return  # cancelled or re-armed since
        del self._armed[(session, name)]
        await self._send.send(TimerExpired(session=session, name=name, generation=gen))


class WaitDeadlines(_DeadlineQueue[None]):
    """Deadlines of waits on an :class:`~aura_node.sessions.Outcome`: one task and a heap.

    ``wait`` parks the caller on the outcome and registers its deadline; when the deadline
    passes first, ``run`` wakes it with ``expired(label, timeout)`` (``Outcome.expire``). A
    wait that ends earlier drops its slot at once; its heap entry is skipped when it
    surfaces. Trio's clock, so a test's ``MockClock`` drives it."""

    def __init__(self, expired: Callable[[str, float], AuraError]) -> None:
        super().__init__(trio.current_time)
        self._expired = expired
        self._waiting: dict[int, tuple[Outcome, trio.lowlevel.Task, str, float]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, outcome: Outcome, timeout: float, label: str) -> dict[str, Any]:
        """``await outcome.wait()``, or ``expired(label, timeout)`` raised after ``timeout``."""
        if outcome.done:
            return await outcome.wait()
        n = self._push(trio.current_time() + timeout, None)
        self._waiting[n] = (outcome, trio.lowlevel.current_task(), label, timeout)
        try:
            return await outcome.wait()
        finally:
            self._waiting.pop(n, None)

    async def _due(self, n: int, key: None) -> None:
        waiting = self._waiting.pop(n, None)
        if waiting is not None:
            outcome, task, label, timeout = waiting
            outcome.expire(task, self._expired(label, timeout))
