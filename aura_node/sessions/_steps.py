"""What flows through the runtime's three channels.

``command`` carries :data:`Command` (control requests, timer expiries, peer links coming
up), ``event`` carries
the transport's ``InboundData``, ``effect`` carries :class:`Step`: everything one protocol
step asks for, split into the journal records that must be durable first and the actions
that may only run after that (send, arm/cancel a timer, answer a waiting control request).

Pure: trio is imported only inside :meth:`Outcome.wait` (the one awaitable here) and its
waiter bookkeeping, so the session runtime that builds steps can be driven synchronously
without it (the seeded simulation in ``aura_node.harness.simulation`` runs the real
``SessionRuntime``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aura_node.errors import AuraError

if TYPE_CHECKING:
    import trio

# --- control waiters ------------------------------------------------------------------------------


class Outcome:
    """A one-shot result slot a control handler awaits (set only after the journal fsync).

    Memory: a node may have 10,000 sessions in flight, each with a control handler parked
    here, so a waiter is its task in a list and nothing else (no ``trio.Event`` with its
    parking lot per session); the list is made only when someone waits before the result is
    in: most sessions (every responder) are never awaited.
    """

    __slots__ = ("_done", "_waiters", "error", "value")

    def __init__(self) -> None:
        self._waiters: list[trio.lowlevel.Task] | None = None
        self._done = False
        self.value: dict[str, Any] | None = None
        self.error: AuraError | None = None

    def set(self, value: Mapping[str, Any]) -> None:
        if not self._done:
            self.value = dict(value)
            self._finish()

    def fail(self, error: AuraError) -> None:
        if not self._done:
            self.error = error
            self._finish()

    def _finish(self) -> None:
        self._done = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            import trio  # only a waiter's Trio shell gets here

            for task in waiters:
                trio.lowlevel.reschedule(task)

    @property
    def done(self) -> bool:
        return self._done

    def expire(self, task: trio.lowlevel.Task, error: AuraError) -> bool:
        """Wake ``task``, parked in :meth:`wait`, with ``error`` instead of the result (its own
        deadline passed: ``runtime.timers.WaitDeadlines``); the outcome itself stays pending
        for everyone else. False when ``task`` is not waiting here (any more)."""
        if self._waiters is None or task not in self._waiters:
            return False
        import outcome
        import trio

        self._waiters.remove(task)
        trio.lowlevel.reschedule(task, outcome.Error(error))
        return True

    def _forget(self, task: trio.lowlevel.Task, _raise_cancel: object) -> trio.lowlevel.Abort:
        """A waiter cancelled while waiting (its handler's own deadline) is not woken later."""
        import trio

        if self._waiters is not None and task in self._waiters:
            self._waiters.remove(task)
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> dict[str, Any]:
        import trio  # here, not at the top: only an awaiting shell needs it

        if not self._done:
            task = trio.lowlevel.current_task()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(task)
            await trio.lowlevel.wait_task_rescheduled(functools.partial(self._forget, task))
        else:
            await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


# --- commands -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StartSession:
    choreography: str
    params: Mapping[str, Any]
    roles: Mapping[str, str]
    session: str
    entropy: bytes
    #: answered with {"session": id} once the start is durable
    reply: Outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionControl:
    session: str
    action: str
    args: Mapping[str, Any]
    reply: Outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerExpired:
    session: str
    name: str
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerUp:
    """The link to ``peer`` came (back) up: re-send it what active sessions sent it.

    End-to-end retransmission: a payload the peer lost (it was down, or crashed before
    journaling it) is otherwise re-sent only when *we* restart. The envelopes are journaled
    already, so the answer is plain transmits, no records."""

    peer: str


Command = StartSession | SessionControl | TimerExpired | PeerUp

# --- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Transmit:
    peer: str
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Arm:
    session: str
    name: str
    deadline: float
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Disarm:
    session: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolve:
    outcome: Outcome
    value: Mapping[str, Any] | None = None
    error: AuraError | None = None


Action = Transmit | Arm | Disarm | Resolve


@dataclass(slots=True, kw_only=True)
class Step:
    """Journal ``records`` (session, kind, body) durably, then run ``actions`` in order."""

    session: str
    ts: float
    records: list[tuple[str, bytes]] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
