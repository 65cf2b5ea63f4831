"""The payment-approval example (``examples/payment_approval``) through the kit's generated
drivers: outcomes, the evidence checks of ``ApprovalQuorum``, operator commands, replay.

No runtime and no network: each device is one generated driver with its own ``NodeServices``
(its key, every other device pinned); the test carries the messages between them, as the
runtime would after its monitor and envelope checks.
"""

from __future__ import annotations

import ast
import io
import random
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import AuraError, WitnessError
from aura_node.harness.simulation import Faults, Simulation
from aura_node.protocols import engine as eng
from aura_node.protocols import registry as plugin_registry
from aura_node.protocols.envelope import encode_envelope, seal
from aura_node.protocols.kit import REGISTERED, Step
from aura_node.protocols.services import NodeServices, PeerInfo
from aura_node.sessions import _monitors as monitors
from examples.payment_approval.choreography import (
    PAYMENT_APPROVAL,
    Decision,
    Params,
    Proposal,
    Vote,
)
from examples.payment_approval.roles import PROTOCOL, ApprovalQuorum, payload, sign_vote

NAME = "payment-approval"
SID = "5e" * 16
KEYS = {n: DeviceKey.from_seed(n.encode() * 32) for n in "abcde"}
INITIATOR = PROTOCOL.drivers["initiator"]
APPROVER = PROTOCOL.drivers["approvers"]
TERMS = {"payee": "acme", "amount": 1250, "memo": "invoice 7"}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "payment_approval"

# Importing the example registered its choreography with this process's node registry (as
# `run --plugin` does in a node). Integration tests in this process compare its registry hash
# with a node's that runs no plugin, so it is taken out again and put back only for these tests.
_CHOREOGRAPHY = plugin_registry._PLUGINS.pop(NAME)


@pytest.fixture(autouse=True)
def _plugin_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(plugin_registry._PLUGINS, NAME, _CHOREOGRAPHY)
    yield
    monitors._project.cache_clear()
    monitors._template.cache_clear()


def services(me: str) -> NodeServices:
    peers = {n: PeerInfo(name=n, role="device", public_key=k.public)
             for n, k in KEYS.items() if n != me}
    return NodeServices(self_name=me, self_role="device", device_key=KEYS[me], peers=peers)


def msg_in(sender: str, role: str, message: msgspec.Struct, now: float = 101.0) -> eng.MessageIn:
    env = seal(KEYS[sender], choreography=NAME, session=SID, message=message)
    return eng.MessageIn(sender=sender, sender_role=role, message=message, envelope=env,
                         now=now)


def sends(effects: list[eng.Effect]) -> list[eng.Send]:
    return [e for e in effects if isinstance(e, eng.Send)]


@dataclass
class Run:
    """One session: the initiator ``a`` and approvers ``b``, ``c``, ``d``."""

    k: int = 2
    approvers: tuple[str, ...] = ("b", "c", "d")

    def __post_init__(self) -> None:
        self.a = INITIATOR(services("a"))
        roles = {"a": "initiator", **dict.fromkeys(self.approvers, "approvers")}
        out = self.a.start(eng.Start(
            session=SID, choreography=NAME, role="initiator", self_name="a", roles=roles,
            params={**TERMS, "k": self.k, "timeout": 30.0}, now=100.0, entropy=b"e" * 32))
        [proposal_send] = sends(out)
        assert proposal_send.to == self.approvers
        assert isinstance(proposal_send.message, Proposal)
        self.proposal = proposal_send.message
        assert eng.ArmTimer(name="deadline", deadline=130.0) in out
        self.drivers = {n: self.approver(n) for n in self.approvers}

    def approver(self, name: str) -> Any:
        d = APPROVER(services(name))
        assert d.start(eng.Start(
            session=SID, choreography=NAME, role="approvers", self_name=name,
            roles={name: "approvers", "a": "initiator"}, params={}, now=100.5,
            entropy=b"f" * 32, opened_by="a")) == []
        assert d.on_message(msg_in("a", "initiator", self.proposal)) == [
            eng.ArmTimer(name="deadline", deadline=101.0 + 30.0 + 5.0)]
        assert d.status()["phase"] == "Voting"
        return d

    def vote(self, name: str, command: str) -> Vote:
        out = self.drivers[name].on_control(
            eng.ControlAction(action=command, args={}, now=102.0))
        [send] = sends(out)
        assert send.to == ("a",) and isinstance(send.message, Vote)
        assert out[-1] == eng.Reply(result={"phase": "Decided"})
        return send.message

    def deliver(self, name: str, vote: Vote) -> list[eng.Effect]:
        return self.a.on_message(msg_in(name, "approvers", vote))


def rejected(effects: list[eng.Effect]) -> str:
    """The reason of the one rejection record ``effects`` hold (the session goes on)."""
    [rec] = effects
    assert isinstance(rec, eng.RecordEvidence) and rec.kind == f"{NAME}.rejected"
    body = eng.decode_rejection(rec.body)
    assert body is not None
    return body.reason


def test_registered_with_its_choreography_and_commands() -> None:
    assert REGISTERED[NAME] is PROTOCOL and PROTOCOL.control
    assert PROTOCOL.commands == ("approve", "reject")
    assert plugin_registry.node_registry()[NAME] is PAYMENT_APPROVAL
    assert PROTOCOL.spec.openers == {
        "Proposal": eng.Opener(sender_role="initiator", role="approvers")}
    # the approvers' drivers take no operator params; the initiator's are checked
    assert APPROVER.params_type is not Params and INITIATOR.params_type is Params
    assert PROTOCOL.spec.validate_params(TERMS) == {**TERMS, "k": 1, "timeout": 60.0}
    for bad, why in (({**TERMS, "payee": ""}, "payee"), ({**TERMS, "amount": 0}, "amount"),
                     ({**TERMS, "k": 0}, "k"), ({**TERMS, "limit": 3}, "unknown field")):
        with pytest.raises(eng.ParamsError, match=why):
            PROTOCOL.spec.validate_params(bad)


def test_bindings_come_from_the_assignment_and_k() -> None:
    start = eng.Start(session=SID, choreography=NAME, role="initiator", self_name="a",
                      roles={"a": "initiator", "b": "approvers", "c": "approvers"},
                      params={**TERMS, "k": 2}, now=0.0, entropy=b"")
    assert PROTOCOL.spec.bindings(start, None) == {"n": 2, "k": 2}


def test_approved_with_k_approvals_and_every_approver_verifies_the_evidence() -> None:
    run = Run(k=2)
    assert run.deliver("b", run.vote("b", "approve")) == []
    assert run.deliver("c", run.vote("c", "reject")) == []  # 1 of 3 rejected: k still possible
    assert run.a.status()["phase"] == "Voting"
    out = run.deliver("d", run.vote("d", "approve"))
    [decision] = sends(out)
    assert decision.to == ("b", "c", "d") and isinstance(decision.message, Decision)
    assert [v.signer for v in decision.message.approvals] == [
        KEYS["b"].public.raw, KEYS["d"].public.raw]
    assert out[-1] == eng.Complete(result={"decision": "approved", "approved_by": ["b", "d"]})
    assert run.a.is_final and run.a.status()["phase"] == "Approved"
    for name, d in run.drivers.items():
        assert d.on_message(msg_in("a", "initiator", decision.message)) == [
            eng.Complete(result={"decision": "approved", "approvals": 2})], name
        assert d.status()["phase"] == "Approved"


def test_rejected_when_k_is_out_of_reach() -> None:
    run = Run(k=2)
    assert run.deliver("b", run.vote("b", "reject")) == []
    out = run.deliver("c", run.vote("c", "reject"))
    assert out == [eng.Fail(code="rejected", reason="2 of 3 rejected")]
    run.a.on_abort("rejected", by_peer=None)  # what the runtime does with the Fail
    assert run.a.status()["phase"] == "Failed"


def test_one_rejection_ends_a_unanimous_approval() -> None:
    run = Run(k=3)
    assert run.deliver("b", run.vote("b", "reject")) == [
        eng.Fail(code="rejected", reason="1 of 3 rejected")]


def test_timed_out_on_both_sides() -> None:
    run = Run(k=3)
    run.deliver("b", run.vote("b", "approve"))
    assert run.a.on_timer(eng.TimerFired(name="deadline", now=130.0)) == [
        eng.Fail(code="timeout", reason="fewer than 3 approvals by the deadline")]
    assert run.a.status()["phase"] == "Failed"
    # an approver whose operator never answered gives up at its own deadline
    [out] = run.drivers["c"].on_timer(eng.TimerFired(name="deadline", now=136.0))
    assert isinstance(out, eng.Fail) and out.code == "timeout"


def test_forged_votes_are_rejected_and_the_session_goes_on() -> None:
    run = Run(k=2)
    genuine = run.vote("b", "approve")
    # c's approval delivered as b's: the signer is not the sender's key
    c_vote = sign_vote(Step(run.drivers["c"], now=0.0), run.proposal, True)
    assert "is not a member" in rejected(run.deliver("b", c_vote))
    assert run.a.status()["phase"] == "Voting"
    cases = {
        "bad signature": msgspec.structs.replace(genuine, signature=bytes(64)),
        "a rejection relabelled as an approval": msgspec.structs.replace(
            sign_vote(Step(run.drivers["b"], now=0.0), run.proposal, False), approve=True),
        "another session": _vote_in_session(run, "b", "ff" * 16),
        "a non-member's key": sign_vote(Step(APPROVER(services("e")), now=0.0),
                                        run.proposal, True),
    }
    for why, vote in cases.items():
        reason = rejected(run.deliver("b", vote))
        assert "payment-approval/vote" in reason, (why, reason)
    assert run.a.status()["phase"] == "Voting"
    assert run.deliver("b", genuine) == []
    # the same approval again (a replayed vote) is one approver, not two
    assert rejected(run.deliver("b", genuine)) == "a second vote from b"
    out = run.deliver("d", run.vote("d", "approve"))
    assert out[-1] == eng.Complete(result={"decision": "approved", "approved_by": ["b", "d"]})


def _vote_in_session(run: Run, name: str, session: str) -> Vote:
    d = APPROVER(services(name))
    d.session = session
    return sign_vote(Step(d, now=0.0), run.proposal, True)


def test_a_decision_without_valid_evidence_is_rejected_by_the_approver() -> None:
    run = Run(k=2)
    b_yes, d_yes = run.vote("b", "approve"), run.vote("d", "approve")
    c = run.drivers["c"]
    run.vote("c", "reject")
    e_yes = sign_vote(Step(APPROVER(services("e")), now=0.0), run.proposal, True)
    c_no = sign_vote(Step(c, now=0.0), run.proposal, False)
    for why, approvals in {"too few": (b_yes,), "duplicate": (b_yes, b_yes),
                           "non-member": (b_yes, e_yes), "a rejection": (b_yes, c_no)}.items():
        out = c.on_message(msg_in("a", "initiator", Decision(approvals=approvals)))
        assert rejected(out), why
        assert c.status()["phase"] == "Decided"
    out = c.on_message(msg_in("a", "initiator", Decision(approvals=(b_yes, d_yes))))
    assert out == [eng.Complete(result={"decision": "approved", "approvals": 2})]


def test_operator_commands_out_of_phase_change_nothing() -> None:
    run = Run(k=2)
    b = run.drivers["b"]
    run.vote("b", "approve")
    assert b.on_control(eng.ControlAction(action="reject", args={}, now=103.0)) == [
        eng.Reply(result={"phase": "Decided", "error": (
            "payment-approval/approvers has no control action 'reject' in phase Decided "
            "(its actions: approve, reject)")})]
    assert b.status()["phase"] == "Decided"
    out = run.a.on_control(eng.ControlAction(action="approve", args={}, now=103.0))
    assert out[0].result["error"].startswith(  # type: ignore[union-attr]
        "payment-approval/initiator has no control action 'approve'")


def test_the_witness_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        ApprovalQuorum(terms=Params(payee="x", amount=1), approvals=())  # type: ignore[call-arg]
    run = Run(k=2)
    b_yes, d_yes = run.vote("b", "approve"), run.vote("d", "approve")
    members = [KEYS[n].public for n in "bcd"]
    q = ApprovalQuorum.verify((b_yes, d_yes), members=members, session=SID,
                              terms=run.proposal, k=2)
    assert q.approvals == (b_yes, d_yes) and q.terms == run.proposal
    with pytest.raises(WitnessError, match="2 of 3 members needed"):
        ApprovalQuorum.verify((b_yes,), members=members, session=SID, terms=run.proposal, k=2)
    other = msgspec.structs.replace(run.proposal, amount=99)
    with pytest.raises(WitnessError, match="does not verify"):
        ApprovalQuorum.verify((b_yes, d_yes), members=members, session=SID, terms=other, k=2)
    # what a vote signs names the terms and the verdict, nothing else
    assert payload(run.proposal, True) != payload(run.proposal, False)


# --- replay after a crash -------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def test_an_approver_replays_its_signed_vote_byte_for_byte() -> None:
    run = Run(k=2)
    vote = run.vote("b", "approve")
    start = eng.StartBody(choreography=NAME, role="approvers", self_name="b",
                          roles={"b": "approvers", "a": "initiator"}, params={}, now=100.5,
                          entropy=b"f" * 32, opened_by="a")
    proposal = seal(KEYS["a"], choreography=NAME, session=SID, message=run.proposal)
    out = seal(KEYS["b"], choreography=NAME, session=SID, message=vote)
    bodies: list[tuple[str, msgspec.Struct]] = [
        (eng.KIND_START, start),
        (eng.KIND_IN, eng.InBody(sender="a", sender_role="initiator",
                                 envelope=encode_envelope(proposal), now=101.0)),
        (eng.KIND_CONTROL, eng.ControlBody(action="approve", args={}, now=102.0)),
        (eng.KIND_OUT, eng.OutBody(to=["a"], envelope=encode_envelope(out))),
    ]
    recs = [Rec(seq=i, ts=100.0, session=SID, kind=k, body=eng.encode_body(b))
            for i, (k, b) in enumerate(bodies)]
    d = APPROVER.rehydrate(recs, services("b"))
    assert d is not None and d.status()["phase"] == "Decided" and d.resume(103.0) == []
    # the vote was never made durable: the replay computes the same one and sends it
    d = APPROVER.rehydrate(recs[:3], services("b"))
    assert d is not None and sends(d.resume(103.0)) == [eng.Send(to=("a",), message=vote)]
    # a journal that says it voted otherwise is not this code's history
    forged = seal(KEYS["b"], choreography=NAME, session=SID,
                  message=msgspec.structs.replace(vote, approve=False))
    bad = [*recs[:3], Rec(seq=3, ts=100.0, session=SID, kind=eng.KIND_OUT, body=eng.encode_body(
        eng.OutBody(to=["a"], envelope=encode_envelope(forged))))]
    with pytest.raises(eng.NondeterminismError):
        APPROVER.rehydrate(bad, services("b"))


def code_lines(path: Path) -> int:
    """Lines holding code: no blank lines, comments or docstrings (issue 10's measure)."""
    src = path.read_text()
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)):
            docs.update(range(node.body[0].lineno, (node.body[0].end_lineno or 0) + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - docs)


def test_the_example_stays_within_150_code_lines() -> None:
    files = sorted(EXAMPLE.glob("*.py"))
    assert {f.name for f in files} == {"__init__.py", "choreography.py", "roles.py"}
    assert code_lines(Path(__file__)) > 100  # the measure counts code
    assert sum(code_lines(f) for f in files) <= 150


# --- simulation seeds: the real session runtime, monitors and journal under faults ----------


def _answer(sim: Simulation, node: str, sid: str, command: str, tries: int = 30) -> None:
    """An operator who answers once, retrying while the node is down or the proposal has not
    reached it yet (or a crash lost the answer before it was journaled)."""
    try:
        reply = sim.control(node, sid, command)
    except AuraError:
        reply = None
    if reply is None and tries > 0 and sim.nodes[node].session(sid) is not None and (
            sim.nodes[node].session(sid).outcome != "active"):  # type: ignore[union-attr]
        return  # over: nothing left to answer
    if reply is None and tries > 0:
        sim.at(sim.now + 1.0, f"{node} {command} again",
               lambda: _answer(sim, node, sid, command, tries - 1))


@pytest.mark.parametrize("seed", range(12))
def test_simulated_seeds_under_drops_duplicates_reordering_and_crashes(seed: int) -> None:
    shape = random.Random(f"payment-approval/{seed}")
    approvers = ["d2", "d3", "d4"]
    sim = Simulation(seed, dict.fromkeys(["d1", *approvers], "device"))
    k = shape.randint(1, 3)
    answers = {a: shape.choice(["approve", "approve", "reject", None]) for a in approvers}
    sid = sim.start("d1", NAME, roles={"d1": "initiator", **dict.fromkeys(approvers, "approvers")},
                    params={**TERMS, "k": k, "timeout": 30.0})
    for a, command in answers.items():
        if command is not None:
            sim.at(sim.now + shape.uniform(0.05, 8.0), f"{a} {command}",
                   lambda a=a, command=command: _answer(sim, a, sid, command))
    sim.faults = replace(Faults.chaos(0.0), until=sim.now + 20.0)
    sim.run()
    for node in sim.nodes.values():
        if not node.up:
            sim.restart(node.name)
    sim.run()
    report = sim.check(deadline=120.0, last_heal=sim.faults.settle_after)
    assert report.ok, report.to_json()
    ends = sim.sessions(sid)
    assert set(ends) == {"d1", *approvers}, answers  # the proposal reached every approver
    assert all(s.outcome != "active" for s in ends.values()), {
        n: (s.state, s.outcome) for n, s in ends.items()}
    for s in ends.values():
        assert s.error is None or s.error["code"] in ("rejected", "timeout", "aborted_by_peer"), (
            s.error)
    mine = ends["d1"]
    yes = [a for a, c in answers.items() if c == "approve"]
    no = [a for a, c in answers.items() if c == "reject"]
    if mine.outcome == "completed":
        assert mine.result is not None
        assert len(mine.result["approved_by"]) == k and set(mine.result["approved_by"]) <= set(yes)
    else:
        assert mine.error is not None
        assert mine.error["code"] != "rejected" or len(no) > len(approvers) - k
    for a in approvers:  # an approver completes only on valid evidence of an approval
        if ends[a].outcome == "completed":
            assert mine.outcome == "completed" and ends[a].result == {
                "decision": "approved", "approvals": k}
    st = sim.stats
    if len(yes) >= k and st.dropped == st.crashes == st.lost_down == 0:
        assert mine.outcome == "completed", (answers, k, mine.error)
