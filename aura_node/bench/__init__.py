"""Benchmarks: figures compared with a floor measured in the same run.

Each benchmark module ``aura_node.bench.<name>`` exposes ``add_arguments(parser)`` (optional)
and ``run(args) -> list[Figure]``. ``aura-node bench NAME [--json]`` prints a table, or one JSON
object per figure: ``{"name", "value", "unit", "floor", "ratio"}`` (plus ``target`` and
``floor_name`` where one applies). Timing is never asserted in tests: this machine is shared.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    name: str
    value: float
    unit: str
    #: the floor (or peer) measured in the same run; None when the figure has none
    floor: float | None = None
    floor_name: str = ""
    #: ratio target against the floor, e.g. ">= 0.6" (informational, never asserted)
    target: str = ""
    #: True when a higher value is better (rates); False for latencies and wall times
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor

    def to_json(self) -> dict[str, object]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "floor": None if self.floor is None else round(self.floor, 3),
            "ratio": None if ratio is None else round(ratio, 3),
            "floor_name": self.floor_name,
            "target": self.target,
        }


def best_rate(fn: Callable[[], int], *, repeats: int = 3) -> float:
    """Run ``fn`` (which returns how many operations it did) ``repeats`` times; the median
    operations per second."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t0
        rates.append(n / dt if dt > 0 else float("inf"))
    rates.sort()
    return rates[len(rates) // 2]


def node_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (``/proc/PID/stat``), all their threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def render_table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "unit", "floor", "ratio", "target")]
    for f in figures:
        ratio = f.ratio
        rows.append(
            (
                f.name,
                f"{f.value:,.1f}",
                f.unit,
                "" if f.floor is None else f"{f.floor:,.1f} ({f.floor_name})",
                "" if ratio is None else f"{ratio:.2f}x",
                f.target,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
