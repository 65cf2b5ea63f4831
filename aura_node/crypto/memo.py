"""A per-session memo of verifications that succeeded, keyed by the exact bytes verified.

Theory of operation
-------------------
A DKD session checks the same evidence several times: a commitment's signature at receipt,
again when ``CollectedCommitments`` is verified over the pool (after every new message), again
when the initiator relays it; a reveal's DLEQ proof at receipt and again in ``VerifiedReveals``.
Each re-check is of *the same bytes* and can only give the same answer, so a session keeps a
:class:`VerificationMemo` and asks it instead of the primitive.

The memo is sound because:

* An entry is added only by the memo itself, right after the real primitive accepted (an
  Ed25519 verification through ``DevicePublicKey.verify``, a DLEQ verification through
  ``dleq.verify``). There is no method that adds an entry without running the check, and
  failures are never remembered (a rejected input is rejected again, at full cost).
* The key of an entry is the *complete* input of the check as exact bytes, not a digest: for a
  signature (public key, domain, message, signature); for a DLEQ proof (proof, G, A, H, B,
  context). A different signature, proof, message or key for the same signer is a different
  key and is verified from scratch. Points enter as their canonical encodings (``Point``
  values are validated on construction) and the proof as its canonical 64-byte encoding.
* It lives in one session's driver (``DkdSessionFacts.memo``), is never shared between
  sessions, never journaled and never rebuilt from outside input: a rehydrated driver starts
  with an empty memo and re-verifies what it replays.

:class:`MemoizedPublicKey` is a pinned key bound to a memo: its ``verify`` consults the memo,
so generic verifiers that call ``signer.verify(...)`` (``session.witness``) benefit without
knowing about it. It compares equal only to other memoized keys with the same raw bytes.

``counts`` (checks actually run, by kind) and ``hits`` (checks answered from the memo) are for
tests and debug runs; nothing logs them.

Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aura_node.crypto import dleq
from aura_node.crypto.group import Point
from aura_node.crypto.keys import DevicePublicKey

__all__ = ["MemoizedPublicKey", "VerificationMemo"]

_SIG = "ed25519"
_DLEQ = "dleq"


class VerificationMemo:
    """Successful verifications of one session, keyed by the exact bytes verified."""

    __slots__ = ("_dleq_hits", "_dleq_run", "_ok", "_sig_hits", "_sig_run")

    def __init__(self) -> None:
        self._ok: set[tuple[object, ...]] = set()
        # plain ints, not two Counters: every in-flight DKD session holds a memo
        self._sig_run = self._dleq_run = self._sig_hits = self._dleq_hits = 0

    @property
    def counts(self) -> Counter[str]:
        """Checks actually run (by kind: "ed25519", "dleq"), failures included."""
        return Counter({_SIG: self._sig_run, _DLEQ: self._dleq_run})

    @property
    def hits(self) -> Counter[str]:
        """Checks answered from the memo (by kind)."""
        return Counter({_SIG: self._sig_hits, _DLEQ: self._dleq_hits})

    def verify_signature(self, key: DevicePublicKey, domain: str, message: bytes,
                         signature: bytes) -> None:
        """``key.verify(domain, message, signature)``, run once per exact input; raises
        ``BadSignatureError`` like it."""
        entry = (_SIG, bytes(key.raw), domain, bytes(message), bytes(signature))
        if entry in self._ok:
            self._sig_hits += 1
            return
        self._sig_run += 1
        # the primitive itself (never a memoized override): DevicePublicKey.verify
        DevicePublicKey.verify(key, domain, message, signature)
        self._ok.add(entry)

    def verify_dleq(self, proof: dleq.DleqProof, g: Point, a: Point, h: Point, b: Point,
                    context: bytes) -> None:
        """``dleq.verify(proof, g, a, h, b, context)``, run once per exact input; raises
        ``ProofError`` like it."""
        entry = (_DLEQ, proof.to_bytes(), g.to_bytes(), a.to_bytes(), h.to_bytes(),
                 b.to_bytes(), bytes(context))
        if entry in self._ok:
            self._dleq_hits += 1
            return
        self._dleq_run += 1
        dleq.verify(proof, g, a, h, b, context)
        self._ok.add(entry)

    def key(self, public: DevicePublicKey) -> MemoizedPublicKey:
        """``public`` bound to this memo."""
        return MemoizedPublicKey(bytes(public.raw), memo=self)

    def __len__(self) -> int:
        return len(self._ok)

    def __repr__(self) -> str:
        return f"VerificationMemo({len(self._ok)} verified, run={dict(self.counts)})"


@dataclass(frozen=True, slots=True)
class MemoizedPublicKey(DevicePublicKey):
    """A pinned device key whose signature checks go through a session's memo."""

    memo: VerificationMemo = field(default_factory=VerificationMemo, compare=False,
                                   repr=False)

    def verify(self, domain: str, message: bytes, signature: bytes) -> None:
        self.memo.verify_signature(self, domain, message, signature)

    def __repr__(self) -> str:
        return f"DevicePublicKey({self.raw.hex()})"
