"""account-sync in the seeded simulation (the daemon's session runtime, monitors, journal
format): epoch facts reach every holder after a partition heals and after a crash at any
journal append, a removed device learns it was removed, a bad fact from a peer is rejected
with evidence and the session goes on. Facts are made offline (``tests/epoch_support``): no
reshare protocol is needed to test how facts spread."""

from __future__ import annotations

import pytest

from aura_node.crypto.group import Scalar
from aura_node.harness.simulation import CRASH_MODES, Simulation
from aura_node.protocols import engine as eng
from aura_node.protocols.account import AccountError
from aura_node.protocols.account_sync.roles import CHOREOGRAPHY, sync_peers
from aura_node.protocols.epochs import EpochFact, root_fact
from tests.epoch_support import epoch_records, reshared

SECRET = Scalar.from_int(987654321)


def world(seed: int = 1) -> tuple[Simulation, str, EpochFact]:
    """d1, d2, d3 hold a 2-of-3 account; epoch 1 (d1 and d2 dealt) removes d3 and adds d4.
    d1 and d4 journaled the epoch like a finished reshare; d2 only its share (its fact is
    still to come); d3 knows nothing of it."""
    sim = Simulation(seed, dict.fromkeys(("d1", "d2", "d3", "d4"), "device"))
    record = sim.deal_account(["d1", "d2", "d3"], 2, secret=SECRET)
    keys = {n: sim.nodes[n].key for n in sim.nodes}
    fact, est = reshared(root_fact(record), secret=SECRET, dealers=[keys["d1"], keys["d2"]],
                         devices={n: keys[n] for n in ("d1", "d2", "d4")}, t=2)
    sim.journal_records("d1", epoch_records(fact, est["d1"]))
    sim.journal_records("d4", epoch_records(fact, est["d4"]))
    sim.journal_records("d2", epoch_records(fact, est["d2"])[:1])
    return sim, record.account_id, fact


def sync(sim: Simulation, a: str, b: str) -> str:
    """What the daemon does when the link a-b comes up (a's side)."""
    assert b in sync_peers(sim.nodes[a].accounts, sim.nodes[a].services.peers)
    return sim.start(a, CHOREOGRAPHY, roles={a: "initiator", b: "responder"}, params={})


def epoch_of(sim: Simulation, node: str, account: str) -> int:
    return sim.nodes[node].accounts.current_epoch(account)


def no_nondeterminism(sim: Simulation) -> None:
    for node in sim.nodes.values():
        assert node.runtime is not None
        for sid in node.runtime.sessions:
            error = sim.describe(node.name, sid).get("error") or {}
            assert error.get("code") != "nondeterminism", (node.name, error)


def test_facts_reach_every_holder_after_a_partition_heals() -> None:
    sim, account, fact = world()
    sim.isolated = {"d3"}
    to_d2, to_d3 = sync(sim, "d1", "d2"), sync(sim, "d1", "d3")
    sim.run()
    assert sim.describe("d1", to_d2)["outcome"] == "completed"
    assert sim.describe("d1", to_d3)["error"]["code"] == "timeout"
    assert [epoch_of(sim, n, account) for n in ("d1", "d2", "d3", "d4")] == [1, 1, 0, 1]
    assert sim.nodes["d3"].accounts.get(account).epoch == 0  # still usable as far as d3 knows

    sim.isolated.clear()  # the link comes back: the daemon starts a sync on link-up
    sid = sync(sim, "d2", "d3")
    sim.run()
    assert sim.describe("d3", sid)["outcome"] == "completed"
    assert [epoch_of(sim, n, account) for n in sim.nodes] == [1, 1, 1, 1]
    with pytest.raises(AccountError, match=f"removed from account {account} at epoch 1"):
        sim.nodes["d3"].accounts.get(account)
    view = sim.nodes["d3"].accounts.show(account)
    assert view["removed_at_epoch"] == 1 and view["holders"] == ["d1", "d2", "d4"]
    # every holder holds the same facts, and the journals pass the cluster invariants
    states = {n: node.accounts.epochs.state() for n, node in sim.nodes.items()}
    assert states["d1"] == states["d2"] == states["d3"]
    assert fact.digest() in {d for _, d, _ in states["d4"]}
    report = sim.check()
    assert report.ok, report.violations
    no_nondeterminism(sim)


@pytest.mark.parametrize("mode", CRASH_MODES)
@pytest.mark.parametrize("offset", [1, 2])
def test_a_node_that_crashes_mid_sync_converges_after_its_restart(mode: str,
                                                                   offset: int) -> None:
    sim, account, _ = world(seed=7 + offset)
    d3 = sim.nodes["d3"]
    sim.crash_at_append("d3", d3.appends + offset, mode)  # its open / its adoption
    sync(sim, "d1", "d3")
    sim.run()
    assert d3.crashes == 1 and d3.up
    sync(sim, "d1", "d3")  # the link came back up with the restart
    sim.run()
    assert epoch_of(sim, "d3", account) == 1
    # the fold after a restart gives the same view as the live store
    sim.crash("d3", downtime=0.5)
    sim.run()
    assert epoch_of(sim, "d3", account) == 1
    with pytest.raises(AccountError, match="removed"):
        d3.accounts.get(account)
    assert sim.check().ok
    no_nondeterminism(sim)


def test_a_bad_fact_from_a_peer_is_rejected_with_evidence_and_the_sync_goes_on() -> None:
    import msgspec

    sim, account, fact = world(seed=3)
    # d1 turned hostile: besides the real fact it holds one whose signatures do not cover it
    # (its session id changed after signing) and an epoch-2 fact whose predecessor nobody
    # holds; no store would accept them, so they are planted behind its back
    tampered = msgspec.structs.replace(fact, session_id="not-the-signed-one")
    keys = {n: sim.nodes[n].key for n in sim.nodes}
    record = sim.nodes["d3"].accounts.get(account).account
    elsewhere, _ = reshared(root_fact(record), secret=SECRET, session_id="never-seen",
                            dealers=[keys["d2"], keys["d3"]],
                            devices={n: keys[n] for n in ("d1", "d3")}, t=2)
    orphan, _ = reshared(elsewhere, secret=SECRET, dealers=[keys["d1"], keys["d3"]],
                         devices={n: keys[n] for n in ("d1", "d3")}, t=2)
    store = sim.nodes["d1"].accounts.epochs
    store._facts[account][tampered.digest()] = tampered  # a forged store, behind its back
    store._facts[account][orphan.digest()] = orphan
    sid = sync(sim, "d1", "d3")
    sim.run()
    assert sim.describe("d1", sid)["outcome"] == "completed"
    reasons = [r.reason for r in sim.nodes["d3"].rejections(sid)]
    assert len(reasons) == 2, reasons
    assert any("dealer" in r and "signature" in r for r in reasons), reasons
    assert any("does not hold" in r for r in reasons), reasons
    held = {d for _, d, _ in sim.nodes["d3"].accounts.epochs.state()}
    assert fact.digest() in held and not {tampered.digest(), orphan.digest()} & held
    assert epoch_of(sim, "d3", account) == 1  # the real fact got through
    assert sim.check().ok


def test_a_removed_device_refuses_a_dkd_request_with_the_reason() -> None:
    """A requester that has not heard of epoch 1 yet (d2 here holds only genesis) asks d3:
    d3 knows it was removed and answers with a signed refusal naming why, which ends d2's
    session with that reason (not a timeout); no key results."""
    from aura_node.protocols.dkd.roles import session_params, session_roles

    sim = Simulation(11, dict.fromkeys(("d1", "d2", "d3", "d4"), "device"))
    record = sim.deal_account(["d1", "d2", "d3"], 2, secret=SECRET)
    keys = {n: sim.nodes[n].key for n in sim.nodes}
    fact, est = reshared(root_fact(record), secret=SECRET, dealers=[keys["d1"], keys["d2"]],
                         devices={n: keys[n] for n in ("d1", "d2", "d4")}, t=2)
    sim.journal_records("d1", epoch_records(fact, est["d1"]))
    sync(sim, "d1", "d3")
    sim.run()
    assert epoch_of(sim, "d3", record.account_id) == 1
    assert epoch_of(sim, "d2", record.account_id) == 0
    p = session_params({"context": "mail", "participants": ["d2", "d3"]},
                       sim.nodes["d2"].services)
    sid = sim.start("d2", "dkd", roles=session_roles(p), params=p)
    sim.run()
    error = sim.describe("d2", sid)["error"]
    assert error["code"] == "refused", error
    removed = f"this device was removed from account {record.account_id} at epoch 1"
    assert f"d3 refused: {removed}" in error["reason"], error
    assert not sim.nodes["d3"].rejections(sid)
    assert not [r for r in sim.nodes["d2"].records(sid) if r.kind == eng.KIND_COMPLETE]


def test_only_a_node_with_an_epoch_beyond_genesis_starts_a_sync() -> None:
    sim = Simulation(5, dict.fromkeys(("d1", "d2", "d3", "d4"), "device"))
    record = sim.deal_account(["d1", "d2", "d3"], 2, secret=SECRET)
    peers_of = {n: sync_peers(sim.nodes[n].accounts, sim.nodes[n].services.peers)
                for n in sim.nodes}
    assert peers_of == {"d1": [], "d2": [], "d3": [], "d4": []}  # nothing to exchange
    keys = {n: sim.nodes[n].key for n in sim.nodes}
    fact, est = reshared(root_fact(record), secret=SECRET, dealers=[keys["d1"], keys["d2"]],
                         devices={n: keys[n] for n in ("d1", "d2", "d4")}, t=2)
    sim.journal_records("d1", epoch_records(fact, est["d1"]))
    # every holder of either epoch, the removed d3 included; d2 and d3 wait to be asked
    assert sync_peers(sim.nodes["d1"].accounts, sim.nodes["d1"].services.peers) == [
        "d2", "d3", "d4"]
    assert sync_peers(sim.nodes["d3"].accounts, sim.nodes["d3"].services.peers) == []
