"""Group wrapper, encodings, hashing and the transcript encoding.

The pure-Python Edwards arithmetic below is a *test oracle* only (RFC 8032 §5.1 formulas), used
to cross-check libsodium through our wrapper; production code never does curve arithmetic.
"""

from __future__ import annotations

import hashlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto.errors import PointEncodingError, ScalarEncodingError
from aura_node.crypto.group import (
    L,
    Point,
    Scalar,
    hash_to_group,
    hash_to_scalar,
    seeded_rng,
)
from aura_node.crypto.transcript import transcript
from aura_node.errors import CryptoError

# --- test oracle: edwards25519 in affine coordinates -------------------------------------------

P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
OraclePoint = tuple[int, int]
O_IDENTITY: OraclePoint = (0, 1)


def o_add(a: OraclePoint, b: OraclePoint) -> OraclePoint:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P
    return x3, y3


def o_mul(k: int, a: OraclePoint) -> OraclePoint:
    acc = O_IDENTITY
    while k:
        if k & 1:
            acc = o_add(acc, a)
        a = o_add(a, a)
        k >>= 1
    return acc


def o_recover_x(y: int, sign: int) -> int | None:
    """x for y (None if y >= p or no such point); RFC 8032 §5.1.3."""
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def o_decode(data: bytes) -> OraclePoint | None:
    n = int.from_bytes(data, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    x = o_recover_x(y, sign)
    return None if x is None else (x, y)


def o_encode(a: OraclePoint) -> bytes:
    x, y = a
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


O_BASE: OraclePoint = (o_recover_x(4 * pow(5, -1, P) % P, 0) or 0, 4 * pow(5, -1, P) % P)


def _torsion_points() -> list[OraclePoint]:
    """The 8 points of order dividing 8, found with the oracle from a point of order 8."""
    # x = 0, y = -1 has order 2; a point of order 4 has y = 0; order 8 points solve
    # 2·T = (x4, 0). Search small y for a point whose 8-multiple is the identity but not 4·.
    found: list[OraclePoint] = []
    for y in range(2, 10_000):
        for sign in (0, 1):
            x = o_recover_x(y, sign)
            if x is None:
                continue
            q = o_mul(L, (x, y))  # kill the prime-order part: q has order dividing 8
            if q != O_IDENTITY and o_mul(4, q) != O_IDENTITY:
                found = [o_mul(k, q) for k in range(8)]
                return found
    raise AssertionError("no point of order 8 found")


TORSION = _torsion_points()


# --- constants and scalar encoding --------------------------------------------------------------


def test_constants_match_oracle() -> None:
    assert L == 2**252 + 27742317777372353535851937790883648493
    assert Point.base().hex() == "58" + "66" * 31
    assert o_encode(O_BASE) == Point.base().to_bytes()
    assert o_mul(L, O_BASE) == O_IDENTITY


@given(st.integers(min_value=0, max_value=L - 1))
def test_scalar_round_trip(n: int) -> None:
    s = Scalar.from_int(n)
    assert s.to_int() == n
    assert Scalar.from_bytes(s.to_bytes()) == s
    assert s.to_bytes() == n.to_bytes(32, "little")


@given(st.integers(min_value=L, max_value=2**256 - 1))
def test_scalar_rejects_non_canonical(n: int) -> None:
    with pytest.raises(ScalarEncodingError, match="non-canonical scalar"):
        Scalar.from_bytes(n.to_bytes(32, "little"))


@pytest.mark.parametrize("n", [L, L + 1, 2**253, 2**256 - 1])
def test_scalar_rejects_known_non_canonical(n: int) -> None:
    with pytest.raises(CryptoError) as info:
        Scalar.from_bytes(n.to_bytes(32, "little"))
    assert info.value.code == "scalar_invalid"


@pytest.mark.parametrize("data", [b"", bytes(31), bytes(33), bytes(64)])
def test_scalar_rejects_wrong_length(data: bytes) -> None:
    with pytest.raises(ScalarEncodingError, match="32 bytes"):
        Scalar.from_bytes(data)


def test_scalar_from_int_range() -> None:
    with pytest.raises(ScalarEncodingError):
        Scalar.from_int(-1)
    with pytest.raises(ScalarEncodingError):
        Scalar.from_int(L)


@given(
    st.integers(min_value=0, max_value=L - 1),
    st.integers(min_value=0, max_value=L - 1),
)
def test_scalar_arithmetic_matches_integers(a: int, b: int) -> None:
    sa, sb = Scalar.from_int(a), Scalar.from_int(b)
    assert (sa + sb).to_int() == (a + b) % L
    assert (sa - sb).to_int() == (a - b) % L
    assert (sa * sb).to_int() == (a * b) % L
    assert (-sa).to_int() == (-a) % L
    if a:
        assert sa.invert().to_int() == pow(a, -1, L)


def test_scalar_secrecy_guards() -> None:
    s = Scalar.random(seeded_rng(b"x"))
    assert "hidden" in repr(s)
    assert s.to_bytes().hex() not in repr(s)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(ScalarEncodingError, match="inverse"):
        Scalar.zero().invert()


def test_scalar_random_is_nonzero_and_wide_reduced() -> None:
    # An rng returning zeros first must be retried, not give the zero scalar.
    calls = iter([bytes(64), b"\x05" + bytes(63)])
    s = Scalar.random(lambda n: next(calls))
    assert s.to_int() == 5
    # Wide reduction: the 64-byte integer mod L.
    wide = bytes(range(64))
    assert Scalar.from_wide(wide).to_int() == int.from_bytes(wide, "little") % L


# --- points -----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=L - 1), st.integers(min_value=1, max_value=L - 1))
def test_scalar_mult_and_add_match_oracle(a: int, b: int) -> None:
    pa = Point.base_mul(Scalar.from_int(a))
    assert pa.to_bytes() == o_encode(o_mul(a, O_BASE))
    pb = Scalar.from_int(b) * pa
    assert pb.to_bytes() == o_encode(o_mul(a * b % L, O_BASE))
    assert (pa + pb).to_bytes() == o_encode(o_add(o_mul(a, O_BASE), o_mul(a * b % L, O_BASE)))
    assert (pa - pa).is_identity()
    assert -pa + pa == Point.identity()
    assert Point.from_bytes(pb.to_bytes()) == pb


def test_known_scalar_mult_value() -> None:
    # 2·G, checked against the oracle and pinned.
    two_g = Point.base_mul(Scalar.from_int(2))
    assert two_g.to_bytes() == o_encode(o_mul(2, O_BASE))
    assert two_g.hex() == "c9a3f86aae465f0e56513864510f3997561fa2c9e85ea21dc2292309f3cd6022"
    assert Point.base() + Point.base() == two_g


def test_zero_and_identity_multiplication() -> None:
    g = Point.base()
    assert Point.base_mul(Scalar.zero()).is_identity()
    assert (Scalar.zero() * g).is_identity()
    assert (Scalar.from_int(7) * Point.identity()).is_identity()
    assert Point.identity() + g == g


def test_identity_rejected_unless_allowed() -> None:
    ident = b"\x01" + bytes(31)
    with pytest.raises(PointEncodingError, match="identity"):
        Point.from_bytes(ident)
    assert Point.from_bytes(ident, allow_identity=True).is_identity()


def test_torsion_points_found_by_oracle() -> None:
    encodings = {o_encode(t) for t in TORSION}
    assert len(encodings) == 8
    # The well-known encodings (libsodium's small-order blacklist) are among them.
    assert bytes.fromhex("01" + "00" * 31) in encodings  # order 1
    assert bytes.fromhex("ec" + "ff" * 30 + "7f") in encodings  # order 2 (y = -1)
    assert bytes.fromhex("00" * 32) in encodings or bytes.fromhex("00" * 31 + "80") in encodings
    assert (
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
        in encodings
        or bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85")
        in encodings
    )


@pytest.mark.parametrize("k", range(8))
@pytest.mark.parametrize("flip_sign", [False, True])
def test_small_order_points_rejected(k: int, flip_sign: bool) -> None:
    enc = bytearray(o_encode(TORSION[k]))
    if flip_sign:
        enc[31] ^= 0x80
    with pytest.raises(PointEncodingError):
        Point.from_bytes(bytes(enc))
    with pytest.raises(PointEncodingError):
        Point.from_bytes(bytes(enc), allow_identity=k != 0 or flip_sign)


@pytest.mark.parametrize("k", range(1, 8))
def test_mixed_order_points_rejected(k: int) -> None:
    # G + T is on the curve and canonical but not in the prime-order subgroup.
    mixed = o_encode(o_add(O_BASE, TORSION[k]))
    assert o_decode(mixed) is not None
    with pytest.raises(PointEncodingError, match="prime-order subgroup"):
        Point.from_bytes(mixed)
    some = o_mul(123456789, O_BASE)
    with pytest.raises(PointEncodingError):
        Point.from_bytes(o_encode(o_add(some, TORSION[k])))


@pytest.mark.parametrize("y", range(19))
@pytest.mark.parametrize("sign", [0, 1])
def test_non_canonical_y_rejected(y: int, sign: int) -> None:
    # y + p encodes the same residue as y, in a second (non-canonical) way.
    enc = ((y + P) | (sign << 255)).to_bytes(32, "little")
    with pytest.raises(PointEncodingError):
        Point.from_bytes(enc, allow_identity=True)


def test_off_curve_and_bad_length_rejected() -> None:
    off = next(y for y in range(2, 100) if o_recover_x(y, 0) is None)
    with pytest.raises(PointEncodingError, match="prime-order subgroup"):
        Point.from_bytes(off.to_bytes(32, "little"))
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(PointEncodingError, match="32 bytes"):
            Point.from_bytes(bad)


# --- hashing ----------------------------------------------------------------------------------


def test_hash_to_group_known_values_and_subgroup() -> None:
    h = hash_to_group("aura/dkd/h2g", "account", "context")
    assert h.hex() == KAT_H2G
    assert h == hash_to_group("aura/dkd/h2g", "account", "context")
    assert h != hash_to_group("aura/dkd/h2g", "account", "context2")
    assert h != hash_to_group("aura/dkd/other", "account", "context")
    assert h != hash_to_group("aura/dkd/h2g", "accountc", "ontext")
    decoded = o_decode(h.to_bytes())
    assert decoded is not None and o_mul(L, decoded) == O_IDENTITY
    assert Point.from_bytes(h.to_bytes()) == h


def test_hash_to_scalar_known_value() -> None:
    s = hash_to_scalar("aura/test", b"abc", "def", 7)
    assert s.to_bytes().hex() == KAT_H2S
    # Independently: SHA-512 of the transcript as a little-endian integer, mod L.
    digest = hashlib.sha512(transcript("aura/test", b"abc", "def", 7)).digest()
    assert s.to_int() == int.from_bytes(digest, "little") % L
    assert s != hash_to_scalar("aura/test", b"abc", "def", 8)


@given(st.binary(max_size=40))
def test_hash_to_group_always_valid(data: bytes) -> None:
    p = hash_to_group("aura/test/h2g", data)
    assert Point.from_bytes(p.to_bytes()) == p


# --- transcript encoding --------------------------------------------------------------------------

parts = st.lists(
    st.one_of(st.binary(max_size=6), st.text(max_size=6), st.integers(0, 2**64 - 1)),
    max_size=4,
)


@given(st.text(min_size=1, max_size=5), parts, st.text(min_size=1, max_size=5), parts)
def test_transcript_is_injective(
    d1: str, p1: list[bytes | str | int], d2: str, p2: list[bytes | str | int]
) -> None:
    same_input = d1 == d2 and [(type(x), x) for x in p1] == [(type(x), x) for x in p2]
    assert (transcript(d1, *p1) == transcript(d2, *p2)) == same_input


def test_transcript_known_ambiguities_resolved() -> None:
    assert transcript("d", "ab", "c") != transcript("d", "a", "bc")
    assert transcript("d", "x") != transcript("d", b"x")
    assert transcript("d", b"") != transcript("d")
    assert transcript("d", 1) != transcript("d", b"\x00" * 7 + b"\x01")
    assert transcript("d", b"a").hex() == (
        b"aura-node/v1/transcript".hex() + "0001" + "64" + "00000001" + "62" + "00000001" + "61"
    )
    with pytest.raises(TypeError):
        transcript("d", True)
    with pytest.raises(ValueError):
        transcript("", b"")
    with pytest.raises(ValueError):
        transcript("d", -1)


def test_seeded_rng_is_deterministic() -> None:
    a, b = seeded_rng(b"seed"), seeded_rng(b"seed")
    assert a(16) == b(16) and a(16) == b(16)
    assert seeded_rng(b"seed")(16) != seeded_rng(b"other")(16)
    first = seeded_rng(b"seed")
    assert first(16) != first(16)


def test_no_unvalidated_construction() -> None:
    with pytest.raises(TypeError, match="from_bytes"):
        Point(bytes(32))
    with pytest.raises(TypeError, match="from_bytes"):
        Scalar(b"\xff" * 32)


KAT_H2G = "4ceaaa59ecbe7153fa35f00e3ff3bafe28a9f4bdc191ca193e21f42ac92b62d1"
KAT_H2S = "686b831af7cdb9f3c197fdc608b61e3a368b2b8c7f07b960e64efe25a5791507"
