"""Guardian recovery in memory: approvals, cooldown, veto, shares, reconstruction, rejection."""

from __future__ import annotations

import msgspec
import pytest

from aura_node.choreo import Choreography
from aura_node.crypto.group import Point, Scalar
from aura_node.crypto.recovery import recovery_binding
from aura_node.crypto.seal import seal_share
from aura_node.crypto.shamir import Share
from aura_node.protocols import engine as eng
from aura_node.protocols.account import open_held_share
from aura_node.protocols.envelope import seal
from aura_node.protocols.recovery import roles as rec
from aura_node.protocols.recovery.choreography import (
    GuardianApproval,
    RecoveryRequest,
    SealedRecoveryShare,
    ShareRequest,
)
from aura_node.protocols.recovery.witnesses import sign_approval
from aura_node.protocols.registry import REGISTRY
from aura_node.session.conformance import check_conformance
from tests.unit.accounts_sim import Sim
from tests.unit.recovery_world import (
    account_id,
    device_fingerprint,
    entry_status,
    start_recovery,
    world,
)


def rejected(sim: Sim, node: str, sid: str) -> list[dict[str, str]]:
    return [msgspec.msgpack.decode(r.body) for r in sim.nodes[node].records(sid)
            if r.kind == rec.KIND_REJECTED]


def sent_steps(sim: Sim, node: str, sid: str) -> list[str]:
    return [ev.envelope.step for ev in eng.parse_evidence(sim.nodes[node].records(sid))
            if isinstance(ev, eng.Sent)]


def approve(sim: Sim, sid: str, *names: str) -> None:
    for n in names:
        out = sim.control(n, sid, "approve")
        assert out == {"session": sid, "state": "AwaitingThreshold"}


@pytest.mark.parametrize("seed", range(3))
def test_recovery_restores_the_account_on_the_new_device(seed: int) -> None:
    sim = world(seed, duplicates=0.3)
    acct = account_id(sim)
    before = device_fingerprint(sim, ["d1", "d2"], "mail")
    sid = start_recovery(sim)
    sim.run(timers=False)
    # every guardian has the request; `recovery pending` material
    for g in ("g1", "g2", "g3"):
        st = entry_status(sim, g, sid)
        assert st["phase"] == "Deciding"
        assert (st["session"], st["account"], st["new_device"]) == (sid, acct, "n1")
    approve(sim, sid, "g1", "g3")
    sim.run(timers=False)
    st = entry_status(sim, "n1", sid)
    assert st["state"] == "CollectingShares" and st["approvals"] == ["g1", "g3"]
    assert st["account"] == acct
    # the devices heard of it from the guardians (not from the new device)
    for d in ("d1", "d2"):
        ds = entry_status(sim, d, sid)
        assert ds["phase"] == "MayVeto" and set(ds["notified_by"]) == {"g1", "g2", "g3"}
    # no share before the cooldown
    assert not any("SealedRecoveryShare" in sent_steps(sim, g, sid) for g in ("g1", "g2", "g3"))
    sim.run()
    out = sim.nodes["n1"].sessions[sid].outcome
    assert out == {"session": sid, "account": acct, "guardians": ["g1", "g2", "g3"],
                   "state": "Completed"}
    est = sim.nodes["n1"].services.accounts.only()
    orig = sim.nodes["d1"].services.accounts.only().account
    assert est.account.public_key == orig.public_key and est.account.threshold == 1
    assert est.account.to_json()["devices"] == ["n1"]
    assert device_fingerprint(sim, ["n1"], "mail") == before
    # the non-approving guardian released nothing
    assert "SealedRecoveryShare" not in sent_steps(sim, "g2", sid)
    for n in ("g1", "g2", "g3", "d1", "d2"):
        assert sim.nodes[n].sessions[sid].outcome is not None, n


def test_veto_during_cooldown_aborts_everywhere_and_no_share_is_released() -> None:
    sim = world(1)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2")
    sim.run(timers=False)
    assert sim.control("d2", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    n1 = sim.nodes["n1"].sessions[sid]
    assert n1.error is not None and n1.error[0] in ("vetoed", "aborted_by_peer")
    assert entry_status(sim, "n1", sid)["state"] == "Vetoed"
    assert len(sim.nodes["n1"].services.accounts) == 0
    for n in ("g1", "g2", "g3", "d1", "d2"):
        assert sim.nodes[n].sessions[sid].error is not None, n
    for node in sim.nodes.values():
        assert "SealedRecoveryShare" not in {ev.envelope.step for ev in eng.parse_evidence(
            node.records(sid)) if isinstance(ev, eng.Sent | eng.Received)}


def test_a_hostile_new_device_cannot_hide_the_recovery_or_the_veto(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The new device never talks to the devices; the veto still stops every guardian."""
    sim = world(2, pins={"n1": ["g1", "g2", "g3"]})  # n1 pins only the guardians
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2", "g3")
    sim.run(timers=False)
    assert "devices" not in entry_status(sim, "n1", sid).values()
    sim.control("d1", sid, "veto")
    sim.run()
    assert all(sim.nodes[g].sessions[sid].error is not None for g in ("g1", "g2", "g3"))
    assert len(sim.nodes["n1"].services.accounts) == 0


def test_below_threshold_times_out_without_shares() -> None:
    sim = world(3)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g2")
    sim.run()
    err = sim.nodes["n1"].sessions[sid].error
    assert err is not None and err[0] == "timeout" and "g2" in err[1]
    for node in sim.nodes.values():
        assert "SealedRecoveryShare" not in sent_steps(sim, node.name, sid)
        assert "ShareRequest" not in sent_steps(sim, node.name, sid)
    assert sim.nodes["g1"].sessions[sid].error is not None  # the abort reached the guardians


def run_dropping(sim: Sim, step: str, to: str) -> list[bytes]:
    """Deliver (no timers) until quiet, losing every ``step`` message to ``to``; returns the
    lost envelopes."""
    from aura_node.protocols.envelope import decode_envelope

    lost = []
    while True:
        for item in list(sim.queue):
            if item[1] == to and decode_envelope(item[2]).step == step:
                sim.queue.remove(item)
                lost.append(item[2])
        if not sim.deliver_one():
            return lost


def guardian_end(sim: Sim, g: str, sid: str) -> tuple[str, str]:
    err = sim.nodes[g].sessions[sid].error
    assert err is not None, f"{g} did not fail"
    return err


def test_a_guardian_whose_share_request_is_lost_times_out_and_never_releases() -> None:
    """Found by the seeded simulation: a guardian that never gets the ShareRequest used to
    wait in Deciding/AwaitingThreshold forever. Its own deadline ends it (Failed, timeout);
    the recovery still completes through the others, and a late ShareRequest finds it over."""
    from aura_node.protocols.envelope import decode_envelope

    sim = world(10)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2", "g3")
    lost = run_dropping(sim, "ShareRequest", "g3")
    assert len(lost) == 1
    assert entry_status(sim, "g3", sid)["phase"] == "AwaitingThreshold"
    assert rec.REQUEST_TIMER in sim.nodes["g3"].sessions[sid].timers
    sim.run()
    assert sim.nodes["n1"].sessions[sid].outcome is not None  # not cut short by g3
    code, reason = guardian_end(sim, "g3", sid)
    assert code == "timeout" and "no valid ShareRequest" in reason and "it approved" in reason
    assert entry_status(sim, "g3", sid)["phase"] == "Failed"
    assert "SealedRecoveryShare" not in sent_steps(sim, "g3", sid)
    assert any(r.kind == eng.KIND_FAIL for r in sim.nodes["g3"].records(sid))
    # the deadline is the new device's last one, counted from g3's own start: no earlier
    start = next(ev.start.now for ev in eng.parse_evidence(sim.nodes["g3"].records(sid))
                 if isinstance(ev, eng.Started))
    p = sim.nodes["g3"].services.protocols
    assert sim.now >= start + (p.recovery_approval_timeout_seconds
                               + p.recovery_cooldown_seconds + p.recovery_share_timeout_seconds)
    before = len(sim.nodes["g3"].records(sid))
    sim.receive("n1", "g3", decode_envelope(lost[0]))  # the lost request, late
    sim.run()
    assert len(sim.nodes["g3"].records(sid)) == before
    assert "SealedRecoveryShare" not in sent_steps(sim, "g3", sid)


def test_an_undecided_guardian_without_a_share_request_times_out() -> None:
    sim = world(11)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2")
    assert run_dropping(sim, "ShareRequest", "g3")
    assert entry_status(sim, "g3", sid)["phase"] == "Deciding"
    sim.run()
    code, reason = guardian_end(sim, "g3", sid)
    assert code == "timeout" and "had not approved" in reason
    assert sim.nodes["n1"].sessions[sid].outcome is not None


def test_a_guardian_that_hears_no_completion_times_out_after_its_release() -> None:
    sim = world(12)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2")
    sim.run(timers=False)
    sim.fire_timers()  # the cooldowns: g1 and g2 release, g3 (no approval) does not
    assert run_dropping(sim, "RecoveryComplete", "g2")
    assert sim.nodes["n1"].sessions[sid].outcome is not None
    assert entry_status(sim, "g2", sid)["phase"] == "AwaitingCompletion"
    sim.run()
    code, reason = guardian_end(sim, "g2", sid)
    assert code == "timeout" and "share was released" in reason
    assert sim.nodes["n1"].sessions[sid].outcome is not None  # its abort changes nothing there


def test_approval_from_a_non_guardian_is_rejected_and_recovery_still_completes() -> None:
    sim = world(4)
    # d2 is pinned at n1 but is no guardian of the account (start_params would refuse it:
    # the role check is bypassed here); asked as one, d2 refuses to act
    params = {"account": account_id(sim), "guardians": ["g1", "d2", "g3"], "new_device": "n1"}
    sid = sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)
    sim.run(timers=False)
    assert rejected(sim, "d2", sid)[0]["code"] == "recovery"
    # a forged approval sent by d2 itself (signed by d2) is rejected by the new device
    n1 = sim.nodes["n1"]
    acct = sim.nodes["g1"].services.accounts.only().account
    forged = sign_approval(sim.nodes["d2"].key, session_id=sid, account_id=acct.account_id,
                           new_device_key=n1.key.public)
    msg = GuardianApproval(approval=rec.to_wire(forged), account=msgspec.msgpack.encode(acct))
    sim.receive("d2", "n1", seal(sim.nodes["d2"].key, choreography="recovery", session=sid,
                                 message=msg))
    assert any("not one of the guardians" in r["reason"] or "not a guardian" in r["reason"]
               or "is not a member" in r["reason"] for r in rejected(sim, "n1", sid))
    assert entry_status(sim, "n1", sid)["phase"] == "CollectingApprovals"
    approve(sim, sid, "g1", "g3")
    sim.run()
    assert sim.nodes["n1"].sessions[sid].outcome is not None


def test_replayed_approval_from_another_session_is_rejected() -> None:
    sim = world(5)
    old = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, old, "g1")
    sim.run(timers=False)
    (msg,) = [eng.decode_message(ev.envelope, GuardianApproval)  # g1's, from n1's journal
              for ev in eng.parse_evidence(sim.nodes["n1"].records(old))
              if isinstance(ev, eng.Received) and ev.envelope.step == "GuardianApproval"]
    sid = start_recovery(sim)
    sim.run(timers=False)
    sim.receive("g1", "n1", seal(sim.nodes["g1"].key, choreography="recovery", session=sid,
                                 message=msg))
    reasons = [r["reason"] for r in rejected(sim, "n1", sid)]
    assert reasons and f"is for session '{old}'" in reasons[0]
    assert entry_status(sim, "n1", sid)["approvals"] == []


def test_a_share_failing_its_feldman_check_is_rejected_and_honest_guardians_suffice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = rec.GuardianDriver.on_timer

    def lying(self: rec.GuardianDriver, inp: eng.TimerFired) -> list[eng.Effect]:
        effects = real(self, inp)
        if self.services.self_name != "g1":
            return effects
        out: list[eng.Effect] = []
        for e in effects:
            if isinstance(e, eng.Send) and isinstance(e.message, SealedRecoveryShare):
                acct = self.services.accounts.only().account
                new_key = sim.nodes["n1"].key.public
                bad = Share(index=e.message.share_index, value=Scalar.from_int(12345))
                e = eng.Send(to=e.to, message=SealedRecoveryShare(
                    share_index=e.message.share_index, sealed_share=seal_share(
                        bad, new_key, recovery_binding(
                            account_id=acct.account_id, session_id=self.session,
                            new_device_id=new_key.device_id))))
            out.append(e)
        return out

    monkeypatch.setattr(rec.GuardianDriver, "on_timer", lying)
    sim = world(6)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2", "g3")
    sim.run(timers=False)
    sim.nodes["g3"].down = True  # g1 (lying) and g2 release first
    sim.fire_timers()
    sim.run(timers=False)
    codes = [(r["peer"], r["reason"]) for r in rejected(sim, "n1", sid)]
    assert any(p == "g1" and "fails its check" in why for p, why in codes), codes
    assert entry_status(sim, "n1", sid)["phase"] == "CollectingShares"
    sim.nodes["g3"].down = False
    sim.fire_timers()
    sim.run(timers=False)
    assert sim.nodes["n1"].sessions[sid].outcome is not None
    assert entry_status(sim, "n1", sid)["shares"] == ["g2", "g3"]


def test_wrong_phase_messages_are_rejected_by_monitor_and_driver() -> None:
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
    # the driver rejects (journals) a share that comes before the threshold, and carries on
    sim = world(7)
    sid = start_recovery(sim)
    sim.run(timers=False)
    sim.receive("g1", "n1", seal(sim.nodes["g1"].key, choreography="recovery", session=sid,
                                 message=SealedRecoveryShare(share_index=1, sealed_share=b"x")))
    assert rejected(sim, "n1", sid)[0]["code"] == "wrong_phase"
    assert entry_status(sim, "n1", sid)["phase"] == "CollectingApprovals"


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


def test_secret_and_shares_never_reach_a_journal_in_plaintext() -> None:
    sim = world(8)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2", "g3")
    sim.run()
    assert sim.nodes["n1"].sessions[sid].outcome is not None
    est = sim.nodes["n1"].services.accounts.only()
    secret = open_held_share(est.account, est.shares[0], sim.nodes["n1"].key)
    values = [secret.value.to_bytes()]
    for g in ("g1", "g2", "g3", "d1", "d2"):
        e = sim.nodes[g].services.accounts.only()
        values.append(open_held_share(e.account, e.shares[0], sim.nodes[g].key).value.to_bytes())
    assert len(set(values)) == 6
    for node in sim.nodes.values():
        blob = node.journal_bytes()
        for v in values:
            assert v not in blob and v.hex().encode() not in blob


def test_operator_mistakes_do_not_abort_and_params_are_checked() -> None:
    sim = world(9)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1")
    again = sim.control("g1", sid, "approve")
    assert again["state"] == "AwaitingThreshold" and "error" in again
    assert not sim.nodes["g1"].sessions[sid].ended
    services = sim.nodes["n1"].services
    with pytest.raises(eng.ParamsError, match="not guardian"):
        rec.start_params({"account": "x", "guardians": ["d1"]}, services)
    with pytest.raises(eng.ParamsError, match="not a pinned peer"):
        rec.start_params({"account": "x", "guardians": ["zz"]}, services)
    with pytest.raises(eng.ParamsError, match="twice"):
        rec.start_params({"account": "x", "guardians": "g1,g1"}, services)
    p = rec.start_params({"account": "x", "guardians": "g1,g2"}, services)
    assert rec.session_roles(p) == {"n1": "new_device", "g1": "guardians", "g2": "guardians"}


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


def _hostile_abort_to_devices(sim: Sim, sid: str) -> None:
    """n1 signs a RecoveryAbort and sends it to the devices only (never to a guardian)."""
    from aura_node.protocols.recovery.choreography import RecoveryAbort

    env = seal(sim.nodes["n1"].key, choreography="recovery", session=sid,
               message=RecoveryAbort(reason="shares_timeout: nothing to see here"))
    for d in ("d1", "d2"):
        sim.receive("n1", d, env)


def test_the_new_devices_abort_cannot_close_a_devices_veto_window() -> None:
    """A hostile new device aborts only towards the devices, hoping to end their watch while
    the guardians cool down to the release: the devices keep watching, one vetoes, and no
    guardian releases its share."""
    sim = world(13)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2", "g3")
    sim.run(timers=False)
    assert entry_status(sim, "d1", sid)["phase"] == "MayVeto"
    _hostile_abort_to_devices(sim, sid)
    for d in ("d1", "d2"):
        assert not sim.nodes[d].sessions[sid].ended, d
        assert entry_status(sim, d, sid)["phase"] == "MayVeto"
    assert sim.control("d1", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    for g in ("g1", "g2", "g3"):
        assert sim.nodes[g].sessions[sid].error is not None, g
        assert "SealedRecoveryShare" not in sent_steps(sim, g, sid), g
    assert len(sim.nodes["n1"].services.accounts) == 0
    # a guardian's abort (its word that the recovery is over) does end d2's watch
    assert sim.nodes["d2"].sessions[sid].error is not None


def test_the_new_devices_abort_is_dropped_by_the_real_runtime() -> None:
    """The same attack through the daemon's SessionRuntime (seeded simulation, no faults):
    the abort is not journaled, the device's monitor and driver stay in MayVeto, its veto
    still goes out, and the guardians end vetoed without releasing."""
    from aura_node.harness import simulation as hs
    from aura_node.protocols.envelope import encode_wire
    from aura_node.protocols.recovery.choreography import RecoveryAbort

    sim = hs.Simulation(21, {"d1": "device", "d2": "device", "g1": "guardian",
                             "g2": "guardian", "g3": "guardian", "n1": "device"})
    hs.create_account(sim, "d1", ["d1", "d2"], 2, ["g1", "g2", "g3"], 2)
    acct = sim.nodes["d1"].accounts.only().account.account_id
    params = rec.start_params({"account": acct, "guardians": ["g1", "g2", "g3"]},
                              sim.nodes["n1"].services)
    sid = sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)
    sim.run(until=sim.now + 1.0)
    for g in ("g1", "g2", "g3"):
        sim.control(g, sid, "approve")
    sim.run(until=sim.now + 2.0)
    d1 = sim.nodes["d1"]
    entry = d1.session(sid)
    assert entry is not None and entry.active and entry.state == "MayVeto"
    before = len(d1.records(sid))
    hostile = seal(sim.nodes["n1"].key, choreography="recovery", session=sid,
                   message=RecoveryAbort(reason="timeout: gone"))
    sim._deliver("n1", "d1", encode_wire(hostile))
    assert entry.active and entry.state == "MayVeto" and len(d1.records(sid)) == before
    assert entry.monitor is not None and entry.monitor.state().startswith("MayVeto")
    assert sim.control("d1", sid, "veto")["state"] == "Vetoed"
    sim.run()
    for g in ("g1", "g2", "g3"):
        ge = sim.nodes[g].session(sid)
        assert ge is not None and ge.outcome == "failed", g
        sent = {eng.parse_record(r).envelope.step  # type: ignore[union-attr]
                for r in sim.nodes[g].records(sid) if r.kind == eng.KIND_OUT}
        assert "SealedRecoveryShare" not in sent, g
    assert len(sim.nodes["n1"].accounts) == 0


def test_a_device_watches_until_the_latest_notice_deadline() -> None:
    """Each guardian's cooldown starts when its ShareRequest arrives; the device's watch must
    cover the latest one it heard of, not the first."""
    sim = world(14)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2")
    held = run_dropping(sim, "ShareRequest", "g3")
    assert len(held) == 1
    d1 = sim.nodes["d1"].sessions[sid]
    first = d1.timers[rec.WATCH_TIMER]
    sim.now += 100.0  # g3's ShareRequest arrives late: its cooldown ends 100 s later
    from aura_node.protocols.envelope import decode_envelope

    sim.receive("n1", "g3", decode_envelope(held[0]))
    sim.run(timers=False)
    assert d1.timers[rec.WATCH_TIMER] == first + 100.0
    assert set(entry_status(sim, "d1", sid)["notified_by"]) == {"g1", "g2", "g3"}


def test_every_guardians_notice_is_accepted_by_a_devices_monitor() -> None:
    """t_g = 2 of 3 guardians approve, but all three verify the approvals and notify every
    device: the third notice is honest, not misbehaviour (the device's monitor is bound for
    the account's guardian count, which the notice states and the device checks)."""
    from aura_node.harness import simulation as hs

    sim = hs.Simulation(22, {"d1": "device", "d2": "device", "g1": "guardian",
                             "g2": "guardian", "g3": "guardian", "n1": "device"})
    hs.create_account(sim, "d1", ["d1", "d2"], 2, ["g1", "g2", "g3"], 2)
    acct = sim.nodes["d1"].accounts.only().account.account_id
    params = rec.start_params({"account": acct, "guardians": ["g1", "g2", "g3"]},
                              sim.nodes["n1"].services)
    sid = sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)
    sim.run(until=sim.now + 1.0)
    for g in ("g1", "g3"):
        sim.control(g, sid, "approve")
    sim.run()
    for d in ("d1", "d2"):
        kinds = [r.kind for r in sim.nodes[d].records(sid)]
        assert eng.KIND_MISBEHAVIOUR not in kinds and rec.KIND_REJECTED not in kinds, d
        e = sim.nodes[d].session(sid)
        assert e is not None and e.outcome == "completed", d
        assert e.driver is not None
        assert set(e.driver.status()["notified_by"]) == {"g1", "g2", "g3"}


def test_a_notice_listing_other_guardians_is_rejected() -> None:
    from aura_node.protocols.recovery.choreography import RecoveryPending

    sim = world(15)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2")
    sim.run(timers=False)
    notice = next(eng.decode_message(ev.envelope, RecoveryPending)  # from d1's journal
                  for ev in eng.parse_evidence(sim.nodes["d1"].records(sid))
                  if isinstance(ev, eng.Received) and ev.envelope.step == "RecoveryPending")
    forged = msgspec.structs.replace(notice, guardians=("g1", "g2"))
    assert isinstance(forged, RecoveryPending)
    sim.receive("g3", "d1", seal(sim.nodes["g3"].key, choreography="recovery", session=sid,
                                 message=forged))
    assert any("lists guardians ['g1', 'g2']" in r["reason"] for r in rejected(sim, "d1", sid))


def test_after_a_veto_every_driver_reports_vetoed() -> None:
    """Through the real runtime a peer's abort reaches ``on_abort`` as "g1 aborted: vetoed: ...";
    every role still reports Vetoed itself (``recovery status`` needs no reason parsing)."""
    from aura_node.harness import simulation as hs
    from aura_node.runtime.protocol_commands import recovery_state

    sim = hs.Simulation(23, {"d1": "device", "d2": "device", "g1": "guardian",
                             "g2": "guardian", "g3": "guardian", "n1": "device"})
    hs.create_account(sim, "d1", ["d1", "d2"], 2, ["g1", "g2", "g3"], 2)
    acct = sim.nodes["d1"].accounts.only().account.account_id
    params = rec.start_params({"account": acct, "guardians": ["g1", "g2", "g3"]},
                              sim.nodes["n1"].services)
    sid = sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)
    sim.run(until=sim.now + 1.0)
    for g in ("g1", "g2"):
        sim.control(g, sid, "approve")
    sim.run(until=sim.now + 2.0)
    assert sim.control("d1", sid, "veto")["state"] == "Vetoed"
    sim.run()
    for name in ("n1", "g1", "g2", "g3", "d1", "d2"):
        e = sim.nodes[name].session(sid)
        assert e is not None and e.outcome == "failed" and e.driver is not None, name
        assert e.driver.status()["state"] == "Vetoed", (name, e.error, e.driver.status())
        assert recovery_state(e) == "Vetoed", name
    # the abort's reason as the runtime hands it on, and the journaled-failure fallback
    assert rec.abort_is_veto("g1 aborted: vetoed: vetoed by d1: no", "g1")
    assert not rec.abort_is_veto("g1 aborted: timeout: vetoed: no", "g1")
    assert not rec.abort_is_veto("vetoed: by me", None)
    assert rec.failure_is_veto("aborted_by_peer", "g2 aborted: vetoed: vetoed by d1: no")
    assert not rec.failure_is_veto("aborted_by_peer", "g2 aborted: timeout: gone")


def _forged_completions(sim: Sim, sid: str) -> list[object]:
    """What a hostile new device that does not know ``s`` can send: no proof, garbage, a
    valid DLEQ proof for a secret of its own (x·G != S), and an honest proof made for another
    session."""
    from aura_node.crypto import dleq
    from aura_node.protocols.recovery.choreography import RecoveryComplete
    from aura_node.protocols.recovery.witnesses import (
        completion_base,
        completion_context,
        prove_completion,
    )

    acct = sim.nodes["d1"].services.accounts.only().account
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
        e = sim.nodes[d].services.accounts.only()
        shares.append(open_held_share(e.account, e.shares[0], sim.nodes[d].key))
    from aura_node.crypto.shamir import reconstruct as shamir_reconstruct

    s = shamir_reconstruct(shares)
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
    one for its own secret, one from another session): each device rejects it with a clear
    reason and stays in its veto window; a veto still stops every guardian before release."""
    sim = world(16)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2", "g3")
    sim.run(timers=False)
    forged = _forged_completions(sim, sid)
    for msg in forged:
        env = seal(sim.nodes["n1"].key, choreography="recovery", session=sid,
                   message=msg)  # type: ignore[arg-type]
        for d in ("d1", "d2"):
            sim.receive("n1", d, env)
    for d in ("d1", "d2"):
        assert not sim.nodes[d].sessions[sid].ended, d
        assert entry_status(sim, d, sid)["phase"] == "MayVeto"
        reasons = [r["reason"] for r in rejected(sim, d, sid)]
        assert len(reasons) == len(forged), reasons
        assert "carries no proof" in reasons[0]
        assert all("does not verify" in r for r in reasons[1:]), reasons
    assert sim.control("d1", sid, "veto") == {"session": sid, "state": "Vetoed"}
    sim.run()
    for g in ("g1", "g2", "g3"):
        assert sim.nodes[g].sessions[sid].error is not None, g
        assert "SealedRecoveryShare" not in sent_steps(sim, g, sid), g
    assert len(sim.nodes["n1"].services.accounts) == 0


def test_the_honest_completion_carries_a_proof_every_recipient_accepts() -> None:
    from aura_node.protocols.recovery.choreography import RecoveryComplete
    from aura_node.protocols.recovery.witnesses import SecretReconstructed

    sim = world(17)
    sid = start_recovery(sim)
    sim.run(timers=False)
    approve(sim, sid, "g1", "g2")
    sim.run()
    assert sim.nodes["n1"].sessions[sid].outcome is not None
    dones = [ev.envelope for ev in eng.parse_evidence(sim.nodes["n1"].records(sid))
             if isinstance(ev, eng.Sent) and ev.envelope.step == "RecoveryComplete"]
    assert dones
    msgs = {eng.decode_message(e, RecoveryComplete) for e in dones}
    assert len(msgs) == 1  # one proof, the same bytes to every recipient
    (msg,) = msgs
    assert len(msg.proof) == 64 and len(msg.proof_point) == 32
    acct = sim.nodes["d1"].services.accounts.only().account
    w = SecretReconstructed.verify(point=msg.proof_point, proof=msg.proof, account=acct,
                                   session_id=sid, new_device_key=msg.new_device_public_key)
    assert w.session_id == sid
    from aura_node.errors import WitnessError

    with pytest.raises(WitnessError, match="does not verify"):
        SecretReconstructed.verify(point=msg.proof_point, proof=msg.proof, account=acct,
                                   session_id="another", new_device_key=msg.new_device_public_key)
    for n in ("g1", "g2", "g3", "d1", "d2"):
        assert sim.nodes[n].sessions[sid].outcome is not None, n
        assert not rejected(sim, n, sid), n


def test_a_forged_recovery_complete_through_the_real_runtime() -> None:
    """The same attack through the daemon's SessionRuntime: the forged announcement is
    journaled as rejected, the device stays in MayVeto, its veto still goes out and no
    guardian releases."""
    from aura_node.harness import simulation as hs
    from aura_node.protocols.envelope import encode_wire
    from aura_node.protocols.recovery.choreography import RecoveryComplete

    sim = hs.Simulation(24, {"d1": "device", "d2": "device", "g1": "guardian",
                             "g2": "guardian", "g3": "guardian", "n1": "device"})
    hs.create_account(sim, "d1", ["d1", "d2"], 2, ["g1", "g2", "g3"], 2)
    acct = sim.nodes["d1"].accounts.only().account
    params = rec.start_params({"account": acct.account_id, "guardians": ["g1", "g2", "g3"]},
                              sim.nodes["n1"].services)
    sid = sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)
    sim.run(until=sim.now + 1.0)
    for g in ("g1", "g2", "g3"):
        sim.control(g, sid, "approve")
    sim.run(until=sim.now + 2.0)
    d1 = sim.nodes["d1"]
    entry = d1.session(sid)
    assert entry is not None and entry.active and entry.state == "MayVeto"
    forged = RecoveryComplete(account_id=acct.account_id, account_public_key=acct.public_key,
                              new_device_public_key=sim.nodes["n1"].key.public.raw)
    hostile = seal(sim.nodes["n1"].key, choreography="recovery", session=sid, message=forged)
    sim._deliver("n1", "d1", encode_wire(hostile))
    assert entry.active and entry.state == "MayVeto"
    # refused before the monitor stepped: journaled as misbehaviour with the signed envelope
    refused = [eng.parse_record(r) for r in d1.records(sid) if r.kind == eng.KIND_MISBEHAVIOUR]
    assert [(m.peer, m.code) for m in refused] == [("n1", "refused_by_protocol")]  # type: ignore[union-attr]
    assert "no proof" in refused[0].reason  # type: ignore[union-attr]
    assert sim.control("d1", sid, "veto")["state"] == "Vetoed"
    sim.run()
    for g in ("g1", "g2", "g3"):
        ge = sim.nodes[g].session(sid)
        assert ge is not None and ge.outcome == "failed", g
        sent = {eng.parse_record(r).envelope.step  # type: ignore[union-attr]
                for r in sim.nodes[g].records(sid) if r.kind == eng.KIND_OUT}
        assert "SealedRecoveryShare" not in sent, g
    assert len(sim.nodes["n1"].accounts) == 0
