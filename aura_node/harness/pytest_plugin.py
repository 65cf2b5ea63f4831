"""pytest plugin: the ``cluster_factory`` fixture (list this module in ``pytest_plugins``).

``cluster_factory(nodes=3, guardians=0, **kwargs) -> Cluster`` starts a cluster of real node
processes in a short temp directory under /tmp (Unix socket paths must stay under ~107 bytes)
and waits until it is ready. Every cluster it made is stopped at teardown, pass or fail. When
the test failed, the tail of each node's log is printed (pytest shows it with the failure) and
the directory is kept for a post-mortem; otherwise it is removed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from aura_node.harness.cluster import Cluster

ClusterFactory = Callable[..., Cluster]
_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def cluster_factory(request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    made: list[Cluster] = []

    def make(nodes: int = 3, guardians: int = 0, **kwargs: Any) -> Cluster:
        directory = tempfile.mkdtemp(dir="/tmp", prefix="aura-cl-")
        cluster = Cluster(directory, nodes=nodes, guardians=guardians, **kwargs)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
        failed = request.node.stash.get(_FAILED, False)
        for cluster in made:
            if failed:
                print(f"\n== cluster {cluster.dir} kept for inspection")
                for name, h in cluster.nodes.items():
                    print(f"-- {name} (log {h.log_path}), last lines:\n{h.log_tail(30)}")
            else:
                shutil.rmtree(cluster.dir, ignore_errors=True)
