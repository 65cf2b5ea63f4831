"""DKD properties in the product simulation (real runtimes, monitors and journals): any
t-subset and initiator derive the same key ``s·H``, fewer than t cannot, and a crash of the
initiator or a participant at any of its journal appends (lost, torn, or durable with its
sends lost) never makes a device derive another key or say two different things."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.harness.simulation import CRASH_MODES, Faults, Simulation, reference_fingerprint
from aura_node.protocols import engine as eng
from aura_node.protocols.dkd.roles import session_params, session_roles


def world(n: int, t: int, seed: int, faults: Faults | None = None) -> tuple[Simulation, str]:
    """``n`` devices with a dealt ``t``-of-``n`` account; returns the world and ``s·H`` of the
    context ``ctx`` computed directly from the shares."""
    sim = Simulation(seed, {f"d{i}": "device" for i in range(1, n + 1)}, faults=faults)
    acct = sim.deal_account([f"d{i}" for i in range(1, n + 1)], t)
    return sim, reference_fingerprint(sim, acct.account_id, "ctx")


def start(sim: Simulation, initiator: str, participants: list[str] | None = None) -> str:
    args = {"context": "ctx", "participants": participants or []}
    p = session_params(args, sim.nodes[initiator].services)
    return sim.start(initiator, "dkd", roles=session_roles(p), params=p)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[int, int, list[str], str, int]:
    n = draw(st.integers(2, 5))
    t = draw(st.integers(1, n))
    names = [f"d{i}" for i in range(1, n + 1)]
    k = draw(st.integers(max(t, 1), n))
    subset = draw(st.permutations(names))[:k]
    initiator = draw(st.sampled_from(subset))
    return n, t, subset, initiator, draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_any_subset_derives_the_same_key(case: tuple[int, int, list[str], str, int]) -> None:
    n, t, subset, initiator, seed = case
    sim, ref = world(n, t, seed, Faults(duplicate=0.3, reorder=0.3))
    sid = start(sim, initiator, subset)
    sim.run()
    res = sim.sessions(sid)[initiator].result
    assert res is not None
    assert res["fingerprint"] == ref
    for name, entry in sim.sessions(sid).items():
        assert name in subset
        assert entry.result is None or entry.result["fingerprint"] == ref
    assert sim.check().ok


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 5), st.data())
def test_fewer_than_t_responding_fails_at_the_deadline(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    names = [f"d{i}" for i in range(1, n + 1)]
    responding = data.draw(st.integers(0, t - 2))  # besides the initiator
    sim, _ = world(n, t, n)
    sim.isolated = set(names[1 + responding:])  # cut off: what they would say is lost
    sid = start(sim, "d1")
    timeout = sim.nodes["d1"].protocols.dkd_timeout_seconds
    sim.run(until=sim.now + timeout - 1.0)
    d1 = sim.nodes["d1"].session(sid)
    assert d1 is not None and d1.active and d1.result is None
    sim.run()
    assert d1.outcome == "failed" and d1.error is not None and d1.error["code"] == "timeout"
    for name in names:
        kinds = {r.kind for r in sim.nodes[name].records(sid)}
        assert eng.KIND_COMPLETE not in kinds, name


def appends_of(n: int, t: int, victim: str, seed: int) -> int:
    """How many journal appends ``victim`` makes in the DKD of a clean run."""
    sim, _ = world(n, t, seed)
    before = sim.nodes[victim].appends
    start(sim, "d1")
    sim.run()
    return sim.nodes[victim].appends - before


def crash_case(n: int, t: int, victim: str, k: int, mode: str, seed: int) -> bool:
    """One crash; True when the initiator still derived the key."""
    sim, ref = world(n, t, seed)
    node = sim.nodes[victim]
    sim.crash_at_append(victim, node.appends + k, mode)
    sid = start(sim, "d1")
    sim.run()
    assert node.crashes == 1, (victim, k, mode)
    what = (n, t, victim, k, mode, seed)
    if sim.nodes["d1"].session(sid) is None:  # the start itself was lost: nobody heard of it
        assert (victim, k, mode) == ("d1", 1, "lost") or mode == "torn" and k == 1, what
        assert not any(n.records(sid) for n in sim.nodes.values()), what
    for name, entry in sim.sessions(sid).items():
        assert not entry.active, (what, name)
        assert entry.result is None or entry.result["fingerprint"] == ref, (what, name)
    # journals verify, every envelope signed, no device said two different things of one
    # step (equivocation), all completed DKDs agree, every session ended within its deadline
    report = sim.check(deadline=sim.nodes["d1"].protocols.dkd_timeout_seconds + 5.0)
    assert report.ok, (what, report.to_json())
    d1 = sim.nodes["d1"].session(sid)
    return d1 is not None and d1.result is not None


def test_crash_at_every_append_point(full_run: bool) -> None:
    seeds = range(4) if full_run else range(1)
    cases = completed = 0
    for n, t in ((3, 2), (4, 3)):
        for victim in ("d1", "d2"):
            for seed in seeds:
                appends = appends_of(n, t, victim, seed)
                assert appends >= 2, (n, t, victim)
                for k in range(1, appends + 1):
                    for mode in CRASH_MODES:
                        cases += 1
                        completed += crash_case(n, t, victim, k, mode, seed)
    # most crashes are survived (the restart resumes from the journal), not merely ended
    assert completed > cases // 2, (completed, cases)
