"""DKD witnesses: ``CollectedCommitments`` and ``VerifiedReveals``, built only by verification.

Theory of operation
-------------------
A commitment is a :class:`~aura_node.session.witness.SignedStatement` of choreography ``dkd``
under the domain :data:`COMMITMENT_DOMAIN`, whose payload is the 32-byte
``crypto.dkd.partial_commitment`` (itself bound to account, context, session and device). The
wire form is :class:`~aura_node.protocols.dkd.choreography.SignedCommitment`; it does not
depend on the envelope it came in, so the initiator can relay it and every holder checks it.

:func:`check_commitment` is the receipt-time filter (one item, a clear reason on failure).
``CollectedCommitments.verify`` runs ``verify_threshold_evidence`` over the pool: signatures,
membership (the holders of this session), session, duplicates, and equivocation (a device that
signed two different commitments is excluded and the pair kept in ``evidence.equivocations``);
it needs ``t`` distinct honest devices.

``VerifiedReveals.verify`` takes a ``CollectedCommitments`` and the reveals: each must come from
a counted device, open exactly the commitment counted for it (the digest recomputed from the
revealed point and proof), and its DLEQ proof must verify against that device's public share in
the account record (``crypto.dkd.verify_partial``). It needs ``t`` of them and carries the
resulting ``VerifiedPartial`` values, the only input ``crypto.dkd.combine`` accepts.

Cost: every check runs through ``DkdSessionFacts.memo`` (the session's
:class:`~aura_node.crypto.memo.VerificationMemo`), so the receipt-time filters and the witness
verifiers, which see the same commitments and reveals again as the pool grows and as the
initiator relays them, run each Ed25519 and DLEQ verification once per exact byte string. The
witnesses still carry only evidence that verified: the memo holds nothing but checks that
succeeded on exactly those bytes, in this session.

Pure (no trio, no I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import final

from aura_node.crypto.dkd import (
    DkdPartial,
    VerifiedPartial,
    partial_commitment,
    proof_context,
    verify_partial,
)
from aura_node.crypto.dleq import DleqProof
from aura_node.crypto.group import Point
from aura_node.crypto.keys import DevicePublicKey
from aura_node.crypto.memo import VerificationMemo
from aura_node.crypto.transcript import transcript
from aura_node.errors import CryptoError, WitnessError
from aura_node.protocols.account import AccountRecord
from aura_node.protocols.dkd.choreography import DkdRefusal, RevealedPartial, SignedCommitment
from aura_node.session.witness import (
    SignedStatement,
    ThresholdEvidence,
    Witness,
    verify_statement,
    verify_threshold_evidence,
)

CHOREOGRAPHY = "dkd"
COMMITMENT_DOMAIN = "dkd/commitment"
#: a participant's signed refusal (``choreography.DkdRefusal``) is good for nothing else
REFUSAL_DOMAIN = "dkd/refusal"

__all__ = [
    "COMMITMENT_DOMAIN",
    "REFUSAL_DOMAIN",
    "CollectedCommitments",
    "DkdSessionFacts",
    "RevealError",
    "VerifiedReveals",
    "check_commitment",
    "check_refusal",
    "check_reveal",
    "commitment_statement",
    "refusal_payload",
]


class RevealError(WitnessError):
    """A reveal does not open its commitment, or its DLEQ proof does not verify."""

    code = "dkd_bad_reveal"


@dataclass(frozen=True, slots=True, kw_only=True)
class DkdSessionFacts:
    """What every check of one session is relative to (public data only)."""

    session_id: str
    account: AccountRecord
    context: str
    #: the base every partial of the session is on: ``B = r·H`` (blinded), ``H`` for t = 1
    base: Point
    #: device id -> pinned key of the holders taking part in this session (the driver binds
    #: them to ``memo``: ``MemoizedPublicKey``)
    members: Mapping[str, DevicePublicKey]
    #: this session's successful verifications, by exact bytes (``crypto.memo``): a check of the
    #: same signature or proof is not run twice; anything else always is
    memo: VerificationMemo = field(default_factory=VerificationMemo, repr=False, compare=False)

    @property
    def threshold(self) -> int:
        return self.account.threshold

    def index_of(self, device_id: str) -> int:
        for h in self.account.devices:
            if h.device_id == device_id:
                return h.index
        raise WitnessError(f"device {device_id} is not a holder of account "
                           f"{self.account.account_id}")

    def public_share(self, device_id: str) -> Point:
        for h in self.account.devices:
            if h.device_id == device_id:
                return Point.from_bytes(h.public_share)
        raise WitnessError(f"device {device_id} is not a holder of account "
                           f"{self.account.account_id}")

    def proof_ctx(self, device_id: str) -> bytes:
        return proof_context(account_id=self.account.account_id, context=self.context,
                             session_id=self.session_id, device_id=device_id)


def commitment_statement(c: SignedCommitment, facts: DkdSessionFacts) -> SignedStatement:
    """The signed statement a wire commitment claims to be (signer looked up by device id)."""
    key = facts.members.get(c.device_id)
    if key is None:
        raise WitnessError(
            f"{COMMITMENT_DOMAIN}: device {c.device_id[:40]} is not a holder taking part in "
            f"dkd session {facts.session_id}"
        )
    return SignedStatement(signer=key, session_id=c.session, choreography=CHOREOGRAPHY,
                           payload=c.digest, signature=c.signature)


def refusal_payload(reason: str) -> bytes:
    """What a refusal signs (``statement_bytes`` adds the session and the choreography)."""
    return transcript(REFUSAL_DOMAIN, "refuse", reason)


def check_refusal(r: DkdRefusal, facts: DkdSessionFacts) -> SignedStatement:
    """A participant's refusal is signed by a holder of this session, for this session."""
    key = facts.members.get(r.device_id)
    if key is None:
        raise WitnessError(f"{REFUSAL_DOMAIN}: device {r.device_id[:40]} is not a holder taking "
                           f"part in dkd session {facts.session_id}")
    st = SignedStatement(signer=key, session_id=r.session, choreography=CHOREOGRAPHY,
                         payload=refusal_payload(r.reason), signature=r.signature)
    verify_statement(st, members=facts.members, session_id=facts.session_id,
                     choreography=CHOREOGRAPHY, domain=REFUSAL_DOMAIN)
    return st


def check_commitment(c: SignedCommitment, facts: DkdSessionFacts) -> SignedStatement:
    """Receipt-time check of one commitment; ``WitnessError`` says what is wrong."""
    st = commitment_statement(c, facts)
    verify_statement(st, members=facts.members, session_id=facts.session_id,
                     choreography=CHOREOGRAPHY, domain=COMMITMENT_DOMAIN)
    if len(c.digest) != 32:
        raise WitnessError(f"{COMMITMENT_DOMAIN}: digest from {c.device_id} is "
                           f"{len(c.digest)} bytes, expected 32")
    return st


def check_reveal(r: RevealedPartial, digest: bytes, facts: DkdSessionFacts) -> VerifiedPartial:
    """Check one reveal against the commitment ``digest`` counted for its device."""
    who = f"reveal of {r.device_id} in dkd session {facts.session_id}"
    index = facts.index_of(r.device_id)
    if r.index != index:
        raise RevealError(f"{who}: index {r.index}, the account record says {index}")
    try:
        p = DkdPartial(index=r.index, point=Point.from_bytes(r.point),
                       proof=DleqProof.from_bytes(r.proof))
    except (CryptoError, ValueError) as exc:
        raise RevealError(f"{who}: malformed partial: {exc}") from None
    ctx = facts.proof_ctx(r.device_id)
    if partial_commitment(p, ctx) != digest:
        raise RevealError(f"{who}: does not match its commitment {digest.hex()[:16]}..")
    try:
        return verify_partial(p, base=facts.base, public_share=facts.public_share(r.device_id),
                              proof_ctx=ctx, memo=facts.memo)
    except CryptoError as exc:
        raise RevealError(f"{who}: DLEQ proof does not verify against its public share: "
                          f"{exc.message}") from None


@final
@dataclass(frozen=True, slots=True, init=False)
class CollectedCommitments(Witness):
    """Verified: ``t`` distinct honest holders signed commitments in this session.

    ``digests`` maps each counted device id to the digest it committed to; equivocating
    devices are in ``evidence.equivocations`` and not counted."""

    evidence: ThresholdEvidence
    digests: Mapping[str, bytes]

    @classmethod
    def verify(cls, commitments: Iterable[SignedCommitment], facts: DkdSessionFacts
               ) -> CollectedCommitments:
        items = [commitment_statement(c, facts) for c in commitments]
        for st in items:
            if len(st.payload) != 32:
                raise WitnessError(f"{COMMITMENT_DOMAIN}: digest from {st.signer_id} is "
                                   f"{len(st.payload)} bytes, expected 32")
        ev = verify_threshold_evidence(
            items, members=facts.members.values(), session_id=facts.session_id,
            choreography=CHOREOGRAPHY, domain=COMMITMENT_DOMAIN, threshold=facts.threshold,
        )
        return cls._create(evidence=ev, digests={s.signer_id: s.payload for s in ev.statements})

    @property
    def devices(self) -> tuple[str, ...]:
        return self.evidence.signers


@final
@dataclass(frozen=True, slots=True, init=False)
class VerifiedReveals(Witness):
    """Verified: ``t`` reveals, each opening its counted commitment with a valid DLEQ proof."""

    commitments: CollectedCommitments
    reveals: tuple[RevealedPartial, ...]
    partials: tuple[VerifiedPartial, ...]

    @classmethod
    def verify(cls, commitments: CollectedCommitments, reveals: Iterable[RevealedPartial],
               facts: DkdSessionFacts) -> VerifiedReveals:
        if commitments.evidence.session_id != facts.session_id:
            raise WitnessError(f"commitments are for session {commitments.evidence.session_id}, "
                               f"expected {facts.session_id}")
        chosen: dict[str, tuple[RevealedPartial, VerifiedPartial]] = {}
        problems: list[str] = []
        for r in reveals:
            if r.device_id in chosen:
                continue  # one reveal per device counts; a second identical one adds nothing
            digest = commitments.digests.get(r.device_id)
            if digest is None:
                problems.append(f"{r.device_id}: no counted commitment")
                continue
            if r.commitment.digest != digest:
                problems.append(f"{r.device_id}: opens a commitment other than the counted one")
                continue
            try:
                chosen[r.device_id] = (r, check_reveal(r, digest, facts))
            except WitnessError as exc:
                problems.append(exc.message)
        t = facts.threshold
        if len(chosen) < t:
            raise WitnessError(
                f"dkd session {facts.session_id}: {t} verified reveals needed, got "
                f"{len(chosen)}" + (f" (rejected: {'; '.join(problems)})" if problems else "")
            )
        picked = sorted(chosen.values(), key=lambda rv: rv[1].index)[:t]
        return cls._create(commitments=commitments, reveals=tuple(r for r, _ in picked),
                           partials=tuple(v for _, v in picked))
