"""DKD consent (issue 11 item 2): the policy, the rate limit, signed refusals, operator approval.

The policy tests are pure (no world). The protocol tests run the product simulation
(:mod:`aura_node.harness.simulation`: the daemon's own session runtime, monitors and journal
format): a refusal reaches the requester as a signed ``DkdCommitment`` answer and ends its
session with the reason, not a timeout; a partial refusal still derives the key when the others
can make ``t``; a parked request waits for ``approve`` / ``refuse``, survives a crash of the
participant (the verdict is replayed from the journal, not re-decided), and times out with the
session's deadline.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from aura_node.config import DkdRule, DkdSection, parse_config, render_config
from aura_node.errors import ConfigError
from aura_node.harness.simulation import Simulation, reference_fingerprint
from aura_node.protocols import engine as eng
from aura_node.protocols.dkd.choreography import DkdCommitment
from aura_node.protocols.dkd.consent import (
    KIND_CONSENT,
    ConsentDecision,
    ConsentKeeper,
    decode_decision,
    encode_decision,
)
from aura_node.protocols.dkd.roles import session_params, session_roles

ACCOUNT = "acct-1"
DEVICES = ("d1", "d2", "d3")


def keeper(*rules: DkdRule, limit: int = 0, window: float = 60.0) -> ConsentKeeper:
    return ConsentKeeper(section=DkdSection(rate_limit=limit, rate_window_seconds=window),
                         rules=rules)


def decide(k: ConsentKeeper, requester: str = "d1", context: str = "mail", now: float = 0.0,
           account: str = ACCOUNT) -> ConsentDecision:
    return k.decide(account_id=account, account_devices=DEVICES, requester=requester,
                    context=context, now=now)


# --- the policy, pure ---------------------------------------------------------------------------


def test_default_policy_lets_the_account_devices_derive_anything_and_refuses_others() -> None:
    k = keeper()
    assert decide(k, "d2", "anything/at all").verdict == "answer"
    out = decide(k, "x9")
    assert out.verdict == "refuse"
    assert "x9 is not a device of account acct-1" in out.reason


def test_rules_match_context_globs_requesters_and_accounts_in_order() -> None:
    k = keeper(DkdRule(account=ACCOUNT, contexts=("ssh/*",), requesters=("d2",)),
               DkdRule(contexts=("backup",), approval="operator"))
    assert decide(k, "d2", "ssh/github").verdict == "answer"
    assert decide(k, "d2", "backup").verdict == "ask"  # the second rule, any account device
    assert decide(k, "d3", "backup").verdict == "ask"
    refused = decide(k, "d3", "ssh/github")  # ssh/* is d2's only
    assert refused.verdict == "refuse"
    assert "no [[dkd.policy]] rule" in refused.reason and "'ssh/github'" in refused.reason
    assert decide(k, "d2", "SSH/github").verdict == "refuse"  # globs are case-sensitive
    assert decide(k, "x9", "backup").verdict == "refuse"  # not a device: no rule names it


def test_rules_of_another_account_leave_the_default_policy() -> None:
    k = keeper(DkdRule(account="other", contexts=("x",)))
    assert decide(k, "d2", "mail").verdict == "answer"
    assert decide(k, "d2", "mail", account="other").verdict == "refuse"


def test_rate_limit_counts_admitted_requests_per_requester_in_a_sliding_window() -> None:
    k = keeper(limit=2, window=10.0)
    for i, now in enumerate((0.0, 1.0)):
        d = decide(k, "d2", now=now)
        assert d.verdict == "answer"
        k.note(f"s{i}", d)
        k.note(f"s{i}", d)  # live, then replayed: counted once
    over = decide(k, "d2", now=5.0)
    assert over.verdict == "refuse" and over.reason.startswith("rate limit: d2 made 2 requests")
    k.note("s-over", over)  # a refusal costs nothing
    assert decide(k, "d3", now=5.0).verdict == "answer"  # per requester
    assert decide(k, "d2", now=10.5).verdict == "answer"  # the first one left the window


def test_recall_seeds_the_limiter_from_journaled_decisions_inside_the_window() -> None:
    k = keeper(limit=2, window=10.0)
    bodies = [("old", encode_decision(decide(k, "d2", now=0.0))),
              ("refused", encode_decision(ConsentDecision(verdict="refuse", reason="policy: x",
                                                          requester="d2", at=14.0))),
              ("new", encode_decision(decide(k, "d2", now=15.0))),
              ("junk", b"\x01\x02")]
    assert k.recall(bodies, now=20.0) == 1  # "old" left the window; refusals do not count
    assert decide(k, "d2", now=20.0).verdict == "answer"
    k.note("again", decide(k, "d2", now=20.0))
    assert decide(k, "d2", now=21.0).reason.startswith("rate limit")


def test_rate_limit_zero_is_no_limit() -> None:
    k = keeper(limit=0)
    for i in range(100):
        k.note(f"s{i}", decide(k, "d2", now=float(i) / 100))
    assert decide(k, "d2", now=1.0).verdict == "answer"


# --- the config ---------------------------------------------------------------------------------

BASE = '[node]\nname = "d1"\n'


def test_config_parses_and_renders_dkd_rules() -> None:
    cfg = parse_config(BASE + '[dkd]\nrate_limit = 3\n[[dkd.policy]]\ncontexts = ["ssh/*"]\n'
                       'requesters = ["d2"]\n[[dkd.policy]]\naccount = "a1"\n'
                       'approval = "operator"\n')
    assert cfg.dkd.rate_limit == 3
    assert cfg.dkd_policy == (DkdRule(contexts=("ssh/*",), requesters=("d2",)),
                              DkdRule(account="a1", approval="operator"))
    assert parse_config(render_config(cfg)) == cfg
    assert parse_config(BASE).dkd_policy == ()


@pytest.mark.parametrize(("text", "expected"), [
    ('[[dkd.policy]]\napproval = "maybe"\n', "[dkd.policy.0] approval must be one of auto, "
                                             "operator, got 'maybe'"),
    ('[[dkd.policy]]\ncontexts = []\n', "[dkd.policy.0] contexts must be a non-empty list"),
    ('[[dkd.policy]]\ncontexts = "mail"\n', "contexts must be a non-empty list"),
    ('[[dkd.policy]]\nrequesters = ["Bad Name"]\n', "[dkd.policy.0] requesters entry must be"),
    ('[[dkd.policy]]\naccount = ""\n', "[dkd.policy.0] account must be an account id"),
    ('[[dkd.policy]]\ncontext = ["x"]\n', "unknown key(s) in [dkd.policy.0]: context"),
    ('[dkd]\nrate_limit = -1\n', "[dkd] rate_limit = -1 is out of range"),
    ('[dkd]\nrate_window_seconds = 0\n', "[dkd] rate_window_seconds = 0 is out of range"),
    ('[dkd]\npolicy = 3\n', "dkd.policy must be an array of tables"),
])
def test_config_refuses_bad_dkd_values_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, source="config.toml")
    assert expected in info.value.message and "\n" not in info.value.message, info.value.message


# --- the protocol, in the simulation ------------------------------------------------------------


def world(n: int = 3, t: int = 2, *, seed: int = 1) -> Simulation:
    names = [f"d{i}" for i in range(1, n + 1)]
    sim = Simulation(seed, dict.fromkeys(names, "device"))
    sim.deal_account(names, t)
    return sim


def start(sim: Simulation, *, context: str = "mail", participants: list[str] | None = None,
          initiator: str = "d1") -> str:
    args: dict[str, Any] = {"context": context}
    if participants is not None:
        args["participants"] = participants
    p = session_params(args, sim.nodes[initiator].services)
    return sim.start(initiator, "dkd", roles=session_roles(p), params=p,
                     session=sim.new_session_id())


def error(sim: Simulation, node: str, sid: str) -> dict[str, str]:
    entry = sim.nodes[node].session(sid)
    assert entry is not None and entry.outcome == "failed" and entry.error is not None, (
        node, entry and entry.outcome)
    return entry.error


def answers_in(sim: Simulation, node: str, sid: str) -> list[DkdCommitment]:
    return [eng.decode_message(ev.envelope, DkdCommitment) for ev in sim.nodes[node].evidence(sid)
            if isinstance(ev, eng.Received) and ev.envelope.step == "DkdCommitment"]


def consent_records(sim: Simulation, node: str, sid: str) -> list[ConsentDecision]:
    return [decode_decision(r.body) for r in sim.nodes[node].records(sid)
            if r.kind == KIND_CONSENT]


ONLY_SSH = DkdRule(contexts=("ssh/*",))


def test_refusal_is_signed_journaled_on_both_sides_and_ends_the_requester_at_once() -> None:
    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[ONLY_SSH])
    t0 = sim.now
    sid = start(sim, context="mail")
    sim.run()
    mine = error(sim, "d1", sid)
    ended = sim.nodes["d1"].session(sid).ended  # type: ignore[union-attr]
    assert ended is not None and ended - t0 < 1.0  # ended by the refusal, not at the 30 s deadline
    assert mine["code"] == "refused"
    assert "d2 refused: policy: no [[dkd.policy]] rule of this node lets d1 derive context " \
           "'mail'" in mine["reason"]
    theirs = error(sim, "d2", sid)
    assert theirs["code"] == "refused" and "refused dkd for d1: policy" in theirs["reason"]
    (answer,) = answers_in(sim, "d1", sid)  # the signed refusal, in the requester's journal
    assert answer.commitment is None and answer.refusal is not None
    assert answer.refusal.reason.startswith("policy: no [[dkd.policy]] rule")
    assert [d.verdict for d in consent_records(sim, "d2", sid)] == ["refuse"]
    # the refuser told nobody else: no abort left it (the requester's own abort reached it)
    assert "DkdAbort" not in sim.nodes["d2"].sent_steps(sid)
    # an allowed context still works with the same policy
    ok = start(sim, context="ssh/github")
    sim.run()
    entry = sim.nodes["d1"].session(ok)
    assert entry is not None and entry.outcome == "completed"


def test_a_forged_refusal_is_rejected_not_believed() -> None:
    from aura_node.protocols.dkd.choreography import DkdRefusal
    from aura_node.protocols.envelope import encode_wire, seal

    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[DkdRule(approval="operator")])
    sid = start(sim)
    sim.run(until=sim.now + 1.0)
    forged = DkdRefusal(session=sid, device_id=sim.nodes["d2"].key.device_id, reason="no",
                        signature=b"\0" * 64)
    env = seal(sim.nodes["d2"].key, choreography="dkd", session=sid,
               message=DkdCommitment(refusal=forged))
    sim.inject("d2", "d1", encode_wire(env))
    sim.run(until=sim.now + 1.0)
    entry = sim.nodes["d1"].session(sid)
    assert entry is not None and entry.outcome == "active"
    ((code, reason),) = [(b.code, b.reason) for b in sim.nodes["d1"].rejections(sid)]
    assert code == "witness_invalid" and "bad 'dkd/refusal' signature" in reason
    assert "refusals" not in sim.status("d1", sid)


def test_a_refusal_with_an_unprintable_reason_is_rejected() -> None:
    from aura_node.protocols.dkd.roles import sign_refusal
    from aura_node.protocols.envelope import encode_wire, seal

    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[DkdRule(approval="operator")])
    sid = start(sim)
    sim.run(until=sim.now + 1.0)
    d2 = sim.nodes["d2"]
    refusal = sign_refusal(d2.services, sid, "no\n\x1b[31mfake log line")
    env = seal(d2.key, choreography="dkd", session=sid, message=DkdCommitment(refusal=refusal))
    sim.inject("d2", "d1", encode_wire(env))
    sim.run(until=sim.now + 1.0)
    ((code, reason),) = [(b.code, b.reason) for b in sim.nodes["d1"].rejections(sid)]
    assert code == "dkd_bad_request" and "printable characters" in reason
    # an honest refusal quoting a very long context is cut to fit, not rejected
    assert len(sign_refusal(d2.services, sid, "x" * 10_000).reason) == 500


def test_partial_refusal_goes_on_while_t_is_reachable_then_ends_with_every_reason() -> None:
    sim = world(3, 2)
    sim.set_dkd_policy("d2", rules=[ONLY_SSH])
    sim.set_dkd_policy("d3", section=DkdSection(rate_limit=1))
    sid = start(sim)
    sim.run()
    entry = sim.nodes["d1"].session(sid)
    assert entry is not None and entry.outcome == "completed", entry and entry.error
    result = entry.result or {}
    assert result["participants"] == ["d1", "d3"]
    account = sim.nodes["d1"].accounts.only().account.account_id
    assert result["fingerprint"] == reference_fingerprint(sim, account, "mail")
    assert error(sim, "d2", sid)["code"] == "refused"
    # both others refuse (d3: its one request a minute is used): t = 2 is out of reach, the
    # requester ends with both reasons
    sid2 = start(sim)
    sim.run()
    reason = error(sim, "d1", sid2)["reason"]
    assert error(sim, "d1", sid2)["code"] == "refused"
    assert "d2 refused: policy:" in reason and "d3 refused: rate limit: d1 made 1 requests" \
        in reason, reason


def test_operator_approval_parks_the_request_until_approve() -> None:
    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[DkdRule(approval="operator")])
    sid = start(sim)
    sim.run(until=sim.now + 5.0)
    assert sim.status("d2", sid)["consent"] == "ask"
    assert sim.status("d2", sid)["phase"] == "Consenting"
    assert sim.nodes["d1"].session(sid).outcome == "active"  # type: ignore[union-attr]
    reply = sim.control("d2", sid, "approve")
    assert reply is not None and reply["decision"] == "approved", reply
    sim.run()
    for node in ("d1", "d2"):
        entry = sim.nodes[node].session(sid)
        assert entry is not None and entry.outcome == "completed", (node, entry and entry.error)
    # a second approve: the session is over, the runtime says so
    with pytest.raises(Exception, match="session is completed"):
        sim.control("d2", sid, "approve")


def test_operator_refusal_carries_its_reason_to_the_requester() -> None:
    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[DkdRule(approval="operator")])
    sid = start(sim)
    sim.run(until=sim.now + 1.0)
    for given in ("x" * 441, "two\nlines"):
        bad = sim.control("d2", sid, "refuse", {"reason": given})
        assert bad is not None and "one line of at most 440 printable" in bad["error"], bad
    reply = sim.control("d2", sid, "refuse", {"reason": "not today"})
    assert reply is not None and reply["decision"] == "refused"
    sim.run()
    assert error(sim, "d1", sid)["reason"].endswith(
        "d2 refused: refused by the operator of d2: not today)")
    assert error(sim, "d2", sid)["code"] == "refused"


def test_approve_of_a_request_the_policy_decided_is_refused_and_changes_nothing() -> None:
    sim = world(3, 3)
    sim.set_dkd_policy("d3", rules=[DkdRule(approval="operator")])
    sid = start(sim)
    sim.run(until=sim.now + 1.0)
    # d2 answered by policy and waits for DkdCollected: approve is no action in its phase
    reply = sim.control("d2", sid, "approve")
    assert reply is not None and "no control action 'approve' in phase CommitmentPhase" \
        in reply["error"], reply


def test_a_parked_request_survives_a_crash_and_keeps_its_journaled_verdict() -> None:
    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[DkdRule(approval="operator")])
    sid = start(sim)
    sim.run(until=sim.now + 1.0)
    sim.crash("d2", downtime=1.0)
    # the operator changes the config while d2 is down: the replay must not re-decide
    sim.set_dkd_policy("d2", rules=[ONLY_SSH])
    sim.run(until=sim.now + 2.0)
    assert sim.nodes["d2"].up
    assert sim.status("d2", sid)["consent"] == "ask"
    assert [d.verdict for d in consent_records(sim, "d2", sid)] == ["ask"]
    assert sim.control("d2", sid, "approve") is not None
    sim.run()
    for node in ("d1", "d2"):
        entry = sim.nodes[node].session(sid)
        assert entry is not None and entry.outcome == "completed", (node, entry and entry.error)


def test_a_parked_request_times_out_with_the_sessions_deadline() -> None:
    sim = world(2, 2)
    sim.set_dkd_policy("d2", rules=[DkdRule(approval="operator")])
    t0 = sim.now
    sid = start(sim)
    sim.run()
    assert error(sim, "d2", sid)["code"] == "timeout"
    ended = sim.nodes["d2"].session(sid).ended  # type: ignore[union-attr]
    assert ended is not None and ended - t0 >= sim.nodes["d2"].protocols.dkd_timeout_seconds
    assert error(sim, "d1", sid)["code"] in ("timeout", "aborted_by_peer")


def test_the_rate_limit_survives_a_restart_of_the_participant() -> None:
    sim = world(2, 2)
    sim.set_dkd_policy("d2", section=DkdSection(rate_limit=1, rate_window_seconds=600.0))
    first = start(sim)
    sim.run()
    assert sim.nodes["d1"].session(first).outcome == "completed"  # type: ignore[union-attr]
    sim.crash("d2", downtime=1.0)
    sim.run(until=sim.now + 2.0)
    assert sim.nodes["d2"].up
    second = start(sim)
    sim.run()
    assert error(sim, "d1", second)["reason"].endswith(
        "d2 refused: rate limit: d1 made 1 requests in the last 600 s (at most 1))")


def test_consent_record_holds_no_secret_and_replays() -> None:
    sim = world(2, 2)
    sid = start(sim)
    sim.run()
    (d,) = consent_records(sim, "d2", sid)
    assert d.verdict == "answer" and d.requester == "d1"
    assert set(msgspec.structs.asdict(d)) == {"verdict", "reason", "requester", "at"}
