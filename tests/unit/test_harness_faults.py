"""The proxy's fault model as plain data: shaping validation, chunk plans, partitions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_node.harness.faults import (
    LOSS_MAX_RETRIES,
    LOSS_RTO_MIN_S,
    FaultError,
    FaultTable,
    Shaping,
    directions_between,
    plan_chunk,
)


def test_shaping_rejects_out_of_range_values() -> None:
    with pytest.raises(FaultError, match="loss must be a probability"):
        Shaping(loss=1.0)
    with pytest.raises(FaultError, match="delay must be"):
        Shaping(delay_s=-1)
    with pytest.raises(FaultError, match="partition mode"):
        Shaping(partition="drop")  # type: ignore[arg-type]


def test_no_fault_delivers_immediately() -> None:
    plan = plan_chunk(Shaping(), size=100, now=5.0, previous_due=0.0, rng=random.Random(0))
    assert plan.due == 5.0 and not plan.reset


@given(
    delay=st.floats(0, 1),
    jitter=st.floats(0, 1),
    sizes=st.lists(st.integers(1, 70000), max_size=30),
    seed=st.integers(0, 2**32),
)
def test_delivery_is_in_order_and_never_early(
    delay: float, jitter: float, sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    shaping = Shaping(delay_s=delay, jitter_s=jitter, loss=0.05)
    prev, now = 0.0, 0.0
    for size in sizes:
        plan = plan_chunk(shaping, size=size, now=now, previous_due=prev, rng=rng)
        if plan.reset:
            break
        assert plan.due >= prev  # TCP order: a chunk never overtakes the one before it
        assert plan.due >= now + max(0.0, delay - jitter) - 1e-9
        prev, now = plan.due, now + 0.001


def test_same_seed_same_plans() -> None:
    shaping = Shaping(delay_s=0.01, jitter_s=0.01, loss=0.2)

    def plans(seed: int) -> list[tuple[float, bool]]:
        rng = random.Random(seed)
        return [
            (p.due, p.reset)
            for p in (plan_chunk(shaping, size=5000, now=float(i), previous_due=0, rng=rng)
                      for i in range(50))
        ]

    assert plans(7) == plans(7) != plans(8)


def test_loss_stalls_by_rto_and_gives_up_with_a_reset() -> None:
    class AlwaysLose(random.Random):
        def random(self) -> float:
            return 0.0

    plan = plan_chunk(Shaping(loss=0.5), size=10, now=0.0, previous_due=0.0, rng=AlwaysLose())
    assert plan.reset and plan.lost_segments == LOSS_MAX_RETRIES
    assert plan.due >= LOSS_RTO_MIN_S * (2**LOSS_MAX_RETRIES - 1) * 0.5


def test_table_partition_shape_heal() -> None:
    t = FaultTable()
    t.partition([("a", "b")], "blackhole")
    t.shape([("a", "b"), ("b", "a")], delay_s=0.1)
    assert t.get(("a", "b")) == Shaping(delay_s=0.1, partition="blackhole")
    assert t.get(("b", "a")) == Shaping(delay_s=0.1)
    assert t.heal([("a", "b")]) == [("a", "b")]
    assert t.get(("a", "b")) == Shaping()
    with pytest.raises(FaultError, match="loss"):
        t.shape([("b", "a")], loss=2.0)
    assert t.get(("b", "a")) == Shaping(delay_s=0.1)  # a bad call changed nothing
    assert t.heal() == [("b", "a")] and t.items() == []
    with pytest.raises(FaultError, match="two different names"):
        t.partition([("a", "a")], "reset")


def test_directions_between_groups() -> None:
    nodes = ["d1", "d2", "d3"]
    assert sorted(directions_between([["d1"]], nodes)) == [
        ("d1", "d2"), ("d1", "d3"), ("d2", "d1"), ("d3", "d1")
    ]
    assert sorted(directions_between([["d1"], ["d2"]], nodes)) == [("d1", "d2"), ("d2", "d1")]
    with pytest.raises(FaultError, match="unknown node"):
        directions_between([["d9"]], nodes)
    with pytest.raises(FaultError, match="more than one"):
        directions_between([["d1"], ["d1", "d2"]], nodes)
    with pytest.raises(FaultError, match="outside"):
        directions_between([nodes], nodes)
