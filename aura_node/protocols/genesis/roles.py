"""Account genesis: the dealer's and the holders' role machines and their runtime drivers.

Theory of operation
-------------------
The dealer (the device the operator runs ``ctl account create`` on) draws the account secret
``s`` from the OS CSPRNG and deals it twice with :func:`~aura_node.crypto.dealing.deal_account`:
``t``-of-``n`` among the devices and ``t_g``-of-``m`` among the guardians, each share HPKE-sealed
to its holder. ``s``, the polynomials and the plaintext shares exist only inside
:func:`deal_shares` (one pure step); what leaves it is public (the :class:`AccountRecord` with
both Feldman commitment vectors) or sealed. So the secret is erased the moment the step returns,
long before the acknowledgements arrive, and no driver field or journal record can hold it.
(Deliberately *not* drawn from ``Start.entropy``: that is journaled, and a secret derived from it
could be re-derived from the journal.)

The dealer plays only the ``dealer`` role (a device never messages itself): when it is one of
``--devices`` (or ``--guardians``) its own share is sealed to itself and kept in the
``genesis.dealt`` driver record, and the ``devices``/``guardians`` role sets are the *other*
holders. Phases:

    dealer:  Dealing --send SealedShare (devices, guardians)--> CollectingAcks
             CollectingAcks --gather ShareAck (all devices, then all guardians)--> Announcing
             Announcing --send GenesisComplete--> Completed       (timeout/abort -> Failed)
    holder:  AwaitingShare --recv SealedShare--> Verifying --send ShareAck--> AwaitingCompletion
             AwaitingCompletion --recv GenesisComplete--> Completed         (abort -> Failed)

A holder verifies its share against the commitments (``open_and_verify_share``) *before* it
acknowledges; a share that does not verify fails the session with code ``share_rejected`` and
the runtime sends the signed ``GenesisAbort`` to the dealer, who aborts everywhere. A verified
share is journaled as ``account.established`` (the share still sealed, as it arrived) in the same
step as the acknowledgement. The dealer counts an acknowledgement only from the holder it dealt
to, for its own index and public share (:class:`AcknowledgedShares`, a witness built by
:func:`verify_acks`), journals its own ``account.established`` when every holder acknowledged,
announces completion and completes with the ``ctl account create`` JSON.

Rehydration (pure folds over the session's journal records; a step's records are all durable
or none, so an input record implies the records of its effects):

* dealer: ``session.start`` without ``genesis.dealt`` proves nothing was dealt or sent: ``None``
  (the runtime aborts; a new ``account create`` deals a fresh secret). With ``genesis.dealt`` the
  dealer is CollectingAcks with the journaled dealing; every journaled ``ShareAck`` is counted
  again (same checks); an ``account.established`` record proves Announcing/Completed (the
  runtime re-sends the journaled GenesisComplete).
* holder: the first journaled ``SealedShare`` is re-verified; with a journaled
  ``account.established`` the holder is AwaitingCompletion (the ack was journaled with it),
  without it the holder is Verifying and :meth:`resume` verifies and acknowledges. A holder
  never acknowledges two different shares: only the first ``SealedShare`` counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeVar, final

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
    HeldShare,
    HolderSet,
    decode_established,
    encode_established,
    genesis_held_share,
)
from aura_node.protocols.genesis.choreography import (
    GenesisAbort,
    GenesisComplete,
    SealedGuardianShare,
    SealedShare,
    ShareAck,
)
from aura_node.protocols.services import NodeServices
from aura_node.session.rehydrate import PhaseOrder
from aura_node.session.typestate import ChoreographicProtocol, Phase, phase_of, transition
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


# --- phases -----------------------------------------------------------------------------------


@final
class Dealing(Phase):
    """Dealer: parameters validated, shares not dealt yet."""


@final
class CollectingAcks(Phase):
    """Dealer: shares dealt and sent (journaled); the secret is gone; gathering acks."""


@final
class Announcing(Phase):
    """Dealer: every holder acknowledged; its own account record journaled."""


@final
class AwaitingShare(Phase):
    """Holder: waiting for the dealer's sealed share."""


@final
class Verifying(Phase):
    """Holder: share received, not yet verified/acknowledged."""


@final
class AwaitingCompletion(Phase):
    """Holder: share verified, account journaled, ack sent."""


@final
class Completed(Phase):
    """Both roles: the account exists on every holder (terminal)."""


@final
class Failed(Phase):
    """Both roles: aborted (terminal)."""


DEALER_ORDER = PhaseOrder((Dealing, CollectingAcks, Announcing, Completed), frozenset({Failed}))
HOLDER_ORDER = PhaseOrder(
    (AwaitingShare, Verifying, AwaitingCompletion, Completed), frozenset({Failed})
)


# --- parameters and the dealing step ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GenesisParams:
    devices: tuple[str, ...]
    threshold: int
    guardians: tuple[str, ...]
    guardian_threshold: int
    #: None: the node's ``protocols.genesis_timeout_seconds``
    timeout: float | None

    def to_json(self) -> dict[str, Any]:
        extra = {} if self.timeout is None else {"timeout": self.timeout}
        return {**extra,
            "devices": list(self.devices), "threshold": self.threshold,
            "guardians": list(self.guardians), "guardian_threshold": self.guardian_threshold,
            "timeout": self.timeout,
        }


def _names(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = [str(v).strip() for v in value]
    else:
        raise eng.ParamsError(f"{what} must be a list of names, got {value!r}")
    if len(set(items)) != len(items):
        raise eng.ParamsError(f"{what} lists a name twice: {items}")
    return tuple(items)


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise eng.ParamsError(f"{what} must be an integer, got {value!r}")
    return value


def parse_params(params: Mapping[str, Any]) -> GenesisParams:
    unknown = sorted(set(params) - {"devices", "threshold", "guardians", "guardian_threshold",
                                    "timeout"})
    if unknown:
        raise eng.ParamsError(f"account create: unknown parameters {unknown}")
    if "devices" not in params or "threshold" not in params:
        raise eng.ParamsError("account create needs devices and threshold")
    devices = _names(params["devices"], "devices")
    guardians = _names(params.get("guardians") or (), "guardians")
    t = _int(params["threshold"], "threshold")
    if not devices:
        raise eng.ParamsError("account create needs at least one device")
    if not 1 <= t <= len(devices):
        raise eng.ParamsError(f"threshold must be in 1..{len(devices)} (devices), got {t}")
    tg_raw = params.get("guardian_threshold")
    if guardians:
        tg = _int(tg_raw, "guardian_threshold") if tg_raw is not None else len(guardians) // 2 + 1
        if not 1 <= tg <= len(guardians):
            raise eng.ParamsError(
                f"guardian threshold must be in 1..{len(guardians)} (guardians), got {tg}")
    else:
        if tg_raw not in (None, 0):
            raise eng.ParamsError("guardian_threshold given without guardians")
        tg = 0
    overlap = sorted(set(devices) & set(guardians))
    if overlap:
        raise eng.ParamsError(f"a name cannot be both a device and a guardian: {overlap}")
    timeout = params.get("timeout")
    if timeout is None:
        return GenesisParams(devices=devices, threshold=t, guardians=guardians,
                             guardian_threshold=tg, timeout=None)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise eng.ParamsError(f"timeout must be a positive number, got {timeout!r}")
    return GenesisParams(devices=devices, threshold=t, guardians=guardians,
                         guardian_threshold=tg, timeout=float(timeout))


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return parse_params(params).to_json()


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
    return tuple(
        AccountHolder(name=n, device_id=s.device_id, index=s.index,
                      public_share=s.public_share.to_bytes())
        for n, s in zip(names, dealing.shares, strict=True)
    )


def deal_shares(
    params: GenesisParams, services: NodeServices, session_id: str, rng: Rng | None = None
) -> DealtBody:
    """Draw ``s`` and deal it to devices and guardians; only public/sealed data returns.

    ``rng`` is for tests only (a seeded secret they can search the journal for).
    """
    secret = Scalar.random(rng)
    devices = deal_account(threshold=params.threshold,
                           holders=_holders(params.devices, services), session_id=session_id,
                           role="device", secret=secret, rng=rng)
    guardians = None
    if params.guardians:
        guardians = deal_account(threshold=params.guardian_threshold,
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
        guardian_threshold=params.guardian_threshold,
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

# --- witnesses ------------------------------------------------------------------------------------


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
        raise GenesisError(
            f"ShareAck from {sender}, who holds no {ack.holder_set} share of "
            f"{record.account_id}") from None
    if ack.share_index != holder.index or ack.public_share != holder.public_share:
        raise GenesisError(
            f"ShareAck from {sender} acknowledges index {ack.share_index} / public share "
            f"{ack.public_share.hex()[:16]}, expected index {holder.index} / "
            f"{holder.public_share.hex()[:16]}")


def verify_acks(
    record: AccountRecord, holder_set: HolderSet, expected: Sequence[str],
    acks: Mapping[str, ShareAck],
) -> AcknowledgedShares:
    """Every holder in ``expected`` acknowledged correctly (``WitnessError`` otherwise)."""
    got: list[tuple[str, ShareAck]] = []
    for name in expected:
        ack = acks.get(name)
        if ack is None or ack.holder_set != holder_set:
            raise WitnessError(
                f"genesis {record.account_id}: no {holder_set} ShareAck from {name} "
                f"(have {sorted(acks)})")
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


# --- typestate role machines ----------------------------------------------------------------------


@final
class GenesisDealer(
    ChoreographicProtocol[GenesisChoreography, S],
    choreography=CHOREOGRAPHY, role="dealer", initial=Dealing,
):
    session_id: str
    dealt: DealtBody | None

    def __init__(self: GenesisDealer[Dealing], *, session_id: str) -> None:
        self._begin(session_id=session_id, dealt=None)

    @transition(source=Dealing, target=Dealing, action="send", message=SealedShare,
                peer="devices")
    def send_device_shares(self: GenesisDealer[Dealing], dealt: DealtBody
                           ) -> GenesisDealer[Dealing]:
        return self._advance(GenesisDealer[Dealing], dealt=dealt)

    @transition(source=Dealing, target=CollectingAcks, action="send",
                message=SealedGuardianShare, peer="guardians")
    def send_guardian_shares(self: GenesisDealer[Dealing], dealt: DealtBody
                             ) -> GenesisDealer[CollectingAcks]:
        return self._advance(GenesisDealer[CollectingAcks], dealt=dealt)

    @transition(source=CollectingAcks, target=CollectingAcks, action="gather",
                message=ShareAck, peer="devices")
    def devices_acknowledged(self: GenesisDealer[CollectingAcks], w: AcknowledgedShares
                             ) -> GenesisDealer[CollectingAcks]:
        self._check_witness(w, "devices")
        return self._advance(GenesisDealer[CollectingAcks])

    @transition(source=CollectingAcks, target=Announcing, action="gather", message=ShareAck,
                peer="guardians")
    def guardians_acknowledged(self: GenesisDealer[CollectingAcks], w: AcknowledgedShares
                               ) -> GenesisDealer[Announcing]:
        self._check_witness(w, "guardians")
        return self._advance(GenesisDealer[Announcing])

    def _check_witness(self, w: AcknowledgedShares, holder_set: str) -> None:
        dealt = self.dealt
        if dealt is None or w.account_id != dealt.account.account_id or \
                w.holder_set != holder_set:
            raise WitnessError(f"AcknowledgedShares for {w.holder_set}/{w.account_id} does "
                               f"not fit this dealing ({holder_set})")

    @transition(source=Announcing, target=Announcing, action="send", message=GenesisComplete,
                peer="devices")
    def announce_to_devices(self: GenesisDealer[Announcing]) -> GenesisDealer[Announcing]:
        return self._advance(GenesisDealer[Announcing])

    @transition(source=Announcing, target=Completed, action="send", message=GenesisComplete,
                peer="guardians")
    def announce_to_guardians(self: GenesisDealer[Announcing]) -> GenesisDealer[Completed]:
        return self._advance(GenesisDealer[Completed])

    @transition(source=CollectingAcks, target=Failed, action="timeout")
    def time_out(self: GenesisDealer[CollectingAcks]) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])

    @transition(source=Dealing, target=Failed, action="abort")
    def abort_dealing(self: GenesisDealer[Dealing]) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])

    @transition(source=CollectingAcks, target=Failed, action="abort")
    def abort_collecting(self: GenesisDealer[CollectingAcks]) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])

    @transition(source=Announcing, target=Failed, action="abort")
    def abort_announcing(self: GenesisDealer[Announcing]) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])

    @transition(source=Dealing, target=Failed, action="recv", message=GenesisAbort,
                peer="devices")
    def peer_aborted_dealing(self: GenesisDealer[Dealing], _m: GenesisAbort
                             ) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])

    @transition(source=CollectingAcks, target=Failed, action="recv", message=GenesisAbort,
                peer="devices")
    def peer_aborted_collecting(self: GenesisDealer[CollectingAcks], _m: GenesisAbort
                                ) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])

    @transition(source=Announcing, target=Failed, action="recv", message=GenesisAbort,
                peer="devices")
    def peer_aborted_announcing(self: GenesisDealer[Announcing], _m: GenesisAbort
                                ) -> GenesisDealer[Failed]:
        return self._advance(GenesisDealer[Failed])


@final
class GenesisHolder(
    ChoreographicProtocol[GenesisChoreography, S],
    choreography=CHOREOGRAPHY, role="devices", initial=AwaitingShare,
):
    """A device holder. Guardians run :class:`GenesisGuardianHolder`, the same machine for
    role ``guardians`` (one typestate class per role, as conformance checks per role)."""

    session_id: str
    share: AnyShare | None

    def __init__(self: GenesisHolder[AwaitingShare], *, session_id: str) -> None:
        self._begin(session_id=session_id, share=None)

    @transition(source=AwaitingShare, target=Verifying, action="recv", message=SealedShare,
                peer="dealer")
    def receive_share(self: GenesisHolder[AwaitingShare], m: AnyShare
                      ) -> GenesisHolder[Verifying]:
        return self._advance(GenesisHolder[Verifying], share=m)

    @transition(source=Verifying, target=AwaitingCompletion, action="send", message=ShareAck,
                peer="dealer")
    def acknowledge(self: GenesisHolder[Verifying], ack: ShareAck
                    ) -> GenesisHolder[AwaitingCompletion]:
        return self._advance(GenesisHolder[AwaitingCompletion])

    @transition(source=AwaitingCompletion, target=Completed, action="recv",
                message=GenesisComplete, peer="dealer")
    def receive_complete(self: GenesisHolder[AwaitingCompletion], m: GenesisComplete
                         ) -> GenesisHolder[Completed]:
        return self._advance(GenesisHolder[Completed])

    @transition(source=AwaitingShare, target=Failed, action="abort")
    def abort_awaiting(self: GenesisHolder[AwaitingShare]) -> GenesisHolder[Failed]:
        return self._advance(GenesisHolder[Failed])

    @transition(source=Verifying, target=Failed, action="abort")
    def abort_verifying(self: GenesisHolder[Verifying]) -> GenesisHolder[Failed]:
        return self._advance(GenesisHolder[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="abort")
    def abort_completion(self: GenesisHolder[AwaitingCompletion]) -> GenesisHolder[Failed]:
        return self._advance(GenesisHolder[Failed])

    @transition(source=AwaitingShare, target=Failed, action="recv", message=GenesisAbort,
                peer="dealer")
    def peer_aborted_awaiting(self: GenesisHolder[AwaitingShare], _m: GenesisAbort
                              ) -> GenesisHolder[Failed]:
        return self._advance(GenesisHolder[Failed])

    @transition(source=Verifying, target=Failed, action="recv", message=GenesisAbort,
                peer="dealer")
    def peer_aborted_verifying(self: GenesisHolder[Verifying], _m: GenesisAbort
                               ) -> GenesisHolder[Failed]:
        return self._advance(GenesisHolder[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="recv",
                message=GenesisAbort, peer="dealer")
    def peer_aborted_completion(self: GenesisHolder[AwaitingCompletion], _m: GenesisAbort
                                ) -> GenesisHolder[Failed]:
        return self._advance(GenesisHolder[Failed])


@final
class GenesisGuardianHolder(
    ChoreographicProtocol[GenesisChoreography, S],
    choreography=CHOREOGRAPHY, role="guardians", initial=AwaitingShare,
):
    """The guardian holder: :class:`GenesisHolder`'s machine for role ``guardians``."""

    session_id: str
    share: AnyShare | None

    def __init__(self: GenesisGuardianHolder[AwaitingShare], *, session_id: str) -> None:
        self._begin(session_id=session_id, share=None)

    @transition(source=AwaitingShare, target=Verifying, action="recv", message=SealedGuardianShare,
                peer="dealer")
    def receive_share(self: GenesisGuardianHolder[AwaitingShare], m: AnyShare
                      ) -> GenesisGuardianHolder[Verifying]:
        return self._advance(GenesisGuardianHolder[Verifying], share=m)

    @transition(source=Verifying, target=AwaitingCompletion, action="send", message=ShareAck,
                peer="dealer")
    def acknowledge(self: GenesisGuardianHolder[Verifying], ack: ShareAck
                    ) -> GenesisGuardianHolder[AwaitingCompletion]:
        return self._advance(GenesisGuardianHolder[AwaitingCompletion])

    @transition(source=AwaitingCompletion, target=Completed, action="recv",
                message=GenesisComplete, peer="dealer")
    def receive_complete(self: GenesisGuardianHolder[AwaitingCompletion], m: GenesisComplete
                         ) -> GenesisGuardianHolder[Completed]:
        return self._advance(GenesisGuardianHolder[Completed])

    @transition(source=AwaitingShare, target=Failed, action="abort")
    def abort_awaiting(self: GenesisGuardianHolder[AwaitingShare]) -> GenesisGuardianHolder[Failed]:
        return self._advance(GenesisGuardianHolder[Failed])

    @transition(source=Verifying, target=Failed, action="abort")
    def abort_verifying(self: GenesisGuardianHolder[Verifying]) -> GenesisGuardianHolder[Failed]:
        return self._advance(GenesisGuardianHolder[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="abort")
    def abort_completion(self: GenesisGuardianHolder[AwaitingCompletion]
                         ) -> GenesisGuardianHolder[Failed]:
        return self._advance(GenesisGuardianHolder[Failed])

    @transition(source=AwaitingShare, target=Failed, action="recv", message=GenesisAbort,
                peer="dealer")
    def peer_aborted_awaiting(self: GenesisGuardianHolder[AwaitingShare], _m: GenesisAbort
                              ) -> GenesisGuardianHolder[Failed]:
        return self._advance(GenesisGuardianHolder[Failed])

    @transition(source=Verifying, target=Failed, action="recv", message=GenesisAbort,
                peer="dealer")
    def peer_aborted_verifying(self: GenesisGuardianHolder[Verifying], _m: GenesisAbort
                               ) -> GenesisGuardianHolder[Failed]:
        return self._advance(GenesisGuardianHolder[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="recv",
                message=GenesisAbort, peer="dealer")
    def peer_aborted_completion(self: GenesisGuardianHolder[AwaitingCompletion], _m: GenesisAbort
                                ) -> GenesisGuardianHolder[Failed]:
        return self._advance(GenesisGuardianHolder[Failed])


# --- drivers --------------------------------------------------------------------------------------


def _reject(peer: str, code: str, reason: str) -> eng.RecordEvidence:
    """A rejected peer message, journaled as evidence (the session carries on)."""
    return eng.rejection(KIND_REJECTED, peer=peer, code=code, reason=reason)


class GenesisDealerDriver(eng.ProtocolDriver):
    choreography = CHOREOGRAPHY
    role = "dealer"
    #: tests only: a seeded source for the secret, so they can search the journal for it
    test_rng: Rng | None = None

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: GenesisDealer[Any] | None = None
        self._roles: dict[str, str] = {}
        self._params: GenesisParams | None = None
        self._dealt: DealtBody | None = None
        self._acks: dict[str, ShareAck] = {}

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    # the holders other than this device, per set (this device never messages itself)
    def _others(self, holder_set: HolderSet) -> list[str]:
        assert self._params is not None
        names = self._params.devices if holder_set == "devices" else self._params.guardians
        return [n for n in names if n != self.services.self_name]

    def _setup(self, inp: eng.Start) -> None:
        params = dict(inp.params)
        if params.get("timeout") is None:
            params["timeout"] = self.services.protocols.genesis_timeout_seconds
        self._params = parse_params(params)
        assert self._params.timeout is not None
        self._roles = {self.services.self_name: "dealer"}
        for n in self._others("devices"):
            self._roles[n] = "devices"
        for n in self._others("guardians"):
            self._roles[n] = "guardians"

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._setup(inp)
        assert self._params is not None and self._params.timeout is not None
        timeout = self._params.timeout
        dealt = deal_shares(self._params, self.services, inp.session, type(self).test_rng)
        self._dealt = dealt
        effects: list[eng.Effect] = [
            eng.RecordEvidence(kind=KIND_DEALT, body=msgspec.msgpack.encode(dealt))]
        state = GenesisDealer(session_id=inp.session)
        for holder_set in ("devices", "guardians"):
            names = (self._params.devices if holder_set == "devices"
                     else self._params.guardians)
            for (hs, index, sealed), name in zip(
                    [x for x in dealt.sealed if x[0] == holder_set], names, strict=True):
                if name == self.services.self_name:
                    continue  # kept in genesis.dealt, sealed to ourselves
                kind = SealedShare if holder_set == "devices" else SealedGuardianShare
                effects.append(eng.Send(to=(name,), message=kind(
                    account=msgspec.msgpack.encode(dealt.account), holder_set=hs,
                    share_index=index, sealed_share=sealed,
                    timeout_ms=round(timeout * 1000))))
        st1 = state.send_device_shares(dealt)
        self._state = st1.send_guardian_shares(dealt)
        effects.append(eng.ArmTimer(name=DEADLINE_TIMER, deadline=inp.now + timeout))
        return effects + self._maybe_finish()

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        assert self._dealt is not None
        msg = inp.message
        if not isinstance(msg, ShareAck):
            return [_reject(inp.sender, "wrong_phase",
                            f"dealer got {type(msg).__name__}, expected ShareAck")]
        try:
            check_ack(self._dealt.account, inp.sender, msg)
        except GenesisError as exc:
            return [_reject(inp.sender, exc.code, exc.message)]
        if self._roles.get(inp.sender) != msg.holder_set:
            return [_reject(inp.sender, "genesis",
                            f"{inp.sender} acknowledged a {msg.holder_set} share it was not "
                            f"dealt")]
        self._acks.setdefault(inp.sender, msg)
        return self._maybe_finish()

    def _maybe_finish(self) -> list[eng.Effect]:
        st = self._state
        assert st is not None and self._dealt is not None
        if phase_of(st) is not CollectingAcks:
            return []
        record = self._dealt.account
        try:
            w_dev = verify_acks(record, "devices", self._others("devices"), self._acks)
            w_gua = verify_acks(record, "guardians", self._others("guardians"), self._acks)
        except WitnessError:
            return []  # not yet
        self._state = st.devices_acknowledged(w_dev).guardians_acknowledged(w_gua)
        return self._announce()

    def _own_established(self) -> AccountEstablished:
        assert self._dealt is not None and self._state is not None
        me = self.services.self_name
        record = self._dealt.account
        held: list[HeldShare] = []
        for hs, index, sealed in self._dealt.sealed:
            holder_set: HolderSet = "devices" if hs == "devices" else "guardians"
            if any(h.name == me and h.index == index for h in record.holders(holder_set)):
                held.append(genesis_held_share(holder_set=holder_set, index=index,
                                               sealed=sealed,
                                               session_id=self._state.session_id))
        return AccountEstablished(account=record, shares=tuple(held))

    def _announce(self) -> list[eng.Effect]:
        st = self._state
        assert st is not None and self._dealt is not None
        record = self._dealt.account
        done = GenesisComplete(account_id=record.account_id, public_key=record.public_key)
        effects: list[eng.Effect] = [
            eng.RecordEvidence(kind=KIND_ACCOUNT,
                               body=encode_established(self._own_established())),
            eng.CancelTimer(name=DEADLINE_TIMER),
        ]
        others = tuple(n for n, r in self._roles.items() if r != "dealer")
        if others:
            effects.append(eng.Send(to=others, message=done))
        self._state = st.announce_to_devices().announce_to_guardians()
        return [*effects, eng.Complete(result=record.to_json())]

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        st = self._state
        if st is None or phase_of(st) is not CollectingAcks:
            return []
        missing = sorted({n for n, r in self._roles.items() if r != "dealer"}
                         - set(self._acks))
        self._state = st.time_out()
        return [eng.Fail(code="timeout", reason=f"no ShareAck from {', '.join(missing)}")]

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        m = GenesisAbort(reason=reason)
        if ph is Dealing:
            self._state = st.peer_aborted_dealing(m) if by_peer else st.abort_dealing()
        elif ph is CollectingAcks:
            self._state = st.peer_aborted_collecting(m) if by_peer else st.abort_collecting()
        elif ph is Announcing:
            self._state = st.peer_aborted_announcing(m) if by_peer else st.abort_announcing()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": "Starting" if self._state is None else phase_of(self._state).__name__,
            "acks": sorted(self._acks),
        }
        if self._dealt is not None:
            out["account_id"] = self._dealt.account.account_id
        return out

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        start: eng.Start | None = None
        dealt: DealtBody | None = None
        established = False
        acks: list[tuple[str, ShareAck]] = []
        for ev in eng.parse_evidence(evidence):
            if isinstance(ev, eng.Started):
                start = ev.start
            elif isinstance(ev, eng.DriverRecord) and ev.kind == KIND_DEALT and dealt is None:
                dealt = msgspec.msgpack.decode(ev.body, type=DealtBody)
            elif isinstance(ev, eng.DriverRecord) and ev.kind == KIND_ACCOUNT:
                established = True
            elif isinstance(ev, eng.Received) and ev.envelope.step == "ShareAck":
                acks.append((ev.sender, eng.decode_message(ev.envelope, ShareAck)))
        if start is None or dealt is None:
            return None  # nothing was dealt or sent: abort; a new session deals afresh
        drv = cls(services)
        drv._setup(start)
        drv._dealt = dealt
        for sender, ack in acks:
            try:
                check_ack(dealt.account, sender, ack)
            except GenesisError:
                continue
            if drv._roles.get(sender) == ack.holder_set:
                drv._acks.setdefault(sender, ack)
        if established:
            drv._state = GenesisDealer._restore(GenesisDealer[Completed],
                                                session_id=start.session, dealt=dealt)
        else:
            drv._state = GenesisDealer._restore(GenesisDealer[CollectingAcks],
                                                session_id=start.session, dealt=dealt)
        return drv

    def resume(self, now: float) -> list[eng.Effect]:
        # every journaled ack was counted again; if they were all there, the step that saw the
        # last one journaled the outcome too - so this only fires for a crash between them,
        # which a step's atomic group commit rules out. Kept for safety (idempotent).
        return self._maybe_finish()


class _HolderDriver(eng.ProtocolDriver):
    holder_set: HolderSet
    #: the role's typestate class (GenesisHolder / GenesisGuardianHolder: same machine)
    machine: ClassVar[Any]

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: Any = None
        self._roles: dict[str, str] = {}
        self._dealer = ""
        self._account: AccountRecord | None = None

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._roles = dict(inp.roles)
        self._dealer = inp.opened_by or ""
        self._state = self.machine(session_id=inp.session)
        return []

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        msg = inp.message
        if inp.sender != self._dealer:
            return [_reject(inp.sender, "not_dealer", f"{inp.sender} is not the dealer "
                                                      f"{self._dealer}")]
        ph = phase_of(st)
        if isinstance(msg, SealedShare | SealedGuardianShare) and ph is AwaitingShare:
            self._state = st.receive_share(msg)
            return self._verify_and_ack(inp.now)
        if isinstance(msg, GenesisComplete) and ph is AwaitingCompletion:
            assert self._account is not None
            if (msg.account_id, msg.public_key) != (self._account.account_id,
                                                    self._account.public_key):
                return [_reject(inp.sender, "genesis", "GenesisComplete for another account")]
            self._state = st.receive_complete(msg)
            return [eng.CancelTimer(name=DEADLINE_TIMER),
                    eng.Complete(result=self._account.to_json())]
        return [_reject(inp.sender, "wrong_phase",
                        f"{type(msg).__name__} in phase {ph.__name__}")]

    def _verify_and_ack(self, now: float) -> list[eng.Effect]:
        st = self._state
        assert st is not None and phase_of(st) is Verifying
        m = st.share
        assert m is not None
        key = self.services.device_key
        try:
            if m.holder_set != self.holder_set:
                raise ShareRejectedError(f"dealt a {m.holder_set} share to a "
                                         f"{self.holder_set} holder")
            record = decode_record(m.account)
            record.check()
            holder = record.holder(self.holder_set, self.services.self_name)
            if holder.device_id != key.device_id or holder.index != m.share_index:
                raise ShareRejectedError(
                    f"the record names device {holder.device_id} index {holder.index} for "
                    f"{self.services.self_name}, this device is {key.device_id} and the share "
                    f"is for index {m.share_index}")
            share = open_and_verify_share(
                commitments=record.commitments(self.holder_set), sealed=m.sealed_share,
                index=m.share_index, device_key=key, account_id=record.account_id,
                session_id=st.session_id,
                role="device" if self.holder_set == "devices" else "guardian")
            public_share = Point.base_mul(share.value).to_bytes()
            del share
        except AuraError as exc:
            raise ShareRejectedError(f"share from {self._dealer} rejected: {exc}") from None
        self._account = record
        held = genesis_held_share(holder_set=self.holder_set, index=m.share_index,
                                  sealed=m.sealed_share, session_id=st.session_id)
        ack = ShareAck(account_id=record.account_id, holder_set=self.holder_set,
                       share_index=m.share_index, public_share=public_share)
        self._state = st.acknowledge(ack)
        return [
            eng.RecordEvidence(kind=KIND_ACCOUNT, body=encode_established(
                AccountEstablished(account=record, shares=(held,)))),
            eng.Send(to=(self._dealer,), message=ack),
            eng.ArmTimer(name=DEADLINE_TIMER, deadline=now + m.timeout_ms / 1000),
        ]

    def resume(self, now: float) -> list[eng.Effect]:
        if self._state is not None and phase_of(self._state) is Verifying:
            return self._verify_and_ack(now)
        return []

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        m = GenesisAbort(reason=reason)
        if ph is AwaitingShare:
            self._state = st.peer_aborted_awaiting(m) if by_peer else st.abort_awaiting()
        elif ph is Verifying:
            self._state = st.peer_aborted_verifying(m) if by_peer else st.abort_verifying()
        elif ph is AwaitingCompletion:
            self._state = st.peer_aborted_completion(m) if by_peer else st.abort_completion()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": "Starting" if self._state is None else phase_of(self._state).__name__,
            "dealer": self._dealer,
        }
        if self._account is not None:
            out["account_id"] = self._account.account_id
        return out

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        start: eng.Start | None = None
        share: AnyShare | None = None
        established: AccountEstablished | None = None
        for ev in eng.parse_evidence(evidence):
            if isinstance(ev, eng.Started):
                start = ev.start
            elif isinstance(ev, eng.Received) and share is None and \
                    ev.envelope.step in ("SealedShare", "SealedGuardianShare"):
                share = eng.decode_message(ev.envelope, _SHARE_TYPES[ev.envelope.step])
            elif isinstance(ev, eng.DriverRecord) and ev.kind == KIND_ACCOUNT:
                established = decode_established(ev.body)
        if start is None:
            return None
        drv = cls(services)
        drv.start(start)
        if share is None:
            return drv  # AwaitingShare
        if established is None:
            drv._state = cls.machine._restore(cls.machine[Verifying],
                                                session_id=start.session, share=share)
            return drv  # resume() verifies and acknowledges (nothing was journaled)
        if msgspec.msgpack.encode(established.account) != share.account:
            return None  # the journal contradicts itself: refuse to guess
        drv._account = established.account
        drv._state = cls.machine._restore(cls.machine[AwaitingCompletion],
                                            session_id=start.session, share=share)
        return drv


_SHARE_TYPES: dict[str, type[SealedShare] | type[SealedGuardianShare]] = {
    "SealedShare": SealedShare, "SealedGuardianShare": SealedGuardianShare}


class GenesisDeviceDriver(_HolderDriver):
    choreography = CHOREOGRAPHY
    role = "devices"
    holder_set: HolderSet = "devices"
    machine = GenesisHolder


class GenesisGuardianDriver(_HolderDriver):
    choreography = CHOREOGRAPHY
    role = "guardians"
    holder_set: HolderSet = "guardians"
    machine = GenesisGuardianHolder


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


HolderRole = Literal["devices", "guardians"]

SPEC = eng.register_protocol(
    eng.ProtocolSpec(
        choreography=CHOREOGRAPHY,
        drivers={"dealer": GenesisDealerDriver, "devices": GenesisDeviceDriver,
                 "guardians": GenesisGuardianDriver},
        message_types={"SealedShare": SealedShare, "SealedGuardianShare": SealedGuardianShare,
                       "ShareAck": ShareAck,
                       "GenesisComplete": GenesisComplete, "GenesisAbort": GenesisAbort},
        openers={"SealedShare": eng.Opener(sender_role="dealer", role="devices"),
                 "SealedGuardianShare": eng.Opener(sender_role="dealer", role="guardians")},
        initiator_role="dealer",
        validate_params=validate_params,
        bindings=bindings,
    )
)
