"""Guardian recovery witnesses: ``ApprovalThresholdMet`` and ``SharesCollected``.

Theory of operation
-------------------
A guardian approves a recovery by signing a statement (domain :data:`APPROVAL_DOMAIN`) in the
recovery session whose payload binds the account id and the new device's public key
(:func:`approval_payload`). The statement travels inside messages and is forwarded (the new
device shows the guardians the approvals it collected), so it must verify on its own, without the
envelope it came in: that is what :class:`~aura_node.session.witness.SignedStatement` is.

:meth:`ApprovalThresholdMet.verify` accepts a pool of statements only if each is signed by a
guardian *of this account* (members are the record's guardian device ids, with their pinned
keys), is for this session and choreography, carries exactly the expected payload (so an
approval for another account, another new device or another session is rejected, not
ignored), and at least ``guardian_threshold`` distinct guardians signed. Duplicates collapse;
two different approvals from one guardian are equivocation (excluded, kept as evidence).

:meth:`SharesCollected.verify` opens each guardian's sealed share (HPKE, bound to account,
session and new device by ``recovery_binding``) and checks it against that guardian's public
share from the Feldman commitments (``open_recovery_share``); it needs ``guardian_threshold``
shares from distinct guardians, each from the guardian whose index it claims. The witness
carries the verified shares; it lives in memory only (never journaled) and is consumed by
:func:`reconstruct`, which interpolates ``s`` and checks ``s·G = S``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

from aura_node.crypto import dleq
from aura_node.crypto.group import Point, Scalar, hash_to_group
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.recovery import open_recovery_share, reconstruct_account_secret
from aura_node.crypto.shamir import Share
from aura_node.crypto.transcript import transcript
from aura_node.errors import AuraError, WitnessError
from aura_node.protocols.account import AccountRecord
from aura_node.session.witness import (
    SignedStatement,
    ThresholdEvidence,
    Witness,
    verify_threshold_evidence,
)

CHOREOGRAPHY: Final = "recovery"
APPROVAL_DOMAIN: Final = "recovery/approval"
VETO_DOMAIN: Final = "recovery/veto"


def approval_payload(*, account_id: str, new_device_key: DevicePublicKey) -> bytes:
    """What a guardian's approval says: recover ``account_id`` onto ``new_device_key``."""
    return transcript("aura/recovery/approval", account_id.encode(), new_device_key.raw)


def sign_approval(key: DeviceKey, *, session_id: str, account_id: str,
                  new_device_key: DevicePublicKey) -> SignedStatement:
    return SignedStatement.sign(
        key, domain=APPROVAL_DOMAIN, session_id=session_id, choreography=CHOREOGRAPHY,
        payload=approval_payload(account_id=account_id, new_device_key=new_device_key))


def guardian_members(account: AccountRecord, pinned: Mapping[str, DevicePublicKey]
                     ) -> dict[str, DevicePublicKey]:
    """The account's guardians whose keys this device knows (device id -> key).

    ``pinned`` maps device id -> pinned key; a guardian named in the record whose key is not
    pinned here cannot be counted (its statements cannot be checked against a trusted key).
    """
    out = {}
    for h in account.guardians:
        key = pinned.get(h.device_id)
        if key is not None and key.device_id == h.device_id:
            out[h.device_id] = key
    return out


@final
@dataclass(frozen=True, slots=True, init=False)
class ApprovalThresholdMet(Witness):
    """Verified: ``guardian_threshold`` distinct guardians of ``account_id`` approved recovery
    onto ``new_device`` in ``session_id``. Carries the verified statements."""

    account_id: str
    session_id: str
    new_device: DevicePublicKey
    evidence: ThresholdEvidence

    @classmethod
    def verify(
        cls,
        statements: Iterable[SignedStatement],
        *,
        account: AccountRecord,
        session_id: str,
        new_device: DevicePublicKey,
        pinned: Mapping[str, DevicePublicKey],
    ) -> ApprovalThresholdMet:
        items = list(statements)
        expected = approval_payload(account_id=account.account_id, new_device_key=new_device)
        for i, st in enumerate(items):
            if st.payload != expected:
                raise WitnessError(
                    f"approval {i} from {st.signer_id} is not for account {account.account_id} "
                    f"onto device {new_device.device_id}")
        if account.guardian_threshold < 1:
            raise WitnessError(f"account {account.account_id} has no guardians")
        members = guardian_members(account, pinned)
        if len(members) < account.guardian_threshold:
            raise WitnessError(
                f"only {len(members)} guardian key(s) of {account.account_id} are pinned here, "
                f"{account.guardian_threshold} needed")
        evidence = verify_threshold_evidence(
            items, members=members.values(), session_id=session_id, choreography=CHOREOGRAPHY,
            domain=APPROVAL_DOMAIN, threshold=account.guardian_threshold)
        return cls._create(account_id=account.account_id, session_id=session_id,
                           new_device=new_device, evidence=evidence)

    @property
    def guardians(self) -> tuple[str, ...]:
        """Device ids of the counted guardians."""
        return self.evidence.signers


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedGuardianShare:
    """One guardian's share as it arrived (sender = the guardian's configured name)."""

    sender: str
    index: int
    sealed: bytes


@final
@dataclass(frozen=True, slots=True, init=False)
class SharesCollected(Witness):
    """Verified: ``guardian_threshold`` shares from distinct guardians, each Feldman-checked
    against that guardian's public share. In memory only (it holds plaintext shares)."""

    account_id: str
    session_id: str
    guardians: tuple[str, ...]
    shares: tuple[Share, ...]

    def __repr__(self) -> str:
        return (f"SharesCollected(account_id={self.account_id!r}, "
                f"guardians={self.guardians!r}, shares=<hidden>)")

    @classmethod
    def verify(
        cls,
        items: Sequence[SealedGuardianShare],
        *,
        account: AccountRecord,
        session_id: str,
        device_key: DeviceKey,
    ) -> SharesCollected:
        commitments = account.commitments("guardians")
        by_guardian: dict[str, Share] = {}
        for item in items:
            try:
                holder = account.holder("guardians", item.sender)
            except AuraError:
                raise WitnessError(f"share from {item.sender}, who is not a guardian of "
                                   f"{account.account_id}") from None
            if holder.index != item.index:
                raise WitnessError(f"{item.sender} sent a share for index {item.index}, its "
                                   f"index is {holder.index}")
            if item.sender in by_guardian:
                raise WitnessError(f"two shares from guardian {item.sender}")
            try:
                share = open_recovery_share(
                    commitments=commitments, sealed=item.sealed, guardian_index=item.index,
                    device_key=device_key, account_id=account.account_id,
                    session_id=session_id)
            except AuraError as exc:
                raise WitnessError(f"share from guardian {item.sender} rejected: "
                                   f"{exc.message}") from None
            by_guardian[item.sender] = share
        if len(by_guardian) < account.guardian_threshold:
            raise WitnessError(
                f"{account.guardian_threshold} verified guardian shares needed, got "
                f"{len(by_guardian)} ({', '.join(sorted(by_guardian)) or 'none'})")
        names = tuple(sorted(by_guardian))
        return cls._create(account_id=account.account_id, session_id=session_id,
                           guardians=names, shares=tuple(by_guardian[n] for n in names))


def reconstruct(witness: SharesCollected, account: AccountRecord) -> Scalar:
    """``s`` from the collected shares; ``s·G = S`` checked (``ReconstructionError``)."""
    if witness.account_id != account.account_id:
        raise WitnessError(f"shares for {witness.account_id}, not {account.account_id}")
    return reconstruct_account_secret(witness.shares, account.commitments("guardians"))


# --- proof of reconstruction (RecoveryComplete) ---------------------------------------------

#: ``hash_to_group`` domain of the completion base ``H`` (one base per account, session and
#: new device key: a proof for one recovery says nothing about another)
COMPLETION_BASE_DOMAIN: Final = "aura/recovery/complete"
#: transcript domain of the DLEQ context of the completion proof
COMPLETION_CONTEXT_DOMAIN: Final = "aura/recovery/complete/context"


def completion_base(*, account_id: str, session_id: str, new_device_key: bytes) -> Point:
    """``H = hash_to_group("aura/recovery/complete", account, session, new device key)``."""
    return hash_to_group(COMPLETION_BASE_DOMAIN, account_id, session_id, new_device_key)


def completion_context(*, account_id: str, session_id: str, new_device_key: bytes) -> bytes:
    """The DLEQ context: the proof's challenge hashes account, session and new device key."""
    return transcript(COMPLETION_CONTEXT_DOMAIN, account_id, session_id, new_device_key)


def _no_extra_randomness(n: int) -> bytes:
    """The completion proof's nonce needs no fresh randomness: ``dleq.prove`` derives it from
    ``s``, the whole statement and the context, so the one proof a session can make is the
    same bytes however often the step runs (rehydration never yields a second, different
    proof, and a repeated nonce only ever meets the same challenge)."""
    return bytes(n)


def prove_completion(secret: Scalar, *, account_public_key: bytes, account_id: str,
                     session_id: str, new_device_key: bytes) -> tuple[bytes, bytes]:
    """``(B, proof)``: ``B = s·H`` and a DLEQ proof that ``log_G(S) = log_H(B)`` bound to this
    account, session and new device. Raises ``WitnessError`` if ``s·G != S``."""
    h = completion_base(account_id=account_id, session_id=session_id,
                        new_device_key=new_device_key)
    ctx = completion_context(account_id=account_id, session_id=session_id,
                             new_device_key=new_device_key)
    big_s, b, proof = dleq.prove(secret, Point.base(), h, ctx, rng=_no_extra_randomness)
    if big_s.to_bytes() != account_public_key:
        raise WitnessError("the reconstructed secret is not the account's: s·G != S")
    return b.to_bytes(), proof.to_bytes()


@final
@dataclass(frozen=True, slots=True, init=False)
class SecretReconstructed(Witness):
    """Verified: the new device of ``session_id`` knows ``s`` with ``s·G = S``, ``S`` the
    public key of ``account_id`` *as the verifier's own record holds it* (a DLEQ proof over a
    base bound to account, session and new device key)."""

    account_id: str
    session_id: str
    new_device_key: bytes

    @classmethod
    def verify(cls, *, point: bytes, proof: bytes, account: AccountRecord, session_id: str,
               new_device_key: bytes) -> SecretReconstructed:
        if not point or not proof:
            raise WitnessError("RecoveryComplete carries no proof that the new device "
                               "reconstructed the account secret")
        try:
            big_s = Point.from_bytes(account.public_key)
            b = Point.from_bytes(point)
            p = dleq.DleqProof.from_bytes(proof)
            h = completion_base(account_id=account.account_id, session_id=session_id,
                                new_device_key=new_device_key)
            dleq.verify(p, Point.base(), big_s, h, b, completion_context(
                account_id=account.account_id, session_id=session_id,
                new_device_key=new_device_key))
        except AuraError as exc:
            raise WitnessError(
                f"RecoveryComplete's proof of the account secret does not verify against "
                f"the public key of {account.account_id} held here: {exc.message}") from None
        return cls._create(account_id=account.account_id, session_id=session_id,
                           new_device_key=new_device_key)
