"""Resharing: the coordinator's and the participants' roles, on the authoring kit.

Theory of operation
-------------------
``choreography.py`` draws the exchange; ``crypto/reshare.py`` holds the maths. The coordinator
(the current device whose operator ran ``ctl account add-device|remove-device|guardians|
reshare``) gets the whole plan in its journaled start parameters (:func:`plan_session` builds it
on the control side from the account store: the current record, its epoch and fact digest, the
``t`` dealers - the coordinator first, then other current devices that stay, by index - and the
new holder sets with their new indices), so a replay after a crash never depends on the store,
which the session itself changes when it completes. Every other device of the plan is a
participant: a new holder, and a dealer too when the plan names it. Phases::

    coordinator:  Proposing --send ReshareRequest (own dealing drawn: @unrepeatable)-->
                  CollectingDealings --gather Joined (all) [QuorumOfDealings]--> Distributing
                  Distributing --send ReshareDeal--> CollectingSignatures
                  CollectingSignatures --gather EpochSigned (all) [EpochSignatures, adopts]-->
                  Announcing --send EpochAnnounce--> AwaitingAdoption
                  AwaitingAdoption --gather EpochAdopted (all, or the deadline)--> Completed
    participants: Invited --recv ReshareRequest--> Joining
                  Joining --send Joined (a dealer's dealing drawn: @unrepeatable)--> AwaitingDeal
                  AwaitingDeal --recv ReshareDeal [VerifiedSubShares]--> Signing
                  Signing --send EpochSigned (own new share sealed: @unrepeatable)--> Adopting
                  Adopting --recv EpochAnnounce [EpochSignatures, journals the fact]-->
                  Confirming
                  Confirming --send EpochAdopted--> Completed
    (abort / timeout -> Failed, declared once with abort=Failed)

Dealing draws a fresh polynomial and fresh HPKE ephemeral keys from the OS, so, like genesis's
``genesis.dealt``, it is the kit's declared exception to replay (``@unrepeatable``): the public
commitments and sealed sub-shares are journaled as ``reshare.dealt`` in the step that sends them
and a replay takes them from there. A dealer's share is opened from the account store (Feldman
checked) inside that draw only.

Witnesses (no public constructor): :class:`QuorumOfDealings` - every planned dealer dealt once,
for exactly the planned holders and indices, with commitments of the new thresholds whose
constant terms are the dealers' public shares of the current epoch, combining to ``S``;
:class:`VerifiedSubShares` - this device opened and Feldman-checked its sub-share from every
dealer and the new record is the one the dealings define; :class:`EpochSignatures` - a valid
``dealer`` signature of every dealer and ``holder`` signature of every new holder over the new
epoch fact. A participant signs only with a ``VerifiedSubShares``; a role adopts the epoch
(journals ``account.established`` with ``epoch = E`` and its new share sealed to itself, and
``account.epoch`` with the signed fact) only with an ``EpochSignatures`` (a participant's
share record is journaled when it signs and is usable only with that fact: below). The new
epoch number ``E`` is one above every participant's (``Joined.epoch_held``): after a guardian
recovery the recovered device is at epoch 0 while the guardians may be further on.

Never a split epoch: the coordinator adopts in the one step that completes its signature
gather, and from then on it never aborts (``accepts_abort_from``); before that, any abort
reaches every participant, nobody has adopted, and the current epoch stays fully usable
(no fact of an aborted session ever gets every signature). A participant journals its new
share (``account.established`` of epoch ``E``, sealed to itself, naming the digest of the fact
it signed) in the step its signature leaves in, before it knows the outcome; the account store
uses that record only once the fully signed fact it names is current (``AccountStore.get``), so
an aborted attempt's record never is, and a later attempt at the same epoch keeps its own record
beside it. The announcement then only adds the fact. After adopting, the coordinator keeps the
session open until every participant confirmed (``EpochAdopted``) or its deadline passed, so a
participant that crashed before the announcement reached it gets it again when its link comes
back (the runtime re-sends an open session's messages on link-up). A participant that signed
cannot tell whether the coordinator has every signature, so it waits
:data:`OUTCOME_WAIT_DEADLINES` of the coordinator's deadlines before its session gives up; if
the announcement never reaches it (lost with no link bounce, or it restarted after the
coordinator stopped waiting), the signed fact the holders exchange (``account-sync``) later
finds its share already journaled, and it is at the new epoch like every other holder.
Sealing to itself draws from the OS, so signing is ``@unrepeatable`` too (the draw is the
``account.established`` record; replay takes it from the journal).

Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, cast, final

import msgspec

from aura_node.crypto import reshare as rs
from aura_node.crypto.dealing import Holder
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point, Rng
from aura_node.crypto.seal import seal_share
from aura_node.crypto.shamir import Share
from aura_node.errors import AuraError, ProtocolError, RemoteProtocolError, WitnessError
from aura_node.protocols import engine as eng
from aura_node.protocols.account import (
    KIND_ACCOUNT,
    AccountError,
    AccountEstablished,
    AccountHolder,
    AccountRecord,
    HeldShare,
    HolderSet,
    encode_established,
)
from aura_node.protocols.epochs import (
    KIND_EPOCH_FACT,
    EpochError,
    EpochFact,
    EpochSignature,
    root_fact,
    sign_fact,
)
from aura_node.protocols.kit import NoParams, Step, protocol, unrepeatable
from aura_node.protocols.reshare.choreography import (
    RESHARE,
    EpochAdopted,
    EpochAnnounce,
    EpochSigned,
    Joined,
    PlannedHolder,
    ReshareDeal,
    ReshareRequest,
    ReshPlan,
    SubDealing,
    WireSubShare,
)
from aura_node.protocols.services import NodeServices
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from aura_node.session.witness import Witness

S = TypeVar("S")

CHOREOGRAPHY = "reshare"
KIND_DEALT = "reshare.dealt"
DEADLINE_TIMER = "deadline"
DEFAULT_TIMEOUT_SECONDS = 60.0


class ReshareError(RemoteProtocolError):
    """A peer's message does not fit the session: rejected (journaled), the session goes on."""

    code = "reshare"


class DealRejectedError(ProtocolError):
    """The coordinator's deal does not verify on this device: waiting cannot fix that, so the
    session aborts everywhere (nobody has adopted anything; the current epoch stays)."""

    code = "deal_rejected"


class ReshareChoreography:
    """Choreography marker type."""


@final
class Proposing(Phase): ...
@final
class CollectingDealings(Phase): ...
@final
class Distributing(Phase): ...
@final
class CollectingSignatures(Phase): ...
@final
class Announcing(Phase): ...
@final
class AwaitingAdoption(Phase): ...
@final
class Confirming(Phase): ...
@final
class Invited(Phase): ...
@final
class Joining(Phase): ...
@final
class AwaitingDeal(Phase): ...
@final
class Signing(Phase): ...
@final
class Adopting(Phase): ...
@final
class Completed(Phase): ...
@final
class Failed(Phase): ...


# --- parameters: the plan -----------------------------------------------------------------------


class ReshareParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The coordinator's start parameters: the whole plan (see :func:`plan_session`)."""

    plan: ReshPlan
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number, got {self.timeout!r}")
        check_plan(self.plan)


def check_plan(plan: ReshPlan) -> None:
    """Shape of a plan (``ValueError`` saying what is wrong): what every side checks before it
    acts on one, the coordinator's own params included."""
    devices = [h.name for h in plan.devices]
    guardians = [h.name for h in plan.guardians]
    for what, hs in (("devices", plan.devices), ("guardians", plan.guardians)):
        names = [h.name for h in hs]
        if len(set(names)) != len(names) or len({h.device_id for h in hs}) != len(hs):
            raise ValueError(f"new {what} list a device twice: {names}")
        if [h.index for h in hs] != list(range(1, len(hs) + 1)):
            raise ValueError(f"new {what} must have indices 1..{len(hs)} in order")
    if set(devices) & set(guardians):
        raise ValueError(f"a name cannot be both a device and a guardian: "
                         f"{sorted(set(devices) & set(guardians))}")
    if not 1 <= plan.threshold <= len(devices):
        raise ValueError(f"threshold must be in 1..{len(devices)} (devices), got {plan.threshold}")
    if guardians and not 1 <= plan.guardian_threshold <= len(guardians):
        raise ValueError(f"guardian threshold must be in 1..{len(guardians)} (guardians), got "
                         f"{plan.guardian_threshold}")
    if not guardians and plan.guardian_threshold:
        raise ValueError("guardian threshold given without guardians")
    if len(plan.dealers) != plan.account.threshold:
        raise ValueError(f"{plan.account.threshold} dealers needed (the current threshold), "
                         f"plan has {len(plan.dealers)}")
    current = {h.name: h for h in plan.account.devices}
    for d in plan.dealers:
        h = current.get(d.name)
        if h is None or (h.device_id, h.index) != (d.device_id, d.index):
            raise ValueError(f"dealer {d.name} is not a current device with index {d.index}")
        if d.name not in devices:
            raise ValueError(f"dealer {d.name} must stay a device of the account")
    if len({d.name for d in plan.dealers}) != len(plan.dealers):
        raise ValueError("a dealer is listed twice")


def current_fact_digest(est: AccountEstablished) -> bytes:
    """Digest of the fact of ``est``'s epoch: what the next epoch's fact extends."""
    return est.fact_digest or root_fact(est.account).digest()


Operation = Literal["add-device", "remove-device", "guardians", "reshare"]


def plan_session(args: Mapping[str, Any], services: NodeServices, *, operation: Operation
                 ) -> dict[str, Any]:
    """The coordinator's start parameters for a ``ctl account OPERATION`` on this device.

    ``add-device``: ``name``, optional ``threshold`` (default: unchanged); ``remove-device``:
    ``name`` (which does not take part), optional ``threshold`` (default: unchanged, or the
    number of devices left if fewer); ``guardians``: ``set`` (names) and ``threshold`` (the
    guardian threshold); ``reshare``: ``devices``, ``threshold``, optional ``guardians`` and
    ``guardian_threshold`` (default: the current guardians and threshold). Raises
    ``ParamsError`` with a one-line reason for anything that does not fit."""
    me = services.self_name
    try:
        est = (services.accounts.get(str(args["account"])) if args.get("account")
               else services.accounts.only())
    except AccountError as exc:
        raise eng.ParamsError(f"account {operation}: {exc.message}") from None
    record = est.account
    current = [h.name for h in record.devices]
    if me not in current:
        raise eng.ParamsError(f"account {operation}: this device ({me}) is not a device of "
                              f"account {record.account_id} (devices: {', '.join(current)})")
    devices = list(current)
    threshold = record.threshold
    guardians = [h.name for h in record.guardians]
    guardian_threshold = record.guardian_threshold

    def _int(key: str) -> int | None:
        v = args.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise eng.ParamsError(f"account {operation}: {key} must be an integer, got {v!r}")
        return v

    def _names(key: str) -> list[str]:
        v = args.get(key)
        if not isinstance(v, list | tuple) or not v or not all(
                isinstance(x, str) and x for x in v):
            raise eng.ParamsError(f"account {operation}: {key} must be a non-empty list of "
                                  f"names, got {v!r}")
        return [str(x) for x in v]

    if operation == "add-device":
        name = str(args.get("name") or "")
        if name in current:
            raise eng.ParamsError(f"account add-device: {name} is a device of the account "
                                  "already")
        devices.append(name)
        threshold = _int("threshold") or threshold
    elif operation == "remove-device":
        name = str(args.get("name") or "")
        if name not in current:
            raise eng.ParamsError(f"account remove-device: {name!r} is not a device of account "
                                  f"{record.account_id} (devices: {', '.join(current)})")
        if name == me:
            raise eng.ParamsError("account remove-device: run it on a device that stays, not "
                                  f"on {me} itself")
        devices.remove(name)
        threshold = _int("threshold") or min(threshold, len(devices))
    elif operation == "guardians":
        guardians = _names("set")
        guardian_threshold = _int("threshold") or 0
        if not guardian_threshold:
            raise eng.ParamsError("account guardians: --threshold is required")
    else:
        devices = _names("devices")
        threshold = _int("threshold") or 0
        if args.get("guardians") is not None:
            guardians = _names("guardians")
            guardian_threshold = _int("guardian_threshold") or 0
            if not guardian_threshold:
                raise eng.ParamsError("account reshare: --guardians needs --guardian-threshold")
        elif args.get("guardian_threshold") is not None:
            guardian_threshold = _int("guardian_threshold") or 0
        if me not in devices:
            raise eng.ParamsError(f"account reshare: this device ({me}) must be one of the new "
                                  "devices (run it on a device that stays)")
    if len(set(devices)) != len(devices) or len(set(guardians)) != len(guardians):
        raise eng.ParamsError(f"account {operation}: a name appears twice")
    if not 1 <= threshold <= len(devices):
        raise eng.ParamsError(f"account {operation}: threshold must be in 1..{len(devices)} "
                              f"(devices {', '.join(devices)}), got {threshold}")
    if guardians and not 1 <= guardian_threshold <= len(guardians):
        raise eng.ParamsError(f"account {operation}: guardian threshold must be in "
                              f"1..{len(guardians)}, got {guardian_threshold}")

    def planned(names: Sequence[str], what: str) -> tuple[PlannedHolder, ...]:
        out = []
        for i, n in enumerate(names, start=1):
            try:
                peer = services.member(n)
            except AuraError as exc:
                raise eng.ParamsError(f"account {operation}: {what} {exc.message}") from None
            want = "device" if what == "device" else "guardian"
            if peer.role != want and n != me:
                raise eng.ParamsError(f"account {operation}: {n} is a pinned {peer.role}, not a "
                                      f"{want}")
            out.append(PlannedHolder(name=n, device_id=peer.device_id, index=i))
        return tuple(out)

    staying = [h for h in record.devices if h.name in devices]
    staying.sort(key=lambda h: (h.name != me, h.index))  # the coordinator deals first
    if len(staying) < record.threshold:
        raise eng.ParamsError(
            f"account {operation}: {record.threshold} current devices that stay must deal "
            f"(the current threshold), only {len(staying)} stay "
            f"({', '.join(h.name for h in staying)})")
    dealers = tuple(PlannedHolder(name=h.name, device_id=h.device_id, index=h.index)
                    for h in staying[:record.threshold])
    if set(devices) | set(guardians) <= {me}:
        raise eng.ParamsError(f"account {operation}: {me} alone would hold the account as it "
                              "does now: nothing to reshare")
    try:
        plan = ReshPlan(account=record, epoch=est.epoch, previous=current_fact_digest(est),
                        dealers=dealers, devices=planned(devices, "device"), threshold=threshold,
                        guardians=planned(guardians, "guardian"),
                        guardian_threshold=guardian_threshold if guardians else 0)
        timeout = float(args.get("timeout") or services.protocols.reshare_timeout_seconds)
        return cast(dict[str, Any], msgspec.to_builtins(ReshareParams(plan=plan,
                                                                      timeout=timeout)))
    except ValueError as exc:
        raise eng.ParamsError(f"account {operation}: {exc}") from None


def session_roles(params: Mapping[str, Any], self_name: str) -> dict[str, str]:
    """Device name -> role for the plan in ``params`` (this device coordinates)."""
    plan = msgspec.convert(params["plan"], ReshPlan)
    roles = {self_name: "coordinator"}
    for h in (*plan.dealers, *plan.devices, *plan.guardians):
        roles.setdefault(h.name, "participants")
    return roles


def holders_of(plan: ReshPlan) -> list[tuple[HolderSet, PlannedHolder]]:
    return [*(("devices", h) for h in plan.devices), *(("guardians", h) for h in plan.guardians)]


def _role_of(holder_set: HolderSet) -> Literal["device", "guardian"]:
    return "device" if holder_set == "devices" else "guardian"


# --- the maths of a plan -------------------------------------------------------------------------


def make_dealing(plan: ReshPlan, services: NodeServices, session: str,
                 rng: Rng | None = None) -> SubDealing:
    """This dealer's sub-dealings (its share opened from the store inside; only commitments
    and sealed sub-shares return)."""
    me = services.device_key.device_id
    (mine,) = [d for d in plan.dealers if d.device_id == me]
    share = services.open_share(plan.account, "devices")
    if share.index != mine.index:
        raise ReshareError(f"this device holds index {share.index}, the plan says {mine.index}")
    out: dict[str, Any] = {}
    for holder_set, hs, t in (("devices", plan.devices, plan.threshold),
                              ("guardians", plan.guardians, plan.guardian_threshold)):
        if not hs:
            continue
        holders = []
        for h in hs:
            key = services.member(h.name).public_key
            if key.device_id != h.device_id:
                raise ReshareError(f"the plan says {h.name} is {h.device_id}, its pinned key is "
                                   f"{key.device_id}")
            holders.append(Holder(index=h.index, public_key=key))
        d = rs.deal_subshares(share, threshold=t, holders=holders,
                              account_id=plan.account.account_id, session_id=session,
                              role=_role_of(cast(HolderSet, holder_set)), rng=rng)
        prefix = "device" if holder_set == "devices" else "guardian"
        out[f"{prefix}_commitments"] = d.commitments.to_bytes()
        out[f"{prefix}_shares"] = tuple(WireSubShare(index=s.index, device_id=s.device_id,
                                                     sealed=s.sealed) for s in d.shares)
    del share
    return SubDealing(dealer_index=mine.index, **out)


def _commitments(raw: bytes, who: str) -> FeldmanCommitments:
    try:
        return FeldmanCommitments.from_bytes(raw)
    except AuraError as exc:
        raise WitnessError(f"dealing of {who}: {exc.message}") from None


def _new_holders(hs: Sequence[PlannedHolder], commitments: FeldmanCommitments
                 ) -> tuple[AccountHolder, ...]:
    return tuple(AccountHolder(name=h.name, device_id=h.device_id, index=h.index,
                               public_share=commitments.public_share(h.index).to_bytes())
                 for h in hs)


def _dealt(d: SubDealing, holder_set: HolderSet) -> tuple[bytes, tuple[WireSubShare, ...]]:
    if holder_set == "devices":
        return d.device_commitments, d.device_shares
    return d.guardian_commitments, d.guardian_shares


def check_dealing(plan: ReshPlan, planned: PlannedHolder, d: SubDealing
                  ) -> dict[HolderSet, FeldmanCommitments]:
    """One dealer's dealing, checked publicly (``WitnessError``): for its planned index, to
    exactly the planned holders and indices, commitments of the new thresholds whose constant
    term is the dealer's public share in the current epoch. Its commitments by holder set."""
    if d.dealer_index != planned.index:
        raise WitnessError(f"dealing of {planned.name} names dealer index {d.dealer_index}, "
                           f"the plan {planned.index}")
    if not plan.guardians and (d.guardian_commitments or d.guardian_shares):
        raise WitnessError(f"dealing of {planned.name} deals to guardians the plan does not have")
    old_share = Point.from_bytes(plan.account.holder("devices", planned.name).public_share)
    out: dict[HolderSet, FeldmanCommitments] = {}
    for holder_set, hs, t in (("devices", plan.devices, plan.threshold),
                              ("guardians", plan.guardians, plan.guardian_threshold)):
        if not hs:
            continue
        raw, shares = _dealt(d, cast(HolderSet, holder_set))
        if [(s.index, s.device_id) for s in shares] != [(h.index, h.device_id) for h in hs]:
            raise WitnessError(f"dealing of {planned.name} does not deal to exactly the "
                               f"planned {holder_set}")
        c = _commitments(raw, planned.name)
        try:
            rs.check_dealer_commitments(c, old_public_share=old_share,
                                        dealer_index=planned.index, threshold=t)
        except AuraError as exc:
            raise WitnessError(f"dealing of {planned.name}: {exc.message}") from None
        out[cast(HolderSet, holder_set)] = c
    return out


def new_record(plan: ReshPlan, dealings: Sequence[SubDealing]) -> AccountRecord:
    """The new epoch's record the dealings define, checked publicly: one dealing per planned
    dealer (in plan order), each passing :func:`check_dealing`, combining to ``S``."""
    if len(dealings) != len(plan.dealers):
        raise WitnessError(f"{len(dealings)} dealings, the plan has {len(plan.dealers)} dealers")
    checked = [(p.index, check_dealing(plan, p, d))
               for p, d in zip(plan.dealers, dealings, strict=True)]
    key = Point.from_bytes(plan.account.public_key)
    out: dict[str, Any] = {}
    for holder_set, hs in (("devices", plan.devices), ("guardians", plan.guardians)):
        if not hs:
            continue
        try:
            combined = rs.combine_commitments({i: c[cast(HolderSet, holder_set)]
                                               for i, c in checked}, public_key=key)
        except AuraError as exc:
            raise WitnessError(exc.message) from None
        if holder_set == "devices":
            out.update(threshold=plan.threshold, devices=_new_holders(hs, combined),
                       device_commitments=combined.to_bytes())
        else:
            out.update(guardian_threshold=plan.guardian_threshold,
                       guardians=_new_holders(hs, combined),
                       guardian_commitments=combined.to_bytes())
    record = AccountRecord(account_id=plan.account.account_id,
                           public_key=plan.account.public_key, **out)
    try:
        record.check()
    except AuraError as exc:
        raise WitnessError(f"new record: {exc.message}") from None
    return record


def epoch_fact(plan: ReshPlan, record: AccountRecord, epoch: int, session: str,
               signatures: tuple[EpochSignature, ...] = ()) -> EpochFact:
    return EpochFact(account=record, epoch=epoch, previous=plan.previous, session_id=session,
                     dealers=tuple(d.device_id for d in plan.dealers), signatures=signatures)


def required_signers(plan: ReshPlan) -> set[tuple[str, str]]:
    """(role, device id) of every signature the new epoch's fact needs."""
    return ({("dealer", d.device_id) for d in plan.dealers}
            | {("holder", h.device_id) for _, h in holders_of(plan)})


# --- witnesses ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, init=False)
class QuorumOfDealings(Witness):
    """Verified publicly: every planned dealer dealt (once, in plan order) sub-shares of its
    current share to exactly the planned holders; ``account`` is the record they define."""

    dealings: tuple[SubDealing, ...]
    account: AccountRecord

    @classmethod
    def verify(cls, plan: ReshPlan, by_dealer: Mapping[str, SubDealing]) -> QuorumOfDealings:
        missing = [d.name for d in plan.dealers if d.name not in by_dealer]
        if missing:
            raise WitnessError(f"no dealing from {', '.join(missing)}")
        dealings = tuple(by_dealer[d.name] for d in plan.dealers)
        return cls._create(dealings=dealings, account=new_record(plan, dealings))


@final
@dataclass(frozen=True, slots=True, init=False)
class VerifiedSubShares(Witness):
    """Verified by this device: its sub-share from every dealer opens and passes its Feldman
    check (and the dealers' commitments the record checks), for each holder set it is in; the
    deal's record is the one the dealings define."""

    deal: ReshareDeal
    positions: tuple[tuple[HolderSet, int], ...]  # (holder set, new index) of this device

    @classmethod
    def verify(cls, plan: ReshPlan, deal: ReshareDeal, services: NodeServices, session: str
               ) -> VerifiedSubShares:
        if new_record(plan, deal.dealings) != deal.account:
            raise WitnessError("the deal's record is not the one its dealings define")
        if deal.epoch <= plan.epoch:
            raise WitnessError(f"new epoch {deal.epoch} does not follow {plan.epoch}")
        positions = own_positions(plan, services)
        for holder_set, index in positions:
            _combine(plan, deal, services, session, holder_set, index)
        return cls._create(deal=deal, positions=positions)


@final
@dataclass(frozen=True, slots=True, init=False)
class EpochSignatures(Witness):
    """Verified: the fact carries a valid ``dealer`` signature of every planned dealer and a
    ``holder`` signature of every new holder (and nothing else) over its digest."""

    fact: EpochFact

    @classmethod
    def verify(cls, plan: ReshPlan, fact: EpochFact) -> EpochSignatures:
        digest = fact.digest()
        got: set[tuple[str, str]] = set()
        for sig in fact.signatures:
            try:
                sig.verify(digest)
            except EpochError as exc:
                raise WitnessError(exc.message) from None
            got.add((sig.role, sig.device_id))
        need = required_signers(plan)
        if got != need or len(fact.signatures) != len(need):
            missing = sorted(f"{r} {d[:12]}" for r, d in need - got)
            extra = sorted(f"{r} {d[:12]}" for r, d in got - need)
            raise WitnessError(f"epoch {fact.epoch} signatures: missing {missing}, "
                               f"unexpected {extra}")
        return cls._create(fact=fact)


def own_positions(plan: ReshPlan, services: NodeServices) -> tuple[tuple[HolderSet, int], ...]:
    me = services.device_key.device_id
    return tuple((hs, h.index) for hs, h in holders_of(plan) if h.device_id == me)


def _combine(plan: ReshPlan, deal: ReshareDeal, services: NodeServices, session: str,
             holder_set: HolderSet, index: int) -> Share:
    """This device's new share of ``holder_set``: every dealer's sub-share opened, checked
    (Feldman, and the dealer's constant term against its current public share) and combined."""
    key = services.device_key
    subs: dict[int, Share] = {}
    for planned, d in zip(plan.dealers, deal.dealings, strict=True):
        raw, shares = _dealt(d, holder_set)
        wire = next((s for s in shares if s.device_id == key.device_id), None)
        if wire is None or wire.index != index:
            raise WitnessError(f"no {holder_set} sub-share for this device from {planned.name}")
        try:
            subs[planned.index] = rs.open_and_verify_subshare(
                commitments=_commitments(raw, planned.name),
                old_public_share=Point.from_bytes(
                    plan.account.holder("devices", planned.name).public_share),
                threshold=plan.threshold if holder_set == "devices" else plan.guardian_threshold,
                sealed=wire.sealed, index=index, dealer_index=planned.index, device_key=key,
                account_id=plan.account.account_id, session_id=session,
                role=_role_of(holder_set))
        except AuraError as exc:
            raise WitnessError(f"sub-share from {planned.name} rejected: {exc.message}") from None
    share = rs.combine_subshares(subs, index=index)
    deal.account.commitments(holder_set).verify_share(share)
    return share


def sign_epoch(plan: ReshPlan, w: VerifiedSubShares, services: NodeServices, session: str
               ) -> EpochSigned:
    """This device's signatures over the new fact: as a dealer (if it dealt) and as a holder.
    Only with a :class:`VerifiedSubShares`: a device vouches for an epoch it can use."""
    key = services.device_key
    digest = epoch_fact(plan, w.deal.account, w.deal.epoch, session).digest()
    sigs = []
    if any(d.device_id == key.device_id for d in plan.dealers):
        sigs.append(sign_fact(key, digest, role="dealer"))
    if w.positions:
        sigs.append(sign_fact(key, digest, role="holder"))
    return EpochSigned(signatures=tuple(sigs))


def sealed_to_self(plan: ReshPlan, w: VerifiedSubShares, services: NodeServices, session: str
                   ) -> AccountEstablished:
    """This device's ``account.established`` record of the new epoch: the record the deal
    defines, each new share combined and sealed (HPKE: OS randomness) to this device's own key,
    and the digest of the epoch fact it belongs to (signatures are not part of it, so it is
    known before they are). ``AccountStore`` uses it only once that fact, fully signed, is
    current."""
    key = services.device_key
    held = []
    for holder_set, index in w.positions:
        share = _combine(plan, w.deal, services, session, holder_set, index)
        binding = rs.reshared_binding(role=_role_of(holder_set),
                                      account_id=plan.account.account_id, session_id=session,
                                      device_id=key.device_id)
        held.append(HeldShare(holder_set=holder_set, index=index,
                              sealed=seal_share(share, key.public, binding),
                              purpose=binding.purpose, session_id=session))
        del share
    return AccountEstablished(
        account=w.deal.account, shares=tuple(held), epoch=w.deal.epoch,
        fact_digest=epoch_fact(plan, w.deal.account, w.deal.epoch, session).digest())


def check_announced(w: VerifiedSubShares, signed: EpochSignatures) -> EpochFact:
    fact = signed.fact
    if (fact.account, fact.epoch) != (w.deal.account, w.deal.epoch):
        raise WitnessError("the announced fact is not the epoch this device verified")
    return fact


def adopt(plan: ReshPlan, w: VerifiedSubShares, signed: EpochSignatures, step: Step[Any]
          ) -> dict[str, Any]:
    """The coordinator adopts the new epoch: journals ``account.established`` (epoch ``E``, the
    new record, each new share sealed to itself) and ``account.epoch`` (the signed fact) in the
    step that completes its signature gather. Returns the session's result. (A participant
    journals its share when it signs and the fact when it is announced: ``ReshareParticipant``.)"""
    fact = check_announced(w, signed)
    est = sealed_to_self(plan, w, step.services, step.session)
    if est.shares:
        step.record(KIND_ACCOUNT, encode_established(est))
    step.record(KIND_EPOCH_FACT, msgspec.msgpack.encode(fact))
    return result_view(fact)


def result_view(fact: EpochFact) -> dict[str, Any]:
    a = fact.account
    return {"account_id": a.account_id, "epoch": fact.epoch,
            "holders": {"devices": [h.name for h in a.devices],
                        "guardians": [h.name for h in a.guardians]},
            "threshold": a.threshold, "guardian_threshold": a.guardian_threshold,
            "public_key": a.public_key.hex()}


# --- the coordinator ----------------------------------------------------------------------------


@final
class ReshareCoordinator(ChoreographicProtocol[ReshareChoreography, S],
                         choreography=CHOREOGRAPHY, role="coordinator", initial=Proposing,
                         abort=Failed):
    #: tests only: a seeded source for the dealing, so a test can replay exactly
    test_rng: ClassVar[Rng | None] = None

    plan: ReshPlan
    timeout: float
    dealings: tuple[tuple[str, SubDealing], ...]
    joined: tuple[tuple[str, int], ...]
    quorum: QuorumOfDealings | None
    verified: VerifiedSubShares | None
    signed: tuple[tuple[str, EpochSigned], ...]
    fact: EpochFact | None
    #: the session's result, set when it adopted the epoch (it completes after the confirmations)
    result: dict[str, Any] | None
    adopted: tuple[str, ...]

    def __init__(self: ReshareCoordinator[Proposing], step: Step[ReshareParams]) -> None:
        p = step.params
        expected = session_roles({"plan": msgspec.to_builtins(p.plan)}, step.self_name)
        if dict(step.roles) != expected:
            raise eng.ParamsError(f"reshare roles {dict(step.roles)} do not match the plan "
                                  f"(expected {expected})")
        if not p.plan.dealers or p.plan.dealers[0].name != step.self_name:
            raise eng.ParamsError("reshare: the coordinator must be the first dealer")
        self._begin(plan=p.plan, timeout=p.timeout, dealings=(), joined=(), quorum=None,
                    verified=None, signed=(), fact=None, result=None, adopted=())

    def _timed_plan(self) -> ReshPlan:
        return msgspec.structs.replace(self.plan, timeout_ms=round(self.timeout * 1000))

    @unrepeatable(record=KIND_DEALT)
    @transition(source=Proposing, target=CollectingDealings, action="send",
                message=ReshareRequest, peer="participants")
    def request(self: ReshareCoordinator[Proposing], step: Step[ReshareParams]
                ) -> tuple[ReshareCoordinator[CollectingDealings], ReshareRequest]:
        # its own dealing, from the OS on purpose (module doc); replay takes it from the record
        body = step.draw(lambda: msgspec.msgpack.encode(make_dealing(
            self.plan, step.services, step.session, type(self).test_rng)))
        own = msgspec.msgpack.decode(body, type=SubDealing)
        step.arm(DEADLINE_TIMER, at=step.now + self.timeout)
        return (self._advance(ReshareCoordinator[CollectingDealings],
                              dealings=((step.self_name, own),)),
                ReshareRequest(plan=self._timed_plan()))

    @transition(source=CollectingDealings, target=Distributing, action="gather",
                message=Joined, peer="participants")
    def joined_in(self: ReshareCoordinator[CollectingDealings], msg: Joined,
                  step: Step[ReshareParams]
                  ) -> ReshareCoordinator[CollectingDealings] | ReshareCoordinator[Distributing]:
        if msg.account_id != self.plan.account.account_id:
            raise ReshareError(f"Joined from {step.sender} for account {msg.account_id}")
        if any(n == step.sender for n, _ in self.joined):
            return self._advance(ReshareCoordinator[CollectingDealings])
        planned = {d.name: d for d in self.plan.dealers}.get(step.sender)
        dealings = self.dealings
        if planned is not None:
            if msg.dealing is None:
                raise ReshareError(f"Joined from {step.sender}, a planned dealer, without its "
                                   "dealing")
            try:  # checked alone on arrival, so a bad one is named and rejected, never combined
                check_dealing(self.plan, planned, msg.dealing)
            except WitnessError as exc:
                raise ReshareError(f"SubDealing from {step.sender}: {exc.message}") from None
            dealings = (*dealings, (step.sender, msg.dealing))
        elif msg.dealing is not None:
            raise ReshareError(f"Joined from {step.sender} carries a dealing; it is not a "
                               "planned dealer")
        joined = (*self.joined, (step.sender, msg.epoch_held))
        if len(joined) < len(step.members("participants")):
            return self._advance(ReshareCoordinator[CollectingDealings], joined=joined,
                                 dealings=dealings)
        quorum = QuorumOfDealings.verify(self.plan, dict(dealings))
        epoch = max([self.plan.epoch, *(e for _, e in joined)]) + 1
        deal = ReshareDeal(account=quorum.account, epoch=epoch, dealings=quorum.dealings)
        verified = VerifiedSubShares.verify(self.plan, deal, step.services, step.session)
        return self._advance(ReshareCoordinator[Distributing], joined=joined,
                             dealings=dealings, quorum=quorum, verified=verified)

    @transition(source=CollectingDealings, target=Failed, action="timeout")
    def dealings_timed_out(self: ReshareCoordinator[CollectingDealings],
                           step: Step[ReshareParams]) -> ReshareCoordinator[Failed]:
        missing = sorted(set(step.members("participants")) - {n for n, _ in self.joined})
        step.fail("timeout", f"no Joined (or dealing) from {', '.join(missing)}")
        return self._advance(ReshareCoordinator[Failed])

    def _deal(self) -> ReshareDeal:
        assert self.verified is not None
        return self.verified.deal

    @transition(source=Distributing, target=CollectingSignatures, action="send",
                message=ReshareDeal, peer="participants")
    def distribute(self: ReshareCoordinator[Distributing], step: Step[ReshareParams]
                   ) -> tuple[ReshareCoordinator[CollectingSignatures], ReshareDeal]:
        assert self.verified is not None
        own = sign_epoch(self.plan, self.verified, step.services, step.session)
        return self._advance(ReshareCoordinator[CollectingSignatures],
                             signed=((step.self_name, own),)), self._deal()

    def _signed(self, msg: EpochSigned, step: Step[ReshareParams]
                ) -> tuple[tuple[str, EpochSigned], ...]:
        deal = self._deal()
        digest = epoch_fact(self.plan, deal.account, deal.epoch, step.session).digest()
        sender = step.services.member(step.sender).device_id
        for sig in msg.signatures:
            if sig.device_id != sender:
                raise ReshareError(f"EpochSigned from {step.sender} carries a signature of "
                                   f"device {sig.device_id[:12]}")
            try:
                sig.verify(digest)
            except EpochError as exc:
                raise ReshareError(f"EpochSigned from {step.sender}: {exc.message}") from None
        if any(n == step.sender for n, _ in self.signed):
            return self.signed
        return (*self.signed, (step.sender, msg))

    @transition(source=CollectingSignatures, target=Announcing, action="gather",
                message=EpochSigned, peer="participants")
    def signed_in(self: ReshareCoordinator[CollectingSignatures], msg: EpochSigned,
                  step: Step[ReshareParams]
                  ) -> ReshareCoordinator[CollectingSignatures] | ReshareCoordinator[
                      Announcing]:
        signed = self._signed(msg, step)
        deal = self._deal()
        fact = epoch_fact(self.plan, deal.account, deal.epoch, step.session, tuple(
            s for _, m in signed for s in m.signatures))
        try:
            w = EpochSignatures.verify(self.plan, fact)
        except WitnessError:
            return self._advance(ReshareCoordinator[CollectingSignatures], signed=signed)
        assert self.verified is not None
        # adopted here, in the step that completes the gather: from now on it never aborts
        # (accepts_abort_from); the confirmations get a deadline of their own
        result = adopt(self.plan, self.verified, w, step)
        step.arm(DEADLINE_TIMER, at=step.now + self.timeout)
        return self._advance(ReshareCoordinator[Announcing], signed=signed, fact=w.fact,
                             result=result)

    @transition(source=CollectingSignatures, target=Failed, action="timeout")
    def signatures_timed_out(self: ReshareCoordinator[CollectingSignatures],
                             step: Step[ReshareParams]) -> ReshareCoordinator[Failed]:
        missing = sorted(set(step.members("participants")) - {n for n, _ in self.signed})
        step.fail("timeout", f"no EpochSigned from {', '.join(missing)}")
        return self._advance(ReshareCoordinator[Failed])

    @transition(source=Announcing, target=AwaitingAdoption, action="send",
                message=EpochAnnounce, peer="participants")
    def announce(self: ReshareCoordinator[Announcing], step: Step[ReshareParams]
                 ) -> tuple[ReshareCoordinator[AwaitingAdoption], EpochAnnounce]:
        assert self.fact is not None
        return self._advance(ReshareCoordinator[AwaitingAdoption]), EpochAnnounce(
            fact=self.fact)

    @transition(source=AwaitingAdoption, target=Completed, action="gather",
                message=EpochAdopted, peer="participants")
    def adopted_in(self: ReshareCoordinator[AwaitingAdoption], msg: EpochAdopted,
                   step: Step[ReshareParams]
                   ) -> ReshareCoordinator[AwaitingAdoption] | ReshareCoordinator[Completed]:
        assert self.fact is not None
        if (msg.account_id, msg.epoch) != (self.fact.account.account_id, self.fact.epoch):
            raise ReshareError(f"EpochAdopted from {step.sender} for epoch {msg.epoch} of "
                               f"{msg.account_id}")
        adopted = self.adopted if step.sender in self.adopted else (*self.adopted,
                                                                    step.sender)
        if len(adopted) < len(step.members("participants")):
            return self._advance(ReshareCoordinator[AwaitingAdoption], adopted=adopted)
        step.cancel(DEADLINE_TIMER)
        return self._finish(adopted, step)

    @transition(source=AwaitingAdoption, target=Completed, action="timeout")
    def adoption_timed_out(self: ReshareCoordinator[AwaitingAdoption],
                           step: Step[ReshareParams]) -> ReshareCoordinator[Completed]:
        return self._finish(self.adopted, step)

    def _finish(self, adopted: tuple[str, ...], step: Step[ReshareParams]
                ) -> ReshareCoordinator[Completed]:
        assert self.result is not None
        # the epoch is adopted whatever the confirmations say; the result names the silent
        step.complete(**self.result, unconfirmed=sorted(
            set(step.members("participants")) - set(adopted)))
        return self._advance(ReshareCoordinator[Completed], adopted=adopted)

    def accepts_abort_from(self, sender: str, sender_role: str) -> bool:
        # after it adopted, nothing a participant says can undo the epoch here
        return self.fact is None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"account_id": self.plan.account.account_id,
                               "epoch": self.plan.epoch,
                               "dealings": sorted(n for n, _ in self.dealings),
                               "joined": sorted(n for n, _ in self.joined),
                               "signed": sorted(n for n, _ in self.signed)}
        if self.verified is not None:
            out["new_epoch"] = self.verified.deal.epoch
        return out


# --- the participants (dealers and holders: one machine from AwaitingDeal on) --------------------


def accept_plan(plan: ReshPlan, step: Step[NoParams]) -> int:
    """A participant's check of the plan; returns the epoch it holds (-1: none). It must be a
    new holder; a dealer must hold exactly the plan's current epoch, and the fact it extends."""
    try:
        check_plan(plan)
    except ValueError as exc:
        raise ReshareError(f"bad plan from {step.sender}: {exc}") from None
    services = step.services
    me = services.device_key.device_id
    dealer = any(d.device_id == me for d in plan.dealers)
    if not own_positions(plan, services):
        raise ReshareError(f"the plan from {step.sender} does not make this device a holder")
    coordinator = services.member(step.sender).device_id
    if not plan.dealers or plan.dealers[0].device_id != coordinator:
        raise ReshareError(f"the coordinator {step.sender} is not the plan's first dealer")
    try:
        est: AccountEstablished | None = services.accounts.get(plan.account.account_id)
    except AccountError:
        est = None
    if dealer:
        if est is None or est.epoch != plan.epoch or est.account != plan.account:
            have = "no record" if est is None else f"epoch {est.epoch}"
            raise ReshareError(f"the plan reshares epoch {plan.epoch} of "
                               f"{plan.account.account_id}; this device holds {have} "
                               "(or another record)")
        if current_fact_digest(est) != plan.previous:
            raise ReshareError(f"the plan extends another epoch-{plan.epoch} fact than this "
                               "device holds")
    step.arm(DEADLINE_TIMER, at=step.now + plan.timeout_ms / 1000)
    return -1 if est is None else est.epoch


@final
class ReshareParticipant(ChoreographicProtocol[ReshareChoreography, S],
                         choreography=CHOREOGRAPHY, role="participants", initial=Invited,
                         abort=Failed):
    """A new holder other than the coordinator; a dealer too when the plan says so."""

    #: tests only: a seeded source for the dealing
    test_rng: ClassVar[Rng | None] = None

    plan: ReshPlan | None
    held_epoch: int
    verified: VerifiedSubShares | None

    def __init__(self: ReshareParticipant[Invited], step: Step[NoParams]) -> None:
        self._begin(plan=None, held_epoch=-1, verified=None)

    @transition(source=Invited, target=Joining, action="recv", message=ReshareRequest,
                peer="coordinator")
    def receive_request(self: ReshareParticipant[Invited], m: ReshareRequest,
                        step: Step[NoParams]) -> ReshareParticipant[Joining]:
        held = accept_plan(m.plan, step)
        return self._advance(ReshareParticipant[Joining], plan=m.plan, held_epoch=held)

    @unrepeatable(record=KIND_DEALT)
    @transition(source=Joining, target=AwaitingDeal, action="send", message=Joined,
                peer="coordinator")
    def join(self: ReshareParticipant[Joining], step: Step[NoParams]
             ) -> tuple[ReshareParticipant[AwaitingDeal], Joined]:
        assert self.plan is not None
        plan = self.plan
        dealing = None
        if any(d.device_id == step.services.device_key.device_id for d in plan.dealers):
            # a dealer: fresh randomness from the OS (module doc); replay takes the record
            body = step.draw(lambda: msgspec.msgpack.encode(make_dealing(
                plan, step.services, step.session, type(self).test_rng)))
            dealing = msgspec.msgpack.decode(body, type=SubDealing)
        return self._advance(ReshareParticipant[AwaitingDeal]), Joined(
            account_id=plan.account.account_id, epoch_held=self.held_epoch, dealing=dealing)

    @transition(source=AwaitingDeal, target=Signing, action="recv", message=ReshareDeal,
                peer="coordinator")
    def receive_deal(self: ReshareParticipant[AwaitingDeal], m: ReshareDeal,
                     step: Step[NoParams]) -> ReshareParticipant[Signing]:
        assert self.plan is not None
        if m.epoch <= self.held_epoch:
            raise DealRejectedError(f"new epoch {m.epoch} is not above the epoch "
                                    f"{self.held_epoch} this device holds")
        try:
            verified = VerifiedSubShares.verify(self.plan, m, step.services, step.session)
        except WitnessError as exc:
            # a bad deal cannot be fixed by waiting: abort the session (old epoch untouched)
            raise DealRejectedError(f"reshare deal from {step.sender} rejected: "
                                    f"{exc.message}") from None
        return self._advance(ReshareParticipant[Signing], verified=verified)

    @unrepeatable(record=KIND_ACCOUNT)
    @transition(source=Signing, target=Adopting, action="send", message=EpochSigned,
                peer="coordinator")
    def sign(self: ReshareParticipant[Signing], step: Step[NoParams]
             ) -> tuple[ReshareParticipant[Adopting], EpochSigned]:
        assert self.plan is not None and self.verified is not None
        plan, verified = self.plan, self.verified
        if verified.positions:
            # its new share, sealed to itself, journaled in the step its signature leaves in:
            # if the announcement never reaches it (lost, or it restarted after the
            # coordinator stopped waiting), the signed fact that account-sync brings later
            # finds the share here (module doc). Sealing draws from the OS: replay takes the
            # journaled record instead.
            step.draw(lambda: encode_established(sealed_to_self(
                plan, verified, step.services, step.session)))
        # signed: it cannot tell whether the coordinator has every signature, so it waits
        # well past the coordinator's deadlines before it gives up (module doc)
        step.cancel(DEADLINE_TIMER)
        step.arm(DEADLINE_TIMER,
                 at=step.now + OUTCOME_WAIT_DEADLINES * self.plan.timeout_ms / 1000)
        return self._advance(ReshareParticipant[Adopting]), sign_epoch(
            self.plan, self.verified, step.services, step.session)

    @transition(source=Adopting, target=Confirming, action="recv", message=EpochAnnounce,
                peer="coordinator")
    def receive_announce(self: ReshareParticipant[Adopting], m: EpochAnnounce,
                         step: Step[NoParams]) -> ReshareParticipant[Confirming]:
        assert self.plan is not None and self.verified is not None
        try:
            fact = check_announced(self.verified, EpochSignatures.verify(self.plan, m.fact))
        except WitnessError as exc:
            raise ReshareError(f"EpochAnnounce from {step.sender}: {exc.message}") from None
        if m.fact.session_id != step.session or m.fact.previous != self.plan.previous:
            raise ReshareError(f"EpochAnnounce from {step.sender} is for another session or "
                               "epoch")
        step.cancel(DEADLINE_TIMER)
        # its share was journaled when it signed; the fact makes it current
        step.record(KIND_EPOCH_FACT, msgspec.msgpack.encode(fact))
        step.complete(**result_view(fact))
        return self._advance(ReshareParticipant[Confirming])

    @transition(source=Confirming, target=Completed, action="send", message=EpochAdopted,
                peer="coordinator")
    def confirm(self: ReshareParticipant[Confirming], step: Step[NoParams]
                ) -> tuple[ReshareParticipant[Completed], EpochAdopted]:
        assert self.verified is not None
        deal = self.verified.deal
        return self._advance(ReshareParticipant[Completed]), EpochAdopted(
            account_id=deal.account.account_id, epoch=deal.epoch)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.plan is not None:
            out.update(account_id=self.plan.account.account_id, epoch=self.plan.epoch)
        if self.verified is not None:
            out["new_epoch"] = self.verified.deal.epoch
        return out


#: how many coordinator deadlines a participant that signed waits for the outcome
OUTCOME_WAIT_DEADLINES = 4


def bindings(start: eng.Start, opening: msgspec.Struct | None) -> dict[str, int]:
    """The participants' count from the plan (the opening request's, or the coordinator's)."""
    if isinstance(opening, ReshareRequest):
        plan, coordinator = opening.plan, start.opened_by or ""
    else:
        plan, coordinator = msgspec.convert(start.params["plan"], ReshPlan), start.self_name
    roles = session_roles({"plan": msgspec.to_builtins(plan)}, coordinator)
    return {"p": sum(1 for r in roles.values() if r == "participants")}


PROTOCOL = protocol(RESHARE, ReshareCoordinator, ReshareParticipant, params=ReshareParams,
                    bindings=bindings, conformance_bindings={"p": 3})
SPEC = PROTOCOL.spec
