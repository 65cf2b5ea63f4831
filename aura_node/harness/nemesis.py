"""The chaos nemesis: a fault schedule drawn from a seed, and the loop that applies it.

Theory of operation. The schedule is plain data computed up front by :func:`plan_faults`
from ``random.Random(seed)`` and the node names alone: no clock, no cluster, no outcome of
an earlier fault feeds back into it. So the same seed, node set and duration give exactly the
same list of faults (kind, target, parameters, offset and length) on every machine; what the
nodes *do* under those faults depends on timing and is not reproducible (a kill lands between
other appends, a partition catches other messages in flight).

Faults run in two independent *lanes*, each sequential (a fault ends before the next one of
its lane starts, after a random gap), so they overlap across lanes but never conflict within
one:

``process`` lane
    ``kill`` (SIGKILL, restart after a random downtime) and ``pause`` (SIGSTOP, SIGCONT after
    a random pause) of one random node.
``link`` lane
    ``partition`` (random split into two groups, blackhole or reset mode, healed after a
    while) and ``shape`` (delay, jitter and loss on one random link, both ways, cleared after
    a while). The link lane heals exactly the directions it faulted, so it never clears a
    fault it did not set.

Kinds are drawn from a shuffled *deck* per lane, refilled when empty, so every kind shows up
once per round of its lane: a short run still injects every kind (the CI test relies on it),
and a long one keeps a balanced mix.

:class:`Nemesis` is the applier: ``run`` (in the caller's thread; it says why not a helper
thread) sleeps until each event's offset and calls the cluster (``kill``/``restart``/``pause``/
``resume``/``partition``/``shape``/``heal``), each of which appends to the cluster's fault log
with the wall time and the target. Every fault of a schedule ends within the run's duration;
``stop()`` after an interrupted ``run`` applies the pending *end* events (restart, resume,
heal) at once, so no fault outlives the run. A failed application (the proxy refusing, a node
that will not restart) is recorded and the run goes on: it is a harness problem to report,
not a reason to leave the cluster half faulted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aura_node.errors import AuraError

FaultKind = Literal["kill", "pause", "partition", "shape"]
FAULT_KINDS: tuple[FaultKind, ...] = ("kill", "pause", "partition", "shape")
LANES: dict[str, tuple[FaultKind, ...]] = {
    "process": ("kill", "pause"),
    "link": ("partition", "shape"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NemesisTuning:
    """Ranges (seconds unless named otherwise) the schedule draws from, uniformly."""

    first_gap: tuple[float, float] = (0.5, 2.0)
    gap: tuple[float, float] = (0.5, 3.0)
    down: tuple[float, float] = (1.0, 4.0)  # kill: time until restart
    paused: tuple[float, float] = (0.5, 3.0)
    partitioned: tuple[float, float] = (1.0, 5.0)
    shaped: tuple[float, float] = (2.0, 6.0)
    delay_ms: tuple[float, float] = (10.0, 200.0)
    jitter_ms: tuple[float, float] = (0.0, 50.0)
    loss: tuple[float, float] = (0.0, 0.05)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedFault:
    """One fault: starts ``at`` seconds into the run, lasts ``length`` seconds."""

    kind: FaultKind
    at: float
    length: float
    #: the node (kill, pause), the link (shape: (a, b)) or every node (partition)
    target: tuple[str, ...]
    #: partition only: the groups cut apart
    groups: tuple[tuple[str, ...], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ends(self) -> float:
        return self.at + self.length

    def describe(self) -> str:
        if self.kind == "partition":
            groups = " | ".join(",".join(g) for g in self.groups)
            what = f"[{groups}] {self.params.get('mode', 'blackhole')}"
        elif self.kind == "shape":
            what = "<->".join(self.target)
            what += (f" delay {self.params['delay_ms']:.0f} ms jitter "
                     f"{self.params['jitter_ms']:.0f} ms loss {self.params['loss']:.3f}")
        else:
            what = ",".join(self.target)
        return f"{self.kind} {what} for {self.length:.1f} s"

    def to_json(self) -> dict[str, Any]:
        target: Any = [list(g) for g in self.groups] if self.kind == "partition" else list(
            self.target)
        return {"kind": self.kind, "at": round(self.at, 3), "length": round(self.length, 3),
                "target": target, "params": dict(self.params)}


def plan_faults(
    seed: int,
    nodes: Sequence[str],
    duration: float,
    *,
    tuning: NemesisTuning = NemesisTuning(),
) -> list[PlannedFault]:
    """The whole fault schedule of a run (see the module doc), sorted by start time.

    Every fault both starts and ends within ``duration``; a fault that would end later is
    shortened (but never below a tenth of a second) or dropped.
    """
    if len(nodes) < 2:
        raise ValueError(f"the nemesis needs at least 2 nodes, got {list(nodes)}")
    rng = random.Random(seed)
    names = list(nodes)
    out: list[PlannedFault] = []
    for kinds in LANES.values():
        # one stream per lane, drawn in lane order: a lane added at the end changes no other
        lane_rng = random.Random(rng.getrandbits(64))
        deck: list[FaultKind] = []
        t = lane_rng.uniform(*tuning.first_gap)
        while True:
            if not deck:
                deck = list(kinds)
                lane_rng.shuffle(deck)
            kind = deck.pop()
            fault = _draw(kind, t, names, lane_rng, tuning)
            if fault.at + 0.1 > duration:
                break
            if fault.ends > duration:
                fault = replace(fault, length=duration - fault.at)
            out.append(fault)
            t = fault.ends + lane_rng.uniform(*tuning.gap)
    out.sort(key=lambda f: (f.at, f.kind))
    return out


def _draw(
    kind: FaultKind, at: float, names: list[str], rng: random.Random, tuning: NemesisTuning
) -> PlannedFault:
    if kind == "kill":
        return PlannedFault(kind=kind, at=at, length=rng.uniform(*tuning.down),
                            target=(rng.choice(names),))
    if kind == "pause":
        return PlannedFault(kind=kind, at=at, length=rng.uniform(*tuning.paused),
                            target=(rng.choice(names),))
    if kind == "partition":
        shuffled = names[:]
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(shuffled) // 2)
        groups = (tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:])))
        mode = rng.choice(("blackhole", "reset"))
        return PlannedFault(kind=kind, at=at, length=rng.uniform(*tuning.partitioned),
                            target=tuple(sorted(names)), groups=groups, params={"mode": mode})
    a, b = rng.sample(names, 2)
    return PlannedFault(
        kind=kind, at=at, length=rng.uniform(*tuning.shaped), target=(a, b),
        params={"delay_ms": round(rng.uniform(*tuning.delay_ms), 1),
                "jitter_ms": round(rng.uniform(*tuning.jitter_ms), 1),
                "loss": round(rng.uniform(*tuning.loss), 4)},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedFault:
    """What the applier did: the planned fault, when (wall time) and whether it worked."""

    fault: PlannedFault
    phase: Literal["start", "end"]
    wall: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.fault.to_json(), "phase": self.phase, "wall": self.wall,
                "error": self.error}


class Nemesis:
    """Applies a schedule to a cluster (see the module doc)."""

    def __init__(
        self,
        cluster: Any,
        schedule: Sequence[PlannedFault],
        *,
        on_event: Callable[[AppliedFault], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.schedule = list(schedule)
        self.on_event = on_event
        self.clock = clock
        self.applied: list[AppliedFault] = []
        self._stop = threading.Event()
        #: faults started and not yet ended, with what their end needs (healed directions)
        self._open: dict[int, tuple[PlannedFault, Any]] = {}
        self._t0 = 0.0

    def run(self, *, tick: Callable[[], None] | None = None, tick_every: float = 0.2) -> None:
        """Apply the schedule in the calling thread until its last event or ``stop``/``abort``.

        The calling thread, not a helper thread, because a node the nemesis restarts is a
        child of the thread that spawned it: with ``PR_SET_PDEATHSIG`` (``harness/procs.py``)
        the kernel kills it when *that thread* exits, which would be an unlogged kill.
        """
        self._t0 = self.clock()
        events: list[tuple[float, int, int, PlannedFault]] = []
        for i, f in enumerate(self.schedule):
            events.append((f.at, 1, i, f))
            events.append((f.ends, 0, i, f))  # ends sort before starts at the same instant
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        for at, is_start, key, fault in events:
            while (left := self._t0 + at - self.clock()) > 0:
                if self._stop.wait(min(left, tick_every)):
                    return
                if tick is not None:
                    tick()
            if self._stop.is_set():
                return
            if is_start:
                undo = self._begin(fault)
                if undo is not _FAILED:
                    self._open[key] = (fault, undo)
            elif key in self._open:
                _, undo = self._open.pop(key)
                self._end(fault, undo)

    def stop(self) -> None:
        """End the open faults now (restart, resume, heal); call it in the ``run`` thread
        after ``run`` returned (or was interrupted)."""
        self._stop.set()
        for key in sorted(self._open):
            fault, undo = self._open.pop(key)
            self._end(fault, undo)

    def abort(self) -> None:
        """Stop applying anything, and leave open faults as they are (the caller tears the
        cluster down anyway, e.g. on Ctrl-C)."""
        self._stop.set()

    def counts(self) -> dict[str, int]:
        """Faults started, by kind (those whose start worked)."""
        out: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        for a in self.applied:
            if a.phase == "start" and a.error is None:
                out[a.fault.kind] += 1
        return out

    def errors(self) -> list[AppliedFault]:
        return [a for a in self.applied if a.error is not None]

    def _record(self, fault: PlannedFault, phase: Literal["start", "end"],
                error: str | None) -> None:
        a = AppliedFault(fault=fault, phase=phase, wall=time.time(), error=error)
        self.applied.append(a)
        if self.on_event is not None:
            self.on_event(a)

    def _begin(self, fault: PlannedFault) -> Any:
        c = self.cluster
        try:
            undo: Any = None
            if fault.kind == "kill":
                c.kill(fault.target[0])
            elif fault.kind == "pause":
                c.pause(fault.target[0])
            elif fault.kind == "partition":
                undo = c.partition(*fault.groups, mode=fault.params["mode"])
            else:
                a, b = fault.target
                p = fault.params
                c.shape(a, b, delay=p["delay_ms"] / 1000, jitter=p["jitter_ms"] / 1000,
                        loss=p["loss"])
                undo = [(a, b), (b, a)]
        except (AuraError, OSError) as exc:
            self._record(fault, "start", f"{type(exc).__name__}: {exc}")
            return _FAILED
        self._record(fault, "start", None)
        return undo

    def _end(self, fault: PlannedFault, undo: Any) -> None:
        c = self.cluster
        try:
            if fault.kind == "kill":
                c.restart(fault.target[0], wait=False)
            elif fault.kind == "pause":
                c.resume(fault.target[0])
            else:
                c.heal(*[tuple(d) for d in undo])
        except (AuraError, OSError) as exc:
            self._record(fault, "end", f"{type(exc).__name__}: {exc}")
            return
        self._record(fault, "end", None)


_FAILED: Any = object()
