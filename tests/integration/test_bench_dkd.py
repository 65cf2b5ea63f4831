"""``aura-node bench dkd --quick`` on a real 3-node cluster: the figures exist and are sane.

No timing is asserted (this machine is shared); the checks are that every figure is produced,
finite and positive, carries the floor it claims, and that the cluster is gone afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from aura_node.bench import Figure
from aura_node.bench import dkd as bench
from aura_node.bench.crypto import DkdCryptoFloor
from aura_node.cli import main


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            out.append(f"{pid}: {cmdline}")
    return out


def _by_name(figures: list[Figure], prefix: str) -> Figure:
    found = [f for f in figures if f.name.startswith(prefix)]
    assert len(found) == 1, (prefix, [f.name for f in figures])
    return found[0]


def test_quick_run_produces_sane_figures() -> None:
    base = tempfile.mkdtemp(prefix="bdkd-", dir="/tmp")
    try:
        figures = bench.run(argparse.Namespace(quick=True, json=False, dir=base))
        # the cluster was stopped and its files removed
        assert _processes_mentioning(base) == []
        assert os.listdir(base) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)

    for f in figures:
        assert math.isfinite(f.value) and f.value > 0, f
        if f.floor is not None:
            assert math.isfinite(f.floor) and f.floor > 0, f
            assert f.floor_name, f

    rate = _by_name(figures, "dkd sessions/s (cluster, 8 concurrent")
    assert rate.unit == "sessions/s" and rate.target == ">= 0.5" and rate.higher_is_better
    assert "crypto capacity" in rate.floor_name
    initiator_ms = _by_name(figures, "floor part: initiator's DKD crypto").value
    participant_ms = _by_name(figures, "floor part: participant's DKD crypto").value
    # the floor is cores / (the initiator's + the participant's crypto), as its name says
    assert rate.floor == pytest.approx(
        bench.usable_cores() / ((initiator_ms + participant_ms) / 1e3))

    cpu = _by_name(figures, "dkd node CPU per session (cluster, 8 concurrent")
    assert cpu.unit == "ms" and not cpu.higher_is_better
    assert cpu.floor == pytest.approx(initiator_ms + participant_ms)

    p50 = _by_name(figures, "dkd p50 latency (cluster")
    p99 = _by_name(figures, "dkd p99 latency (cluster")
    assert p50.unit == p99.unit == "ms" and not p50.higher_is_better
    assert p50.target == "<= 8" and p50.floor == p99.floor
    assert p50.value <= p99.value
    rtt = _by_name(figures, "floor part: raw Trio TCP").value
    fsync = _by_name(figures, "floor part: write 300 B + fdatasync").value
    assert p50.floor == pytest.approx((2 / rtt + 2 / fsync) * 1e3)

    inproc = _by_name(figures, "dkd sessions/s (in-process")
    assert inproc.floor is not None
    for role in ("initiator", "participant"):
        mem = _by_name(figures, f"dkd memory per in-flight session, {role}")
        # a held session holds at least its sent envelope (~0.5 KiB) and less than 1 MiB
        assert mem.unit == "KiB" and 0.5 < mem.value < 1024 and mem.target == "<= 10 KiB"


def test_percentile_is_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert bench.percentile(samples, 0.50) == 50.0
    assert bench.percentile(samples, 0.99) == 99.0
    assert bench.percentile([3.0, 1.0, 2.0], 0.99) == 3.0
    assert bench.percentile([7.0], 0.5) == 7.0


def test_cli_json_lists_the_figures(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI path without the cluster: ``figures`` from fixed results, printed as JSON.
    results = bench.ClusterResults(latencies=[0.010, 0.012, 0.020], rates={8: 100.0})
    floors = bench.Floors(crypto=DkdCryptoFloor(t=2, initiator=0.0025, participant=0.0015),
                          rtt_rate=10_000.0, fsync_rate=5_000.0)
    monkeypatch.setattr(bench, "run", lambda args: bench.figures(results, floors,
                                                                 in_process=40.0))
    assert main(["bench", "dkd", "--json", "--quick"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    first = rows[0]
    assert first["name"].startswith("dkd sessions/s (cluster, 8 concurrent")
    cores = bench.usable_cores()
    assert first["floor"] == pytest.approx(cores / 0.004, abs=1e-3)
    p50 = next(r for r in rows if r["name"].startswith("dkd p50 latency (cluster"))
    assert p50["value"] == pytest.approx(12.0) and p50["floor"] == pytest.approx(0.6)
    assert p50["ratio"] == pytest.approx(20.0)
