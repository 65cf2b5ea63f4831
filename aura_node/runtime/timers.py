"""Session timers: one task and a heap, not a task per timer.

Drivers arm timers with absolute *wall-clock* deadlines (so a deadline journaled before a
crash means the same instant after the restart). The wheel sleeps until the earliest one and
posts :class:`~aura_node.sessions.TimerExpired` to the command channel; the session
runtime decides whether it still matters (a timer re-armed or cancelled since has a newer
generation, and the stale expiry is ignored). Cancelling is lazy: the heap entry stays and is
skipped when it surfaces.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

import trio

from aura_node.sessions import Command, TimerExpired


class TimerWheel:
    def __init__(
        self,
        command_send: trio.MemorySendChannel[Command],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = command_send
        self._clock = clock
        self._heap: list[tuple[float, int, str, str, int]] = []
        self._armed: dict[tuple[str, str], int] = {}
        self._counter = itertools.count()
        self._wake = trio.Event()

    def arm(self, session: str, name: str, deadline: float, generation: int) -> None:
        self._armed[(session, name)] = generation
        entry = (deadline, next(self._counter), session, name, generation)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()  # a new earliest deadline: re-plan the sleep

    def disarm(self, session: str, name: str) -> None:
        self._armed.pop((session, name), None)

    def disarm_session(self, session: str) -> None:
        for key in [k for k in self._armed if k[0] == session]:
            del self._armed[key]

    def armed(self, session: str) -> dict[str, int]:
        return {n: g for (s, n), g in self._armed.items() if s == session}

    def __len__(self) -> int:
        return len(self._armed)

    async def run(self) -> None:
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                _deadline, _c, session, name, gen = heapq.heappop(self._heap)
                if self._armed.get((session, name)) != gen:
                    continue  # cancelled or re-armed since
                del self._armed[(session, name)]
                await self._send.send(TimerExpired(session=session, name=name, generation=gen))
            self._wake = trio.Event()
            if self._heap:
                with trio.move_on_after(max(0.0, self._heap[0][0] - self._clock())):
                    await self._wake.wait()
            else:
                await self._wake.wait()
