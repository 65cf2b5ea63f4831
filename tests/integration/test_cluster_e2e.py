"""Real node processes: cluster CLI, ping ring, partitions, kill/restart, pause, no orphans."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster
from aura_node.harness.procs import ManagedProcess
from aura_node.harness.pytest_plugin import ClusterFactory, cluster_factory  # noqa: F401

pytest.importorskip("aura_node.cli.run")  # these need `aura-node run` (runtime)
pytestmark = pytest.mark.e2e


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="aura-e2e-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cli(*args: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "aura_node", *args], capture_output=True, text=True, timeout=90
    )
    out = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(out[-1]) if out else {"stderr": proc.stderr})


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_cluster_cli_up_ping_ring_status_down(short_dir: Path) -> None:
    rc, up = _cli("cluster", "up", "--dir", str(short_dir), "--nodes", "3")
    try:
        assert rc == 0, up
        nodes = up["nodes"]
        assert isinstance(nodes, list) and [n["name"] for n in nodes] == ["d1", "d2", "d3"]
        # the nodes outlive the command that started them
        assert all(ManagedProcess(name=n["name"], pid=n["pid"], marker=n["home"]).alive()
                   for n in nodes)
        c = Cluster.attach(short_dir)
        for a, b in (("d1", "d2"), ("d2", "d3"), ("d3", "d1")):
            r = c.node(a).ctl("ping", peer=b, timeout=10)
            assert r["peer"] == b and float(r["rtt_ms"]) > 0 and r["session"]
        rc, status = _cli("cluster", "status", "--dir", str(short_dir))
        assert rc == 0, status
    finally:
        rc, down = _cli("cluster", "down", "--dir", str(short_dir))
    assert rc == 0, down
    stopped = down["stopped"]
    assert isinstance(stopped, list) and len(stopped) == 4  # three nodes and the proxy
    assert all(r["how"] == "sigterm" for r in stopped), stopped
    assert all(_gone(int(r["pid"])) for r in stopped)
    rc, _ = _cli("cluster", "status", "--dir", str(short_dir))
    assert rc == 1


def test_partition_heal_kill_restart_pause(cluster_factory: ClusterFactory) -> None:  # noqa: F811
    c = cluster_factory(nodes=3)
    assert c.node("d1").ctl("ping", peer="d2", timeout=5)["peer"] == "d2"

    c.partition(["d1"], ["d2"])  # blackhole both ways between d1 and d2
    with pytest.raises(AuraError):
        c.node("d1").ctl("ping", peer="d2", timeout=1.5)
    assert c.node("d1").ctl("ping", peer="d3", timeout=5)["peer"] == "d3"  # others unaffected
    c.heal()
    assert c.node("d1").ctl("ping", peer="d2", timeout=5)["peer"] == "d2"

    c.partition(["d3"], mode="reset")  # links to d3 torn down with RSTs
    with pytest.raises(AuraError):
        c.node("d2").ctl("ping", peer="d3", timeout=1.5)
    c.heal()
    c.wait_ready(timeout=15)
    assert c.node("d2").ctl("ping", peer="d3", timeout=5)["peer"] == "d3"

    old_pid = c.node("d2").pid
    report = c.kill("d2")
    assert report.how == "sigkill" and report.exit_code == -9
    with pytest.raises(AuraError):
        c.node("d1").ctl("ping", peer="d2", timeout=1.5)
    c.restart("d2")  # waits until d2 and its links are up
    assert c.node("d2").pid != old_pid
    assert c.node("d1").ctl("ping", peer="d2", timeout=5)["peer"] == "d2"

    c.pause("d3")
    with pytest.raises(AuraError):
        c.node("d1").ctl("ping", peer="d3", timeout=1.5)
    c.resume("d3")
    c.wait_ready(timeout=15)
    assert c.node("d1").ctl("ping", peer="d3", timeout=5)["peer"] == "d3"

    ops = [(f["op"], f.get("target")) for f in c.faults()]
    assert ("kill", "d2") in ops and ("pause", "d3") in ops and ("partition", None) in ops
    assert c.logs()["d1"]  # the nodes log JSON lines to their log files


def test_no_orphans_after_an_exception_in_the_with_block(short_dir: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        with Cluster(short_dir, nodes=2) as c:
            pids = [h.pid for h in c.nodes.values() if h.pid is not None]
            assert c.proxy_process is not None
            pids.append(c.proxy_process.pid)
            raise RuntimeError("boom")
    assert len(pids) == 3 and all(_gone(p) for p in pids)


def test_no_orphans_when_the_owner_forgets_to_stop(short_dir: Path) -> None:
    """The finalizer stops a cluster its owner never stopped (process exit, no `with`)."""
    code = textwrap.dedent(f"""
        from aura_node.harness.cluster import Cluster
        c = Cluster({str(short_dir)!r}, nodes=2).start()
        print(" ".join(str(h.pid) for h in c.nodes.values()), c.proxy_process.pid, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=90, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 3 and all(_gone(p) for p in pids)
