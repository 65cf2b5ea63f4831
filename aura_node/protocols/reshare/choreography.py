"""The reshare choreography (account lifecycle: add/remove devices and guardians, same key).

Star-shaped around the ``coordinator`` (the current device the operator ran ``ctl account ...``
on; it deals its own share and holds a new one, in-process, since a device never messages
itself). ``participants`` are every other device of the session: the other *dealers* (current
holders whose shares are reshared; with the coordinator exactly the current threshold ``t`` of
them, and every dealer stays a holder) and the other new holders (devices and guardians). The
plan says who deals; one role plays both parts, so a device may deal and hold.

1. The coordinator sends the plan (the current record and epoch, who deals, the new holder sets
   and thresholds) to every participant (``ReshareRequest``).
2. Every participant answers ``Joined``: the epoch it holds now (so the new epoch number is above
   every participant's) and, from a dealer, its ``SubDealing`` (Feldman-committed sub-shares of
   its share, one sealed to each new holder). All of them, before ``reshare_timeout``.
3. The coordinator checks the dealings publicly (the witness ``QuorumOfDealings``) and sends
   every participant the same ``ReshareDeal``: all sub-dealings and the new epoch's record.
4. Every participant verifies its sub-shares and the record (``VerifiedSubShares``) and answers
   ``EpochSigned``: its signature(s) over the new epoch fact. All of them, before the deadline.
5. With every signature (``EpochSignatures``) the coordinator adopts the epoch and announces
   the signed fact (``EpochAnnounce``); each participant checks it, adopts it too and confirms
   (``EpochAdopted``). The coordinator waits for the confirmations (its session stays open, so
   the runtime re-sends the announcement to a participant whose link comes back after a
   crash); one missing at the deadline changes nothing, the epoch is adopted.

Any missing or invalid dealing, join or signature aborts the session everywhere before step 5;
nobody has adopted anything then, so the current epoch stays fully usable.
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ALL, ChoreographyBuilder, choreography
from aura_node.protocols.account import AccountRecord
from aura_node.protocols.epochs import EpochFact, EpochSignature


class PlannedHolder(msgspec.Struct, frozen=True, kw_only=True):
    """A holder in the plan: its name, device id and Shamir index (old index for a dealer)."""

    name: str
    device_id: str
    index: int


class ReshPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What the coordinator proposes; every participant checks it against what it knows."""

    account: AccountRecord  # the current epoch's record (the coordinator's)
    epoch: int  # the current epoch number
    previous: bytes  # digest of the current epoch's fact (what the new fact extends)
    dealers: tuple[PlannedHolder, ...]  # old device holders (old indices), coordinator first
    devices: tuple[PlannedHolder, ...]  # new device holders (new indices 1..n')
    threshold: int
    guardians: tuple[PlannedHolder, ...] = ()  # new guardian holders (new indices 1..m')
    guardian_threshold: int = 0
    timeout_ms: int = 60_000


class ReshareRequest(msgspec.Struct, frozen=True, kw_only=True):
    plan: ReshPlan


class WireSubShare(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # the recipient's new index
    device_id: str
    sealed: bytes


class SubDealing(msgspec.Struct, frozen=True, kw_only=True):
    """One dealer's sub-dealings of its share: to the new devices and to the new guardians."""

    dealer_index: int
    device_commitments: bytes
    device_shares: tuple[WireSubShare, ...]
    guardian_commitments: bytes = b""
    guardian_shares: tuple[WireSubShare, ...] = ()


class Joined(msgspec.Struct, frozen=True, kw_only=True):
    """A participant takes part: the epoch it holds now and, from a dealer, its dealing."""

    account_id: str
    epoch_held: int  # -1: this device holds no share of the account yet
    dealing: SubDealing | None = None


class ReshareDeal(msgspec.Struct, frozen=True, kw_only=True):
    """Every dealer's sub-dealing and the new epoch's record and number."""

    account: AccountRecord
    epoch: int
    dealings: tuple[SubDealing, ...]  # in plan.dealers order


class EpochSigned(msgspec.Struct, frozen=True, kw_only=True):
    signatures: tuple[EpochSignature, ...]


class EpochAnnounce(msgspec.Struct, frozen=True, kw_only=True):
    fact: EpochFact


class EpochAdopted(msgspec.Struct, frozen=True, kw_only=True):
    """This participant journaled the new epoch (its share and the signed fact)."""

    account_id: str
    epoch: int


class ReshareAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("reshare", abort=ReshareAbort)
def RESHARE(c: ChoreographyBuilder) -> None:
    coordinator = c.role("coordinator")
    participants = c.role_set("participants", size="p", minimum=1)

    c.phase(coordinator, "Proposing")
    c.phase(participants, "Invited")
    c.send(coordinator, participants, ReshareRequest)

    c.phase(coordinator, "CollectingDealings")
    c.phase(participants, "Joining")
    c.gather(participants, coordinator, Joined, threshold=ALL, deadline="reshare_timeout")

    c.phase(coordinator, "Distributing")
    c.phase(participants, "AwaitingDeal")
    c.send(coordinator, participants, ReshareDeal)

    c.phase(coordinator, "CollectingSignatures")
    c.phase(participants, "Signing")
    c.gather(participants, coordinator, EpochSigned, threshold=ALL, deadline="reshare_timeout")

    c.phase(coordinator, "Announcing")
    c.phase(participants, "Adopting")
    c.send(coordinator, participants, EpochAnnounce)

    # each participant confirms it adopted; the coordinator's session stays open meanwhile, so
    # a participant that crashed before the announcement gets it again when its link comes
    # back. A confirmation still missing at the deadline changes nothing: the epoch is adopted.
    c.phase(coordinator, "AwaitingAdoption")
    c.phase(participants, "Confirming")
    late = c.gather(participants, coordinator, EpochAdopted, threshold=ALL,
                    deadline="reshare_timeout")
    with late.on_timeout():
        pass

    c.phase(coordinator, "Completed")
    c.phase(participants, "Completed")
