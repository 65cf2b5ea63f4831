"""Account genesis: the dealer's and the holders' roles, written on the authoring kit.

Theory of operation
-------------------
The dealer (the device the operator runs ``ctl account create`` on) draws the account secret
``s`` from the OS CSPRNG and deals it twice with :func:`~aura_node.crypto.dealing.deal_account`:
``t``-of-``n`` among the devices and ``t_g``-of-``m`` among the guardians, each share HPKE-sealed
to its holder. ``s``, the polynomials and the plaintext shares exist only inside
:func:`deal_shares`; what leaves it is public (the :class:`AccountRecord` with both Feldman
commitment vectors) or sealed, so the secret is gone the moment it returns and no role field or
journal record can hold it.

That draw is the kit's one declared exception to deterministic replay (``@unrepeatable``, see
``aura_node.protocols.kit``): ``s`` must not come from :meth:`Step.random`, whose seed is
journaled, and the HPKE seals use fresh ephemeral keys, so the dealing cannot be recomputed. It
is journaled as the ``genesis.dealt`` record (public record + sealed shares, as before) in the
step that sends the shares; a replay after a crash takes the dealing from that record, and the
shares it re-derives must equal the journaled ``SealedShare`` messages byte for byte.

The dealer plays only the ``dealer`` role (a device never messages itself): when it is one of
the devices (or guardians) its own share is sealed to itself and kept in ``genesis.dealt``;
the ``devices``/``guardians`` role sets are the *other* holders. Phases:

    dealer:  Dealing --send SealedShare (devices), SealedGuardianShare (guardians)--> CollectingAcks
             CollectingAcks --gather ShareAck (all devices, then all guardians)--> Announcing
             Announcing --send GenesisComplete (devices, guardians)--> Completed
    holder:  AwaitingShare --recv SealedShare--> Verifying --send ShareAck--> AwaitingCompletion
             AwaitingCompletion --recv GenesisComplete--> Completed
    (abort / timeout -> Failed, declared once with abort=Failed)

A holder verifies its share against the commitments (``open_and_verify_share``) *before* it
acknowledges; a share that does not verify fails the session with code ``share_rejected`` and
the runtime sends the signed ``GenesisAbort`` to the dealer, who aborts everywhere. A verified
share is journaled as ``account.established`` (still sealed, as it arrived) in the step that
acknowledges it. The dealer counts an acknowledgement only from the holder it dealt to, for its
own index and public share; the witness :class:`AcknowledgedShares` (built by
:func:`verify_acks`) proves every holder acknowledged, and only then the dealer journals its
own ``account.established``, announces completion and completes with the account's JSON.
The guardians' gather is ``@polled``: without guardians it gets no message, and it completes
once the devices' acknowledgements are in. Rehydration is the kit's replay; there is no fold here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast, final

import msgspec

from aura_node.crypto import dealing as _dealing
from aura_node.crypto.dealing import Holder, deal_account, open_and_verify_share
from aura_node.crypto.group import Point, Rng, Scalar
from aura_node.errors import AuraError, RemoteProtocolError, WitnessError
from aura_node.protocols import engine as eng
from aura_node.protocols.account import (
    KIND_ACCOUNT,
    AccountEstablished,
    AccountHolder,
    AccountRecord,
    HolderSet,
    encode_established,
    genesis_held_share,
)
from aura_node.protocols.genesis.choreography import (
    GENESIS,
    GenesisComplete,
    SealedGuardianShare,
    SealedShare,
    ShareAck,
)
from aura_node.protocols.kit import NoParams, Step, polled, protocol, unrepeatable
from aura_node.protocols.services import NodeServices
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from aura_node.session.witness import Witness

S = TypeVar("S")

CHOREOGRAPHY = "genesis"
KIND_DEALT = "genesis.dealt"
KIND_REJECTED = "genesis.rejected"
DEADLINE_TIMER = "deadline"


class GenesisError(RemoteProtocolError):
    code = "genesis"


class ShareRejectedError(RemoteProtocolError):
    """The dealer's share for this holder did not open or failed its Feldman check."""

    code = "share_rejected"


class GenesisChoreography:
    """Choreography marker type."""


@final
class Dealing(Phase): ...
@final
class CollectingAcks(Phase): ...
@final
class Announcing(Phase): ...
@final
class AwaitingShare(Phase): ...
@final
class Verifying(Phase): ...
@final
class AwaitingCompletion(Phase): ...
@final
class Completed(Phase): ...
@final
class Failed(Phase): ...


# --- parameters and the dealing -----------------------------------------------------------------


class GenesisParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    devices: tuple[str, ...]
    threshold: int
    guardians: tuple[str, ...] = ()
    #: default: a majority of the guardians (0 without guardians)
    guardian_threshold: int | None = None
    #: seconds; None: the node's ``protocols.genesis_timeout_seconds`` (``ctl account create``
    #: fills it in, so the journaled start holds it and a replay never depends on the config)
    timeout: float | None = None

    def __post_init__(self) -> None:
        n, g, t, tg = len(self.devices), len(self.guardians), self.threshold, \
            self.guardian_threshold
        for what, names in (("devices", self.devices), ("guardians", self.guardians)):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} lists a name twice: {list(names)}")
        if not 1 <= t <= n:
            raise ValueError(f"threshold must be in 1..{n} (devices), got {t}")
        if not g and tg not in (None, 0):
            raise ValueError("guardian_threshold given without guardians")
        tg = (g // 2 + 1 if g else 0) if tg is None else tg
        if g and not 1 <= tg <= g:
            raise ValueError(f"guardian threshold must be in 1..{g} (guardians), got {tg}")
        msgspec.structs.force_setattr(self, "guardian_threshold", tg)
        overlap = sorted(set(self.devices) & set(self.guardians))
        if overlap:
            raise ValueError(f"a name cannot be both a device and a guardian: {overlap}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be a positive number, got {self.timeout!r}")

    def to_json(self) -> dict[str, Any]:
        return cast(dict[str, Any], msgspec.to_builtins(self))


def parse_params(params: Mapping[str, Any]) -> GenesisParams:
    try:
        return msgspec.convert(dict(params), GenesisParams)
    except msgspec.ValidationError as exc:
        raise eng.ParamsError(f"account create: {exc}") from None


class DealtBody(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``genesis.dealt``: the public account record and the sealed shares (the
    dealer's own ones are what it keeps; the others were sent)."""

    account: AccountRecord
    #: (holder_set, index, sealed) of every holder, in holder order
    sealed: tuple[tuple[str, int, bytes], ...]


def _holders(names: Sequence[str], services: NodeServices) -> list[Holder]:
    return [Holder(index=i, public_key=services.member(n).public_key)
            for i, n in enumerate(names, start=1)]


def _account_holders(names: Sequence[str], dealing: _dealing.Dealing) -> tuple[AccountHolder, ...]:
    return tuple(AccountHolder(name=n, device_id=s.device_id, index=s.index,
                               public_share=s.public_share.to_bytes())
                 for n, s in zip(names, dealing.shares, strict=True))


def deal_shares(params: GenesisParams, services: NodeServices, session_id: str,
                rng: Rng | None = None) -> DealtBody:
    """Draw ``s`` and deal it to devices and guardians; only public/sealed data returns.

    ``rng`` is for tests only (a seeded secret they can search the journal for).
    """
    secret = Scalar.random(rng)
    devices = deal_account(threshold=params.threshold,
                           holders=_holders(params.devices, services), session_id=session_id,
                           role="device", secret=secret, rng=rng)
    guardians = None
    if params.guardians:
        guardians = deal_account(threshold=params.guardian_threshold or 0,
                                 holders=_holders(params.guardians, services),
                                 session_id=session_id, role="guardian", secret=secret, rng=rng)
    del secret  # the last reference: from here on only commitments and sealed shares exist
    record = AccountRecord(
        account_id=devices.account_id,
        public_key=devices.public_key.to_bytes(),
        threshold=params.threshold,
        devices=_account_holders(params.devices, devices),
        device_commitments=devices.commitments.to_bytes(),
        guardians=_account_holders(params.guardians, guardians) if guardians else (),
        guardian_threshold=params.guardian_threshold or 0,
        guardian_commitments=guardians.commitments.to_bytes() if guardians else b"",
    )
    record.check()
    sealed = [("devices", s.index, s.sealed) for s in devices.shares]
    if guardians is not None:
        sealed += [("guardians", s.index, s.sealed) for s in guardians.shares]
    return DealtBody(account=record, sealed=tuple(sealed))


AnyShare = SealedShare | SealedGuardianShare
_record_decoder = msgspec.msgpack.Decoder(AccountRecord)


def decode_record(data: bytes) -> AccountRecord:
    try:
        return _record_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ShareRejectedError(f"account record does not decode: {exc}") from None


# --- witnesses ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, init=False)
class AcknowledgedShares(Witness):
    """Verified: every holder of ``holder_set`` (other than the dealer) acknowledged the share
    it was dealt, signed (envelope) by its pinned key, for its own index and public share."""

    account_id: str
    holder_set: str
    acks: tuple[tuple[str, ShareAck], ...]


def check_ack(record: AccountRecord, sender: str, ack: ShareAck) -> None:
    """Receipt-time check of one acknowledgement (raises :class:`GenesisError`)."""
    if ack.account_id != record.account_id:
        raise GenesisError(f"ShareAck from {sender} is for account {ack.account_id}, "
                           f"expected {record.account_id}")
    if ack.holder_set not in ("devices", "guardians"):
        raise GenesisError(f"ShareAck from {sender} names holder set {ack.holder_set!r}")
    try:
        holder = record.holder(ack.holder_set, sender)  # type: ignore[arg-type]
    except AuraError:
        raise GenesisError(f"ShareAck from {sender}, who holds no {ack.holder_set} share of "
                           f"{record.account_id}") from None
    if ack.share_index != holder.index or ack.public_share != holder.public_share:
        raise GenesisError(
            f"ShareAck from {sender} acknowledges index {ack.share_index} / public share "
            f"{ack.public_share.hex()[:16]}, expected index {holder.index} / "
            f"{holder.public_share.hex()[:16]}")


def verify_acks(record: AccountRecord, holder_set: HolderSet, expected: Sequence[str],
                acks: Mapping[str, ShareAck]) -> AcknowledgedShares:
    """Every holder in ``expected`` acknowledged correctly (``WitnessError`` otherwise)."""
    got: list[tuple[str, ShareAck]] = []
    for name in expected:
        ack = acks.get(name)
        if ack is None or ack.holder_set != holder_set:
            raise WitnessError(f"genesis {record.account_id}: no {holder_set} ShareAck from "
                               f"{name} (have {sorted(acks)})")
        try:
            check_ack(record, name, ack)
        except GenesisError as exc:
            raise WitnessError(exc.message) from None
        got.append((name, ack))
    extra = sorted({n for n, a in acks.items() if a.holder_set == holder_set} - set(expected))
    if extra:
        raise WitnessError(f"genesis {record.account_id}: ShareAck from non-members {extra}")
    return AcknowledgedShares._create(account_id=record.account_id, holder_set=holder_set,
                                      acks=tuple(got))


# --- the dealer -----------------------------------------------------------------------------------


@final
class GenesisDealer(ChoreographicProtocol[GenesisChoreography, S], choreography=CHOREOGRAPHY,
                    role="dealer", initial=Dealing, abort=Failed):
    #: tests only: a seeded source for the secret, so they can search the journal for it
    test_rng: ClassVar[Rng | None] = None

    timeout: float
    dealt: DealtBody | None
    #: verified acknowledgements by holder, first one per holder
    acks: tuple[tuple[str, ShareAck], ...]

    def __init__(self: GenesisDealer[Dealing], step: Step[GenesisParams]) -> None:
        p, me = step.params, step.self_name
        expected = {me: "dealer", **{n: "devices" for n in p.devices if n != me},
                    **{n: "guardians" for n in p.guardians if n != me}}
        if dict(step.roles) != expected:
            raise eng.ParamsError(f"genesis roles {dict(step.roles)} do not match the params "
                                  f"(expected {expected})")
        self._begin(timeout=p.timeout or step.services.protocols.genesis_timeout_seconds,
                    dealt=None, acks=())

    @unrepeatable(record=KIND_DEALT)
    @transition(source=Dealing, target=Dealing, action="send", message=SealedShare,
                peer="devices")
    def deal(self: GenesisDealer[Dealing], step: Step[GenesisParams]
             ) -> tuple[GenesisDealer[Dealing], dict[str, SealedShare]]:
        # from the OS on purpose (module doc); replay takes it from genesis.dealt instead
        body = step.draw(lambda: msgspec.msgpack.encode(deal_shares(
            step.params, step.services, step.session, type(self).test_rng)))
        dealt = msgspec.msgpack.decode(body, type=DealtBody)
        shares = {n: SealedShare(**kw) for n, kw in self._shares(dealt, "devices", step)}
        return self._advance(GenesisDealer[Dealing], dealt=dealt), shares

    @transition(source=Dealing, target=CollectingAcks, action="send",
                message=SealedGuardianShare, peer="guardians")
    def send_guardian_shares(self: GenesisDealer[Dealing], step: Step[GenesisParams]
                             ) -> tuple[GenesisDealer[CollectingAcks],
                                        dict[str, SealedGuardianShare]]:
        assert self.dealt is not None
        step.arm(DEADLINE_TIMER, at=step.now + self.timeout)
        shares = {n: SealedGuardianShare(**kw)
                  for n, kw in self._shares(self.dealt, "guardians", step)}
        return self._advance(GenesisDealer[CollectingAcks]), shares

    def _shares(self, dealt: DealtBody, holder_set: HolderSet, step: Step[GenesisParams]
                ) -> list[tuple[str, dict[str, Any]]]:
        """Each other holder's sealed share of ``holder_set``, as message fields."""
        names = step.params.devices if holder_set == "devices" else step.params.guardians
        mine = [x for x in dealt.sealed if x[0] == holder_set]
        account = msgspec.msgpack.encode(dealt.account)
        return [(name, {"account": account, "holder_set": hs, "share_index": index,
                        "sealed_share": sealed, "timeout_ms": round(self.timeout * 1000)})
                for (hs, index, sealed), name in zip(mine, names, strict=True)
                if name != step.self_name]  # our own stays in genesis.dealt

    def _counted(self, ack: ShareAck, step: Step[GenesisParams]
                 ) -> tuple[tuple[str, ShareAck], ...]:
        assert self.dealt is not None
        check_ack(self.dealt.account, step.sender, ack)
        if step.sender_role != ack.holder_set:
            raise GenesisError(f"{step.sender} acknowledged a {ack.holder_set} share it was "
                               "not dealt")
        if any(n == step.sender for n, _ in self.acks):
            return self.acks
        return (*self.acks, (step.sender, ack))

    @transition(source=CollectingAcks, target=CollectingAcks, action="gather",
                message=ShareAck, peer="devices")
    def device_acknowledged(self: GenesisDealer[CollectingAcks], ack: ShareAck,
                            step: Step[GenesisParams]) -> GenesisDealer[CollectingAcks]:
        return self._advance(GenesisDealer[CollectingAcks], acks=self._counted(ack, step))

    @polled
    @transition(source=CollectingAcks, target=Announcing, action="gather", message=ShareAck,
                peer="guardians")
    def guardian_acknowledged(self: GenesisDealer[CollectingAcks], ack: ShareAck | None,
                              step: Step[GenesisParams]
                              ) -> GenesisDealer[CollectingAcks] | GenesisDealer[Announcing]:
        assert self.dealt is not None
        acks = self.acks if ack is None else self._counted(ack, step)
        record = self.dealt.account
        try:
            verify_acks(record, "devices", step.members("devices"), dict(acks))
            verify_acks(record, "guardians", step.members("guardians"), dict(acks))
        except WitnessError:
            return self._advance(GenesisDealer[CollectingAcks], acks=acks)  # not yet
        held = tuple(genesis_held_share(holder_set=cast(HolderSet, hs), index=index,
                                        sealed=sealed, session_id=step.session)
                     for hs, index, sealed in self.dealt.sealed
                     if any(h.name == step.self_name and h.index == index
                            for h in record.holders(cast(HolderSet, hs))))
        step.record(KIND_ACCOUNT, encode_established(AccountEstablished(account=record,
                                                                        shares=held)))
        step.cancel(DEADLINE_TIMER)
        return self._advance(GenesisDealer[Announcing], acks=acks)

    @transition(source=CollectingAcks, target=Failed, action="timeout")
    def time_out(self: GenesisDealer[CollectingAcks], step: Step[GenesisParams]
                 ) -> GenesisDealer[Failed]:
        missing = sorted({*step.members("devices"), *step.members("guardians")}
                         - {n for n, _ in self.acks})
        step.fail("timeout", f"no ShareAck from {', '.join(missing)}")
        return self._advance(GenesisDealer[Failed])

    @transition(source=Announcing, target=Announcing, action="send", message=GenesisComplete,
                peer="devices")
    def announce_to_devices(self: GenesisDealer[Announcing], step: Step[GenesisParams]
                            ) -> tuple[GenesisDealer[Announcing], GenesisComplete]:
        return self._advance(GenesisDealer[Announcing]), self._complete()

    @transition(source=Announcing, target=Completed, action="send", message=GenesisComplete,
                peer="guardians")
    def announce_to_guardians(self: GenesisDealer[Announcing], step: Step[GenesisParams]
                              ) -> tuple[GenesisDealer[Completed], GenesisComplete]:
        assert self.dealt is not None
        step.complete(**self.dealt.account.to_json())
        return self._advance(GenesisDealer[Completed]), self._complete()

    def _complete(self) -> GenesisComplete:
        assert self.dealt is not None
        return GenesisComplete(account_id=self.dealt.account.account_id,
                               public_key=self.dealt.account.public_key)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"acks": sorted(n for n, _ in self.acks)}
        if self.dealt is not None:
            out["account_id"] = self.dealt.account.account_id
        return out


# --- the holders (devices and guardians: one machine, one class per role) -----------------------


def verify_share(m: AnyShare, holder_set: HolderSet, step: Step[NoParams]) -> ShareAck:
    """Open and verify this device's share, journal the account it establishes, arm the wait
    for the outcome, and return the acknowledgement (``ShareRejectedError`` otherwise)."""
    key = step.services.device_key
    me = step.self_name
    try:
        if m.holder_set != holder_set:
            raise ShareRejectedError(f"dealt a {m.holder_set} share to a {holder_set} holder")
        record = decode_record(m.account)
        record.check()
        holder = record.holder(holder_set, me)
        if holder.device_id != key.device_id or holder.index != m.share_index:
            raise ShareRejectedError(
                f"the record names device {holder.device_id} index {holder.index} for {me}, "
                f"this device is {key.device_id} and the share is for index {m.share_index}")
        share = open_and_verify_share(
            commitments=record.commitments(holder_set), sealed=m.sealed_share,
            index=m.share_index, device_key=key, account_id=record.account_id,
            session_id=step.session, role="device" if holder_set == "devices" else "guardian")
        public_share = Point.base_mul(share.value).to_bytes()
        del share
    except AuraError as exc:
        raise ShareRejectedError(f"share from {step.sender or 'the dealer'} rejected: "
                                 f"{exc}") from None
    held = genesis_held_share(holder_set=holder_set, index=m.share_index,
                              sealed=m.sealed_share, session_id=step.session)
    step.record(KIND_ACCOUNT, encode_established(AccountEstablished(account=record,
                                                                    shares=(held,))))
    step.arm(DEADLINE_TIMER, at=step.now + m.timeout_ms / 1000)
    return ShareAck(account_id=record.account_id, holder_set=holder_set,
                    share_index=m.share_index, public_share=public_share)


def check_complete(m: AnyShare | None, done: GenesisComplete, step: Step[NoParams]) -> None:
    """The dealer's announcement is for the account this holder acknowledged."""
    assert m is not None
    record = decode_record(m.account)
    if (done.account_id, done.public_key) != (record.account_id, record.public_key):
        raise GenesisError("GenesisComplete for another account")
    step.cancel(DEADLINE_TIMER)
    step.complete(**record.to_json())


def _describe(m: AnyShare | None) -> dict[str, Any]:
    return {"account_id": decode_record(m.account).account_id} if m is not None else {}


@final
class GenesisHolder(ChoreographicProtocol[GenesisChoreography, S], choreography=CHOREOGRAPHY,
                    role="devices", initial=AwaitingShare, abort=Failed):
    """A device holder; guardians run :class:`GenesisGuardianHolder`, the same machine."""

    share: SealedShare | None

    def __init__(self: GenesisHolder[AwaitingShare], step: Step[NoParams]) -> None:
        self._begin(share=None)

    @transition(source=AwaitingShare, target=Verifying, action="recv", message=SealedShare,
                peer="dealer")
    def receive_share(self: GenesisHolder[AwaitingShare], m: SealedShare,
                      step: Step[NoParams]) -> GenesisHolder[Verifying]:
        return self._advance(GenesisHolder[Verifying], share=m)

    @transition(source=Verifying, target=AwaitingCompletion, action="send", message=ShareAck,
                peer="dealer")
    def acknowledge(self: GenesisHolder[Verifying], step: Step[NoParams]
                    ) -> tuple[GenesisHolder[AwaitingCompletion], ShareAck]:
        assert self.share is not None
        return self._advance(GenesisHolder[AwaitingCompletion]), verify_share(
            self.share, "devices", step)

    @transition(source=AwaitingCompletion, target=Completed, action="recv",
                message=GenesisComplete, peer="dealer")
    def receive_complete(self: GenesisHolder[AwaitingCompletion], m: GenesisComplete,
                         step: Step[NoParams]) -> GenesisHolder[Completed]:
        check_complete(self.share, m, step)
        return self._advance(GenesisHolder[Completed])

    def describe(self) -> dict[str, Any]:
        return _describe(self.share)


@final
class GenesisGuardianHolder(ChoreographicProtocol[GenesisChoreography, S],
                            choreography=CHOREOGRAPHY, role="guardians", initial=AwaitingShare,
                            abort=Failed):
    """The guardian holder: :class:`GenesisHolder`'s machine for role ``guardians``."""

    share: SealedGuardianShare | None

    def __init__(self: GenesisGuardianHolder[AwaitingShare], step: Step[NoParams]
                 ) -> None:
        self._begin(share=None)

    @transition(source=AwaitingShare, target=Verifying, action="recv",
                message=SealedGuardianShare, peer="dealer")
    def receive_share(self: GenesisGuardianHolder[AwaitingShare], m: SealedGuardianShare,
                      step: Step[NoParams]) -> GenesisGuardianHolder[Verifying]:
        return self._advance(GenesisGuardianHolder[Verifying], share=m)

    @transition(source=Verifying, target=AwaitingCompletion, action="send", message=ShareAck,
                peer="dealer")
    def acknowledge(self: GenesisGuardianHolder[Verifying], step: Step[NoParams]
                    ) -> tuple[GenesisGuardianHolder[AwaitingCompletion], ShareAck]:
        assert self.share is not None
        return self._advance(GenesisGuardianHolder[AwaitingCompletion]), verify_share(
            self.share, "guardians", step)

    @transition(source=AwaitingCompletion, target=Completed, action="recv",
                message=GenesisComplete, peer="dealer")
    def receive_complete(self: GenesisGuardianHolder[AwaitingCompletion], m: GenesisComplete,
                         step: Step[NoParams]) -> GenesisGuardianHolder[Completed]:
        check_complete(self.share, m, step)
        return self._advance(GenesisGuardianHolder[Completed])

    def describe(self) -> dict[str, Any]:
        return _describe(self.share)


def bindings(start: eng.Start, opening: msgspec.Struct | None) -> dict[str, int]:
    """Role-set sizes: the holders other than the dealer (from params or the opening share)."""
    if isinstance(opening, SealedShare | SealedGuardianShare):
        acct = decode_record(opening.account)
        dealer = start.opened_by
        return {"n": sum(1 for h in acct.devices if h.name != dealer),
                "g": sum(1 for h in acct.guardians if h.name != dealer)}
    p = parse_params(start.params)
    return {"n": sum(1 for n in p.devices if n != start.self_name),
            "g": sum(1 for n in p.guardians if n != start.self_name)}


PROTOCOL = protocol(GENESIS, GenesisDealer, GenesisHolder, GenesisGuardianHolder,
                    params=GenesisParams, bindings=bindings,
                    conformance_bindings={"n": 2, "g": 3})
SPEC = PROTOCOL.spec
