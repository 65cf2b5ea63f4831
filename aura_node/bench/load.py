"""`aura-node bench load`: thousands of DKD sessions requested at once on a 3-node cluster.

Theory of operation. A real 3-node cluster (``harness/cluster.py``, links through the fault
proxy, nodes at log level warning, session deadlines of 900 s so nothing times out while
work queues) is prepared for the load (account genesis, threshold 2 of 3). Each node's idle
RSS (``VmRSS`` of ``/proc/PID/status``) is read after a short settle. Then N operations
(``--quick``: 500, default 10,000), drawn by the operations the chaos runs use
(``harness/load.py``: random initiator, random participants of size >= t, one of 16
contexts), are all requested at once by one of two drivers (no process per request):

``control``
    one Trio task per operation opens its own connection to the initiator's control socket
    and sends ``dkd`` (the ``ctl`` wire protocol). A node answers ``busy`` past 64 open
    control connections; the task backs off and retries, so refusals are counted and the
    load still completes. Through the socket a node therefore never has more than 64 of its
    own DKDs requested at once.
``batch``
    the nodes run with the ``aura_node.harness.load_plugin`` plugin; each node gets its
    share in ``bench.batch`` requests of 200 (a request line is at most 64 KiB), all sent at
    once; the plugin runs every request concurrently through the node's own control handlers
    (the code ``ctl dkd`` runs). This takes the socket's cap out of the way.

A sampler reads each node's RSS and ``status`` (``outcomes.active``, over one control
connection opened before the load, so never refused) every 0.25 s. Three runs:

``all``      N operations via ``batch``: do all complete, throughput per 5 s window (flat?),
             the peak of sessions *in the session table* (the node admits sessions at the
             rate it processes them: the command channel is bounded, so requests beyond that
             wait parked in their handler, not as sessions), memory retained per ended
             session (ended sessions stay in the session table).
``held``     N operations via ``batch`` with every link blackholed until the active counts
             stop growing, then healed: all N initiator sessions are in the session tables at
             once (the peak the issue asks for: 10,000 on 3 nodes) and none has ended, so
             (RSS then - idle RSS) / active is the memory per in-flight session (target
             <= 10 KiB) without ended sessions mixed in; it includes each session's first
             frames waiting in the peer queues (``[transport] peer_queue_frames`` is raised to
             ``HOLD_PEER_QUEUE_FRAMES`` for the benchmark, so none waits for room).
``control``  N operations via the control socket: completes, busy refusals, throughput.

The numbers depend on the machine (all three nodes and this client share its CPUs); tests
assert completion only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from aura_node.bench import Figure
from aura_node.config import NodeConfig
from aura_node.harness.cluster import Cluster, tune_for_tests
from aura_node.harness.load import LoadOperation, load_named

SESSIONS_FULL = 10_000
SESSIONS_QUICK = 500
WINDOW_S = 5.0
SAMPLE_S = 0.25
#: each operation's session deadline: long enough that nothing times out while N queue up
OP_TIMEOUT_S = 900.0
PLUGIN = "aura_node.harness.load_plugin"
#: operations per ``bench.batch`` request: a request line is at most 64 KiB (a DKD request is
#: ~150 bytes), and the batches of one node share its 64 control connections
BATCH_CHUNK = 200

Driver = Literal["control", "batch"]


#: frames a node may queue per peer while the held run blackholes its links: every initiator
#: session's first frames wait there (about N / 3 x 0.75 per peer), so 10,000 sessions fit.
#: Bounded (at most ~1 KiB a frame: ~16 MiB a peer), only the size changes
HOLD_PEER_QUEUE_FRAMES = 16384


def _bench_tune(cfg: NodeConfig) -> NodeConfig:
    cfg = tune_for_tests(cfg)
    protocols = replace(cfg.protocols, dkd_timeout_seconds=OP_TIMEOUT_S,
                        ping_timeout_seconds=OP_TIMEOUT_S)
    transport = replace(cfg.transport, peer_queue_frames=HOLD_PEER_QUEUE_FRAMES)
    return replace(cfg, protocols=protocols, transport=transport,
                   log=replace(cfg.log, level="warning"))


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(slots=True, kw_only=True)
class NodeSample:
    t: float
    rss_kb: int
    active: int
    completed: int
    failed: int


@dataclass(slots=True, kw_only=True)
class LoadRun:
    """Everything one load run measured (``run_load``)."""

    operations: int
    driver: Driver
    load: str
    #: blackhole every link while the operations start, heal once the active counts stop
    #: growing (``held`` is each node's sample then): memory per session with none ended
    hold: bool = False
    held: dict[str, NodeSample] = field(default_factory=dict)
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    busy_refusals: int = 0
    #: control connections closed with no reply (see ``one_control``), retried
    closed_without_reply: int = 0
    seconds: float = 0.0
    end_times: list[float] = field(default_factory=list)
    t0: float = 0.0
    idle_rss_kb: dict[str, int] = field(default_factory=dict)
    after_rss_kb: dict[str, int] = field(default_factory=dict)
    ended_sessions: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[NodeSample]] = field(default_factory=dict)
    prepared: dict[str, Any] = field(default_factory=dict)

    @property
    def all_completed(self) -> bool:
        return self.completed == self.operations and not self.failed

    def peak_in_flight(self) -> int:
        """Largest sum over nodes of active sessions at one sampling instant."""
        rounds = zip(*self.samples.values(), strict=False)
        return max((sum(s.active for s in r) for r in rounds), default=0)

    def per_session_kb(self, node: str) -> tuple[float, int]:
        """(KiB per in-flight session at that node's peak, sessions in flight then); with
        ``hold``, at the held sample (no session had ended yet)."""
        peak = self.held.get(node) or max(self.samples.get(node, []),
                                          key=lambda s: (s.active, s.rss_kb), default=None)
        if peak is None or peak.active == 0:
            return math.nan, 0
        return (peak.rss_kb - self.idle_rss_kb[node]) / peak.active, peak.active

    def windows(self) -> list[int]:
        """Operations completed per ``WINDOW_S`` window since the load began."""
        if not self.end_times:
            return []
        n = int((max(self.end_times) - self.t0) // WINDOW_S) + 1
        out = [0] * n
        for t in self.end_times:
            out[int((t - self.t0) // WINDOW_S)] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "operations": self.operations, "driver": self.driver, "load": self.load,
            "completed": self.completed, "failed": dict(self.failed),
            "busy_refusals": self.busy_refusals,
            "closed_without_reply": self.closed_without_reply, "seconds": round(self.seconds, 3),
            "peak_in_flight": self.peak_in_flight(), "windows": self.windows(),
            "idle_rss_kb": self.idle_rss_kb, "after_rss_kb": self.after_rss_kb,
            "ended_sessions": self.ended_sessions,
            "per_session_kb": {n: self.per_session_kb(n) for n in self.samples},
            "hold": self.hold,
            "prepared": self.prepared,
        }


# --- the Trio client ---------------------------------------------------------------------------


class ControlConnection:
    """One control connection (requests answered in order); Trio, the ``ctl`` wire format."""

    def __init__(self, stream: Any) -> None:
        from aura_node.control.protocol import MAX_REPLY_BYTES, LineFramer

        self.stream = stream
        self.framer = LineFramer(MAX_REPLY_BYTES)
        self.lines: list[bytes] = []
        self.next_id = 0

    @classmethod
    async def open(cls, path: Path) -> ControlConnection:
        import trio

        return cls(await trio.open_unix_socket(str(path)))

    async def call(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        import trio

        from aura_node.control.protocol import (
            ControlConnectionError,
            decode_reply,
            encode_request,
        )

        self.next_id += 1
        try:
            await self.stream.send_all(encode_request(self.next_id, cmd, args))
        except trio.BrokenResourceError:
            # The node may have answered (busy) and closed before reading our request: its
            # reply is still queued on our side, so read it (as the stdlib client does).
            pass
        while not self.lines:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                raise ControlConnectionError(f"the node closed the connection during {cmd!r}")
            self.lines.extend(self.framer.feed(data))
        return decode_reply(self.lines.pop(0), expect_id=self.next_id)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _sample(cluster: Cluster, run: LoadRun, stop: Any) -> None:
    import trio

    conns = {n: await ControlConnection.open(cluster.node(n).home / "control.sock")
             for n in cluster.names}
    try:
        while True:
            for name, conn in conns.items():
                st = await conn.call("status", {})
                outcomes = st.get("outcomes", {})
                pid = cluster.node(name).pid
                assert pid is not None
                run.samples.setdefault(name, []).append(NodeSample(
                    t=time.monotonic(), rss_kb=rss_kb(pid), active=int(outcomes.get("active", 0)),
                    completed=int(outcomes.get("completed", 0)),
                    failed=int(outcomes.get("failed", 0))))
            if stop.is_set():
                return
            with trio.move_on_after(SAMPLE_S):
                await stop.wait()
    finally:
        for conn in conns.values():
            await conn.aclose()


async def _drive(cluster: Cluster, run: LoadRun,
                 requests: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    import trio

    from aura_node.control.protocol import ControlConnectionError, ControlReplyError
    from aura_node.errors import AuraError

    stop = trio.Event()

    def finish(ok: bool, reason: str) -> None:
        if ok:
            run.completed += 1
            run.end_times.append(time.monotonic())
        else:
            run.failed[reason] += 1

    async def one_control(initiator: str, cmd: str, args: dict[str, Any]) -> None:
        path = cluster.node(initiator).home / "control.sock"
        backoff = 0.01
        while True:
            try:
                conn = await ControlConnection.open(path)
                try:
                    await conn.call(cmd, args)
                finally:
                    await conn.aclose()
            except ControlReplyError as exc:
                if exc.remote_code == "busy":
                    run.busy_refusals += 1
                    await trio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 0.5)
                    continue
                finish(False, exc.remote_code)
            except ControlConnectionError:
                # Closed with no reply at all: the busy refusal whose reply the kernel threw
                # away (a Unix socket closed with our request unread resets the connection,
                # and the reset can overtake the queued reply). Retried like a busy one; were
                # it a DKD that did run, running it again derives the same key.
                run.closed_without_reply += 1
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 0.5)
                continue
            except (AuraError, OSError, trio.BrokenResourceError) as exc:
                finish(False, getattr(exc, "code", type(exc).__name__))
            else:
                finish(True, "ok")
            return

    async def one_batch(initiator: str, batch: list[list[Any]]) -> None:
        conn = await ControlConnection.open(cluster.node(initiator).home / "control.sock")
        try:
            reply = await conn.call("bench.batch", {"requests": batch})
        finally:
            await conn.aclose()
        offset = time.monotonic() - time.time()  # the plugin reports wall times
        for o in reply["outcomes"]:
            if o["ok"]:
                run.completed += 1
                run.end_times.append(float(o["end"]) + offset)
            else:
                run.failed[str(o.get("code"))] += 1

    async def hold_then_heal() -> None:
        # every session starts (journaled, its first frames queued behind the blackholed
        # links) and none can end: the active counts climb to the number started and stay
        best: dict[str, int] = {}
        still = 0
        while still < int(2.0 / SAMPLE_S):
            await trio.sleep(SAMPLE_S)
            now = {n: s[-1].active for n, s in run.samples.items() if s}
            still = still + 1 if now == best else 0
            best = now
        run.held = {n: s[-1] for n, s in run.samples.items() if s}
        await trio.to_thread.run_sync(cluster.heal)

    async with trio.open_nursery() as outer:
        outer.start_soon(_sample, cluster, run, stop)
        await trio.sleep(2 * SAMPLE_S)  # idle samples first
        if run.hold:
            await trio.to_thread.run_sync(
                lambda: cluster.partition(*[[n] for n in cluster.names]))
        run.t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            if run.hold:
                nursery.start_soon(hold_then_heal)
            if run.driver == "control":
                for initiator, cmd, args in requests:
                    nursery.start_soon(one_control, initiator, cmd, args)
            else:
                per_node: dict[str, list[list[Any]]] = {}
                for initiator, cmd, args in requests:
                    per_node.setdefault(initiator, []).append([cmd, args])
                for initiator, batch in per_node.items():
                    for i in range(0, len(batch), BATCH_CHUNK):
                        nursery.start_soon(one_batch, initiator, batch[i:i + BATCH_CHUNK])
        run.seconds = time.monotonic() - run.t0
        await trio.sleep(1.0)  # the last completions settle in the node counters
        stop.set()


def run_load(
    directory: Path,
    *,
    operations: int,
    driver: Driver = "batch",
    load: str = "dkd",
    hold: bool = False,
    seed: int = 0,
    say: Any = None,
) -> LoadRun:
    """Start a 3-node cluster in ``directory``, run the load (module doc), stop the cluster."""
    import trio

    say = say or (lambda _msg: None)
    run = LoadRun(operations=operations, driver=driver, load=load, hold=hold)
    op: LoadOperation = load_named(load, timeout=OP_TIMEOUT_S)
    cluster = Cluster(directory, nodes=3, seed=seed, tune=_bench_tune,
                      plugins=(PLUGIN,) if driver == "batch" else ())
    with cluster:
        run.prepared = op.prepare(cluster)
        time.sleep(1.0)  # settle after genesis before the idle reading
        pids = {n: cluster.node(n).pid for n in cluster.names}
        run.idle_rss_kb = {n: rss_kb(p) for n, p in pids.items() if p is not None}
        rng = random.Random(seed)
        requests = [op.request(rng) for _ in range(operations)]
        say(f"load: {operations} {load} operations via {driver}"
            f"{' (links held until all started)' if hold else ''} on "
            f"{', '.join(cluster.names)}")
        trio.run(_drive, cluster, run, requests)
        run.after_rss_kb = {n: rss_kb(p) for n, p in pids.items() if p is not None}
        for n in cluster.names:
            st = cluster.node(n).ctl("status", wait=10.0)
            o = st.get("outcomes", {})
            run.ended_sessions[n] = int(o.get("completed", 0)) + int(o.get("failed", 0))
    return run


def figures(run: LoadRun) -> list[Figure]:
    out = [
        Figure(name=f"operations completed ({run.load} via {run.driver})",
               value=run.completed, unit="ops", floor=run.operations, floor_name="started",
               target="= 1.0"),
        Figure(name="sessions in flight, peak (cluster)", value=run.peak_in_flight(),
               unit="sessions", floor=run.operations, floor_name="operations started",
               target=">= 1.0 (x participants)"),
    ]
    if run.hold and run.held:
        out.append(Figure(
            name="DKD sessions in flight at once, none ended yet (held, cluster)",
            value=sum(s.active for s in run.held.values()), unit="sessions",
            floor=run.operations, floor_name="operations started", target=">= 1.0"))
    # only a held run measures memory per in-flight session without ended sessions (which
    # stay in the session table) mixed into the same RSS
    for node in sorted(run.samples) if run.hold else ():
        kb, active = run.per_session_kb(node)
        out.append(Figure(name=f"memory per in-flight session, {node} ({active} in flight)",
                          value=kb, unit="KiB", target="<= 10 KiB", higher_is_better=False))
    for node in sorted(run.after_rss_kb):
        ended = run.ended_sessions.get(node, 0)
        if ended:
            out.append(Figure(
                name=f"memory retained per ended session, {node} ({ended} ended)",
                value=(run.after_rss_kb[node] - run.idle_rss_kb[node]) / ended, unit="KiB",
                higher_is_better=False))
    w = run.windows()
    full = w[:-1] if len(w) > 1 else w  # the last window is partial
    out.append(Figure(name="throughput", value=run.completed / run.seconds if run.seconds else 0,
                      unit="ops/s"))
    # flat or not: the mean of the second half of the busy windows against the first half's
    # (the first window holds the ramp-up and, in a held run, the held time: not compared)
    busy = [n for n in full[1:] if n] if not run.hold else [n for n in full if n]
    half = len(busy) // 2
    if half >= 1:
        first, second = busy[:half], busy[half:]
        out.append(Figure(
            name=f"throughput, mean of the later {len(second)} busy {WINDOW_S:g} s windows vs "
                 f"the earlier {len(first)}",
            value=sum(second) / len(second) / WINDOW_S, unit="ops/s",
            floor=sum(first) / len(first) / WINDOW_S, floor_name="earlier windows",
            target="~ 1.0 (flat)"))
        out.append(Figure(name=f"throughput, slowest / fastest busy {WINDOW_S:g} s window",
                          value=min(busy) / WINDOW_S, unit="ops/s",
                          floor=max(busy) / WINDOW_S, floor_name="fastest window"))
    if run.driver == "control":
        out.append(Figure(name="control connections refused busy", value=run.busy_refusals,
                          unit="refusals", higher_is_better=False))
        out.append(Figure(name="control connections closed without a reply",
                          value=run.closed_without_reply, unit="connections",
                          higher_is_better=False))
    return out




def run(args: argparse.Namespace) -> list[Figure]:
    quick = bool(getattr(args, "quick", False))
    operations = SESSIONS_QUICK if quick else SESSIONS_FULL
    temp = getattr(args, "dir", None) is None
    base = Path(args.dir or tempfile.mkdtemp(dir="/tmp", prefix="aura-bench-load-"))
    out: list[Figure] = []

    def say(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    plan: list[tuple[str, int, Driver, bool]] = [
        ("all", operations, "batch", False),
        ("held", operations, "batch", True),
        ("control", operations, "control", False),
    ]
    try:
        for label, n, driver, hold in plan:
            result = run_load(base / label, operations=n, driver=driver, hold=hold, say=say)
            sys.stderr.write(json.dumps({"run": label, "windows": result.windows(),
                                         "failed": dict(result.failed)}) + "\n")
            out += [replace(f, name=f"[{label}] {f.name}") for f in figures(result)]
    finally:
        if temp:
            shutil.rmtree(base, ignore_errors=True)
    return out
