"""Guardian recovery: the new device's, the guardians' and the existing devices' roles, written
on the authoring kit (``aura_node.protocols.kit``).

Theory of operation
-------------------
The security rule is that a guardian releases its share only when **both** hold *at that
guardian*: (a) it holds an :class:`~aura_node.protocols.recovery.witnesses.ApprovalThresholdMet`
witness - ``t_g`` guardians of the account signed approvals bound to the account, this session
and the new device's key - and (b) **its own** cooldown timer
(``protocols.recovery_cooldown_seconds``) ran out without a veto reaching it. Nothing in that
rule trusts the new device: it forwards the approvals, but every guardian re-verifies them; the
existing devices hear of the recovery from each guardian directly (:class:`RecoveryPending`),
and their veto goes straight to every guardian (:class:`RecoveryVeto`). A hostile new device can
therefore neither hide the recovery from the devices nor swallow a veto. A guardian that a veto
reaches tells the new device (:class:`RecoveryVetoed`) and fails with code ``vetoed``; the
runtime fans that abort out to every role the guardian knows (the other guardians included),
so one veto that reaches one guardian in time stops the others as well. Every role reports
``Vetoed`` afterwards: its ``aborting`` hook reads the abort's reason (:func:`abort_is_veto`).

Phases (see ``choreography.py`` for the wire order; every non-final phase aborts to Failed):

    new_device: Initiated --RecoveryRequest--> CollectingApprovals
                CollectingApprovals --gather t_g GuardianApproval--> CollectingShares
                CollectingShares --ShareRequest (on entry); gather t_g SealedRecoveryShare-->
                Reconstructing --RecoveryComplete to guardians, then devices--> Completed
                CollectingShares --RecoveryVetoed--> Vetoed (fails, code vetoed)
    guardian:   AwaitingRequest --RecoveryRequest--> Deciding
                Deciding --operator approves (``approve``): GuardianApproval--> AwaitingThreshold
                Deciding|AwaitingThreshold --ShareRequest (ApprovalThresholdMet)--> CoolingDown
                CoolingDown --RecoveryPending to every device (on entry); own timer--> Releasing
                CoolingDown --RecoveryVeto--> Vetoed --RecoveryVetoed (fails, code vetoed)
                Releasing --SealedRecoveryShare (only if it approved)--> AwaitingCompletion
                AwaitingCompletion --RecoveryComplete (SecretReconstructed)--> Completed
                Deciding|AwaitingThreshold --own request deadline--> Failed (timeout)
                AwaitingCompletion --own completion deadline--> Failed (timeout)
    device:     Watching --first RecoveryPending (connects it: opens the session)--> MayVeto
                MayVeto --later RecoveryPending (a straggler): watch until its watch_until
                MayVeto --operator vetoes (``veto``): RecoveryVeto to every guardian--> MayVeto
                MayVeto --RecoveryComplete (SecretReconstructed) | watch deadline--> Completed

A device's veto window ends only by its own deadline (the latest ``watch_until`` of the notices
it accepted, so it covers the cooldown of every guardian it heard from), by a guardian's abort,
by the new device's ``RecoveryComplete``, never by the new device's abort
(``AccountDevice.accepts_abort_from``): a hostile new device that aborts only towards the
devices would otherwise close their veto windows while the guardians' cooldowns run on. Nor
does an unproven ``RecoveryComplete``: it must carry a Chaum-Pedersen proof (``crypto.dleq``)
that ``log_G(S) = log_H(B)`` for ``H = hash_to_group("aura/recovery/complete", account,
session, new device key)``, its context binding the same three
(:class:`~aura_node.protocols.recovery.witnesses.SecretReconstructed`). Each device and
guardian checks it against the ``S`` of **its own** account record; a missing or invalid proof
is refused before the role's monitor steps (the ``screen`` hook: the runtime journals it as
``misbehaviour`` with the signed envelope), so the watch goes on and a later veto is still a
valid send. The proof is deterministic (its nonce is derived from ``s``, the statement and the
context), so the step that reconstructs ``s`` can only ever produce these bytes.

A guardian that did not approve still verifies a valid ``ShareRequest``, notifies the devices
and listens for vetoes (more paths for the owners to learn and object), but never releases
(its release step sends nothing).

Every guardian wait is bounded by the guardian's own clock, so a lost message cannot keep its
session open forever. It arms ``share-request`` at its start, at start + approval + cooldown +
share timeouts: the new device's session began before the guardian's (the request opens it)
and cannot last longer than that, so this deadline never cuts short a recovery that could still
complete. A valid ``ShareRequest`` cancels it (the cooldown timer takes over). When the
cooldown passes it arms ``completion`` at cooldown end + share timeout (the watch the devices
are told, no earlier than the new device's share deadline). Either deadline ends the session in
Failed (code ``timeout``). Neither weakens the release rule: the request deadline only fires
before the guardian holds ``ApprovalThresholdMet``, the completion deadline only after the
release decision.

How the new device learns the account: it knows only the id. Each approving guardian sends the
:class:`AccountRecord` it holds with its approval; the new device adopts a record only when
``ApprovalThresholdMet`` verifies over the approvals of guardians *who sent exactly that record*
(so ``t_g`` guardians agree on it, and the record's own guardian threshold is what counts). On
success it reconstructs ``s`` from ``t_g`` Feldman-checked shares (``SharesCollected``; ``s·G =
S`` checked) and journals ``account.established`` as a 1-of-1 holder: threshold 1, one device
holder (itself, index 1, public share ``S``), commitments ``(S,)``, the original guardians kept,
and its held share ``s`` HPKE-sealed to itself under purpose :data:`RECOVERED_PURPOSE`. ``s``
and the plaintext shares live only inside that one step; the journal sees sealed bytes only.

Misbehaving peers: a message that fails a check raises :class:`RecoveryError`; the kit journals
it as a ``recovery.rejected`` record and the session carries on, so the honest result stands
while ``t_g`` honest guardians remain. A guardian's second, different approval is rejected as
equivocation (only the first counts).

Rehydration is the kit's deterministic replay, byte-for-byte checked. Approvals (Ed25519),
notices, vetoes and the completion proof are deterministic. The one randomised message, a share
HPKE-sealed to the new device, is ``@unrepeatable``: its ephemeral key must not follow from the
journal (the journaled entropy would give away the share), so the sealed bytes are journaled as
a ``recovery.sealed_share`` draw and replay takes them from there (kit module doc). The new
device's self-sealed held share is inside ``account.established`` (a record, not a message),
written in the step that completes its session, and a completed session is never replayed, so
the secret is never recomputed from the journal.

Pure: no trio, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar, final

import msgspec

from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point
from aura_node.crypto.keys import DevicePublicKey
from aura_node.crypto.recovery import open_recovery_share, recovery_binding
from aura_node.crypto.seal import SealBinding, seal_share
from aura_node.crypto.shamir import Share
from aura_node.errors import AuraError, RemoteProtocolError, WitnessError
from aura_node.protocols import engine as eng
from aura_node.protocols.account import (
    KIND_ACCOUNT,
    AccountEstablished,
    AccountHolder,
    AccountRecord,
    HeldShare,
    encode_established,
    open_held_share,
)
from aura_node.protocols.kit import Step, protocol, unrepeatable
from aura_node.protocols.recovery.choreography import (
    RECOVERY,
    Approval,
    GuardianApproval,
    RecoveryComplete,
    RecoveryPending,
    RecoveryRequest,
    RecoveryVeto,
    RecoveryVetoed,
    SealedRecoveryShare,
    ShareRequest,
)
from aura_node.protocols.recovery.witnesses import (
    APPROVAL_DOMAIN,
    CHOREOGRAPHY,
    ApprovalThresholdMet,
    SealedGuardianShare,
    SecretReconstructed,
    SharesCollected,
    approval_payload,
    prove_completion,
    reconstruct,
    sign_approval,
)
from aura_node.protocols.services import NodeServices
from aura_node.session.typestate import ChoreographicProtocol, Phase, phase_of, transition
from aura_node.session.witness import SignedStatement, verify_statement

S = TypeVar("S")

KIND_REJECTED: Final = "recovery.rejected"
KIND_SEALED_SHARE: Final = "recovery.sealed_share"
RECOVERED_PURPOSE: Final = "recovery/recovered-share"
APPROVAL_TIMER: Final = "approvals"
SHARE_TIMER: Final = "shares"
COOLDOWN_TIMER: Final = "cooldown"
#: a guardian's bound on waiting for the ShareRequest (armed at its start)
REQUEST_TIMER: Final = "share-request"
#: a guardian's bound on waiting for RecoveryComplete (armed when its cooldown ends)
COMPLETION_TIMER: Final = "completion"
WATCH_TIMER: Final = "watch"


class RecoveryError(RemoteProtocolError):
    code = "recovery"


class RecoveryChoreography:
    """Choreography marker type."""


class RecoveryParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new device's session: recover ``account`` from ``guardians`` onto ``new_device``.
    (A guardian's or device's session opens with a message and has none: all empty.)"""

    account: str = ""
    guardians: tuple[str, ...] = ()
    #: this (the recovering) device's configured name
    new_device: str = ""

    def __post_init__(self) -> None:
        if not (self.account or self.guardians or self.new_device):
            return  # a responder's
        if not self.account or not self.new_device:
            raise ValueError("recovery needs an account id and the new device's name")
        if not self.guardians:
            raise ValueError("recovery start needs at least one guardian")
        if len(set(self.guardians)) != len(self.guardians):
            raise ValueError(f"guardians lists a name twice: {list(self.guardians)}")
        if self.new_device in self.guardians:
            raise ValueError(f"{self.new_device} cannot be its own guardian")


#: what every recovery transition is handed
RStep = Step[RecoveryParams]


# --- phases -----------------------------------------------------------------------------------


@final
class Initiated(Phase):
    """New device: about to ask the guardians."""


@final
class CollectingApprovals(Phase):
    """New device: asked; gathering signed approvals (and the account record) from guardians."""


@final
class CollectingShares(Phase):
    """New device: ``ApprovalThresholdMet`` held, approvals forwarded; waiting for the
    guardians' cooldowns and their sealed shares (or a veto)."""


@final
class Reconstructing(Phase):
    """New device: ``s`` reconstructed and checked; account journaled; announcing."""


@final
class Vetoed(Phase):
    """New device: a guardian reported a veto. Guardian: a veto reached it in its cooldown."""


@final
class AwaitingRequest(Phase):
    """Guardian: session opened, request not processed yet."""


@final
class Deciding(Phase):
    """Guardian: waiting for its operator (``ctl recovery approve``)."""


@final
class AwaitingThreshold(Phase):
    """Guardian: approved; waiting for the forwarded ``t_g`` approvals."""


@final
class CoolingDown(Phase):
    """Guardian: threshold verified, devices notified, own cooldown running."""


@final
class Releasing(Phase):
    """Guardian: cooldown passed without a veto; releases its share iff it approved."""


@final
class AwaitingCompletion(Phase):
    """Guardian: release decided; waiting for the new device's announcement."""


@final
class Watching(Phase):
    """Device: waiting for the first guardian notice (the session opens with it)."""


@final
class MayVeto(Phase):
    """Device: a recovery is pending; the operator may veto (``ctl recovery veto``)."""


@final
class Completed(Phase):
    """Every role: terminal success (a device: its watch is over)."""


@final
class Failed(Phase):
    """Every role: aborted (terminal)."""


# --- the new device -----------------------------------------------------------------------------


@final
class NewDevice(ChoreographicProtocol[RecoveryChoreography, S], choreography=CHOREOGRAPHY,
                role="new_device", initial=Initiated, abort=Failed):
    session: str
    params: RecoveryParams
    #: guardian name -> (its approval statement, the record bytes it sent)
    approvals: Mapping[str, tuple[SignedStatement, bytes]]
    #: the record ``t_g`` approving guardians agree on, and their approvals (forwarded)
    account: AccountRecord | None
    forwarded: tuple[Approval, ...]
    #: verified (sealed) shares; opened again in the step that reconstructs
    shares: tuple[SealedGuardianShare, ...]
    done: RecoveryComplete | None
    vetoed_by: str

    def __init__(self: NewDevice[Initiated], step: RStep) -> None:
        if not step.params.new_device:
            raise eng.ParamsError("recovery start needs account, guardians and new_device")
        self._begin(session=step.session, params=step.params, approvals={}, account=None,
                    forwarded=(), shares=(), done=None, vetoed_by="")

    @transition(source=Initiated, target=CollectingApprovals, action="send",
                message=RecoveryRequest, peer="guardians")
    def ask(self: NewDevice[Initiated], step: RStep
            ) -> tuple[NewDevice[CollectingApprovals], RecoveryRequest]:
        p = self.params
        step.arm(APPROVAL_TIMER,
                 at=step.now + step.services.protocols.recovery_approval_timeout_seconds)
        return self._advance(NewDevice[CollectingApprovals]), RecoveryRequest(
            account_id=p.account, new_device_public_key=step.services.device_key.public.raw,
            guardians=p.guardians)

    @transition(source=CollectingApprovals, target=CollectingShares, action="gather",
                message=GuardianApproval, peer="guardians")
    def approved(self: NewDevice[CollectingApprovals], msg: GuardianApproval, step: RStep
            ) -> NewDevice[CollectingApprovals] | NewDevice[CollectingShares]:
        sender, services = step.sender, step.services  # a guardian (the monitor checked)
        st = to_statement(msg.approval)
        guardian_key = services.member(sender).public_key
        try:
            verify_statement(st, members={guardian_key.device_id: guardian_key},
                             session_id=self.session, choreography=CHOREOGRAPHY,
                             domain=APPROVAL_DOMAIN)
        except WitnessError as exc:
            raise RecoveryError(f"approval from {sender} rejected: {exc.message}") from None
        if st.payload != approval_payload(account_id=self.params.account,
                                          new_device_key=services.device_key.public):
            raise RecoveryError(f"approval from {sender} is not for account "
                                f"{self.params.account} onto this device")
        record = decode_record(msg.account)
        if record.account_id != self.params.account:
            raise RecoveryError(f"{sender} sent the record of account {record.account_id}")
        try:
            holder = record.holder("guardians", sender)
        except AuraError:
            raise RecoveryError(f"approval from {sender}, who is not a guardian of "
                                f"{record.account_id} by its own record") from None
        if holder.device_id != guardian_key.device_id:
            raise RecoveryError(f"the record {sender} sent names another key for it")
        prev = self.approvals.get(sender)
        if prev is not None:
            if prev != (st, msg.account):
                raise RecoveryError(f"{sender} sent a second, different approval "
                                    "(equivocation; the first one counts)")
            return self._advance(NewDevice[CollectingApprovals])
        approvals = {**self.approvals, sender: (st, msg.account)}
        by_record: dict[bytes, list[SignedStatement]] = {}
        for statement, raw in approvals.values():
            by_record.setdefault(raw, []).append(statement)
        for raw, statements in sorted(by_record.items(), key=lambda kv: -len(kv[1])):
            record = decode_record(raw)
            try:
                w = ApprovalThresholdMet.verify(
                    statements, account=record, session_id=self.session,
                    new_device=services.device_key.public,
                    pinned=_pinned_guardians(record, services))
            except WitnessError:
                continue
            _learn(step, [h.name for h in record.devices], "devices")
            step.cancel(APPROVAL_TIMER)
            return self._advance(NewDevice[CollectingShares], approvals=approvals,
                                 account=record, forwarded=tuple(
                                     to_wire(s) for s in w.evidence.statements))
        return self._advance(NewDevice[CollectingApprovals], approvals=approvals)

    @transition(source=CollectingApprovals, target=Failed, action="timeout")
    def approvals_timed_out(self: NewDevice[CollectingApprovals], step: RStep) -> NewDevice[Failed]:
        step.fail("timeout", f"{len(self.approvals)} guardian approval(s) by the deadline "
                             f"({', '.join(sorted(self.approvals)) or 'none'}); not enough for "
                             "the account's guardian threshold")
        return self._advance(NewDevice[Failed])

    @transition(source=CollectingShares, target=CollectingShares, action="send",
                message=ShareRequest, peer="guardians")
    def request_shares(self: NewDevice[CollectingShares], step: RStep
            ) -> tuple[NewDevice[CollectingShares], ShareRequest]:
        p = step.services.protocols
        step.arm(SHARE_TIMER, at=step.now + p.recovery_cooldown_seconds
                 + p.recovery_share_timeout_seconds)
        return self._advance(NewDevice[CollectingShares]), ShareRequest(approvals=self.forwarded)

    @transition(source=CollectingShares, target=Vetoed, action="gather", message=RecoveryVetoed,
                peer="guardians")
    def vetoed(self: NewDevice[CollectingShares], msg: RecoveryVetoed, step: RStep
            ) -> NewDevice[Vetoed]:
        step.fail("vetoed", f"{step.sender} reports a veto by {msg.vetoed_by}: {msg.reason}")
        return self._advance(NewDevice[Vetoed], vetoed_by=msg.vetoed_by)

    @transition(source=CollectingShares, target=Reconstructing, action="gather",
                message=SealedRecoveryShare, peer="guardians")
    def share(self: NewDevice[CollectingShares], msg: SealedRecoveryShare, step: RStep
            ) -> NewDevice[CollectingShares] | NewDevice[Reconstructing]:
        account, sender, key = self.account, step.sender, step.services.device_key
        assert account is not None
        try:
            holder = account.holder("guardians", sender)
        except AuraError:
            raise RecoveryError(f"share from {sender}, who is not a guardian of "
                                f"{account.account_id}") from None
        if holder.index != msg.share_index:
            raise RecoveryError(f"{sender} sent a share for index {msg.share_index}, its index "
                                f"is {holder.index}")
        if any(s.sender == sender for s in self.shares):
            raise RecoveryError(f"a second share from {sender} (the first one counts)")
        try:  # the plaintext is dropped: it is opened again inside the witness
            open_recovery_share(
                commitments=account.commitments("guardians"), sealed=msg.sealed_share,
                guardian_index=msg.share_index, device_key=key,
                account_id=account.account_id, session_id=self.session)
        except AuraError as exc:
            raise RecoveryError(f"share from {sender} fails its check: {exc.message}") from None
        shares = (*self.shares, SealedGuardianShare(sender=sender, index=msg.share_index,
                                                    sealed=msg.sealed_share))
        if len(shares) < account.guardian_threshold:
            return self._advance(NewDevice[CollectingShares], shares=shares)
        w = SharesCollected.verify(shares, account=account, session_id=self.session,
                                   device_key=key)
        secret = reconstruct(w, account)
        # the proof of knowledge of s that lets the devices end their watch (module doc);
        # deterministic, so this step can only ever produce these bytes
        proof_point, proof = prove_completion(
            secret, account_public_key=account.public_key, account_id=account.account_id,
            session_id=self.session, new_device_key=key.public.raw)
        held = HeldShare(
            holder_set="devices", index=1, purpose=RECOVERED_PURPOSE, session_id=self.session,
            sealed=seal_share(Share(index=1, value=secret), key.public, SealBinding(
                purpose=RECOVERED_PURPOSE, account_id=account.account_id,
                session_id=self.session, recipient_device_id=key.device_id)))
        del secret, w  # the last references to s and the plaintext shares
        record = AccountRecord(
            account_id=account.account_id, public_key=account.public_key, threshold=1,
            devices=(AccountHolder(name=step.self_name, device_id=key.device_id,
                                   index=1, public_share=account.public_key),),
            device_commitments=FeldmanCommitments(
                points=(Point.from_bytes(account.public_key),)).to_bytes(),
            guardians=account.guardians, guardian_threshold=account.guardian_threshold,
            guardian_commitments=account.guardian_commitments)
        record.check()
        step.record(KIND_ACCOUNT, encode_established(AccountEstablished(account=record,
                                                                        shares=(held,))))
        step.cancel(SHARE_TIMER)
        return self._advance(NewDevice[Reconstructing], shares=shares, done=RecoveryComplete(
            account_id=account.account_id, account_public_key=account.public_key,
            new_device_public_key=key.public.raw, proof_point=proof_point, proof=proof))

    @transition(source=CollectingShares, target=Failed, action="timeout")
    def shares_timed_out(self: NewDevice[CollectingShares], step: RStep) -> NewDevice[Failed]:
        names = sorted(s.sender for s in self.shares)
        step.fail("timeout", f"{len(names)} verified guardian share(s) by the deadline "
                             f"({', '.join(names) or 'none'})")
        return self._advance(NewDevice[Failed])

    @transition(source=Reconstructing, target=Reconstructing, action="send",
                message=RecoveryComplete, peer="guardians")
    def announce_to_guardians(self: NewDevice[Reconstructing], step: RStep
            ) -> tuple[NewDevice[Reconstructing], RecoveryComplete]:
        assert self.done is not None
        return self._advance(NewDevice[Reconstructing]), self.done

    @transition(source=Reconstructing, target=Completed, action="send",
                message=RecoveryComplete, peer="devices")
    def announce_to_devices(self: NewDevice[Reconstructing], step: RStep
            ) -> tuple[NewDevice[Completed], RecoveryComplete]:
        assert self.done is not None
        step.complete(session=self.session, account=self.params.account,
                      guardians=list(self.params.guardians), state="Completed")
        return self._advance(NewDevice[Completed]), self.done

    def aborting(self, reason: str, by_peer: str | None) -> dict[str, object]:
        return _veto_fields(self.vetoed_by, reason, by_peer)

    def describe(self) -> dict[str, Any]:
        return {"session": self.session, "account": self.params.account,
                "state": "Vetoed" if self.vetoed_by else phase_of(self).__name__,
                "approvals": sorted(self.approvals), "guardians": list(self.params.guardians),
                "shares": sorted(s.sender for s in self.shares)}


# --- a guardian -----------------------------------------------------------------------------------


@final
class Guardian(ChoreographicProtocol[RecoveryChoreography, S], choreography=CHOREOGRAPHY,
               role="guardians", initial=AwaitingRequest, abort=Failed):
    session: str
    new_device: str
    new_key: DevicePublicKey | None
    account: AccountRecord | None
    approved: bool
    #: the forwarded approvals once verified, and their signers' device ids
    forwarded: tuple[Approval, ...]
    signers: tuple[str, ...]
    cooldown_ends: float
    vetoed_by: str
    veto_reason: str

    def __init__(self: Guardian[AwaitingRequest], step: RStep) -> None:
        self._begin(session=step.session, new_device=step.opened_by or "", new_key=None,
                    account=None, approved=False, forwarded=(), signers=(), cooldown_ends=0.0,
                    vetoed_by="", veto_reason="")
        # The new device's own last deadline is its share deadline: threshold time (at most
        # its start + approval timeout) + cooldown + share timeout. Its start precedes ours
        # (our session opens with its request), so this deadline never cuts it short.
        p = step.services.protocols
        step.arm(REQUEST_TIMER, at=step.now + p.recovery_approval_timeout_seconds
                 + p.recovery_cooldown_seconds + p.recovery_share_timeout_seconds)

    @transition(source=AwaitingRequest, target=Deciding, action="recv", message=RecoveryRequest,
                peer="new_device")
    def requested(self: Guardian[AwaitingRequest], msg: RecoveryRequest, step: RStep
            ) -> Guardian[Deciding]:
        # from the one device with role new_device here, the opener (the monitor checked)
        sender, services = step.sender, step.services
        sender_key = services.member(sender).public_key
        if msg.new_device_public_key != sender_key.raw:
            raise RecoveryError(f"{sender} asks to recover onto a key that is not its own")
        try:
            account = services.accounts.get(msg.account_id).account
            services.accounts.held_share(msg.account_id, "guardians")
        except AuraError as exc:
            raise RecoveryError(f"not a guardian of {msg.account_id}: {exc.message}") from None
        names = {h.name for h in account.guardians}
        _learn(step, [g for g in msg.guardians if g in names], "guardians")
        _learn(step, [h.name for h in account.devices], "devices")
        return self._advance(Guardian[Deciding], account=account, new_key=sender_key)

    @transition(source=Deciding, target=AwaitingThreshold, action="send",
                message=GuardianApproval, peer="new_device", command="approve")
    def approve(self: Guardian[Deciding], args: dict[str, Any], step: RStep
            ) -> tuple[Guardian[AwaitingThreshold], GuardianApproval]:
        assert self.account is not None and self.new_key is not None
        approval = sign_approval(step.services.device_key, session_id=self.session,
                                 account_id=self.account.account_id,
                                 new_device_key=self.new_key)
        step.reply(session=self.session, state="AwaitingThreshold")
        return self._advance(Guardian[AwaitingThreshold], approved=True), GuardianApproval(
            approval=to_wire(approval), account=msgspec.msgpack.encode(self.account))

    def _threshold(self, msg: ShareRequest, step: RStep) -> dict[str, Any]:
        """The changes of a verified ``ShareRequest``: the cooldown starts (either phase)."""
        assert self.account is not None and self.new_key is not None
        try:  # (from the new device: the monitor checked)
            w = ApprovalThresholdMet.verify(
                [to_statement(a) for a in msg.approvals], account=self.account,
                session_id=self.session, new_device=self.new_key,
                pinned=_pinned_guardians(self.account, step.services))
        except WitnessError as exc:
            raise RecoveryError(f"forwarded approvals rejected: {exc.message}") from None
        ends = step.now + step.services.protocols.recovery_cooldown_seconds
        step.cancel(REQUEST_TIMER)
        step.arm(COOLDOWN_TIMER, at=ends)
        return {"forwarded": msg.approvals, "signers": w.guardians, "cooldown_ends": ends}

    @transition(source=AwaitingThreshold, target=CoolingDown, action="recv",
                message=ShareRequest, peer="new_device")
    def threshold_met(self: Guardian[AwaitingThreshold], msg: ShareRequest, step: RStep
            ) -> Guardian[CoolingDown]:
        return self._advance(Guardian[CoolingDown], **self._threshold(msg, step))

    @transition(source=Deciding, target=CoolingDown, action="recv", message=ShareRequest,
                peer="new_device")
    def threshold_met_without_me(self: Guardian[Deciding], msg: ShareRequest, step: RStep
            ) -> Guardian[CoolingDown]:
        return self._advance(Guardian[CoolingDown], **self._threshold(msg, step))

    def _no_request(self, step: RStep) -> None:
        what = "approved" if self.approved else "had not approved"
        step.fail("timeout", f"no valid ShareRequest from {self.new_device} by this guardian's "
                             f"deadline (it {what}); no share released")

    @transition(source=Deciding, target=Failed, action="timeout")
    def no_request_undecided(self: Guardian[Deciding], step: RStep) -> Guardian[Failed]:
        self._no_request(step)
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingThreshold, target=Failed, action="timeout")
    def no_request(self: Guardian[AwaitingThreshold], step: RStep) -> Guardian[Failed]:
        self._no_request(step)
        return self._advance(Guardian[Failed])

    @transition(source=CoolingDown, target=CoolingDown, action="send", message=RecoveryPending,
                peer="devices")
    def notify_devices(self: Guardian[CoolingDown], step: RStep
            ) -> tuple[Guardian[CoolingDown], RecoveryPending]:
        assert self.account is not None and self.new_key is not None
        return self._advance(Guardian[CoolingDown]), RecoveryPending(
            account_id=self.account.account_id, new_device=self.new_device,
            new_device_public_key=self.new_key.raw, approvals=self.forwarded,
            cooldown_ends=self.cooldown_ends,
            watch_until=self.cooldown_ends + step.services.protocols.recovery_share_timeout_seconds,
            guardians=tuple(h.name for h in self.account.guardians))

    @transition(source=CoolingDown, target=Vetoed, action="gather", message=RecoveryVeto,
                peer="devices")
    def vetoed(self: Guardian[CoolingDown], msg: RecoveryVeto, step: RStep) -> Guardian[Vetoed]:
        assert self.account is not None
        if step.roles.get(step.sender) != "devices":
            raise RecoveryError(f"veto from {step.sender}, who is not a device of the account")
        if msg.account_id != self.account.account_id:
            raise RecoveryError(f"veto from {step.sender} names account {msg.account_id}")
        step.cancel(COOLDOWN_TIMER)
        return self._advance(Guardian[Vetoed], vetoed_by=step.sender, veto_reason=msg.reason)

    @transition(source=Vetoed, target=Vetoed, action="send", message=RecoveryVetoed,
                peer="new_device")
    def report_veto(self: Guardian[Vetoed], step: RStep) -> tuple[Guardian[Vetoed], RecoveryVetoed]:
        step.fail("vetoed", f"vetoed by {self.vetoed_by}: {self.veto_reason}")
        return self._advance(Guardian[Vetoed]), RecoveryVetoed(vetoed_by=self.vetoed_by,
                                                                reason=self.veto_reason)

    @transition(source=CoolingDown, target=Releasing, action="timeout")
    def cooled_down(self: Guardian[CoolingDown], step: RStep) -> Guardian[Releasing]:
        return self._advance(Guardian[Releasing])

    @unrepeatable(record=KIND_SEALED_SHARE)
    @transition(source=Releasing, target=AwaitingCompletion, action="send",
                message=SealedRecoveryShare, peer="new_device")
    def release(self: Guardian[Releasing], step: RStep
            ) -> tuple[Guardian[AwaitingCompletion], dict[str, SealedRecoveryShare]]:
        # the devices watch until cooldown end + share timeout; so long does this guardian
        # wait for the announcement (the new device's share deadline is no later)
        step.arm(COMPLETION_TIMER, at=self.cooldown_ends
                 + step.services.protocols.recovery_share_timeout_seconds)
        if not self.approved:  # it only watched for vetoes
            return self._advance(Guardian[AwaitingCompletion]), {}
        assert self.account is not None and self.new_key is not None
        services, account = step.services, self.account
        share = open_held_share(account, services.accounts.held_share(
            account.account_id, "guardians"), services.device_key)
        # HPKE: a fresh ephemeral key from the OS, journaled as a draw (module doc)
        new_key = self.new_key
        sealed = step.draw(lambda: seal_share(share, new_key, recovery_binding(
            account_id=account.account_id, session_id=self.session,
            new_device_id=new_key.device_id)))
        return self._advance(Guardian[AwaitingCompletion]), {self.new_device: SealedRecoveryShare(
            share_index=share.index, sealed_share=sealed)}

    def _done(self, msg: RecoveryComplete, step: RStep) -> None:
        assert self.account is not None
        self._proven(step.sender, msg)
        step.complete(**self._summary("Completed"))

    @transition(source=Releasing, target=Completed, action="recv", message=RecoveryComplete,
                peer="new_device")
    def completed_unreleased(self: Guardian[Releasing], msg: RecoveryComplete, step: RStep
            ) -> Guardian[Completed]:
        self._done(msg, step)  # (Releasing is left at once; the choreography allows this)
        return self._advance(Guardian[Completed])

    @transition(source=AwaitingCompletion, target=Completed, action="recv",
                message=RecoveryComplete, peer="new_device")
    def completed(self: Guardian[AwaitingCompletion], msg: RecoveryComplete, step: RStep
            ) -> Guardian[Completed]:
        self._done(msg, step)
        return self._advance(Guardian[Completed])

    def _no_completion(self, step: RStep) -> None:
        what = ("its share was released" if self.approved
                else "it released no share (it had not approved)")
        step.fail("timeout", f"no RecoveryComplete from {self.new_device} by this guardian's "
                             f"deadline; {what}; the recovery's outcome is unknown here")

    @transition(source=Releasing, target=Failed, action="timeout")
    def no_completion_unreleased(self: Guardian[Releasing], step: RStep) -> Guardian[Failed]:
        self._no_completion(step)
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="timeout")
    def no_completion(self: Guardian[AwaitingCompletion], step: RStep) -> Guardian[Failed]:
        self._no_completion(step)
        return self._advance(Guardian[Failed])

    def _proven(self, sender: str, msg: RecoveryComplete) -> SecretReconstructed:
        assert self.account is not None and self.new_key is not None
        return _completion_proven(sender, msg, self.new_device, self.new_key.raw, self.account,
                                  self.session)

    def screen(self, sender: str, sender_role: str, message: msgspec.Struct) -> str | None:
        """An unproven RecoveryComplete is refused before the monitor steps (module doc)."""
        if isinstance(message, RecoveryComplete) and self.new_key is not None:
            try:
                self._proven(sender, message)
            except AuraError as exc:
                return exc.message
        return None

    def aborting(self, reason: str, by_peer: str | None) -> dict[str, object]:
        return _veto_fields(self.vetoed_by, reason, by_peer)

    def _summary(self, state: str) -> dict[str, Any]:
        return {"session": self.session,
                "account": self.account.account_id if self.account else "",
                "state": "Vetoed" if self.vetoed_by else state,
                "new_device": self.new_device, "approved": self.approved}

    def describe(self) -> dict[str, Any]:
        return {**self._summary(phase_of(self).__name__), "approvals": list(self.signers)}


# --- an existing account device ------------------------------------------------------------------


@final
class AccountDevice(ChoreographicProtocol[RecoveryChoreography, S], choreography=CHOREOGRAPHY,
                    role="devices", initial=Watching, abort=Failed):
    session: str
    #: the first notice accepted, and this device's own record of the account
    notice: RecoveryPending | None
    record: AccountRecord | None
    notified_by: tuple[str, ...]
    #: the latest ``watch_until`` of the notices accepted (the watch timer's deadline)
    watch_until: float
    vetoed: bool
    #: a guardian's abort reported a veto (this device's or another's)
    vetoed_by: str

    def __init__(self: AccountDevice[Watching], step: RStep) -> None:
        self._begin(session=step.session, notice=None, record=None, notified_by=(),
                    watch_until=0.0, vetoed=False, vetoed_by="")

    def _own_record(self, msg: RecoveryPending, step: RStep) -> AccountRecord:
        sender = step.sender
        try:
            record = step.services.accounts.get(msg.account_id).account
            record.holder("guardians", sender)
        except AuraError as exc:
            raise RecoveryError(f"notice from {sender}: {exc.message}") from None
        mine = tuple(h.name for h in record.guardians)
        if msg.guardians != mine:
            # the monitor was bound with the count the opening notice claimed
            raise RecoveryError(f"notice from {sender} lists guardians {list(msg.guardians)}, "
                                f"the account record here lists {list(mine)}")
        return record

    @transition(source=Watching, target=MayVeto, action="gather", message=RecoveryPending,
                peer="guardians")
    def notified(self: AccountDevice[Watching], msg: RecoveryPending, step: RStep
            ) -> AccountDevice[MayVeto]:
        record, services = self._own_record(msg, step), step.services
        try:
            ApprovalThresholdMet.verify(
                [to_statement(a) for a in msg.approvals], account=record,
                session_id=self.session, new_device=DevicePublicKey(msg.new_device_public_key),
                pinned=_pinned_guardians(record, services))
        except (WitnessError, ValueError) as exc:
            raise RecoveryError(f"notice from {step.sender}: approvals rejected: {exc}") from None
        _learn(step, [h.name for h in record.guardians], "guardians")
        pinned_new = services.peers.get(msg.new_device)
        if pinned_new is not None and pinned_new.public_key.raw == msg.new_device_public_key:
            _learn(step, [msg.new_device], "new_device")
        step.arm(WATCH_TIMER, at=msg.watch_until)
        return self._advance(AccountDevice[MayVeto], notice=msg, record=record,
                             notified_by=(step.sender,), watch_until=msg.watch_until)

    @transition(source=MayVeto, target=MayVeto, action="local", message=RecoveryPending,
                peer="guardians")
    def notified_again(self: AccountDevice[MayVeto], msg: RecoveryPending, step: RStep
            ) -> AccountDevice[MayVeto]:
        self._own_record(msg, step)
        assert self.notice is not None
        if (msg.account_id, msg.new_device_public_key) != (
                self.notice.account_id, self.notice.new_device_public_key):
            raise RecoveryError(f"{step.sender} describes a different recovery than "
                                f"{self.notified_by[0]}")
        by = self.notified_by + ((step.sender,) if step.sender not in self.notified_by else ())
        if msg.watch_until <= self.watch_until:
            return self._advance(AccountDevice[MayVeto], notified_by=by)
        # this guardian's cooldown ends later than the first one's: a veto matters until it
        # has passed, so the watch lasts as long as the latest notice says
        step.arm(WATCH_TIMER, at=msg.watch_until)
        return self._advance(AccountDevice[MayVeto], notified_by=by, watch_until=msg.watch_until)

    @transition(source=MayVeto, target=MayVeto, action="send", message=RecoveryVeto,
                peer="guardians", command="veto")
    def veto(self: AccountDevice[MayVeto], args: dict[str, Any], step: RStep
            ) -> tuple[AccountDevice[MayVeto], RecoveryVeto | dict[str, RecoveryVeto]]:
        step.reply(session=self.session, state="Vetoed")
        if self.vetoed:  # one veto per device: the first one stands
            return self._advance(AccountDevice[MayVeto]), {}
        assert self.notice is not None
        return self._advance(AccountDevice[MayVeto], vetoed=True), RecoveryVeto(
            account_id=self.notice.account_id,
            reason=str(args.get("reason") or "vetoed by an account device"))

    @transition(source=MayVeto, target=Completed, action="recv", message=RecoveryComplete,
                peer="new_device")
    def completed(self: AccountDevice[MayVeto], msg: RecoveryComplete, step: RStep
            ) -> AccountDevice[Completed]:
        self._proven(step.sender, msg)
        step.cancel(WATCH_TIMER)
        step.complete(**self._summary("Completed"))
        return self._advance(AccountDevice[Completed])

    @transition(source=MayVeto, target=Completed, action="timeout")
    def stop_watching(self: AccountDevice[MayVeto], step: RStep) -> AccountDevice[Completed]:
        step.complete(**self._summary("Completed"))
        return self._advance(AccountDevice[Completed])

    def _proven(self, sender: str, msg: RecoveryComplete) -> SecretReconstructed:
        """Only a proof of s against this device's own record of S ends the watch."""
        notice, record = self.notice, self.record
        assert notice is not None and record is not None
        return _completion_proven(sender, msg, notice.new_device, notice.new_device_public_key,
                                  record, self.session)

    def screen(self, sender: str, sender_role: str, message: msgspec.Struct) -> str | None:
        """An unproven RecoveryComplete is refused before the monitor steps, so the veto
        window stays open and the operator's veto still leaves (module doc)."""
        if isinstance(message, RecoveryComplete) and self.notice is not None:
            try:
                self._proven(sender, message)
            except AuraError as exc:
                return exc.message
        return None

    def accepts_abort_from(self, sender: str, sender_role: str) -> bool:
        """Only a guardian's abort (its word that the recovery ended) may end the watch.

        The new device is the party the veto window protects against: were its abort to end
        the watch, a hostile new device could abort only the devices (not the guardians),
        closing every veto window while the guardians' cooldowns run on to the release. Its
        abort is dropped; the device watches on until its own deadline, a guardian's abort,
        or the new device's ``RecoveryComplete``."""
        return sender_role != "new_device"

    def aborting(self, reason: str, by_peer: str | None) -> dict[str, object]:
        return _veto_fields(self.vetoed_by, reason, by_peer)

    def _summary(self, state: str) -> dict[str, Any]:
        return {"session": self.session,
                "account": self.notice.account_id if self.notice else "",
                "state": ("Vetoed" if (self.vetoed or self.vetoed_by) and state != "Completed"
                          else state),
                "new_device": self.notice.new_device if self.notice else "",
                "notified_by": list(self.notified_by), "vetoed": self.vetoed}

    def describe(self) -> dict[str, Any]:
        approvals = ([to_statement(a).signer_id for a in self.notice.approvals]
                     if self.notice else [])
        return {**self._summary(phase_of(self).__name__), "approvals": approvals}


# --- parameters (what the control handlers call) --------------------------------------------


def start_params(args: Mapping[str, Any], services: NodeServices) -> dict[str, Any]:
    """``recovery.start {account, guardians}`` -> session params (every guardian must be a
    pinned peer with role ``guardian``; this device becomes ``new_device``)."""
    names = args.get("guardians") or ()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    params = SPEC.validate_params({"account": args.get("account"), "guardians": names,
                                   "new_device": services.self_name})
    for g in params["guardians"]:
        peer = services.peers.get(g)
        if peer is None:
            raise eng.ParamsError(f"guardian {g!r} is not a pinned peer of this device")
        if peer.role != "guardian":
            raise eng.ParamsError(f"{g!r} is pinned with role {peer.role!r}, not guardian")
    return params


def session_roles(params: Mapping[str, Any]) -> dict[str, str]:
    """The role assignment the new device starts its session with."""
    return {params["new_device"]: "new_device", **dict.fromkeys(params["guardians"], "guardians")}


def bindings(start: eng.Start, opening: msgspec.Struct | None) -> dict[str, int]:
    """Role-set sizes for the monitors. ``t_g`` and ``d`` are not known when a session opens
    (the new device learns them from the guardians' records): they bind to their minimum (1),
    so the new device's monitor closes each gather at the first message and accepts the rest
    as stragglers; the roles enforce the real ``t_g`` through the witnesses.

    A device's ``g`` is the account's guardian count as the opening notice states it (every
    guardian that verifies the approvals notifies every device, not only the ``t_g`` whose
    approvals it carries); the device rejects a notice whose list differs from its record."""
    if isinstance(opening, RecoveryRequest):
        return {"g": max(len(opening.guardians), 1)}
    if isinstance(opening, RecoveryPending):
        return {"g": max(len(opening.guardians), len(opening.approvals), 1)}
    return {"g": len(start.params["guardians"])}


# --- shared helpers -------------------------------------------------------------------------


def abort_is_veto(reason: str, by_peer: str | None) -> bool:
    """Whether a peer's abort reports a veto. The runtime hands the abort's reason on as
    ``"<peer> aborted: <the peer's reason>"``; the peer's reason is ``"<code>: ..."`` with the
    code of the failure it fanned out (``vetoed`` for a guardian a veto reached)."""
    if by_peer is None:
        return False
    return reason.removeprefix(f"{by_peer} aborted: ").startswith("vetoed:")


def failure_is_veto(code: str, reason: str) -> bool:
    """The same, from a session's journaled failure (``ctl recovery status`` of a session that
    ended before the last restart, when no driver is left to ask)."""
    return code == "vetoed" or (code == "aborted_by_peer"
                                and reason.partition(" aborted: ")[2].startswith("vetoed:"))


def _veto_fields(vetoed_by: str, reason: str, by_peer: str | None) -> dict[str, object]:
    """An ``aborting`` hook's changes: remember the peer whose abort reported a veto."""
    return {"vetoed_by": by_peer} if abort_is_veto(reason, by_peer) and not vetoed_by else {}


def _completion_proven(sender: str, msg: RecoveryComplete, new_device: str, new_key: bytes,
                       account: AccountRecord, session_id: str) -> SecretReconstructed:
    """Check that ``msg`` comes from the session's new device and verify its proof of ``s``
    against ``account`` (the verifier's own record)."""
    if sender != new_device or msg.account_id != account.account_id or \
            msg.new_device_public_key != new_key:
        raise RecoveryError(f"RecoveryComplete from {sender} does not fit this session")
    if msg.account_public_key != account.public_key:
        raise RecoveryError(f"RecoveryComplete from {sender} names account key "
                            f"{msg.account_public_key.hex()}, the record here holds "
                            f"{account.public_key.hex()}")
    try:
        return SecretReconstructed.verify(
            point=msg.proof_point, proof=msg.proof, account=account, session_id=session_id,
            new_device_key=msg.new_device_public_key)
    except WitnessError as exc:
        raise RecoveryError(f"RecoveryComplete from {sender} rejected: {exc.message}") from None


def to_statement(a: Approval) -> SignedStatement:
    try:
        signer = DevicePublicKey(a.signer)
    except (AuraError, ValueError) as exc:
        raise RecoveryError(f"approval signer key is malformed: {exc}") from None
    return SignedStatement(signer=signer, session_id=a.session_id, choreography=CHOREOGRAPHY,
                           payload=a.payload, signature=a.signature)


def to_wire(st: SignedStatement) -> Approval:
    return Approval(signer=st.signer.raw, session_id=st.session_id, payload=st.payload,
                    signature=st.signature)


_record_decoder = msgspec.msgpack.Decoder(AccountRecord)


def decode_record(data: bytes) -> AccountRecord:
    try:
        record = _record_decoder.decode(data)
        record.check()
    except (msgspec.DecodeError, AuraError) as exc:
        raise RecoveryError(f"account record does not decode or check: {exc}") from None
    return record


def _pinned_guardians(record: AccountRecord, services: NodeServices
                      ) -> dict[str, DevicePublicKey]:
    """Device id -> pinned key of the record's guardians (by name) this device has pinned."""
    known = {n: services.member(n) for n in (services.self_name, *services.peers)}
    return {h.device_id: known[h.name].public_key for h in record.guardians
            if h.name in known and known[h.name].device_id == h.device_id}


def _learn(step: RStep, names: Iterable[str], role: str) -> None:
    """Give the pinned peers among ``names`` ``role`` in this session (assigned roles stay)."""
    peers = step.services.peers
    step.learn_roles({n: role for n in names if n in peers and n not in step.roles})


PROTOCOL = protocol(RECOVERY, NewDevice, Guardian, AccountDevice, params=RecoveryParams,
                    initiator="new_device", bindings=bindings,
                    conformance_bindings={"g": 3, "t_g": 2, "d": 2})
SPEC = PROTOCOL.spec
NewDeviceDriver = PROTOCOL.drivers["new_device"]
GuardianDriver = PROTOCOL.drivers["guardians"]
DeviceDriver = PROTOCOL.drivers["devices"]
