"""Genesis crash safety: crash at every journal-append point of every role."""

from __future__ import annotations

from collections import defaultdict

import pytest

from aura_node.protocols import engine as eng
from tests.unit.accounts_sim import Crash, Sim
from tests.unit.test_genesis_roles import ROLES, create


def _run_with_crashes(sim: Sim) -> None:
    for _ in range(50):
        try:
            sim.run()
            return
        except Crash as c:
            sim.crash(c.node)
    raise AssertionError("did not settle")


def _appends_in_clean_run(seed: int) -> int:
    sim = Sim(ROLES, seed=seed)
    count = 0

    def hook(node: str, records: list[tuple[str, bytes]]) -> None:
        nonlocal count
        count += 1

    sim.before_append = hook
    create(sim)
    sim.run()
    return count


def _no_equivocation(sim: Sim) -> None:
    bodies: dict[tuple[str, str, str], set[bytes]] = defaultdict(set)
    for name, node in sim.nodes.items():
        for ev in eng.parse_evidence(node.journal):
            if isinstance(ev, eng.Sent) and not ev.envelope.step.endswith("Abort"):
                bodies[(name, node.journal[0].session, ev.envelope.step + repr(ev.to))].add(
                    ev.envelope.body)
    for key, found in bodies.items():
        assert len(found) == 1, f"{key} sent {len(found)} different bodies"


@pytest.mark.parametrize("seed", [0, 1])
def test_crash_at_every_append_point(seed: int) -> None:
    total = _appends_in_clean_run(seed)
    assert total > 10
    for k in range(total):
        sim = Sim(ROLES, seed=seed)
        calls = 0

        def hook(node: str, records: list[tuple[str, bytes]], k: int = k) -> None:
            nonlocal calls
            calls += 1
            if calls == k + 1:
                raise Crash(node)

        sim.before_append = hook
        try:
            sid = create(sim)
        except Crash as c:
            sim.crash(c.node)  # the start step was lost: no session anywhere
            assert all(not n.journal for n in sim.nodes.values())
            continue
        _run_with_crashes(sim)
        dealer = sim.nodes["d1"].sessions[sid]
        assert dealer.ended, f"crash point {k}: dealer never finished"
        if dealer.outcome is not None:
            views = {n: node.services.accounts.only().account.to_json()
                     for n, node in sim.nodes.items()}
            assert all(v == dealer.outcome for v in views.values()), (k, views)
        else:
            # a clean abort: the dealer holds no account, every other session ended
            assert len(sim.nodes["d1"].services.accounts) == 0, k
            for n, node in sim.nodes.items():
                e = node.sessions.get(sid)
                assert e is None or e.ended, (k, n)
        _no_equivocation(sim)
