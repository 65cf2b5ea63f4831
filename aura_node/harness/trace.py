"""Sequence diagrams of real sessions, rebuilt from the signed journals of every node.

Each node's journal holds, for a session: ``session.start`` (choreography, role, the role
assignment), every envelope it sent (``msg.out``, with recipients) and received (``msg.in``),
timers, driver records, and the end (``session.complete``/``session.fail``). A message is
matched across journals by the digest of its signed envelope: the sender's ``msg.out`` and
each recipient's ``msg.in``. Events are ordered by their journal timestamps (one machine, one
clock: a loopback cluster), ties broken by node and journal sequence.

What the diagram marks:

- a message the recipient never journaled: ``not received`` (lost, still in flight, or the
  recipient crashed before its group commit);
- a retry: the sender journaled the same envelope more than once, or the recipient journaled
  it only after the sender was restarted (the runtime re-sends journaled envelopes after a
  restart, never regenerating them); restarts come from the cluster's fault log;
- faults from ``DIR/faults.jsonl`` (kill, restart, pause, partition, ...) inside the session's
  time window, as notes;
- each node's phase as far as its journal shows it: started (role), each driver record kind,
  then Completed or Failed(code).

Journals are only read (``read_records`` verifies them first); a journal that does not verify
is reported, not drawn from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aura_node.errors import AuraError
from aura_node.harness.faults import HarnessError
from aura_node.harness.invariants import NodeJournal, journals_of_cluster
from aura_node.journal.store import read_records
from aura_node.protocols import engine as eng


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceMessage:
    sender: str
    to: str
    step: str
    digest: str
    sent_ts: float
    received_ts: float | None
    retry: str | None = None  # why it counts as a retry, or None


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """One row of the diagram: a message, a phase change on a node, or a fault note."""

    ts: float
    kind: str  # "message" | "phase" | "fault"
    node: str
    text: str
    message: TraceMessage | None = None


@dataclass(slots=True, kw_only=True)
class SessionTrace:
    session: str
    choreography: str
    roles: dict[str, str]
    nodes: list[str]
    events: list[TraceEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _session_ids(journals: list[NodeJournal]) -> set[str]:
    ids: set[str] = set()
    for j in journals:
        try:
            ids.update(r.session for r in read_records(j.journal_dir, j.public_key) if r.session)
        except (AuraError, FileNotFoundError):
            continue
    return ids


def load_session_trace(directory: str | os.PathLike[str], session: str) -> SessionTrace:
    """Read every node's journal under the cluster ``directory`` and rebuild ``session``.

    ``session`` may be a unique prefix of the session id.
    """
    d = Path(directory)
    journals = journals_of_cluster(d)
    ids = _session_ids(journals)
    matches = sorted(i for i in ids if i.startswith(session))
    if not matches:
        raise HarnessError(f"no session {session!r} in the journals of {d} ({len(ids)} sessions)")
    if len(matches) > 1:
        raise HarnessError(
            f"session prefix {session!r} is ambiguous: {', '.join(m[:12] for m in matches[:5])}"
        )
    faults = _read_faults(d / "faults.jsonl")
    return build_trace(journals, matches[0], faults=faults)


def _read_faults(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_trace(
    journals: list[NodeJournal], session: str, *, faults: Sequence[Mapping[str, Any]] = ()
) -> SessionTrace:
    """The trace of ``session`` from ``journals`` (and the cluster's fault log entries)."""
    names = {j.device_id: j.name for j in journals}
    trace = SessionTrace(session=session, choreography="", roles={}, nodes=[])
    #: (envelope digest, recipient) -> every time the sender journaled sending it
    sent: dict[tuple[str, str], list[float]] = {}
    #: envelope digest -> (sender name, step)
    steps: dict[str, tuple[str, str]] = {}
    #: (envelope digest, recipient) -> when the recipient journaled it
    received: dict[tuple[str, str], float] = {}
    phases: list[TraceEvent] = []
    for j in journals:
        try:
            records = list(read_records(j.journal_dir, j.public_key, session=session))
        except (AuraError, FileNotFoundError) as exc:
            why = exc.message if isinstance(exc, AuraError) else str(exc)
            trace.problems.append(f"{j.name}: journal not readable: {why}")
            continue
        if records and j.name not in trace.nodes:
            trace.nodes.append(j.name)
        for rec in records:
            try:
                ev = eng.parse_record(rec)
            except AuraError as exc:
                trace.problems.append(f"{j.name}#{rec.seq}: {exc.message}")
                continue
            if isinstance(ev, eng.Started):
                trace.choreography = ev.start.choreography
                trace.roles.update(ev.start.roles)
                phases.append(TraceEvent(ts=rec.ts, kind="phase", node=j.name,
                                         text=f"started as {ev.start.role}"))
            elif isinstance(ev, eng.Sent):
                digest = ev.envelope.digest.hex()
                for to in ev.to:
                    sent.setdefault((digest, to), []).append(rec.ts)
                steps[digest] = (j.name, ev.envelope.step)
            elif isinstance(ev, eng.Received):
                digest = ev.envelope.digest.hex()
                received.setdefault((digest, j.name), rec.ts)
                steps.setdefault(digest, (names.get(ev.envelope.sender, ev.sender),
                                          ev.envelope.step))
            elif isinstance(ev, eng.Ended):
                text = "Completed" if ev.ok else f"Failed({ev.code}: {ev.reason})"
                phases.append(TraceEvent(ts=rec.ts, kind="phase", node=j.name, text=text))
            elif isinstance(ev, eng.DriverRecord):
                phases.append(TraceEvent(ts=rec.ts, kind="phase", node=j.name,
                                         text=ev.kind.split(".", 1)[-1]))
            elif isinstance(ev, eng.TimerEvent) and ev.event == "fired":
                phases.append(TraceEvent(ts=rec.ts, kind="phase", node=j.name,
                                         text=f"timer {ev.name} fired"))
            elif isinstance(ev, eng.Misbehaved):
                phases.append(TraceEvent(ts=rec.ts, kind="phase", node=j.name,
                                         text=f"misbehaviour by {ev.peer}: {ev.code}"))
    restarts = [(f["t"], f["target"]) for f in faults if f.get("op") == "restart"]
    events = list(phases)
    # messages only the receiver journaled (the sender's journal lost or unreadable)
    for (digest, to), ts in received.items():
        if (digest, to) not in sent:
            sent[(digest, to)] = [ts]
    for (digest, to), times in sent.items():
        sender, step = steps[digest]
        got = received.get((digest, to))
        retry = None
        if len(times) > 1:
            retry = f"sent {len(times)} times"
        elif got is not None and any(times[0] < t < got and who == sender for t, who in restarts):
            retry = f"re-sent after {sender} restarted"
        msg = TraceMessage(sender=sender, to=to, step=step, digest=digest, sent_ts=times[0],
                           received_ts=got, retry=retry)
        events.append(TraceEvent(ts=times[0], kind="message", node=sender, text=step, message=msg))
    if events:
        t0, t1 = min(e.ts for e in events), max(e.ts for e in events)
        for f in faults:
            if t0 <= float(f.get("t", 0)) <= t1:
                target = f.get("target") or ", ".join(
                    f"{a}->{b}" for a, b in (f.get("directions") or [])
                ) or "all links"
                events.append(TraceEvent(ts=float(f["t"]), kind="fault",
                                         node=str(f.get("target") or ""),
                                         text=f"{f.get('op')} {target}"))
    order = {n: i for i, n in enumerate(trace.nodes)}
    events.sort(key=lambda e: (e.ts, order.get(e.node, 99)))
    trace.events = events
    return trace


def _participants(trace: SessionTrace) -> list[str]:
    people = list(trace.nodes)
    for e in trace.events:
        if e.message is not None:
            for n in (e.message.sender, e.message.to):
                if n not in people:
                    people.append(n)
    return people


def render_mermaid(trace: SessionTrace) -> str:
    lines = ["sequenceDiagram", f"    title {trace.choreography or '?'} session {trace.session}"]
    for n in _participants(trace):
        role = trace.roles.get(n)
        lines.append(f"    participant {n} as {n} ({role})" if role else f"    participant {n}")
    for e in trace.events:
        if e.kind == "message" and e.message is not None:
            m = e.message
            label = m.step
            if m.retry:
                label += f" [retry: {m.retry}]"
            if m.received_ts is None:
                lines.append(f"    {m.sender}-x{m.to}: {label} (not received)")
            else:
                lines.append(f"    {m.sender}->>{m.to}: {label}")
        elif e.kind == "phase":
            lines.append(f"    Note over {e.node}: {_mermaid_text(e.text)}")
        else:
            people = _participants(trace)
            span = f"{people[0]},{people[-1]}" if len(people) > 1 else people[0]
            lines.append(f"    Note over {span}: fault: {_mermaid_text(e.text)}")
    for p in trace.problems:
        lines.append(f"    %% problem: {p}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    # ';' and '#' end or escape a Mermaid statement; keep the diagram parseable
    return text.replace(";", ",").replace("#", "no.")


def render_text(trace: SessionTrace) -> str:
    """A terminal rendering: one row per event, one column per node."""
    people = _participants(trace)
    width = max([len(p) for p in people] + [10]) + 2
    t0 = trace.events[0].ts if trace.events else 0.0
    head = " " * 10 + "".join(p.center(width) for p in people)
    out = [f"{trace.choreography or '?'} session {trace.session}", head]
    col = {p: i for i, p in enumerate(people)}
    for e in trace.events:
        stamp = f"{(e.ts - t0) * 1000:8.1f}ms"
        if e.kind == "message" and e.message is not None:
            m = e.message
            a, b = col[m.sender], col[m.to]
            lo, hi = min(a, b), max(a, b)
            cells = [" " * width for _ in people]
            arrow_len = (hi - lo) * width
            label = m.step + (" (retry)" if m.retry else "") + (
                " (not received)" if m.received_ts is None else ""
            )
            body = f" {label} ".center(arrow_len - 2, "-")
            arrow = ("-" + body + ">") if a < b else ("<" + body + "-")
            row = "".join(cells[:lo]) + " " * (width // 2) + arrow
            out.append(f"{stamp}{row}")
        else:
            who = e.node if e.node in col else "*"
            prefix = " " * (col[who] * width) if who in col else ""
            tag = "[fault] " if e.kind == "fault" else ""
            out.append(f"{stamp}{prefix}  {who}: {tag}{e.text}")
    for p in trace.problems:
        out.append(f"problem: {p}")
    return "\n".join(out) + "\n"
