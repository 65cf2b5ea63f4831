"""Invariant checkers over real journals with real signatures: clean runs pass, planted
violations (equivocation, divergent DKD keys, unended sessions, forged or damaged evidence)
fail with a report that names them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec

from aura_node.crypto.group import Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.harness.invariants import InvariantReport, NodeJournal, check_invariants
from aura_node.harness.simulation import dealt_account
from aura_node.harness.trace import build_trace, render_mermaid, render_text
from aura_node.journal import Journal, JournalEntry
from aura_node.protocols import engine as eng
from aura_node.protocols.account import KIND_ACCOUNT, encode_established
from aura_node.protocols.envelope import Envelope, encode_envelope, seal
from aura_node.protocols.epochs import root_fact
from tests.epoch_support import epoch_records, reshared


class Commit(msgspec.Struct, frozen=True, kw_only=True):
    value: int


class Reveal(msgspec.Struct, frozen=True, kw_only=True):
    value: int


@dataclass
class Node:
    name: str
    key: DeviceKey
    dir: Path
    entries: list[JournalEntry]

    @property
    def journal(self) -> NodeJournal:
        return NodeJournal(name=self.name, public_key=self.key.public, journal_dir=self.dir)

    def add(self, session: str, kind: str, body: msgspec.Struct, ts: float) -> None:
        self.entries.append(JournalEntry(session=session, kind=kind,
                                         body=eng.encode_body(body), ts=ts))

    def start(self, session: str, role: str, roles: dict[str, str], ts: float,
              choreography: str = "dkd", **params: object) -> None:
        self.add(session, eng.KIND_START, eng.StartBody(
            choreography=choreography, role=role, self_name=self.name, roles=roles,
            params=dict(params), now=ts, entropy=secrets.token_bytes(32)), ts)

    def send(self, session: str, to: list[str], env: Envelope, ts: float) -> None:
        self.add(session, eng.KIND_OUT, eng.OutBody(to=to, envelope=encode_envelope(env)), ts)

    def receive(self, session: str, sender: str, env: Envelope, ts: float) -> None:
        self.add(session, eng.KIND_IN, eng.InBody(
            sender=sender, sender_role="participant", envelope=encode_envelope(env), now=ts), ts)

    def complete(self, session: str, ts: float, **result: object) -> None:
        self.add(session, eng.KIND_COMPLETE, eng.CompleteBody(result=dict(result)), ts)

    def flush(self) -> None:
        with Journal.open(self.dir, self.key) as j:
            j.append_batch(self.entries)
        self.entries = []


def _nodes(tmp_path: Path, *names: str) -> dict[str, Node]:
    return {n: Node(n, DeviceKey.generate(), tmp_path / n / "journal", []) for n in names}


def _dkd_run(nodes: dict[str, Node], session: str, pair: tuple[str, str], fingerprint: str,
             t: float, commit: int = 7) -> None:
    """A two-party run: each commits to the other, both complete with ``fingerprint``."""
    a, b = pair
    roles = {a: "participant", b: "participant"}
    for n in pair:
        nodes[n].start(session, "participant", roles, t, account="acct1")
    for n, other in ((a, b), (b, a)):
        env = seal(nodes[n].key, choreography="dkd", session=session, message=Commit(value=commit))
        nodes[n].send(session, [other], env, t + 0.1)
        nodes[other].receive(session, n, env, t + 0.2)
    for n in pair:
        nodes[n].complete(session, t + 0.3, context="mail", fingerprint=fingerprint,
                          account="acct1")


def _report(nodes: dict[str, Node]) -> InvariantReport:
    for n in nodes.values():
        n.flush()
    return check_invariants([n.journal for n in nodes.values()])


def test_clean_journals_pass_and_every_checker_ran(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2", "d3")
    _dkd_run(nodes, secrets.token_hex(16), ("d1", "d2"), "f" * 64, 1000.0)
    _dkd_run(nodes, secrets.token_hex(16), ("d2", "d3"), "f" * 64, 1001.0)
    report = _report(nodes)
    assert report.ok, report.to_json()
    assert report.checked == {
        "journal_verifies": 3, "evidence_signed": 8, "no_equivocation": 4,
        "dkd_agreement": 4, "sessions_end": 4, "epoch_agreement": 0,
    }


def test_a_split_epoch_is_caught(tmp_path: Path) -> None:
    """d1 and d2 journaled epoch 1 of the account, d3 (still a holder) never learnt it: the
    holders disagree until d3 journals the fact too."""
    nodes = _nodes(tmp_path, "d1", "d2", "d3")
    keys = {n: x.key for n, x in nodes.items()}
    secret = Scalar.from_int(4242)
    genesis = dealt_account({n: k.public for n, k in keys.items()}, 2, {}, 0, secret=secret,
                            session_id="genesis")
    for n, first in genesis.items():
        nodes[n].entries.append(JournalEntry(session="genesis", kind=KIND_ACCOUNT,
                                             body=encode_established(first), ts=1.0))
    record = genesis["d1"].account
    fact, est = reshared(root_fact(record), secret=secret, dealers=[keys["d1"], keys["d2"]],
                         devices=keys, t=3)
    for n in ("d1", "d2"):
        for kind, body in epoch_records(fact, est[n]):
            nodes[n].entries.append(JournalEntry(session="", kind=kind, body=body, ts=2.0))
    report = _report(nodes)
    [v] = report.failed("epoch_agreement")
    assert "d1 at epoch 1" in v.detail and "d3 at epoch 0" in v.detail, v.detail
    assert report.checked["epoch_agreement"] == 1
    for kind, body in epoch_records(fact, est["d3"]):
        nodes["d3"].entries.append(JournalEntry(session="", kind=kind, body=body, ts=3.0))
    assert not _report(nodes).failed("epoch_agreement")


def test_a_choreography_may_have_its_own_session_deadline(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1")
    s = secrets.token_hex(16)
    nodes["d1"].start(s, "participants", {"d1": "participants"}, 1.0, choreography="reshare")
    nodes["d1"].add(s, eng.KIND_FAIL, eng.FailBody(code="timeout", reason="x"), 40.0)
    nodes["d1"].flush()
    journals = [nodes["d1"].journal]
    assert check_invariants(journals, session_deadline=20.0).failed("sessions_end")
    assert check_invariants(journals, session_deadline=20.0,
                            session_deadlines={"reshare": 45.0}).ok


def test_planted_equivocation_is_caught(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2")
    s = secrets.token_hex(16)
    roles = {"d1": "participant", "d2": "participant"}
    for n in nodes.values():
        n.start(s, "participant", roles, 10.0)
    # d1 journals one commitment but d2 holds a different one, both really signed by d1
    said = seal(nodes["d1"].key, choreography="dkd", session=s, message=Commit(value=1))
    other = seal(nodes["d1"].key, choreography="dkd", session=s, message=Commit(value=2))
    nodes["d1"].send(s, ["d2"], said, 10.1)
    nodes["d2"].receive(s, "d1", other, 10.2)
    for n in nodes.values():
        n.add(s, eng.KIND_FAIL, eng.FailBody(code="timeout", reason="x"), 11.0)
    report = _report(nodes)
    [v] = report.violations
    assert v.invariant == "no_equivocation" and v.node == "d1" and v.session == s
    assert "2 different Commit messages to d2" in v.detail


def test_a_faithful_resend_is_not_equivocation(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2")
    s = secrets.token_hex(16)
    _dkd_run(nodes, s, ("d1", "d2"), "a" * 64, 5.0)
    env = seal(nodes["d1"].key, choreography="dkd", session=s, message=Commit(value=7))
    nodes["d1"].send(s, ["d2"], env, 6.0)  # re-sent after a restart: same signed bytes
    assert _report(nodes).ok


def test_planted_divergent_key_is_caught(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2", "d3")
    _dkd_run(nodes, secrets.token_hex(16), ("d1", "d2"), "a" * 64, 1.0)
    _dkd_run(nodes, secrets.token_hex(16), ("d2", "d3"), "b" * 64, 2.0)
    report = _report(nodes)
    [v] = report.violations
    assert v.invariant == "dkd_agreement"
    assert "context 'mail' derived 2 different keys" in v.detail


def test_unended_session_and_late_end_are_caught(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2")
    s1, s2 = secrets.token_hex(16), secrets.token_hex(16)
    roles = {"d1": "participant", "d2": "participant"}
    nodes["d1"].start(s1, "participant", roles, 1.0)  # never ends
    nodes["d2"].start(s2, "participant", roles, 1.0)
    nodes["d2"].add(s2, eng.KIND_FAIL, eng.FailBody(code="vetoed", reason="x"), 50.0)
    for n in nodes.values():
        n.flush()
    journals = [n.journal for n in nodes.values()]
    report = check_invariants(journals)
    [v] = report.violations
    assert v.invariant == "sessions_end" and v.node == "d1" and v.session == s1
    late = check_invariants(journals, session_deadline=30.0, last_heal=10.0)
    assert {x.session for x in late.failed("sessions_end")} == {s1, s2}
    assert check_invariants(journals, session_deadline=45.0, last_heal=10.0).failed(
        "sessions_end")[0].session == s1


def test_forged_evidence_and_damaged_journal_are_caught(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2")
    s = secrets.token_hex(16)
    _dkd_run(nodes, s, ("d1", "d2"), "a" * 64, 1.0)
    real = seal(nodes["d1"].key, choreography="dkd", session=s, message=Reveal(value=3))
    forged = msgspec.structs.replace(real, body=eng.encode_body(Reveal(value=4)))
    nodes["d2"].receive(s, "d1", forged, 2.0)
    report = _report(nodes)
    [v] = report.violations
    assert v.invariant == "evidence_signed" and v.node == "d2" and "does not verify" in v.detail

    seg = sorted(nodes["d1"].dir.glob("*.seg*")) or sorted(
        p for p in nodes["d1"].dir.iterdir() if p.is_file() and p.stat().st_size > 100
    )
    data = bytearray(seg[0].read_bytes())
    data[len(data) // 3] ^= 0xFF  # damage well before the last checkpoint
    seg[0].write_bytes(bytes(data))
    report = check_invariants([n.journal for n in nodes.values()])
    assert any(v.invariant == "journal_verifies" and v.node == "d1" for v in report.violations)


def test_trace_rebuilds_the_session_from_all_journals(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, "d1", "d2", "d3")
    s = secrets.token_hex(16)
    _dkd_run(nodes, s, ("d1", "d2"), "a" * 64, 1.0)
    lost = seal(nodes["d1"].key, choreography="dkd", session=s, message=Reveal(value=1))
    nodes["d1"].send(s, ["d2"], lost, 1.25)  # never journaled by d2
    for n in nodes.values():
        n.flush()
    faults = [{"t": 1.15, "source": "harness", "op": "kill", "target": "d2"}]
    trace = build_trace([n.journal for n in nodes.values()], s, faults=faults)
    assert trace.nodes == ["d1", "d2"] and trace.roles == {"d1": "participant", "d2": "participant"}
    mermaid = render_mermaid(trace)
    assert mermaid.startswith("sequenceDiagram\n")
    assert "d1->>d2: Commit" in mermaid and "d2->>d1: Commit" in mermaid
    assert "d1-xd2: Reveal (not received)" in mermaid
    assert "fault: kill d2" in mermaid
    assert mermaid.index("started as participant") < mermaid.index("d1->>d2: Commit")
    assert mermaid.index("d1-xd2") < mermaid.rindex("Completed")
    text = render_text(trace)
    assert "Commit" in text and "(not received)" in text and "[fault] kill d2" in text
