"""The account-sync roles, written on the authoring kit: holders exchange epoch facts.

Theory of operation
-------------------
Every holder keeps the verified epoch facts of its accounts (``protocols/epochs``, inside the
node's ``AccountStore``). When a link to a peer comes (back) up, and when this device adopts a
new fact, the node starts one ``account-sync`` session with each linked peer that holds or
held a share of one of its accounts that has epochs beyond genesis (:func:`sync_peers`; the
daemon's link watcher and its account fold do that). A removed device is such a peer (it
held a share of an earlier epoch), so it learns the fact that removed it.

The initiator offers a summary (per account shared with the responder: each held fact's
digest and signature count); the responder answers with the facts the initiator lacks (or
holds with fewer signatures), oldest epoch first, and its own summary; the initiator sends
the facts the responder lacks. Each side verifies every fact it receives against its own
store before journaling it (:func:`_take`): an adopted fact becomes an ``account.epoch``
record of the session, and the node's account fold adopts it once durable; a fact that does
not verify or does not extend a fact this device holds is rejected (the kit's
``account-sync.rejected`` evidence record names the peer and the reason) and the session goes
on. Nothing a peer sends can crash the node or touch another session.

Replay: what a side *sends* depends on its store, which grows between a crash and the
restart, so the offer, the reply and the final facts are ``@unrepeatable`` draws: live they
are read from the store and journaled with the send; a replay takes them from the journal.
Facts are public (records, commitments, signatures), never shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, TypeVar, final

import msgspec

from aura_node.kit import (
    ChoreographicProtocol,
    Phase,
    RemoteProtocolError,
    Step,
    protocol,
    transition,
    unrepeatable,
)
from aura_node.protocols.account_sync.choreography import (
    ACCOUNT_SYNC,
    MAX_ACCOUNTS,
    MAX_FACTS,
    AccountSummary,
    SyncFacts,
    SyncOffer,
    SyncReply,
)
from aura_node.protocols.epochs import KIND_EPOCH_FACT, EpochFact, encode_fact

if TYPE_CHECKING:
    from aura_node.protocols.account import AccountStore
    from aura_node.protocols.services import PeerInfo

S = TypeVar("S")
CHOREOGRAPHY = "account-sync"


class SyncParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0


# --- what a side offers and sends (pure: the store and the peer's device id) ----------------


def shared_accounts(store: AccountStore, device_id: str) -> list[str]:
    """Accounts of ``store`` that ``device_id`` holds or held a share of (in a held fact)."""
    return [a for a in store.epochs.accounts() if store.epochs.shares_with(a, device_id)]


def summaries(store: AccountStore, device_id: str) -> tuple[AccountSummary, ...]:
    return tuple(
        AccountSummary(account_id=a, facts=tuple(sorted(store.epochs.summary(a).items())))
        for a in shared_accounts(store, device_id)[:MAX_ACCOUNTS])


def missing_facts(store: AccountStore, device_id: str,
                  theirs: Iterable[AccountSummary]) -> tuple[EpochFact, ...]:
    """The facts a peer with summaries ``theirs`` lacks, of the accounts it shares with this
    store (never another account's), oldest epoch first, at most :data:`MAX_FACTS`."""
    told = {s.account_id: dict(s.facts) for s in theirs}
    out: list[EpochFact] = []
    for account_id in shared_accounts(store, device_id):
        out += store.epochs.missing_from(account_id, told.get(account_id, {}))
    return tuple(out[:MAX_FACTS])


def sync_peers(store: AccountStore, peers: Mapping[str, PeerInfo]) -> list[str]:
    """Names of the peers to start a sync with: each holds or held a share of an account of
    which this store holds a fact beyond epoch 0. Where neither side holds one there is
    nothing to exchange (roots never travel); where only the peer does, the peer starts it
    (a sync carries facts both ways), so an account that never reshared costs no session."""
    resharing = [a for a in store.epochs.accounts()
                 if any(f.epoch > 0 for f in store.epochs.facts(a))]
    return sorted(name for name, p in peers.items()
                  if any(store.epochs.shares_with(a, p.device_id) for a in resharing))


def _take(step: Step[SyncParams], facts: tuple[EpochFact, ...]) -> int:
    """Verify ``facts`` in order against this device's store (plus the ones before them in
    this message); journal each that verifies, reject each that does not. Returns how many
    were new here."""
    store = step.services.accounts
    scratch = store.epochs.copy()
    new = 0
    for fact in facts:
        verdict = store.check_fact(fact, scratch)
        if verdict.new:
            step.record(KIND_EPOCH_FACT, encode_fact(fact))
            new += 1
        elif verdict.outcome != "known":
            step.reject(RemoteProtocolError(f"{verdict.outcome} {verdict.reason}"))
    return new


def _peer_id(step: Step[SyncParams], role: str) -> str:
    return step.services.member(step.the(role)).device_id


class AccountSync:
    """Choreography marker type."""


@final
class Offering(Phase): ...
@final
class AwaitingReply(Phase): ...
@final
class Sending(Phase): ...
@final
class AwaitingOffer(Phase): ...
@final
class Replying(Phase): ...
@final
class AwaitingFacts(Phase): ...
@final
class Completed(Phase): ...
@final
class Failed(Phase): ...


_offer_decoder = msgspec.msgpack.Decoder(SyncOffer)
_reply_decoder = msgspec.msgpack.Decoder(SyncReply)
_facts_decoder = msgspec.msgpack.Decoder(SyncFacts)


@final
class SyncInitiator(ChoreographicProtocol[AccountSync, S], choreography=CHOREOGRAPHY,
                    role="initiator", initial=Offering, abort=Failed):
    theirs: tuple[AccountSummary, ...]
    adopted: int

    def __init__(self: SyncInitiator[Offering], step: Step[SyncParams]) -> None:
        self._begin(theirs=(), adopted=0)

    @unrepeatable(record="account-sync.offer")
    @transition(source=Offering, target=AwaitingReply, action="send", message=SyncOffer,
                peer="responder")
    def offer(self: SyncInitiator[Offering], step: Step[SyncParams]
              ) -> tuple[SyncInitiator[AwaitingReply], SyncOffer]:
        peer = _peer_id(step, "responder")
        body = step.draw(lambda: msgspec.msgpack.encode(
            SyncOffer(accounts=summaries(step.services.accounts, peer))))
        step.arm("deadline", at=step.now + step.params.timeout)
        return self._advance(SyncInitiator[AwaitingReply]), _offer_decoder.decode(body)

    @transition(source=AwaitingReply, target=Sending, action="recv", message=SyncReply,
                peer="responder")
    def receive_reply(self: SyncInitiator[AwaitingReply], reply: SyncReply,
                      step: Step[SyncParams]) -> SyncInitiator[Sending]:
        step.cancel("deadline")
        return self._advance(SyncInitiator[Sending], theirs=reply.accounts,
                             adopted=_take(step, reply.facts))

    @unrepeatable(record="account-sync.sent")
    @transition(source=Sending, target=Completed, action="send", message=SyncFacts,
                peer="responder")
    def send_facts(self: SyncInitiator[Sending], step: Step[SyncParams]
                   ) -> tuple[SyncInitiator[Completed], SyncFacts]:
        peer, theirs = _peer_id(step, "responder"), self.theirs
        body = step.draw(lambda: msgspec.msgpack.encode(
            SyncFacts(facts=missing_facts(step.services.accounts, peer, theirs))))
        facts = _facts_decoder.decode(body)
        step.complete(peer=step.the("responder"), adopted=self.adopted, sent=len(facts.facts))
        return self._advance(SyncInitiator[Completed]), facts

    @transition(source=AwaitingReply, target=Failed, action="timeout")
    def time_out(self: SyncInitiator[AwaitingReply], step: Step[SyncParams]
                 ) -> SyncInitiator[Failed]:
        step.fail("timeout", f"no SyncReply from {step.the('responder')} within "
                             f"{step.params.timeout:g} s")
        return self._advance(SyncInitiator[Failed])


@final
class SyncResponder(ChoreographicProtocol[AccountSync, S], choreography=CHOREOGRAPHY,
                    role="responder", initial=AwaitingOffer, abort=Failed):
    theirs: tuple[AccountSummary, ...]
    sent: int

    def __init__(self: SyncResponder[AwaitingOffer], step: Step[SyncParams]) -> None:
        self._begin(theirs=(), sent=0)

    @transition(source=AwaitingOffer, target=Replying, action="recv", message=SyncOffer,
                peer="initiator")
    def receive_offer(self: SyncResponder[AwaitingOffer], offer: SyncOffer,
                      step: Step[SyncParams]) -> SyncResponder[Replying]:
        return self._advance(SyncResponder[Replying], theirs=offer.accounts)

    @unrepeatable(record="account-sync.reply")
    @transition(source=Replying, target=AwaitingFacts, action="send", message=SyncReply,
                peer="initiator")
    def reply(self: SyncResponder[Replying], step: Step[SyncParams]
              ) -> tuple[SyncResponder[AwaitingFacts], SyncReply]:
        peer, theirs, store = _peer_id(step, "initiator"), self.theirs, step.services.accounts
        body = step.draw(lambda: msgspec.msgpack.encode(SyncReply(
            facts=missing_facts(store, peer, theirs), accounts=summaries(store, peer))))
        reply = _reply_decoder.decode(body)
        # a responder has no operator parameters: its wait is the node's setting
        step.arm("deadline", at=step.now + step.services.protocols.account_sync_timeout_seconds)
        return self._advance(SyncResponder[AwaitingFacts], sent=len(reply.facts)), reply

    @transition(source=AwaitingFacts, target=Completed, action="recv", message=SyncFacts,
                peer="initiator")
    def receive_facts(self: SyncResponder[AwaitingFacts], facts: SyncFacts,
                      step: Step[SyncParams]) -> SyncResponder[Completed]:
        step.cancel("deadline")
        step.complete(peer=step.sender, adopted=_take(step, facts.facts), sent=self.sent)
        return self._advance(SyncResponder[Completed])

    @transition(source=AwaitingFacts, target=Failed, action="timeout")
    def time_out(self: SyncResponder[AwaitingFacts], step: Step[SyncParams]
                 ) -> SyncResponder[Failed]:
        step.fail("timeout", f"no SyncFacts from {step.the('initiator')} within "
                             f"{step.services.protocols.account_sync_timeout_seconds:g} s")
        return self._advance(SyncResponder[Failed])


PROTOCOL = protocol(ACCOUNT_SYNC, SyncInitiator, SyncResponder, params=SyncParams)
SPEC = PROTOCOL.spec
