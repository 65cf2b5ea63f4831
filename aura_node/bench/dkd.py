"""``aura-node bench dkd``: threshold DKD on a real 3-node cluster, against floors of this run.

Theory of operation
-------------------
The benchmark starts a real cluster (``harness.cluster.Cluster``: three device processes,
``d1..d3``, each with its own durable journal -- group commit, one ``fdatasync`` per batch --
and log level ``warning``), creates one account (devices ``d1,d2,d3``, threshold 2) with
``ctl account.create`` and then drives ``ctl dkd`` requests over the nodes' control sockets
with the stdlib control client, from threads of this process (a blocking request each; no
process per request). Every request names a random initiator, a random second participant
(so ``n = 2`` participants, ``t = 2``) and a context used once. Before timing, one context is
derived by two different pairs and the fingerprints must be equal (the sessions measured are
real derivations, not errors). Any failed request aborts the benchmark with its error.

The harness normally routes every node-to-node byte through its fault proxy (another
process). The benchmark measures the node, not the proxy: between ``create()`` and
``start()`` it re-pins each peer at the peer's own listen address, so links are direct mTLS
TCP as in a deployment. The cluster is always stopped (``finally``), and its directory removed.

Figures
-------
``dkd sessions/s (cluster, C concurrent)``
    Completed sessions per second with ``C`` requests in flight (C = 8, 16, 32; 8 with
    ``--quick``). Floor: the cluster's aggregate *crypto capacity*, in sessions/s:
    ``cores / session_crypto``, where ``cores = min(3, CPUs this process may run on)`` (three
    single-threaded node processes cannot use more) and ``session_crypto`` is the crypto a
    blinded session of ``t = 2`` cannot do without, timed in this run
    (``bench.crypto.dkd_crypto_floor``): the initiator's (hash to group, blind, seal ``r`` to
    itself, its DLEQ-proven partial, 4 signatures, the participant's 3 signatures and its DLEQ
    proof checked, Lagrange, unblind, HKDF derive) plus the participant's (3 envelope
    verifications, the initiator's commitment and DLEQ-proven reveal checked, its own partial,
    3 signatures). That is: if the nodes did nothing but the sessions' necessary crypto on
    every available core, this many sessions/s would complete. Target >= 0.5x.
``dkd p50 / p99 latency (cluster, sequential)``
    One request at a time, wall time of the ``ctl dkd`` call (control socket included).
    Floor: 2 round trips of raw Trio TCP between two processes (304-byte frames, the echo
    process of ``bench.node``) + 2 ``fdatasync`` of a 300-byte append on the cluster's own
    directory, both timed in this run. Target p50 <= 8x. Also shown (no target): p50 against
    that floor plus the session's crypto run back to back, which says how much of the gap is
    not crypto.
``dkd node CPU per session (cluster, C concurrent)``
    User + system CPU time of the three node processes over the concurrent run, per session,
    against the session's crypto floor: how much work a session costs the nodes, whatever
    share of the CPUs a busy machine gives them (the sessions/s ratio cannot say that).
``dkd sessions/s (in-process, ...)``
    The three devices' pure drivers in this one process, envelopes sealed and opened, one
    ``fdatasync``-ed journal write per step: the protocol's CPU without IPC, scheduling or the
    node runtime. Floor: the initiator's crypto and both participants' (each answers), in one
    process.
``dkd memory per in-flight session (in-process, tracemalloc)``
    ``bench.dkd`` starts ``MEMORY_SESSIONS`` sessions in one in-process ``SessionRuntime`` per
    device and stops them mid-way (every participant has committed, nothing has completed),
    then reads the Python heap growth per session on each device with ``tracemalloc``: the
    driver, typestate values, monitor, timers, sent envelopes and seen digests of one
    in-flight session. Target <= 10 KiB (the load benchmark measures RSS per session on real
    nodes).
``floor part: ...``
    The measured parts of the floors, for the record.

Floors are measured before and after the cluster figures and averaged: this machine's load
and fsync latency drift within a run. Nothing here is asserted in tests; the test checks that
the figures are produced and sane.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aura_node.bench import Figure, node_cpu_seconds
from aura_node.bench.crypto import DkdCryptoFloor, dkd_crypto_floor

if TYPE_CHECKING:
    from aura_node.config import NodeConfig
    from aura_node.harness.cluster import Cluster
    from aura_node.sessions import SessionRuntime

DEVICES = ("d1", "d2", "d3")
THRESHOLD = 2
#: participants per benchmark session (the initiator and one other device)
PARTICIPANTS = 2
#: seconds a session may take before the node fails it (far above any healthy latency)
SESSION_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    sequential: int
    concurrency: tuple[int, ...]
    concurrent_sessions: int
    in_process: int
    #: in-flight sessions per role held in the in-process memory measurement
    memory: int
    warmup: int
    rtt_samples: int
    fsync_samples: int


QUICK = Sizes(sequential=20, concurrency=(8,), concurrent_sessions=48, in_process=20, memory=30,
              warmup=5, rtt_samples=300, fsync_samples=100)
FULL = Sizes(sequential=300, concurrency=(8, 16, 32), concurrent_sessions=480, in_process=200,
             memory=400,
             warmup=30, rtt_samples=3000, fsync_samples=500)


def usable_cores() -> int:
    """CPUs the node processes can run on, at most one per node (each is single-threaded)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(len(DEVICES), cpus))


# --- the cluster -----------------------------------------------------------------------------


def _tune(cfg: NodeConfig) -> NodeConfig:
    """The harness's test tuning, logs at warning (two info lines per session are not what
    is measured), and a DKD deadline no healthy session reaches."""
    from aura_node.harness.cluster import tune_for_tests

    cfg = tune_for_tests(cfg)
    return replace(cfg, log=replace(cfg.log, level="warning"),
                   protocols=replace(cfg.protocols, dkd_timeout_seconds=SESSION_TIMEOUT))


def _pin_directly(cluster: Cluster) -> None:
    """Point every node's peers at the peers' listen addresses instead of the fault proxy."""
    from aura_node.config import NodeHome

    for h in cluster.nodes.values():
        home = NodeHome(h.home)
        cfg = home.load_config()
        home.save_config(cfg.with_peers(tuple(
            replace(p, address=cluster.node(p.name).listen) for p in cfg.peers)))


class DkdClient:
    """Blocking ``ctl dkd`` requests on the cluster's control sockets, safe across threads."""

    def __init__(self, cluster: Cluster, tag: str) -> None:
        from aura_node.config import NodeHome

        self.sockets = {name: NodeHome(cluster.node(name).home).control_socket
                        for name in DEVICES}
        self.tag = tag
        self._count = 0
        self._lock = threading.Lock()

    def next_context(self) -> str:
        with self._lock:
            self._count += 1
            return f"bench/{self.tag}/{self._count}"

    def derive(self, initiator: str, other: str, context: str | None = None) -> dict[str, Any]:
        from aura_node.control.client import call

        ctx = context or self.next_context()
        out = call(self.sockets[initiator], "dkd",
                   {"context": ctx, "participants": [other], "timeout": SESSION_TIMEOUT},
                   SESSION_TIMEOUT + 5.0)
        if out.get("context") != ctx or len(str(out.get("fingerprint", ""))) != 32:
            raise RuntimeError(f"dkd on {initiator} for {ctx!r} answered {out!r}")
        return out

    def random(self, rng: random.Random) -> dict[str, Any]:
        initiator, other = rng.sample(DEVICES, 2)
        return self.derive(initiator, other)


def check_same_key(client: DkdClient) -> str:
    """Derive one context from two different pairs; the fingerprints must agree."""
    ctx = client.next_context()
    a = client.derive("d1", "d2", ctx)
    b = client.derive("d3", "d1", ctx)
    if a["fingerprint"] != b["fingerprint"] or a["public_key"] != b["public_key"]:
        raise RuntimeError(f"two pairs derived different keys for {ctx!r}: {a!r} vs {b!r}")
    return str(a["fingerprint"])


def sequential_latencies(client: DkdClient, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        client.random(rng)
        out.append(time.perf_counter() - t0)
    return out


def concurrent_rate(client: DkdClient, concurrency: int, total: int, seed: int) -> float:
    """Sessions/s with ``concurrency`` threads each issuing requests back to back until
    ``total`` have been issued; timed from the first request to the last reply."""
    remaining = [total]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while not errors:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                client.random(rng)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a dkd request failed at concurrency {concurrency}: "
                           f"{errors[0]!r}") from errors[0]
    return total / elapsed


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterResults:
    latencies: list[float]
    rates: dict[int, float]
    #: CPU seconds (user + system) the three node processes spent per session, by concurrency
    cpu_per_session: dict[int, float] = field(default_factory=dict)


def run_cluster(root: Path, sizes: Sizes) -> ClusterResults:
    from aura_node.harness.cluster import Cluster

    cluster = Cluster(root / "cluster", nodes=len(DEVICES), tune=_tune)
    try:
        cluster.create()
        _pin_directly(cluster)
        cluster.start()
        acct = cluster.node("d1").ctl("account.create", devices=list(DEVICES),
                                      threshold=THRESHOLD)
        if acct.get("threshold") != THRESHOLD or list(acct.get("devices", [])) != list(DEVICES):
            raise RuntimeError(f"account.create answered {acct!r}")
        client = DkdClient(cluster, tag=os.urandom(4).hex())
        check_same_key(client)
        sequential_latencies(client, sizes.warmup, seed=0)
        latencies = sequential_latencies(client, sizes.sequential, seed=1)
        pids = [p for p in (cluster.node(n).pid for n in DEVICES) if p is not None]
        rates: dict[int, float] = {}
        cpu: dict[int, float] = {}
        for c in sizes.concurrency:
            before = node_cpu_seconds(pids)
            rates[c] = concurrent_rate(client, c, sizes.concurrent_sessions, seed=c)
            cpu[c] = (node_cpu_seconds(pids) - before) / sizes.concurrent_sessions
        return ClusterResults(latencies=latencies, rates=rates, cpu_per_session=cpu)
    finally:
        cluster.stop()


# --- in-process: the three drivers in this process -------------------------------------------


def _services(n: int, t: int) -> dict[str, Any]:
    from aura_node.crypto.keys import DeviceKey
    from aura_node.harness.simulation import dealt_account
    from aura_node.protocols.account import AccountStore
    from aura_node.protocols.services import NodeServices, PeerInfo

    keys = {f"d{i}": DeviceKey.generate() for i in range(1, n + 1)}
    dealt = dealt_account({name: k.public for name, k in keys.items()}, t, session_id="bench")
    out: dict[str, Any] = {}
    for name, est in dealt.items():
        store = AccountStore()
        store.add(est)
        out[name] = NodeServices(
            self_name=name, self_role="device", device_key=keys[name], accounts=store,
            peers={o: PeerInfo(name=o, role="device", public_key=k.public)
                   for o, k in keys.items() if o != name})
    return out


class _Journal:
    """An append-only file, one ``fdatasync`` per step (what a node's journal does per batch)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def append(self, chunks: list[bytes]) -> None:
        os.write(self.fd, b"".join(chunks))
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _in_process_session(services: dict[str, Any], journals: dict[str, _Journal], k: int) -> None:
    from aura_node.protocols import engine as eng
    from aura_node.protocols.dkd.roles import SPEC, session_params, session_roles
    from aura_node.protocols.envelope import encode_envelope, open_envelope, seal

    sid = f"{k:032x}"
    init = "d1"
    params = session_params({"context": f"bench/{k}"}, services[init])
    drivers: dict[str, eng.ProtocolDriver] = {}
    queue: deque[tuple[str, str, Any]] = deque()
    done = False

    def apply(name: str, effects: list[eng.Effect]) -> None:
        nonlocal done
        chunks: list[bytes] = []
        for eff in effects:
            if isinstance(eff, eng.Send):
                env = seal(services[name].device_key, choreography="dkd", session=sid,
                           message=eff.message)
                chunks.append(encode_envelope(env))
                queue.extend((name, to, env) for to in eff.to)
            elif isinstance(eff, eng.Complete) and name == init:
                done = True
        journals[name].append(chunks or [b"."])  # journal before the messages leave

    drivers[init] = SPEC.driver_class("initiator")(services[init])
    apply(init, drivers[init].start(eng.Start(
        session=sid, choreography="dkd", role="initiator", self_name=init,
        roles=session_roles(params), params=params, now=0.0, entropy=os.urandom(32))))
    while queue:
        sender, to, env = queue.popleft()
        key = services[to].peers[sender].public_key
        opened = open_envelope(env, link_device_id=key.device_id, link_key=key,
                               message_types=SPEC.message_types)
        drv = drivers.get(to)
        if drv is None:
            drv = drivers[to] = SPEC.driver_class("participants")(services[to])
            drv.start(eng.Start(session=sid, choreography="dkd", role="participants",
                                self_name=to, roles={to: "participants", sender: "initiator"},
                                params={}, now=0.0, entropy=os.urandom(32), opened_by=sender))
        if drv.is_final:
            continue
        apply(to, drv.on_message(eng.MessageIn(
            sender=sender, sender_role=drv.roles[sender], message=opened.message, envelope=env,
            now=0.0)))
    if not done:
        raise RuntimeError(f"in-process DKD session {k} did not complete")


def in_process_rate(root: Path, sessions: int) -> float:
    from aura_node.crypto import dleq

    with dleq.own_proofs.paused():  # three devices, one process: each checks the others' proofs
        return _in_process_rate(root, sessions)


def _in_process_rate(root: Path, sessions: int) -> float:
    services = _services(len(DEVICES), THRESHOLD)
    journals = {name: _Journal(root / f"inproc-{name}.journal") for name in services}
    try:
        _in_process_session(services, journals, -1)  # warm-up (imports, caches)
        t0 = time.perf_counter()
        for k in range(sessions):
            _in_process_session(services, journals, k)
        return sessions / (time.perf_counter() - t0)
    finally:
        for j in journals.values():
            j.close()


# --- memory: what one in-flight session holds -----------------------------------------------


def _active(runtime: SessionRuntime | None) -> int:
    return 0 if runtime is None else runtime.counts()["active"]


def memory_per_session(sessions: int) -> dict[str, float]:
    """Bytes of Python heap one in-flight DKD session holds, by role (``tracemalloc``).

    The nodes are the seeded simulation's (``harness.simulation``: the daemon's own
    ``SessionRuntime``, drivers, monitors, timers, sent envelopes and seen digests; its
    journal is in memory, so the allocations made *by* ``sim_journal`` and by the simulation's
    own bookkeeping are left out). ``sessions`` DKDs (d1 asks d2) are started and held: first
    with d1 cut off (every initiator waits for commitments: the initiator's heap), then with
    only the answers to d1 lost (each participant has committed and waits for the collected
    set: both roles; the participant's is the difference). Parked control handlers, the
    journal's index and the transport's queues are not in this figure; the load benchmark's
    held run measures the whole node's RSS."""
    import gc
    import tracemalloc

    import structlog

    from aura_node.harness.simulation import Simulation
    from aura_node.logs import configure_logging
    from aura_node.protocols.dkd.roles import session_params, session_roles

    excluded = [tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "*/harness/sim_journal.py"),
                tracemalloc.Filter(False, "*/harness/simulation.py")]

    def held(cut_initiator: bool) -> float:
        sim = Simulation(11, dict.fromkeys(DEVICES, "device"))
        sim.deal_account(list(DEVICES), THRESHOLD)
        svc = sim.node("d1").services

        def start(k: int) -> None:
            params = session_params({"context": f"bench/memory/{k}",
                                     "participants": ["d1", "d2"]}, svc)
            sim.start("d1", "dkd", roles=session_roles(params), params=params)

        for k in range(3):  # warm-up: imports, caches, the share opened once per account
            start(k)
        sim.run()
        if cut_initiator:
            sim.isolated = {"d1"}
        else:
            sim.intercept = lambda src, dst, payload: None if dst == "d1" else payload
        gc.collect()
        tracemalloc.start(1)
        try:
            before = tracemalloc.take_snapshot().filter_traces(excluded)
            for k in range(sessions):
                start(100 + k)
            sim.run(until=sim.now + 1.0)
            gc.collect()
            after = tracemalloc.take_snapshot().filter_traces(excluded)
        finally:
            tracemalloc.stop()
        active = {n: _active(sim.node(n).runtime) for n in ("d1", "d2")}
        want = {"d1": sessions, "d2": 0 if cut_initiator else sessions}
        if active != want:
            raise RuntimeError(f"memory run: in flight {active}, expected {want}")
        return sum(st.size_diff for st in after.compare_to(before, "filename")) / sessions

    # the simulated runtimes log two info lines per session: warnings only meanwhile, and the
    # caller's logging configuration (a test's capture, say) back afterwards
    previous = structlog.get_config()
    configure_logging(level="warning")
    try:
        initiator = held(cut_initiator=True)
        both = held(cut_initiator=False)
    finally:
        structlog.configure(**previous)
    return {"initiator": initiator, "participant": both - initiator}


# --- floors ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Floors:
    #: seconds of each role's crypto per blinded session, t = 2
    crypto: DkdCryptoFloor
    #: raw Trio TCP round trips/s between two processes
    rtt_rate: float
    #: 300-byte append + fdatasync per second, on the cluster's directory
    fsync_rate: float

    def mean(self, other: Floors) -> Floors:
        return Floors(crypto=self.crypto.mean(other.crypto),
                      rtt_rate=(self.rtt_rate + other.rtt_rate) / 2,
                      fsync_rate=(self.fsync_rate + other.fsync_rate) / 2)


def measure_floors(directory: Path, sizes: Sizes, *, quick: bool) -> Floors:
    from aura_node.bench.node import fdatasync_rate, raw_tcp_pingpong_rate

    return Floors(
        crypto=dkd_crypto_floor(THRESHOLD, quick=quick),
        rtt_rate=raw_tcp_pingpong_rate(sizes.rtt_samples),
        fsync_rate=fdatasync_rate(directory, sizes.fsync_samples),
    )


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``samples``."""
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


# --- entry point -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Figure]:
    quick = bool(getattr(args, "quick", False))
    sizes = QUICK if quick else FULL
    # Unix socket paths are short: the cluster lives under /tmp unless --dir says otherwise.
    root = Path(tempfile.mkdtemp(prefix="aura-bench-dkd-",
                                 dir=getattr(args, "dir", None) or "/tmp"))
    try:
        in_process = in_process_rate(root, sizes.in_process)
        memory = memory_per_session(sizes.memory)
        before = measure_floors(root, sizes, quick=quick)
        results = run_cluster(root, sizes)
        floors = before.mean(measure_floors(root, sizes, quick=quick))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures(results, floors, in_process=in_process, memory=memory,
                   memory_sessions=sizes.memory)


def figures(results: ClusterResults, floors: Floors, *, in_process: float,
            memory: dict[str, float] | None = None, memory_sessions: int = 0) -> list[Figure]:
    cores = usable_cores()
    crypto = floors.crypto
    capacity = cores / crypto.session
    capacity_name = (f"crypto capacity: {cores} cores / {crypto.session * 1e3:.2f} ms crypto "
                     f"per blinded session (initiator + {THRESHOLD - 1} participant, "
                     f"t={THRESHOLD})")
    latency_floor = 2 / floors.rtt_rate + 2 / floors.fsync_rate
    latency_name = "2 raw Trio TCP rt (2 procs) + 2 fdatasync"
    p50 = percentile(results.latencies, 0.50)
    p99 = percentile(results.latencies, 0.99)
    out = [
        Figure(name=f"dkd sessions/s (cluster, {c} concurrent, n={PARTICIPANTS} t={THRESHOLD})",
               value=rate, unit="sessions/s", floor=capacity, floor_name=capacity_name,
               target=">= 0.5")
        for c, rate in results.rates.items()
    ]
    out += [
        Figure(name=f"dkd node CPU per session (cluster, {c} concurrent, 3 nodes' user+sys)",
               value=seconds * 1e3, unit="ms", floor=crypto.session * 1e3,
               floor_name="the session's crypto", higher_is_better=False)
        for c, seconds in results.cpu_per_session.items()
    ]
    out += [
        Figure(name=f"dkd p50 latency (cluster, sequential, {len(results.latencies)} sessions)",
               value=p50 * 1e3, unit="ms", floor=latency_floor * 1e3, floor_name=latency_name,
               target="<= 8", higher_is_better=False),
        Figure(name="dkd p99 latency (cluster, sequential)", value=p99 * 1e3, unit="ms",
               floor=latency_floor * 1e3, floor_name=latency_name, higher_is_better=False),
        Figure(name="dkd p50 latency vs floor + serial crypto (info)", value=p50 * 1e3,
               unit="ms", floor=(latency_floor + crypto.session) * 1e3,
               floor_name=f"{latency_name} + the session's crypto back to back",
               higher_is_better=False),
        Figure(name="dkd mean latency (cluster, sequential)",
               value=statistics.fmean(results.latencies) * 1e3, unit="ms",
               higher_is_better=False),
        Figure(name=f"dkd sessions/s (in-process, {len(DEVICES)} devices, t={THRESHOLD}, "
                    "1 fdatasync per step)",
               value=in_process, unit="sessions/s",
               floor=1 / (crypto.initiator + (len(DEVICES) - 1) * crypto.participant),
               floor_name=f"initiator + {len(DEVICES) - 1} participants' crypto, 1 core"),
        *(Figure(name=f"dkd memory per in-flight session, {role} (in-process heap, "
                      f"{memory_sessions} held)",
                 value=size / 1024, unit="KiB", target="<= 10 KiB", higher_is_better=False)
          for role, size in (memory or {}).items()),
        Figure(name=f"floor part: initiator's DKD crypto, t={THRESHOLD} (blinded)",
               value=crypto.initiator * 1e3, unit="ms", higher_is_better=False),
        Figure(name=f"floor part: participant's DKD crypto, t={THRESHOLD} (blinded)",
               value=crypto.participant * 1e3, unit="ms", higher_is_better=False),
        Figure(name="floor part: raw Trio TCP ping-pong, 2 processes",
               value=floors.rtt_rate, unit="rt/s"),
        Figure(name="floor part: write 300 B + fdatasync (cluster dir)",
               value=floors.fsync_rate, unit="ops/s"),
    ]
    return out
