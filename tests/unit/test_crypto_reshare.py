"""Resharing maths: sub-dealings, their checks, combination, and that epochs never mix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto.dealing import Holder
from aura_node.crypto.errors import SealError, ShareError
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point, Scalar, seeded_rng
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.reshare import (
    combine_commitments,
    combine_subshares,
    deal_subshares,
    open_and_verify_subshare,
)
from aura_node.crypto.shamir import Share, reconstruct, split

ACCOUNT = "a" * 32
SESSION = "s" * 32


def _keys(n: int, tag: bytes) -> list[DeviceKey]:
    return [DeviceKey.from_seed(bytes([i]) + tag.ljust(31, b"k")[:31]) for i in range(1, n + 1)]


def _reshare(shares: list[Share], old: FeldmanCommitments, keys: list[DeviceKey], t2: int,
             seed: bytes) -> tuple[list[Share], FeldmanCommitments]:
    """Every dealer in ``shares`` deals to ``keys``; every new holder opens, verifies and
    combines. Returns the new shares and the new commitments."""
    rng = seeded_rng(seed)
    holders = [Holder(index=i, public_key=k.public) for i, k in enumerate(keys, start=1)]
    dealings = [deal_subshares(s, threshold=t2, holders=holders, account_id=ACCOUNT,
                               session_id=SESSION, role="device", rng=rng) for s in shares]
    new = combine_commitments({d.dealer_index: d.commitments for d in dealings},
                              public_key=old.public_key)
    out = []
    for h, key in zip(holders, keys, strict=True):
        subs = {d.dealer_index: open_and_verify_subshare(
            commitments=d.commitments, old_public_share=old.public_share(d.dealer_index),
            threshold=t2, sealed=d.share_for(key.device_id).sealed, index=h.index,
            dealer_index=d.dealer_index, device_key=key, account_id=ACCOUNT,
            session_id=SESSION, role="device") for d in dealings}
        share = combine_subshares(subs, index=h.index)
        new.verify_share(share)  # the combined share fits the combined commitments
        out.append(share)
    return out, new


@st.composite
def reshares(draw: st.DrawFn) -> tuple[int, int, list[int], int, int, list[int], bytes]:
    n = draw(st.integers(1, 5))
    t = draw(st.integers(1, n))
    dealers = draw(st.lists(st.integers(1, n), min_size=t, max_size=t, unique=True))
    n2 = draw(st.integers(1, 5))
    t2 = draw(st.integers(1, n2))
    subset = draw(st.lists(st.integers(1, n2), min_size=t2, max_size=t2, unique=True))
    return t, n, dealers, t2, n2, subset, draw(st.binary(min_size=1, max_size=6))


@settings(max_examples=25, deadline=None)
@given(reshares())
def test_any_t_dealers_give_shares_any_t2_of_which_give_s(
        case: tuple[int, int, list[int], int, int, list[int], bytes]) -> None:
    t, n, dealers, t2, n2, subset, seed = case
    rng = seeded_rng(seed)
    s = Scalar.random(rng)
    poly, shares = split(s, threshold=t, indices=list(range(1, n + 1)), rng=rng)
    old = FeldmanCommitments.commit(poly)
    new_shares, new = _reshare([shares[i - 1] for i in dealers], old, _keys(n2, seed), t2, seed)
    assert new.public_key == Point.base_mul(s) == old.public_key
    assert new.threshold == t2
    assert reconstruct([new_shares[i - 1] for i in subset], threshold=t2) == s
    if t2 > 1:  # one share short says nothing
        assert reconstruct([new_shares[i - 1] for i in subset[:-1]]) != s
    # an old-epoch share in place of a new one (same index) interpolates garbage
    if t >= 2 and t2 >= 2:
        swap = subset[0]
        if swap <= n and shares[swap - 1].value != new_shares[swap - 1].value:
            mixed = [shares[swap - 1], *(new_shares[i - 1] for i in subset[1:])]
            assert reconstruct(mixed, threshold=t2) != s


def test_old_and_new_epoch_shares_do_not_combine() -> None:
    rng = seeded_rng(b"mix")
    s = Scalar.random(rng)
    poly, shares = split(s, threshold=2, indices=[1, 2, 3], rng=rng)
    old = FeldmanCommitments.commit(poly)
    new_shares, _ = _reshare(list(shares[:2]), old, _keys(3, b"mix"), 2, b"mix")
    assert reconstruct(list(new_shares[:2])) == s
    assert reconstruct(list(shares[:2])) == s  # the old epoch alone still works in maths ...
    # ... but the removed holder 3's old share with any new share does not give s
    for k in (0, 1):
        assert reconstruct([shares[2], new_shares[k]]) != s


def test_a_dealer_must_deal_its_real_share() -> None:
    rng = seeded_rng(b"cheat")
    s = Scalar.random(rng)
    poly, shares = split(s, threshold=2, indices=[1, 2, 3], rng=rng)
    old = FeldmanCommitments.commit(poly)
    keys = _keys(2, b"cheat")
    holders = [Holder(index=i, public_key=k.public) for i, k in enumerate(keys, start=1)]
    fake = deal_subshares(Share(index=1, value=Scalar.random(rng)), threshold=2, holders=holders,
                          account_id=ACCOUNT, session_id=SESSION, role="device", rng=rng)
    with pytest.raises(ShareError, match="other than its share"):
        open_and_verify_subshare(
            commitments=fake.commitments, old_public_share=old.public_share(1), threshold=2,
            sealed=fake.shares[0].sealed, index=1, dealer_index=1, device_key=keys[0],
            account_id=ACCOUNT, session_id=SESSION, role="device")
    honest = deal_subshares(shares[1], threshold=2, holders=holders, account_id=ACCOUNT,
                            session_id=SESSION, role="device", rng=rng)
    with pytest.raises(ShareError, match="do not combine to the account key"):
        combine_commitments({1: fake.commitments, 2: honest.commitments}, public_key=old.public_key)
    with pytest.raises(ShareError, match="degree"):
        open_and_verify_subshare(
            commitments=honest.commitments, old_public_share=old.public_share(2), threshold=3,
            sealed=honest.shares[0].sealed, index=1, dealer_index=2, device_key=keys[0],
            account_id=ACCOUNT, session_id=SESSION, role="device")


def test_a_subshare_is_bound_to_its_dealer_recipient_and_commitments() -> None:
    rng = seeded_rng(b"bind")
    s = Scalar.random(rng)
    poly, shares = split(s, threshold=2, indices=[1, 2], rng=rng)
    old = FeldmanCommitments.commit(poly)
    keys = _keys(2, b"bind")
    holders = [Holder(index=i, public_key=k.public) for i, k in enumerate(keys, start=1)]
    d1 = deal_subshares(shares[0], threshold=2, holders=holders, account_id=ACCOUNT,
                        session_id=SESSION, role="device", rng=rng)
    d2 = deal_subshares(shares[1], threshold=2, holders=holders, account_id=ACCOUNT,
                        session_id=SESSION, role="device", rng=rng)
    common = {"threshold": 2, "account_id": ACCOUNT, "session_id": SESSION}
    # dealer 1's sub-share presented as dealer 2's: the seal's binding names the dealer
    with pytest.raises(SealError):
        open_and_verify_subshare(commitments=d2.commitments, old_public_share=old.public_share(2),
                                 sealed=d1.shares[0].sealed, index=1, dealer_index=2,
                                 device_key=keys[0], role="device", **common)  # type: ignore[arg-type]
    # another recipient cannot open it; a guardian purpose does not open a device sub-share
    with pytest.raises(SealError):
        open_and_verify_subshare(commitments=d1.commitments, old_public_share=old.public_share(1),
                                 sealed=d1.shares[0].sealed, index=1, dealer_index=1,
                                 device_key=keys[1], role="device", **common)  # type: ignore[arg-type]
    with pytest.raises(SealError):
        open_and_verify_subshare(commitments=d1.commitments, old_public_share=old.public_share(1),
                                 sealed=d1.shares[0].sealed, index=1, dealer_index=1,
                                 device_key=keys[0], role="guardian", **common)  # type: ignore[arg-type]
    # right seal, commitments of another sub-dealing with the same constant term: Feldman fails
    other = deal_subshares(shares[0], threshold=2, holders=holders, account_id=ACCOUNT,
                           session_id=SESSION, role="device", rng=rng)
    with pytest.raises(ShareError, match="Feldman"):
        open_and_verify_subshare(commitments=other.commitments,
                                 old_public_share=old.public_share(1),
                                 sealed=d1.shares[0].sealed, index=1, dealer_index=1,
                                 device_key=keys[0], role="device", **common)  # type: ignore[arg-type]


def test_combine_refuses_a_subshare_for_another_index() -> None:
    with pytest.raises(ShareError, match="for index 2"):
        combine_subshares({1: Share(index=2, value=Scalar.one())}, index=1)
    with pytest.raises(ShareError):
        combine_subshares({}, index=1)
