"""The DKD choreography: every holder that takes part, the initiator included, does the maths.

Roles: ``initiator`` (the device whose operator ran ``ctl dkd``: a share holder that also
coordinates) and the role set ``participants`` (the other holders asked, ``m >= 1``). A device
plays one role per session and never messages itself, so the initiator's own commitment and
reveal are local state on its side. The exchange is a star through the initiator: each holder
needs ``t`` contributions, its own included, so the initiator gathers ``q = t - 1`` from the
participants, and relays what it collected as transferable evidence (signed commitments,
DLEQ-proven reveals) that every participant verifies itself.

Every partial is blinded (``crypto.dkd``): the initiator draws ``r`` and asks for
``B = r·H``; a holder's partial is ``P_i = s_i·B``, and only the initiator, which holds ``r``,
can turn ``Σ λ_i·P_i = r·K`` into ``K``. So no message, and no journal of any other holder,
holds anything ``K`` follows from.

1. Initializing: the initiator sends ``DkdRequest`` (account, context, threshold, holder list,
   the blinded base ``B`` and its own signed commitment) to every participant.
2. Consenting (participants): each participant's consent policy (``consent.py``) answers, refuses,
   or parks the request for its operator (``ctl dkd approve|refuse``). Its answer is one
   ``DkdCommitment``: its signed commitment, or its signed refusal (:class:`DkdRefusal`, with
   the reason) - the participant's choice is the content of the one message every member sends
   to the gather (the language's choices are made by one role for everyone; here each member
   chooses for itself, and the monitor's "one answer per member" is exactly right for both).
   A refusing participant's session ends there (failed, code ``refused``), telling nobody
   else: its refusal is its last word.
   CommitmentPhase: the initiator gathers ``q`` commitments. With its own that is
   ``CollectedCommitments``. Refusals it collects as signed evidence; it goes on as long as
   the participants that have not refused can still make ``q``, and fails with code
   ``refused`` (every refusal's participant and reason) as soon as they cannot - not at its
   deadline.
3. RevealPhase: the initiator sends ``DkdCollected`` (the ``t`` signed commitments it counted
   and its own reveal ``P_i = s_i·B`` + DLEQ proof); a participant verifies its own
   ``CollectedCommitments`` from it and only then sends its ``DkdReveal`` (which names the
   commitment it opens). The initiator gathers ``q`` verified reveals: ``VerifiedReveals``.
4. Finalizing: the initiator computes ``K = r⁻¹·Σ λ_i·P_i`` and sends ``DkdComplete`` with
   the ``t`` reveals it combined and the derived public key and fingerprint (public values);
   each participant verifies the (blinded) reveals itself (``VerifiedReveals``); it cannot
   check the key, which is the point: it never learns ``K``.
5. Completed. Any missed deadline aborts: Failed, and the abort reaches every role.

A ``t = 1`` account (the 1-of-1 account of a recovered device, or any account whose every
holder has ``s_i = s``) needs no other holder: the initiator completes locally and sends
nothing (``K = s·H`` either way), so it never enters this exchange.
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography


class SignedCommitment(msgspec.Struct, frozen=True, kw_only=True):
    """``device_id`` commits to its partial (``digest`` = ``crypto.dkd.partial_commitment``) in
    ``session``; ``signature`` by its device key under the domain ``dkd/commitment``. Not bound
    to the envelope it travels in, so it can be relayed as evidence."""

    session: str
    device_id: str
    digest: bytes
    signature: bytes


class RevealedPartial(msgspec.Struct, frozen=True, kw_only=True):
    """A holder's blinded partial ``P_i = s_i·B`` with its DLEQ proof (base ``B``, against its
    public share), and the commitment it opens."""

    device_id: str
    index: int
    point: bytes
    proof: bytes
    commitment: SignedCommitment


class DkdRequest(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    context: str
    threshold: int
    #: every holder asked, the initiator first (names as the nodes' configs name the devices)
    holders: tuple[str, ...]
    #: ``B = r·H``, the blinded base every partial of this session is computed on
    blinded_base: bytes
    commitment: SignedCommitment


class DkdRefusal(msgspec.Struct, frozen=True, kw_only=True):
    """``device_id`` refuses to answer ``session``, and why; ``signature`` by its device key
    under the domain ``dkd/refusal`` over the reason (``witnesses.refusal_payload``), so the
    refusal is evidence in the requester's journal, not only a line in a log."""

    session: str
    device_id: str
    reason: str
    signature: bytes


class DkdCommitment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A participant's answer to the request: its signed commitment, or (``commitment`` absent)
    its signed refusal. Exactly one is set (``check`` in ``roles``)."""

    commitment: SignedCommitment | None = None
    refusal: DkdRefusal | None = None


class DkdCollected(msgspec.Struct, frozen=True, kw_only=True):
    """The initiator's evidence for ``CollectedCommitments`` and its own reveal."""

    commitments: tuple[SignedCommitment, ...]
    reveal: RevealedPartial


class DkdReveal(msgspec.Struct, frozen=True, kw_only=True):
    reveal: RevealedPartial


class DkdComplete(msgspec.Struct, frozen=True, kw_only=True):
    """The reveals the initiator combined (evidence for ``VerifiedReveals``) and its result."""

    reveals: tuple[RevealedPartial, ...]
    public_key: bytes
    fingerprint: str


class DkdAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("dkd", abort=DkdAbort)
def DKD(c: ChoreographyBuilder) -> None:
    initiator = c.role("initiator")
    participants = c.role_set("participants", size="m", minimum=1)
    q = c.threshold("q", of=participants, minimum=1)

    c.phase(initiator, "Initializing")
    c.phase(participants, "Initializing")
    c.send(initiator, participants, DkdRequest)

    c.phase(initiator, "CommitmentPhase")
    c.phase(participants, "Consenting")
    c.gather(participants, initiator, DkdCommitment, threshold=q, deadline="dkd_timeout")
    c.phase(participants, "CommitmentPhase")

    c.phase(initiator, "RevealPhase")
    c.send(initiator, participants, DkdCollected, deadline="dkd_timeout")
    c.phase(participants, "RevealPhase")
    c.gather(participants, initiator, DkdReveal, threshold=q, deadline="dkd_timeout")

    c.phase(initiator, "Finalizing")
    c.phase(participants, "Finalizing")
    c.send(initiator, participants, DkdComplete, deadline="dkd_timeout")

    c.phase(initiator, "Completed")
    c.phase(participants, "Completed")
