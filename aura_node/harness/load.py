"""Continuous protocol load on a running cluster, through the nodes' control sockets.

Theory of operation. A :class:`LoadRunner` keeps ``concurrency`` operations in flight: one
worker thread per slot loops "pick an operation, run it, record the outcome" until stopped.
Threads and the stdlib control client (``aura_node.control.client``) are enough here: each
operation is one blocking request whose time is spent waiting on the nodes, and it lets the
runner share the process with the nemesis thread without an event loop.

What an operation *is* is pluggable (:class:`LoadOperation`): ``prepare`` runs once before
the load (``DkdLoad`` creates the account there), ``run_one`` runs one operation from a
random initiator and returns an :class:`OpOutcome`. Every random choice comes from the
worker's own ``random.Random`` derived from the run's seed, so the sequence of choices per
worker is reproducible; which operation meets which fault is not.

A failed operation is *expected* under faults (the initiator is down, a participant is
partitioned away, the session hit its deadline) and is counted by its reason: the control
fault code the node answered with (``timeout``, ``session_failed``, ``not_ready``...) or the
client side failure (``node_not_running``, ``control_timeout``, ``control_connection``).
Correctness is judged afterwards from the journals, not from these counts.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster
from aura_node.harness.faults import HarnessError

#: how many distinct DKD contexts the load draws from: few enough that each context is
#: derived many times by different subsets (so the agreement check has something to compare)
DKD_CONTEXTS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class OpOutcome:
    ok: bool
    #: "ok", or the failure reason (a control fault code or a client error code)
    reason: str
    initiator: str
    started: float
    ended: float
    session: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class LoadOperation(Protocol):
    """One kind of load (see the module doc)."""

    name: str

    def prepare(self, cluster: Cluster) -> dict[str, Any]:
        """Once, before the load and the faults; returns facts for the summary."""
        ...

    def request(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        """The next operation as (initiator, control command, its arguments); after
        ``prepare``. The benchmark (``bench/load.py``) sends these over its own client."""
        ...

    def run_one(self, cluster: Cluster, rng: random.Random) -> OpOutcome:
        """One operation from a random initiator; never raises for a node-side failure."""
        ...


def failure_reason(exc: AuraError) -> str:
    """The code to count a failed control call under: the node's fault code when it
    answered, else the client-side error's code."""
    remote = getattr(exc, "remote_code", None)
    return str(remote) if remote else exc.code


def _call(
    cluster: Cluster, initiator: str, cmd: str, args: dict[str, Any]
) -> tuple[dict[str, Any] | None, str, float, float]:
    t0 = time.time()
    try:
        reply = cluster.node(initiator).ctl(cmd, wait=float(args["timeout"]) + 5.0, **args)
    except AuraError as exc:
        return None, failure_reason(exc), t0, time.time()
    return reply, "ok", t0, time.time()


@dataclass(slots=True, kw_only=True)
class PingLoad:
    """``ctl ping PEER`` from a random node to another random node."""

    timeout: float = 5.0
    name: str = "ping"
    nodes: list[str] = field(default_factory=list)

    def prepare(self, cluster: Cluster) -> dict[str, Any]:
        self.nodes = cluster.names
        return {"load": self.name}

    def request(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        initiator, peer = rng.sample(self.nodes, 2)
        return initiator, "ping", {"peer": peer, "timeout": self.timeout}

    def run_one(self, cluster: Cluster, rng: random.Random) -> OpOutcome:
        initiator, cmd, args = self.request(rng)
        reply, reason, t0, t1 = _call(cluster, initiator, cmd, args)
        return OpOutcome(ok=reply is not None, reason=reason, initiator=initiator, started=t0,
                         ended=t1, session=None if reply is None else str(reply["session"]),
                         detail={"peer": args["peer"]})


def default_threshold(n: int) -> int:
    """``ceil(n / 2)``, at least 2 (a one-holder DKD exchanges nothing worth testing)."""
    return max(2, math.ceil(n / 2))


@dataclass(slots=True, kw_only=True)
class DkdLoad:
    """Account genesis once on d1 with every device (and guardian), then ``ctl dkd`` with a
    random context from a random initiator with a random subset of >= t devices."""

    timeout: float = 10.0
    threshold: int | None = None
    contexts: int = DKD_CONTEXTS
    name: str = "dkd"
    devices: list[str] = field(default_factory=list)
    t: int = 0

    def prepare(self, cluster: Cluster) -> dict[str, Any]:
        self.devices = cluster.devices
        self.t = self.threshold or default_threshold(len(self.devices))
        guardians = cluster.guardians
        args: dict[str, Any] = {"devices": self.devices, "threshold": self.t}
        if guardians:
            args["guardians"] = guardians
            args["guardian_threshold"] = default_threshold(len(guardians)) if len(
                guardians) > 1 else 1
        dealer = self.devices[0]
        account = cluster.node(dealer).ctl("account.create", timeout=60.0, **args)
        # every holder must know the account before it can initiate
        deadline = time.monotonic() + 30.0
        for name in self.devices:
            while True:
                try:
                    cluster.node(name).ctl("account.show", wait=5.0)
                    break
                except AuraError as exc:
                    if time.monotonic() > deadline:
                        raise HarnessError(
                            f"{name} does not hold the account 30 s after genesis on "
                            f"{dealer}: {exc.message}") from None
                    time.sleep(0.1)
        return {"load": self.name, "account": account.get("account_id"),
                "threshold": self.t, "devices": self.devices, "guardians": guardians}

    def request(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        initiator = rng.choice(self.devices)
        others = [d for d in self.devices if d != initiator]
        size = rng.randint(self.t, len(self.devices))
        participants = [initiator, *rng.sample(others, size - 1)]
        context = f"chaos-{rng.randrange(self.contexts)}"
        return initiator, "dkd", {"context": context, "participants": participants,
                                  "timeout": self.timeout}

    def run_one(self, cluster: Cluster, rng: random.Random) -> OpOutcome:
        initiator, cmd, args = self.request(rng)
        reply, reason, t0, t1 = _call(cluster, initiator, cmd, args)
        return OpOutcome(
            ok=reply is not None, reason=reason, initiator=initiator, started=t0, ended=t1,
            session=None if reply is None else str(reply["session"]),
            detail={"context": args["context"], "participants": args["participants"],
                    **({} if reply is None else {"fingerprint": reply.get("fingerprint")})},
        )


#: one operation in this many is a reshare (when none is in flight), the rest are DKDs
RESHARE_EVERY = 6


@dataclass(slots=True, kw_only=True)
class DkdReshareLoad:
    """The DKD load with account lifecycle mixed in: about one operation in
    :data:`RESHARE_EVERY` (never two at once) reshares the account from a random stable
    device, alternately ``account.remove`` and ``account.add`` of one *churn* device (the last
    one). Which of the two comes next is read from the coordinator's ``account.show`` (a reshare
    whose reply was lost to a fault may still have completed); DKDs ask the churn device only
    while the load believes it is a device of the account. The DKD keys derived in every epoch
    must agree (``dkd_agreement`` compares by account and context, whatever the epoch), and
    every holder must end at the same epoch (``epoch_agreement``)."""

    timeout: float = 10.0
    threshold: int | None = None
    name: str = "dkd-reshare"
    dkd: DkdLoad = field(default_factory=DkdLoad)
    churn: str = ""
    #: does the churn device hold a share of the current epoch (as far as the load knows)
    churn_in: bool = True
    _resharing: threading.Lock = field(default_factory=threading.Lock)
    _state: threading.Lock = field(default_factory=threading.Lock)

    @property
    def reshare_timeout(self) -> float:
        """Each reshare phase's deadline: a quarter of an operation's, so that a participant waiting
        out a lost outcome (``OUTCOME_WAIT_DEADLINES`` of them) ends about when a DKD would."""
        return self.timeout / 4

    def prepare(self, cluster: Cluster) -> dict[str, Any]:
        self.dkd = DkdLoad(timeout=self.timeout, threshold=self.threshold)
        out = self.dkd.prepare(cluster)
        if len(self.dkd.devices) - 1 < self.dkd.t:
            raise HarnessError(f"a reshare load needs more devices than the threshold "
                               f"{self.dkd.t} (one comes and goes), got {len(self.dkd.devices)}")
        self.churn = self.dkd.devices[-1]
        return {**out, "load": self.name, "churn": self.churn,
                "reshare_timeout": self.reshare_timeout}

    def _devices(self) -> list[str]:
        with self._state:
            return [d for d in self.dkd.devices if self.churn_in or d != self.churn]

    def request(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        """The next DKD (the reshares depend on the cluster's answers: :meth:`run_one`)."""
        initiator = rng.choice(self._devices())
        others = [d for d in self._devices() if d != initiator]
        size = rng.randint(self.dkd.t, len(others) + 1)
        participants = [initiator, *rng.sample(others, size - 1)]
        context = f"chaos-{rng.randrange(self.dkd.contexts)}"
        return initiator, "dkd", {"context": context, "participants": participants,
                                  "timeout": self.timeout}

    def run_one(self, cluster: Cluster, rng: random.Random) -> OpOutcome:
        if rng.randrange(RESHARE_EVERY) == 0 and self._resharing.acquire(blocking=False):
            try:
                return self._reshare(cluster, rng)
            finally:
                self._resharing.release()
        initiator, cmd, args = self.request(rng)
        reply, reason, t0, t1 = _call(cluster, initiator, cmd, args)
        return OpOutcome(
            ok=reply is not None, reason=reason, initiator=initiator, started=t0, ended=t1,
            session=None if reply is None else str(reply["session"]),
            detail={"context": args["context"], "participants": args["participants"],
                    **({} if reply is None else {"fingerprint": reply.get("fingerprint")})},
        )

    def _reshare(self, cluster: Cluster, rng: random.Random) -> OpOutcome:
        coordinator = rng.choice([d for d in self.dkd.devices if d != self.churn])
        t0 = time.time()
        try:
            shown = cluster.node(coordinator).ctl("account.show", wait=5.0)
        except AuraError as exc:
            return OpOutcome(ok=False, reason=failure_reason(exc), initiator=coordinator,
                             started=t0, ended=time.time(), detail={"reshare": "show"})
        inside = self.churn in shown.get("holders", [])
        with self._state:
            self.churn_in = inside
        cmd = "account.remove" if inside else "account.add"
        reply, reason, t0, t1 = _call(cluster, coordinator, cmd, {
            "name": self.churn, "timeout": self.reshare_timeout})
        if reply is not None:
            with self._state:
                self.churn_in = not inside
        return OpOutcome(
            ok=reply is not None, reason=reason, initiator=coordinator, started=t0, ended=t1,
            session=None if reply is None else str(reply["session"]),
            detail={"reshare": cmd, "device": self.churn,
                    **({} if reply is None else {"epoch": reply.get("epoch")})})


def load_named(name: str, *, timeout: float) -> LoadOperation:
    if name == "ping":
        return PingLoad(timeout=timeout)
    if name == "dkd":
        return DkdLoad(timeout=timeout)
    if name == "dkd-reshare":
        return DkdReshareLoad(timeout=timeout)
    raise HarnessError(f"unknown load {name!r} (known: dkd, dkd-reshare, ping)")


@dataclass(slots=True)
class LoadStats:
    started: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    by_initiator: dict[str, Counter[str]] = field(default_factory=dict)
    #: (context -> fingerprints seen in replies): a cheap live cross-check of agreement
    fingerprints: dict[str, set[str]] = field(default_factory=dict)
    #: reshares of the ``dkd-reshare`` load by outcome ("completed" or the failure reason)
    reshares: Counter[str] = field(default_factory=Counter)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def to_json(self) -> dict[str, Any]:
        return {"started": self.started, "completed": self.completed,
                "failed": self.failed_total, "failed_by_reason": dict(sorted(
                    self.failed.items())),
                "by_initiator": {k: dict(v) for k, v in sorted(self.by_initiator.items())},
                **({"reshares": dict(sorted(self.reshares.items()))} if self.reshares else {})}


class LoadRunner:
    """``concurrency`` worker threads running ``operation`` until ``stop`` (module doc)."""

    def __init__(
        self,
        cluster: Cluster,
        operation: LoadOperation,
        *,
        concurrency: int,
        seed: int,
        on_outcome: Callable[[OpOutcome, LoadStats], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise HarnessError(f"concurrency must be at least 1, got {concurrency}")
        self.cluster = cluster
        self.operation = operation
        self.concurrency = concurrency
        self.seed = seed
        self.on_outcome = on_outcome
        self.stats = LoadStats()
        self.outcomes: list[OpOutcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.concurrency):
            rng = random.Random(f"load/{self.seed}/{i}")
            t = threading.Thread(target=self._work, args=(rng,), name=f"load-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """No new operations; those in flight finish on their own deadline (see ``join``)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the operations in flight; True when every worker finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self.stats.started - self.stats.completed - self.stats.failed_total

    def _work(self, rng: random.Random) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.stats.started += 1
            try:
                out = self.operation.run_one(self.cluster, rng)
            except Exception as exc:  # a harness bug must not silently stop a worker
                now = time.time()
                out = OpOutcome(ok=False, reason=f"harness:{type(exc).__name__}",
                                initiator="?", started=now, ended=now, detail={"error": str(exc)})
            with self._lock:
                s = self.stats
                if out.ok:
                    s.completed += 1
                    fp, ctx = out.detail.get("fingerprint"), out.detail.get("context")
                    if fp and ctx:
                        s.fingerprints.setdefault(str(ctx), set()).add(str(fp))
                else:
                    s.failed[out.reason] += 1
                s.by_initiator.setdefault(out.initiator, Counter())[out.reason] += 1
                if "reshare" in out.detail:
                    s.reshares["completed" if out.ok else out.reason] += 1
                self.outcomes.append(out)
            if self.on_outcome is not None:
                self.on_outcome(out, self.stats)
            if not out.ok and out.ended - out.started < 0.05:
                # refused at once (node down, not ready): do not spin on it
                self._stop.wait(0.1)
