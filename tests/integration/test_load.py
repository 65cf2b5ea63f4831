"""The load benchmark, bounded: many DKD sessions in flight on 3 real nodes, all complete.

No timing is asserted (shared machine); the figures come from ``aura-node bench load``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_node.bench.load import figures, run_load


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="aura-load-t-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_200_dkd_sessions_in_flight_all_complete(short_dir: Path, full_run: bool) -> None:
    n = 10_000 if full_run else 200  # the figure: 10,000 in flight on 3 nodes
    run = run_load(short_dir / "batch", operations=n, driver="batch", load="dkd", hold=True)
    assert run.failed == {} and run.completed == n and run.all_completed
    # they really were in flight together: with the links held, every initiator session was
    # active at once and none had ended
    assert sum(s.active for s in run.held.values()) == n, run.to_json()
    assert all(s.completed <= 1 for s in run.held.values())  # the genesis, nothing else
    # every node took part and ended its sessions (a DKD involves 2 or 3 of the 3 nodes)
    assert sum(run.ended_sessions.values()) >= 2 * n
    names = {f.name for f in figures(run)}
    assert "sessions in flight, peak (cluster)" in names
    assert "DKD sessions in flight at once, none ended yet (held, cluster)" in names


def test_control_socket_driver_completes_past_the_connection_cap(short_dir: Path) -> None:
    # 240 requests at once on 3 nodes: ~80 per node, past the 64-connection cap, so some are
    # refused busy, retried, and still all complete
    run = run_load(short_dir / "control", operations=240, driver="control", load="dkd")
    assert run.failed == {} and run.completed == 240
    assert run.busy_refusals > 0
