"""DKD roles on the authoring kit (``aura_node.protocols.kit``), their params and helpers.

Theory of operation
-------------------
Two roles (``choreography.py`` describes the exchange): the ``initiator`` is the holder whose
operator ran ``ctl dkd``; ``participants`` are the other holders asked. Each is one typestate
class whose declarations are the whole of its dispatch::

    DkdInitiator:   Initializing --local, t = 1 [VerifiedReveals of its own reveal]--> Completed
                    Initializing --send DkdRequest, draws r (@unrepeatable)--> CommitmentPhase
                    CommitmentPhase --gather DkdCommitment [CollectedCommitments]--> RevealPhase
                    CommitmentPhase --local, refusals leave < t holders--> Failed (refused)
                    RevealPhase --send DkdCollected--> RevealPhase          (once, on entry)
                    RevealPhase --gather DkdReveal [VerifiedReveals]--> Finalizing
                    Finalizing --send DkdComplete--> Completed
    DkdParticipant: Initializing --recv DkdRequest--> Consenting
                    Consenting --local consult_policy (@unrepeatable: dkd.consent)--> Consenting
                    Consenting --send DkdCommitment (commitment | signed refusal)--> CommitmentPhase
                               (by the policy's verdict, or the operator's approve / refuse)
                    CommitmentPhase --local, after a refusal--> Failed (refused, told to nobody)
                    CommitmentPhase --recv DkdCollected [CollectedCommitments]--> RevealPhase
                    RevealPhase --send DkdReveal--> Finalizing
                    Finalizing --recv DkdComplete [VerifiedReveals]--> Completed

plus a timeout of every wait (Failed, code ``timeout``) and the abort edge (``abort=Failed``).
The t = 1 choice is the kit's: ``derive_alone`` declines (:class:`~aura_node.protocols.kit.
Decline`) unless the account's threshold is 1. A commitment straggling in after the gather's
quorum is pooled by ``pool_late_commitment`` (a kit late-message handler), so an equivocation
it proves is still found.

Blinding (``crypto.dkd``): only the initiator may ever hold ``K``, the derived seed or the
blinding scalar ``r``. ``send_request`` draws ``r`` from the OS CSPRNG inside ``step.draw``
(the transition is ``@unrepeatable``): what is journaled (a ``dkd.blinding`` record) is ``r``
sealed (HPKE, ``crypto.seal``) to this device's own key, so a replay after a crash opens the
same ``r`` and recomputes the same ``DkdRequest`` byte for byte, and a reader of the journal
without the device key learns nothing. ``r`` lives in the role's fields, in memory, on this
device only (``describe`` never shows it). Every message carries ``B = r·H`` and blinded
partials ``s_i·B`` only; a participant refuses ``B = H`` (an unblinded request would put
``s_i·H``, from which ``K`` follows, into its journal). A participant verifies everything it
is shown but cannot derive or check the key: its result repeats the public key and
fingerprint the initiator announced. A ``t = 1`` initiator derives ``K = s·H`` alone, unblinded,
and sends and journals nothing but the public result.

Commitments before reveals: a reveal leaves a device only from ``RevealPhase``, which only a
transition holding a verified ``CollectedCommitments`` (``t`` distinct honest signed
commitments) reaches; the key is derived only from a ``VerifiedReveals``. Each holder's
blinded partial ``P_i = s_i·B`` and DLEQ proof use a nonce from ``seeded_rng(journaled entropy
+ label)`` (hedged with ``s_i`` inside ``dleq.prove``): the kit's replay after a crash
recomputes the same commitment, and a device never commits twice.

A :class:`Pool` in the role's fields holds every distinct valid commitment per device (two
from one device: an equivocation - a ``dkd.rejected`` record plus a ``dkd.equivocation``
record with both signed commitments, and ``CollectedCommitments`` excludes the device) and
the reveals whose proofs verified. Its facts carry the session's verification memo
(``crypto.memo``), so each signature and DLEQ proof is checked once per exact bytes however
often the pool is re-verified; a replay starts with an empty memo and checks again. A peer's
bad input never aborts the session: a transition raises ``RemoteProtocolError`` (the kit
journals ``dkd.rejected`` and keeps the value) or, where the message also taught something
worth keeping, journals the rejection with ``step.reject`` and goes on.

Consent (``consent.py``): a participant takes a well-formed request (``receive_request``: a
malformed one is rejected, unanswered) into ``Consenting`` and arms the session's deadline
there. ``consult_policy`` asks the node's :class:`~aura_node.protocols.dkd.consent.
ConsentKeeper` once, live, inside ``step.draw``: the verdict is journaled (``dkd.consent``) and
replayed, never re-decided, since it depends on config and on other sessions (the rate
limit). ``answer`` commits, ``refuse_by_policy`` sends a signed :class:`DkdRefusal` with the
reason; ``ask`` parks the request for the operator's ``approve`` / ``refuse`` control actions
(``ctl dkd approve|refuse``; a control action is a journaled input, so replay is exact), or
the deadline. A refusing participant ends at once (``end_refused``: failed, code ``refused``,
no abort: its refusal told the requester). The initiator checks each refusal's signature and
keeps it; it goes on while the holders that did not refuse can still make ``t`` and ends
(``give_up_refused``: failed, code ``refused``, naming each refuser and its reason; the abort
tells the participants still waiting) as soon as they cannot. A late refusal, after the
quorum, is kept as evidence and changes nothing. A request that is addressed to this device but
names a device that is not one of the account's current epoch (a device a reshare removed, or
a requester that has not learnt of the reshare yet), or asks this device after a reshare
removed it, is decided on arrival as a signed refusal naming the epoch (no policy draw), so
the requester ends with that reason rather than at its deadline.

Pure: no trio, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, TypeAlias, TypeVar, final

import msgspec

from aura_node.crypto.dkd import (
    DerivedKey,
    DerivedSeed,
    blind,
    combine,
    derive_seed,
    dkd_base,
    draw_blinding,
    fingerprint,
    partial,
    partial_commitment,
    unblind,
)
from aura_node.crypto.errors import PointEncodingError
from aura_node.crypto.group import Point, Scalar, seeded_rng
from aura_node.crypto.keys import DevicePublicKey
from aura_node.crypto.memo import VerificationMemo
from aura_node.crypto.seal import SealBinding, open_sealed, seal
from aura_node.errors import LocalProtocolError, ProtocolError, RemoteProtocolError, WitnessError
from aura_node.protocols import engine as eng
from aura_node.protocols.account import AccountError, AccountRecord
from aura_node.protocols.dkd.choreography import (
    DKD,
    DkdCollected,
    DkdCommitment,
    DkdComplete,
    DkdRefusal,
    DkdRequest,
    DkdReveal,
    RevealedPartial,
    SignedCommitment,
)
from aura_node.protocols.dkd.consent import (
    KIND_CONSENT,
    ConsentDecision,
    decode_decision,
    encode_decision,
)
from aura_node.protocols.dkd.witnesses import (
    CHOREOGRAPHY,
    COMMITMENT_DOMAIN,
    REFUSAL_DOMAIN,
    CollectedCommitments,
    DkdSessionFacts,
    RevealError,
    VerifiedReveals,
    check_commitment,
    check_refusal,
    check_reveal,
    refusal_payload,
)
from aura_node.protocols.kit import Decline, Step, protocol, unrepeatable
from aura_node.protocols.services import NodeServices
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from aura_node.session.witness import statement_bytes

S = TypeVar("S")
T = TypeVar("T")

DEADLINE_TIMER = "deadline"
KIND_REJECTED = "dkd.rejected"
KIND_EQUIVOCATION = "dkd.equivocation"
#: the initiator's blinding scalar ``r``, sealed to its own device key (module doc)
KIND_BLINDING = "dkd.blinding"
BLINDING_PURPOSE = "dkd/blinding"
#: the longest refusal reason an operator may give (it travels and is journaled)
MAX_REASON = 500
INITIATOR = "initiator"
PARTICIPANTS = "participants"
_PARTIAL_LABEL = b"dkd/partial-nonce"


class DkdMarker:
    """Choreography marker type (the ``C`` of ``ChoreographicProtocol[C, S]``)."""


class DkdParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An initiator's session params (:func:`session_params` builds them from ``ctl dkd``); a
    participant gets none and learns everything from the ``DkdRequest``."""

    context: str = ""
    #: every holder asked, this device first
    participants: tuple[str, ...] = ()
    account_id: str = ""
    threshold: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: seconds; ``None``: this node's ``dkd_timeout_seconds``
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        if not all(self.participants) or len(set(self.participants)) != len(self.participants):
            raise ValueError(f"dkd participants must be distinct device names, got "
                             f"{list(self.participants)}")


DkdStep: TypeAlias = Step[DkdParams]


class DkdResultMismatch(RemoteProtocolError):
    """The initiator announced a public key and a fingerprint that do not belong together."""

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
class Consenting(Phase):
    """Participant: the request is well formed; the consent policy answers, refuses, or waits
    for the operator (``ctl dkd approve|refuse``)."""


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
    """Initiator: the key is derived. Participant: its blinded partial was combined
    (terminal)."""


@final
class Failed(Phase):
    """Aborted: deadline, this side gave up, or a peer aborted (terminal)."""


# --- shared maths and evidence ------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True, kw_only=True)
class AskedFor:
    """A participant's view of the request it is deciding on (public values only)."""

    account_id: str
    requester: str
    context: str
    #: the request's journaled arrival time
    at: float
    #: the account's current devices by name (the default policy's requesters)
    devices: tuple[str, ...]


def sign_refusal(services: NodeServices, session: str, reason: str) -> DkdRefusal:
    """This device's signed refusal of ``session`` (Ed25519 is deterministic: a replay signs
    the same bytes); a reason longer than :data:`MAX_REASON` (a long context quoted in it) is
    cut there, so the requester never rejects an honest refusal."""
    key = services.device_key
    reason = reason[:MAX_REASON]
    sig = key.sign(REFUSAL_DOMAIN, statement_bytes(
        session_id=session, choreography=CHOREOGRAPHY, payload=refusal_payload(reason)))
    return DkdRefusal(session=session, device_id=key.device_id, reason=reason, signature=sig)


def derive_from(witness: VerifiedReveals, facts: DkdSessionFacts,
                blinding: Scalar | None = None) -> DerivedSeed:
    """``K = r⁻¹·Σ λ_i·P_i`` over the witness's ``t`` verified partials (no ``r⁻¹`` for the
    unblinded partials of a ``t = 1`` account), then HKDF (crypto.dkd)."""
    combined = combine(witness.partials, threshold=facts.threshold)
    k = combined if blinding is None else unblind(combined, blinding)
    return derive_seed(k, facts.account.account_id, facts.context)


def _blinding_binding(facts: DkdSessionFacts, device_id: str) -> SealBinding:
    return SealBinding(purpose=BLINDING_PURPOSE, account_id=facts.account.account_id,
                       session_id=facts.session_id, recipient_device_id=device_id)


def seal_new_blinding(services: NodeServices, facts: DkdSessionFacts) -> bytes:
    """A fresh ``r`` (OS CSPRNG) sealed to this device's own key: the only form it is ever
    journaled in. ``r`` itself dies here; :func:`open_blinding` gets it back."""
    key = services.device_key
    return seal(draw_blinding().to_bytes(), key.public, _blinding_binding(facts, key.device_id))


def open_blinding(services: NodeServices, facts: DkdSessionFacts, sealed: bytes) -> Scalar:
    key = services.device_key
    return Scalar.from_bytes(open_sealed(sealed, key, _blinding_binding(facts, key.device_id)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """The evidence one holder verified in a session (immutable: transitions keep the pool
    they return). Every distinct valid commitment, in arrival order (two of one device: an
    equivocation), and the first verified reveal of each device."""

    facts: DkdSessionFacts
    commitments: tuple[SignedCommitment, ...] = ()
    reveals: tuple[RevealedPartial, ...] = ()

    def add(self, c: SignedCommitment, step: DkdStep) -> Pool:
        """``c`` pooled, or ``WitnessError`` if it does not verify; a second, different
        commitment of one device is journaled as equivocation evidence (and pooled, so the
        witness excludes that device)."""
        check_commitment(c, self.facts)
        seen = [s for s in self.commitments if s.device_id == c.device_id]
        if any(s.digest == c.digest for s in seen):
            return self
        if seen:
            step.reject(EquivocationError(
                f"device {c.device_id} signed two different commitments in dkd session "
                f"{self.facts.session_id}: {seen[0].digest.hex()[:16]}.. and "
                f"{c.digest.hex()[:16]}..; it is excluded from this session"))
            step.record(KIND_EQUIVOCATION, msgspec.msgpack.encode(
                {"peer": step.sender, "first": seen[0], "second": c}))
        return replace(self, commitments=(*self.commitments, c))

    def add_each(self, cs: Iterable[SignedCommitment], step: DkdStep) -> Pool:
        """Pool every commitment that verifies; each one that does not is a rejection."""
        pool = self
        for c in cs:
            try:
                pool = pool.add(c, step)
            except WitnessError as exc:
                step.reject(exc)
        return pool

    def equivocated(self, device_id: str) -> bool:
        return sum(c.device_id == device_id for c in self.commitments) > 1

    def with_reveal(self, r: RevealedPartial) -> Pool:
        if any(x.device_id == r.device_id for x in self.reveals):
            return self
        return replace(self, reveals=(*self.reveals, r))

    def collected(self) -> CollectedCommitments | None:
        try:
            return CollectedCommitments.verify(self.commitments, self.facts)
        except WitnessError:
            return None

    def verified(self) -> VerifiedReveals | None:
        """``t`` pooled reveals that open counted commitments, if there are that many yet."""
        collected = self.collected()
        try:
            return None if collected is None else VerifiedReveals.verify(
                collected, self.reveals, self.facts)
        except WitnessError:
            return None


def _check_sender(step: DkdStep, device_id: str, what: str) -> None:
    expected = step.services.member(step.sender).device_id
    if device_id != expected:
        raise SenderMismatchError(f"{what} from {step.sender} names device {device_id[:40]}, "
                                  f"{step.sender} is {expected}")


def _result(facts: DkdSessionFacts, services: NodeServices, witness: VerifiedReveals,
            key: DerivedKey | DerivedSeed) -> dict[str, Any]:
    names = [services.name_of_device(r.device_id) or r.device_id for r in witness.reveals]
    return {"session": facts.session_id, "context": facts.context, "participants": names,
            "fingerprint": key.fingerprint, "public_key": key.public_key.hex()}


def _answer(msg: DkdCommitment, step: DkdStep) -> SignedCommitment | None:
    """The commitment of a participant's answer, ``None`` for a refusal; exactly one of the two
    and from the device that sent it, else the peer's message is rejected."""
    if (msg.commitment is None) == (msg.refusal is None):
        raise DkdRequestError(f"DkdCommitment from {step.sender} must carry exactly one of a "
                              "commitment and a refusal")
    if msg.commitment is not None:
        _check_sender(step, msg.commitment.device_id, "DkdCommitment")
        return msg.commitment
    refusal = _need(msg.refusal)
    _check_sender(step, refusal.device_id, "DkdRefusal")
    if len(refusal.reason) > MAX_REASON or not refusal.reason.isprintable():
        # it ends up in the requester's one-line error and log: printable, bounded text only
        raise DkdRequestError(f"refusal from {step.sender}: the reason must be at most "
                              f"{MAX_REASON} printable characters, got {refusal.reason[:60]!r}")
    if refusal.session != step.session:
        raise DkdRequestError(f"refusal from {step.sender} names session "
                              f"{refusal.session[:40]!r}, not {step.session}")
    return None


def _time_out(step: DkdStep, timeout: float, phase: str) -> None:
    step.fail("timeout", f"dkd session {step.session} did not complete within {timeout:g} s "
                         f"(phase {phase})")


def _need(value: T | None) -> T:
    assert value is not None, "set by the transition that entered this phase"
    return value


# --- the initiator ------------------------------------------------------------------------------


@final
class DkdInitiator(ChoreographicProtocol[DkdMarker, S], choreography="dkd", role=INITIATOR,
                   initial=Initializing, abort=Failed):
    holders: tuple[str, ...]
    timeout: float
    #: made with the session's base: ``B`` once ``send_request`` drew ``r`` (``H`` for t = 1)
    own: OwnContribution | None
    #: ``r``: in memory on this device only, never shown (module doc)
    blinding: Scalar | None
    pool: Pool
    collected: CollectedCommitments | None
    verified: VerifiedReveals | None
    #: the derived seed: memory only, this device only (``derived_seed``)
    key: DerivedSeed | None
    #: verified signed refusals, one per participant that refused, in arrival order
    refusals: tuple[DkdRefusal, ...]

    def __init__(self: DkdInitiator[Initializing], step: DkdStep) -> None:
        p, services = step.params, step.services
        if not p.context:
            raise eng.ParamsError("dkd context must be a non-empty string")
        account = (services.accounts.get(p.account_id) if p.account_id
                   else services.accounts.only()).account
        holders = p.participants or (step.self_name,)
        if holders[0] != step.self_name:
            raise eng.ParamsError(f"dkd: the initiator {step.self_name} must be the first "
                                  f"participant, got {list(holders)}")
        if account.threshold == 1:
            holders = holders[:1]
        elif len(holders) < account.threshold:
            raise eng.ParamsError(f"dkd: {account.threshold} holders needed, got "
                                  f"{list(holders)}")
        facts = _facts_for(services, account, holders, session_id=step.session,
                           context=p.context)
        self._begin(holders=holders, own=None, blinding=None, collected=None, verified=None,
                    key=None, timeout=p.timeout or services.protocols.dkd_timeout_seconds,
                    pool=Pool(facts=facts), refusals=())

    def derived_seed(self) -> DerivedSeed | None:
        """The derived key once the session completed here (for ``dkd.sign`` / ``dkd.export``
        on this node's control socket; never journaled, logged or replied)."""
        return self.key

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "participants": list(self.holders), "reveals": len(self.pool.reveals),
            "commitments": len({c.device_id for c in self.pool.commitments})}
        if self.refusals:
            out["refusals"] = [{"device_id": r.device_id, "reason": r.reason}
                               for r in self.refusals]
        return out

    @transition(source=Initializing, target=Completed, action="local")
    def derive_alone(self: DkdInitiator[Initializing], step: DkdStep) -> DkdInitiator[Completed]:
        """A t = 1 account needs no other holder: ``K = s·H`` from this device alone."""
        facts = self.pool.facts
        if facts.threshold != 1:
            raise Decline
        own = make_contribution(step.services, facts, step.entropy)  # unblinded, never sent
        collected = CollectedCommitments.verify([own.commitment], facts)
        witness = VerifiedReveals.verify(collected, [own.reveal], facts)
        key = derive_from(witness, facts)
        step.complete(**_result(facts, step.services, witness, key))
        return self._advance(DkdInitiator[Completed], verified=witness, key=key)

    @unrepeatable(record=KIND_BLINDING)
    @transition(source=Initializing, target=CommitmentPhase, action="send", message=DkdRequest,
                peer=PARTICIPANTS)
    def send_request(self: DkdInitiator[Initializing], step: DkdStep
                     ) -> tuple[DkdInitiator[CommitmentPhase], DkdRequest]:
        """Draw ``r`` (journaled only sealed to this device), ask for partials of ``B = r·H``."""
        services, facts = step.services, self.pool.facts
        r = open_blinding(services, facts,
                          step.draw(lambda: seal_new_blinding(services, facts)))
        facts = replace(facts, base=blind(facts.base, r))
        own = make_contribution(services, facts, step.entropy)
        step.arm(DEADLINE_TIMER, at=step.now + self.timeout)
        return self._advance(
            DkdInitiator[CommitmentPhase], own=own, blinding=r,
            pool=Pool(facts=facts, commitments=(own.commitment,), reveals=(own.reveal,)),
        ), DkdRequest(account_id=facts.account.account_id, context=facts.context,
                      threshold=facts.threshold, holders=self.holders,
                      blinded_base=facts.base.to_bytes(), commitment=own.commitment)

    @transition(source=CommitmentPhase, target=RevealPhase, action="gather",
                message=DkdCommitment, peer=PARTICIPANTS)
    def gather_commitment(self: DkdInitiator[CommitmentPhase], msg: DkdCommitment,
                          step: DkdStep
                          ) -> DkdInitiator[CommitmentPhase] | DkdInitiator[RevealPhase]:
        """A participant's answer: its commitment (pooled; ``t`` make ``CollectedCommitments``)
        or its signed refusal (kept; ``give_up_refused`` ends the session once the others
        cannot make ``t`` any more)."""
        commitment = _answer(msg, step)
        if commitment is None:
            return self._advance(DkdInitiator[CommitmentPhase],
                                 refusals=self._with_refusal(_need(msg.refusal), step))
        pool = self.pool.add(commitment, step)
        collected = pool.collected()
        if collected is None:
            return self._advance(DkdInitiator[CommitmentPhase], pool=pool)
        return self._advance(DkdInitiator[RevealPhase], pool=pool, collected=collected)

    @transition(source=CommitmentPhase, target=Failed, action="local")
    def give_up_refused(self: DkdInitiator[CommitmentPhase], step: DkdStep
                        ) -> DkdInitiator[Failed]:
        """Partial refusal: go on while the holders that have not refused (this device
        included) can still make ``t``; end now, with every refusal's reason, once they
        cannot (not at the deadline). The abort tells the participants still waiting."""
        facts = self.pool.facts
        refused = {r.device_id for r in self.refusals}
        if len(self.holders) - len(refused) >= facts.threshold:
            raise Decline
        names = "; ".join(f"{step.services.name_of_device(r.device_id) or r.device_id} "
                          f"refused: {r.reason}" for r in self.refusals)
        step.cancel(DEADLINE_TIMER)
        step.fail("refused", f"dkd of context {facts.context!r} needs {facts.threshold} of "
                             f"{len(self.holders)} holders and {len(refused)} refused "
                             f"({names})")
        return self._advance(DkdInitiator[Failed])

    def _with_refusal(self, refusal: DkdRefusal, step: DkdStep) -> tuple[DkdRefusal, ...]:
        """``refusal`` checked (its signature, its signer) and kept once per device."""
        check_refusal(refusal, self.pool.facts)
        if any(r.device_id == refusal.device_id for r in self.refusals):
            return self.refusals
        return (*self.refusals, refusal)

    @transition(source=RevealPhase, target=RevealPhase, action="send", message=DkdCollected,
                peer=PARTICIPANTS)
    def send_collected(self: DkdInitiator[RevealPhase], step: DkdStep
                       ) -> tuple[DkdInitiator[RevealPhase], DkdCollected]:
        counted = _need(self.collected).evidence.statements
        return self._advance(DkdInitiator[RevealPhase]), DkdCollected(
            commitments=tuple(SignedCommitment(session=s.session_id, device_id=s.signer_id,
                                               digest=s.payload, signature=s.signature)
                              for s in counted),
            reveal=_need(self.own).reveal)

    @transition(source=RevealPhase, target=RevealPhase, action="local", message=DkdCommitment)
    def pool_late_commitment(self: DkdInitiator[RevealPhase], msg: DkdCommitment,
                             step: DkdStep) -> DkdInitiator[RevealPhase]:
        commitment = _answer(msg, step)
        if commitment is None:  # a late refusal: kept as evidence, the quorum is already met
            return self._advance(DkdInitiator[RevealPhase],
                                 refusals=self._with_refusal(_need(msg.refusal), step))
        return self._advance(DkdInitiator[RevealPhase], pool=self.pool.add(commitment, step))

    @transition(source=RevealPhase, target=Finalizing, action="gather", message=DkdReveal,
                peer=PARTICIPANTS)
    def gather_reveal(self: DkdInitiator[RevealPhase], msg: DkdReveal, step: DkdStep
                      ) -> DkdInitiator[RevealPhase] | DkdInitiator[Finalizing]:
        r = msg.reveal
        _check_sender(step, r.device_id, "DkdReveal")
        pool = self.pool.add(r.commitment, step)
        if not pool.equivocated(r.device_id):  # an equivocator's reveal is worthless
            try:
                check_reveal(r, r.commitment.digest, pool.facts)
                pool = pool.with_reveal(r)
            except RevealError as exc:
                step.reject(exc)  # the commitment it carried still counts as evidence
        witness = pool.verified()
        if witness is None:  # no quorum of verified reveals yet: keep what this one taught
            return self._advance(DkdInitiator[RevealPhase], pool=pool)
        return self._advance(DkdInitiator[Finalizing], pool=pool, collected=witness.commitments,
                             verified=witness,
                             key=derive_from(witness, pool.facts, _need(self.blinding)))

    @transition(source=Finalizing, target=Completed, action="send", message=DkdComplete,
                peer=PARTICIPANTS)
    def send_complete(self: DkdInitiator[Finalizing], step: DkdStep
                      ) -> tuple[DkdInitiator[Completed], DkdComplete]:
        verified, key = _need(self.verified), _need(self.key)
        step.cancel(DEADLINE_TIMER)
        step.complete(**_result(self.pool.facts, step.services, verified, key))
        return self._advance(DkdInitiator[Completed]), DkdComplete(
            reveals=verified.reveals, public_key=key.public_key, fingerprint=key.fingerprint)

    @transition(source=CommitmentPhase, target=Failed, action="timeout")
    def time_out_commitments(self: DkdInitiator[CommitmentPhase], step: DkdStep
                             ) -> DkdInitiator[Failed]:
        _time_out(step, self.timeout, "CommitmentPhase")
        return self._advance(DkdInitiator[Failed])

    @transition(source=RevealPhase, target=Failed, action="timeout")
    def time_out_reveals(self: DkdInitiator[RevealPhase], step: DkdStep) -> DkdInitiator[Failed]:
        _time_out(step, self.timeout, "RevealPhase")
        return self._advance(DkdInitiator[Failed])


# --- a participant ------------------------------------------------------------------------------


@final
class DkdParticipant(ChoreographicProtocol[DkdMarker, S], choreography="dkd", role=PARTICIPANTS,
                     initial=Initializing, abort=Failed):
    timeout: float
    #: what was asked, by whom, when (``Consenting`` on; public values, shown by ``describe``)
    asked: AskedFor | None
    #: the consent policy's journaled verdict (``consult_policy``)
    consent: ConsentDecision | None
    #: this device's signed refusal, once it refused (it then ends, ``end_refused``)
    refusal: DkdRefusal | None
    #: set when the request is answered (``CommitmentPhase`` on)
    own: OwnContribution | None
    pool: Pool | None

    def __init__(self: DkdParticipant[Initializing], step: DkdStep) -> None:
        self._begin(timeout=step.services.protocols.dkd_timeout_seconds, asked=None,
                    consent=None, refusal=None, own=None, pool=None)

    def describe(self) -> dict[str, Any]:
        if self.asked is None:
            return {}
        out: dict[str, Any] = {"account": self.asked.account_id,
                               "requester": self.asked.requester,
                               "context": self.asked.context, "requested_at": self.asked.at}
        if self.consent is not None:
            out["consent"] = self.consent.verdict
        if self.refusal is not None:
            out["refused"] = self.refusal.reason
        return out

    def awaiting_operator(self) -> bool:
        """Parked for ``ctl dkd approve`` / ``ctl dkd refuse`` (``ctl dkd pending``)."""
        return (self.consent is not None and self.consent.verdict == "ask"
                and self.own is None and self.refusal is None)

    @transition(source=Initializing, target=Consenting, action="recv", message=DkdRequest,
                peer=INITIATOR)
    def receive_request(self: DkdParticipant[Initializing], req: DkdRequest,
                        step: DkdStep) -> DkdParticipant[Consenting]:
        """Take a well-formed request: of an account this device holds, at its threshold,
        from its first holder, naming this device, for a non-empty context, blinded, with the
        initiator's own valid commitment. A malformed one is rejected (no answer: its sender
        is broken or lying); a well-formed one gets an answer, the consent policy's."""
        me, services = step.self_name, step.services
        addressed = bool(req.holders) and req.holders[0] == step.sender \
            and me in req.holders[1:]
        try:
            est = services.accounts.get(req.account_id)
        except AccountError as exc:
            # an account this device held but holds no usable share of now (removed by a
            # reshare the requester has not learnt of): the requester gets the reason, signed
            if addressed and req.account_id in services.accounts.accounts():
                return self._refuse_on_arrival(req, exc.message, step)
            raise DkdRequestError(exc.message) from None
        account = est.account
        # a device a reshare removed still holds its old record and may not know yet: it gets
        # a signed refusal naming the epoch (ends its session with the reason, not a timeout)
        strangers = sorted(set(req.holders) - {h.name for h in account.devices})
        if strangers:
            reason = (f"{', '.join(strangers)}: not a device of account {account.account_id} "
                      f"in its current epoch {est.epoch}")
            if not addressed:
                raise DkdRequestError(reason)
            return self._refuse_on_arrival(req, reason, step)
        if req.threshold != account.threshold:
            raise DkdRequestError(f"request says threshold {req.threshold}, account "
                                  f"{account.account_id} has {account.threshold}")
        if not req.holders or req.holders[0] != step.sender or me not in req.holders[1:]:
            raise DkdRequestError(f"holders {list(req.holders)} must start with the initiator "
                                  f"{step.sender} and include this device {me}")
        if len(set(req.holders)) != len(req.holders) or len(req.holders) < req.threshold:
            raise DkdRequestError(f"holders {list(req.holders)} are not {req.threshold} "
                                  "distinct devices")
        if not req.context:
            raise DkdRequestError("empty dkd context")
        try:
            facts = _facts_for(services, account, req.holders, session_id=step.session,
                               context=req.context)
        except eng.ParamsError as exc:
            raise DkdRequestError(exc.message) from None
        try:
            blinded = Point.from_bytes(req.blinded_base)
        except PointEncodingError as exc:
            raise DkdRequestError(f"blinded base: {exc.message}") from None
        if blinded == facts.base:
            # partials of H itself would put s_i·H, from which K follows, into this journal
            raise DkdRequestError("the request is not blinded (B = H): refusing to answer")
        facts = replace(facts, base=blinded)
        _check_sender(step, req.commitment.device_id, "DkdRequest commitment")
        try:
            pool = Pool(facts=facts).add(req.commitment, step)
        except WitnessError as exc:
            raise DkdRequestError(f"the initiator's own commitment does not verify: "
                                  f"{exc.message}") from None
        step.learn_roles({n: (INITIATOR if i == 0 else PARTICIPANTS)
                          for i, n in enumerate(req.holders)})
        # one deadline for the whole session here, a request parked for the operator included
        step.arm(DEADLINE_TIMER, at=step.now + self.timeout)
        return self._advance(DkdParticipant[Consenting], pool=pool, asked=AskedFor(
            account_id=account.account_id, requester=step.sender, context=req.context,
            at=step.now, devices=tuple(h.name for h in account.devices)))

    def _refuse_on_arrival(self: DkdParticipant[Initializing], req: DkdRequest, reason: str,
                           step: DkdStep) -> DkdParticipant[Consenting]:
        """A request that names devices that are not devices of the account's current epoch
        (a removed device asking, or a requester that has not learnt of a reshare yet), or
        asks this device after a reshare removed it: decided here, without the policy (no
        ``dkd.consent`` draw), as a refusal with ``reason``, so ``refuse_by_policy`` sends it
        signed and the requester's session ends with it instead of timing out."""
        step.learn_roles({n: (INITIATOR if i == 0 else PARTICIPANTS)
                          for i, n in enumerate(req.holders)})
        step.arm(DEADLINE_TIMER, at=step.now + self.timeout)
        return self._advance(DkdParticipant[Consenting], asked=AskedFor(
            account_id=req.account_id, requester=step.sender, context=req.context,
            at=step.now, devices=()), consent=ConsentDecision(
                verdict="refuse", reason=reason, requester=step.sender, at=step.now))

    @unrepeatable(record=KIND_CONSENT)
    @transition(source=Consenting, target=Consenting, action="local")
    def consult_policy(self: DkdParticipant[Consenting], step: DkdStep
                       ) -> DkdParticipant[Consenting]:
        """The consent policy's verdict, decided once, live, and journaled (``consent.py``:
        it depends on config and other sessions, which a replay does not see). Declines when
        the request was decided on arrival (``_refuse_stranger``)."""
        if self.consent is not None:
            raise Decline
        asked, keeper = _need(self.asked), step.services.dkd_consent
        decision = decode_decision(step.draw(lambda: encode_decision(keeper.decide(
            account_id=asked.account_id, account_devices=asked.devices,
            requester=asked.requester, context=asked.context, now=asked.at))))
        keeper.note(step.session, decision)
        return self._advance(DkdParticipant[Consenting], consent=decision)

    @transition(source=Consenting, target=CommitmentPhase, action="send",
                message=DkdCommitment, peer=INITIATOR)
    def answer(self: DkdParticipant[Consenting], step: DkdStep
               ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        """The policy allows it: commit to this device's blinded partial."""
        if _need(self.consent).verdict != "answer":
            raise Decline
        return self._commit(step)

    @transition(source=Consenting, target=CommitmentPhase, action="send",
                message=DkdCommitment, peer=INITIATOR)
    def refuse_by_policy(self: DkdParticipant[Consenting], step: DkdStep
                         ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        """The policy (or the rate limit) says no: a signed refusal with its reason."""
        consent = _need(self.consent)
        if consent.verdict != "refuse":
            raise Decline
        return self._refuse(consent.reason, step)

    @transition(source=Consenting, target=CommitmentPhase, action="send",
                message=DkdCommitment, peer=INITIATOR, command="approve")
    def approve(self: DkdParticipant[Consenting], args: Mapping[str, Any], step: DkdStep
                ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        """``ctl dkd approve SESSION``: the operator answers a parked request."""
        self._need_parked("approve")
        step.reply(session=step.session, state="CommitmentPhase", decision="approved")
        return self._commit(step)

    @transition(source=Consenting, target=CommitmentPhase, action="send",
                message=DkdCommitment, peer=INITIATOR, command="refuse")
    def refuse(self: DkdParticipant[Consenting], args: Mapping[str, Any], step: DkdStep
               ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        """``ctl dkd refuse SESSION [--reason TEXT]``: the operator refuses a parked request."""
        self._need_parked("refuse")
        given = args.get("reason")
        if given is not None and (not isinstance(given, str) or len(given) > MAX_REASON - 60
                                  or not given.isprintable()):
            raise LocalProtocolError(f"reason must be one line of at most {MAX_REASON - 60} "
                                     f"printable characters, got {str(given)[:60]!r}")
        reason = f"refused by the operator of {step.self_name}" + (f": {given}" if given else "")
        step.reply(session=step.session, state="Failed", decision="refused", reason=reason)
        return self._refuse(reason, step)

    @transition(source=CommitmentPhase, target=Failed, action="local")
    def end_refused(self: DkdParticipant[CommitmentPhase], step: DkdStep
                    ) -> DkdParticipant[Failed]:
        """A refusal is this device's last word: its session ends (failed, ``refused``),
        telling nobody else - the refusal already told the requester."""
        if self.refusal is None:
            raise Decline
        step.cancel(DEADLINE_TIMER)
        step.fail("refused", f"this device refused dkd for {_need(self.asked).requester}: "
                             f"{self.refusal.reason}", tell_peers=False)
        return self._advance(DkdParticipant[Failed])

    def _need_parked(self, action: str) -> None:
        consent = _need(self.consent)
        if consent.verdict != "ask":
            raise LocalProtocolError(
                f"dkd session is not waiting for the operator: the policy decided "
                f"({consent.verdict}: {consent.reason}); nothing to {action}")

    def _commit(self: DkdParticipant[Consenting], step: DkdStep
                ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        pool = _need(self.pool)
        own = make_contribution(step.services, pool.facts, step.entropy)
        return self._advance(
            DkdParticipant[CommitmentPhase], own=own,
            pool=replace(pool, commitments=(*pool.commitments, own.commitment)),
        ), DkdCommitment(commitment=own.commitment)

    def _refuse(self: DkdParticipant[Consenting], reason: str, step: DkdStep
                ) -> tuple[DkdParticipant[CommitmentPhase], DkdCommitment]:
        refusal = sign_refusal(step.services, step.session, reason)
        return (self._advance(DkdParticipant[CommitmentPhase], refusal=refusal),
                DkdCommitment(refusal=refusal))

    @transition(source=CommitmentPhase, target=RevealPhase, action="recv", message=DkdCollected,
                peer=INITIATOR)
    def receive_collected(self: DkdParticipant[CommitmentPhase], msg: DkdCollected,
                          step: DkdStep) -> DkdParticipant[RevealPhase]:
        _check_sender(step, msg.reveal.device_id, "DkdCollected reveal")
        pool = _need(self.pool).add_each((*msg.commitments, msg.reveal.commitment), step)
        collected = pool.collected()
        initiator = msg.reveal.device_id
        if collected is None or initiator not in collected.digests:
            raise WitnessError(
                f"DkdCollected from {step.sender} does not prove {pool.facts.threshold} "
                f"honest commitments with its own among them (counted: "
                f"{', '.join(collected.devices) if collected else 'too few'})")
        check_reveal(msg.reveal, collected.digests[initiator], pool.facts)
        return self._advance(DkdParticipant[RevealPhase], pool=pool)

    @transition(source=RevealPhase, target=Finalizing, action="send", message=DkdReveal,
                peer=INITIATOR)
    def send_reveal(self: DkdParticipant[RevealPhase], step: DkdStep
                    ) -> tuple[DkdParticipant[Finalizing], DkdReveal]:
        return self._advance(DkdParticipant[Finalizing]), DkdReveal(reveal=_need(self.own).reveal)

    @transition(source=Finalizing, target=Completed, action="recv", message=DkdComplete,
                peer=INITIATOR)
    def receive_complete(self: DkdParticipant[Finalizing], msg: DkdComplete,
                         step: DkdStep) -> DkdParticipant[Completed]:
        pool = _need(self.pool).add_each((r.commitment for r in msg.reveals), step)
        collected = pool.collected()
        facts = pool.facts
        if collected is None:
            raise WitnessError(f"DkdComplete from {step.sender}: its reveals' commitments "
                               f"are not {facts.threshold} honest commitments")
        witness = VerifiedReveals.verify(collected, msg.reveals, facts)
        # the reveals are blinded: without r nobody here can derive or check the key, so the
        # result repeats the public values the initiator announced (module doc)
        announced = DerivedKey(public_key=msg.public_key, fingerprint=msg.fingerprint)
        if len(msg.public_key) != 32 or fingerprint(msg.public_key) != msg.fingerprint:
            raise DkdResultMismatch(
                f"dkd session {step.session}: the announced fingerprint "
                f"{msg.fingerprint[:32]!r} is not the fingerprint of the announced public key")
        step.cancel(DEADLINE_TIMER)
        step.complete(**_result(facts, step.services, witness, announced))
        return self._advance(DkdParticipant[Completed], pool=pool)

    @transition(source=CommitmentPhase, target=Failed, action="timeout")
    def time_out_commitment(self: DkdParticipant[CommitmentPhase], step: DkdStep
                            ) -> DkdParticipant[Failed]:
        _time_out(step, self.timeout, "CommitmentPhase")
        return self._advance(DkdParticipant[Failed])

    @transition(source=Finalizing, target=Failed, action="timeout")
    def time_out_finalizing(self: DkdParticipant[Finalizing], step: DkdStep
                            ) -> DkdParticipant[Failed]:
        _time_out(step, self.timeout, "Finalizing")
        return self._advance(DkdParticipant[Failed])


# --- session params -----------------------------------------------------------------------------


def session_params(args: Mapping[str, Any], services: NodeServices) -> dict[str, Any]:
    """Build the validated session params of ``ctl dkd`` (args ``context``, optional
    ``participants`` [names], ``account`` / ``account_id``, ``timeout``) on this device.

    Participants default to every device of the account; this device is always one of them
    (first). The threshold comes from the account record, the timeout defaults to
    ``services.protocols.dkd_timeout_seconds``."""
    raw = {"context": args.get("context"), "participants": list(args.get("participants") or []),
           "account_id": args.get("account_id") or args.get("account") or "",
           "timeout": args.get("timeout")}
    try:
        shaped = msgspec.convert({k: v for k, v in raw.items() if v is not None}, DkdParams)
    except msgspec.ValidationError as exc:
        raise eng.ParamsError(f"dkd: bad parameters: {exc}") from None
    if not shaped.context:
        raise eng.ParamsError("dkd context must be a non-empty string")
    try:
        est = (services.accounts.get(shaped.account_id) if shaped.account_id
               else services.accounts.only())
    except AccountError as exc:
        raise eng.ParamsError(f"dkd: {exc.message}") from None
    account, me = est.account, services.self_name
    devices = [h.name for h in account.devices]
    asked = shaped.participants or devices
    for name in (me, *asked):
        if name not in devices:
            raise eng.ParamsError(f"dkd: {'this device' if name == me else 'participant'} "
                                  f"{name!r} is not a device of account {account.account_id} "
                                  f"(devices: {', '.join(devices)})")
    holders = [me, *[n for n in asked if n != me]]
    if account.threshold > 1 and len(holders) < account.threshold:
        raise eng.ParamsError(
            f"dkd: account {account.account_id} needs {account.threshold} holders, "
            f"participants name {len(holders)} ({', '.join(holders)})")
    _facts_for(services, account, holders, session_id="", context=shaped.context)
    timeout = shaped.timeout or services.protocols.dkd_timeout_seconds
    return {"context": shaped.context, "participants": holders,
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
    """The session's facts, the members' pinned keys bound to ``memo`` (a fresh one by
    default) so every signature of the session is verified once per exact bytes."""
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


PROTOCOL = protocol(DKD, DkdInitiator, DkdParticipant, params=DkdParams, initiator=INITIATOR,
                    bindings=bindings)
SPEC = PROTOCOL.spec

