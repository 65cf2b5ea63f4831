"""``WaitDeadlines``: one heap for the deadlines of every handler parked on a session's end."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from aura_node.errors import AuraError
from aura_node.runtime.timers import WaitDeadlines
from aura_node.sessions import Outcome


class Expired(AuraError):
    code = "timeout"


def _expired(label: str, timeout: float) -> AuraError:
    return Expired(f"{label} did not finish within {timeout:g} s")


async def test_a_wait_past_its_deadline_raises_and_the_outcome_stays_pending(
        autojump_clock: trio.testing.MockClock) -> None:
    deadlines = WaitDeadlines(_expired)
    out = Outcome()
    got: list[dict[str, object]] = []

    async def patient() -> None:
        got.append(await deadlines.wait(out, 100.0, "s2"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        nursery.start_soon(patient)
        t0 = trio.current_time()
        with pytest.raises(Expired, match=r"s1 did not finish within 5 s"):
            await deadlines.wait(out, 5.0, "s1")
        assert trio.current_time() - t0 == pytest.approx(5.0)
        assert not out.done and len(deadlines) == 1  # the patient waiter is still parked
        out.set({"session": "s"})
        await trio.testing.wait_all_tasks_blocked()
        assert got == [{"session": "s"}] and len(deadlines) == 0
        nursery.cancel_scope.cancel()


async def test_a_wait_that_ends_first_leaves_nothing_behind(
        autojump_clock: trio.testing.MockClock) -> None:
    deadlines = WaitDeadlines(_expired)
    out = Outcome()

    async def finish_soon() -> None:
        await trio.sleep(1.0)
        out.set({"ok": True})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        nursery.start_soon(finish_soon)
        assert await deadlines.wait(out, 30.0, "s") == {"ok": True}
        assert len(deadlines) == 0
        await trio.sleep(60.0)  # the stale heap entry surfaces and is skipped
        assert await deadlines.wait(out, 1.0, "s") == {"ok": True}  # already done
        nursery.cancel_scope.cancel()
