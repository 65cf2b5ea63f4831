"""Shamir sharing, Lagrange interpolation and Feldman commitments."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto.errors import PointEncodingError, ShareError, ThresholdError
from aura_node.crypto.feldman import FeldmanCommitments, public_share, verify_share
from aura_node.crypto.group import L, Point, Scalar, hash_to_group, seeded_rng
from aura_node.crypto.shamir import (
    MAX_INDEX,
    Polynomial,
    Share,
    interpolate_in_exponent,
    lagrange_coefficient,
    lagrange_coefficients,
    reconstruct,
    split,
)


@st.composite
def sharings(draw: st.DrawFn) -> tuple[int, int, list[int], bytes]:
    n = draw(st.integers(1, 8))
    t = draw(st.integers(1, n))
    subset = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    seed = draw(st.binary(min_size=1, max_size=8))
    return t, n, subset, seed


@settings(max_examples=60, deadline=None)
@given(sharings())
def test_any_threshold_subset_reconstructs(case: tuple[int, int, list[int], bytes]) -> None:
    t, n, subset, seed = case
    rng = seeded_rng(seed)
    secret = Scalar.random(rng)
    poly, shares = split(secret, threshold=t, indices=range(1, n + 1), rng=rng)
    assert poly.secret == secret and poly.threshold == t
    chosen = [shares[i - 1] for i in subset]
    assert reconstruct(chosen, threshold=t) == secret
    # Interpolating through all chosen shares (more than t) gives the same polynomial value.
    assert reconstruct(chosen) == secret


@settings(max_examples=40, deadline=None)
@given(sharings())
def test_fewer_than_threshold_do_not_reconstruct(case: tuple[int, int, list[int], bytes]) -> None:
    t, n, subset, seed = case
    if t < 2:
        return
    rng = seeded_rng(seed)
    secret = Scalar.random(rng)
    _, shares = split(secret, threshold=t, indices=range(1, n + 1), rng=rng)
    few = [shares[i - 1] for i in subset[: t - 1]]
    with pytest.raises(ThresholdError, match=f"at least {t} distinct"):
        reconstruct(few, threshold=t)
    # Interpolating what there is gives some other value (with overwhelming probability).
    assert reconstruct(few) != secret


def test_lagrange_hand_computed() -> None:
    inv = lambda x: pow(x, -1, L)  # noqa: E731
    assert lagrange_coefficient(1, [1, 2]).to_int() == 2
    assert lagrange_coefficient(2, [1, 2]).to_int() == L - 1
    assert [lagrange_coefficient(i, [1, 2, 3]).to_int() for i in (1, 2, 3)] == [3, L - 3, 1]
    assert lagrange_coefficient(2, [2, 5]).to_int() == 5 * inv(3) % L
    assert lagrange_coefficient(5, [2, 5]).to_int() == (-2 * inv(3)) % L
    assert lagrange_coefficient(7, [7]).to_int() == 1
    assert {i: c.to_int() for i, c in lagrange_coefficients([1, 3]).items()} == {
        1: 3 * inv(2) % L,
        3: (-1 * inv(2)) % L,
    }


@given(st.lists(st.integers(1, MAX_INDEX), min_size=1, max_size=7, unique=True))
def test_lagrange_coefficients_sum_to_one(indices: list[int]) -> None:
    # Interpolating the constant polynomial 1 gives 1.
    total = Scalar.zero()
    for c in lagrange_coefficients(indices).values():
        total = total + c
    assert total == Scalar.one()


def test_index_validation() -> None:
    s = Scalar.from_int(5)
    with pytest.raises(ShareError, match="duplicate holder index 2"):
        lagrange_coefficient(1, [1, 2, 2])
    with pytest.raises(ShareError, match="1..65535"):
        lagrange_coefficient(0, [0, 1])
    with pytest.raises(ShareError, match="not in the interpolation set"):
        lagrange_coefficient(4, [1, 2])
    with pytest.raises(ShareError, match="1..65535"):
        Share(index=0, value=s)
    with pytest.raises(ShareError):
        Share(index=MAX_INDEX + 1, value=s)
    with pytest.raises(ShareError, match="duplicate share indices"):
        reconstruct([Share(index=1, value=s), Share(index=1, value=s)])
    with pytest.raises(ShareError, match="duplicate"):
        split(s, threshold=2, indices=[1, 1, 2])
    with pytest.raises(ThresholdError, match="exceeds"):
        split(s, threshold=4, indices=[1, 2, 3])
    with pytest.raises(ThresholdError, match=">= 1"):
        split(s, threshold=0, indices=[1, 2, 3])


def test_polynomial_known_values_and_secrecy() -> None:
    poly = Polynomial([Scalar.from_int(7), Scalar.from_int(3), Scalar.from_int(2)])
    # f(x) = 7 + 3x + 2x^2
    assert [poly.evaluate(x).to_int() for x in (0, 1, 2, 10)] == [7, 12, 21, 237]
    assert "hidden" in repr(poly) and "hidden" in repr(poly.share(1))
    with pytest.raises(TypeError):
        pickle.dumps(poly)
    shares = [poly.share(i) for i in (2, 9, 4)]
    assert reconstruct(shares, threshold=3).to_int() == 7


def test_split_known_answer() -> None:
    rng = seeded_rng(b"kat/shamir")
    secret = Scalar.from_int(42)
    _, shares = split(secret, threshold=2, indices=[1, 2, 3], rng=rng)
    assert [s.value.to_bytes().hex() for s in shares] == KAT_SHARES
    assert reconstruct(shares[1:], threshold=2).to_int() == 42
    # Degree 1: the shares are 42 + a·i, so they are evenly spaced (plain integers mod L).
    s1, s2, s3 = (int.from_bytes(bytes.fromhex(h), "little") for h in KAT_SHARES)
    assert (s2 - s1) % L == (s1 - 42) % L == (s3 - s2) % L


@settings(max_examples=20, deadline=None)
@given(sharings())
def test_interpolate_in_exponent(case: tuple[int, int, list[int], bytes]) -> None:
    t, n, subset, seed = case
    rng = seeded_rng(seed)
    secret = Scalar.random(rng)
    _, shares = split(secret, threshold=t, indices=range(1, n + 1), rng=rng)
    h = hash_to_group("aura/test/h", seed)
    points = {i: shares[i - 1].value * h for i in subset}
    assert interpolate_in_exponent(points, threshold=t) == secret * h
    if t >= 2:
        with pytest.raises(ThresholdError):
            interpolate_in_exponent(dict(list(points.items())[: t - 1]), threshold=t)


# --- Feldman ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(sharings())
def test_feldman_valid_shares_verify(case: tuple[int, int, list[int], bytes]) -> None:
    t, n, _subset, seed = case
    rng = seeded_rng(seed)
    secret = Scalar.random(rng)
    poly, shares = split(secret, threshold=t, indices=range(1, n + 1), rng=rng)
    c = FeldmanCommitments.commit(poly)
    assert c.threshold == t
    assert c.public_key == Point.base_mul(secret)
    for s in shares:
        c.verify_share(s)
        verify_share(c, s.index, s.value)
        assert public_share(c, s.index) == Point.base_mul(s.value)
    assert FeldmanCommitments.from_bytes(c.to_bytes()) == c


def test_feldman_altered_shares_fail() -> None:
    rng = seeded_rng(b"feldman")
    poly, shares = split(Scalar.random(rng), threshold=3, indices=[1, 2, 3, 4], rng=rng)
    c = FeldmanCommitments.commit(poly)
    good = shares[1]
    with pytest.raises(ShareError, match="holder 2 fails its Feldman check"):
        c.verify_share(Share(index=2, value=good.value + Scalar.one()))
    with pytest.raises(ShareError, match="holder 3"):
        c.verify_share(Share(index=3, value=good.value))  # right value, wrong holder
    # Commitments to a different polynomial reject the share too.
    other = FeldmanCommitments.commit(Polynomial.random(secret=poly.secret, threshold=3, rng=rng))
    with pytest.raises(ShareError):
        other.verify_share(good)
    # A changed commitment point moves the public shares.
    tampered = FeldmanCommitments(points=(c.points[0], c.points[1] + Point.base(), c.points[2]))
    with pytest.raises(ShareError):
        tampered.verify_share(good)


def test_feldman_decoding_rejects_bad_bytes() -> None:
    rng = seeded_rng(b"feldman-dec")
    poly, _ = split(Scalar.random(rng), threshold=2, indices=[1, 2], rng=rng)
    data = FeldmanCommitments.commit(poly).to_bytes()
    with pytest.raises(PointEncodingError, match="multiple of 32"):
        FeldmanCommitments.from_bytes(data[:-1])
    with pytest.raises(PointEncodingError, match="multiple of 32"):
        FeldmanCommitments.from_bytes(b"")
    with pytest.raises(PointEncodingError, match="commitment 1"):
        FeldmanCommitments.from_bytes(data[:32] + b"\x01" + bytes(31))
    with pytest.raises(ThresholdError):
        FeldmanCommitments(points=())


KAT_SHARES = [
    "5f6da0222d63333e8a77edd9c1d3e27c0eb9ed123f031c1493ffaa6ed379f500",
    "94da40455ac6667c14efdab383a7c5f91c72db257e06382826ff55dda6f3ea01",
    "c947e16787299aba9e66c88d457ba8762b2bc938bd09543cb9fe004c7a6de002",
]
