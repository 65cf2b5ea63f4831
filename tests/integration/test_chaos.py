"""`aura-node cluster chaos`, bounded: real node processes, every kind of fault, clean report.

The checkers themselves are shown to catch planted violations (an equivocation, a divergent
DKD key, an unended session, forged evidence) in ``test_harness_invariants.py``; this file
shows a chaos run drives them over real journals and comes out clean.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_node.cli import main
from aura_node.harness.nemesis import FAULT_KINDS

#: what the bounded run uses; the kinds all fit (the schedule's deck, test_chaos_nemesis.py)
DURATION_S = 25
QUIET_S = 8
LOAD = "dkd-reshare"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="aura-chaos-t-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _alive_with_marker(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return marker in cmdline and state != "Z"


def _cluster_pids(d: Path) -> list[tuple[int, str]]:
    state = json.loads((d / "cluster.json").read_text())
    out = [(int(n["pid"]), n["home"]) for n in state["nodes"] if n.get("pid")]
    if state["proxy"].get("pid"):
        out.append((int(state["proxy"]["pid"]), state["proxy"]["control"]))
    return out


def test_chaos_run_is_clean_and_injects_every_kind_of_fault(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["cluster", "chaos", "--nodes", "3", "--duration", str(DURATION_S),
                 "--seed", "7", "--quiet-period", str(QUIET_S), "--concurrency", "4",
                 "--load", LOAD, "--dir", str(short_dir), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["invariants"]["ok"], json.dumps(summary["invariants"], indent=1) + err[-3000:]
    assert code == 0
    checked = summary["invariants"]["checked"]
    assert checked["journal_verifies"] == 3 and checked["sessions_end"] > 0
    assert checked["no_equivocation"] > 0 and checked["evidence_signed"] > 0
    if LOAD in ("dkd", "dkd-reshare"):
        assert checked["dkd_agreement"] > 0
    if LOAD == "dkd-reshare":
        # reshares ran among the DKDs (removing and adding back d3), and every holder of the
        # account ended at the same epoch (the invariant checked the one account)
        assert checked["epoch_agreement"] == 1
        assert sum(summary["operations"]["reshares"].values()) > 0, summary["operations"]
    # every kind was injected and undone; none refused
    assert all(summary["faults"][k] > 0 for k in FAULT_KINDS), summary["faults"]
    assert summary["fault_errors"] == []
    ops = summary["operations"]
    assert ops["completed"] > 0 and ops["started"] == ops["completed"] + ops["failed"]
    # the cluster's fault log has each fault with its wall time and target
    log = [json.loads(line) for line in (short_dir / "faults.jsonl").read_text().splitlines()]
    ops_logged = {e["op"] for e in log}
    assert {"kill", "restart", "pause", "resume", "partition", "shape", "heal"} <= ops_logged
    assert all(isinstance(e["t"], float) for e in log)
    kills = [e for e in log if e["op"] == "kill"]
    assert all(e["target"] in ("d1", "d2", "d3") for e in kills)
    # the same seed plans the same schedule (what the nodes did may differ)
    from aura_node.harness.nemesis import plan_faults

    again = [f.to_json() for f in plan_faults(7, ["d1", "d2", "d3"], DURATION_S)]
    assert summary["schedule"] == again
    # every node was stopped at the end
    assert not [p for p, marker in _cluster_pids(short_dir) if _alive_with_marker(p, marker)]
    # --json prints the one object and nothing else on stdout (progress goes to stderr)
    assert len(out.strip().splitlines()) == 1 and "[chaos" in err


def test_ctrl_c_stops_every_node(short_dir: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aura_node", "cluster", "chaos", "--nodes", "3", "--duration",
         "120", "--seed", "3", "--load", LOAD, "--dir", str(short_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 40
        fault_log = short_dir / "faults.jsonl"
        while not (fault_log.exists() and fault_log.read_text().strip()):
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "the chaos run injected no fault in 40 s"
            time.sleep(0.1)
        pids = _cluster_pids(short_dir)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out.decode()[-2000:]
    # pids recorded since (restarts) and at the start: none is left running
    pids += _cluster_pids(short_dir)
    assert not [p for p, marker in pids if _alive_with_marker(p, marker)]
