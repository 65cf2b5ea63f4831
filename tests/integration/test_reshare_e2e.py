"""The account lifecycle between real node processes: the lost-phone story, end to end.

Genesis with d1, d2, d3 at 2-of-3 (guardians g1..g3 at 2-of-3); DKD fingerprint F; d3 is lost
and removed (it takes no part); d4 and d5 are added, the second time with t 2 -> 3, each reshare
with a ``kill -9`` mid-session (a dealer, then a new holder) and a restart; DKD from {d1, d2, d4}
and from {d2, d4, d5} gives F; a DKD that asks d3 fails cleanly, and d3's own DKD is refused by
the current holders with the reason. Then every device is "lost": guardian recovery onto d6
(1-of-1), and ``ctl account reshare`` from d6 back to 2-of-3 with d7 and d3 (re-enrolled with a
fresh share); DKD gives F again. At the end: the journal invariants, every holder agrees on its
epoch, and no share or secret is in any file.

``test_reshare_bounded`` is the CI version (genesis, remove, add with a new threshold, DKD);
the whole story (marked ``full``) runs with ``--full``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from aura_node.config import NodeConfig, NodeHome
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.shamir import reconstruct
from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster, tune_for_tests
from aura_node.harness.invariants import check_invariants, journals_of_cluster
from aura_node.harness.pytest_plugin import ClusterFactory, cluster_factory  # noqa: F401
from aura_node.journal.store import read_records
from aura_node.protocols.account import KIND_ACCOUNT, decode_established, open_held_share
from tests.integration.test_protocols_e2e import (
    assert_no_secret_anywhere,
    ctl_error,
    remote_code,
    wait_for,
)

pytest.importorskip("aura_node.cli.run")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

GUARDIANS = ["g1", "g2", "g3"]
COOLDOWN = 2.0


def tune(cfg: NodeConfig) -> NodeConfig:
    cfg = tune_for_tests(cfg)
    return replace(cfg, protocols=replace(
        cfg.protocols, recovery_cooldown_seconds=COOLDOWN, recovery_share_timeout_seconds=20.0,
        recovery_approval_timeout_seconds=30.0, dkd_timeout_seconds=8.0,
        genesis_timeout_seconds=15.0, reshare_timeout_seconds=15.0))


def shows(c: Cluster, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: c.node(n).ctl("account.show") for n in names}


def agree(c: Cluster, names: list[str], epoch: int, devices: list[str], threshold: int) -> None:
    """Every holder in ``names`` shows the same epoch and holders (never a split epoch). The
    coordinator answers once it adopted; the others adopt when the announcement reaches them."""
    wait_for(f"{names} at epoch {epoch}", lambda: all(
        v["epoch"] == epoch for v in shows(c, names).values()), timeout=20.0)
    views = shows(c, names)
    for n, v in views.items():
        assert (v["epoch"], v["devices"], v["threshold"]) == (epoch, devices, threshold), (n, v)
        assert v["public_key"] == views[names[0]]["public_key"]


def fingerprint(c: Cluster, who: list[str]) -> str:
    return str(c.node(who[0]).ctl("dkd", context="mail", participants=who)["fingerprint"])


def reshare_with_a_kill(c: Cluster, coordinator: str, victim: str, cmd: str,
                        **args: Any) -> dict[str, Any] | None:
    """Run ``cmd`` on ``coordinator``; SIGKILL ``victim`` once its reshare session exists and
    restart it. Returns the result, or None when the session failed cleanly (timeout or
    abort): the caller checks that nobody moved to a new epoch then."""
    for peer in c.nodes:
        if peer != coordinator:
            # slow links: the victim waits >= 0.4 s in each phase it waits for the coordinator
            c.shape(coordinator, peer, delay=0.4 if peer == victim else 0.1)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = c.node(coordinator).ctl(cmd, timeout=12.0, **args)
        except AuraError as exc:
            out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        # waiting for the coordinator's next message (which is >= 0.4 s away): kill it there
        taking_part = wait_for(f"{victim} takes part", lambda: [
            s for s in c.node(victim).ctl("sessions")["sessions"]
            if s["protocol"] == "reshare" and s["state"] in ("AwaitingDeal", "Adopting")],
            timeout=15.0)
        c.kill(victim)
        c.heal()
        c.restart(victim)
    finally:
        worker.join(60)
    assert not worker.is_alive()
    wait_for(f"no active reshare on {victim}", lambda: not [
        s for s in c.node(victim).ctl("sessions")["sessions"] if s["protocol"] == "reshare"],
        timeout=30.0)
    # the kill really was mid-session: the victim rebuilt the session from its journal, or
    # (killed before its step was durable: nothing left the device) opened it afresh from the
    # coordinator's re-sent request
    lines = [ln for ln in c.node(victim).log_text().splitlines()
             if '"reshare"' in ln and taking_part[0]["session"] in ln]
    assert (any('"session_rehydrated"' in ln for ln in lines)
            or sum('"session_opened"' in ln for ln in lines) == 2), lines
    print(f"kill -9 of {victim} mid-reshare: "
          f"{'completed' if 'result' in out else out['error']}")
    if "error" in out:
        assert remote_code(out["error"]) in ("timeout", "session_failed"), out["error"]
        return None
    return dict(out["result"])


def lost_phone(c: Cluster, *, kills: bool) -> tuple[dict[str, Any], str]:
    acct = c.node("d1").ctl("account.create", devices=["d1", "d2", "d3"], threshold=2,
                            guardians=GUARDIANS, guardian_threshold=2)
    assert c.node("d1").ctl("account.show")["epoch"] == 0
    f = fingerprint(c, ["d1", "d2"])

    t0 = time.monotonic()
    removed = c.node("d1").ctl("account.remove", name="d3")
    took = time.monotonic() - t0
    assert removed["epoch"] == 1 and removed["holders"] == {
        "devices": ["d1", "d2"], "guardians": GUARDIANS}
    agree(c, ["d1", "d2", *GUARDIANS], 1, ["d1", "d2"], 2)
    # d3 took no part; it learns the new epoch from the holders (account-sync) and that it
    # was removed
    wait_for("d3 learns it was removed", lambda: c.node("d3").ctl("account.show").get(
        "removed_at_epoch") == 1, timeout=30.0)
    print(f"\nreshare 2 dealers -> 5 holders on loopback: {took * 1000:.0f} ms")

    holders = ["d1", "d2", "d4", *GUARDIANS]
    added = (reshare_with_a_kill(c, "d1", "d2", "account.add", name="d4") if kills
             else c.node("d1").ctl("account.add", name="d4"))
    if added is None:  # aborted cleanly: nobody moved, the old epoch still works; again
        agree(c, ["d1", "d2", *GUARDIANS], 1, ["d1", "d2"], 2)
        assert fingerprint(c, ["d2", "d1"]) == f
        added = c.node("d1").ctl("account.add", name="d4")
    agree(c, holders, 2, ["d1", "d2", "d4"], 2)

    holders = ["d1", "d2", "d4", "d5", *GUARDIANS]
    added = (reshare_with_a_kill(c, "d2", "d5", "account.add", name="d5", threshold=3)
             if kills else c.node("d2").ctl("account.add", name="d5", threshold=3))
    if added is None:
        agree(c, ["d1", "d2", "d4", *GUARDIANS], 2, ["d1", "d2", "d4"], 2)
        added = c.node("d2").ctl("account.add", name="d5", threshold=3)
    assert added["epoch"] == 3
    agree(c, holders, 3, ["d1", "d2", "d4", "d5"], 3)

    assert fingerprint(c, ["d1", "d2", "d4"]) == f
    assert fingerprint(c, ["d2", "d4", "d5"]) == f
    # a DKD that asks the removed d3 fails cleanly, before anything starts
    bad = ctl_error(c, "d1", "dkd", context="mail", participants=["d1", "d3", "d2"])
    assert remote_code(bad) == "invalid_args" and "'d3' is not a device" in bad.message
    # d3 still holds its old share, but knows it was removed: its own DKD is refused on the
    # spot, with the reason (a stale d3 that had not learnt it gets the current holders'
    # signed refusal naming the epoch: tests/unit/test_reshare_protocol.py)
    err = ctl_error(c, "d3", "dkd", context="mail", participants=["d3", "d1"], timeout=3.0)
    assert "removed from account" in err.message, err
    return acct, f


def recover_and_reshare(c: Cluster, acct: dict[str, Any], f: str) -> None:
    start = c.node("d6").ctl("recovery.start", account=acct["account_id"], guardians=GUARDIANS)
    sid = start["session"]
    for g in ("g1", "g2"):
        def pending(g: str = g) -> list[Any]:
            return [p for p in c.node(g).ctl("recovery.pending")["pending"]
                    if p["session"] == sid]

        wait_for(f"{sid} pending on {g}", pending)
        c.node(g).ctl("recovery.approve", session=sid)
    st = wait_for("recovery completes", lambda: (
        lambda v: v if v["state"] in ("Completed", "Failed", "Vetoed") else None)(
        c.node("d6").ctl("recovery.status", session=sid)), timeout=COOLDOWN + 25)
    assert st["state"] == "Completed", st
    shown = c.node("d6").ctl("account.show")
    assert (shown["devices"], shown["threshold"]) == (["d6"], 1)
    back = c.node("d6").ctl("account.reshare", devices=["d6", "d7", "d3"], threshold=2)
    # above every participant's epoch: the guardians were at 3, d6 at 0
    assert back["epoch"] == 4 and back["holders"]["devices"] == ["d6", "d7", "d3"]
    agree(c, ["d6", "d7", "d3", *GUARDIANS], 4, ["d6", "d7", "d3"], 2)
    assert fingerprint(c, ["d7", "d3"]) == f
    assert fingerprint(c, ["d6", "d7"]) == f


def secrets_of_the_run(c: Cluster) -> list[bytes]:
    """``s`` and every share any node ever held, of every epoch (opened here with the holders'
    keys from their journals): none of it may be in any log or journal file in the clear."""
    shares = []
    genesis = []
    for name in c.nodes:
        home = NodeHome(c.node(name).home)
        key = DeviceKey.load(home.key_path)
        for r in read_records(home.journal_dir, key.public):
            if r.kind != KIND_ACCOUNT:
                continue
            est = decode_established(r.body)
            for held in est.shares:
                share = open_held_share(est.account, held, key)
                shares.append(share.value.to_bytes())
                if est.epoch == 0 and held.purpose == "genesis/device-share":
                    genesis.append(share)
    secret = reconstruct(genesis)
    assert len(shares) > len(genesis) >= 3  # reshares made new shares
    return [secret.to_bytes(), *shares]


def test_reshare_bounded(cluster_factory: ClusterFactory) -> None:  # noqa: F811
    c = cluster_factory(nodes=5, guardians=3, tune=tune)
    lost_phone(c, kills=False)
    report = check_invariants(journals_of_cluster(c.dir))
    assert report.ok, report.to_json()["violations"]
    assert_no_secret_anywhere(c, secrets_of_the_run(c))


@pytest.mark.full
def test_lost_phone_story_with_kills_and_recovery(
        cluster_factory: ClusterFactory, full_run: bool) -> None:  # noqa: F811
    if not full_run:
        pytest.skip("the whole story (10 processes, ~40 s) runs with --full; CI runs "
                    "test_reshare_bounded")
    c = cluster_factory(nodes=7, guardians=3, tune=tune)
    acct, f = lost_phone(c, kills=True)
    recover_and_reshare(c, acct, f)
    report = check_invariants(journals_of_cluster(c.dir))
    assert report.ok, report.to_json()["violations"]
    assert_no_secret_anywhere(c, secrets_of_the_run(c))
