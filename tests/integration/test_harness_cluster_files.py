"""Cluster homes, pinning through the proxy, the state file, and the not-ready error path."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_node.config import NodeHome, parse_address
from aura_node.harness.cluster import Cluster, ClusterNotReadyError
from aura_node.harness.faults import HarnessError


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="aura-cf-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_create_pins_every_node_through_the_proxy(short_dir: Path) -> None:
    c = Cluster(short_dir, nodes=3, guardians=1)
    try:
        c.create()
        assert c.names == ["d1", "d2", "d3", "g1"] and c.guardians == ["g1"]
        links = {(link["src"], link["dst"]): link for link in c.proxy.status()["links"]}
        assert len(links) == 12  # every ordered pair
        for h in c.nodes.values():
            cfg = NodeHome(h.home).load_config()
            assert cfg.node.name == h.name and cfg.node.role == h.role
            assert cfg.transport.reconnect_max_seconds == 0.5  # harness tuning applied
            assert {p.name for p in cfg.peers} == set(c.names) - {h.name}
            for p in cfg.peers:
                port = parse_address(p.address)[1]
                link = links[h.name, p.name]
                assert port == link["port"] == h.dial_ports[p.name]
                assert link["target"] == c.node(p.name).listen  # the real listen address
                assert p.public_key == c.node(p.name).public_key
        state = json.loads((short_dir / "cluster.json").read_text())
        assert [n["name"] for n in state["nodes"]] == c.names
        again = Cluster.attach(short_dir)
        assert {n: h.to_json() for n, h in again.nodes.items()} == {
            n: h.to_json() for n, h in c.nodes.items()
        }
        assert again.proxy_process is not None and again.proxy_process.alive()
    finally:
        reports = c.stop()
    assert [r.name for r in reports] == ["proxy"] and reports[0].how == "sigterm"
    assert c.proxy_process is not None and not c.proxy_process.alive()


def test_a_node_that_cannot_start_is_named_with_its_log(short_dir: Path) -> None:
    pytest.importorskip("aura_node.cli.run")  # until `aura-node run` is in main
    c = Cluster(short_dir, nodes=2, ready_timeout=20)
    c.create()
    NodeHome(c.node("d2").home).config_path.write_text("[node\nbroken = ")
    with pytest.raises(ClusterNotReadyError, match=r"node d2 exited .*its log ends") as info:
        c.start()
    assert "d2" in info.value.message
    # start() cleaned up after itself: no node and no proxy left running
    assert c.proxy_process is not None and not c.proxy_process.alive()
    assert not any(h.alive() for h in c.nodes.values())


def test_attach_without_a_cluster_says_how_to_start_one(short_dir: Path) -> None:
    with pytest.raises(HarnessError, match="cluster up --dir"):
        Cluster.attach(short_dir)


def test_refuses_a_socket_path_that_is_too_long(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="too long for Unix sockets"):
        Cluster(tmp_path / ("x" * 120), nodes=2).create()
