"""The payment-approval example between three real node processes (``run --plugin``).

Node ``a`` proposes, ``b`` and ``c`` approve or reject through the control commands the kit
generates (``payment-approval.start|approve|reject``, what ``aura-node ctl call`` sends), and
``ctl session`` reports each side's end. The crash tests SIGKILL an approver and the initiator
mid-session and restart them: the session is rebuilt by replaying its journal and finishes.
This process never imports the example: only the nodes load it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from aura_node.control.protocol import ControlReplyError
from tests.integration.nodeproc import NodeProc, cluster

pytestmark = pytest.mark.e2e

PLUGIN = "examples.payment_approval"
TERMS = {"payee": "acme", "amount": 1250, "memo": "invoice 7"}


@pytest.fixture
def nodes() -> Iterator[dict[str, NodeProc]]:
    with cluster(["a", "b", "c"], plugins=dict.fromkeys("abc", (PLUGIN,))) as procs:
        for n in procs:
            n.start(wait=False)
        for n in procs:
            n.wait_ready()
        for n in procs:
            n.wait_links_up([m.name for m in procs if m is not n])
        yield {n.name: n for n in procs}


def start(a: NodeProc, **params: Any) -> str:
    res = a.ctl("payment-approval.start", approvers=["b", "c"], **{**TERMS, **params})
    assert res["phase"] == "Voting" and len(res["session"]) == 32
    return str(res["session"])


def session(node: NodeProc, sid: str, *, ended: bool = False, phase: str = "",
            timeout: float = 30.0) -> dict[str, Any]:
    """``ctl session`` of ``sid`` on ``node`` once it exists (and has ended, or is in
    ``phase``, if asked)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = node.ctl("session", session=sid)
        except ControlReplyError as exc:
            last = exc
        else:
            if (not ended or last["outcome"] != "active") and (
                    not phase or last["state"] == phase):
                return dict(last)
        time.sleep(0.05)
    raise AssertionError(f"{node.name}: session {sid} not there: {last}\n"
                         + node.log_text()[-3000:])


def refused(node: NodeProc, command: str, code: str, **args: Any) -> str:
    """The one-line message of the error ``node`` answers ``command`` with (code ``code``)."""
    with pytest.raises(ControlReplyError) as exc:
        node.ctl(command, **args)
    assert exc.value.remote_code == code, exc.value.to_json()
    assert "\n" not in exc.value.message
    return exc.value.message


def vote(node: NodeProc, sid: str, command: str) -> dict[str, Any]:
    session(node, sid, phase="Voting")  # the proposal has arrived
    res = node.ctl(f"payment-approval.{command}", session=sid)
    assert res["session"] == sid and res["phase"] == "Decided"
    return res


def test_approved_rejected_and_timed_out(nodes: dict[str, NodeProc]) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    # approved: both approve (k = 2)
    sid = start(a, k=2)
    vote(b, sid, "approve")
    # an operator's second answer is refused and changes nothing
    assert "no control action 'reject' in phase Decided" in refused(
        b, "payment-approval.reject", "conflict", session=sid)
    vote(c, sid, "approve")
    mine = session(a, sid, ended=True)
    assert mine["outcome"] == "completed" and mine["state"] == "Approved"
    assert mine["result"] == {"decision": "approved", "approved_by": ["b", "c"]}
    for n in (b, c):  # each approver verified the evidence in the decision
        theirs = session(n, sid, ended=True)
        assert theirs["result"] == {"decision": "approved", "approvals": 2}, theirs

    # rejected: one rejection makes k = 2 of 2 impossible
    sid = start(a, k=2)
    vote(b, sid, "reject")
    mine = session(a, sid, ended=True)
    assert mine["outcome"] == "failed" and mine["error"] == {
        "code": "rejected", "reason": "1 of 2 rejected"}
    for n in (b, c):  # the initiator's abort ends it everywhere, with the reason
        err = session(n, sid, ended=True)["error"]
        assert err["code"] == "aborted_by_peer" and "rejected: 1 of 2 rejected" in err["reason"]

    # timed out: one approval of k = 2 by the deadline
    sid = start(a, k=2, timeout=1.5)
    vote(b, sid, "approve")
    mine = session(a, sid, ended=True)
    assert mine["error"] == {"code": "timeout",
                             "reason": "fewer than 2 approvals by the deadline"}
    assert session(c, sid, ended=True)["error"]["code"] == "aborted_by_peer"
    # a too-late vote is refused: the session is over
    assert "cannot approve" in refused(c, "payment-approval.approve", "conflict", session=sid)


def test_bad_start_arguments_are_one_clear_error(nodes: dict[str, NodeProc]) -> None:
    a = nodes["a"]
    cases = [
        ({"approvers": ["b", "c"], **TERMS, "amount": -5}, "amount"),
        ({"approvers": ["b", "c"], **TERMS, "k": 3}, "k"),
        ({"approvers": [], **TERMS}, "approvers"),
        ({"approvers": ["b", "zed"], **TERMS}, "zed"),
        ({"approvers": ["b"], **TERMS, "colour": "red"}, "colour"),
    ]
    for args, word in cases:
        assert word in refused(a, "payment-approval.start", "invalid_args", **args)
    refused(a, "payment-approval.approve", "not_found", session="00" * 16)
    assert a.ctl("sessions") == {"sessions": []}


def test_kill_an_approver_and_the_initiator_mid_session(nodes: dict[str, NodeProc]) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    # an approver dies after its session opened, before it answered; back, it still can
    sid = start(a, k=2)
    vote(b, sid, "approve")
    session(c, sid, phase="Voting")
    c.kill()
    c.start()
    assert session(c, sid, phase="Voting")["outcome"] == "active"
    c.wait_links_up(["a", "b"])
    vote(c, sid, "approve")
    assert session(a, sid, ended=True)["result"]["approved_by"] == ["b", "c"]
    assert session(c, sid, ended=True)["result"] == {"decision": "approved", "approvals": 2}

    # an approver dies right after answering: its journaled vote is what counts
    sid = start(a, k=2)
    vote(b, sid, "approve")
    b.kill()
    b.start()
    assert session(b, sid)["state"] in ("Decided", "Approved")
    vote(c, sid, "approve")
    assert session(a, sid, ended=True)["outcome"] == "completed"
    assert session(b, sid, ended=True)["result"]["approvals"] == 2

    # the initiator dies holding one approval; the second arrives while it is down
    sid = start(a, k=2)
    vote(b, sid, "approve")
    session(a, sid)  # (b's vote may or may not be journaled by a yet: both must work)
    a.kill()
    vote(c, sid, "approve")
    a.start()
    mine = session(a, sid, ended=True)
    assert mine["outcome"] == "completed", mine
    # in arrival order, and b's vote may reach a again only after the restart, after c's
    assert sorted(mine["result"]["approved_by"]) == ["b", "c"], mine
    for n in (b, c):
        assert session(n, sid, ended=True)["result"]["approvals"] == 2
    for n in (a, b, c):
        assert "rehydrate_failed" not in n.log_text()
        assert '"code": "nondeterminism"' not in n.log_text()
