"""Shared pytest set-up.

`--full` (or AURA_FULL_TESTS=1) turns on the long trial counts of tests marked ``full`` (crash
loops, chaos, soak); without it those tests run a bounded version suitable for CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full", action="store_true", default=False, help="run long trial counts (soak)"
    )


@pytest.fixture
def full_run(request: pytest.FixtureRequest) -> bool:
    """True when the long versions of crash/chaos/soak tests were asked for."""
    return bool(request.config.getoption("--full")) or os.environ.get("AURA_FULL_TESTS") == "1"

@pytest.fixture(autouse=True)
def _structlog_config_per_test() -> Iterator[None]:
    """Give each test back the structlog configuration it started with.

    Commands run in-process (``simulate``, ``bench``) call ``configure_logging``, which installs a
    level filter for the whole process; without this a later test's ``capture_logs`` would see
    nothing below that level and fail only in that test order.
    """
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# The harness's fixtures (cluster_factory): real node processes on loopback behind a fault proxy.
pytest_plugins = ["aura_node.harness.pytest_plugin"]
