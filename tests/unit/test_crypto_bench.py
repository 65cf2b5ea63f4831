"""The crypto benchmark's DKD session work is the real computation (no timing asserted)."""

from __future__ import annotations

from aura_node.bench import crypto as bench


def test_dkd_session_work_derives_the_account_key() -> None:
    one = bench.dkd_session_work(3, 2)
    fp = one()
    assert len(fp) == 32 and fp == one()
    # The fixture account is seeded, so a fresh fixture derives the same key again.
    assert bench.dkd_session_work(3, 2)() == fp


def test_dkd_session_operation_list() -> None:
    ops = bench.dkd_session_operations(5, 3)
    assert ops["ed25519_verify"] == 8
    assert ops["dleq_verify"] == 5
    assert ops["combine t=3"] == 1


def test_floor_is_positive() -> None:
    assert 0 < bench.dkd_session_crypto_floor(2, 2, quick=True) < 1
