"""The reshare choreography (account lifecycle: add/remove devices and guardians, same key).

Star-shaped around the ``coordinator`` (the current device the operator ran ``ctl account ...``
on; it deals its own share and holds a new one, in-process, since a device never messages
itself). ``dealers`` are the other current holders whose shares are reshared (with the
coordinator, exactly the current threshold ``t`` of them; every dealer stays a holder), and
``holders`` every other new holder (devices and guardians; ``g`` may be 0 of them).

1. The coordinator sends the plan (the current record and epoch, who deals, the new holder sets
   and thresholds) to dealers (``ReshareRequest``) and holders (``ReshareInvite``).
2. Every dealer answers with its ``SubDealing`` (Feldman-committed sub-shares of its share, one
   sealed to each new holder); every holder with ``HolderJoined`` (the epoch it holds now, so
   the new epoch number is above every holder's). All of them, before ``reshare_timeout``.
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


class ReshareInvite(msgspec.Struct, frozen=True, kw_only=True):
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


class HolderJoined(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    epoch_held: int  # -1: this device holds no share of the account yet


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
    dealers = c.role_set("dealers", size="d", minimum=0)
    holders = c.role_set("holders", size="h", minimum=0)

    c.phase(coordinator, "Proposing")
    c.phase(dealers, "Invited")
    c.phase(holders, "Invited")
    c.send(coordinator, dealers, ReshareRequest)
    c.send(coordinator, holders, ReshareInvite)

    c.phase(coordinator, "CollectingDealings")
    c.phase(dealers, "Dealing")
    c.phase(holders, "Joining")
    c.gather(dealers, coordinator, SubDealing, threshold=ALL, deadline="reshare_timeout")
    c.gather(holders, coordinator, HolderJoined, threshold=ALL, deadline="reshare_timeout")

    c.phase(coordinator, "Distributing")
    c.phase(dealers, "AwaitingDeal")
    c.phase(holders, "AwaitingDeal")
    c.send(coordinator, dealers, ReshareDeal)
    c.send(coordinator, holders, ReshareDeal)

    c.phase(coordinator, "CollectingSignatures")
    c.phase(dealers, "Signing")
    c.phase(holders, "Signing")
    c.gather(dealers, coordinator, EpochSigned, threshold=ALL, deadline="reshare_timeout")
    c.gather(holders, coordinator, EpochSigned, threshold=ALL, deadline="reshare_timeout")

    c.phase(coordinator, "Announcing")
    c.phase(dealers, "Adopting")
    c.phase(holders, "Adopting")
    c.send(coordinator, dealers, EpochAnnounce)
    c.send(coordinator, holders, EpochAnnounce)

    # each participant confirms it adopted; the coordinator's session stays open meanwhile, so
    # a participant that crashed before the announcement gets it again when its link comes
    # back. A confirmation still missing at the deadline changes nothing: the epoch is adopted.
    c.phase(coordinator, "AwaitingAdoption")
    c.phase(dealers, "Confirming")
    c.phase(holders, "Confirming")
    late = c.gather(dealers, coordinator, EpochAdopted, threshold=ALL,
                    deadline="reshare_timeout")
    with late.on_timeout():
        pass
    late = c.gather(holders, coordinator, EpochAdopted, threshold=ALL,
                    deadline="reshare_timeout")
    with late.on_timeout():
        pass

    c.phase(coordinator, "Completed")
    c.phase(dealers, "Completed")
    c.phase(holders, "Completed")
