"""The crypto benchmark's DKD floor is the real blinded computation (no timing asserted)."""

from __future__ import annotations

import pytest

from aura_node.bench import crypto as bench


@pytest.mark.parametrize("t", [2, 3])
def test_initiator_work_derives_the_account_key(t: int) -> None:
    one = bench.dkd_role_work("initiator", t)
    fp = one()
    assert len(fp) == 32 and fp == one()
    # The fixture account and blinding are seeded: a fresh fixture derives the same key, and
    # the participant's work (answering the same request) runs its checks without error.
    assert bench.dkd_role_work("initiator", t)() == fp
    assert len(bench.dkd_role_work("participant", t)()) == 32


def test_operation_lists_follow_the_blinded_session() -> None:
    init = bench.dkd_role_operations("initiator", 3)
    assert init["dleq verify"] == 2 and init["ed25519 verify (256 B)"] == 6
    assert init["scalar mult (x·H)"] == 2 and init["hpke seal 32 B"] == 1
    assert init["lagrange combine t=3"] == 1
    part = bench.dkd_role_operations("participant", 2)
    assert part["dleq verify"] == 1 and part["dleq prove"] == 1
    assert part["ed25519 verify (256 B)"] == 4 and part["ed25519 sign (256 B)"] == 3
    with pytest.raises(ValueError, match="t >= 2"):
        bench.dkd_role_operations("participant", 1)


def test_floor_is_positive_and_adds_up() -> None:
    floor = bench.dkd_crypto_floor(2, quick=True)
    assert 0 < floor.participant < 1 and 0 < floor.initiator < 1
    assert floor.session == pytest.approx(floor.initiator + floor.participant)
    three = bench.DkdCryptoFloor(t=3, initiator=2.0, participant=1.0)
    assert three.session == 4.0


def test_prediction_uses_every_listed_operation() -> None:
    ops = bench.dkd_role_operations("initiator", 2)
    rates = dict.fromkeys(ops, 1000.0)
    expected = sum(ops.values()) / 1000
    assert bench.predicted_seconds("initiator", 2, rates) == pytest.approx(expected)
