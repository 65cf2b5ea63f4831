"""PayloadQueue: bounded, FIFO, batch takes, backpressure and close semantics (real Trio)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from aura_node.transport.queue import PayloadQueue


async def test_bounded_put_nowait_and_fifo_batches() -> None:
    q = PayloadQueue(3)
    assert all(q.put_nowait(b"%d" % i) for i in range(3))
    assert q.put_nowait(b"x") is False and len(q) == 3
    assert await q.take(max_bytes=2) == [b"0", b"1"]  # stops once max_bytes is reached
    assert q.take_nowait(max_bytes=100) == [b"2"]
    assert q.take_nowait(max_bytes=100) == []
    assert q.take_nowait(max_bytes=0) == []
    q.put_nowait(b"big" * 10)
    assert q.take_nowait(max_bytes=1) == [b"big" * 10]  # at least one, whatever its size


async def test_put_waits_while_full_and_take_wakes_it() -> None:
    q = PayloadQueue(1)
    q.put_nowait(b"a")
    done = trio.Event()

    async def producer() -> None:
        await q.put(b"b")
        done.set()

    async with trio.open_nursery() as n:
        n.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and len(q) == 1
        assert await q.take(max_bytes=100) == [b"a"]
        await done.wait()
        assert await q.take(max_bytes=100) == [b"b"]


async def test_take_waits_and_close_wakes_everyone() -> None:
    q = PayloadQueue(1)
    results: list[str] = []

    async def consumer() -> None:
        try:
            await q.take(max_bytes=100)
        except trio.EndOfChannel:
            results.append("end")

    async with trio.open_nursery() as n:
        n.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        q.close()
    assert results == ["end"]
    with pytest.raises(trio.ClosedResourceError):
        await q.put(b"x")


async def test_blocked_put_is_cancellable_and_leaves_nothing_behind() -> None:
    q = PayloadQueue(1)
    q.put_nowait(b"a")
    with trio.move_on_after(0.05) as scope:
        await q.put(b"b")
    assert scope.cancelled_caught and len(q) == 1
    with pytest.raises(ValueError, match="at least 1"):
        PayloadQueue(0)
