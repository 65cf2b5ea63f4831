"""The DKD choreography.

Roles: ``initiator`` (the device that asks for a derived key) and the role set
``participants`` (the share holders taking part, ``n >= 2``; the initiator's own device is
usually one of them too: one device may play two roles of a session). Keeping the initiator
a separate role keeps the participants interchangeable, which is what lets "any ``t`` of the
``n``" be stated as a gather.

1. Initializing: the initiator sends the context to every participant.
2. CommitmentPhase: all-to-all, each participant commits to ``P_i = s_i * H`` (with its DLEQ
   proof) and waits for ``t`` commitments (its own included).
3. RevealPhase: all-to-all reveals; each waits for ``t`` verified reveals.
4. Finalizing: each participant computes ``K = sum(lambda_i * P_i)`` and sends the result to
   the initiator, who gathers ``t`` agreeing results and announces completion.
5. Completed. Any missed deadline aborts: Failed, and the abort reaches every role.
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography


class DkdRequest(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    context: bytes
    participants: tuple[bytes, ...]
    threshold: int
    signature: bytes


class DkdCommitment(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    participant: bytes
    commitment: bytes
    signature: bytes


class DkdReveal(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    participant: bytes
    point: bytes
    dleq_proof: bytes
    signature: bytes


class DkdResult(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    participant: bytes
    derived_public_key: bytes
    reveal_set_digest: bytes
    signature: bytes


class DkdComplete(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    derived_public_key: bytes
    signature: bytes


class DkdAbort(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    reason: str


@choreography("dkd", abort=DkdAbort)
def DKD(c: ChoreographyBuilder) -> None:
    initiator = c.role("initiator")
    participants = c.role_set("participants", size="n", minimum=2)
    t = c.threshold("t", of=participants, minimum=2)

    c.phase(initiator, "Initializing")
    c.phase(participants, "Initializing")
    c.send(initiator, participants, DkdRequest)
    c.phase(initiator, "Finalizing")

    c.phase(participants, "CommitmentPhase")
    c.all_to_all(participants, DkdCommitment, threshold=t, deadline="dkd_timeout")

    c.phase(participants, "RevealPhase")
    c.all_to_all(participants, DkdReveal, threshold=t, deadline="dkd_timeout")

    c.phase(participants, "Finalizing")
    c.gather(participants, initiator, DkdResult, threshold=t, deadline="dkd_timeout")
    c.send(initiator, participants, DkdComplete)

    c.phase(initiator, "Completed")
    c.phase(participants, "Completed")
