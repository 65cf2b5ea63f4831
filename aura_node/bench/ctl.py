"""`aura-node bench ctl`: wall time of `aura-node ctl status` against `python -c pass`.

What an operator (or a script polling readiness) pays per ctl call: interpreter start, the
lazy CLI, the stdlib client, one request/reply over the Unix socket to a live Trio control
server, JSON out. The floor is a bare interpreter start (`python -c pass`) measured in the
same run, in the same way (fork/exec, wait, wall clock). Target: ctl status <= 5x the floor.

The server is a real ``ControlServer`` with a status handler in a separate process (started
with ``python -m aura_node.bench.ctl SOCKET``), so the measured client shares no warm state
with it. Each figure is the median of N runs after one discarded warm-up run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from aura_node.bench import Figure


def _wall_ms(argv: list[str], runs: int) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return (time.perf_counter() - t0) * 1000.0

    once()  # warm-up: page cache, pyc files
    return statistics.median(once() for _ in range(runs))


def run(args: argparse.Namespace) -> list[Figure]:
    runs = 5 if getattr(args, "quick", False) else 21
    home = tempfile.mkdtemp(prefix="aura-bench-ctl-", dir="/tmp")
    path = os.path.join(home, "control.sock")
    server = subprocess.Popen(
        [sys.executable, "-m", "aura_node.bench.ctl", path],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark's control server did not start")
        ctl = [sys.executable, "-m", "aura_node", "ctl", "--home", home, "status"]
        floor = _wall_ms([sys.executable, "-c", "pass"], runs)
        value = _wall_ms(ctl, runs)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
        shutil.rmtree(home, ignore_errors=True)
    return [
        Figure(name="ctl status wall time", value=value, unit="ms", floor=floor,
               floor_name="python -c pass", target="<= 5x", higher_is_better=False),
    ]


def _serve(path: str) -> None:
    """The benchmark's node stand-in: a ControlServer with a static status handler."""
    import trio

    from aura_node.control.server import ControlServer
    from aura_node.logs import configure_logging, get_logger

    configure_logging(level="warning", fmt="json")

    async def status(_args: dict[str, Any]) -> dict[str, Any]:
        return {"name": "bench", "device_id": "00" * 16, "role": "device", "ready": True,
                "peers": [], "sessions": {}}

    async def main() -> None:
        server = ControlServer(path, {"status": status}, log=get_logger("control"))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            print("ready", flush=True)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal

    # SIGTERM from the benchmark becomes KeyboardInterrupt, so trio unwinds and the server
    # unlinks its socket.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _serve(sys.argv[1])
