"""The reshare protocol on the real session runtime (deterministic simulation): success, the
lost-phone story with DKD results unchanged, abort on a bad sub-dealing with the old epoch still
usable, and crashes at every journal append point never splitting the epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest

from aura_node.crypto import reshare as rs
from aura_node.crypto.group import Scalar
from aura_node.crypto.shamir import Share, reconstruct
from aura_node.harness.simulation import CRASH_MODES, Simulation, sync_accounts
from aura_node.protocols import engine as eng
from aura_node.protocols.account import AccountError, AccountStore, open_held_share
from aura_node.protocols.dkd import roles as dkd_roles
from aura_node.protocols.envelope import decode_wire
from aura_node.protocols.epochs import KIND_EPOCH_FACT, EpochFact
from aura_node.protocols.reshare import roles as rr

NODES: dict[str, Any] = {**dict.fromkeys(("d1", "d2", "d3", "d4", "d5"), "device"),
                         **dict.fromkeys(("g1", "g2", "g3"), "guardian")}


def world(seed: int = 0) -> tuple[Simulation, str]:
    sim = Simulation(seed, NODES)
    record = sim.deal_account(["d1", "d2", "d3"], 2, ["g1", "g2", "g3"], 2)
    return sim, record.account_id


def reshare(sim: Simulation, coordinator: str, operation: rr.Operation,
            **args: Any) -> str:
    params = rr.plan_session(args, sim.nodes[coordinator].services, operation=operation)
    return sim.start(coordinator, "reshare", roles=rr.session_roles(params, coordinator),
                     params=params)


def dkd(sim: Simulation, initiator: str, participants: Sequence[str], context: str = "mail"
        ) -> tuple[bool, dict[str, Any]]:
    p = dkd_roles.session_params({"context": context, "participants": list(participants)},
                                 sim.nodes[initiator].services)
    sid = sim.start(initiator, "dkd", roles=dkd_roles.session_roles(p), params=p)
    sim.run()
    end = ending(sim, initiator, sid)
    assert end is not None
    return end


def ending(sim: Simulation, node: str, sid: str) -> tuple[bool, dict[str, Any]] | None:
    for rec in sim.nodes[node].records(sid):
        if rec.kind == eng.KIND_COMPLETE:
            return True, dict(msgspec.msgpack.decode(rec.body, type=eng.CompleteBody).result)
        if rec.kind == eng.KIND_FAIL:
            return False, dict(msgspec.to_builtins(msgspec.msgpack.decode(
                rec.body, type=eng.FailBody)))
    return None


def epochs(sim: Simulation, account: str) -> dict[str, int]:
    return {n: node.accounts.get(account).epoch for n, node in sim.nodes.items()
            if account in node.accounts.accounts()}


def secret_from(sim: Simulation, account: str, names: Sequence[str]) -> Scalar:
    """``s`` interpolated from the device shares ``names`` hold now (test-only reconstruction)."""
    shares: list[Share] = []
    for n in names:
        est = sim.nodes[n].accounts.get(account)
        (held,) = [h for h in est.shares if h.holder_set == "devices"]
        shares.append(open_held_share(est.account, held, sim.nodes[n].key))
    return reconstruct(shares)


def test_lost_phone_story_keeps_every_derived_key() -> None:
    sim, account = world()
    ok, before = dkd(sim, "d1", ["d1", "d2"])
    assert ok
    f = before["fingerprint"]

    sid = reshare(sim, "d1", "remove-device", name="d3")
    sim.run()
    for n in ("d1", "d2", "g1", "g2", "g3"):
        end = ending(sim, n, sid)
        assert end is not None and end[0], (n, end)
    assert ending(sim, "d3", sid) is None  # d3 took no part
    assert epochs(sim, account) == {"d1": 1, "d2": 1, "d3": 0, "g1": 1, "g2": 1, "g3": 1}
    result = ending(sim, "d1", sid)
    assert result is not None
    assert result[1]["epoch"] == 1 and result[1]["holders"]["devices"] == ["d1", "d2"]
    rec = sim.nodes["d1"].accounts.get(account).account
    assert (rec.threshold, [h.name for h in rec.devices]) == (2, ["d1", "d2"])

    # every holder journaled the signed fact; it extends the genesis root and verifies
    for n in ("d1", "d2", "g1"):
        (body,) = [r.body for r in sim.nodes[n].records(sid) if r.kind == KIND_EPOCH_FACT]
        fact = msgspec.msgpack.decode(body, type=EpochFact)
        assert fact.epoch == 1 and fact.account == rec
        assert {(s.role, s.device_id) for s in fact.signatures} == {
            *(("dealer", sim.nodes[d].key.device_id) for d in ("d1", "d2")),
            *(("holder", sim.nodes[h].key.device_id) for h in ("d1", "d2", "g1", "g2", "g3"))}
        for sig in fact.signatures:
            sig.verify(fact.digest())

    sid = reshare(sim, "d2", "add-device", name="d4")
    sim.run()
    sid = reshare(sim, "d2", "add-device", name="d5", threshold=3)
    sim.run()
    end = ending(sim, "d2", sid)
    assert end is not None and end[0], end
    assert epochs(sim, account) == {"d1": 3, "d2": 3, "d3": 0, "d4": 3, "d5": 3,
                                    "g1": 3, "g2": 3, "g3": 3}
    assert sim.nodes["d4"].accounts.get(account).account.threshold == 3

    for who in (["d1", "d2", "d4"], ["d2", "d4", "d5"], ["d5", "d1", "d4"]):
        ok, res = dkd(sim, who[0], who)
        assert ok and res["fingerprint"] == f, (who, res)
    # the same s, interpolated from new shares; d3's old share does not combine with them
    s = secret_from(sim, account, ["d1", "d2", "d4"])
    assert secret_from(sim, account, ["d2", "d4", "d5"]) == s
    old = sim.nodes["d3"].accounts.get(account)
    d3_share = open_held_share(old.account, old.shares[0], sim.nodes["d3"].key)
    d1_new = sim.nodes["d1"].accounts.get(account)
    d1_share = open_held_share(d1_new.account, d1_new.shares[0], sim.nodes["d1"].key)
    assert reconstruct([d3_share, d1_share]) != s

    # the removed device's DKD (it has not learnt of its removal: no sync yet) is refused by
    # the current holders with a signed refusal naming the epoch; its session ends with it,
    # at once, not at its deadline
    started = sim.now
    ok, res = dkd(sim, "d3", ["d3", "d1"])
    assert not ok and res["code"] == "refused", res
    assert "d1" in res["reason"] and "d3: not a device of account" in res["reason"], res
    assert "current epoch 3" in res["reason"], res
    assert sim.now - started < sim.nodes["d3"].protocols.dkd_timeout_seconds / 2
    assert not sim.nodes["d1"].rejections(), sim.nodes["d1"].rejections()
    # a DKD on a current device that asks d3 is refused before it starts
    with pytest.raises(eng.ParamsError, match="'d3' is not a device"):
        dkd_roles.session_params({"context": "mail", "participants": ["d1", "d3", "d2"]},
                                 sim.nodes["d1"].services)
    assert sim.check().ok, sim.check().violations


def test_guardians_are_replaced_and_the_new_ones_hold_the_same_key() -> None:
    sim, account = world(1)
    sid = reshare(sim, "d1", "guardians", set=["g2", "g3"], threshold=2)
    sim.run()
    end = ending(sim, "d1", sid)
    assert end is not None and end[0], end
    rec = sim.nodes["g2"].accounts.get(account).account
    assert [h.name for h in rec.guardians] == ["g2", "g3"] and rec.guardian_threshold == 2
    assert epochs(sim, account)["g1"] == 0  # g1 took no part, it keeps what it had
    shares = []
    for g in ("g2", "g3"):
        est = sim.nodes[g].accounts.get(account)
        shares.append(open_held_share(est.account, est.shares[0], sim.nodes[g].key))
    assert reconstruct(shares) == secret_from(sim, account, ["d1", "d2"])


def _bad_dealer(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """The dealer with old index ``index`` deals a random value instead of its share."""
    real = rs.deal_subshares

    def deal(share: Share, **kw: Any) -> rs.SubDealing:
        if share.index == index:
            share = Share(index=index, value=Scalar.from_int(12345))
        return real(share, **kw)

    monkeypatch.setattr(rs, "deal_subshares", deal)


def test_a_bad_sub_dealing_aborts_and_the_old_epoch_stays_usable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim, account = world(2)
    ok, before = dkd(sim, "d2", ["d2", "d3"])
    assert ok
    _bad_dealer(monkeypatch, 2)  # d2
    sid = reshare(sim, "d1", "add-device", name="d4")
    sim.run()
    for n in ("d1", "d2", "d3", "d4", "g1"):
        end = ending(sim, n, sid)
        assert end is not None and not end[0], (n, end)
    assert any("SubDealing from d2" in r.reason and "other than its share" in r.reason
               for r in sim.nodes["d1"].rejections(sid))
    assert set(epochs(sim, account).values()) == {0}
    assert "d4" not in [h.name for h in sim.nodes["d1"].accounts.get(account).account.devices]
    ok, after = dkd(sim, "d3", ["d3", "d1"])
    assert ok and after["fingerprint"] == before["fingerprint"]


def test_after_recovery_a_single_holder_reshares_back_to_a_threshold() -> None:
    """A 1-of-1 holder (what recovery leaves) deals alone to three devices at 2-of-3; the
    guardians, further on in epochs, move to the epoch above theirs."""
    sim = Simulation(3, NODES)
    record = sim.deal_account(["d1"], 1, ["g1", "g2"], 2)
    account = record.account_id
    ok, before = dkd(sim, "d1", ["d1"])
    assert ok
    sid = reshare(sim, "d1", "reshare", devices=["d1", "d4", "d5"], threshold=2)
    sim.run()
    end = ending(sim, "d1", sid)
    assert end is not None and end[0], end
    assert set(epochs(sim, account).values()) == {1}
    ok, res = dkd(sim, "d4", ["d4", "d5"])
    assert ok and res["fingerprint"] == before["fingerprint"]


def _drop(sim: Simulation, step: str, src: str, dst: str) -> list[str]:
    """Lose every ``reshare/step`` message from ``src`` to ``dst`` for good (no link bounce,
    no re-send); returns a log of what was dropped."""
    dropped: list[str] = []

    def intercept(s: str, d: str, payload: bytes) -> bytes | None:
        env = decode_wire(payload).envelope
        if (s, d, env.choreography, env.step) == (src, dst, "reshare", step):
            dropped.append(env.session)
            return None
        return payload

    sim.intercept = intercept
    return dropped


def _current(sim: Simulation, account: str, names: Sequence[str]) -> dict[str, int]:
    return {n: sim.nodes[n].accounts.current_epoch(account) for n in names}


HOLDERS_AFTER_ADD = ("d1", "d2", "d3", "d4", "g1", "g2", "g3")


def test_a_participant_that_never_gets_the_announcement_catches_up_by_account_sync() -> None:
    sim, account = world(6)
    ok, before = dkd(sim, "d1", ["d1", "d2"])
    assert ok
    dropped = _drop(sim, "EpochAnnounce", "d1", "d4")
    sid = reshare(sim, "d1", "add-device", name="d4")
    sim.run()
    assert dropped == [sid]
    end = ending(sim, "d1", sid)
    assert end is not None and end[0] and end[1]["unconfirmed"] == ["d4"], end
    # d4 signed, so its share is journaled; the fact has not reached it: not usable yet
    assert sim.nodes["d4"].accounts.current_epoch(account) == 0
    with pytest.raises(AccountError, match="holds no share of account .* yet"):
        sim.nodes["d4"].accounts.get(account)

    sim.intercept = None
    sync_accounts(sim)
    sim.run()
    assert set(_current(sim, account, HOLDERS_AFTER_ADD).values()) == {1}
    assert {n: e for n, e in epochs(sim, account).items() if n != "d3"} == dict.fromkeys(
        ("d1", "d2", "d4", "g1", "g2", "g3"), 1)
    for who in (["d4", "d1"], ["d2", "d4"]):
        ok, res = dkd(sim, who[0], who)
        assert ok and res["fingerprint"] == before["fingerprint"], (who, res)
    assert sim.check().ok, sim.check().violations


def test_a_participant_that_crashed_after_signing_catches_up_after_its_restart() -> None:
    sim, account = world(7)
    ok, before = dkd(sim, "d1", ["d1", "d2"])
    assert ok
    sid = reshare(sim, "d1", "add-device", name="d4")
    # d2 (a dealer) goes down as its signature leaves, until the coordinator has stopped
    # waiting for its confirmation: nobody re-sends the announcement after its restart
    down = 4 * sim.nodes["d1"].protocols.reshare_timeout_seconds

    def intercept(s: str, d: str, payload: bytes) -> bytes | None:
        if (s, decode_wire(payload).envelope.step) == ("d2", "EpochSigned"):
            sim.intercept = None  # once: its restart re-sends the signature
            sim.at(sim.now, "crash d2", lambda: sim.crash("d2", downtime=down))
        return payload

    sim.intercept = intercept
    sim.run()
    sim.intercept = None
    assert sim.nodes["d2"].up and sim.nodes["d2"].crashes == 1
    end = ending(sim, "d1", sid)
    assert end is not None and end[0] and end[1]["unconfirmed"] == ["d2"], end
    assert sim.nodes["d2"].accounts.current_epoch(account) == 0
    sync_accounts(sim)
    sim.run()
    assert set(_current(sim, account, HOLDERS_AFTER_ADD).values()) == {1}
    assert sim.nodes["d2"].accounts.get(account).epoch == 1
    ok, res = dkd(sim, "d2", ["d2", "d4"])
    assert ok and res["fingerprint"] == before["fingerprint"], res
    assert sim.check().ok, sim.check().violations


def test_an_aborted_attempts_share_never_becomes_current() -> None:
    """Every participant signs, one signature is lost: the session aborts with the shares of
    epoch 1 journaled on the participants. They stay unused; the next attempt's epoch is 1
    again, and its records (not the aborted ones) are what every holder uses, in a store
    rebuilt from the journal too."""
    sim, account = world(8)
    ok, before = dkd(sim, "d1", ["d1", "d2"])
    assert ok
    _drop(sim, "EpochSigned", "g1", "d1")
    first = reshare(sim, "d1", "add-device", name="d4")
    sim.run()
    for n in ("d1", "d2", "d4", "g1"):
        end = ending(sim, n, first)
        assert end is not None and not end[0], (n, end)
    aborted = [r for r in sim.nodes["d4"].records(first) if r.kind == "account.established"]
    assert len(aborted) == 1  # d4 signed: its share of the attempt is journaled
    assert set(_current(sim, account, HOLDERS_AFTER_ADD).values()) == {0}
    assert {n: sim.nodes[n].accounts.get(account).epoch for n in HOLDERS_AFTER_ADD
            if n != "d4"} == dict.fromkeys(("d1", "d2", "d3", "g1", "g2", "g3"), 0)
    with pytest.raises(AccountError, match="holds no share of account .* yet"):
        sim.nodes["d4"].accounts.get(account)

    sim.intercept = None
    second = reshare(sim, "d1", "add-device", name="d4")
    sim.run()
    end = ending(sim, "d1", second)
    assert end is not None and end[0] and end[1]["epoch"] == 1, end
    for node in ("d4", "d2"):
        for store in (sim.nodes[node].accounts, AccountStore.from_records(
                (r.kind, r.body) for r in sim.nodes[node].journal.records())):
            est = store.get(account)
            assert est.epoch == 1 and est.shares[0].session_id == second, node
    ok, res = dkd(sim, "d4", ["d4", "d1"])
    assert ok and res["fingerprint"] == before["fingerprint"], res
    assert sim.check().ok, sim.check().violations


def _appends(seed: int) -> Iterator[int]:
    sim, _ = world(seed)
    base = sim.stats.appends
    reshare(sim, "d1", "remove-device", name="d3")
    sim.run()
    yield from range(base + 1, sim.stats.appends + 1)


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_crash_at_every_append_point_never_splits_the_epoch(mode: str) -> None:
    points = list(_appends(4))
    assert len(points) > 10
    for k in points:
        sim, account = world(4)
        sim.crash_at = {k: mode}
        sim.hold_while_down = True
        sid = reshare(sim, "d1", "remove-device", name="d3")  # a lost start: nothing runs
        sim.run()
        assert all(n.up for n in sim.nodes.values()), k
        participants = ("d1", "d2", "g1", "g2", "g3")
        seen = {epochs(sim, account)[n] for n in participants}
        assert len(seen) == 1, f"crash point {k} ({mode}): split epoch {epochs(sim, account)}"
        ends = {n: ending(sim, n, sid) for n in participants}
        if seen == {1}:
            assert all(e is not None and e[0] for e in ends.values()), (k, ends)
        else:
            assert not any(e is not None and e[0] for e in ends.values()), (k, ends)
        assert sim.check().ok, (k, mode, sim.check().violations)


@pytest.mark.parametrize(("operation", "args", "error"), [
    ("remove-device", {"name": "d1"}, "run it on a device that stays"),
    ("remove-device", {"name": "d9"}, "'d9' is not a device of account"),
    ("add-device", {"name": "d2"}, "d2 is a device of the account already"),
    ("add-device", {"name": "g1"}, "g1 is a pinned guardian, not a device"),
    ("add-device", {"name": "x9"}, "'x9' is neither this device nor a pinned peer"),
    ("add-device", {"name": "d4", "threshold": 5}, "threshold must be in 1..4"),
    ("reshare", {"devices": ["d2", "d4"], "threshold": 1}, "must be one of the new devices"),
    ("reshare", {"devices": ["d1", "d4"], "threshold": 1, "guardians": ["g1"]},
     "--guardians needs --guardian-threshold"),
    ("guardians", {"set": ["g1", "g2"]}, "--threshold is required"),
    ("guardians", {"set": ["g1", "g2"], "threshold": 3}, "guardian threshold must be in 1..2"),
    ("guardians", {"set": ["d2"], "threshold": 1}, "d2 is a pinned device, not a guardian"),
])
def test_bad_operator_input_is_one_clear_line(operation: rr.Operation, args: dict[str, Any],
                                             error: str) -> None:
    sim, _ = world(5)
    with pytest.raises(eng.ParamsError) as info:
        rr.plan_session(args, sim.nodes["d1"].services, operation=operation)
    assert error in info.value.message and "\n" not in info.value.message
    assert info.value.message.startswith(f"account {operation}: ")
