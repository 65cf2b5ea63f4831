"""Chaum-Pedersen DLEQ proofs: completeness, soundness against every single change, encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto import dleq
from aura_node.crypto.errors import ProofError
from aura_node.crypto.group import L, Point, Scalar, hash_to_group, hash_to_scalar, seeded_rng
from aura_node.errors import CryptoError

CTX = b"session-1/device-a"


@pytest.fixture(autouse=True)
def _maths_only() -> object:
    """Every proof here is checked by the maths, not answered from ``own_proofs``."""
    with dleq.own_proofs.paused():
        yield


def test_own_proofs_answer_exactly_what_prove_made() -> None:
    x, g, h = _statement(b"own")
    dleq.own_proofs.enabled = True
    try:
        a, b, proof = dleq.prove(x, g, h, CTX)
        hits = dleq.own_proofs.hits
        dleq.verify(proof, g, a, h, b, CTX)
        assert dleq.own_proofs.hits == hits + 1
        # any other bytes still run the maths, and a wrong statement still fails
        flipped = bytearray(proof.to_bytes())
        flipped[40] ^= 1
        with pytest.raises(ProofError):
            dleq.verify(dleq.DleqProof.from_bytes(bytes(flipped)), g, a, h, b, CTX)
        with pytest.raises(ProofError, match="does not verify"):
            dleq.verify(proof, g, a, h, b, CTX + b"x")
        with pytest.raises(ProofError, match="does not verify"):
            dleq.verify(proof, g, a, h, b + g, CTX)
        assert dleq.own_proofs.hits == hits + 1
    finally:
        dleq.own_proofs.enabled = False


def test_own_proofs_are_bounded() -> None:
    kept = dleq.OwnProofs(capacity=3)
    x, g, h = _statement(b"bounded")
    made = []
    for i in range(5):
        a, b, proof = dleq.prove(x, g, h, bytes([i]))
        kept.add(proof, g, a, h, b, bytes([i]))
        made.append(dleq.OwnProofs._key(proof, g, a, h, b, bytes([i])))
    assert len(kept) == 3
    assert made[0] not in kept and made[1] not in kept and made[4] in kept


def _statement(seed: bytes) -> tuple[Scalar, Point, Point]:
    rng = seeded_rng(seed)
    return Scalar.random(rng), Point.base(), hash_to_group("aura/test/dleq-h", seed)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=16), st.binary(max_size=24))
def test_valid_proofs_verify(seed: bytes, ctx: bytes) -> None:
    x, g, h = _statement(seed)
    a, b, proof = dleq.prove(x, g, h, ctx, seeded_rng(seed + b"/nonce"))
    assert a == x * g and b == x * h
    dleq.verify(proof, g, a, h, b, ctx)
    dleq.verify(dleq.DleqProof.from_bytes(proof.to_bytes()), g, a, h, b, ctx)


def test_proof_with_arbitrary_generators() -> None:
    x, _, h = _statement(b"gens")
    g = hash_to_group("aura/test/other-g", b"1")
    a, b, proof = dleq.prove(x, g, h, CTX)
    dleq.verify(proof, g, a, h, b, CTX)


def test_any_change_to_the_statement_fails() -> None:
    x, g, h = _statement(b"change")
    a, b, proof = dleq.prove(x, g, h, CTX)
    other = hash_to_group("aura/test/other", b"x")
    bad_cases = {
        "A": (g, a + g, h, b, CTX),
        "B": (g, a, h, b + h, CTX),
        "H": (g, a, other, b, CTX),
        "G": (other, a, h, b, CTX),
        "context": (g, a, h, b, CTX + b"!"),
        "empty context": (g, a, h, b, b""),
        "swapped": (h, b, g, a, CTX),
    }
    for name, (gg, aa, hh, bb, ctx) in bad_cases.items():
        with pytest.raises(ProofError, match="does not verify"):
            dleq.verify(proof, gg, aa, hh, bb, ctx)
            pytest.fail(f"changed {name} still verified")


def test_different_exponents_fail() -> None:
    # B made with another secret: no valid proof can exist; a proof for (A, B') fails for B.
    x, g, h = _statement(b"diff")
    a, _, proof = dleq.prove(x, g, h, CTX)
    wrong_b = (x + Scalar.one()) * h
    with pytest.raises(ProofError):
        dleq.verify(proof, g, a, h, wrong_b, CTX)


def test_every_bit_flip_of_the_proof_fails() -> None:
    x, g, h = _statement(b"bits")
    a, b, proof = dleq.prove(x, g, h, CTX)
    raw = proof.to_bytes()
    for bit in range(len(raw) * 8):
        mutated = bytearray(raw)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProofError):
            dleq.verify(dleq.DleqProof.from_bytes(bytes(mutated)), g, a, h, b, CTX)


def test_identity_statements_refused() -> None:
    x, g, h = _statement(b"ident")
    a, b, proof = dleq.prove(x, g, h, CTX)
    ident = Point.identity()
    with pytest.raises(ProofError, match="identity"):
        dleq.verify(proof, g, ident, h, b, CTX)
    with pytest.raises(ProofError, match="identity"):
        dleq.prove(x, g, ident, CTX)
    with pytest.raises(ProofError, match="non-zero"):
        dleq.prove(Scalar.zero(), g, h, CTX)


def test_encoding_rejects_malformed() -> None:
    with pytest.raises(ProofError, match="64 bytes"):
        dleq.DleqProof.from_bytes(bytes(63))
    non_canonical = L.to_bytes(32, "little")
    with pytest.raises(ProofError, match="malformed") as info:
        dleq.DleqProof.from_bytes(non_canonical + bytes(32))
    assert isinstance(info.value, CryptoError) and info.value.code == "dleq_invalid"
    with pytest.raises(ProofError, match="malformed"):
        dleq.DleqProof.from_bytes(bytes(32) + non_canonical)


def test_known_answer() -> None:
    x = hash_to_scalar("aura/test/kat", b"x")
    h = hash_to_group("aura/test/kat", b"h")
    a, b, proof = dleq.prove(x, Point.base(), h, b"kat", seeded_rng(b"kat/dleq"))
    assert proof.to_bytes().hex() == KAT_PROOF
    dleq.verify(proof, Point.base(), a, h, b, b"kat")
    # The nonce is hedged: other randomness gives another (equally valid) proof.
    _, _, other = dleq.prove(x, Point.base(), h, b"kat", seeded_rng(b"kat/other"))
    assert other != proof
    dleq.verify(other, Point.base(), a, h, b, b"kat")


KAT_PROOF = (
    "7c2c265892670e0e0b3e093e41e2ee9ef902e0f654d562d899cfe6a4dd380508"
    "817d8dfd6571b5dc8c3402a0b6db4784fb4ca247270477b56c7b85eba3bbaa00"
)
