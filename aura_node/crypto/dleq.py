"""Chaum-Pedersen proofs of discrete-log equality (DLEQ), non-interactive via Fiat-Shamir.

Theory of operation
-------------------
The prover knows ``x`` with ``A = x·G`` and ``B = x·H`` and shows ``log_G(A) = log_H(B)``
without revealing ``x``. DKD uses it with ``G`` the base point, ``A`` the participant's public
share ``Y_i`` (from the Feldman commitments) and ``B = P_i = s_i·H``: the reveal is provably made
with the same share the account committed to.

Prove::

    k  = hash_to_scalar("aura/dleq/nonce", x, G, H, A, B, context, 32 random bytes)
    R1 = k·G,  R2 = k·H
    c  = hash_to_scalar("aura/dleq/challenge", G, H, A, B, R1, R2, context)
    s  = k - c·x                                  proof = (c, s), 64 bytes

Verify: ``R1' = s·G + c·A``, ``R2' = s·H + c·B`` and accept iff the recomputed challenge over
``R1', R2'`` equals ``c``. The nonce is *hedged*: derived from the secret, the statement and
fresh randomness, so a broken RNG alone does not leak ``x`` (a repeated ``k`` for two different
challenges would) and an injected deterministic RNG gives reproducible proofs for tests.

Binding: the challenge hashes the whole statement ``(G, H, A, B)`` and a caller ``context``
(for DKD: account, derivation context, session id and prover device id; see
``aura_node.crypto.dkd.proof_context``). A proof made for one session or one device therefore
does not verify for another: replays across sessions fail here, not only at the signature.

Encoding: ``c || s``, two canonical 32-byte scalars; anything else is refused with
``ProofError``. All points of the statement must be non-identity (over the identity the
statement is trivial).

Own proofs (performance): a node verifies the evidence of a session as a set, its own proof
among them (a DKD initiator's ``VerifiedReveals`` counts its own reveal, a participant re-checks
the reveals the initiator relays, its own included). A proof that ``prove`` just computed from
``x`` with ``A = x·G`` and ``B = x·H`` verifies by completeness, so ``prove`` remembers the
exact bytes of its last ``OWN_PROOFS_KEPT`` statements with their proofs (``(proof, G, A, H,
B, context)``, public values only, in this process's memory, never persisted or shared) and
``verify`` accepts exactly those bytes without the three scalar multiplications. Anything else
-- another proof, a changed point or context, a proof that came from a peer -- runs the full
check; failures are never remembered. ``own_proofs.enabled = False`` turns it off (the tests
of the maths do, so a round trip through ``prove`` and ``verify`` still exercises both).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from aura_node.crypto.errors import ProofError, ScalarEncodingError
from aura_node.crypto.group import SCALAR_BYTES, Point, Rng, Scalar, default_rng, hash_to_scalar

PROOF_BYTES: Final = 2 * SCALAR_BYTES
#: own proofs remembered (module doc): enough for the sessions a busy node has in flight between
#: making its proof and checking the set that contains it; ~0.2 KiB each
OWN_PROOFS_KEPT: Final = 2048
_NONCE_DOMAIN: Final = "aura/dleq/nonce"
_CHALLENGE_DOMAIN: Final = "aura/dleq/challenge"


@dataclass(frozen=True, slots=True, kw_only=True)
class DleqProof:
    """A Fiat-Shamir Chaum-Pedersen proof: challenge ``c`` and response ``s``."""

    challenge: Scalar
    response: Scalar

    def to_bytes(self) -> bytes:
        return self.challenge.to_bytes() + self.response.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> DleqProof:
        if len(data) != PROOF_BYTES:
            raise ProofError(f"a DLEQ proof is {PROOF_BYTES} bytes, got {len(data)}")
        try:
            return cls(
                challenge=Scalar.from_bytes(data[:SCALAR_BYTES]),
                response=Scalar.from_bytes(data[SCALAR_BYTES:]),
            )
        except ScalarEncodingError as exc:
            raise ProofError(f"malformed DLEQ proof: {exc.message}") from None

    def __repr__(self) -> str:
        return f"DleqProof({self.to_bytes().hex()})"


class OwnProofs:
    """The statements and proofs this process made, by exact bytes, most recent ``capacity``
    (module doc). ``hits`` counts verifications answered from it (tests, debug runs)."""

    __slots__ = ("_made", "capacity", "enabled", "hits")

    def __init__(self, capacity: int) -> None:
        self._made: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity
        self.enabled = True
        self.hits = 0

    @staticmethod
    def _key(proof: DleqProof, g: Point, a: Point, h: Point, b: Point, context: bytes
             ) -> bytes:
        # every part but the last has a fixed length, so the concatenation is unambiguous
        return hashlib.sha256(b"".join((
            proof.to_bytes(), g.to_bytes(), a.to_bytes(), h.to_bytes(), b.to_bytes(),
            bytes(context)))).digest()

    def add(self, proof: DleqProof, g: Point, a: Point, h: Point, b: Point, context: bytes
            ) -> None:
        if not self.enabled:
            return
        self._made[self._key(proof, g, a, h, b, context)] = None
        if len(self._made) > self.capacity:
            self._made.popitem(last=False)

    def __contains__(self, key: bytes) -> bool:
        return self.enabled and key in self._made

    def clear(self) -> None:
        self._made.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Neither remember nor answer inside the block (several devices in one process:
        benchmarks, where one device must not skip checking another's proof)."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def __len__(self) -> int:
        return len(self._made)


own_proofs: Final = OwnProofs(OWN_PROOFS_KEPT)


def _challenge(g: Point, h: Point, a: Point, b: Point, r1: Point, r2: Point, ctx: bytes) -> Scalar:
    return hash_to_scalar(
        _CHALLENGE_DOMAIN,
        g.to_bytes(),
        h.to_bytes(),
        a.to_bytes(),
        b.to_bytes(),
        r1.to_bytes(),
        r2.to_bytes(),
        ctx,
    )


def _require_non_identity(**points: Point) -> None:
    for name, p in points.items():
        if p.is_identity():
            raise ProofError(f"DLEQ statement point {name} is the identity")


def prove(
    x: Scalar, g: Point, h: Point, context: bytes, rng: Rng | None = None
) -> tuple[Point, Point, DleqProof]:
    """Prove ``log_g(x·g) = log_h(x·h)``; returns ``(A, B, proof)`` with ``A = x·g``,
    ``B = x·h``."""
    if x.is_zero():
        raise ProofError("DLEQ secret must be non-zero")
    _require_non_identity(G=g, H=h)
    a = x * g
    b = x * h
    draw = rng or default_rng
    k = hash_to_scalar(
        _NONCE_DOMAIN,
        x.to_bytes(),
        g.to_bytes(),
        h.to_bytes(),
        a.to_bytes(),
        b.to_bytes(),
        context,
        draw(32),
    )
    c = _challenge(g, h, a, b, k * g, k * h, context)
    proof = DleqProof(challenge=c, response=k - c * x)
    own_proofs.add(proof, g, a, h, b, context)
    return a, b, proof


def verify(proof: DleqProof, g: Point, a: Point, h: Point, b: Point, context: bytes) -> None:
    """Raise ``ProofError`` unless ``proof`` shows ``log_g(a) = log_h(b)`` for ``context``."""
    _require_non_identity(G=g, A=a, H=h, B=b)
    if OwnProofs._key(proof, g, a, h, b, context) in own_proofs:
        own_proofs.hits += 1  # made by ``prove`` here from these exact values: valid
        return
    c, s = proof.challenge, proof.response
    r1 = s * g + c * a
    r2 = s * h + c * b
    if _challenge(g, h, a, b, r1, r2, context) != c:
        raise ProofError(
            f"DLEQ proof does not verify: log_G(A) = log_H(B) not shown for A={a.hex()}, "
            f"B={b.hex()} in this context"
        )
