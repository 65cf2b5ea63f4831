"""Random well-formed choreographies (role sets, gathers, all-to-all rounds, choices, loops,
deadlines, aborts) are projected and every role is run together by the in-memory interpreter
under random schedules: every run must end with every member final and every queue empty.
Random mutations that break well-formedness must be rejected with the right error kind."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.choreo import ALL, Choreography, ChoreographyBuilder
from aura_node.choreo.simulate import run_session

FULL = os.environ.get("AURA_FULL_TESTS") == "1"
EXAMPLES = 400 if FULL else 60

POOL = [msgspec.defstruct(f"M{i}", [], frozen=True, kw_only=True) for i in range(400)]
Abort = msgspec.defstruct("RandomAbort", [("reason", str)], frozen=True, kw_only=True)

SINGLES = ("r0", "r1", "r2")
SETS = ("S0", "S1")

# --- plans: a random choreography as data, then built with the DSL ------------------------------

Op = tuple[Any, ...]


@dataclass
class Plan:
    singles: tuple[str, ...]
    sets: tuple[str, ...]
    minimum: dict[str, int]
    body: list[Op]
    loops: int = 0

    @property
    def roles(self) -> tuple[str, ...]:
        return self.singles + self.sets


@dataclass
class Ctx:
    plan: Plan
    labels: list[int] = field(default_factory=lambda: [0])


def draw_block(draw: st.DrawFn, ctx: Ctx, depth: int, in_loop: bool, top: bool) -> list[Op]:
    p = ctx.plan
    ops: list[Op] = []
    kinds = ["send", "send"]
    if p.sets and not in_loop:
        kinds += ["gather", "gather", "a2a"]
    if depth > 0:
        kinds += ["choice"]
        if not in_loop:
            kinds += ["loop"]
    if top:
        kinds += ["phase"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "send":
            a = draw(st.sampled_from(p.singles))
            b = draw(st.sampled_from([x for x in p.roles if x != a]))
            ops.append(("send", a, b, draw(st.booleans())))
        elif kind == "gather":
            s = draw(st.sampled_from(p.sets))
            r = draw(st.sampled_from(p.singles))
            k = draw(st.sampled_from(["all", "param", *range(1, p.minimum[s] + 1)]))
            ops.append(("gather", s, r, k, draw(st.booleans()), draw(st.booleans())))
        elif kind == "a2a":
            s = draw(st.sampled_from(p.sets))
            k = draw(st.sampled_from(["all", "param", *range(1, p.minimum[s] + 1)]))
            ops.append(("a2a", s, k))
        elif kind == "choice":
            d = draw(st.sampled_from(p.singles))
            first = draw_block(draw, ctx, depth - 1, in_loop, False)
            if draw(st.booleans()):
                ops.append(("choice", d, first, None))
            else:
                ops.append(("choice", d, first, draw_block(draw, ctx, depth - 1, in_loop, False)))
        elif kind == "loop":
            d = draw(st.sampled_from(p.singles))
            ctx.labels[0] += 1
            body = draw_block(draw, ctx, depth - 1, True, False)
            ops.append(("loop", f"L{ctx.labels[0]}", d, body, draw(st.booleans())))
        else:
            role = draw(st.sampled_from(p.roles))
            ops.append(("phase", role, draw(st.sampled_from(["P1", "P2", "P3"]))))
    return ops


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    singles = SINGLES[: draw(st.integers(2, 3))]
    sets = SETS[: draw(st.integers(0, 2))]
    minimum = {s: draw(st.integers(1, 3)) for s in sets}
    plan = Plan(singles, sets, minimum, [])
    plan.body = draw_block(draw, Ctx(plan), 2, False, True)
    return plan


class Fresh:
    def __init__(self) -> None:
        self.i = 0

    def __call__(self) -> type:
        self.i += 1
        return POOL[self.i]


def emit(c: ChoreographyBuilder, plan: Plan, ops: list[Op], fresh: Fresh) -> None:
    def inform(d: str) -> None:
        for x in plan.roles:
            if x != d:
                c.send(d, x, fresh())

    for op in ops:
        if op[0] == "send":
            _, a, b, deadline = op
            c.send(a, b, fresh(), deadline="d_recv" if deadline else None)
        elif op[0] == "gather":
            _, s, r, k, optional, informs = op
            thr = ALL if k == "all" else (f"k_{s}" if k == "param" else k)
            g = c.gather(
                s, r, fresh(), threshold=_thr(c, thr), deadline="d_gather", optional=optional
            )
            if informs:
                with g.on_quorum():
                    inform(r)
                with g.on_timeout():
                    inform(r)
        elif op[0] == "a2a":
            _, s, k = op
            thr = ALL if k == "all" else (f"k_{s}" if k == "param" else k)
            c.all_to_all(s, fresh(), threshold=_thr(c, thr), deadline="d_round")
        elif op[0] == "choice":
            _, d, first, second = op
            with c.choice(d) as choose:
                with choose.branch("a"):
                    inform(d)
                    emit(c, plan, first, fresh)
                with choose.branch("b"):
                    if second is None:
                        c.abort(d)
                    else:
                        inform(d)
                        emit(c, plan, second, fresh)
        elif op[0] == "loop":
            # restart: every iteration starts with the decider telling everyone, and the
            # 'again' branch only loops back (the restart is what informs the other roles)
            _, label, d, body, restart = op
            with c.loop(label) as loop:
                if restart:
                    inform(d)
                emit(c, plan, body, fresh)
                with c.choice(d) as choose:
                    with choose.branch("again"):
                        if not restart:
                            inform(d)
                        loop.again()
                    with choose.branch("exit"):
                        inform(d)
        else:
            _, role, label = op
            c.phase(role, label)


_THRESHOLDS: dict[int, dict[str, Any]] = {}


def _thr(c: ChoreographyBuilder, thr: Any) -> Any:
    if isinstance(thr, str):
        return _THRESHOLDS[id(c)][thr]
    return thr


def build(
    plan: Plan, mutate: Callable[[ChoreographyBuilder, Plan, Fresh], None] | None = None
) -> Choreography:
    builder = ChoreographyBuilder("random", abort=Abort, abort_phase="Failed", where="gen:0")
    c = builder
    for r in plan.singles:
        c.role(r)
    params: dict[str, Any] = {}
    for s in plan.sets:
        c.role_set(s, size=f"n_{s}", minimum=plan.minimum[s])
        params[f"k_{s}"] = c.threshold(f"k_{s}", of=s, minimum=1)
    _THRESHOLDS[id(c)] = params
    fresh = Fresh()
    try:
        emit(c, plan, plan.body, fresh)
        if mutate is not None:
            mutate(c, plan, fresh)
        for x in plan.roles:  # a closing notice, so every role takes part
            if x != "r0":
                c.send("r0", x, fresh())
    finally:
        del _THRESHOLDS[id(c)]
    return builder.build()


# --- the interpreter property ------------------------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=plans(), data=st.data())
def test_random_wellformed_choreographies_run_to_completion(
    plan: Plan, data: st.DataObject
) -> None:
    chor = build(plan)
    assert chor.check() == (), "\n".join(e.message for e in chor.check())
    bindings: dict[str, int] = {}
    for s in plan.sets:
        n = data.draw(st.integers(plan.minimum[s], plan.minimum[s] + 2), label=f"n_{s}")
        bindings[f"n_{s}"] = n
        bindings[f"k_{s}"] = data.draw(st.integers(1, n), label=f"k_{s}")
    for attempt in range(3):
        seed = data.draw(st.integers(0, 2**32 - 1), label=f"seed{attempt}")
        rng = random.Random(seed)
        res = run_session(
            chor,
            bindings,
            rng,
            timeout_probability=rng.choice([0.0, 0.01, 0.2]),
            abort_probability=rng.choice([0.0, 0.0, 0.01]),
        )
        assert res.all_final, (res.not_final(), res.events[-15:])
        assert res.leftover == 0, res.events[-15:]


def test_interpreter_detects_a_stuck_role() -> None:
    """The property above can fail: when a role's local type does not end where the protocol
    ends (here r1's end state is not final), the interpreter reports the role as stuck."""
    plan = Plan(("r0", "r1"), (), {}, [("send", "r0", "r1", False)])
    chor = build(plan)
    lt = chor.project("r1")
    from aura_node.choreo.local import LocalType

    broken = LocalType(
        choreography=lt.choreography,
        role=lt.role,
        initial=lt.initial,
        states=lt.states,
        final=frozenset({lt.abort_state}),
        phases=lt.phases,
        transitions=lt.transitions,
        abort_state=lt.abort_state,
        abort_message=lt.abort_message,
    )
    original = chor.project

    def project(role: str, bindings: dict[str, int] | None = None) -> LocalType:
        return broken if role == "r1" else original(role, bindings)

    chor.project = project  # type: ignore[method-assign]
    res = run_session(chor, {}, random.Random(1))
    assert not res.all_final
    assert any(s.startswith("r1[0]") for s in res.not_final())


# --- mutations --------------------------------------------------------------------------------

Mutation = Callable[[ChoreographyBuilder, Plan, Fresh], None]


def m_unknown_role(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    c.send("r0", "ghost", fresh())


def m_threshold_too_large(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    big = c.role_set("Sbig", size="n_big", minimum=2)
    c.gather(big, "r0", fresh(), threshold=3, deadline="d")


def m_threshold_zero(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    s = c.role_set("Szero", size="n_zero", minimum=2)
    c.all_to_all(s, fresh(), threshold=0, deadline="d")


def m_gather_without_deadline(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    s = c.role_set("Snd", size="n_nd", minimum=1)
    c.gather(s, "r1", fresh(), threshold=1, deadline=None)


def m_uninformed_role(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    c.role("r9")
    with c.choice("r0") as choose:
        with choose.branch("a"):
            c.send("r0", "r1", fresh())
            c.send("r9", "r1", fresh())
        with choose.branch("b"):
            c.send("r0", "r1", fresh())
            c.send("r9", "r1", fresh())


def m_not_initiated(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    with c.choice("r0") as choose:
        with choose.branch("a"):
            c.send("r0", "r1", fresh())
        with choose.branch("b"):
            c.send("r1", "r0", fresh())


def m_ambiguous(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    same = fresh()
    with c.choice("r0") as choose:
        with choose.branch("a"):
            c.send("r0", "r1", same)
            c.send("r1", "r0", fresh())
        with choose.branch("b"):
            c.send("r0", "r1", same)
            c.send("r0", "r1", fresh())


def m_unreachable(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    with c.choice("r0") as choose:
        with choose.branch("a"):
            c.send("r0", "r1", fresh())
            c.end()
            c.send("r1", "r0", fresh())
        with choose.branch("b"):
            c.send("r0", "r1", fresh())


def m_unused_message(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    c.messages(POOL[398])


def m_again_outside_loop(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    with c.choice("r0") as choose:
        with choose.branch("a"):
            c.send("r0", "r1", fresh())
            c.again("nowhere")
        with choose.branch("b"):
            c.send("r0", "r1", fresh())


def m_send_from_set(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    s = c.role_set("Sfrom", size="n_from", minimum=1)
    c.send(s, "r0", fresh())


def m_unused_role(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    c.role("lonely")


def m_empty_loop(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    with c.loop("spin") as spin:
        spin.again()


def m_stuck_role(c: ChoreographyBuilder, p: Plan, fresh: Fresh) -> None:
    c.role("r8")
    with c.choice("r0") as choose:
        with choose.branch("forever"):
            c.send("r0", "r1", fresh())
            with c.loop("stream") as stream:
                c.send("r0", "r1", fresh())
                stream.again()
        with choose.branch("once"):
            c.send("r0", "r1", fresh())
    c.send("r0", "r8", fresh())  # never happens after 'forever': r8 waits for it forever


MUTATIONS: list[tuple[Mutation, str]] = [
    (m_unknown_role, "unknown_role"),
    (m_threshold_too_large, "threshold_bounds"),
    (m_threshold_zero, "threshold_bounds"),
    (m_gather_without_deadline, "wait_forever"),
    (m_uninformed_role, "knowledge_of_choice"),
    (m_not_initiated, "choice_not_initiated"),
    (m_ambiguous, "ambiguous_choice"),
    (m_unreachable, "unreachable"),
    (m_unused_message, "unused_message"),
    (m_again_outside_loop, "bad_loop"),
    (m_send_from_set, "bad_role_use"),
    (m_unused_role, "unused_role"),
    (m_empty_loop, "empty_loop"),
    (m_stuck_role, "stuck_role"),
]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), which=st.sampled_from(MUTATIONS))
def test_mutations_are_rejected_with_the_right_error(
    plan: Plan, which: tuple[Mutation, str]
) -> None:
    mutate, kind = which
    assert build(plan).check() == ()
    chor = build(plan, mutate)
    errors = chor.check()
    kinds = {e.kind for e in errors}
    assert kind in kinds, [e.message for e in errors]
    for e in errors:
        assert e.choreography == "random"
        assert "test_choreo_random.py:" in e.where or e.where == "gen:0", e.message
    with pytest.raises(Exception, match="ill formed"):
        chor.project("r0")


@pytest.mark.parametrize("name", ["ping", "genesis", "dkd", "recovery", "account-sync"])
def test_shipped_choreographies_run_to_completion(name: str, full_run: bool) -> None:
    from aura_node.protocols.registry import REGISTRY

    chor = REGISTRY[name]
    outcomes: set[str] = set()
    for seed in range(400 if full_run else 80):
        rng = random.Random(seed)
        bindings: dict[str, int] = {}
        for r in chor.decl.roles:
            if r.size:
                bindings[r.size] = rng.randint(r.minimum, r.minimum + 3)
        for t in chor.decl.thresholds:
            bindings[t.name] = rng.randint(max(t.minimum, 1), bindings[chor.role(t.of).size or ""])
        res = run_session(
            chor,
            bindings,
            rng,
            timeout_probability=rng.choice([0.0, 0.005, 0.05]),
            abort_probability=rng.choice([0.0, 0.002]),
        )
        assert res.all_final and res.leftover == 0, (seed, bindings, res.not_final())
        outcomes |= {m.state for m in res.members.values()}
    assert {"Completed", "Failed"} <= outcomes
