"""Recovery crash safety: a crash at every journal-append point of every role (new device,
guardians, devices), in the happy path and in the vetoed path. After the restarts the session
completes with the original account or ends everywhere; nobody ever sends two different
versions of a message (approval, share, notice, ...) in one session."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

import pytest

from aura_node.protocols import engine as eng
from tests.unit.accounts_sim import Crash, Sim
from tests.unit.recovery_world import account_id, start_recovery, world

T = TypeVar("T")


def guarded(sim: Sim, fn: Callable[[], T]) -> T | None:
    for _ in range(50):
        try:
            return fn()
        except Crash as c:
            sim.crash(c.node)
    raise AssertionError("did not settle")


def scenario(sim: Sim, *, veto: bool) -> str | None:
    sid = guarded(sim, lambda: start_recovery(sim))
    if sid is None or sid not in sim.nodes["n1"].sessions:
        return None
    guarded(sim, lambda: sim.run(timers=False))
    for g in ("g1", "g3"):
        entry = sim.nodes[g].sessions.get(sid)
        if entry is not None and not entry.ended:
            guarded(sim, lambda g=g: sim.control(g, sid, "approve"))  # type: ignore[misc]
    guarded(sim, lambda: sim.run(timers=False))
    if veto:
        entry = sim.nodes["d1"].sessions.get(sid)
        if entry is not None and not entry.ended:
            guarded(sim, lambda: sim.control("d1", sid, "veto"))
    guarded(sim, lambda: sim.run())
    return sid


def no_equivocation(sim: Sim) -> None:
    bodies: dict[tuple[str, str, str, tuple[str, ...]], set[bytes]] = defaultdict(set)
    for name, node in sim.nodes.items():
        for rec in node.journal:
            if rec.kind != eng.KIND_OUT:
                continue
            ev = eng.parse_record(rec)
            assert isinstance(ev, eng.Sent)
            if not ev.envelope.step.endswith("Abort"):
                bodies[(name, rec.session, ev.envelope.step, ev.to)].add(ev.envelope.body)
    for key, found in bodies.items():
        assert len(found) == 1, f"{key} sent {len(found)} different bodies"


def count_appends(seed: int, veto: bool) -> int:
    sim = world(seed)
    count = 0

    def hook(node: str, records: list[tuple[str, bytes]]) -> None:
        nonlocal count
        count += 1

    sim.before_append = hook
    scenario(sim, veto=veto)
    return count


@pytest.mark.parametrize("veto", [False, True])
def test_crash_at_every_append_point(veto: bool) -> None:
    seed = 11
    total = count_appends(seed, veto)
    assert total > 15
    for k in range(total):
        sim = world(seed)
        calls = 0

        def hook(node: str, records: list[tuple[str, bytes]], k: int = k) -> None:
            nonlocal calls
            calls += 1
            if calls == k + 1:
                raise Crash(node)

        public_key = sim.nodes["d1"].services.accounts.only().account.public_key
        sim.before_append = hook
        sid = scenario(sim, veto=veto)
        if sid is None:
            continue
        n1 = sim.nodes["n1"].sessions[sid]
        assert n1.ended, f"crash point {k}: the new device never finished"
        if n1.outcome is not None:
            assert not veto or sim.nodes["d1"].sessions.get(sid) is None, k
            est = sim.nodes["n1"].services.accounts.only()
            assert est.account.public_key == public_key, k
            assert n1.outcome["account"] == account_id(sim)
        else:
            assert len(sim.nodes["n1"].services.accounts) == 0, k
            for n, node in sim.nodes.items():
                e = node.sessions.get(sid)
                assert e is None or e.ended, (k, n)
        if veto:
            for node in sim.nodes.values():
                steps = {eng.parse_record(r).envelope.step  # type: ignore[union-attr]
                         for r in node.journal if r.kind == eng.KIND_OUT}
                assert "SealedRecoveryShare" not in steps, k
        no_equivocation(sim)
