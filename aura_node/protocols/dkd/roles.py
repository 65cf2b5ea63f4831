"""DKD role machines (typestate), their runtime drivers, parameters and the protocol spec.

Theory of operation
-------------------
Two roles (see ``choreography.py``): the ``initiator`` is the holder whose operator ran
``ctl dkd``; ``participants`` are the other holders asked. Each role is a typestate class with
the seed's phases::

    DkdInitiator:   Initializing --send DkdRequest--> CommitmentPhase
                    CommitmentPhase --gather DkdCommitment [CollectedCommitments]--> RevealPhase
                    RevealPhase --send DkdCollected--> RevealPhase
                    RevealPhase --gather DkdReveal [VerifiedReveals]--> Finalizing
                    Finalizing --send DkdComplete--> Completed
                    Initializing --local [VerifiedReveals of its own reveal, t = 1]--> Completed
    DkdParticipant: Initializing --recv DkdRequest--> CommitmentPhase
                    CommitmentPhase --send DkdCommitment--> CommitmentPhase
                    CommitmentPhase --recv DkdCollected [CollectedCommitments]--> RevealPhase
                    RevealPhase --send DkdReveal--> Finalizing
                    Finalizing --recv DkdComplete [VerifiedReveals]--> Completed

plus timeouts of every wait and the choreography's abort edges, all to Failed. The
transitions that need evidence take the witness as their argument
(``transition_to_reveal(self, witness: CollectedCommitments)``), so no code path can reveal
before ``t`` valid commitments were verified, or derive before ``t`` reveals were.

Each holder's partial ``P_i = s_i·H`` and DLEQ proof are computed from its share (opened from
the sealed ``HeldShare`` and Feldman-checked) with the proof nonce drawn from
``seeded_rng(Start.entropy + label)``: the same journaled entropy always yields the same
commitment, so a restarted device can never commit twice differently.

A peer's bad message never aborts the session: the driver records a ``dkd.rejected`` (or
``dkd.equivocation``, with both signed commitments) evidence record with a code and a reason
and keeps waiting; the session fails only at its deadline if ``t`` honest holders are not
found. (Signatures of envelopes and the phase order are checked by the runtime before the
driver: a bad envelope never gets here.)

Rehydration rule
----------------
A driver's state is exactly the fold of its inputs: ``session.start`` then every journaled
``msg.in`` and ``timer.fired`` in journal order, replayed through the same pure handlers with
the same journaled ``now`` and entropy. Because the handlers are deterministic, the replay
reproduces the sends the journal holds; :meth:`rehydrate` checks that the journaled
``msg.out`` envelopes are exactly a prefix of the replayed sends (same message bodies) and
refuses (``None``: the runtime aborts the session cleanly) if they are not, so the rebuilt
state never claims a later phase than the evidence proves and never differs from what was
said. A device that journaled a commitment therefore re-uses exactly that commitment. Sends the
replay produced but the journal does not hold (a crash between computing and journaling) are
returned by :meth:`resume`; they are byte-identical to what would have been sent.

Pure: no trio, no I/O, no clock.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, final

import msgspec

from aura_node.crypto.dkd import DerivedKey, combine, derive, dkd_base, partial, partial_commitment
from aura_node.crypto.group import seeded_rng
from aura_node.crypto.keys import DevicePublicKey
from aura_node.crypto.memo import VerificationMemo
from aura_node.errors import AuraError, ProtocolError, RemoteProtocolError, WitnessError
from aura_node.protocols import engine as eng
from aura_node.protocols.account import AccountError, AccountRecord
from aura_node.protocols.dkd.choreography import (
    DkdAbort,
    DkdCollected,
    DkdCommitment,
    DkdComplete,
    DkdRequest,
    DkdReveal,
    RevealedPartial,
    SignedCommitment,
)
from aura_node.protocols.dkd.witnesses import (
    CHOREOGRAPHY,
    COMMITMENT_DOMAIN,
    CollectedCommitments,
    DkdSessionFacts,
    VerifiedReveals,
    check_commitment,
    check_reveal,
)
from aura_node.protocols.services import NodeServices
from aura_node.session.typestate import ChoreographicProtocol, Phase, phase_of, transition
from aura_node.session.witness import statement_bytes

S = TypeVar("S")

DEADLINE_TIMER = "deadline"
KIND_REJECTED = "dkd.rejected"
KIND_EQUIVOCATION = "dkd.equivocation"
INITIATOR = "initiator"
PARTICIPANTS = "participants"
_PARTIAL_LABEL = b"dkd/partial-nonce"

MESSAGE_TYPES: Mapping[str, type[msgspec.Struct]] = {
    t.__name__: t
    for t in (DkdRequest, DkdCommitment, DkdCollected, DkdReveal, DkdComplete, DkdAbort)
}


class DkdMarker:
    """Choreography marker type (the ``C`` of ``ChoreographicProtocol[C, S]``)."""


class DkdResultMismatch(RemoteProtocolError):
    """The initiator announced a key other than the one its own evidence gives."""

    code = "dkd_result_mismatch"


class DkdRequestError(RemoteProtocolError):
    """A ``DkdRequest`` this device cannot take part in (unknown account, wrong threshold, ...)."""

    code = "dkd_bad_request"


class SenderMismatchError(RemoteProtocolError):
    code = "dkd_sender_mismatch"


class EquivocationError(RemoteProtocolError):
    code = "dkd_equivocation"


# --- phases -------------------------------------------------------------------------------------


@final
class Initializing(Phase):
    """Initiator: nothing sent yet. Participant: waiting for the request."""


@final
class CommitmentPhase(Phase):
    """Own commitment made and sent; collecting the others' (initiator) or the collected set."""


@final
class RevealPhase(Phase):
    """``CollectedCommitments`` holds: own reveal may be sent; collecting reveals."""


@final
class Finalizing(Phase):
    """Initiator: ``VerifiedReveals`` holds and the key is derived, not yet announced.
    Participant: reveal sent, waiting for the initiator's combined reveals."""


@final
class Completed(Phase):
    """The key is derived (terminal)."""


@final
class Failed(Phase):
    """Aborted: deadline, this side gave up, or a peer aborted (terminal)."""


FINAL_PHASES = (Completed, Failed)


# --- shared maths -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnContribution:
    """This device's reveal (``P_i`` + proof) and its signed commitment; no secret inside."""

    reveal: RevealedPartial

    @property
    def commitment(self) -> SignedCommitment:
        return self.reveal.commitment


def make_contribution(services: NodeServices, facts: DkdSessionFacts, entropy: bytes
                      ) -> OwnContribution:
    """This device's share (opened and Feldman-checked on first use), ``P_i`` with its DLEQ
    proof (nonce from the journaled entropy), the commitment to it, signed."""
    key = services.device_key
    share = services.open_share(facts.account, "devices")  # opened + checked once per account
    ctx = facts.proof_ctx(key.device_id)
    p = partial(share=share, base=facts.base, public_share=facts.public_share(key.device_id),
                proof_ctx=ctx, rng=seeded_rng(entropy + _PARTIAL_LABEL))
    digest = partial_commitment(p, ctx)
    sig = key.sign(COMMITMENT_DOMAIN, statement_bytes(
        session_id=facts.session_id, choreography=CHOREOGRAPHY, payload=digest))
    c = SignedCommitment(session=facts.session_id, device_id=key.device_id, digest=digest,
                         signature=sig)
    return OwnContribution(reveal=RevealedPartial(
        device_id=key.device_id, index=p.index, point=p.point.to_bytes(),
        proof=p.proof.to_bytes(), commitment=c))


def derive_from(witness: VerifiedReveals, facts: DkdSessionFacts) -> DerivedKey:
    """``K = Σ λ_i·P_i`` over the witness's ``t`` verified partials, then HKDF (crypto.dkd)."""
    k = combine(witness.partials, threshold=facts.threshold)
    return derive(k, facts.account.account_id, facts.context)


# --- typestate: initiator -----------------------------------------------------------------------


@final
class DkdInitiator(
    ChoreographicProtocol[DkdMarker, S], choreography="dkd", role=INITIATOR, initial=Initializing,
):
    session_id: str
    own: OwnContribution
    collected: CollectedCommitments | None
    verified: VerifiedReveals | None
    key: DerivedKey | None

    def __init__(self: DkdInitiator[Initializing], *, session_id: str, own: OwnContribution
                 ) -> None:
        self._begin(session_id=session_id, own=own, collected=None, verified=None, key=None)

    @transition(source=Initializing, target=CommitmentPhase, action="send", message=DkdRequest,
                peer=PARTICIPANTS)
    def send_request(self: DkdInitiator[Initializing], *, account_id: str, context: str,
                     threshold: int, holders: tuple[str, ...]
                     ) -> tuple[DkdInitiator[CommitmentPhase], DkdRequest]:
        req = DkdRequest(account_id=account_id, context=context, threshold=threshold,
                         holders=holders, commitment=self.own.commitment)
        return self._advance(DkdInitiator[CommitmentPhase]), req

    @transition(source=Initializing, target=Completed, action="local")
    def complete_alone(self: DkdInitiator[Initializing], witness: VerifiedReveals,
                       facts: DkdSessionFacts) -> DkdInitiator[Completed]:
        return self._advance(DkdInitiator[Completed], verified=witness,
                             key=derive_from(witness, facts))

    @transition(source=CommitmentPhase, target=RevealPhase, action="gather",
                message=DkdCommitment, peer=PARTICIPANTS)
    def transition_to_reveal(self: DkdInitiator[CommitmentPhase], witness: CollectedCommitments
                             ) -> DkdInitiator[RevealPhase]:
        return self._advance(DkdInitiator[RevealPhase], collected=witness)

    @transition(source=RevealPhase, target=RevealPhase, action="send", message=DkdCollected,
                peer=PARTICIPANTS)
    def send_collected(self: DkdInitiator[RevealPhase]
                       ) -> tuple[DkdInitiator[RevealPhase], DkdCollected]:
        assert self.collected is not None
        msg = DkdCollected(
            commitments=tuple(_wire_commitment(s) for s in self.collected.evidence.statements),
            reveal=self.own.reveal)
        return self._advance(DkdInitiator[RevealPhase]), msg

    @transition(source=RevealPhase, target=Finalizing, action="gather", message=DkdReveal,
                peer=PARTICIPANTS)
    def transition_to_finalizing(self: DkdInitiator[RevealPhase], witness: VerifiedReveals,
                                 facts: DkdSessionFacts) -> DkdInitiator[Finalizing]:
        return self._advance(DkdInitiator[Finalizing], verified=witness,
                             key=derive_from(witness, facts))

    @transition(source=Finalizing, target=Completed, action="send", message=DkdComplete,
                peer=PARTICIPANTS)
    def send_complete(self: DkdInitiator[Finalizing]
                      ) -> tuple[DkdInitiator[Completed], DkdComplete]:
        assert self.verified is not None and self.key is not None
        msg = DkdComplete(reveals=self.verified.reveals, public_key=self.key.public_key,
                          fingerprint=self.key.fingerprint)
        return self._advance(DkdInitiator[Completed]), msg

    @transition(source=CommitmentPhase, target=Failed, action="timeout")
    def time_out_commitments(self: DkdInitiator[CommitmentPhase]) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=RevealPhase, target=Failed, action="timeout")
    def time_out_reveals(self: DkdInitiator[RevealPhase]) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=Initializing, target=Failed, action="abort")
    def abort_initializing(self: DkdInitiator[Initializing]) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=CommitmentPhase, target=Failed, action="abort")
    def abort_commitment(self: DkdInitiator[CommitmentPhase]) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=RevealPhase, target=Failed, action="abort")
    def abort_reveal(self: DkdInitiator[RevealPhase]) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=Finalizing, target=Failed, action="abort")
    def abort_finalizing(self: DkdInitiator[Finalizing]) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=Initializing, target=Failed, action="recv", message=DkdAbort,
                peer=PARTICIPANTS)
    def peer_aborted_initializing(self: DkdInitiator[Initializing], _m: DkdAbort
                                  ) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=CommitmentPhase, target=Failed, action="recv", message=DkdAbort,
                peer=PARTICIPANTS)
    def peer_aborted_commitment(self: DkdInitiator[CommitmentPhase], _m: DkdAbort
                                ) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=RevealPhase, target=Failed, action="recv", message=DkdAbort,
                peer=PARTICIPANTS)
    def peer_aborted_reveal(self: DkdInitiator[RevealPhase], _m: DkdAbort
                            ) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])

    @transition(source=Finalizing, target=Failed, action="recv", message=DkdAbort,
                peer=PARTICIPANTS)
    def peer_aborted_finalizing(self: DkdInitiator[Finalizing], _m: DkdAbort
                                ) -> DkdInitiator[Failed]:
        return self._advance(DkdInitiator[Failed])


# --- typestate: participant ---------------------------------------------------------------------


@final
class DkdParticipant(
    ChoreographicProtocol[DkdMarker, S], choreography="dkd", role=PARTICIPANTS,
    initial=Initializing,
):
    session_id: str
    own: OwnContribution | None
    collected: CollectedCommitments | None
    verified: VerifiedReveals | None
    key: DerivedKey | None

    def __init__(self: DkdParticipant[Initializing], *, session_id: str) -> None:
        self._begin(session_id=session_id, own=None, collected=None, verified=None, key=None)

    @transition(source=Initializing, target=CommitmentPhase, action="recv", message=DkdRequest,
                peer=INITIATOR)
    def receive_request(self: DkdParticipant[Initializing], _req: DkdRequest,
                        own: OwnContribution) -> DkdParticipant[CommitmentPhase]:
        return self._advance(DkdParticipant[CommitmentPhase], own=own)

    @transition(source=CommitmentPhase, target=CommitmentPhase, action="send",
                message=DkdCommitment, peer=INITIATOR)
    def send_commitment(self: DkdParticipant[CommitmentPhase]
                        ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        assert self.own is not None
        return (self._advance(DkdParticipant[CommitmentPhase]),
                DkdCommitment(commitment=self.own.commitment))

    @transition(source=CommitmentPhase, target=RevealPhase, action="recv", message=DkdCollected,
                peer=INITIATOR)
    def transition_to_reveal(self: DkdParticipant[CommitmentPhase],
                             witness: CollectedCommitments) -> DkdParticipant[RevealPhase]:
        return self._advance(DkdParticipant[RevealPhase], collected=witness)

    @transition(source=RevealPhase, target=Finalizing, action="send", message=DkdReveal,
                peer=INITIATOR)
    def send_reveal(self: DkdParticipant[RevealPhase]
                    ) -> tuple[DkdParticipant[Finalizing], DkdReveal]:
        assert self.own is not None
        return self._advance(DkdParticipant[Finalizing]), DkdReveal(reveal=self.own.reveal)

    @transition(source=Finalizing, target=Completed, action="recv", message=DkdComplete,
                peer=INITIATOR)
    def complete(self: DkdParticipant[Finalizing], claimed: DkdComplete,
                 witness: VerifiedReveals, facts: DkdSessionFacts) -> DkdParticipant[Completed]:
        key = derive_from(witness, facts)
        if (key.public_key, key.fingerprint) != (claimed.public_key, claimed.fingerprint):
            # the value stays live: the initiator's claim is its error, our key is ours
            raise DkdResultMismatch(
                f"dkd session {self.session_id}: the initiator announced fingerprint "
                f"{claimed.fingerprint[:32]!r}, its own reveals give {key.fingerprint}"
            )
        return self._advance(DkdParticipant[Completed], verified=witness, key=key)

    @transition(source=CommitmentPhase, target=Failed, action="timeout")
    def time_out_commitment(self: DkdParticipant[CommitmentPhase]) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=Finalizing, target=Failed, action="timeout")
    def time_out_finalizing(self: DkdParticipant[Finalizing]) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=Initializing, target=Failed, action="abort")
    def abort_initializing(self: DkdParticipant[Initializing]) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=CommitmentPhase, target=Failed, action="abort")
    def abort_commitment(self: DkdParticipant[CommitmentPhase]) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=RevealPhase, target=Failed, action="abort")
    def abort_reveal(self: DkdParticipant[RevealPhase]) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=Finalizing, target=Failed, action="abort")
    def abort_finalizing(self: DkdParticipant[Finalizing]) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=Initializing, target=Failed, action="recv", message=DkdAbort,
                peer=INITIATOR)
    def peer_aborted_initializing(self: DkdParticipant[Initializing], _m: DkdAbort
                                  ) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=CommitmentPhase, target=Failed, action="recv", message=DkdAbort,
                peer=INITIATOR)
    def peer_aborted_commitment(self: DkdParticipant[CommitmentPhase], _m: DkdAbort
                                ) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=RevealPhase, target=Failed, action="recv", message=DkdAbort,
                peer=INITIATOR)
    def peer_aborted_reveal(self: DkdParticipant[RevealPhase], _m: DkdAbort
                            ) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])

    @transition(source=Finalizing, target=Failed, action="recv", message=DkdAbort,
                peer=INITIATOR)
    def peer_aborted_finalizing(self: DkdParticipant[Finalizing], _m: DkdAbort
                                ) -> DkdParticipant[Failed]:
        return self._advance(DkdParticipant[Failed])


def _wire_commitment(st: Any) -> SignedCommitment:
    return SignedCommitment(session=st.session_id, device_id=st.signer_id, digest=st.payload,
                            signature=st.signature)


# --- parameters ---------------------------------------------------------------------------------


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Shape check of the session params (``ProtocolSpec.validate_params``); the account-aware
    checks are :func:`session_params`, which the control handler calls first."""
    allowed = {"context", "participants", "account_id", "threshold", "timeout"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise eng.ParamsError(f"dkd takes {sorted(allowed)}, got unknown {unknown}")
    context = params.get("context")
    if not isinstance(context, str) or not context:
        raise eng.ParamsError(f"dkd context must be a non-empty string, got {context!r}")
    parts = params.get("participants", [])
    if not isinstance(parts, list | tuple) or not all(isinstance(p, str) and p for p in parts):
        raise eng.ParamsError(f"dkd participants must be a list of names, got {parts!r}")
    if len(set(parts)) != len(parts):
        raise eng.ParamsError(f"dkd participants name a device twice: {list(parts)}")
    account_id = params.get("account_id", "")
    if not isinstance(account_id, str):
        raise eng.ParamsError(f"dkd account_id must be a string, got {account_id!r}")
    threshold = params.get("threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise eng.ParamsError(f"dkd threshold must be a positive integer, got {threshold!r}")
    out: dict[str, Any] = {"context": context, "participants": list(parts),
                           "account_id": account_id, "threshold": threshold}
    if "timeout" in params:
        timeout = params["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise eng.ParamsError(f"dkd timeout must be a positive number, got {timeout!r}")
        out["timeout"] = float(timeout)
    return out


def session_params(args: Mapping[str, Any], services: NodeServices) -> dict[str, Any]:
    """Build the validated session params of ``ctl dkd`` (args ``context``, optional
    ``participants`` [names], ``account`` / ``account_id``, ``timeout``) on this device.

    Participants default to every device of the account; this device is always one of them
    (first). The threshold comes from the account record, the timeout defaults to
    ``services.protocols.dkd_timeout_seconds``."""
    shaped = validate_params({
        k: v for k, v in {
            "context": args.get("context"),
            "participants": list(args.get("participants") or []),
            "account_id": args.get("account_id") or args.get("account") or "",
            "timeout": args.get("timeout"),
        }.items() if v is not None
    })
    try:
        est = (services.accounts.get(shaped["account_id"]) if shaped["account_id"]
               else services.accounts.only())
    except AccountError as exc:
        raise eng.ParamsError(f"dkd: {exc.message}") from None
    account = est.account
    devices = [h.name for h in account.devices]
    me = services.self_name
    if me not in devices:
        raise eng.ParamsError(f"dkd: this device ({me}) is not a holder of account "
                              f"{account.account_id} (holders: {', '.join(devices)})")
    asked = shaped["participants"] or devices
    for name in asked:
        if name not in devices:
            raise eng.ParamsError(f"dkd: participant {name!r} is not a device of account "
                                  f"{account.account_id} (devices: {', '.join(devices)})")
    holders = [me, *[n for n in asked if n != me]]
    if account.threshold > 1 and len(holders) < account.threshold:
        raise eng.ParamsError(
            f"dkd: account {account.account_id} needs {account.threshold} holders, "
            f"participants name {len(holders)} ({', '.join(holders)})")
    _facts_for(services, account, holders, session_id="", context=shaped["context"])
    timeout = shaped.get("timeout", services.protocols.dkd_timeout_seconds)
    return {"context": shaped["context"], "participants": holders,
            "account_id": account.account_id, "threshold": account.threshold,
            "timeout": float(timeout)}


def session_roles(params: Mapping[str, Any]) -> dict[str, str]:
    """Device name -> role for a session with :func:`session_params` output ``params``."""
    holders = list(params["participants"])
    if int(params["threshold"]) <= 1:
        holders = holders[:1]  # t = 1: the initiator alone
    return {name: (INITIATOR if i == 0 else PARTICIPANTS) for i, name in enumerate(holders)}


def bindings(start: eng.Start, opening: msgspec.Struct | None) -> dict[str, int]:
    """Role-set size ``m`` and threshold ``q = t - 1`` for this session's monitors. A ``t = 1``
    session exchanges nothing; it is bound to the smallest valid shape."""
    if isinstance(opening, DkdRequest):
        m, t = len(opening.holders) - 1, opening.threshold
    else:
        m, t = len(start.params.get("participants", ())) - 1, int(start.params.get("threshold", 1))
    return {"m": max(m, 1), "q": max(min(t - 1, max(m, 1)), 1)}


def _facts_for(services: NodeServices, account: AccountRecord, holders: Sequence[str], *,
               session_id: str, context: str, memo: VerificationMemo | None = None
               ) -> DkdSessionFacts:
    """The session's facts; with ``memo`` (the driver's own), the members' keys are bound to it
    so every signature of the session is verified once per exact bytes."""
    memo = memo if memo is not None else VerificationMemo()
    members: dict[str, DevicePublicKey] = {}
    for name in holders:
        try:
            holder = account.holder("devices", name)
            key = services.member(name).public_key
        except (AccountError, ProtocolError) as exc:
            raise eng.ParamsError(f"dkd: {exc.message}") from None
        if key.device_id != holder.device_id:
            raise eng.ParamsError(
                f"dkd: account {account.account_id} says device {name} is {holder.device_id}, "
                f"the pinned key of {name} is {key.device_id}")
        members[key.device_id] = memo.key(key)
    return DkdSessionFacts(session_id=session_id, account=account, context=context,
                           base=dkd_base(account.account_id, context), members=members,
                           memo=memo)


def _result(facts: DkdSessionFacts, services: NodeServices, witness: VerifiedReveals,
            key: DerivedKey) -> dict[str, Any]:
    names = [services.name_of_device(r.device_id) or r.device_id for r in witness.reveals]
    return {"session": facts.session_id, "context": facts.context, "participants": names,
            "fingerprint": key.fingerprint, "public_key": key.public_key.hex()}


# --- drivers ------------------------------------------------------------------------------------


class _Rejections:
    """Bookkeeping of rejected peer input, as evidence records (never an exception)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def reject(self, peer: str, exc: AuraError) -> eng.RecordEvidence:
        self.items.append((peer, exc.code, exc.message))
        return eng.rejection(KIND_REJECTED, peer=peer, code=exc.code, reason=exc.message)


def _equivocation_record(peer: str, first: SignedCommitment, second: SignedCommitment
                         ) -> eng.RecordEvidence:
    return eng.RecordEvidence(kind=KIND_EQUIVOCATION, body=msgspec.msgpack.encode(
        {"peer": peer, "first": first, "second": second}))


class _DkdDriver(eng.ProtocolDriver):
    """What both roles share: start bookkeeping, the commitment pool, replay rehydration."""

    choreography: ClassVar[str] = CHOREOGRAPHY

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._roles: dict[str, str] = {}
        self._session = ""
        self._entropy = b""
        self._timeout = services.protocols.dkd_timeout_seconds
        self._facts: DkdSessionFacts | None = None
        #: this session's successful verifications (crypto.memo): never shared, never
        #: journaled; a rehydrated driver starts empty and re-verifies what it replays
        self._memo = VerificationMemo()
        #: device id -> every distinct valid commitment it signed (two = equivocation)
        self._commitments: dict[str, list[SignedCommitment]] = {}
        self._reveals: dict[str, RevealedPartial] = {}
        self.rejections = _Rejections()
        self._result: dict[str, Any] = {}
        self._pending: list[eng.Effect] = []

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    @property
    def result(self) -> Mapping[str, Any]:
        return self._result

    def _device_of(self, name: str) -> str:
        return self.services.member(name).device_id

    def _add_commitment(self, peer: str, c: SignedCommitment, effects: list[eng.Effect]
                        ) -> bool:
        """Check and pool one commitment; record equivocation; False if rejected."""
        assert self._facts is not None
        try:
            check_commitment(c, self._facts)
        except WitnessError as exc:
            effects.append(self.rejections.reject(peer, exc))
            return False
        seen = self._commitments.setdefault(c.device_id, [])
        if any(s.digest == c.digest for s in seen):
            return True
        if seen:
            effects.append(self.rejections.reject(peer, EquivocationError(
                f"device {c.device_id} signed two different commitments in dkd session "
                f"{self._session}: {seen[0].digest.hex()[:16]}.. and {c.digest.hex()[:16]}..; "
                "it is excluded from this session")))
            effects.append(_equivocation_record(peer, seen[0], c))
        seen.append(c)
        return True

    def _all_commitments(self) -> list[SignedCommitment]:
        return [c for cs in self._commitments.values() for c in cs]

    def _collected(self) -> CollectedCommitments | None:
        assert self._facts is not None
        try:
            return CollectedCommitments.verify(self._all_commitments(), self._facts)
        except WitnessError:
            return None

    def _check_sender(self, peer: str, device_id: str, what: str) -> None:
        expected = self._device_of(peer)
        if device_id != expected:
            raise SenderMismatchError(
                f"{what} from {peer} names device {device_id[:40]}, {peer} is {expected}")

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        if self.is_final:
            return []  # stale timer
        self._to_failed(timeout=True)
        return [eng.Fail(code="timeout",
                         reason=f"dkd session {self._session} did not complete within "
                                f"{self._timeout:g} s (phase {self.status()['phase']})")]

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        if not self.is_final:
            self._to_failed(timeout=False, abort=DkdAbort(reason=reason) if by_peer else None)

    @abstractmethod
    def _to_failed(self, *, timeout: bool, abort: DkdAbort | None = None) -> None:
        """Move this role's typestate to Failed from whatever phase it is in."""

    def resume(self, now: float) -> list[eng.Effect]:
        pending, self._pending = self._pending, []
        return pending

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        drv = cls(services)
        replayed: list[eng.Send] = []
        journaled: list[eng.Sent] = []
        started = False
        last_effects: list[eng.Effect] = []
        try:
            for ev in eng.parse_evidence(evidence):
                effects: list[eng.Effect] | None = None
                if isinstance(ev, eng.Started):
                    if started:
                        return None
                    started = True
                    effects = drv.start(ev.start)
                elif not started:
                    continue
                elif isinstance(ev, eng.Received):
                    msg = eng.decode_message(ev.envelope, MESSAGE_TYPES[ev.envelope.step])
                    if isinstance(msg, DkdAbort):
                        drv.on_abort(msg.reason, by_peer=ev.sender)
                        continue
                    effects = drv.on_message(eng.MessageIn(
                        sender=ev.sender, sender_role=ev.sender_role, message=msg,
                        envelope=ev.envelope, now=ev.now))
                elif isinstance(ev, eng.TimerEvent) and ev.event == "fired":
                    effects = drv.on_timer(eng.TimerFired(name=ev.name, now=ev.deadline))
                elif isinstance(ev, eng.Sent):
                    journaled.append(ev)
                if effects is not None:
                    replayed.extend(e for e in effects if isinstance(e, eng.Send))
                    last_effects = effects
        except (AuraError, KeyError, msgspec.DecodeError):
            return None  # the journal contradicts our own handlers: refuse to guess
        if not started:
            return None
        own = [s for s in journaled if s.envelope.step != "DkdAbort"]
        if len(own) > len(replayed):
            return None
        for sent, again in zip(own, replayed, strict=False):
            if (sent.envelope.step != type(again.message).__name__
                    or sent.envelope.body != msgspec.msgpack.encode(again.message)
                    or tuple(sent.to) != again.to):
                return None  # a journaled message we would not say again: never diverge
        # sends computed but not durable (a crash inside the group) are due again, identical
        missing = replayed[len(own):]
        if missing:
            drv._pending = [e for e in last_effects if not isinstance(e, eng.Send)]
            drv._pending[:0] = list(missing)
        return drv


class DkdInitiatorDriver(_DkdDriver):
    role = INITIATOR

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: DkdInitiator[Any] | None = None
        self._holders: tuple[str, ...] = ()

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        p = validate_params(inp.params)
        self._session, self._entropy = inp.session, inp.entropy
        self._timeout = float(p.get("timeout", self._timeout))
        account = (self.services.accounts.get(p["account_id"]).account if p["account_id"]
                   else self.services.accounts.only().account)
        holders = tuple(p["participants"]) or (inp.self_name,)
        if holders[0] != inp.self_name:
            raise eng.ParamsError(f"dkd: the initiator {inp.self_name} must be the first "
                                  f"participant, got {list(holders)}")
        solo = account.threshold == 1
        self._holders = holders[:1] if solo else holders
        self._roles = session_roles({"participants": list(self._holders),
                                     "threshold": account.threshold})
        self._facts = facts = _facts_for(self.services, account, self._holders,
                                         session_id=inp.session, context=p["context"],
                                         memo=self._memo)
        own = make_contribution(self.services, facts, inp.entropy)
        self._commitments[own.reveal.device_id] = [own.commitment]
        self._reveals[own.reveal.device_id] = own.reveal
        state = DkdInitiator(session_id=inp.session, own=own)
        if solo:
            collected = CollectedCommitments.verify([own.commitment], facts)
            witness = VerifiedReveals.verify(collected, [own.reveal], facts)
            done = state.complete_alone(witness, facts)
            assert done.key is not None
            self._state = done
            self._result = _result(facts, self.services, witness, done.key)
            return [eng.Complete(result=self._result)]
        if len(self._holders) < account.threshold:
            raise eng.ParamsError(f"dkd: {account.threshold} holders needed, got "
                                  f"{list(self._holders)}")
        self._state, req = state.send_request(
            account_id=account.account_id, context=facts.context,
            threshold=account.threshold, holders=self._holders)
        return [eng.Send(to=self._holders[1:], message=req),
                eng.ArmTimer(name=DEADLINE_TIMER, deadline=inp.now + self._timeout)]

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        assert self._state is not None and self._facts is not None
        effects: list[eng.Effect] = []
        msg = inp.message
        try:
            if isinstance(msg, DkdCommitment):
                self._check_sender(inp.sender, msg.commitment.device_id, "DkdCommitment")
                self._add_commitment(inp.sender, msg.commitment, effects)
            elif isinstance(msg, DkdReveal):
                self._on_reveal(inp.sender, msg.reveal, effects)
            else:
                raise RemoteProtocolError(f"the dkd initiator does not take "
                                          f"{type(msg).__name__} from {inp.sender}")
        except RemoteProtocolError as exc:
            effects.append(self.rejections.reject(inp.sender, exc))
        effects.extend(self._advance())
        return effects

    def _on_reveal(self, peer: str, r: RevealedPartial, effects: list[eng.Effect]) -> None:
        assert self._facts is not None
        self._check_sender(peer, r.device_id, "DkdReveal")
        if not self._add_commitment(peer, r.commitment, effects):
            return
        if len(self._commitments[r.device_id]) > 1:
            return  # equivocated: excluded, its reveal is worthless
        check_reveal(r, r.commitment.digest, self._facts)  # RevealError: rejected with reason
        self._reveals.setdefault(r.device_id, r)

    def _advance(self) -> list[eng.Effect]:
        assert self._state is not None and self._facts is not None
        out: list[eng.Effect] = []
        state = self._state
        if phase_of(state) is CommitmentPhase:
            collected = self._collected()
            if collected is None:
                return out
            state = state.transition_to_reveal(collected)
            state, announce = state.send_collected()
            self._state = state
            out.append(eng.Send(to=self._holders[1:], message=announce))
        if phase_of(state) is RevealPhase:
            collected = self._collected()
            if collected is None:
                return out
            try:
                witness = VerifiedReveals.verify(collected, self._reveals.values(), self._facts)
            except WitnessError:
                return out
            fin = state.transition_to_finalizing(witness, self._facts)
            done, complete = fin.send_complete()
            self._state = done
            assert done.key is not None
            self._result = _result(self._facts, self.services, witness, done.key)
            out.extend([eng.Send(to=self._holders[1:], message=complete),
                        eng.CancelTimer(name=DEADLINE_TIMER),
                        eng.Complete(result=self._result)])
        return out

    def _to_failed(self, *, timeout: bool, abort: DkdAbort | None = None) -> None:
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        if timeout and ph is CommitmentPhase:
            self._state = st.time_out_commitments()
        elif timeout and ph is RevealPhase:
            self._state = st.time_out_reveals()
        elif abort is not None:
            self._state = {Initializing: st.peer_aborted_initializing,
                           CommitmentPhase: st.peer_aborted_commitment,
                           RevealPhase: st.peer_aborted_reveal,
                           Finalizing: st.peer_aborted_finalizing}[ph](abort)
        else:
            self._state = {Initializing: st.abort_initializing,
                           CommitmentPhase: st.abort_commitment,
                           RevealPhase: st.abort_reveal,
                           Finalizing: st.abort_finalizing}[ph]()

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"phase": phase, "participants": list(self._holders),
                "commitments": len(self._commitments), "reveals": len(self._reveals),
                "rejected": len(self.rejections.items)}

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in FINAL_PHASES

    @property
    def phase(self) -> type[Phase] | None:
        return None if self._state is None else phase_of(self._state)


class DkdParticipantDriver(_DkdDriver):
    role = PARTICIPANTS

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: DkdParticipant[Any] | None = None
        self._initiator = ""
        self._now = 0.0

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._session, self._entropy, self._now = inp.session, inp.entropy, inp.now
        self._roles = dict(inp.roles)
        self._initiator = inp.opened_by or next(
            (n for n, r in inp.roles.items() if r == INITIATOR), "")
        self._state = DkdParticipant(session_id=inp.session)
        return []

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        assert self._state is not None
        msg = inp.message
        effects: list[eng.Effect] = []
        try:
            if inp.sender != self._initiator:
                raise SenderMismatchError(f"dkd participants only hear the initiator "
                                          f"{self._initiator}, got {type(msg).__name__} from "
                                          f"{inp.sender}")
            if isinstance(msg, DkdRequest):
                return self._on_request(inp, msg)
            if isinstance(msg, DkdCollected):
                return self._on_collected(msg)
            if isinstance(msg, DkdComplete):
                return self._on_complete(msg)
            raise RemoteProtocolError(f"a dkd participant does not take {type(msg).__name__}")
        except RemoteProtocolError as exc:
            effects.append(self.rejections.reject(inp.sender, exc))
        return effects

    def _on_request(self, inp: eng.MessageIn, req: DkdRequest) -> list[eng.Effect]:
        assert self._state is not None
        me = self.services.self_name
        try:
            account = self.services.accounts.get(req.account_id).account
        except AccountError as exc:
            raise DkdRequestError(exc.message) from None
        if req.threshold != account.threshold:
            raise DkdRequestError(f"request says threshold {req.threshold}, account "
                                  f"{account.account_id} has {account.threshold}")
        if not req.holders or req.holders[0] != inp.sender or me not in req.holders[1:]:
            raise DkdRequestError(f"holders {list(req.holders)} must start with the initiator "
                                  f"{inp.sender} and include this device {me}")
        if len(set(req.holders)) != len(req.holders) or len(req.holders) < req.threshold:
            raise DkdRequestError(f"holders {list(req.holders)} are not {req.threshold} "
                                  "distinct devices")
        if not isinstance(req.context, str) or not req.context:
            raise DkdRequestError("empty dkd context")
        try:
            facts = _facts_for(self.services, account, req.holders, session_id=self._session,
                               context=req.context, memo=self._memo)
        except eng.ParamsError as exc:
            raise DkdRequestError(exc.message) from None
        self._facts = facts
        self._roles = {n: (INITIATOR if i == 0 else PARTICIPANTS)
                       for i, n in enumerate(req.holders)}
        self._timeout = self.services.protocols.dkd_timeout_seconds
        effects: list[eng.Effect] = []
        self._check_sender(inp.sender, req.commitment.device_id, "DkdRequest commitment")
        if not self._add_commitment(inp.sender, req.commitment, effects):
            raise DkdRequestError("the initiator's own commitment does not verify")
        own = make_contribution(self.services, facts, self._entropy)
        self._commitments.setdefault(own.reveal.device_id, []).append(own.commitment)
        st = self._state.receive_request(req, own)
        self._state, commit = st.send_commitment()
        effects += [eng.Send(to=(self._initiator,), message=commit),
                    eng.ArmTimer(name=DEADLINE_TIMER, deadline=inp.now + self._timeout)]
        return effects

    def _on_collected(self, msg: DkdCollected) -> list[eng.Effect]:
        assert self._state is not None and self._facts is not None
        effects: list[eng.Effect] = []
        init_dev = self._device_of(self._initiator)
        self._check_sender(self._initiator, msg.reveal.device_id, "DkdCollected reveal")
        for c in (*msg.commitments, msg.reveal.commitment):
            self._add_commitment(self._initiator, c, effects)
        collected = self._collected()
        if collected is None or init_dev not in collected.digests:
            raise WitnessError(
                f"DkdCollected from {self._initiator} does not prove {self._facts.threshold} "
                f"honest commitments with its own among them (counted: "
                f"{', '.join(collected.devices) if collected else 'too few'})")
        check_reveal(msg.reveal, collected.digests[init_dev], self._facts)
        self._reveals[init_dev] = msg.reveal
        st = self._state.transition_to_reveal(collected)
        self._state, reveal = st.send_reveal()
        effects.append(eng.Send(to=(self._initiator,), message=reveal))
        return effects

    def _on_complete(self, msg: DkdComplete) -> list[eng.Effect]:
        assert self._state is not None and self._facts is not None
        effects: list[eng.Effect] = []
        for r in msg.reveals:
            self._add_commitment(self._initiator, r.commitment, effects)
        collected = self._collected()
        if collected is None:
            raise WitnessError(f"DkdComplete from {self._initiator}: its reveals' commitments "
                               f"are not {self._facts.threshold} honest commitments")
        witness = VerifiedReveals.verify(collected, msg.reveals, self._facts)
        done = self._state.complete(msg, witness, self._facts)
        self._state = done
        assert done.key is not None
        self._result = _result(self._facts, self.services, witness, done.key)
        effects += [eng.CancelTimer(name=DEADLINE_TIMER), eng.Complete(result=self._result)]
        return effects

    def _to_failed(self, *, timeout: bool, abort: DkdAbort | None = None) -> None:
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        if timeout and ph is CommitmentPhase:
            self._state = st.time_out_commitment()
        elif timeout and ph is Finalizing:
            self._state = st.time_out_finalizing()
        elif abort is not None:
            self._state = {Initializing: st.peer_aborted_initializing,
                           CommitmentPhase: st.peer_aborted_commitment,
                           RevealPhase: st.peer_aborted_reveal,
                           Finalizing: st.peer_aborted_finalizing}[ph](abort)
        else:
            self._state = {Initializing: st.abort_initializing,
                           CommitmentPhase: st.abort_commitment,
                           RevealPhase: st.abort_reveal,
                           Finalizing: st.abort_finalizing}[ph]()

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"phase": phase, "initiator": self._initiator,
                "rejected": len(self.rejections.items)}

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in FINAL_PHASES

    @property
    def phase(self) -> type[Phase] | None:
        return None if self._state is None else phase_of(self._state)


SPEC = eng.register_protocol(
    eng.ProtocolSpec(
        choreography=CHOREOGRAPHY,
        drivers={INITIATOR: DkdInitiatorDriver, PARTICIPANTS: DkdParticipantDriver},
        message_types=MESSAGE_TYPES,
        openers={"DkdRequest": eng.Opener(sender_role=INITIATOR, role=PARTICIPANTS)},
        initiator_role=INITIATOR,
        validate_params=validate_params,
        bindings=bindings,
    )
)

__all__ = [
    "DEADLINE_TIMER",
    "KIND_EQUIVOCATION",
    "KIND_REJECTED",
    "MESSAGE_TYPES",
    "SPEC",
    "CommitmentPhase",
    "Completed",
    "DkdInitiator",
    "DkdInitiatorDriver",
    "DkdParticipant",
    "DkdParticipantDriver",
    "Failed",
    "Finalizing",
    "Initializing",
    "RevealPhase",
    "bindings",
    "session_params",
    "session_roles",
    "validate_params",
]


