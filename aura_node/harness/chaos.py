"""Chaos runs: protocol load under a seeded nemesis, then the invariant checks over all journals.

Theory of operation (``aura-node cluster chaos``, :func:`run_chaos`):

1. **Start** a cluster of real node processes (``harness/cluster.py``; every link crosses the
   fault proxy) and **prepare** the load (DKD: account genesis on d1 with every device,
   threshold ``ceil(n/2)`` but at least 2; ``dkd-reshare``, the default: the same, and about
   one operation in six is a reshare that removes or adds back the last device; ping:
   nothing).
2. **Chaos** for ``duration`` seconds: ``concurrency`` load workers (``harness/load.py``) run
   operations from random initiators with random subsets, each bounded by its timeout, while
   the nemesis (``harness/nemesis.py``) applies the fault schedule drawn from the seed: kill +
   restart, pause + resume, partitions and heals, delay/jitter/loss on links. Every fault goes
   to the cluster's fault log (``DIR/faults.jsonl``) with the wall time and its target.
3. **Heal**: the nemesis ends its open faults, then every link fault is cleared, every paused
   node resumed, every dead node restarted, and the run waits until every node is ready with
   every link up. That moment is the *last heal*.
4. **Quiet period**: no faults. The load carries on for the first half (the healed cluster
   must serve again), then stops; the run waits for the operations in flight, then until no
   node reports an active session (or the session deadline after the last load passed).
5. **Check**: the nodes are stopped (SIGTERM) and the invariant checkers
   (``harness/invariants.py``) read every journal: each verifies, every journaled envelope is
   signed by its sender, no equivocation, every completed DKD of an (account, context) has the
   same fingerprint on every node whatever the epoch, every holder of an account ends at the
   same epoch, every session started ended, within the session deadline (a reshare's own,
   longer one for reshares) after ``max(its start, the last heal)``.

Failed operations under faults are expected and never a violation: correctness is what the
journals prove, liveness is "every session ended in time once the faults stopped".

A node that does not come back after the heal (it will not start on its journal after a
SIGKILL, say) fails the run too (``recovery_error``), after the journals were checked.

Reproducibility: the same seed, node count and duration give the same fault schedule (kinds,
targets, parameters, offsets) and the same sequence of load choices per worker. What the faults
*hit* depends on timing (which message was in flight when a node was killed), so outcomes
differ from run to run; the schedule is in the JSON summary and in ``faults.jsonl`` so a run
that found something can be lined up with its journals (``aura-node trace``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from aura_node.config import NodeConfig
from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster, ClusterNotReadyError, tune_for_tests
from aura_node.harness.faults import HarnessError
from aura_node.harness.invariants import (
    InvariantReport,
    NodeJournal,
    check_invariants,
    journals_of_cluster,
)
from aura_node.harness.load import (
    DkdReshareLoad,
    LoadOperation,
    LoadRunner,
    OpOutcome,
    load_named,
)
from aura_node.harness.nemesis import (
    AppliedFault,
    Nemesis,
    NemesisTuning,
    plan_faults,
)
from aura_node.harness.progress import Progress

#: seconds a session may take to end beyond its own timeout, counted from its start or the
#: last heal: a restarted node rehydrates, re-arms its timers and commits the failure
SESSION_GRACE_SECONDS = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosConfig:
    nodes: int = 5
    guardians: int = 0
    duration: float = 60.0
    seed: int = 0
    concurrency: int = 4
    quiet_period: float = 20.0
    load: str = "dkd-reshare"
    op_timeout: float = 10.0
    #: ``--plugin`` arguments every node runs with (see ``aura_node.plugins``)
    plugins: tuple[str, ...] = ()
    tuning: NemesisTuning = field(default_factory=NemesisTuning)

    @property
    def session_deadline(self) -> float:
        return self.op_timeout + SESSION_GRACE_SECONDS

    @property
    def session_deadlines(self) -> dict[str, float]:
        """Choreographies whose sessions may run longer than one operation's deadline: a
        reshare participant that signed waits ``OUTCOME_WAIT_DEADLINES`` of the reshare's
        phase deadline for the outcome, after one for the deal (``protocols/reshare``)."""
        if self.load != "dkd-reshare":
            return {}
        from aura_node.protocols.reshare.roles import OUTCOME_WAIT_DEADLINES

        phase = DkdReshareLoad(timeout=self.op_timeout).reshare_timeout
        return {"reshare": (OUTCOME_WAIT_DEADLINES + 2) * phase + SESSION_GRACE_SECONDS}


@dataclass(slots=True, kw_only=True)
class ChaosReport:
    config: ChaosConfig
    directory: Path
    prepared: dict[str, Any]
    load: dict[str, Any]
    faults: dict[str, int]
    fault_errors: list[dict[str, Any]]
    schedule: list[dict[str, Any]]
    sessions: dict[str, dict[str, int]]
    invariants: InvariantReport
    last_heal: float
    timings: dict[str, float]
    #: why the cluster did not come back whole after the heal (a node that will not restart
    #: after a SIGKILL is a finding too), or None
    recovery_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.invariants.ok and self.recovery_error is None

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "ok": self.ok,
            "seed": c.seed,
            "nodes": c.nodes,
            "guardians": c.guardians,
            "duration": c.duration,
            "quiet_period": c.quiet_period,
            "concurrency": c.concurrency,
            "load": c.load,
            "op_timeout": c.op_timeout,
            "plugins": list(c.plugins),
            "session_deadline": c.session_deadline,
            "dir": str(self.directory),
            "prepared": self.prepared,
            "operations": self.load,
            "faults": self.faults,
            "fault_errors": self.fault_errors,
            "schedule": self.schedule,
            "sessions": self.sessions,
            "invariants": self.invariants.to_json(),
            "last_heal": self.last_heal,
            "recovery_error": self.recovery_error,
            "timings": self.timings,
        }


def render_report(r: ChaosReport) -> str:
    """The human summary: operations, sessions per node, faults, invariant results."""
    c = r.config
    ops = r.load
    lines = [
        f"chaos run: seed {c.seed}, {c.nodes} devices + {c.guardians} guardians, "
        f"{c.duration:g} s of faults + {c.quiet_period:g} s quiet, load {c.load} x"
        f"{c.concurrency} (timeout {c.op_timeout:g} s)"
        + (f", plugins {', '.join(c.plugins)}" if c.plugins else ""),
        f"operations: started {ops['started']}, completed {ops['completed']}, "
        f"failed {ops['failed']}",
    ]
    for reason, n in ops["failed_by_reason"].items():
        lines.append(f"  failed {reason:<22} {n}")
    if ops.get("reshares"):
        lines.append("  of them reshares: " + ", ".join(
            f"{k} {v}" for k, v in ops["reshares"].items()))
    lines.append("sessions by outcome per node (from the journals):")
    for node, outcomes in r.sessions.items():
        shown = ", ".join(f"{k} {v}" for k, v in outcomes.items()) or "none"
        lines.append(f"  {node:<4} {shown}")
    total = sum(r.faults.values())
    lines.append(f"faults injected: {total} (" + ", ".join(
        f"{k} {v}" for k, v in r.faults.items()) + ")")
    for e in r.fault_errors:
        lines.append(f"  fault not applied: {e['kind']} {e['phase']} {e['target']}: {e['error']}")
    lines.append(f"invariants (session deadline {c.session_deadline:g} s after start or last "
                 "heal):")
    for name, n in r.invariants.checked.items():
        bad = len(r.invariants.failed(name))
        lines.append(f"  {name:<17} {'ok  ' if not bad else 'FAIL'} checked {n}"
                     + (f", {bad} violations" if bad else ""))
    for v in r.invariants.violations[:20]:
        where = "/".join(x for x in (v.node, v.session) if x)
        lines.append(f"    {v.invariant}: {where}: {v.detail}")
    if len(r.invariants.violations) > 20:
        lines.append(f"    ... {len(r.invariants.violations) - 20} more (see --json)")
    if r.recovery_error is not None:
        lines.append(f"cluster did not recover after the heal: {r.recovery_error}")
    lines.append("result: " + ("CLEAN" if r.ok else "VIOLATIONS FOUND"))
    return "\n".join(lines)


def sessions_by_outcome(journals: list[NodeJournal]) -> dict[str, dict[str, int]]:
    """Per node: sessions completed, failed (by failure code) and never ended, per journal."""
    from aura_node.journal.store import read_records
    from aura_node.protocols import engine as eng

    out: dict[str, dict[str, int]] = {}
    for j in journals:
        state: dict[str, str] = {}
        try:
            records = list(read_records(j.journal_dir, j.public_key))
        except AuraError as exc:
            out[j.name] = {f"unreadable ({exc.code})": 1}
            continue
        for rec in records:
            if not rec.session:
                continue
            try:
                ev = eng.parse_record(rec)
            except AuraError:
                continue
            if isinstance(ev, eng.Started):
                state.setdefault(rec.session, "open")
            elif isinstance(ev, eng.Ended):
                state[rec.session] = "completed" if ev.ok else f"failed:{ev.code or '?'}"
        counts = Counter(state.values())
        out[j.name] = dict(sorted(counts.items(), key=lambda kv: (kv[0] != "completed", kv[0])))
    return out


def _restore_everything(cluster: Cluster, say: Callable[[str], None]) -> None:
    """Heal every link, resume paused nodes, restart dead ones, wait until all are ready."""
    cluster.heal()
    cluster.record_fault("heal_all", None)
    for name, h in cluster.nodes.items():
        state = "never_started" if h.process is None else h.process.state()
        if state == "paused":
            say(f"  resume {name}")
            cluster.resume(name)
        elif state != "running":
            say(f"  restart {name} ({state})")
            cluster.restart(name, wait=False)
    cluster.wait_ready(timeout=60.0)


def _wait_sessions_idle(cluster: Cluster, until: float) -> dict[str, int]:
    """Poll each node's active sessions until none is left or ``until`` (monotonic)."""
    active: dict[str, int] = {}
    while True:
        active = {}
        for name, h in cluster.nodes.items():
            try:
                st = h.ctl("sessions", wait=5.0)
            except AuraError:
                active[name] = -1
                continue
            n = len(st.get("sessions", []))
            if n:
                active[name] = n
        if not active or time.monotonic() >= until:
            return active
        time.sleep(0.25)


#: start attempts when a node loses its listen port to another socket (see _start_cluster)
START_ATTEMPTS = 3


def _chaos_tune(config: ChaosConfig) -> Callable[[NodeConfig], NodeConfig]:
    """The harness's test tuning, plus every node's own DKD deadline set to the load's
    operation timeout: a participant's session then has the same deadline as the
    initiator's request, which is what the ``sessions_end`` check bounds (deadline + grace)."""

    def tune(cfg: NodeConfig) -> NodeConfig:
        cfg = tune_for_tests(cfg)
        return replace(cfg, protocols=replace(cfg.protocols,
                                              dkd_timeout_seconds=config.op_timeout))

    return tune


def _start_cluster(config: ChaosConfig, directory: Path, say: Callable[[str], None]) -> Cluster:
    """Start the cluster; start over in a clean directory when a node could not bind.

    ``Cluster`` picks the nodes' listen ports by binding port 0 and closing, then starts the
    proxy, whose own port-0 listeners can be handed one of those ports before the node binds
    it ("Address already in use"). That is a harness race, not a finding of the run, so the
    run retries it rather than reporting it as a chaos failure.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        cluster = Cluster(directory, nodes=config.nodes, guardians=config.guardians,
                          seed=config.seed, tune=_chaos_tune(config), plugins=config.plugins)
        try:
            return cluster.start()
        except ClusterNotReadyError as exc:
            if "Address already in use" not in exc.message or attempt == START_ATTEMPTS:
                raise
            say(f"  a node lost its port to another socket (attempt {attempt}); starting over")
            cluster.stop()
            for child in directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    raise AssertionError("unreachable")


def run_chaos(
    config: ChaosConfig,
    directory: Path,
    *,
    progress_stream: TextIO | None = None,
    operation: LoadOperation | None = None,
) -> ChaosReport:
    """One chaos run in ``directory`` (see the module doc); the nodes are always stopped."""
    if config.duration <= 0 or config.quiet_period < 0:
        raise HarnessError("duration must be > 0 and quiet period >= 0 seconds, got "
                           f"{config.duration} and {config.quiet_period}")
    if (directory / "cluster.json").exists():
        raise HarnessError(f"{directory} already holds a cluster; a chaos run needs a fresh "
                           "directory")
    op = operation or load_named(config.load, timeout=config.op_timeout)
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    with Progress("chaos", stream=progress_stream) as progress:
        say = progress.step
        progress.set(phase="start")
        say(f"starting {config.nodes} devices + {config.guardians} guardians in {directory}")
        cluster = _start_cluster(config, directory, say)
        nemesis: Nemesis | None = None
        runner: LoadRunner | None = None
        try:
            timings["start"] = time.monotonic() - t_start
            progress.set(phase="prepare")
            prepared = op.prepare(cluster)
            say(f"load {op.name}: " + json.dumps(prepared, sort_keys=True))
            schedule = plan_faults(config.seed, cluster.names, config.duration,
                                   tuning=config.tuning)
            say(f"nemesis: {len(schedule)} faults planned from seed {config.seed}")

            def on_fault(a: AppliedFault) -> None:
                if a.error is not None:
                    say(f"  ! {a.phase} {a.fault.describe()}: {a.error}")
                elif a.phase == "start":
                    say(f"  +{a.fault.at:6.1f}s {a.fault.describe()}")
                    progress.incr("faults")

            def on_outcome(out: OpOutcome, stats: Any) -> None:
                progress.set(ops=stats.started, ok=stats.completed, failed=stats.failed_total)

            progress.set(phase="chaos", ops=0, ok=0, failed=0, faults=0)
            nemesis = Nemesis(cluster, schedule, on_event=on_fault)
            runner = LoadRunner(cluster, op, concurrency=config.concurrency, seed=config.seed,
                                on_outcome=on_outcome)
            t_chaos = time.monotonic()
            runner.start()
            nemesis.run(tick=progress.set)
            while (left := config.duration - (time.monotonic() - t_chaos)) > 0:
                time.sleep(min(0.2, left))
                progress.set()
            progress.set(phase="heal")
            say("chaos over: ending open faults, healing, resuming, restarting")
            nemesis.stop()
            recovery_error: str | None = None
            try:
                _restore_everything(cluster, say)
            except HarnessError as exc:
                recovery_error = exc.message
                say(f"the cluster did not recover: {exc.message}")
            last_heal = time.time()
            timings["chaos"] = time.monotonic() - t_chaos
            if recovery_error is None:
                say(f"healed: every node ready with every link up ({timings['chaos']:.1f} s "
                    "after the chaos began); quiet period")
            progress.set(phase="quiet")
            t_quiet = time.monotonic()
            time.sleep(config.quiet_period / 2 if recovery_error is None else 0.0)
            runner.stop()
            if not runner.join(config.op_timeout + 15.0):
                say("  some load operations did not return in time (control waits)")
            left = max(0.0, config.quiet_period - (time.monotonic() - t_quiet))
            still = _wait_sessions_idle(cluster, time.monotonic() + max(
                left, config.session_deadline, *config.session_deadlines.values()))
            if still:
                say(f"  sessions still active when the wait ended: {still}")
            timings["quiet"] = time.monotonic() - t_quiet
            progress.set(phase="check")
            say("stopping the nodes and checking the journals")
        finally:
            if runner is not None:
                runner.stop()
            if nemesis is not None and sys.exc_info()[0] is not None:
                nemesis.abort()  # interrupted: do not restart nodes on the way out
            cluster.stop()
        journals = journals_of_cluster(directory)
        report = check_invariants(journals, session_deadline=config.session_deadline,
                                  last_heal=last_heal,
                                  session_deadlines=config.session_deadlines)
        sessions = sessions_by_outcome(journals)
        timings["total"] = time.monotonic() - t_start
        progress.counts["phase"] = "done"
    assert nemesis is not None and runner is not None
    return ChaosReport(
        config=config, directory=directory, prepared=prepared, load=runner.stats.to_json(),
        faults=nemesis.counts(),
        fault_errors=[a.to_json() for a in nemesis.errors()],
        schedule=[f.to_json() for f in schedule],
        sessions=sessions, invariants=report, last_heal=last_heal,
        timings={k: round(v, 3) for k, v in timings.items()}, recovery_error=recovery_error,
    )


# --- command line ----------------------------------------------------------------------------


def run_from_args(args: argparse.Namespace) -> int:
    from aura_node.cli import load_plugin_options, print_json

    # loaded here first, so a bad plugin is one line before any node starts
    plugins = tuple(p.argument for p in load_plugin_options(args))
    if args.nodes < 1 or args.nodes + args.guardians < 2:
        raise HarnessError("a chaos run needs at least 2 nodes, 1 of them a device")
    config = ChaosConfig(
        nodes=args.nodes, guardians=args.guardians, duration=args.duration, seed=args.seed,
        concurrency=args.concurrency, quiet_period=args.quiet_period, load=args.load,
        op_timeout=args.op_timeout, plugins=plugins,
    )
    temp = args.dir is None
    directory = Path(args.dir or tempfile.mkdtemp(dir="/tmp", prefix="aura-chaos-")).absolute()
    clean = False
    try:
        report = run_chaos(config, directory)
        clean = report.ok
    finally:
        if temp and clean and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
        elif temp:
            sys.stderr.write(f"chaos: cluster directory kept: {directory}\n")
    if args.json:
        print_json(report.to_json())
    else:
        sys.stdout.write(render_report(report) + "\n")
    return 0 if report.ok else 1
