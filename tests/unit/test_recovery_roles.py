"""Guardian recovery: approvals, cooldown, veto, shares, reconstruction, rejection.

Every run goes through the product simulation (:mod:`aura_node.harness.simulation`): each node
is the daemon's own ``SessionRuntime`` with its choreography monitors, signed envelopes and
journal, so what is asserted is what an operator or a peer can observe - the session's outcome
and error, the runtime's view of it (``ctl session show``: phase, approvals, notices), the
journal (``recovery.rejected`` records, misbehaviour evidence, what was sent), the armed
timers. A hostile peer is modelled on the wire (``Simulation.inject`` of a message sealed with
its own key, or ``intercept`` swapping its honest message for a lie). The projection, monitor
and conformance checks at the end are pure and need no world.

The world: devices d1, d2 and guardians g1..g3 hold a dealt account (2 of 2 devices, 2 of 3
guardians); n1 is the new device. The cooldown is 600 virtual seconds, so :func:`settle`
(10 s) delivers everything in flight without reaching a deadline.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from aura_node.choreo import Choreography
from aura_node.config import ProtocolSection
from aura_node.crypto import dkd
from aura_node.crypto.group import Point, Scalar
from aura_node.crypto.recovery import recovery_binding
from aura_node.crypto.seal import seal_share
from aura_node.crypto.shamir import Share
from aura_node.harness.simulation import Faults, Simulation
from aura_node.protocols import engine as eng
from aura_node.protocols.account import open_held_share
from aura_node.protocols.envelope import decode_wire, encode_wire, seal
from aura_node.protocols.recovery import roles as rec
from aura_node.protocols.recovery.choreography import (
    GuardianApproval,
    RecoveryAbort,
    RecoveryComplete,
    RecoveryPending,
    RecoveryRequest,
    SealedRecoveryShare,
    ShareRequest,
)
from aura_node.protocols.recovery.witnesses import sign_approval
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import PeerRole
from aura_node.session.conformance import check_conformance
from aura_node.sessions import SessionEntry

NODES: dict[str, PeerRole] = {
    "d1": "device", "d2": "device", "g1": "guardian", "g2": "guardian", "g3": "guardian",
    "n1": "device",
}
GUARDIANS = ("g1", "g2", "g3")
OTHERS = ("g1", "g2", "g3", "d1", "d2")
PROTOCOLS = ProtocolSection(recovery_cooldown_seconds=600.0)


def world(seed: int = 0, *, duplicates: float = 0.0,
          pins: dict[str, list[str]] | None = None) -> Simulation:
    sim = Simulation(seed, NODES, faults=Faults(duplicate=duplicates), protocols=PROTOCOLS,
                     pins=pins)
    sim.deal_account(["d1", "d2"], 2, GUARDIANS, 2)
    return sim


def account_id(sim: Simulation) -> str:
    return sim.nodes["d1"].accounts.only().account.account_id


def start_recovery(sim: Simulation, guardians: tuple[str, ...] = GUARDIANS) -> str:
    params = rec.start_params({"account": account_id(sim), "guardians": list(guardians)},
                              sim.nodes["n1"].services)
    return sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)


def settle(sim: Simulation, seconds: float = 10.0) -> None:
    """Deliver what is in flight; ``seconds`` of virtual time, far below every deadline."""
    sim.run(until=sim.now + seconds)


def entry(sim: Simulation, node: str, sid: str) -> SessionEntry:
    e = sim.nodes[node].session(sid)
    assert e is not None, f"{node} has no session {sid}"
    return e


def status(sim: Simulation, node: str, sid: str) -> dict[str, Any]:
    return sim.status(node, sid)


def rejected(sim: Simulation, node: str, sid: str) -> list[eng.RejectionBody]:
    return sim.nodes[node].rejections(sid)


def sent_steps(sim: Simulation, node: str, sid: str) -> list[str]:
    return sim.nodes[node].sent_steps(sid)


def received_steps(sim: Simulation, node: str, sid: str) -> list[str]:
    return [ev.envelope.step for ev in sim.nodes[node].evidence(sid)
            if isinstance(ev, eng.Received)]


def approve(sim: Simulation, sid: str, *names: str) -> None:
    for n in names:
        out = sim.control(n, sid, "approve")
        assert out == {"session": sid, "state": "AwaitingThreshold"}


def completed(sim: Simulation, node: str, sid: str) -> bool:
    return entry(sim, node, sid).outcome == "completed"


def failed(sim: Simulation, node: str, sid: str) -> dict[str, str]:
    e = entry(sim, node, sid)
    assert e.outcome == "failed" and e.error is not None, f"{node} did not fail: {e.outcome}"
    return e.error


def hold(sim: Simulation, step: str, to: str, *, release_after: float | None = None,
         sender: str | None = None) -> list[bytes]:
    """From now on every ``step`` message to ``to`` (from ``sender``, default anyone) is
    taken off the network (returned, for a test to deliver late) or, with ``release_after``,
    delivered that many seconds late."""
    held: list[bytes] = []

    def intercept(src: str, dst: str, payload: bytes) -> bytes | None:
        if dst == to and decode_wire(payload).envelope.step == step and sender in (None, src):
            held.append(payload)
            if release_after is not None:
                sim.post(src, dst, payload, at=sim.now + release_after)
            return None
        return payload

    sim.intercept = intercept
    return held


def run_dropping(sim: Simulation, step: str, to: str) -> list[bytes]:
    """Deliver what is in flight (no deadline reached), losing every ``step`` message to
    ``to``; returns the lost payloads."""
    lost = hold(sim, step, to)
    settle(sim)
    sim.intercept = None
    return lost


def fingerprint(sim: Simulation, names: list[str], context: str) -> str:
    """The DKD key of ``context`` from the shares ``names`` hold (opened with their own keys),
    through the protocol's maths: partials with DLEQ proofs, verified, combined, derived."""
    est = sim.nodes[names[0]].accounts.only()
    acct = est.account
    base = dkd.dkd_base(acct.account_id, context)
    commitments = acct.commitments("devices")
    parts = []
    for n in names:
        e = sim.nodes[n].accounts.only()
        share = open_held_share(e.account, e.shares[0], sim.nodes[n].key)
        ctx = dkd.proof_context(account_id=acct.account_id, context=context, session_id="s",
                                device_id=str(share.index))
        pub = commitments.public_share(share.index)
        p = dkd.partial(share=share, base=base, public_share=pub, proof_ctx=ctx)
        parts.append(dkd.verify_partial(p, base=base, public_share=pub, proof_ctx=ctx))
    k = dkd.combine(parts, threshold=acct.threshold)
    return dkd.derive(k, acct.account_id, context).fingerprint


def no_share_released(sim: Simulation, sid: str) -> None:
    for node in sim.nodes.values():
        assert "SealedRecoveryShare" not in sent_steps(sim, node.name, sid), node.name
        assert "SealedRecoveryShare" not in received_steps(sim, node.name, sid), node.name


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_recovery_restores_the_account_on_the_new_device(seed: int) -> None:
    sim = world(seed, duplicates=0.3)
    acct = account_id(sim)
    before = fingerprint(sim, ["d1", "d2"], "mail")
    sid = start_recovery(sim)
    settle(sim)
    # every guardian has the request, its operator a decision to make (`recovery pending`)
    for g in GUARDIANS:
        st = status(sim, g, sid)
        assert st["phase"] == "Deciding", (g, st)
        assert {k: st[k] for k in ("session", "account", "new_device")} == {
            "session": sid, "account": acct, "new_device": "n1"}
    approve(sim, sid, "g1", "g3")
    settle(sim)
    st = status(sim, "n1", sid)
    assert st["state"] == "CollectingShares" and st["approvals"] == ["g1", "g3"]
    assert st["account"] == acct
    # the devices heard of it from the guardians (not from the new device)
    for d in ("d1", "d2"):
        ds = status(sim, d, sid)
        assert ds["phase"] == "MayVeto" and set(ds["notified_by"]) == set(GUARDIANS)
        assert "n1" not in {ev.sender for ev in sim.nodes[d].evidence(sid)
                            if isinstance(ev, eng.Received)}
    # no share before the cooldown
    assert not any("SealedRecoveryShare" in sent_steps(sim, g, sid) for g in GUARDIANS)
    sim.run()
    assert entry(sim, "n1", sid).result == {"session": sid, "account": acct,
                                            "guardians": list(GUARDIANS), "state": "Completed"}
    est = sim.nodes["n1"].accounts.only()
    orig = sim.nodes["d1"].accounts.only().account
    assert est.account.public_key == orig.public_key and est.account.threshold == 1
    assert est.account.to_json()["devices"] == ["n1"]
    assert fingerprint(sim, ["n1"], "mail") == before
    # the non-approving guardian released nothing
    assert "SealedRecoveryShare" not in sent_steps(sim, "g2", sid)
    for n in OTHERS:
        assert completed(sim, n, sid), n
    assert sim.stats.duplicated > 0
    assert sim.check().ok


def test_the_honest_completion_carries_a_proof_every_recipient_accepts() -> None:
    from aura_node.errors import WitnessError
    from aura_node.protocols.recovery.witnesses import SecretReconstructed

    sim = world(17)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2")
    sim.run()
    assert completed(sim, "n1", sid)
    dones = [env for _, env in sim.nodes["n1"].sent(sid) if env.step == "RecoveryComplete"]
    assert dones
    msgs = {eng.decode_message(e, RecoveryComplete) for e in dones}
    assert len(msgs) == 1  # one proof, the same bytes to every recipient
    (msg,) = msgs
    assert len(msg.proof) == 64 and len(msg.proof_point) == 32
    acct = sim.nodes["d1"].accounts.only().account
    w = SecretReconstructed.verify(point=msg.proof_point, proof=msg.proof, account=acct,
                                   session_id=sid, new_device_key=msg.new_device_public_key)
    assert w.session_id == sid
    with pytest.raises(WitnessError, match="does not verify"):
        SecretReconstructed.verify(point=msg.proof_point, proof=msg.proof, account=acct,
                                   session_id="another", new_device_key=msg.new_device_public_key)
    for n in OTHERS:
        assert completed(sim, n, sid), n
        assert not rejected(sim, n, sid) and not sim.nodes[n].misbehaviour(sid), n


def test_secret_and_shares_never_reach_a_journal_in_plaintext() -> None:
    sim = world(8)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2", "g3")
    sim.run()
    assert completed(sim, "n1", sid)
    est = sim.nodes["n1"].accounts.only()
    secret = open_held_share(est.account, est.shares[0], sim.nodes["n1"].key)
    values = [secret.value.to_bytes()]
    for g in OTHERS:
        e = sim.nodes[g].accounts.only()
        values.append(open_held_share(e.account, e.shares[0], sim.nodes[g].key).value.to_bytes())
    assert len(set(values)) == 6
    for node in sim.nodes.values():
        blob = node.journal_bytes()
        for v in values:
            assert v not in blob and v.hex().encode() not in blob


def test_every_guardians_notice_is_accepted_by_a_devices_monitor() -> None:
    """t_g = 2 of 3 guardians approve, but all three verify the approvals and notify every
    device: the third notice is honest, not misbehaviour (the device's monitor is bound for
    the account's guardian count, which the notice states and the device checks)."""
    sim = world(22)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g3")
    sim.run()
    for d in ("d1", "d2"):
        kinds = [r.kind for r in sim.nodes[d].records(sid)]
        assert eng.KIND_MISBEHAVIOUR not in kinds and rec.KIND_REJECTED not in kinds, d
        assert completed(sim, d, sid), d
        assert set(status(sim, d, sid)["notified_by"]) == set(GUARDIANS)


# --- veto, thresholds, deadlines --------------------------------------------------------------


def test_veto_during_cooldown_aborts_everywhere_and_no_share_is_released() -> None:
    sim = world(1)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2")
    settle(sim)
    assert sim.control("d2", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    assert failed(sim, "n1", sid)["code"] in ("vetoed", "aborted_by_peer")
    assert status(sim, "n1", sid)["state"] == "Vetoed"
    assert len(sim.nodes["n1"].accounts) == 0
    for n in OTHERS:
        failed(sim, n, sid)
    no_share_released(sim, sid)


def test_after_a_veto_every_driver_reports_vetoed() -> None:
    """A peer's abort reaches every role as "g1 aborted: vetoed: ..."; every role still reports
    Vetoed itself (``recovery status`` needs no reason parsing)."""
    from aura_node.runtime.protocol_commands import recovery_state

    sim = world(23)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2")
    settle(sim)
    assert sim.control("d1", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    for name in NODES:
        e = entry(sim, name, sid)
        assert e.outcome == "failed", name
        assert status(sim, name, sid)["state"] == "Vetoed", (name, e.error)
        assert recovery_state(e) == "Vetoed", name
    # the abort's reason as the runtime hands it on, and the journaled-failure fallback
    assert rec.abort_is_veto("g1 aborted: vetoed: vetoed by d1: no", "g1")
    assert not rec.abort_is_veto("g1 aborted: timeout: vetoed: no", "g1")
    assert not rec.abort_is_veto("vetoed: by me", None)
    assert rec.failure_is_veto("aborted_by_peer", "g2 aborted: vetoed: vetoed by d1: no")
    assert not rec.failure_is_veto("aborted_by_peer", "g2 aborted: timeout: gone")


def test_a_hostile_new_device_cannot_hide_the_recovery_or_the_veto() -> None:
    """The new device never talks to the devices; the veto still stops every guardian."""
    sim = world(2, pins={"n1": list(GUARDIANS)})  # n1 pins only the guardians
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2", "g3")
    settle(sim)
    assert "devices" not in status(sim, "n1", sid).values()
    assert status(sim, "d1", sid)["phase"] == "MayVeto"
    sim.control("d1", sid, "veto")
    sim.run()
    for g in GUARDIANS:
        failed(sim, g, sid)
    assert len(sim.nodes["n1"].accounts) == 0
    no_share_released(sim, sid)


def test_below_threshold_times_out_without_shares() -> None:
    sim = world(3)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g2")
    sim.run()
    err = failed(sim, "n1", sid)
    assert err["code"] == "timeout" and "g2" in err["reason"]
    for node in sim.nodes.values():
        assert "SealedRecoveryShare" not in sent_steps(sim, node.name, sid)
        assert "ShareRequest" not in sent_steps(sim, node.name, sid)
    failed(sim, "g1", sid)  # the abort reached the guardians


def test_a_guardian_whose_share_request_is_lost_times_out_and_never_releases() -> None:
    """Found by the seeded simulation: a guardian that never gets the ShareRequest used to
    wait in Deciding/AwaitingThreshold forever. Its own deadline ends it (Failed, timeout);
    the recovery still completes through the others, and a late ShareRequest finds it over."""
    sim = world(10)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2", "g3")
    lost = run_dropping(sim, "ShareRequest", "g3")
    assert len(lost) == 1
    assert status(sim, "g3", sid)["phase"] == "AwaitingThreshold"
    assert sim.timer("g3", sid, rec.REQUEST_TIMER) is not None
    sim.run()
    assert completed(sim, "n1", sid)  # not cut short by g3
    err = failed(sim, "g3", sid)
    assert err["code"] == "timeout" and "no valid ShareRequest" in err["reason"]
    assert "it approved" in err["reason"]
    assert status(sim, "g3", sid)["phase"] == "Failed"
    assert "SealedRecoveryShare" not in sent_steps(sim, "g3", sid)
    assert any(r.kind == eng.KIND_FAIL for r in sim.nodes["g3"].records(sid))
    # the deadline is the new device's last one, counted from g3's own start: no earlier
    start = next(ev.start.now for ev in sim.nodes["g3"].evidence(sid)
                 if isinstance(ev, eng.Started))
    p = PROTOCOLS
    assert sim.now >= start + (p.recovery_approval_timeout_seconds
                               + p.recovery_cooldown_seconds + p.recovery_share_timeout_seconds)
    before = len(sim.nodes["g3"].records(sid))
    sim.inject("n1", "g3", lost[0])  # the lost request, late
    sim.run()
    assert len(sim.nodes["g3"].records(sid)) == before
    assert "SealedRecoveryShare" not in sent_steps(sim, "g3", sid)


def test_an_undecided_guardian_without_a_share_request_times_out() -> None:
    sim = world(11)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2")
    assert run_dropping(sim, "ShareRequest", "g3")
    assert status(sim, "g3", sid)["phase"] == "Deciding"
    sim.run()
    err = failed(sim, "g3", sid)
    assert err["code"] == "timeout" and "had not approved" in err["reason"]
    assert completed(sim, "n1", sid)


def test_a_guardian_that_hears_no_completion_times_out_after_its_release() -> None:
    sim = world(12)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2")
    settle(sim)
    # the cooldowns: g1 and g2 release, g3 (no approval) does not; g2 never hears the end
    cooldown = sim.timer("g1", sid, rec.COOLDOWN_TIMER)
    assert cooldown is not None
    lost = hold(sim, "RecoveryComplete", "g2")
    sim.run(until=cooldown + 10.0)
    sim.intercept = None
    assert lost
    assert completed(sim, "n1", sid)
    assert status(sim, "g2", sid)["phase"] == "AwaitingCompletion"
    sim.run()
    err = failed(sim, "g2", sid)
    assert err["code"] == "timeout" and "share was released" in err["reason"]
    assert completed(sim, "n1", sid)  # its abort changes nothing there


def test_a_device_watches_until_the_latest_notice_deadline() -> None:
    """Each guardian's cooldown starts when its ShareRequest arrives; the device's watch must
    cover the latest one it heard of, not the first."""
    sim = world(14)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2")
    held = hold(sim, "ShareRequest", "g3", release_after=100.0)  # its cooldown ends 100 s later
    settle(sim)
    assert len(held) == 1
    first = sim.timer("d1", sid, rec.WATCH_TIMER)
    assert first is not None
    assert set(status(sim, "d1", sid)["notified_by"]) == {"g1", "g2"}
    sim.run(until=sim.now + 100.0)
    later = sim.timer("d1", sid, rec.WATCH_TIMER)
    assert later is not None and later - first == pytest.approx(100.0, abs=0.1)
    assert set(status(sim, "d1", sid)["notified_by"]) == set(GUARDIANS)


def test_operator_mistakes_do_not_abort_and_params_are_checked() -> None:
    sim = world(9)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1")
    again = sim.control("g1", sid, "approve")
    assert again is not None
    assert again["state"] == "AwaitingThreshold" and "error" in again
    assert entry(sim, "g1", sid).active
    services = sim.nodes["n1"].services
    with pytest.raises(eng.ParamsError, match="not guardian"):
        rec.start_params({"account": "x", "guardians": ["d1"]}, services)
    with pytest.raises(eng.ParamsError, match="not a pinned peer"):
        rec.start_params({"account": "x", "guardians": ["zz"]}, services)
    with pytest.raises(eng.ParamsError, match="twice"):
        rec.start_params({"account": "x", "guardians": "g1,g1"}, services)
    p = rec.start_params({"account": "x", "guardians": "g1,g2"}, services)
    assert rec.session_roles(p) == {"n1": "new_device", "g1": "guardians", "g2": "guardians"}


# --- misbehaving peers ------------------------------------------------------------------------


def test_approval_from_a_non_guardian_is_rejected_and_recovery_still_completes() -> None:
    sim = world(4)
    # d2 is pinned at n1 but is no guardian of the account (start_params would refuse it:
    # the role check is bypassed here); asked as one, d2 refuses to act
    params = {"account": account_id(sim), "guardians": ["g1", "d2", "g3"], "new_device": "n1"}
    sid = sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)
    settle(sim)
    assert rejected(sim, "d2", sid)[0].code == "recovery"
    # a forged approval sent by d2 itself (signed by d2) is rejected by the new device
    n1 = sim.nodes["n1"]
    acct = sim.nodes["g1"].accounts.only().account
    forged = sign_approval(sim.nodes["d2"].key, session_id=sid, account_id=acct.account_id,
                           new_device_key=n1.key.public)
    msg = GuardianApproval(approval=rec.to_wire(forged), account=msgspec.msgpack.encode(acct))
    sim.inject("d2", "n1", seal(sim.nodes["d2"].key, choreography="recovery", session=sid,
                                message=msg))
    reasons = [r.reason for r in rejected(sim, "n1", sid)]
    assert any("not one of the guardians" in r or "not a guardian" in r
               or "is not a member" in r for r in reasons), reasons
    assert status(sim, "n1", sid)["phase"] == "CollectingApprovals"
    approve(sim, sid, "g1", "g3")
    sim.run()
    assert completed(sim, "n1", sid)


def test_replayed_approval_from_another_session_is_rejected() -> None:
    sim = world(5)
    old = start_recovery(sim)
    settle(sim)
    approve(sim, old, "g1")
    settle(sim)
    (old_approval,) = [eng.decode_message(ev.envelope, GuardianApproval)
                       for ev in sim.nodes["n1"].evidence(old)
                       if isinstance(ev, eng.Received) and ev.sender == "g1"
                       and ev.envelope.step == "GuardianApproval"]
    sid = start_recovery(sim)
    settle(sim)
    sim.inject("g1", "n1", seal(sim.nodes["g1"].key, choreography="recovery", session=sid,
                                message=old_approval))
    reasons = [r.reason for r in rejected(sim, "n1", sid)]
    assert reasons and f"is for session '{old}'" in reasons[0]
    assert status(sim, "n1", sid)["approvals"] == []


def test_a_share_failing_its_feldman_check_is_rejected_and_honest_guardians_suffice() -> None:
    sim = world(6)
    acct = sim.nodes["d1"].accounts.only().account
    new_key = sim.nodes["n1"].key.public
    sid = start_recovery(sim)
    settle(sim)

    def g1_lies(src: str, dst: str, payload: bytes) -> bytes | None:
        """g1 seals a share of its own invention to the new device (a valid seal, a valid
        envelope, a share that does not fit g1's public share)."""
        env = decode_wire(payload).envelope
        if env.step == "ShareRequest" and dst == "g3":
            sim.post(src, dst, payload, at=sim.now + 20.0)  # g3 releases 20 s after the others
            return None
        if src != "g1" or env.step != "SealedRecoveryShare":
            return payload
        honest = eng.decode_message(env, SealedRecoveryShare)
        bad = Share(index=honest.share_index, value=Scalar.from_int(12345))
        lie = SealedRecoveryShare(share_index=honest.share_index, sealed_share=seal_share(
            bad, new_key, recovery_binding(account_id=acct.account_id, session_id=sid,
                                           new_device_id=new_key.device_id)))
        return encode_wire(seal(sim.nodes["g1"].key, choreography="recovery", session=sid,
                                message=lie))

    sim.intercept = g1_lies
    approve(sim, sid, "g1", "g2", "g3")
    settle(sim)
    cooldown = sim.timer("g1", sid, rec.COOLDOWN_TIMER)
    assert cooldown is not None
    sim.run(until=cooldown + 10.0)  # g1 (lying) and g2 have released, g3 not yet
    assert "SealedRecoveryShare" not in sent_steps(sim, "g3", sid)
    codes = [(r.peer, r.reason) for r in rejected(sim, "n1", sid)]
    assert any(p == "g1" and "fails its check" in why for p, why in codes), codes
    assert status(sim, "n1", sid)["phase"] == "CollectingShares"
    sim.run()
    assert completed(sim, "n1", sid)
    assert status(sim, "n1", sid)["shares"] == ["g2", "g3"]
    assert sim.nodes["n1"].accounts.only().account.public_key == acct.public_key


def test_a_share_before_the_threshold_is_held_by_the_monitor_and_never_taken() -> None:
    """A guardian's share before the new device has its approvals is not allowed yet: the
    runtime's monitor holds it as early (nothing journaled, the driver never sees it, the phase
    does not move) and, once the session moves on, the driver refuses it as evidence."""
    sim = world(7)
    sid = start_recovery(sim)
    settle(sim)
    before = len(sim.nodes["n1"].records(sid))
    sim.inject("g1", "n1", seal(sim.nodes["g1"].key, choreography="recovery", session=sid,
                                message=SealedRecoveryShare(share_index=1, sealed_share=b"x")))
    assert len(sim.nodes["n1"].records(sid)) == before
    assert status(sim, "n1", sid)["phase"] == "CollectingApprovals"
    approve(sim, sid, "g1", "g2", "g3")
    sim.run()
    # once collecting, the junk is refused as evidence; the honest ones recover the account
    codes = [(r.peer, r.reason) for r in rejected(sim, "n1", sid)]
    assert any(p == "g1" and "fails its check" in why for p, why in codes), codes
    assert completed(sim, "n1", sid)
    assert "g1" not in status(sim, "n1", sid)["shares"]
    assert sim.nodes["n1"].accounts.only().account.account_id == account_id(sim)


def test_a_notice_listing_other_guardians_is_rejected() -> None:
    sim = world(15)
    sid = start_recovery(sim)
    settle(sim)
    # g3's own notice never reaches d1, so the forged one is its first word there (a second
    # notice from one guardian is refused by the monitor before the driver could look)
    held = hold(sim, "RecoveryPending", "d1", sender="g3")
    approve(sim, sid, "g1", "g2")
    settle(sim)
    assert len(held) == 1
    notice = next(eng.decode_message(ev.envelope, RecoveryPending)
                  for ev in sim.nodes["d1"].evidence(sid)
                  if isinstance(ev, eng.Received) and ev.envelope.step == "RecoveryPending")
    forged = msgspec.structs.replace(notice, guardians=("g1", "g2"))
    sim.inject("g3", "d1", seal(sim.nodes["g3"].key, choreography="recovery", session=sid,
                                message=forged))
    reasons = [r.reason for r in rejected(sim, "d1", sid)]
    assert any("lists guardians ['g1', 'g2']" in r for r in reasons), reasons
    assert set(status(sim, "d1", sid)["notified_by"]) == {"g1", "g2"}


def test_the_new_devices_abort_cannot_close_a_devices_veto_window() -> None:
    """A hostile new device aborts only towards the devices, hoping to end their watch while
    the guardians cool down to the release: the runtime drops the abort unjournaled (the
    device's monitor and phase stay in MayVeto), the devices keep watching, one vetoes, and no
    guardian releases its share."""
    sim = world(13)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2", "g3")
    settle(sim)
    assert status(sim, "d1", sid)["phase"] == "MayVeto"
    before = {d: len(sim.nodes[d].records(sid)) for d in ("d1", "d2")}
    hostile = seal(sim.nodes["n1"].key, choreography="recovery", session=sid,
                   message=RecoveryAbort(reason="shares_timeout: nothing to see here"))
    for d in ("d1", "d2"):
        sim.inject("n1", d, hostile)
    for d in ("d1", "d2"):
        e = entry(sim, d, sid)
        assert e.active and status(sim, d, sid)["phase"] == "MayVeto", d
        assert len(sim.nodes[d].records(sid)) == before[d], d
        assert sim.describe(d, sid)["monitor_state"].startswith("MayVeto"), d
    assert sim.control("d1", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    for g in GUARDIANS:
        failed(sim, g, sid)
        assert "SealedRecoveryShare" not in sent_steps(sim, g, sid), g
    assert len(sim.nodes["n1"].accounts) == 0
    # a guardian's abort (its word that the recovery is over) does end d2's watch
    failed(sim, "d2", sid)


def forged_completions(sim: Simulation, sid: str) -> list[RecoveryComplete]:
    """What a hostile new device that does not know ``s`` can send: no proof, garbage, a
    valid DLEQ proof for a secret of its own (x·G != S), and an honest proof made for another
    session."""
    from aura_node.crypto import dleq
    from aura_node.crypto.shamir import reconstruct
    from aura_node.protocols.recovery.witnesses import (
        completion_base,
        completion_context,
        prove_completion,
    )

    acct = sim.nodes["d1"].accounts.only().account
    nk = sim.nodes["n1"].key.public.raw
    base = RecoveryComplete(account_id=acct.account_id, account_public_key=acct.public_key,
                            new_device_public_key=nk)
    x = Scalar.random()
    h = completion_base(account_id=acct.account_id, session_id=sid, new_device_key=nk)
    ctx = completion_context(account_id=acct.account_id, session_id=sid, new_device_key=nk)
    _, b, own = dleq.prove(x, Point.base(), h, ctx)
    # the real secret, but proven for another session: must not transfer
    shares = []
    for d in ("d1", "d2"):
        e = sim.nodes[d].accounts.only()
        shares.append(open_held_share(e.account, e.shares[0], sim.nodes[d].key))
    s = reconstruct(shares)
    other_b, other_p = prove_completion(s, account_public_key=acct.public_key,
                                        account_id=acct.account_id, session_id="other",
                                        new_device_key=nk)
    return [
        base,
        msgspec.structs.replace(base, proof_point=b.to_bytes(), proof=bytes(64)),
        msgspec.structs.replace(base, proof_point=b.to_bytes(), proof=own.to_bytes()),
        msgspec.structs.replace(base, proof_point=other_b, proof=other_p),
    ]


def test_a_forged_recovery_complete_cannot_close_a_devices_veto_window() -> None:
    """A hostile new device announces completion without knowing ``s`` (no proof, a bad one,
    one for its own secret, one from another session): each device refuses it before its
    monitor steps (journaled as misbehaviour with the signed envelope and a clear reason) and
    stays in its veto window; a veto still stops every guardian before release."""
    sim = world(16)
    sid = start_recovery(sim)
    settle(sim)
    approve(sim, sid, "g1", "g2", "g3")
    settle(sim)
    forged = forged_completions(sim, sid)
    for msg in forged:
        env = seal(sim.nodes["n1"].key, choreography="recovery", session=sid, message=msg)
        for d in ("d1", "d2"):
            sim.inject("n1", d, env)
    for d in ("d1", "d2"):
        assert entry(sim, d, sid).active, d
        assert status(sim, d, sid)["phase"] == "MayVeto"
        assert sim.describe(d, sid)["monitor_state"].startswith("MayVeto"), d
        refused = sim.nodes[d].misbehaviour(sid)
        assert [(m.peer, m.code) for m in refused] == [("n1", "refused_by_protocol")] * len(
            forged), refused
        reasons = [m.reason for m in refused]
        assert "no proof" in reasons[0], reasons
        assert all("does not verify" in r for r in reasons[1:]), reasons
        assert all(m.envelope for m in refused)
    assert sim.control("d1", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    for g in GUARDIANS:
        failed(sim, g, sid)
        assert "SealedRecoveryShare" not in sent_steps(sim, g, sid), g
    assert len(sim.nodes["n1"].accounts) == 0


# --- the choreography, its projections and monitors (pure) ------------------------------------


def test_wrong_phase_messages_are_rejected_by_the_monitor() -> None:
    from aura_node.choreo.monitor import Monitor
    from aura_node.errors import RemoteProtocolError

    chor: Choreography = REGISTRY["recovery"]
    m = Monitor(chor.project("new_device", {"g": 3, "t_g": 2}))
    m.check_outbound("guardians", RecoveryRequest(account_id="a", new_device_public_key=b"",
                                                  guardians=()))
    with pytest.raises(RemoteProtocolError, match="not allowed yet"):
        m.check_inbound("guardians", SealedRecoveryShare(share_index=1, sealed_share=b""),
                        member="g1")
    g = Monitor(chor.project("guardians", {"g": 3}))
    with pytest.raises(RemoteProtocolError):
        g.check_inbound("new_device", ShareRequest(approvals=()), member="n1")


def test_fan_out_projects_to_a_broadcast_and_an_optional_gather() -> None:
    from aura_node.choreo.monitor import Monitor
    from aura_node.protocols.recovery.choreography import RecoveryPending, RecoveryVeto

    chor: Choreography = REGISTRY["recovery"]
    assert chor.check() == ()
    g = chor.project("guardians", {"g": 3, "d": 2})
    (notify,) = [t for t in g.transitions if t.message is RecoveryPending]
    assert (notify.action, notify.peer) == ("send", "devices")
    (veto,) = {(t.action, t.threshold, t.deadline) for t in g.transitions
               if t.message is RecoveryVeto}
    assert veto == ("gather", 1, "recovery_cooldown")
    d = chor.project("devices", {"g": 3, "d": 2})
    assert d.phases[d.initial] == "Watching"
    mon = Monitor(d)
    pending = RecoveryPending(account_id="a", new_device="n", new_device_public_key=b"",
                              approvals=(), cooldown_ends=0.0, watch_until=0.0)
    mon.check_inbound("guardians", pending, member="g1")
    mon.check_inbound("guardians", pending, member="g2")  # a second notice: a straggler
    assert mon.phase == "MayVeto"
    mon.check_outbound("guardians", RecoveryVeto(account_id="a", reason="no"))


@pytest.mark.parametrize("cls, role", [
    (rec.NewDevice, "new_device"), (rec.Guardian, "guardians"), (rec.AccountDevice, "devices"),
])
@pytest.mark.parametrize("sizes", [{"g": 3, "t_g": 2, "d": 2}, {"g": 1, "t_g": 1, "d": 1}])
def test_typestate_conforms_to_the_projection(cls: type, role: str, sizes: dict[str, int]
                                              ) -> None:
    check_conformance(cls, REGISTRY["recovery"].project(role, sizes))


def test_sample_messages_cover_nested_structs_and_floats() -> None:
    from aura_node.choreo.simulate import sample_message
    from aura_node.protocols.recovery.choreography import Approval, RecoveryPending

    g = sample_message(GuardianApproval)
    assert isinstance(g, GuardianApproval) and isinstance(g.approval, Approval)
    p = sample_message(RecoveryPending)
    assert isinstance(p, RecoveryPending) and p.cooldown_ends == 0.0 and p.approvals == ()


def test_monitor_accepts_one_late_receive_after_its_deadline() -> None:
    from aura_node.choreo.monitor import Monitor
    from aura_node.errors import RemoteProtocolError
    from aura_node.protocols.recovery.choreography import RecoveryComplete, RecoveryPending

    mon = Monitor(REGISTRY["recovery"].project("devices", {"g": 2, "d": 2}))
    mon.check_inbound("guardians", RecoveryPending(
        account_id="a", new_device="n", new_device_public_key=b"", approvals=(),
        cooldown_ends=0.0, watch_until=0.0), member="g1")
    mon.timeout()  # the watch deadline: the device stops watching
    assert mon.is_final and mon.phase == "Completed"
    done = RecoveryComplete(account_id="a", account_public_key=b"", new_device_public_key=b"")
    mon.check_inbound("new_device", done, member="n")  # late, accepted without effect
    with pytest.raises(RemoteProtocolError):
        mon.check_inbound("new_device", done, member="n")
