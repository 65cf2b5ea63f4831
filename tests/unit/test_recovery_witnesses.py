"""Recovery witnesses: ApprovalThresholdMet and SharesCollected reject every bad pool."""

from __future__ import annotations

import dataclasses

import pytest

from aura_node.crypto.dkd import dkd_base
from aura_node.crypto.group import Point
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.recovery import recovery_binding
from aura_node.crypto.seal import seal_share
from aura_node.crypto.shamir import Share
from aura_node.errors import WitnessError
from aura_node.harness.simulation import Simulation, node_key
from aura_node.protocols.account import AccountRecord, open_held_share
from aura_node.protocols.recovery.witnesses import (
    ApprovalThresholdMet,
    SealedGuardianShare,
    SharesCollected,
    reconstruct,
    sign_approval,
)
from tests.unit.test_genesis_roles import ROLES, create

SESSION = "ab" * 16


@pytest.fixture(scope="module")
def world() -> tuple[Simulation, AccountRecord]:
    sim = Simulation(7, ROLES)
    create(sim)
    sim.run()
    return sim, sim.nodes["g1"].accounts.only().account


NEW = DeviceKey.from_seed(b"n1".ljust(32, b"\0"))


def pinned(sim: Simulation) -> dict[str, object]:
    return {n.key.device_id: n.key.public for n in sim.nodes.values()}


def approvals(sim: Simulation, acct: AccountRecord, names: list[str], session: str = SESSION,
              new: DeviceKey = NEW, account_id: str | None = None) -> list[object]:
    return [sign_approval(sim.nodes[n].key, session_id=session,
                          account_id=account_id or acct.account_id, new_device_key=new.public)
            for n in names]


def verify(sim: Simulation, acct: AccountRecord, items: list[object]) -> ApprovalThresholdMet:
    return ApprovalThresholdMet.verify(items, account=acct, session_id=SESSION,  # type: ignore[arg-type]
                                       new_device=NEW.public, pinned=pinned(sim))  # type: ignore[arg-type]


def test_threshold_of_guardian_approvals_verifies(world: tuple[Simulation, AccountRecord]) -> None:
    sim, acct = world
    w = verify(sim, acct, approvals(sim, acct, ["g1", "g3"]))
    assert len(w.guardians) == 2 and w.account_id == acct.account_id


@pytest.mark.parametrize("case, fragment", [
    ("below", "2 of 3 members needed"),
    ("duplicate", "2 of 3 members needed"),
    ("non_guardian", "not a member"),
    ("wrong_session", "is for session"),
    ("wrong_device", "onto device"),
    ("wrong_account", "is not for account"),
    ("bad_signature", "does not verify"),
])
def test_approval_verifier_rejects(world: tuple[Simulation, AccountRecord], case: str,
                                   fragment: str) -> None:
    sim, acct = world
    if case == "below":
        items = approvals(sim, acct, ["g1"])
    elif case == "duplicate":
        items = approvals(sim, acct, ["g1", "g1"])
    elif case == "non_guardian":
        items = approvals(sim, acct, ["g1", "d2"])
    elif case == "wrong_session":
        items = approvals(sim, acct, ["g1"]) + approvals(sim, acct, ["g2"], session="cd" * 16)
    elif case == "wrong_device":
        items = approvals(sim, acct, ["g1", "g2"], new=DeviceKey.from_seed(b"x" * 32))
    elif case == "wrong_account":
        items = approvals(sim, acct, ["g1", "g2"], account_id="00" * 16)
    else:
        good = approvals(sim, acct, ["g1", "g2"])
        sig = bytearray(good[1].signature)  # type: ignore[attr-defined]
        sig[0] ^= 1
        items = [good[0], dataclasses.replace(good[1], signature=bytes(sig))]  # type: ignore[type-var]
    with pytest.raises(WitnessError, match=fragment):
        verify(sim, acct, items)


def test_witnesses_have_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        ApprovalThresholdMet()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        SharesCollected()  # type: ignore[call-arg]


def _shares(sim: Simulation, acct: AccountRecord, names: list[str], session: str = SESSION
            ) -> list[SealedGuardianShare]:
    out = []
    for n in names:
        node = sim.nodes[n]
        est = node.accounts.only()
        share = open_held_share(est.account, est.shares[0], node.key)
        sealed = seal_share(share, NEW.public, recovery_binding(
            account_id=acct.account_id, session_id=session, new_device_id=NEW.device_id))
        out.append(SealedGuardianShare(sender=n, index=share.index, sealed=sealed))
    return out


def test_shares_collected_reconstructs_the_account_secret(
        world: tuple[Simulation, AccountRecord]) -> None:
    sim, acct = world
    w = SharesCollected.verify(_shares(sim, acct, ["g2", "g3"]), account=acct,
                               session_id=SESSION, device_key=NEW)
    s = reconstruct(w, acct)
    assert Point.base_mul(s).to_bytes() == acct.public_key
    assert "hidden" in repr(w)
    assert dkd_base(acct.account_id, "ctx")  # the recovered key feeds DKD (smoke)


def test_shares_collected_rejects(world: tuple[Simulation, AccountRecord]) -> None:
    sim, acct = world
    good = _shares(sim, acct, ["g1", "g2"])
    kw = {"account": acct, "session_id": SESSION, "device_key": NEW}
    with pytest.raises(WitnessError, match="2 verified guardian shares needed"):
        SharesCollected.verify(good[:1], **kw)  # type: ignore[arg-type]
    with pytest.raises(WitnessError, match="two shares from guardian g1"):
        SharesCollected.verify([good[0], good[0]], **kw)  # type: ignore[arg-type]
    with pytest.raises(WitnessError, match="not a guardian"):
        SharesCollected.verify([good[0], dataclasses.replace(good[1], sender="d2")], **kw)  # type: ignore[arg-type]
    with pytest.raises(WitnessError, match="index"):
        SharesCollected.verify([good[0], dataclasses.replace(good[1], index=3)], **kw)  # type: ignore[arg-type]
    other_session = _shares(sim, acct, ["g2"], session="cd" * 16)
    with pytest.raises(WitnessError, match="rejected"):
        SharesCollected.verify([good[0], other_session[0]], **kw)  # type: ignore[arg-type]
    # a share that fails its Feldman check: g2 seals a wrong value for its own index
    wrong = Share(index=good[1].index, value=open_held_share(
        acct, sim.nodes["g1"].accounts.only().shares[0], sim.nodes["g1"].key).value)
    bad = seal_share(wrong, NEW.public, recovery_binding(
        account_id=acct.account_id, session_id=SESSION, new_device_id=NEW.device_id))
    with pytest.raises(WitnessError, match="share from guardian g2 rejected"):
        SharesCollected.verify([good[0], SealedGuardianShare(sender="g2", index=good[1].index,
                                                             sealed=bad)], **kw)  # type: ignore[arg-type]


def test_node_keys_are_deterministic() -> None:
    assert node_key(7, "a").public == node_key(7, "a").public != node_key(8, "a").public
