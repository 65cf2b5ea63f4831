"""Invariant checkers over the journals of every node of a cluster, after a run.

The journals are the evidence: each node journals every envelope it sent (``msg.out``) and
received (``msg.in``), signed by the sender's device key, and how each session started and
ended (``aura_node/protocols/engine.py``). The checkers read them read-only (never opening a
journal for writing, so they can run while nodes are stopped or killed) and report every
violation they find rather than stopping at the first:

``journal_verifies``
    every node's journal verifies with the journal package's own verifier (chain, checksums,
    checkpoint signatures by that node's key). A torn tail after a SIGKILL is not a violation:
    it is exactly what opening would cut back to the last acknowledged checkpoint.
``evidence_signed``
    every journaled envelope verifies under the public key of the device it names as sender.
``no_equivocation``
    no device signed two different messages of the same step to the same recipient in one
    session. Envelopes are compared across all journals (a sender's ``msg.out`` against each
    receiver's ``msg.in``) by the digest of their signed content; Ed25519 is deterministic, so
    a faithful re-send after a restart has the same digest and is no violation. The recipient
    is part of the key because some steps legitimately carry per-recipient content (a share
    sealed to each holder); steps a choreography may repeat in a loop can be exempted.
``dkd_agreement``
    for every (account, context), every completed derivation on every node has the same
    fingerprint, whoever took part.
``sessions_end``
    every session a node started has ended on that node (``session.complete`` or
    ``session.fail``; a veto ends as a failure with its code), and, when a deadline is given,
    ended no later than the deadline after its start or after the last heal, whichever is later
    (a choreography may have a deadline of its own: a reshare participant that signed waits
    several of its phase deadlines for the outcome).
``epoch_agreement``
    for every account, every node that holds or held a share of it ends at the same current
    epoch fact (``AccountStore`` folded over its journal's ``account.established`` and
    ``account.epoch`` records, as the node itself does at start-up): no split epoch after
    resharing, however the faults fell. Only nodes of one lineage are compared (their fact
    chains meet): a guardian recovery starts a lineage of its own at its epoch 0. With
    ``dkd_agreement`` comparing keys by account and context whatever the epoch, this also says
    every epoch derives the same keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aura_node.crypto.keys import DevicePublicKey
from aura_node.errors import AuraError
from aura_node.journal import JournalRecord, verify_journal
from aura_node.journal.store import read_records
from aura_node.protocols import engine as eng
from aura_node.protocols.account import KIND_ACCOUNT, AccountStore
from aura_node.protocols.envelope import Envelope, verify_journaled
from aura_node.protocols.epochs import KIND_EPOCH_FACT

INVARIANTS = (
    "journal_verifies",
    "evidence_signed",
    "no_equivocation",
    "dkd_agreement",
    "sessions_end",
    "epoch_agreement",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeJournal:
    """Where one node's journal is and whose key signs it."""

    name: str
    public_key: DevicePublicKey
    journal_dir: Path

    @property
    def device_id(self) -> str:
        return self.public_key.device_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    invariant: str
    detail: str
    node: str | None = None
    session: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "node": self.node,
            "session": self.session,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class InvariantReport:
    #: invariant -> how many items it checked (so "0 violations" cannot mean "checked nothing")
    checked: dict[str, int]
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def failed(self, invariant: str) -> list[Violation]:
        return [v for v in self.violations if v.invariant == invariant]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "violations": [v.to_json() for v in self.violations],
        }


@dataclass(slots=True, kw_only=True)
class _SessionOnNode:
    node: str
    session: str
    choreography: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    started_ts: float | None = None
    ended_ts: float | None = None
    ok: bool | None = None
    result: dict[str, Any] = field(default_factory=dict)


def journals_of_cluster(directory: str | os.PathLike[str]) -> list[NodeJournal]:
    """The journals of the nodes listed in ``DIR/cluster.json``."""
    from aura_node.config import NodeHome

    state = json.loads((Path(directory) / "cluster.json").read_text(encoding="utf-8"))
    return [
        NodeJournal(
            name=n["name"],
            public_key=DevicePublicKey.from_hex(n["public_key"]),
            journal_dir=NodeHome(Path(n["home"])).journal_dir,
        )
        for n in state["nodes"]
    ]


def check_invariants(
    journals: Sequence[NodeJournal],
    *,
    session_deadline: float | None = None,
    last_heal: float | None = None,
    repeatable_steps: Collection[tuple[str, str]] = (),
    session_deadlines: Mapping[str, float] | None = None,
) -> InvariantReport:
    """Run every checker (see the module doc) over ``journals``.

    ``session_deadline`` (seconds) bounds how long after ``max(start, last_heal)`` a session
    may take to end, ``session_deadlines`` (choreography -> seconds) overrides it for a
    choreography; ``repeatable_steps`` holds ``(choreography, step)`` pairs exempt from the
    equivocation check (steps a choreography sends more than once by design).
    """
    violations: list[Violation] = []
    checked = dict.fromkeys(INVARIANTS, 0)
    keys = {j.device_id: j for j in journals}
    #: (session, sender device id, step, recipient name) -> digest -> [(node, seq)]
    said: dict[tuple[str, str, str, str], dict[bytes, list[tuple[str, int]]]] = {}
    sessions: dict[tuple[str, str], _SessionOnNode] = {}
    choreo_of: dict[str, str] = {}

    #: node -> its (kind, body) account records, in journal order
    account_records: dict[str, list[tuple[str, bytes]]] = {}

    for j in journals:
        records = _read_verified(j, violations, checked)
        for rec in records:
            if rec.kind in (KIND_ACCOUNT, KIND_EPOCH_FACT):
                account_records.setdefault(j.name, []).append((rec.kind, rec.body))
            try:
                ev = eng.parse_record(rec)
            except AuraError as exc:
                violations.append(
                    Violation(invariant="journal_verifies", node=j.name, session=rec.session,
                              detail=f"record {rec.seq} ({rec.kind}) does not decode: "
                                     f"{exc.message}")
                )
                continue
            s = sessions.setdefault((j.name, rec.session), _SessionOnNode(
                node=j.name, session=rec.session))
            if isinstance(ev, eng.Started):
                s.started_ts, s.choreography = rec.ts, ev.start.choreography
                s.params = dict(ev.start.params)
                choreo_of[rec.session] = ev.start.choreography
            elif isinstance(ev, eng.Ended):
                s.ended_ts, s.ok, s.result = rec.ts, ev.ok, dict(ev.result)
            elif isinstance(ev, eng.Sent | eng.Received):
                recipients = ev.to if isinstance(ev, eng.Sent) else (j.name,)
                if _signed_by_known_key(ev.envelope, keys, j.name, rec, violations, checked):
                    for to in recipients:
                        key = (ev.envelope.session, ev.envelope.sender, ev.envelope.step, to)
                        said.setdefault(key, {}).setdefault(ev.envelope.digest, []).append(
                            (j.name, rec.seq)
                        )

    _check_equivocation(said, keys, choreo_of, repeatable_steps, violations, checked)
    _check_dkd(sessions.values(), violations, checked)
    _check_ends(sessions.values(), session_deadline, last_heal, violations, checked,
                session_deadlines or {})
    _check_epochs(account_records, violations, checked)
    return InvariantReport(checked=checked, violations=tuple(violations))


def _check_epochs(account_records: Mapping[str, Sequence[tuple[str, bytes]]],
                  violations: list[Violation], checked: dict[str, int]) -> None:
    """Nodes of one lineage of an account (their chains of facts, from the current one back
    through the facts they hold, share a fact) must be at the same current fact. A guardian
    recovery starts a lineage of its own (its own epoch 0), which the original devices do not
    adopt: nodes whose chains share nothing are not compared."""
    #: account id -> node -> (its current (epoch, digest), the digests of its chain)
    at: dict[str, dict[str, tuple[tuple[int, bytes], set[bytes]]]] = {}
    for node, records in sorted(account_records.items()):
        store = AccountStore()
        for kind, body in records:
            try:
                store.fold(kind, body)
            except AuraError as exc:
                violations.append(Violation(
                    invariant="epoch_agreement", node=node,
                    detail=f"journaled {kind} record does not fold: {exc.message}"))
        for account_id in store.accounts():
            fact = store.epochs.current(account_id)
            if fact is None:
                continue
            held = {f.digest(): f for f in store.epochs.facts(account_id)}
            chain, f = set(), fact
            while True:
                chain.add(f.digest())
                if f.epoch == 0 or f.previous not in held:
                    break
                f = held[f.previous]
            at.setdefault(account_id, {})[node] = ((fact.epoch, fact.digest()), chain)
    for account_id, nodes in sorted(at.items()):
        checked["epoch_agreement"] += 1
        names = sorted(nodes)
        split = {(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                 if nodes[a][1] & nodes[b][1] and nodes[a][0] != nodes[b][0]}
        if split:
            shown = "; ".join(f"{a} at epoch {nodes[a][0][0]} ({nodes[a][0][1].hex()[:16]}), "
                              f"{b} at epoch {nodes[b][0][0]} ({nodes[b][0][1].hex()[:16]})"
                              for a, b in sorted(split)[:6])
            violations.append(Violation(
                invariant="epoch_agreement",
                detail=f"account {account_id}: holders of one lineage are at different "
                       f"epochs: {shown}"))


def _read_verified(
    j: NodeJournal, violations: list[Violation], checked: dict[str, int]
) -> list[JournalRecord]:
    checked["journal_verifies"] += 1
    if not j.journal_dir.is_dir():
        violations.append(Violation(invariant="journal_verifies", node=j.name,
                                    detail=f"no journal at {j.journal_dir}"))
        return []
    try:
        report = verify_journal(j.journal_dir, j.public_key)
        if not report.ok:
            violations.append(Violation(invariant="journal_verifies", node=j.name,
                                        detail=f"journal does not verify: {report.problem}"))
            return []
        return list(read_records(j.journal_dir, j.public_key))
    except AuraError as exc:
        violations.append(Violation(invariant="journal_verifies", node=j.name,
                                    detail=f"journal does not verify: {exc.message}"))
        return []


def _signed_by_known_key(
    env: Envelope,
    keys: dict[str, NodeJournal],
    node: str,
    rec: JournalRecord,
    violations: list[Violation],
    checked: dict[str, int],
) -> bool:
    checked["evidence_signed"] += 1
    signer = keys.get(env.sender)
    if signer is None:
        violations.append(Violation(
            invariant="evidence_signed", node=node, session=env.session,
            detail=f"record {rec.seq}: {env.step} claims sender {env.sender}, not a node of "
                   "this cluster"))
        return False
    try:
        verify_journaled(env, signer.public_key)
    except AuraError as exc:
        violations.append(Violation(
            invariant="evidence_signed", node=node, session=env.session,
            detail=f"record {rec.seq}: {env.choreography}/{env.step} from {signer.name} does "
                   f"not verify: {exc.message}"))
        return False
    return True


def _check_equivocation(
    said: dict[tuple[str, str, str, str], dict[bytes, list[tuple[str, int]]]],
    keys: dict[str, NodeJournal],
    choreo_of: dict[str, str],
    repeatable: Collection[tuple[str, str]],
    violations: list[Violation],
    checked: dict[str, int],
) -> None:
    for (session, sender, step, to), digests in sorted(said.items()):
        checked["no_equivocation"] += 1
        if len(digests) < 2 or (choreo_of.get(session, ""), step) in repeatable:
            continue
        name = keys[sender].name if sender in keys else sender
        seen = "; ".join(
            f"digest {d.hex()[:16]} in " + ", ".join(f"{n}#{seq}" for n, seq in where)
            for d, where in sorted(digests.items())
        )
        violations.append(Violation(
            invariant="no_equivocation", node=name, session=session,
            detail=f"{name} signed {len(digests)} different {step} messages to {to}: {seen}"))


def _check_dkd(
    sessions: Iterable[_SessionOnNode], violations: list[Violation], checked: dict[str, int]
) -> None:
    by_key: dict[tuple[str, str], dict[str, list[str]]] = {}
    for s in sessions:
        if not s.ok or "fingerprint" not in s.result or "context" not in s.result:
            continue
        account = str(
            s.result.get("account") or s.result.get("account_id") or s.params.get("account") or ""
        )
        key = (account, str(s.result["context"]))
        checked["dkd_agreement"] += 1
        by_key.setdefault(key, {}).setdefault(str(s.result["fingerprint"]), []).append(
            f"{s.node}/{s.session[:12]}"
        )
    for (account, context), fps in sorted(by_key.items()):
        if len(fps) > 1:
            shown = "; ".join(f"{fp[:16]} on {', '.join(w)}" for fp, w in sorted(fps.items()))
            violations.append(Violation(
                invariant="dkd_agreement",
                detail=f"account {account or '?'} context {context!r} derived "
                       f"{len(fps)} different keys: {shown}"))


def _check_ends(
    sessions: Iterable[_SessionOnNode],
    deadline: float | None,
    last_heal: float | None,
    violations: list[Violation],
    checked: dict[str, int],
    deadlines: Mapping[str, float] | None = None,
) -> None:
    for s in sessions:
        if s.started_ts is None or not s.session:
            continue  # journal-level records (checkpoints) or evidence without a start
        checked["sessions_end"] += 1
        if s.ended_ts is None:
            violations.append(Violation(
                invariant="sessions_end", node=s.node, session=s.session,
                detail=f"{s.choreography} session started at {s.started_ts:.3f} never ended"))
        elif (limit := (deadlines or {}).get(s.choreography, deadline)) is not None:
            due = max(s.started_ts, last_heal or 0.0) + limit
            if s.ended_ts > due:
                violations.append(Violation(
                    invariant="sessions_end", node=s.node, session=s.session,
                    detail=f"{s.choreography} session ended {s.ended_ts - due:.3f} s after its "
                           f"deadline ({limit} s after start or last heal)"))
