"""The fault model of the harness proxy, as plain data (no sockets, no clock, no trio).

Every byte between two harness nodes flows through the fault proxy (``harness/proxy.py``). The
proxy keeps one listening port per *dial link* A->B (A connects to it to reach B), but faults
are keyed by the **direction of the bytes**: ``("d1", "d2")`` is "bytes from d1 to d2". A TCP
connection carries both directions, so a connection that d1 dialled through link d1->d2 has its
upstream governed by ``(d1, d2)`` and its downstream by ``(d2, d1)``; a connection d2 dialled
has them the other way round. This way a fault means the same thing whichever side dialled and
whichever connection the transport's duplicate-connection resolution kept.

What each fault does to real TCP (the honest model):

- **partition, mode "blackhole"** (default): bytes in that direction stop moving. The proxy
  stops reading, so the sender's socket buffers fill and its writes block, exactly what a
  silent network partition looks like to an application before TCP's own retransmission timer
  gives up. New connections are accepted by the kernel (we cannot drop a SYN from user space)
  but never reach the target: the dialer sees a handshake that hangs. On heal, held bytes are
  delivered intact and in order, as TCP would after a partition shorter than its timeouts.
- **partition, mode "reset"**: open connections carrying that direction are torn down with an
  RST (SO_LINGER 0) and new ones are accepted and immediately reset. This is what a peer sees
  when a middlebox or the far kernel has forgotten the connection. A reset cuts both directions:
  TCP has no half-reset.
- **delay / jitter**: each chunk read from one side is written to the other no earlier than
  ``now + delay + U(-jitter, +jitter)`` and never before the chunk ahead of it (TCP delivers in
  order, so jitter shows up as bunching, not reordering). Delaying both directions adds twice
  the delay to a round trip.
- **loss**: user space cannot lose bytes from a TCP stream without corrupting it, and real TCP
  hides loss by retransmitting. So loss is modelled as what the application would observe:
  each chunk is split into MSS-sized segments; each segment is lost with probability ``loss``,
  and each loss stalls the chunk by a retransmission timeout that doubles from 200 ms (Linux's
  minimum RTO) up to 3.2 s; a segment lost ``LOSS_MAX_RETRIES`` times in a row resets the
  connection (TCP giving up, much sooner than the kernel's default of ~15 minutes, so tests see
  it). Loss never drops, duplicates or reorders application bytes.

The random draws (jitter, loss) come from a seeded ``random.Random`` the caller owns, so a
proxy started with the same seed makes the same draws for the same sequence of chunks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast

from aura_node.errors import AuraError

PartitionMode = Literal["blackhole", "reset"]
PARTITION_MODES: tuple[PartitionMode, ...] = ("blackhole", "reset")

#: (from_node, to_node): the direction bytes travel
Direction = tuple[str, str]

MSS_BYTES = 1448
LOSS_RTO_MIN_S = 0.2
LOSS_RTO_MAX_S = 3.2
LOSS_MAX_RETRIES = 6
MAX_DELAY_S = 60.0


class HarnessError(AuraError):
    """The harness was asked for something it cannot do (bad fault, node did not come up)."""

    code = "harness"


class FaultError(HarnessError):
    code = "fault_invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class Shaping:
    """The faults applied to one direction of traffic. The default value means "no fault"."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    partition: PartitionMode | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay_s <= MAX_DELAY_S:
            raise FaultError(f"delay must be 0..{MAX_DELAY_S} s, got {self.delay_s}")
        if not 0.0 <= self.jitter_s <= MAX_DELAY_S:
            raise FaultError(f"jitter must be 0..{MAX_DELAY_S} s, got {self.jitter_s}")
        if not 0.0 <= self.loss < 1.0:
            raise FaultError(f"loss must be a probability in [0, 1), got {self.loss}")
        if self.partition is not None and self.partition not in PARTITION_MODES:
            raise FaultError(
                f"partition mode must be one of {', '.join(PARTITION_MODES)}, "
                f"got {self.partition!r}"
            )

    @property
    def is_clear(self) -> bool:
        return self == CLEAR

    def to_json(self) -> dict[str, object]:
        return {
            "delay_ms": round(self.delay_s * 1000, 3),
            "jitter_ms": round(self.jitter_s * 1000, 3),
            "loss": self.loss,
            "partition": self.partition,
        }


CLEAR = Shaping()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkPlan:
    """When a chunk may be written on, or that the connection must be reset instead."""

    due: float
    reset: bool = False
    lost_segments: int = 0


def plan_chunk(
    shaping: Shaping, *, size: int, now: float, previous_due: float, rng: random.Random
) -> ChunkPlan:
    """Decide when a chunk of ``size`` bytes read at ``now`` is delivered (see module doc)."""
    stall = 0.0
    lost = 0
    if shaping.loss > 0.0:
        for _segment in range(max(1, math.ceil(size / MSS_BYTES))):
            retries = 0
            while rng.random() < shaping.loss:
                stall += min(LOSS_RTO_MIN_S * (2**retries), LOSS_RTO_MAX_S)
                retries += 1
                lost += 1
                if retries >= LOSS_MAX_RETRIES:
                    return ChunkPlan(due=now + stall, reset=True, lost_segments=lost)
    jitter = rng.uniform(-shaping.jitter_s, shaping.jitter_s) if shaping.jitter_s else 0.0
    due = max(now + max(0.0, shaping.delay_s + jitter) + stall, previous_due)
    return ChunkPlan(due=due, lost_segments=lost)


def directions_between(groups: Sequence[Iterable[str]], everyone: Iterable[str]) -> list[Direction]:
    """Both directions of every pair of nodes that are in different groups.

    One group means "this group against everyone else" (the rest of ``everyone`` is the other
    group). Nodes named in no group and not in ``everyone`` are an error.
    """
    all_nodes = list(dict.fromkeys(everyone))
    sets = [list(dict.fromkeys(g)) for g in groups]
    if not sets or not all(sets):
        raise FaultError("a partition needs at least one non-empty group of nodes")
    named = [n for g in sets for n in g]
    unknown = sorted(set(named) - set(all_nodes))
    if unknown:
        raise FaultError(f"unknown node(s) {', '.join(unknown)} (nodes: {', '.join(all_nodes)})")
    if len(named) != len(set(named)):
        raise FaultError("a node appears in more than one partition group")
    if len(sets) == 1:
        rest = [n for n in all_nodes if n not in sets[0]]
        if not rest:
            raise FaultError("a single partition group must leave some nodes outside it")
        sets.append(rest)
    out: list[Direction] = []
    for i, a_group in enumerate(sets):
        for j, b_group in enumerate(sets):
            if i != j:
                out.extend((a, b) for a in a_group for b in b_group)
    return out


class FaultTable:
    """Current faults per direction; the proxy consults it for every chunk and connection."""

    __slots__ = ("_faults",)

    def __init__(self) -> None:
        self._faults: dict[Direction, Shaping] = {}

    def get(self, direction: Direction) -> Shaping:
        return self._faults.get(direction, CLEAR)

    def items(self) -> list[tuple[Direction, Shaping]]:
        return sorted(self._faults.items())

    def partition(self, directions: Iterable[Direction], mode: PartitionMode) -> list[Direction]:
        if mode not in PARTITION_MODES:
            raise FaultError(f"partition mode must be one of {PARTITION_MODES}, got {mode!r}")
        return self._update(directions, {"partition": mode})

    def shape(
        self,
        directions: Iterable[Direction],
        *,
        delay_s: float | None = None,
        jitter_s: float | None = None,
        loss: float | None = None,
    ) -> list[Direction]:
        changes: dict[str, object] = {}
        if delay_s is not None:
            changes["delay_s"] = float(delay_s)
        if jitter_s is not None:
            changes["jitter_s"] = float(jitter_s)
        if loss is not None:
            changes["loss"] = float(loss)
        if not changes:
            raise FaultError("shape needs at least one of delay, jitter or loss")
        return self._update(directions, changes)

    def heal(self, directions: Iterable[Direction] | None = None) -> list[Direction]:
        """Clear every fault on ``directions`` (all directions when None)."""
        if directions is None:
            healed = sorted(self._faults)
            self._faults.clear()
            return healed
        healed = []
        for d in directions:
            if self._faults.pop(_check_direction(d), None) is not None:
                healed.append(d)
        return healed

    def _update(
        self, directions: Iterable[Direction], changes: Mapping[str, object]
    ) -> list[Direction]:
        dirs = [_check_direction(d) for d in directions]
        if not dirs:
            raise FaultError("no directions given")
        # Build every new value first so a bad parameter changes nothing.
        new = {d: replace(self.get(d), **changes) for d in dirs}  # type: ignore[arg-type]
        for d, shaping in new.items():
            if shaping.is_clear:
                self._faults.pop(d, None)
            else:
                self._faults[d] = shaping
        return dirs


def _check_direction(d: object) -> Direction:
    if (
        not isinstance(d, tuple | list)
        or len(d) != 2
        or not all(isinstance(x, str) and x for x in d)
        or d[0] == d[1]
    ):
        raise FaultError(f"a direction is [from_node, to_node] of two different names, got {d!r}")
    return cast(Direction, (d[0], d[1]))
