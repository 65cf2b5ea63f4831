"""DKD consent between real node processes (issue 11 item 2), driven with ``aura-node ctl``.

d1..d3 hold a 2-of-3 account. d2's config limits what it answers: ``ssh/*`` at once, ``backup``
only with its operator's approval, nothing else. So, with d1 asking d2 only:

* ``mail`` is refused by d2's policy: the requester's ``ctl dkd`` fails with d2's reason, and
  d2's own session ends ``refused`` with it - a signed answer, not a timeout;
* ``backup`` waits on d2: ``ctl dkd pending`` lists it, d2 is killed and restarted (the parked
  request survives: its verdict is in d2's journal), ``ctl dkd approve`` answers it and d1
  derives the same key d3 gives under the default policy;
* ``backup`` again, ``ctl dkd refuse --reason`` ends d1's request with that reason;
* approving an unknown or ended session is a clear error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from aura_node.config import DkdRule, NodeConfig
from aura_node.harness.cluster import Cluster, tune_for_tests
from aura_node.harness.pytest_plugin import ClusterFactory, cluster_factory  # noqa: F401
from tests.integration.test_protocols_e2e import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DEVICES = ["d1", "d2", "d3"]
TIMEOUT = 20.0


def tune(cfg: NodeConfig) -> NodeConfig:
    cfg = tune_for_tests(cfg)
    cfg = replace(cfg, protocols=replace(cfg.protocols, dkd_timeout_seconds=TIMEOUT,
                                         genesis_timeout_seconds=15.0))
    if cfg.node.name != "d2":
        return cfg
    return replace(cfg, dkd_policy=(DkdRule(contexts=("ssh/*",)),
                                    DkdRule(contexts=("backup",), approval="operator")))


def aura_ctl(c: Cluster, node: str, *argv: str) -> tuple[int, Any, str]:
    """``aura-node ctl --home HOME ARGV`` in a process of its own: (exit code, JSON, stderr)."""
    out = subprocess.run(
        [sys.executable, "-m", "aura_node", "ctl", "--home", str(c.node(node).home), *argv],
        capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else None, out.stderr


def in_background(c: Cluster, context: str) -> tuple[threading.Thread, dict[str, Any]]:
    """d1 asks d2 for ``context``; the thread holds the reply (or the error)."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["rc"], out["json"], out["err"] = aura_ctl(
            c, "d1", "dkd", "--context", context, "--participants", "d1,d2")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def pending_on_d2(c: Cluster) -> list[dict[str, Any]]:
    rc, out, err = aura_ctl(c, "d2", "dkd", "pending")
    assert rc == 0, err
    return list(out["pending"])


def test_policy_refusal_operator_approval_and_refusal_between_real_nodes(
    cluster_factory: ClusterFactory,  # noqa: F811
) -> None:
    c = cluster_factory(nodes=3, tune=tune)
    acct = c.node("d1").ctl("account.create", devices=DEVICES, threshold=2)

    # outside d2's policy: refused, with the reason, on both sides, well before the deadline
    began = time.monotonic()
    rc, _, err = aura_ctl(c, "d1", "dkd", "--context", "mail", "--participants", "d1,d2")
    assert rc == 1 and "refused" in err and "d2 refused: policy: no [[dkd.policy]] rule of " \
        "this node lets d1 derive context 'mail'" in err, err
    assert time.monotonic() - began < TIMEOUT / 2
    (mine,) = [s for s in c.node("d1").ctl("sessions", all=True)["sessions"]
               if s["protocol"] == "dkd"]
    theirs = c.node("d2").ctl("session", session=mine["session"])
    assert theirs["error"]["code"] == "refused", theirs
    assert "refused dkd for d1: policy:" in theirs["error"]["reason"]
    # inside it: answered at once
    ssh = c.node("d1").ctl("dkd", context="ssh/github", participants=["d1", "d2"])
    assert ssh["participants"] == ["d1", "d2"]

    # parked for d2's operator; d2 crashes and comes back with the request still parked
    t, out = in_background(c, "backup")
    (parked,) = wait_for("d2 to park the request", lambda: pending_on_d2(c))
    assert parked["account"] == acct["account_id"] and parked["requester"] == "d1"
    assert parked["context"] == "backup" and parked["age"] >= 0
    c.kill("d2")
    c.restart("d2")
    assert [p["session"] for p in wait_for("the parked request after the restart",
                                           lambda: pending_on_d2(c))] == [parked["session"]]
    rc, approved, err = aura_ctl(c, "d2", "dkd", "approve", parked["session"])
    assert rc == 0 and approved["decision"] == "approved", err
    t.join(timeout=TIMEOUT + 10)
    assert out.get("rc") == 0, out
    # the same key as two other devices give it under d3's default policy
    other = c.node("d3").ctl("dkd", context="backup", participants=["d3", "d1"])
    assert out["json"]["fingerprint"] == other["fingerprint"]
    assert pending_on_d2(c) == []

    # parked again, and refused by the operator with a reason
    t, out = in_background(c, "backup")
    (parked,) = wait_for("d2 to park the request", lambda: pending_on_d2(c))
    rc, refused, err = aura_ctl(c, "d2", "dkd", "refuse", parked["session"], "--reason",
                                "not on a weekend")
    assert rc == 0 and refused["decision"] == "refused", err
    t.join(timeout=TIMEOUT + 10)
    assert out.get("rc") == 1 and "refused by the operator of d2: not on a weekend" \
        in out["err"], out
    theirs = c.node("d2").ctl("session", session=parked["session"])
    assert theirs["error"]["code"] == "refused"

    # approve of an unknown or ended session: one clear line, exit 1
    rc, _, err = aura_ctl(c, "d2", "dkd", "approve", "0" * 32)
    assert rc == 1 and "not_found" in err and err.count("\n") == 1, err
    rc, _, err = aura_ctl(c, "d2", "dkd", "approve", parked["session"])
    assert rc == 1 and "conflict" in err and "has ended (failed: refused)" in err, err
    rc, _, err = aura_ctl(c, "d1", "dkd", "approve", ssh["session"])
    assert rc == 1 and "only a participant" in err, err
