"""Epoch facts between real node processes, without the reshare protocol.

The test deals the account itself (its own secret ``s``; d1, d2, d3 at 2-of-3) and makes an
epoch-1 fact offline with the nodes' own device keys (files under each home): d1 and d2 dealt
it, the new holders are d1, d2 and d4 at 2-of-3, so d3 is removed. Before any node starts,
each journal gets what a finished reshare would have left there (``tests/epoch_support``):
d1 and d4 the epoch-1 fact and their epoch-1 shares; d2 its epoch-1 share but not the fact
(it is still to come); d3 only genesis.

Then, as real processes over real sockets: the links come up and ``account-sync`` carries the
fact to d2 and d3 (a removed device still hears of its removal); d3 refuses a DKD for the
account with the reason, and a requester that knows epoch 1 does not ask it; DKD between the
epoch-1 holders derives the key ``s·H`` computed directly from the test's secret; after a
``kill -9`` and restart, d3 is still removed and d2 still at epoch 1 (the fold over their
journals); every journal passes the invariants.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import trio

from aura_node.config import NodeConfig, NodeHome
from aura_node.crypto import dkd
from aura_node.crypto.group import Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster, tune_for_tests
from aura_node.harness.invariants import check_invariants, journals_of_cluster
from aura_node.harness.simulation import dealt_account
from aura_node.journal import JournalEntry
from aura_node.journal.group_commit import GroupCommitJournal
from aura_node.protocols.account import KIND_ACCOUNT, encode_established
from aura_node.protocols.epochs import root_fact
from tests.epoch_support import epoch_records, reshared

pytest.importorskip("aura_node.cli.run")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = Scalar.from_int(0x5EC12E7)


def tune(cfg: NodeConfig) -> NodeConfig:
    cfg = tune_for_tests(cfg)
    return replace(cfg, protocols=replace(cfg.protocols, dkd_timeout_seconds=4.0))


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except AuraError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def append_offline(home: NodeHome, records: list[tuple[str, bytes]]) -> None:
    """Journal ``records`` on a node that is not running, signed by its own device key."""
    key = DeviceKey.load(home.key_path)
    cfg = home.load_config()

    async def go() -> None:
        async with GroupCommitJournal.open(home.journal_dir, key, max_batch=64,
                                           segment_bytes=cfg.journal.segment_bytes) as j:
            await j.append_many([JournalEntry(session="", kind=k, body=b, ts=time.time())
                                 for k, b in records])

    trio.run(go)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(tempfile.mkdtemp(dir="/tmp", prefix="aura-ep-"), nodes=4, tune=tune)
    try:
        yield c.create()
    finally:
        c.stop()
        shutil.rmtree(c.dir, ignore_errors=True)


def test_an_offline_epoch_fact_reaches_every_holder_and_removes_d3(cluster: Cluster) -> None:
    c = cluster
    homes = {n: NodeHome(c.node(n).home) for n in c.names}
    keys = {n: DeviceKey.load(h.key_path) for n, h in homes.items()}
    genesis = dealt_account({n: keys[n].public for n in ("d1", "d2", "d3")}, 2, secret=SECRET)
    record = genesis["d1"].account
    account = record.account_id
    fact, est = reshared(root_fact(record), secret=SECRET, dealers=[keys["d1"], keys["d2"]],
                         devices={n: keys[n] for n in ("d1", "d2", "d4")}, t=2)
    for name in ("d1", "d2", "d3"):
        recs = [(KIND_ACCOUNT, encode_established(genesis[name]))]
        if name == "d1":
            recs += epoch_records(fact, est["d1"])
        elif name == "d2":
            recs += epoch_records(fact, est["d2"])[:1]  # its share; the fact comes by sync
        append_offline(homes[name], recs)
    append_offline(homes["d4"], epoch_records(fact, est["d4"]))
    c.start()

    # the fact spreads on link-up: d2 and d3 (removed) learn it
    def at_epoch_1(name: str) -> dict[str, Any]:
        shown = wait_for(f"{name} at epoch 1", lambda: (
            lambda v: v if v["epoch"] == 1 else None)(c.node(name).ctl("account.show")))
        assert shown["holders"] == ["d1", "d2", "d4"] and shown["threshold"] == 2, shown
        assert shown["account_id"] == account and "conflicts" not in shown
        return dict(shown)

    for name in c.names:
        at_epoch_1(name)
    assert c.node("d3").ctl("account.show")["removed_at_epoch"] == 1
    assert "removed_at_epoch" not in c.node("d2").ctl("account.show")

    # d3 refuses, with the reason, to derive a key for the account; d1 does not ask it
    with pytest.raises(AuraError, match=f"removed from account {account} at epoch 1"):
        c.node("d3").ctl("dkd", context="mail", participants=["d3", "d1"])
    with pytest.raises(AuraError, match="d3"):
        c.node("d1").ctl("dkd", context="mail", participants=["d1", "d3"])

    # the epoch-1 holders derive s·H, the key of the account secret the test dealt
    k = dkd.dkd_base(account, "mail").mul(SECRET)
    expected = dkd.derive(k, account, "mail").fingerprint
    for initiator, other in (("d1", "d4"), ("d4", "d2"), ("d2", "d1")):
        got = c.node(initiator).ctl("dkd", context="mail", participants=[initiator, other])
        assert got["fingerprint"] == expected, (initiator, other)

    # kill -9 and restart: each node folds its journal to the same epoch view
    for name in ("d2", "d3"):
        c.kill(name)
        c.restart(name)
        at_epoch_1(name)
    assert c.node("d3").ctl("account.show")["removed_at_epoch"] == 1
    with pytest.raises(AuraError, match="removed from account"):
        c.node("d3").ctl("dkd", context="mail", participants=["d3", "d2"])

    # the syncs the restarts started end (completed), then the nodes stop cleanly and the
    # journals they closed are checked. Quiet means no active session for 2 s in a row: a
    # peer's link watcher (0.5 s poll) may notice a restarted node's link, and start a sync,
    # a moment after the restart returned
    quiet_since = [time.monotonic()]

    def quiet() -> bool:
        if any(c.node(n).ctl("sessions")["sessions"] for n in c.names):
            quiet_since[0] = time.monotonic()
        return time.monotonic() - quiet_since[0] >= 2.0

    wait_for("no active session for 2 s", quiet, timeout=40.0)
    c.stop()
    report = check_invariants(journals_of_cluster(c.dir))
    assert report.ok, report.to_json()["violations"]
