"""Crash: SIGKILL a child that appends through group commit; every acknowledged record survives.

The child (``journal_appender.py``, a real process) prints each record only after its append
returned, i.e. after the fdatasync covering its checkpoint. The test kills it at a random moment,
reopens the journal (which cuts any torn tail), and checks that every printed record is there with
the same body, and that the whole journal (checksums, chain, checkpoint signatures) verifies. The
next trial appends to the same journal, so recovery is exercised on top of earlier recoveries.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.journal import Journal, verify_journal

SEED = b"\x0c" * 32
CHILD = Path(__file__).with_name("journal_appender.py")


def _run_and_kill(directory: Path, delay: float) -> tuple[dict[int, bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), SEED.hex(), "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if not ready.startswith("ready "):
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"child did not get ready: {ready!r}\n{err}")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    acked: dict[int, bytes] = {}
    for line in out.splitlines():
        parts = line.split()
        # the last line may be cut by the kill: only complete "ack SEQ HEX" lines count
        if len(parts) == 3 and parts[0] == "ack":
            try:
                acked[int(parts[1])] = bytes.fromhex(parts[2])
            except ValueError:
                continue
    return acked, int(ready.split()[1])


@pytest.mark.full
def test_sigkill_never_loses_an_acknowledged_record(tmp_path: Path, full_run: bool) -> None:
    key = DeviceKey.from_seed(SEED)
    rng = random.Random(0xC0FFEE)
    trials = 100 if full_run else 5
    all_acked: dict[int, bytes] = {}
    total = 0
    for trial in range(trials):
        # a fresh journal every 10 trials keeps the re-verification cost bounded; within a
        # run of 10, each child recovers what the previous kill left
        directory = tmp_path / f"journal-{trial // 10}"
        if trial % 10 == 0:
            total += len(all_acked)
            all_acked = {}
        acked, start_seq = _run_and_kill(directory, rng.uniform(0.02, 0.3))
        assert acked, f"trial {trial}: the child acknowledged nothing"
        assert min(acked) >= start_seq
        all_acked.update(acked)
        # read-only verify first: it must find no damage (a torn tail is fine, not damage)
        report = verify_journal(directory, key.public)
        assert report.ok, report.problem
        with Journal.open(directory, key, segment_bytes=64 * 1024) as j:
            on_disk = {r.seq: r.body for r in j.records()}
        missing = [s for s in all_acked if s not in on_disk]
        assert not missing, f"trial {trial}: acknowledged seqs lost: {missing[:10]}"
        assert all(on_disk[s] == b for s, b in all_acked.items())
        after = verify_journal(directory, key.public)
        assert after.ok and after.torn_tail is None
    assert total + len(all_acked) > trials
