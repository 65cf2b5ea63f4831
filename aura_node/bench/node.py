"""`aura-node bench node`: what a running node does per protocol message and per ping.

Figures, each against a floor measured in the same run on the same machine:

``signed messages accepted/s``
    A receiving node process (loaded with the one-way ``bench-notice`` protocol, see
    ``aura_node.harness.bench_protocol``) gets pre-signed envelopes over an established mTLS
    link from this process; each one is decoded, its signature verified with the link's pinned
    key, a session opened with its monitor, the monitor checked, the driver run, and three
    records journaled (group commit). Timed until the node's ``ctl status`` counts them all.
    Floor: Ed25519 verifications/s of one core (target >= 0.7x).

``receiving node CPU per accepted message``
    The same run seen from the receiving node's side: its user + system CPU time (all its
    threads: event loop and journal commit thread) over the intake, per message, against one
    Ed25519 verify (a ratio, lower is better; 0.7x accepted/s is 1.43x here). On a shared
    machine wall-clock rates move with the share of a core the node gets; its CPU per message
    moves much less, so this row tells a code change from a load change.

``ping round trips/s``
    ``ctl ping`` between two node processes, one after the other (control socket included).
    Floor: a composite of what one round trip cannot avoid, each part timed in this run: a raw
    Trio TCP ping-pong between two processes (304-byte frames) + 2 message signatures + 2
    verifications + 3 fdatasyncs with their 3 checkpoint signatures (initiator start, responder
    step, initiator completion; journal before send on both sides) (target >= 0.6x).
    ``ping round trips/s, 16 concurrent`` is the same with 16 pings in flight (group commit
    shares fsyncs between sessions), against the same floor (target >= 0.7x).

Nodes run with ``--log-level warning`` (two info lines per session are not what is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aura_node.bench import Figure, best_rate, node_cpu_seconds

FRAME = 300


# --- floors --------------------------------------------------------------------------------------


def verify_rate(n: int) -> float:
    from aura_node.crypto.keys import DeviceKey

    key = DeviceKey.generate()
    msg = os.urandom(256)
    sig = key.sign("msg/bench/Notice", msg)
    pk = key.public

    def go() -> int:
        for _ in range(n):
            pk.verify("msg/bench/Notice", msg, sig)
        return n

    return best_rate(go)


def sign_rate(n: int) -> float:
    from aura_node.crypto.keys import DeviceKey

    key = DeviceKey.generate()
    msg = os.urandom(256)

    def go() -> int:
        for _ in range(n):
            key.sign("msg/bench/Notice", msg)
        return n

    return best_rate(go)


def fdatasync_rate(directory: Path, n: int) -> float:
    path = directory / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rec = os.urandom(FRAME)
    try:
        def go() -> int:
            for _ in range(n):
                os.write(fd, rec)
                os.fdatasync(fd)
            return n

        return best_rate(go)
    finally:
        os.close(fd)
        path.unlink()


_ECHO_SERVER = """
import sys, trio
async def handle(stream):
    buf = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + n:
                break
            frame = bytes(buf[:4 + n]); del buf[:4 + n]
            await stream.send_all(frame)
async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)
trio.run(main)
"""


def raw_tcp_pingpong_rate(n: int) -> float:
    """Round trips/s of 304-byte frames between this process and a Trio echo process."""
    import trio

    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        async def client() -> float:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            frame = len(os.urandom(FRAME)).to_bytes(4, "big") + os.urandom(FRAME)
            rates = []
            async with stream:
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await stream.send_all(frame)
                        got = 0
                        while got < len(frame):
                            got += len(await stream.receive_some(65536))
                    rates.append(n / (time.perf_counter() - t0))
            return sorted(rates)[1]

        return trio.run(client)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# --- node processes ----------------------------------------------------------------------------


class BenchNode:
    def __init__(self, root: Path, name: str, plugins: tuple[str, ...] = ()) -> None:
        from aura_node.cli.node import init_home
        from aura_node.config import NodeHome

        self.name = name
        self.home = NodeHome(root / name)
        self.port = _free_port()
        info = init_home(self.home, name=name, listen=f"127.0.0.1:{self.port}", role="device")
        self.public_key = info["public_key"]
        self.plugins = plugins
        self.proc: subprocess.Popen[bytes] | None = None

    def pin(self, name: str, public_key: str, port: int) -> None:
        from aura_node.config import PeerConfig

        cfg = self.home.load_config()
        self.home.save_config(cfg.with_peers((*cfg.peers, PeerConfig(
            name=name, public_key=public_key, address=f"127.0.0.1:{port}"))))

    def start(self) -> None:
        cmd = [sys.executable, "-m", "aura_node", "run", "--home", str(self.home.root),
               "--log-format", "json", "--log-level", "warning"]
        for p in self.plugins:
            cmd += ["--plugin", p]
        log = open(self.home.root / "node.log", "ab")  # the child keeps its own copy
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.ctl("status").get("ready"):
                    return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node {self.name} exited: "
                                       + (self.home.root / "node.log").read_text()[-2000:]
                                       ) from None
            time.sleep(0.05)
        raise RuntimeError(f"node {self.name} not ready")

    def ctl(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        from aura_node.control.client import call

        return call(self.home.control_socket, cmd, args, timeout=timeout)

    def wait_link(self, peer: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if {p["name"]: p["link"] for p in self.ctl("peers")["peers"]}.get(peer) == "up":
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: link to {peer} not up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepted_rate(root: Path, n: int) -> tuple[float, float | None]:
    """Signed messages/s accepted by a node process, sent pre-signed over a real link, and
    the node's CPU seconds per message over the same interval (None without ``/proc``)."""
    import trio

    from aura_node.config import NodeConfig, NodeSection, PeerConfig
    from aura_node.crypto.keys import DeviceKey
    from aura_node.harness import bench_protocol
    from aura_node.protocols.envelope import encode_wire, seal
    from aura_node.protocols.registry import advertised_choreographies
    from aura_node.transport import PeerNetwork

    recv = BenchNode(root, "recv", plugins=("aura_node.harness.bench_protocol",))
    key = DeviceKey.generate()
    port = _free_port()
    recv.pin("bench", key.public.hex(), port)
    recv.start()
    try:
        cfg = NodeConfig(node=NodeSection(name="bench", listen=f"127.0.0.1:{port}"),
                         peers=(PeerConfig(name="recv", public_key=recv.public_key,
                                           address=f"127.0.0.1:{recv.port}"),))
        payloads = [
            encode_wire(seal(key, choreography="bench-notice", session=os.urandom(16).hex(),
                             message=bench_protocol.Notice(seq=i, payload=os.urandom(200))))
            for i in range(n)
        ]

        assert recv.proc is not None
        pid = recv.proc.pid

        def cpu_now() -> float | None:
            try:
                return node_cpu_seconds([pid])
            except OSError:  # no /proc (not Linux): the row is left out
                return None

        async def main() -> tuple[float, float | None]:
            send, _recv = trio.open_memory_channel[Any](1024)
            net = PeerNetwork(key=key, config=cfg, choreographies=advertised_choreographies(),
                              inbound=send)
            async with trio.open_nursery() as nursery:
                await nursery.start(net.serve)
                await trio.to_thread.run_sync(recv.wait_link, "bench")
                base = (await trio.to_thread.run_sync(recv.ctl, "status"))["messages"]
                cpu0 = cpu_now()
                t0 = time.perf_counter()
                for p in payloads:
                    if not net.send_nowait("recv", p):
                        await net.send("recv", p)
                sent = time.perf_counter() - t0
                while True:
                    st = await trio.to_thread.run_sync(recv.ctl, "status")
                    if st["messages"]["accepted"] - base["accepted"] >= n:
                        break
                    await trio.sleep(0.005)
                elapsed = time.perf_counter() - t0
                cpu1 = cpu_now()
                nursery.cancel_scope.cancel()
            if os.environ.get("AURA_BENCH_DEBUG"):
                print(f"sent all in {sent:.3f} s, accepted all in {elapsed:.3f} s",
                      file=sys.stderr)
            cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / n
            return n / elapsed, cpu

        return trio.run(main)
    finally:
        recv.stop()


def ping_rates(root: Path, n: int) -> tuple[float, float]:
    a, b = BenchNode(root, "a"), BenchNode(root, "b")
    a.pin("b", b.public_key, b.port)
    b.pin("a", a.public_key, a.port)
    a.start()
    b.start()
    try:
        a.wait_link("b")
        for _ in range(20):
            a.ctl("ping", peer="b")  # warm up

        def sequential() -> int:
            for _ in range(n):
                a.ctl("ping", peer="b")
            return n

        seq = best_rate(sequential)
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                for _ in range(k):
                    a.ctl("ping", peer="b")
            except BaseException as exc:
                errors.append(exc)

        def concurrent() -> int:
            threads = [threading.Thread(target=worker, args=(n // 16 + 1,)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            return 16 * (n // 16 + 1)

        conc = best_rate(concurrent)
        return seq, conc
    finally:
        a.stop()
        b.stop()


def _ping_floor_parts(root: Path, quick: bool) -> tuple[float, float, float]:
    return (raw_tcp_pingpong_rate(500 if quick else 3000), sign_rate(1000 if quick else 5000),
            fdatasync_rate(root, 100 if quick else 500))


# --- entry point -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Figure]:
    quick = bool(getattr(args, "quick", False))
    root = Path(tempfile.mkdtemp(prefix="aura-bench-node-", dir=getattr(args, "dir", None)
                                 or "/tmp"))
    try:
        # Floors are measured right before and right after the node figures they bound, and
        # averaged: on a shared machine the load drifts within a run.
        nv = 500 if quick else 3000
        verify_before = verify_rate(nv)
        accepted, intake_cpu = accepted_rate(root, 2000 if quick else 20000)
        verify = (verify_before + verify_rate(nv)) / 2
        parts_before = _ping_floor_parts(root, quick)
        seq, conc = ping_rates(root, 100 if quick else 500)
        parts_after = _ping_floor_parts(root, quick)
        rtt, sign, fsync = ((a + b) / 2 for a, b in zip(parts_before, parts_after, strict=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_rt = 1 / rtt + 5 / sign + 2 / verify + 3 / fsync
    composite = 1 / per_rt
    figures = [
        Figure(name="signed messages accepted/s (receiving node)", value=accepted,
               unit="msgs/s", floor=verify, floor_name="Ed25519 verify/s, 1 core",
               target=">= 0.7"),
        *([] if intake_cpu is None else [Figure(
            name="receiving node CPU per accepted message (user+sys, all threads)",
            value=intake_cpu * 1e6, unit="us", floor=1e6 / verify,
            floor_name="one Ed25519 verify, 1 core", target="(info; 0.7x accepted/s = 1.43x)",
            higher_is_better=False)]),
        Figure(name="ping round trips/s (sequential, via ctl)", value=seq, unit="rt/s",
               floor=composite,
               floor_name="raw TCP rt + 5 sign + 2 verify + 3 fdatasync", target=">= 0.6"),
        Figure(name="ping round trips/s (16 concurrent, via ctl)", value=conc, unit="rt/s",
               floor=composite,
               floor_name="raw TCP rt + 5 sign + 2 verify + 3 fdatasync", target=">= 0.7"),
        Figure(name="floor part: raw Trio TCP ping-pong, 2 processes", value=rtt, unit="rt/s"),
        Figure(name="floor part: Ed25519 sign", value=sign, unit="ops/s"),
        Figure(name="floor part: write 300 B + fdatasync", value=fsync, unit="ops/s"),
    ]
    if os.environ.get("AURA_BENCH_DEBUG"):
        print(json.dumps([f.to_json() for f in figures]), file=sys.stderr)
    return figures
