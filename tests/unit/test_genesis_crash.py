"""Genesis crash safety: crash at every journal-append point of every role, on the real
runtime (deterministic simulation): the group is lost, torn, or durable with its sends lost."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
import pytest

from aura_node.harness.simulation import CRASH_MODES, Simulation
from aura_node.protocols import engine as eng
from tests.unit.test_genesis_roles import ROLES, create


def _appends_in_clean_run(seed: int) -> int:
    sim = Simulation(seed, ROLES)
    create(sim)
    sim.run()
    return sim.stats.appends


def ending(sim: Simulation, node: str, sid: str) -> tuple[bool, dict[str, Any]] | None:
    """How ``sid`` ended on ``node`` by its journal: (completed, result), None if it did not."""
    for rec in sim.nodes[node].records(sid):
        if rec.kind == eng.KIND_COMPLETE:
            return True, dict(msgspec.msgpack.decode(rec.body, type=eng.CompleteBody).result)
        if rec.kind == eng.KIND_FAIL:
            return False, {}
    return None


def _no_equivocation(sim: Simulation) -> None:
    bodies: dict[tuple[str, str, str], set[bytes]] = defaultdict(set)
    for name, node in sim.nodes.items():
        for rec in node.records():
            ev = eng.parse_record(rec)
            if isinstance(ev, eng.Sent) and not ev.envelope.step.endswith("Abort"):
                bodies[(name, rec.session, ev.envelope.step + repr(ev.to))].add(
                    ev.envelope.body)
    for key, found in bodies.items():
        assert len(found) == 1, f"{key} sent {len(found)} different bodies"


@pytest.mark.parametrize("mode", CRASH_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_crash_at_every_append_point(seed: int, mode: str) -> None:
    total = _appends_in_clean_run(seed)
    assert total > 10
    for k in range(1, total + 1):
        sim = Simulation(seed, ROLES, crash_at={k: mode})
        sid = create(sim)
        if k == 1 and mode != "after":
            # the start step was lost: no session anywhere
            assert sim.nodes["d1"].crashes == 1
            sim.run()
            assert all(not n.records() for n in sim.nodes.values())
            continue
        sim.run()
        assert sim.stats.crashes == 1 and all(n.up for n in sim.nodes.values()), k
        dealer = ending(sim, "d1", sid)
        assert dealer is not None, f"crash point {k}: dealer never finished"
        # replay restores the dealing from genesis.dealt (never dealt again), so every crash
        # after the start is survived: the account exists, the same, on every holder
        assert dealer[0], f"crash point {k} ({mode}): the dealer failed"
        views = {n: node.accounts.only().account.to_json() for n, node in sim.nodes.items()}
        assert all(v == dealer[1] for v in views.values()), (k, views)
        _no_equivocation(sim)
        assert sim.check().ok, (k, sim.check().violations)
