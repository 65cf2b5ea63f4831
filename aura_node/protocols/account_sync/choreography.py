"""The account-sync choreography: summaries one way, missing facts back, missing facts again.

``initiator -> responder: SyncOffer`` (what the initiator holds), ``responder -> initiator:
SyncReply`` (the facts the initiator lacks, and what the responder holds), ``initiator ->
responder: SyncFacts`` (the facts the responder lacks). Each wait is bounded by
``account_sync_timeout``; a sync that times out changes nothing (every fact is journaled only
once it verified), and the next link-up or adopted fact starts another.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.protocols.epochs import EpochFact

#: facts and accounts per message: a frame stays far below the 1 MiB default (a fact of a
#: 5-device, 3-guardian account is ~4 KB); what does not fit goes in the next sync, which
#: adopting these facts starts
MAX_FACTS = 64
MAX_ACCOUNTS = 64
MAX_DIGESTS = 1024


class AccountSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The facts one device holds of one account: (digest, number of signatures) each."""

    account_id: Annotated[str, msgspec.Meta(max_length=128)]
    facts: Annotated[tuple[tuple[bytes, int], ...], msgspec.Meta(max_length=MAX_DIGESTS)] = ()


class SyncOffer(msgspec.Struct, frozen=True, kw_only=True):
    accounts: Annotated[tuple[AccountSummary, ...], msgspec.Meta(max_length=MAX_ACCOUNTS)] = ()


class SyncReply(msgspec.Struct, frozen=True, kw_only=True):
    facts: Annotated[tuple[EpochFact, ...], msgspec.Meta(max_length=MAX_FACTS)] = ()
    accounts: Annotated[tuple[AccountSummary, ...], msgspec.Meta(max_length=MAX_ACCOUNTS)] = ()


class SyncFacts(msgspec.Struct, frozen=True, kw_only=True):
    facts: Annotated[tuple[EpochFact, ...], msgspec.Meta(max_length=MAX_FACTS)] = ()


class SyncAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("account-sync", abort=SyncAbort)
def ACCOUNT_SYNC(c: ChoreographyBuilder) -> None:
    initiator = c.role("initiator")
    responder = c.role("responder")
    c.phase(initiator, "Offering")
    c.phase(responder, "AwaitingOffer")
    c.send(initiator, responder, SyncOffer)
    c.phase(initiator, "AwaitingReply")
    c.phase(responder, "Replying")
    c.send(responder, initiator, SyncReply, deadline="account_sync_timeout")
    c.phase(initiator, "Sending")
    c.phase(responder, "AwaitingFacts")
    c.send(initiator, responder, SyncFacts, deadline="account_sync_timeout")
    c.phase(initiator, "Completed")
    c.phase(responder, "Completed")
