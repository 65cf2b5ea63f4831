"""``Outcome.wait``: waiters parked as bare tasks are woken once, cancelled ones forgotten."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from aura_node.errors import AuraError
from aura_node.sessions import Outcome


def _waiting(out: Outcome) -> int:
    return len(out._waiters or ())


async def test_every_waiter_gets_the_value_and_a_cancelled_one_is_forgotten() -> None:
    out = Outcome()
    got: list[dict[str, object]] = []

    async def waiter() -> None:
        got.append(await out.wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        with trio.move_on_after(0.01) as scope:
            await out.wait()  # gives up first: must not be woken (or kept) later
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert _waiting(out) == 2
        out.set({"session": "s"})
        out.set({"session": "other"})  # one-shot: ignored
    assert got == [{"session": "s"}, {"session": "s"}]
    assert _waiting(out) == 0
    assert await out.wait() == {"session": "s"}  # already done: returns at once


async def test_a_failure_is_raised_to_the_waiter() -> None:
    out = Outcome()
    out_error = AuraError("the session failed")

    async def fail_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        out.fail(out_error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_soon)
        with pytest.raises(AuraError, match="the session failed"):
            await out.wait()
