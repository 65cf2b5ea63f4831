"""The chaos nemesis: the seeded schedule (pure) and the order in which it is applied."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.harness.faults import FaultError
from aura_node.harness.nemesis import (
    FAULT_KINDS,
    LANES,
    Nemesis,
    NemesisTuning,
    PlannedFault,
    plan_faults,
)

NODES = ["d1", "d2", "d3", "d4", "d5"]


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = plan_faults(7, NODES, 120.0)
    b = plan_faults(7, NODES, 120.0)
    c = plan_faults(8, NODES, 120.0)
    assert [f.to_json() for f in a] == [f.to_json() for f in b]
    assert [f.to_json() for f in a] != [f.to_json() for f in c]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(2, 7), duration=st.floats(25.0, 400.0))
def test_schedule_shape(seed: int, n: int, duration: float) -> None:
    names = [f"d{i}" for i in range(1, n + 1)]
    plan = plan_faults(seed, names, duration)
    # every kind shows up (the deck refills only after each kind of the lane was drawn)
    assert {f.kind for f in plan} == set(FAULT_KINDS)
    assert plan == sorted(plan, key=lambda f: (f.at, f.kind))
    for lane, kinds in LANES.items():
        mine = [f for f in plan if f.kind in kinds]
        for before, after in zip(mine, mine[1:], strict=False):
            assert before.ends <= after.at, f"{lane} lane overlaps: {before} then {after}"
    for f in plan:
        assert 0 < f.at and f.ends <= duration + 1e-9 and f.length > 0
        if f.kind in ("kill", "pause"):
            assert len(f.target) == 1 and f.target[0] in names
        elif f.kind == "shape":
            a, b = f.target
            assert a != b and {a, b} <= set(names)
            assert 0 <= f.params["loss"] < 1 and f.params["delay_ms"] > 0
        else:
            g1, g2 = f.groups
            assert g1 and g2 and not set(g1) & set(g2) and set(g1) | set(g2) == set(names)
            assert f.params["mode"] in ("blackhole", "reset")


class RecordingCluster:
    """Records the calls the nemesis makes; the partition returns what Cluster's does."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    def _call(self, *call: Any) -> None:
        if call[0] in self.fail:
            raise FaultError(f"refused {call[0]}")
        self.calls.append(call)

    def kill(self, name: str) -> None:
        self._call("kill", name)

    def restart(self, name: str, *, wait: bool = True) -> None:
        assert wait is False  # the nemesis never blocks its schedule on a restart
        self._call("restart", name)

    def pause(self, name: str) -> None:
        self._call("pause", name)

    def resume(self, name: str) -> None:
        self._call("resume", name)

    def partition(self, *groups: tuple[str, ...], mode: str) -> list[tuple[str, str]]:
        self._call("partition", groups, mode)
        return [("d1", "d2"), ("d2", "d1")]

    def shape(self, a: str, b: str, **kw: float) -> None:
        self._call("shape", a, b)

    def heal(self, *dirs: tuple[str, str]) -> None:
        self._call("heal", tuple(sorted(dirs)))


FAST = NemesisTuning(first_gap=(0.01, 0.02), gap=(0.01, 0.02), down=(0.02, 0.03),
                     paused=(0.02, 0.03), partitioned=(0.02, 0.03), shaped=(0.02, 0.03))


def test_every_fault_is_undone_in_order() -> None:
    plan = plan_faults(3, NODES, 0.5, tuning=FAST)
    cluster = RecordingCluster()
    nemesis = Nemesis(cluster, plan)
    nemesis.run()
    nemesis.stop()
    assert sum(nemesis.counts().values()) == len(plan) and not nemesis.errors()
    process = [c for c in cluster.calls if c[0] in ("kill", "restart", "pause", "resume")]
    # kill is followed by the restart of that node, pause by its resume, lane by lane
    for begin, end in zip(process[::2], process[1::2], strict=True):
        assert (begin[0], end[0]) in (("kill", "restart"), ("pause", "resume"))
        assert begin[1] == end[1]
    heals = [c for c in cluster.calls if c[0] == "heal"]
    assert len(heals) == sum(1 for f in plan if f.kind in ("partition", "shape"))
    shaped = [f for f in plan if f.kind == "shape"]
    for f in shaped:
        a, b = f.target
        assert ("heal", tuple(sorted([(a, b), (b, a)]))) in cluster.calls


def test_stop_ends_open_faults_and_abort_does_not() -> None:
    slow = NemesisTuning(first_gap=(0.0, 0.0), down=(30.0, 30.0), paused=(30.0, 30.0),
                         partitioned=(30.0, 30.0), shaped=(30.0, 30.0))
    plan = plan_faults(5, NODES, 100.0, tuning=slow)
    first = [f for f in plan if f.at == 0.0]
    assert len(first) == 2  # one per lane
    cluster = RecordingCluster()
    nemesis = Nemesis(cluster, plan)
    nemesis.run(tick=nemesis.abort)  # starts the two faults at 0 s, then is told to stop
    assert len(cluster.calls) == 2
    nemesis.stop()
    assert len(cluster.calls) == 4
    undo = {c[0] for c in cluster.calls[2:]}
    assert undo <= {"restart", "resume", "heal"} and "heal" in undo


def test_a_refused_fault_is_recorded_and_not_undone() -> None:
    plan = [PlannedFault(kind="kill", at=0.0, length=0.01, target=("d1",)),
            PlannedFault(kind="pause", at=0.02, length=0.01, target=("d2",))]
    cluster = RecordingCluster(fail=frozenset({"kill"}))
    nemesis = Nemesis(cluster, plan)
    nemesis.run()
    assert cluster.calls == [("pause", "d2"), ("resume", "d2")]
    (err,) = nemesis.errors()
    assert err.fault.kind == "kill" and err.phase == "start" and "refused kill" in (err.error or "")
    assert nemesis.counts() == {"kill": 0, "pause": 1, "partition": 0, "shape": 0}
