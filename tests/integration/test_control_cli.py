"""The real `aura-node ctl` entry point as a subprocess: against a stopped node, against a live
Trio control server, and what it imports (it must not pay for Trio)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import trio

from aura_node.control.protocol import NotFoundError
from tests.integration.control_support import make_stale_socket, running_server, socket_dir

AURA = [sys.executable, "-m", "aura_node"]
HEAVY = ("trio", "structlog", "msgspec", "cryptography", "nacl", "aura_node.control.server",
         "aura_node.config", "aura_node.crypto", "aura_node.runtime", "aura_node.protocols")


def _ctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AURA, "ctl", *argv], capture_output=True, text=True, timeout=60)


def test_ctl_against_a_home_without_socket_says_node_not_running() -> None:
    with socket_dir() as d:
        proc = _ctl("--home", d, "status")
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr == (
        f"aura-node: error: node not running: no control socket at {d}/control.sock "
        f"(start it with `aura-node run --home {d}`)\n"
    )


def test_ctl_against_a_stale_socket_says_node_not_running() -> None:
    with socket_dir() as d:
        make_stale_socket(os.path.join(d, "control.sock"))
        proc = _ctl("status", "--home", d)
    assert proc.returncode == 3
    assert proc.stderr.startswith(
        f"aura-node: error: node not running: no control socket at {d}/control.sock")
    assert "stale" in proc.stderr and f"aura-node run --home {d}" in proc.stderr
    assert "Traceback" not in proc.stderr


async def _run_ctl(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([*AURA, "ctl", *argv], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_ctl_against_a_live_server() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(("status", args))
        return {"name": "alpha", "device_id": "ab" * 16, "role": "device", "ready": True,
                "peers": [{"name": "bravo", "device_id": "cd" * 16, "role": "device",
                           "address": "127.0.0.1:7001", "link": "up"}],
                "sessions": {"Completed": 2}}

    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(("ping", args))
        return {"peer": args["peer"], "rtt_ms": 1.25, "session": "5e55"}

    async def session(args: dict[str, Any]) -> dict[str, Any]:
        raise NotFoundError(f"no session {args['session']!r}")

    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": status, "ping": ping, "session": session}):
            ok = await _run_ctl("--home", d, "status")
            assert ok.returncode == 0, ok.stderr
            assert ok.stdout.count(b"\n") == 1
            result = json.loads(ok.stdout)
            assert result["peers"][0]["link"] == "up" and result["sessions"] == {"Completed": 2}

            pinged = await _run_ctl("ping", "bravo", "--home", d, "--timeout", "3")
            assert pinged.returncode == 0, pinged.stderr
            assert json.loads(pinged.stdout) == {"peer": "bravo", "rtt_ms": 1.25,
                                                 "session": "5e55"}

            missing = await _run_ctl("--home", d, "session", "feed")
            assert missing.returncode == 1
            assert missing.stdout == b""
            assert missing.stderr == b"aura-node: error: not_found: no session 'feed'\n"

            unknown = await _run_ctl("--home", d, "peers")
            assert unknown.returncode == 1
            assert unknown.stderr.startswith(b"aura-node: error: unknown_command: ")
    assert seen == [("status", {}), ("ping", {"peer": "bravo", "timeout": 3.0})]


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_ctl_status_imports_no_trio_or_protocol_stack() -> None:
    with socket_dir() as d:
        # The real entry point under -X importtime (the module list, not the timings) ...
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "aura_node", "ctl",
                               "--home", d, "status"], capture_output=True, text=True,
                              timeout=60)
        # ... and sys.modules after a full ctl run: importtime does not list modules loaded
        # through importlib.import_module (how the CLI loads its command groups).
        code = ("import json, sys\nfrom aura_node.cli import main\n"
                f"rc = main(['ctl', '--home', {d!r}, 'status'])\n"
                "print(json.dumps([rc, sorted(sys.modules)]))\n")
        after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    timed = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    assert "aura_node.control.client" in timed
    assert _heavy(timed) == []
    rc, loaded = json.loads(after.stdout)
    assert rc == 3
    assert "aura_node.cli.ctl" in loaded and "aura_node.control.client" in loaded
    assert _heavy(set(loaded)) == []


def test_bench_ctl_runs_against_a_live_server_process() -> None:
    import argparse

    from aura_node.bench import ctl as bench_ctl

    (figure,) = bench_ctl.run(argparse.Namespace(quick=True, json=False, dir=None))
    # Timing is never asserted (shared machine): only that both runs happened and succeeded.
    assert figure.value > 0 and figure.floor is not None and figure.floor > 0
    assert figure.floor_name == "python -c pass"
