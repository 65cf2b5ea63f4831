"""The genesis choreography.

The dealer (the device creating the account; it may also hold a share as a member of
``devices``) sends every holder its HPKE-sealed Shamir share together with the Feldman
commitments, then gathers an acknowledgement from *every* holder (all ``n`` devices and all
``g`` guardians; ``g`` may be 0) before a deadline, and announces completion. A holder whose
share does not verify against the commitments rejects it by aborting the session
(``GenesisAbort(reason="share_rejected", ...)``); any abort reaches every role. If an
acknowledgement is missing when ``genesis_timeout`` passes, the dealer aborts.
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ALL, ChoreographyBuilder, choreography


class SealedShare(msgspec.Struct, frozen=True, kw_only=True):
    """One holder's Shamir share, sealed to it with HPKE, and the public Feldman commitments."""

    account_id: bytes
    threshold: int
    share_index: int
    sealed_share: bytes
    feldman_commitments: tuple[bytes, ...]
    signature: bytes


class ShareAck(msgspec.Struct, frozen=True, kw_only=True):
    """The holder verified its share against the commitments; signed public share."""

    account_id: bytes
    share_index: int
    public_share: bytes
    signature: bytes


class GenesisComplete(msgspec.Struct, frozen=True, kw_only=True):
    account_id: bytes
    account_public_key: bytes
    acks_digest: bytes
    signature: bytes


class GenesisAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    evidence: bytes = b""


@choreography("genesis", abort=GenesisAbort)
def GENESIS(c: ChoreographyBuilder) -> None:
    dealer = c.role("dealer")
    devices = c.role_set("devices", size="n", minimum=1)
    guardians = c.role_set("guardians", size="g", minimum=0)

    c.phase(dealer, "Dealing")
    c.phase(devices, "AwaitingShare")
    c.phase(guardians, "AwaitingShare")
    c.send(dealer, devices, SealedShare)
    c.send(dealer, guardians, SealedShare)

    c.phase(dealer, "CollectingAcks")
    c.phase(devices, "Verifying")
    c.phase(guardians, "Verifying")
    c.gather(devices, dealer, ShareAck, threshold=ALL, deadline="genesis_timeout")
    c.gather(guardians, dealer, ShareAck, threshold=ALL, deadline="genesis_timeout")

    c.phase(dealer, "Announcing")
    c.phase(devices, "AwaitingCompletion")
    c.phase(guardians, "AwaitingCompletion")
    c.send(dealer, devices, GenesisComplete)
    c.send(dealer, guardians, GenesisComplete)

    c.phase(dealer, "Completed")
    c.phase(devices, "Completed")
    c.phase(guardians, "Completed")
