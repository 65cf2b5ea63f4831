"""An in-memory interpreter: every role of one session, run together under a random schedule.

Theory of operation
-------------------
Each role is instantiated (a role set of size ``n`` gives ``n`` members), and each member is
driven by a :class:`~aura_node.choreo.monitor.Monitor` over its projected local type, so this
exercises projection and monitors together. Links are FIFO per (sender member, receiver
member), as peer links are. At every step the scheduler picks, at random, one enabled event:

- a member sends (any ``send`` transition of its state; a send to a role set reaches every
  member, the sender included when it belongs to the set);
- a queue delivers its head (if the receiver's monitor says "early", the message waits);
- a deadline passes (rarely, or when nothing else can happen), or a member aborts
  (``abort_probability``); an abort sends the abort message to every member out of band.

The run ends when nothing is enabled. A well-formed choreography must end with every member
in a final state (or, for an optional role, never joined: no path connected it) and every
queue empty; a member that has not joined has no session yet, so it neither times out nor
aborts, and an abort sent to it waits until it joins (one that never joins never sees it, as a
node drops a message for a session it does not have). A monitor rejecting a message in this
closed world is a bug in projection or in the monitor. Randomness comes in as ``random.Random``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aura_node.choreo.dsl import Choreography
from aura_node.choreo.errors import EarlyMessageError
from aura_node.choreo.monitor import Monitor

Member = tuple[str, int]


def _zero_fields(t: type[msgspec.Struct]) -> dict[str, Any]:
    zero: dict[str, Any] = {}
    for f in msgspec.structs.fields(t):
        if f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT:
            continue
        tp = f.type
        origin = getattr(tp, "__origin__", tp)
        if origin in (tuple, list):
            zero[f.name] = []
        elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            zero[f.name] = _zero_fields(tp)  # nested message parts (e.g. a signed commitment)
        else:
            zero[f.name] = {bytes: b"", str: "", int: 0, float: 0.0, bool: False}.get(tp)
    return zero


def sample_message(t: type) -> object:
    """An instance of message type ``t`` with zero values (the monitor only looks at the type).
    Nested Struct fields are filled recursively."""
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        return msgspec.convert(_zero_fields(t), t)
    return msgspec.convert({}, t)


@dataclass(slots=True)
class RunResult:
    steps: int
    members: dict[Member, Monitor]
    leftover: int
    events: list[str] = field(default_factory=list)

    @property
    def all_final(self) -> bool:
        return all(m.finished for m in self.members.values())

    def not_final(self) -> list[str]:
        return [f"{r}[{i}] in {m.state}" for (r, i), m in self.members.items() if not m.finished]


def run_session(
    chor: Choreography,
    bindings: Mapping[str, int],
    rng: random.Random,
    *,
    timeout_probability: float = 0.03,
    abort_probability: float = 0.0,
    max_steps: int = 20_000,
) -> RunResult:
    decl = chor.decl
    members: dict[Member, Monitor] = {}
    by_role: dict[str, list[Member]] = {}
    for r in decl.roles:
        lt = chor.project(r.name, dict(bindings))
        count = lt.set_sizes.get(r.name, 0) if r.is_set else 1
        by_role[r.name] = [(r.name, i) for i in range(count)]
        for m in by_role[r.name]:
            members[m] = Monitor(lt)
    samples = {t: sample_message(t) for t in chor.messages}
    abort_msg = samples[decl.abort_message]
    queues: dict[tuple[Member, Member], deque[object]] = {}
    oob: dict[Member, deque[Member]] = {m: deque() for m in members}
    events: list[str] = []

    def broadcast_abort(src: Member) -> None:
        mon = members[src]
        for role in by_role:
            if role != src[0] or chor.role(role).is_set:
                mon.check_outbound(role, abort_msg)
        for dst in members:
            if dst != src:
                oob[dst].append(src)

    steps = 0
    while steps < max_steps:
        actions: list[tuple[str, Any]] = []
        rare: list[tuple[str, Any]] = []
        for m, mon in members.items():
            for t in mon.expected_outbound():
                actions.append(("send", (m, t)))
            if mon.can_time_out:
                rare.append(("timeout", m))
            if not mon.joined:
                continue  # no session yet: it can only be connected
            if not mon.is_final and any(
                t.action == "abort" and not t.implicit for t in mon.local_type.outgoing(mon.state)
            ):
                actions.append(("abort", m))
            elif abort_probability and not mon.is_final and rng.random() < abort_probability:
                actions.append(("abort", m))
        actions.extend(("deliver", k) for k, q in queues.items() if q)
        # an abort waits for a member that has not joined yet (its connect message may still
        # be on the way); one that never joins never sees it
        actions.extend(("oob", m) for m, q in oob.items() if q and members[m].joined)
        rng.shuffle(actions)
        rng.shuffle(rare)
        if rng.random() < timeout_probability:
            actions = rare + actions
        else:
            actions = actions + rare
        done = False
        for kind, arg in actions:
            if kind == "send":
                src, t = arg
                msg = samples[t.message]
                members[src].check_outbound(t.peer, msg)
                for dst in by_role[t.peer]:
                    queues.setdefault((src, dst), deque()).append(msg)
                events.append(f"{src[0]}[{src[1]}] sends {t.message.__name__} to {t.peer}")
            elif kind == "deliver":
                src, dst = arg
                msg = queues[arg][0]
                try:
                    members[dst].check_inbound(src[0], msg, member=src)
                except EarlyMessageError:
                    continue
                queues[arg].popleft()
                events.append(f"{dst[0]}[{dst[1]}] receives {type(msg).__name__} from {src[0]}")
            elif kind == "oob":
                src = oob[arg].popleft()
                members[arg].check_inbound(src[0], abort_msg, member=src)
                events.append(f"{arg[0]}[{arg[1]}] receives the abort from {src[0]}")
            elif kind == "timeout":
                mon = members[arg]
                mon.timeout()
                events.append(f"{arg[0]}[{arg[1]}] times out")
                if mon.state == mon.local_type.abort_state:
                    broadcast_abort(arg)
            else:  # abort
                members[arg].abort()
                events.append(f"{arg[0]}[{arg[1]}] aborts")
                broadcast_abort(arg)
            done = True
            break
        if not done:
            break
        steps += 1
    leftover = sum(len(q) for q in queues.values()) + sum(
        len(q) for m, q in oob.items() if members[m].joined
    )
    return RunResult(steps=steps, members=members, leftover=leftover, events=events)
