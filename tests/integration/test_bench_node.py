"""``bench node``'s intake figure on a real receiving node process, bounded (200 messages).

No timing is asserted (this machine is shared): the checks are that the node accepts every
pre-signed message (the run waits for its ``ctl status`` count), that the rate is finite and
positive, and that the node's CPU per message is measured, positive and within what one
message can cost (a broken measurement gives zero, or a whole process's CPU).

The benchmark runs in a fresh interpreter, as ``aura-node bench`` does: the sender's
choreography registry must match the node's (the node loads only the bench protocol), and
this test process holds whatever other tests registered.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.e2e

_RUN = """
import json, sys
from pathlib import Path
from aura_node.bench import node
rate, cpu = node.accepted_rate(Path(sys.argv[1]), 200)
print(json.dumps({"rate": rate, "cpu": cpu}))
"""


def test_intake_rate_and_node_cpu_per_message() -> None:
    root = tempfile.mkdtemp(prefix="bnode-", dir="/tmp")
    try:
        proc = subprocess.run([sys.executable, "-c", _RUN, root], capture_output=True,
                              text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert math.isfinite(out["rate"]) and out["rate"] > 0
    assert out["cpu"] is not None, "Linux has /proc: the node's CPU is measured"
    # at least the 200 signature checks (~50-200 us each), at most a second per message
    assert 10e-6 < out["cpu"] < 1.0, out
