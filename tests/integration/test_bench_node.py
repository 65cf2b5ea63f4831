"""``bench node``'s intake figure on a real receiving node process, bounded (200 messages).

No timing is asserted (this machine is shared): the checks are that the node accepts every
pre-signed message (the run waits for its ``ctl status`` count), that the rate is finite and
positive, and that the node's CPU per message is measured, positive and below what a broken
measurement would give (a whole process's CPU, or zero).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest

from aura_node.bench import node as bench

pytestmark = pytest.mark.e2e


def test_intake_rate_and_node_cpu_per_message() -> None:
    root = Path(tempfile.mkdtemp(prefix="bnode-", dir="/tmp"))
    try:
        rate, cpu = bench.accepted_rate(root, 200)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert math.isfinite(rate) and rate > 0
    assert cpu is not None, "Linux has /proc: the node's CPU is measured"
    # at least the 200 signature checks (~50-200 us each), at most a second per message
    assert 10e-6 < cpu < 1.0, cpu
