"""Stand-in for ``aura_node.choreo.local`` until the choreography branch merges.

Same dataclass shapes as the agreed API (LocalTransition, LocalType), so the conformance tests
build local types by hand and run unchanged against the real classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTransition:
    source: str
    action: Literal["send", "recv", "gather", "timeout", "abort"]
    peer: str
    message: type | None
    target: str
    threshold: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalType:
    choreography: str
    role: str
    initial: str
    states: tuple[str, ...]
    final: frozenset[str]
    phases: Mapping[str, str]
    transitions: tuple[LocalTransition, ...]

    def outgoing(self, state: str) -> tuple[LocalTransition, ...]:
        return tuple(t for t in self.transitions if t.source == state)
