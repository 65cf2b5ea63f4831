"""Recovery crash safety: a crash at every journal-append point of every role (new device,
guardians, devices), in the happy path and in the vetoed path. After the restarts the session
completes with the original account or ends everywhere; nobody ever sends two different
versions of a message (approval, share, notice, ...) in one session."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
import pytest

from aura_node.errors import AuraError
from aura_node.harness.simulation import CRASH_MODES, Simulation
from aura_node.protocols import engine as eng
from tests.unit.test_recovery_roles import account_id, settle, start_recovery, world


def operator(sim: Simulation, node: str, sid: str, action: str) -> None:
    """The operator acts where the session is still active; an action lost in a crash is
    retried once the node is back (as an operator whose ``ctl`` call failed would)."""
    n = sim.nodes[node]
    for _ in range(5):
        if not n.up:
            settle(sim)
            continue
        s = n.session(sid)
        if s is None or not s.active:
            return
        crashes = n.crashes
        try:
            sim.control(node, sid, action)
        except AuraError:
            return
        if n.crashes == crashes:
            return
        settle(sim)
    raise AssertionError(f"{action} on {node} never went through")


def scenario(sim: Simulation, *, veto: bool) -> str:
    n1 = sim.nodes["n1"]
    sid = start_recovery(sim)
    if not n1.records(sid):  # the start itself was lost in a crash: start again once back
        settle(sim)
        assert n1.up
        sid = start_recovery(sim)
    settle(sim)
    for g in ("g1", "g3"):
        operator(sim, g, sid, "approve")
    settle(sim)
    if veto:
        operator(sim, "d1", sid, "veto")
    sim.run()
    for node in sim.nodes.values():  # a node that crashed last comes back
        if not node.up:
            sim.restart(node.name)
    sim.run()
    return sid


def ending(sim: Simulation, node: str, sid: str) -> tuple[bool, dict[str, Any]] | None:
    for r in sim.nodes[node].records(sid):
        if r.kind == eng.KIND_COMPLETE:
            return True, dict(msgspec.msgpack.decode(r.body, type=eng.CompleteBody).result)
        if r.kind == eng.KIND_FAIL:
            return False, {}
    return None


def no_equivocation(sim: Simulation) -> None:
    bodies: dict[tuple[str, str, str, tuple[str, ...]], set[bytes]] = defaultdict(set)
    for name, node in sim.nodes.items():
        for rec in node.records():
            if rec.kind != eng.KIND_OUT:
                continue
            ev = eng.parse_record(rec)
            assert isinstance(ev, eng.Sent)
            if not ev.envelope.step.endswith("Abort"):
                bodies[(name, rec.session, ev.envelope.step, ev.to)].add(ev.envelope.body)
    for key, found in bodies.items():
        assert len(found) == 1, f"{key} sent {len(found)} different bodies"


def no_nondeterminism(sim: Simulation, k: int) -> None:
    """Replay after the crash agreed with every journal (the kit's byte-for-byte check; a
    guardian's HPKE-sealed share is kept from the journal, ``replay="journal"``)."""
    for name, node in sim.nodes.items():
        for r in node.records():
            if r.kind == eng.KIND_FAIL:
                fail = msgspec.msgpack.decode(r.body, type=eng.FailBody)
                assert fail.code != "nondeterminism", (k, name, fail.reason)


def count_appends(seed: int, veto: bool) -> tuple[int, int]:
    """(appends before the recovery, appends of the recovery) in a clean run."""
    sim = world(seed)
    base = sim.stats.appends
    scenario(sim, veto=veto)
    return base, sim.stats.appends - base


@pytest.mark.parametrize("mode", CRASH_MODES)
@pytest.mark.parametrize("veto", [False, True])
def test_crash_at_every_append_point(veto: bool, mode: str) -> None:
    seed = 11
    base, total = count_appends(seed, veto)
    assert total > 15
    for k in range(1, total + 1):
        sim = world(seed)
        assert sim.stats.appends == base
        sim.crash_at[base + k] = mode
        # no re-delivery by the network: what a crashed node did not take comes back
        # only through the runtime's re-send of active sessions' envelopes on peer-up
        assert not sim.hold_while_down
        public_key = sim.nodes["d1"].accounts.only().account.public_key
        sid = scenario(sim, veto=veto)
        assert sim.stats.crashes == 1, k
        n1 = ending(sim, "n1", sid)
        assert n1 is not None, f"crash point {k}: the new device never finished"
        if n1[0]:
            assert not veto or not sim.nodes["d1"].records(sid), k
            est = sim.nodes["n1"].accounts.only()
            assert est.account.public_key == public_key, k
            assert n1[1]["account"] == account_id(sim)
        else:
            assert len(sim.nodes["n1"].accounts) == 0, k
            for n, node in sim.nodes.items():
                assert not node.records(sid) or ending(sim, n, sid) is not None, (k, n)
        if veto:
            for node in sim.nodes.values():
                steps = {eng.parse_record(r).envelope.step  # type: ignore[union-attr]
                         for r in node.records() if r.kind == eng.KIND_OUT}
                assert "SealedRecoveryShare" not in steps, k
        no_equivocation(sim)
        no_nondeterminism(sim, k)
        assert sim.check().ok, (k, sim.check().violations)
