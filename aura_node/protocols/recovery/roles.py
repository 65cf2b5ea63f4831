"""Guardian recovery: the new device's, the guardians' and the existing devices' role machines
and their runtime drivers.

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
reaches tells the new device (:class:`RecoveryVetoed`) and aborts the session; the runtime fans
that abort out to every role the guardian knows (the other guardians included), so one veto
that reaches one guardian in time stops the others as well.

Phases (see ``choreography.py`` for the wire order):

    new_device: Initiated --RecoveryRequest--> CollectingApprovals
                CollectingApprovals --gather t_g GuardianApproval--> CollectingShares
                CollectingShares --ShareRequest; gather t_g SealedRecoveryShare--> Reconstructing
                CollectingShares --RecoveryVetoed--> Vetoed --abort--> (Failed, state Vetoed)
                Reconstructing --RecoveryComplete--> Completed     (timeouts/aborts -> Failed)
    guardian:   AwaitingRequest --RecoveryRequest--> Deciding
                Deciding --operator approves: GuardianApproval--> AwaitingThreshold
                Deciding|AwaitingThreshold --ShareRequest (ApprovalThresholdMet)--> CoolingDown
                CoolingDown --RecoveryPending to every device; own timer--> Releasing
                CoolingDown --RecoveryVeto--> Vetoed --RecoveryVetoed, abort--> Failed
                Releasing --SealedRecoveryShare (only if it approved)--> AwaitingCompletion
                AwaitingCompletion|Releasing --RecoveryComplete--> Completed
                Deciding|AwaitingThreshold --own request deadline--> Failed (timeout)
                Releasing|AwaitingCompletion --own completion deadline--> Failed (timeout)
    device:     Watching --first RecoveryPending (opens the session)--> MayVeto
                MayVeto --later RecoveryPending: watch until its watch_until if later--> MayVeto
                MayVeto --operator vetoes: RecoveryVeto to every guardian--> MayVeto
                MayVeto --RecoveryComplete (SecretReconstructed) | watch deadline--> Completed
                Watching|MayVeto --a guardian's abort--> Failed  (the new device's: ignored)

A device's veto window ends only by its own deadline (the latest ``watch_until`` of the notices
it accepted, so it covers the cooldown of every guardian it heard from), by a guardian's abort,
by the new device's ``RecoveryComplete``, never by the new device's abort
(``DeviceDriver.accepts_abort_from``): a hostile new device that aborts only towards the devices
would otherwise close their veto windows while the guardians' cooldowns run on. Nor does an
unproven ``RecoveryComplete``: it must carry a Chaum-Pedersen proof (``crypto.dleq``) that
``log_G(S) = log_H(B)`` for ``H = hash_to_group("aura/recovery/complete", account, session,
new device key)``, its context binding the same three
(:class:`~aura_node.protocols.recovery.witnesses.SecretReconstructed`). Each device and
guardian checks it against the ``S`` of **its own** account record; a missing or invalid proof
is refused before the role's monitor steps (``rejects_message``: the runtime journals it as
``misbehaviour`` with the signed envelope), so the watch goes on and a later veto is still a
valid send. The proof is deterministic (its nonce is derived from ``s``, the statement and the
context), so the step that reconstructs ``s`` can only ever produce these bytes.

A guardian that did not approve still verifies a valid ``ShareRequest``, notifies the devices
and listens for vetoes (more paths for the owners to learn and object), but never releases.

Every guardian wait is bounded by the guardian's own clock, so a lost message (a dropped
``ShareRequest``, one that arrived while it was down, a lost ``RecoveryComplete``) cannot keep
its session open forever. It arms ``share-request`` at its start, at start + approval +
cooldown + share timeouts: the new device's session began before the guardian's (the request
opens it) and cannot last longer than that, so this deadline never cuts short a recovery that
could still complete, and the abort it fans out reaches nobody still waiting on this guardian.
A valid ``ShareRequest`` cancels it (the cooldown timer takes over). When the cooldown passes it
arms ``completion`` at cooldown end + share timeout (the watch the devices are told, and no
earlier than the new device's share deadline). Either deadline ends the session in Failed
(code ``timeout``, journaled, the abort fanned out). Neither weakens the release rule: the
request deadline only fires before the guardian holds ``ApprovalThresholdMet`` (it never
releases after it), and the completion deadline only fires after the release decision.

How the new device learns the account: it knows only the id. Each approving guardian sends the
:class:`AccountRecord` it holds with its approval; the new device adopts a record only when
``ApprovalThresholdMet`` verifies over the approvals of guardians *who sent exactly that record*
(so ``t_g`` guardians agree on it, and the record's own guardian threshold is what counts). On
success it reconstructs ``s`` from ``t_g`` Feldman-checked shares (``SharesCollected``; ``s·G =
S`` checked) and journals ``account.established`` as a 1-of-1 holder: threshold 1, one device
holder (itself, index 1, public share ``S``), commitments ``(S,)``, the original guardians kept,
and its held share ``s`` HPKE-sealed to itself under purpose :data:`RECOVERED_PURPOSE`. ``s``
and the plaintext shares live only inside that one step; the journal sees sealed bytes only.

Misbehaving peers: a message that fails a check (approval from a non-guardian or for another
session/device/account, a share failing its Feldman check, a wrong-phase message, a veto from a
non-device) is journaled as a ``recovery.rejected`` driver record with a code and dropped; the
session carries on, so the honest result stands while ``t_g`` honest guardians remain. A
guardian's second, different approval is rejected as equivocation (only the first counts).

Rehydration (pure fold): a session is rebuilt by folding its journaled *inputs* - the
``session.start`` record, every accepted ``msg.in``, every ``session.control`` and every
``timer.fired`` - through the same deterministic handlers with their effects discarded. A step's
records are durable together or not at all, so every effect of a journaled input is already in
the journal (the runtime re-sends the journaled envelopes and re-arms journaled timers; nothing
is regenerated, so no approval or share is ever sent twice in two versions: Ed25519 approvals
are deterministic and the one randomised output, a sealed share, is sent in the same step as
the ``timer.fired`` that caused it). If a journaled input does not replay (the journal
contradicts the code), the fold gives up (``None``: the runtime aborts the session) rather than
guess a later phase. A completed session is never rehydrated, so the secret is never
recomputed from the journal.

Pure: no trio, no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar, final

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
from aura_node.protocols.recovery.choreography import (
    Approval,
    GuardianApproval,
    RecoveryAbort,
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
    """Guardian: share released; waiting for the new device's announcement."""


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


# --- typestate role machines -------------------------------------------------------------------


def _check_session(w: SecretReconstructed, session_id: str) -> None:
    if w.session_id != session_id:
        raise WitnessError(f"completion proven for session {w.session_id}, not {session_id}")


@final
class NewDevice(
    ChoreographicProtocol[RecoveryChoreography, S],
    choreography=CHOREOGRAPHY, role="new_device", initial=Initiated,
):
    session_id: str

    def __init__(self: NewDevice[Initiated], *, session_id: str) -> None:
        self._begin(session_id=session_id)

    @transition(source=Initiated, target=CollectingApprovals, action="send",
                message=RecoveryRequest, peer="guardians")
    def ask(self: NewDevice[Initiated]) -> NewDevice[CollectingApprovals]:
        return self._advance(NewDevice[CollectingApprovals])

    @transition(source=CollectingApprovals, target=CollectingShares, action="gather",
                message=GuardianApproval, peer="guardians")
    def approved(self: NewDevice[CollectingApprovals], w: ApprovalThresholdMet
                 ) -> NewDevice[CollectingShares]:
        if w.session_id != self.session_id:
            raise WitnessError(f"approvals for session {w.session_id}, not {self.session_id}")
        return self._advance(NewDevice[CollectingShares])

    @transition(source=CollectingApprovals, target=Failed, action="timeout")
    def approvals_timed_out(self: NewDevice[CollectingApprovals]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])

    @transition(source=CollectingShares, target=CollectingShares, action="send",
                message=ShareRequest, peer="guardians")
    def request_shares(self: NewDevice[CollectingShares]) -> NewDevice[CollectingShares]:
        return self._advance(NewDevice[CollectingShares])

    @transition(source=CollectingShares, target=Vetoed, action="gather", message=RecoveryVetoed,
                peer="guardians")
    def vetoed(self: NewDevice[CollectingShares], m: RecoveryVetoed) -> NewDevice[Vetoed]:
        return self._advance(NewDevice[Vetoed])

    @transition(source=CollectingShares, target=Reconstructing, action="gather",
                message=SealedRecoveryShare, peer="guardians")
    def shares_collected(self: NewDevice[CollectingShares], w: SharesCollected
                         ) -> NewDevice[Reconstructing]:
        if w.session_id != self.session_id:
            raise WitnessError(f"shares for session {w.session_id}, not {self.session_id}")
        return self._advance(NewDevice[Reconstructing])

    @transition(source=CollectingShares, target=Failed, action="timeout")
    def shares_timed_out(self: NewDevice[CollectingShares]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])

    @transition(source=Vetoed, target=Failed, action="abort")
    def end_vetoed(self: NewDevice[Vetoed]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])

    @transition(source=Reconstructing, target=Reconstructing, action="send",
                message=RecoveryComplete, peer="guardians")
    def announce_to_guardians(self: NewDevice[Reconstructing]) -> NewDevice[Reconstructing]:
        return self._advance(NewDevice[Reconstructing])

    @transition(source=Reconstructing, target=Completed, action="send",
                message=RecoveryComplete, peer="devices")
    def announce_to_devices(self: NewDevice[Reconstructing]) -> NewDevice[Completed]:
        return self._advance(NewDevice[Completed])

    @transition(source=Initiated, target=Failed, action="abort")
    def abort_initiated(self: NewDevice[Initiated]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])

    @transition(source=CollectingApprovals, target=Failed, action="abort")
    def abort_approvals(self: NewDevice[CollectingApprovals]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])

    @transition(source=CollectingShares, target=Failed, action="abort")
    def abort_shares(self: NewDevice[CollectingShares]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])

    @transition(source=Reconstructing, target=Failed, action="abort")
    def abort_reconstructing(self: NewDevice[Reconstructing]) -> NewDevice[Failed]:
        return self._advance(NewDevice[Failed])


@final
class Guardian(
    ChoreographicProtocol[RecoveryChoreography, S],
    choreography=CHOREOGRAPHY, role="guardians", initial=AwaitingRequest,
):
    session_id: str

    def __init__(self: Guardian[AwaitingRequest], *, session_id: str) -> None:
        self._begin(session_id=session_id)

    @transition(source=AwaitingRequest, target=Deciding, action="recv", message=RecoveryRequest,
                peer="new_device")
    def requested(self: Guardian[AwaitingRequest], m: RecoveryRequest) -> Guardian[Deciding]:
        return self._advance(Guardian[Deciding])

    @transition(source=Deciding, target=AwaitingThreshold, action="send",
                message=GuardianApproval, peer="new_device")
    def approve(self: Guardian[Deciding], m: GuardianApproval) -> Guardian[AwaitingThreshold]:
        return self._advance(Guardian[AwaitingThreshold])

    @transition(source=AwaitingThreshold, target=CoolingDown, action="recv",
                message=ShareRequest, peer="new_device")
    def threshold_met(self: Guardian[AwaitingThreshold], w: ApprovalThresholdMet
                      ) -> Guardian[CoolingDown]:
        return self._advance(Guardian[CoolingDown])

    @transition(source=Deciding, target=CoolingDown, action="recv", message=ShareRequest,
                peer="new_device")
    def threshold_met_without_me(self: Guardian[Deciding], w: ApprovalThresholdMet
                                 ) -> Guardian[CoolingDown]:
        return self._advance(Guardian[CoolingDown])

    @transition(source=Deciding, target=Failed, action="timeout")
    def no_request_undecided(self: Guardian[Deciding]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingThreshold, target=Failed, action="timeout")
    def no_request(self: Guardian[AwaitingThreshold]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=CoolingDown, target=CoolingDown, action="send", message=RecoveryPending,
                peer="devices")
    def notify_devices(self: Guardian[CoolingDown]) -> Guardian[CoolingDown]:
        return self._advance(Guardian[CoolingDown])

    @transition(source=CoolingDown, target=Vetoed, action="gather", message=RecoveryVeto,
                peer="devices")
    def vetoed(self: Guardian[CoolingDown], m: RecoveryVeto) -> Guardian[Vetoed]:
        return self._advance(Guardian[Vetoed])

    @transition(source=Vetoed, target=Vetoed, action="send", message=RecoveryVetoed,
                peer="new_device")
    def report_veto(self: Guardian[Vetoed]) -> Guardian[Vetoed]:
        return self._advance(Guardian[Vetoed])

    @transition(source=CoolingDown, target=Releasing, action="timeout")
    def cooled_down(self: Guardian[CoolingDown]) -> Guardian[Releasing]:
        return self._advance(Guardian[Releasing])

    @transition(source=Releasing, target=AwaitingCompletion, action="send",
                message=SealedRecoveryShare, peer="new_device")
    def release(self: Guardian[Releasing]) -> Guardian[AwaitingCompletion]:
        return self._advance(Guardian[AwaitingCompletion])

    @transition(source=Releasing, target=Completed, action="recv", message=RecoveryComplete,
                peer="new_device")
    def completed_without_me(self: Guardian[Releasing], w: SecretReconstructed
                             ) -> Guardian[Completed]:
        _check_session(w, self.session_id)
        return self._advance(Guardian[Completed])

    @transition(source=AwaitingCompletion, target=Completed, action="recv",
                message=RecoveryComplete, peer="new_device")
    def completed(self: Guardian[AwaitingCompletion], w: SecretReconstructed
                  ) -> Guardian[Completed]:
        _check_session(w, self.session_id)
        return self._advance(Guardian[Completed])

    @transition(source=Releasing, target=Failed, action="timeout")
    def no_completion_unreleased(self: Guardian[Releasing]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="timeout")
    def no_completion(self: Guardian[AwaitingCompletion]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingRequest, target=Failed, action="abort")
    def abort_awaiting(self: Guardian[AwaitingRequest]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=Deciding, target=Failed, action="abort")
    def abort_deciding(self: Guardian[Deciding]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingThreshold, target=Failed, action="abort")
    def abort_threshold(self: Guardian[AwaitingThreshold]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=CoolingDown, target=Failed, action="abort")
    def abort_cooling(self: Guardian[CoolingDown]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=Vetoed, target=Failed, action="abort")
    def abort_vetoed(self: Guardian[Vetoed]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=Releasing, target=Failed, action="abort")
    def abort_releasing(self: Guardian[Releasing]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])

    @transition(source=AwaitingCompletion, target=Failed, action="abort")
    def abort_completion(self: Guardian[AwaitingCompletion]) -> Guardian[Failed]:
        return self._advance(Guardian[Failed])


@final
class AccountDevice(
    ChoreographicProtocol[RecoveryChoreography, S],
    choreography=CHOREOGRAPHY, role="devices", initial=Watching,
):
    session_id: str

    def __init__(self: AccountDevice[Watching], *, session_id: str) -> None:
        self._begin(session_id=session_id)

    @transition(source=Watching, target=MayVeto, action="gather", message=RecoveryPending,
                peer="guardians")
    def notified(self: AccountDevice[Watching], m: RecoveryPending) -> AccountDevice[MayVeto]:
        return self._advance(AccountDevice[MayVeto])

    @transition(source=Watching, target=Failed, action="timeout")
    def never_notified(self: AccountDevice[Watching]) -> AccountDevice[Failed]:
        return self._advance(AccountDevice[Failed])

    @transition(source=MayVeto, target=MayVeto, action="send", message=RecoveryVeto,
                peer="guardians")
    def veto(self: AccountDevice[MayVeto]) -> AccountDevice[MayVeto]:
        return self._advance(AccountDevice[MayVeto])

    @transition(source=MayVeto, target=Completed, action="recv", message=RecoveryComplete,
                peer="new_device")
    def completed(self: AccountDevice[MayVeto], w: SecretReconstructed
                  ) -> AccountDevice[Completed]:
        _check_session(w, self.session_id)
        return self._advance(AccountDevice[Completed])

    @transition(source=MayVeto, target=Completed, action="timeout")
    def stop_watching(self: AccountDevice[MayVeto]) -> AccountDevice[Completed]:
        return self._advance(AccountDevice[Completed])

    @transition(source=Watching, target=Failed, action="abort")
    def abort_watching(self: AccountDevice[Watching]) -> AccountDevice[Failed]:
        return self._advance(AccountDevice[Failed])

    @transition(source=MayVeto, target=Failed, action="abort")
    def abort_may_veto(self: AccountDevice[MayVeto]) -> AccountDevice[Failed]:
        return self._advance(AccountDevice[Failed])


# --- parameters (what the control handlers call) --------------------------------------------


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryParams:
    account: str
    guardians: tuple[str, ...]
    #: this (the recovering) device's configured name
    new_device: str

    def to_json(self) -> dict[str, Any]:
        return {"account": self.account, "guardians": list(self.guardians),
                "new_device": self.new_device}


def parse_params(params: Mapping[str, Any]) -> RecoveryParams:
    unknown = sorted(set(params) - {"account", "guardians", "new_device"})
    if unknown:
        raise eng.ParamsError(f"recovery start: unknown parameters {unknown}")
    for key in ("account", "guardians", "new_device"):
        if key not in params:
            raise eng.ParamsError(f"recovery start needs {key}")
    account = params["account"]
    if not isinstance(account, str) or not account:
        raise eng.ParamsError(f"account must be an account id, got {account!r}")
    guardians = _names(params["guardians"], "guardians")
    if not guardians:
        raise eng.ParamsError("recovery start needs at least one guardian")
    new_device = params["new_device"]
    if not isinstance(new_device, str) or not new_device:
        raise eng.ParamsError(f"new_device must be a name, got {new_device!r}")
    if new_device in guardians:
        raise eng.ParamsError(f"{new_device} cannot be its own guardian")
    return RecoveryParams(account=account, guardians=guardians, new_device=new_device)


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return parse_params(params).to_json()


def start_params(args: Mapping[str, Any], services: NodeServices) -> dict[str, Any]:
    """``recovery.start {account, guardians}`` -> session params (every guardian must be a
    pinned peer with role ``guardian``; this device becomes ``new_device``)."""
    params = parse_params({"account": args.get("account"),
                           "guardians": args.get("guardians") or (),
                           "new_device": services.self_name})
    for g in params.guardians:
        peer = services.peers.get(g)
        if peer is None:
            raise eng.ParamsError(f"guardian {g!r} is not a pinned peer of this device")
        if peer.role != "guardian":
            raise eng.ParamsError(f"{g!r} is pinned with role {peer.role!r}, not guardian")
    return params.to_json()


def session_roles(params: Mapping[str, Any]) -> dict[str, str]:
    """The role assignment the new device starts its session with."""
    p = parse_params(params)
    return {p.new_device: "new_device", **dict.fromkeys(p.guardians, "guardians")}


def bindings(start: eng.Start, opening: msgspec.Struct | None) -> dict[str, int]:
    """Role-set sizes for the monitors. ``t_g`` and ``d`` are not known when a session opens
    (the new device learns them from the guardians' records): they bind to their minimum (1),
    so the new device's monitor closes each gather at the first message and accepts the rest
    as stragglers; the driver enforces the real ``t_g`` through the witnesses.

    A device's ``g`` is the account's guardian count as the opening notice states it (every
    guardian that verifies the approvals notifies every device, not only the ``t_g`` whose
    approvals it carries); the driver rejects a notice whose list differs from its record."""
    if isinstance(opening, RecoveryRequest):
        return {"g": max(len(opening.guardians), 1)}
    if isinstance(opening, RecoveryPending):
        return {"g": max(len(opening.guardians), len(opening.approvals), 1)}
    return {"g": len(parse_params(start.params).guardians)}


# --- shared helpers -------------------------------------------------------------------------


def abort_is_veto(reason: str, by_peer: str | None) -> bool:
    """Whether a peer's abort reports a veto. The runtime hands ``on_abort`` the reason as
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


def _reject(peer: str, code: str, reason: str) -> eng.RecordEvidence:
    """A rejected peer message, journaled as evidence (the session carries on)."""
    return eng.rejection(KIND_REJECTED, peer=peer, code=code, reason=reason)


def _completion_proven(sender: str, msg: RecoveryComplete, account: AccountRecord,
                       session_id: str) -> SecretReconstructed:
    """Verify ``msg``'s proof of ``s`` against ``account`` (the verifier's own record)."""
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
    """Device id -> pinned key of the record's guardians this device has pinned."""
    out: dict[str, DevicePublicKey] = {}
    for h in record.guardians:
        try:
            info = services.member(h.name)
        except AuraError:
            continue
        if info.device_id == h.device_id:
            out[h.device_id] = info.public_key
    return out


def _pinned_names(names: Sequence[str], services: NodeServices) -> list[str]:
    return [n for n in names if n != services.self_name and n in services.peers]


class _Replayable(eng.ProtocolDriver):
    """Rehydration by folding the journaled inputs through the handlers (module doc)."""

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        spec = eng.PROTOCOLS[CHOREOGRAPHY]
        drv: Self | None = None
        try:
            for ev in eng.parse_evidence(evidence):
                if isinstance(ev, eng.Started):
                    drv = cls(services)
                    drv.start(ev.start)
                elif drv is None:
                    continue
                elif isinstance(ev, eng.Received):
                    if ev.envelope.step == "RecoveryAbort":
                        continue
                    msg = eng.decode_message(ev.envelope, spec.message_types[ev.envelope.step])
                    drv.on_message(eng.MessageIn(sender=ev.sender, sender_role=ev.sender_role,
                                                 message=msg, envelope=ev.envelope, now=ev.now))
                elif isinstance(ev, eng.Controlled):
                    drv.on_control(eng.ControlAction(action=ev.action, args=ev.args,
                                                     now=ev.now))
                elif isinstance(ev, eng.TimerEvent) and ev.event == "fired":
                    drv.on_timer(eng.TimerFired(name=ev.name, now=ev.deadline))
        except AuraError:
            return None  # the journal and the code disagree: refuse to guess
        return drv


# --- the new device -----------------------------------------------------------------------------


class NewDeviceDriver(_Replayable):
    choreography = CHOREOGRAPHY
    role = "new_device"

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: NewDevice[Any] | None = None
        self._params: RecoveryParams | None = None
        self._roles: dict[str, str] = {}
        self._session = ""
        #: guardian name -> (its approval statement, the record bytes it sent)
        self._approvals: dict[str, tuple[SignedStatement, bytes]] = {}
        self._account: AccountRecord | None = None
        self._witness_signers: tuple[str, ...] = ()
        #: verified (sealed) shares, by guardian name; opened again in the final step
        self._shares: dict[str, SealedGuardianShare] = {}
        self._vetoed_by = ""
        self._result: dict[str, Any] | None = None

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._params = p = parse_params(inp.params)
        self._session = inp.session
        self._roles = {self.services.self_name: "new_device",
                       **dict.fromkeys(p.guardians, "guardians")}
        key = self.services.device_key
        st = NewDevice(session_id=inp.session)
        self._state = st.ask()
        deadline = inp.now + self.services.protocols.recovery_approval_timeout_seconds
        return [
            eng.Send(to=p.guardians, message=RecoveryRequest(
                account_id=p.account, new_device_public_key=key.public.raw,
                guardians=p.guardians)),
            eng.ArmTimer(name=APPROVAL_TIMER, deadline=deadline),
        ]

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        msg, ph = inp.message, phase_of(st)
        if self._roles.get(inp.sender) != "guardians":
            return [_reject(inp.sender, "not_guardian", f"{inp.sender} is not a guardian here")]
        try:
            if isinstance(msg, GuardianApproval):
                if ph is not CollectingApprovals:
                    return []  # a straggler: the threshold is met already
                return self._on_approval(inp.sender, msg, inp.now)
            if isinstance(msg, SealedRecoveryShare) and ph is CollectingShares:
                return self._on_share(inp.sender, msg)
            if isinstance(msg, RecoveryVetoed) and ph is CollectingShares:
                self._vetoed_by = msg.vetoed_by
                self._state = st.vetoed(msg)
                return [eng.Fail(code="vetoed", reason=f"{inp.sender} reports a veto by "
                                                       f"{msg.vetoed_by}: {msg.reason}")]
        except RecoveryError as exc:
            return [_reject(inp.sender, exc.code, exc.message)]
        if isinstance(msg, SealedRecoveryShare) and ph is Reconstructing:
            return []  # straggler share after the threshold
        return [_reject(inp.sender, "wrong_phase",
                        f"{type(msg).__name__} from {inp.sender} in phase {ph.__name__}")]

    def _on_approval(self, sender: str, msg: GuardianApproval, now: float) -> list[eng.Effect]:
        assert self._params is not None
        key = self.services.device_key
        st = to_statement(msg.approval)
        guardian_key = self.services.member(sender).public_key
        try:
            verify_statement(st, members={guardian_key.device_id: guardian_key},
                             session_id=self._session, choreography=CHOREOGRAPHY,
                             domain=APPROVAL_DOMAIN)
        except WitnessError as exc:
            raise RecoveryError(f"approval from {sender} rejected: {exc.message}") from None
        if st.payload != approval_payload(account_id=self._params.account,
                                          new_device_key=key.public):
            raise RecoveryError(f"approval from {sender} is not for account "
                                f"{self._params.account} onto this device")
        record = decode_record(msg.account)
        if record.account_id != self._params.account:
            raise RecoveryError(f"{sender} sent the record of account {record.account_id}")
        try:
            holder = record.holder("guardians", sender)
        except AuraError:
            raise RecoveryError(f"approval from {sender}, who is not a guardian of "
                                f"{record.account_id} by its own record") from None
        if holder.device_id != guardian_key.device_id:
            raise RecoveryError(f"the record {sender} sent names another key for it")
        prev = self._approvals.get(sender)
        if prev is not None:
            if prev != (st, msg.account):
                raise RecoveryError(f"{sender} sent a second, different approval "
                                    "(equivocation; the first one counts)")
            return []
        self._approvals[sender] = (st, msg.account)
        return self._maybe_threshold(now)

    def _maybe_threshold(self, now: float) -> list[eng.Effect]:
        st = self._state
        assert st is not None and self._params is not None
        by_record: dict[bytes, list[SignedStatement]] = {}
        for statement, raw in self._approvals.values():
            by_record.setdefault(raw, []).append(statement)
        for raw, statements in sorted(by_record.items(), key=lambda kv: -len(kv[1])):
            record = decode_record(raw)
            try:
                w = ApprovalThresholdMet.verify(
                    statements, account=record, session_id=self._session,
                    new_device=self.services.device_key.public,
                    pinned=_pinned_guardians(record, self.services))
            except WitnessError:
                continue
            self._account = record
            self._witness_signers = w.guardians
            for name in _pinned_names([h.name for h in record.devices], self.services):
                self._roles.setdefault(name, "devices")
            st2 = st.approved(w)
            self._state = st2.request_shares()
            deadline = (now + self.services.protocols.recovery_cooldown_seconds
                        + self.services.protocols.recovery_share_timeout_seconds)
            return [
                eng.CancelTimer(name=APPROVAL_TIMER),
                eng.Send(to=self._params.guardians, message=ShareRequest(
                    approvals=tuple(to_wire(s) for s in w.evidence.statements))),
                eng.ArmTimer(name=SHARE_TIMER, deadline=deadline),
            ]
        return []

    def _on_share(self, sender: str, msg: SealedRecoveryShare) -> list[eng.Effect]:
        account = self._account
        assert account is not None
        try:
            holder = account.holder("guardians", sender)
        except AuraError:
            raise RecoveryError(f"share from {sender}, who is not a guardian of "
                                f"{account.account_id}") from None
        if holder.index != msg.share_index:
            raise RecoveryError(f"{sender} sent a share for index {msg.share_index}, its index "
                                f"is {holder.index}")
        if sender in self._shares:
            raise RecoveryError(f"a second share from {sender} (the first one counts)")
        try:
            share = open_recovery_share(
                commitments=account.commitments("guardians"), sealed=msg.sealed_share,
                guardian_index=msg.share_index, device_key=self.services.device_key,
                account_id=account.account_id, session_id=self._session)
        except AuraError as exc:
            raise RecoveryError(f"share from {sender} fails its check: {exc.message}") from None
        del share  # opened again inside the witness; plaintext never leaves this step
        self._shares[sender] = SealedGuardianShare(sender=sender, index=msg.share_index,
                                                   sealed=msg.sealed_share)
        if len(self._shares) < account.guardian_threshold:
            return []
        return self._reconstruct()

    def _reconstruct(self) -> list[eng.Effect]:
        st = self._state
        account = self._account
        assert st is not None and account is not None and self._params is not None
        key = self.services.device_key
        w = SharesCollected.verify(list(self._shares.values()), account=account,
                                   session_id=self._session, device_key=key)
        st2 = st.shares_collected(w)
        secret = reconstruct(w, account)
        # the proof of knowledge of s that lets the devices end their watch (module doc);
        # deterministic, so this step can only ever produce these bytes
        proof_point, proof = prove_completion(
            secret, account_public_key=account.public_key, account_id=account.account_id,
            session_id=self._session, new_device_key=key.public.raw)
        big_s = Point.from_bytes(account.public_key)
        held = HeldShare(
            holder_set="devices", index=1, purpose=RECOVERED_PURPOSE, session_id=self._session,
            sealed=seal_share(Share(index=1, value=secret), key.public, SealBinding(
                purpose=RECOVERED_PURPOSE, account_id=account.account_id,
                session_id=self._session, recipient_device_id=key.device_id)))
        del secret, w  # the last references to s and the plaintext shares
        record = AccountRecord(
            account_id=account.account_id, public_key=account.public_key, threshold=1,
            devices=(AccountHolder(name=self.services.self_name, device_id=key.device_id,
                                   index=1, public_share=account.public_key),),
            device_commitments=FeldmanCommitments(points=(big_s,)).to_bytes(),
            guardians=account.guardians, guardian_threshold=account.guardian_threshold,
            guardian_commitments=account.guardian_commitments)
        record.check()
        done = RecoveryComplete(account_id=account.account_id,
                                account_public_key=account.public_key,
                                new_device_public_key=key.public.raw,
                                proof_point=proof_point, proof=proof)
        effects: list[eng.Effect] = [
            eng.RecordEvidence(kind=KIND_ACCOUNT, body=encode_established(
                AccountEstablished(account=record, shares=(held,)))),
            eng.CancelTimer(name=SHARE_TIMER),
            eng.Send(to=self._params.guardians, message=done),
        ]
        st3 = st2.announce_to_guardians()
        devices = tuple(n for n, r in self._roles.items() if r == "devices")
        if devices:
            effects.append(eng.Send(to=devices, message=done))
        self._state = st3.announce_to_devices()
        self._result = {"session": self._session, "account": account.account_id,
                        "guardians": list(self._params.guardians), "state": "Completed"}
        return [*effects, eng.Complete(result=self._result)]

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        ph = phase_of(st)
        if inp.name == APPROVAL_TIMER and ph is CollectingApprovals:
            self._state = st.approvals_timed_out()
            return [eng.Fail(code="timeout", reason=(
                f"{len(self._approvals)} guardian approval(s) by the deadline "
                f"({', '.join(sorted(self._approvals)) or 'none'}); not enough for the "
                "account's guardian threshold"))]
        if inp.name == SHARE_TIMER and ph is CollectingShares:
            self._state = st.shares_timed_out()
            return [eng.Fail(code="timeout", reason=(
                f"{len(self._shares)} verified guardian share(s) by the deadline "
                f"({', '.join(sorted(self._shares)) or 'none'})"))]
        return []

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        if abort_is_veto(reason, by_peer) and not self._vetoed_by:
            assert by_peer is not None
            self._vetoed_by = by_peer
        if ph is Initiated:
            self._state = st.abort_initiated()
        elif ph is CollectingApprovals:
            self._state = st.abort_approvals()
        elif ph is CollectingShares:
            self._state = st.abort_shares()
        elif ph is Reconstructing:
            self._state = st.abort_reconstructing()
        elif ph is Vetoed:
            self._state = st.end_vetoed()

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        state = "Vetoed" if self._vetoed_by else phase
        return {
            "phase": phase,
            "session": self._session,
            "account": self._params.account if self._params else "",
            "state": state,
            "approvals": sorted(self._approvals),
            "guardians": list(self._params.guardians) if self._params else [],
            "shares": sorted(self._shares),
        }

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)


# --- a guardian -----------------------------------------------------------------------------------


class GuardianDriver(_Replayable):
    choreography = CHOREOGRAPHY
    role = "guardians"

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: Guardian[Any] | None = None
        self._roles: dict[str, str] = {}
        self._session = ""
        self._new_device = ""
        self._new_key: DevicePublicKey | None = None
        self._account: AccountRecord | None = None
        self._approved = False
        self._threshold_signers: tuple[str, ...] = ()
        self._cooldown_ends = 0.0
        #: a veto that arrived before this guardian's cooldown began (the runtime would
        #: buffer it as early; honoured on entering CoolingDown)
        self._early_veto: tuple[str, RecoveryVeto] | None = None
        self._vetoed_by = ""

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._session = inp.session
        self._roles = dict(inp.roles)
        self._new_device = inp.opened_by or ""
        self._state = Guardian(session_id=inp.session)
        # The new device's own last deadline is its share deadline: threshold time (at most
        # its start + approval timeout) + cooldown + share timeout. Its start precedes ours
        # (our session opens with its request), so a deadline this far from our start never
        # cuts short a recovery the new device may still complete, and our abort reaches
        # nobody who is still waiting on us.
        p = self.services.protocols
        deadline = inp.now + (p.recovery_approval_timeout_seconds + p.recovery_cooldown_seconds
                              + p.recovery_share_timeout_seconds)
        return [eng.ArmTimer(name=REQUEST_TIMER, deadline=deadline)]

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        msg, ph = inp.message, phase_of(st)
        try:
            if isinstance(msg, RecoveryRequest) and ph is AwaitingRequest:
                return self._on_request(inp.sender, msg)
            if isinstance(msg, ShareRequest) and ph in (Deciding, AwaitingThreshold):
                return self._on_share_request(inp.sender, msg, inp.now)
            if isinstance(msg, RecoveryVeto):
                return self._on_veto(inp.sender, msg)
            if isinstance(msg, RecoveryComplete) and ph in (Releasing, AwaitingCompletion):
                return self._on_complete(inp.sender, msg)
        except RecoveryError as exc:
            return [_reject(inp.sender, exc.code, exc.message)]
        return [_reject(inp.sender, "wrong_phase",
                        f"{type(msg).__name__} from {inp.sender} in phase {ph.__name__}")]

    def _on_request(self, sender: str, msg: RecoveryRequest) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        if sender != self._new_device:
            raise RecoveryError(f"request from {sender}, the session was opened by "
                                f"{self._new_device}")
        sender_key = self.services.member(sender).public_key
        if msg.new_device_public_key != sender_key.raw:
            raise RecoveryError(f"{sender} asks to recover onto a key that is not its own")
        try:
            account = self.services.accounts.get(msg.account_id)
            self.services.accounts.held_share(msg.account_id, "guardians")
        except AuraError as exc:
            raise RecoveryError(f"not a guardian of {msg.account_id}: {exc.message}") from None
        self._account = account.account
        self._new_key = sender_key
        names = {h.name for h in account.account.guardians}
        for g in _pinned_names([g for g in msg.guardians if g in names], self.services):
            self._roles.setdefault(g, "guardians")
        for d in _pinned_names([h.name for h in account.account.devices], self.services):
            self._roles.setdefault(d, "devices")
        self._state = st.requested(msg)
        return []

    def _check_threshold(self, statements: Sequence[SignedStatement]) -> ApprovalThresholdMet:
        assert self._account is not None and self._new_key is not None
        try:
            return ApprovalThresholdMet.verify(
                statements, account=self._account, session_id=self._session,
                new_device=self._new_key, pinned=_pinned_guardians(self._account, self.services))
        except WitnessError as exc:
            raise RecoveryError(f"forwarded approvals rejected: {exc.message}") from None

    def _on_share_request(self, sender: str, msg: ShareRequest, now: float) -> list[eng.Effect]:
        st = self._state
        assert st is not None and self._account is not None and self._new_key is not None
        if sender != self._new_device:
            raise RecoveryError(f"ShareRequest from {sender}, not the new device")
        w = self._check_threshold([to_statement(a) for a in msg.approvals])
        self._threshold_signers = w.guardians
        self._state = (st.threshold_met(w) if phase_of(st) is AwaitingThreshold
                       else st.threshold_met_without_me(w))
        self._cooldown_ends = now + self.services.protocols.recovery_cooldown_seconds
        effects: list[eng.Effect] = [eng.CancelTimer(name=REQUEST_TIMER),
                                     eng.ArmTimer(name=COOLDOWN_TIMER,
                                                  deadline=self._cooldown_ends)]
        devices = tuple(n for n, r in self._roles.items() if r == "devices")
        if devices:
            effects.append(eng.Send(to=devices, message=RecoveryPending(
                account_id=self._account.account_id, new_device=self._new_device,
                new_device_public_key=self._new_key.raw, approvals=msg.approvals,
                cooldown_ends=self._cooldown_ends,
                watch_until=(self._cooldown_ends
                             + self.services.protocols.recovery_share_timeout_seconds),
                guardians=tuple(h.name for h in self._account.guardians))))
        self._state = self._state.notify_devices()
        if self._early_veto is not None:
            return [*effects, *self._veto_now(*self._early_veto)]
        return effects

    def _on_veto(self, sender: str, msg: RecoveryVeto) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        if self._roles.get(sender) != "devices":
            raise RecoveryError(f"veto from {sender}, who is not a device of the account")
        if self._account is not None and msg.account_id != self._account.account_id:
            raise RecoveryError(f"veto from {sender} names account {msg.account_id}")
        ph = phase_of(st)
        if ph in (AwaitingRequest, Deciding, AwaitingThreshold):
            if self._early_veto is None:
                self._early_veto = (sender, msg)
            return []
        if ph is CoolingDown:
            return self._veto_now(sender, msg)
        raise RecoveryError(f"veto from {sender} arrived in phase {ph.__name__}, after this "
                            "guardian's cooldown")

    def _veto_now(self, sender: str, msg: RecoveryVeto) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        self._vetoed_by = sender
        st2 = st.vetoed(msg)
        self._state = st2.report_veto()
        return [
            eng.CancelTimer(name=COOLDOWN_TIMER),
            eng.Send(to=(self._new_device,), message=RecoveryVetoed(vetoed_by=sender,
                                                                    reason=msg.reason)),
            eng.Fail(code="vetoed", reason=f"vetoed by {sender}: {msg.reason}"),
        ]

    def rejects_message(
        self, sender: str, sender_role: str, message: msgspec.Struct
    ) -> str | None:
        """An unproven RecoveryComplete is refused before the monitor steps (module doc)."""
        if not isinstance(message, RecoveryComplete) or self._account is None \
                or self._new_key is None:
            return None
        try:
            self._proven_completion(sender, message)
        except AuraError as exc:
            return exc.message
        return None

    def _proven_completion(self, sender: str, msg: RecoveryComplete) -> SecretReconstructed:
        assert self._account is not None and self._new_key is not None
        if sender != self._new_device or msg.account_id != self._account.account_id or \
                msg.new_device_public_key != self._new_key.raw:
            raise RecoveryError(f"RecoveryComplete from {sender} does not fit this session")
        return _completion_proven(sender, msg, self._account, self._session)

    def _on_complete(self, sender: str, msg: RecoveryComplete) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        w = self._proven_completion(sender, msg)
        self._state = (st.completed(w) if phase_of(st) is AwaitingCompletion
                       else st.completed_without_me(w))
        return [eng.Complete(result=self._summary())]

    def on_control(self, inp: eng.ControlAction) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        if inp.action != "approve":
            return super().on_control(inp)
        ph = phase_of(st)
        if ph is not Deciding:
            # an operator's mistake must not abort the recovery: answer, change nothing
            return [eng.Reply(result={
                "session": self._session, "state": ph.__name__,
                "error": f"not awaiting this guardian's approval (phase {ph.__name__})"})]
        assert self._account is not None and self._new_key is not None
        approval = sign_approval(self.services.device_key, session_id=self._session,
                                 account_id=self._account.account_id,
                                 new_device_key=self._new_key)
        message = GuardianApproval(approval=to_wire(approval),
                                   account=msgspec.msgpack.encode(self._account))
        self._approved = True
        self._state = st.approve(message)
        return [eng.Send(to=(self._new_device,), message=message),
                eng.Reply(result={"session": self._session, "state": "AwaitingThreshold"})]

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        ph = phase_of(st)
        if inp.name == REQUEST_TIMER and ph in (AwaitingRequest, Deciding, AwaitingThreshold):
            return self._request_timed_out(st)
        if inp.name == COMPLETION_TIMER and ph in (Releasing, AwaitingCompletion):
            return self._completion_timed_out(st)
        if inp.name != COOLDOWN_TIMER or ph is not CoolingDown:
            return []
        st2 = st.cooled_down()
        self._state = st2
        # the devices watch until cooldown end + share timeout; so long does this guardian
        # wait for the announcement (the new device's share deadline is no later)
        wait = eng.ArmTimer(name=COMPLETION_TIMER, deadline=(
            self._cooldown_ends + self.services.protocols.recovery_share_timeout_seconds))
        if not self._approved:
            return [wait]  # never approved: it only watched for vetoes
        assert self._account is not None and self._new_key is not None
        services = self.services
        held = services.accounts.held_share(self._account.account_id, "guardians")
        share = open_held_share(self._account, held, services.device_key)
        sealed = seal_share(share, self._new_key, recovery_binding(
            account_id=self._account.account_id, session_id=self._session,
            new_device_id=self._new_key.device_id))
        index = share.index
        del share
        self._state = st2.release()
        return [eng.Send(to=(self._new_device,), message=SealedRecoveryShare(
            share_index=index, sealed_share=sealed)), wait]

    def _request_timed_out(self, st: Guardian[Any]) -> list[eng.Effect]:
        """No valid ``ShareRequest`` by this guardian's deadline: it ends in Failed, having
        released nothing (a ``ShareRequest`` after this finds the session over)."""
        ph = phase_of(st)
        if ph is Deciding:
            self._state = st.no_request_undecided()
        elif ph is AwaitingThreshold:
            self._state = st.no_request()
        # AwaitingRequest (the opening request was rejected): the runtime's abort moves it
        what = "approved" if self._approved else "had not approved"
        return [eng.Fail(code="timeout", reason=(
            f"no valid ShareRequest from {self._new_device or 'the new device'} by this "
            f"guardian's deadline (it {what}); no share released"))]

    def _completion_timed_out(self, st: Guardian[Any]) -> list[eng.Effect]:
        """No ``RecoveryComplete`` by the end of the watch: the outcome is unknown here."""
        if phase_of(st) is AwaitingCompletion:
            self._state = st.no_completion()
            what = "its share was released"
        else:
            self._state = st.no_completion_unreleased()
            what = "it released no share (it had not approved)"
        return [eng.Fail(code="timeout", reason=(
            f"no RecoveryComplete from {self._new_device} by this guardian's deadline; {what}; "
            "the recovery's outcome is unknown here"))]

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        if abort_is_veto(reason, by_peer) and not self._vetoed_by:
            assert by_peer is not None
            self._vetoed_by = by_peer  # another guardian a veto reached stopped this one
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        for phase, method in ((AwaitingRequest, "abort_awaiting"), (Deciding, "abort_deciding"),
                              (AwaitingThreshold, "abort_threshold"),
                              (CoolingDown, "abort_cooling"), (Vetoed, "abort_vetoed"),
                              (Releasing, "abort_releasing"),
                              (AwaitingCompletion, "abort_completion")):
            if ph is phase:
                self._state = getattr(st, method)()
                return

    def _summary(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"session": self._session,
                "account": self._account.account_id if self._account else "",
                "state": "Vetoed" if self._vetoed_by else phase,
                "new_device": self._new_device, "approved": self._approved}

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"phase": phase, **self._summary(),
                "approvals": list(self._threshold_signers)}

    @property
    def awaiting_approval(self) -> bool:
        """For ``recovery.pending``: this guardian's operator has a decision to make."""
        return self._state is not None and phase_of(self._state) is Deciding

    def pending_entry(self) -> dict[str, Any]:
        """One ``recovery.pending`` item: {session, account, new_device}."""
        return {"session": self._session,
                "account": self._account.account_id if self._account else "",
                "new_device": self._new_device}

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)


# --- an existing account device ------------------------------------------------------------------


class DeviceDriver(_Replayable):
    choreography = CHOREOGRAPHY
    role = "devices"

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: AccountDevice[Any] | None = None
        self._roles: dict[str, str] = {}
        self._session = ""
        self._notice: RecoveryPending | None = None
        self._notified_by: list[str] = []
        self._vetoed = False
        #: the latest ``watch_until`` of the notices accepted (the watch timer's deadline)
        self._watch_until = 0.0
        #: a guardian's abort reported a veto (this device's or another's)
        self._ended_by_veto = False

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._session = inp.session
        self._roles = dict(inp.roles)
        self._state = AccountDevice(session_id=inp.session)
        return []

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        msg, ph = inp.message, phase_of(st)
        try:
            if isinstance(msg, RecoveryPending):
                return self._on_notice(inp.sender, msg)
            if isinstance(msg, RecoveryComplete) and ph is MayVeto:
                w = self._proven_completion(inp.sender, msg)
                self._state = st.completed(w)
                return [eng.CancelTimer(name=WATCH_TIMER), eng.Complete(result=self._summary())]
        except RecoveryError as exc:
            return [_reject(inp.sender, exc.code, exc.message)]
        return [_reject(inp.sender, "wrong_phase",
                        f"{type(msg).__name__} from {inp.sender} in phase {ph.__name__}")]

    def rejects_message(
        self, sender: str, sender_role: str, message: msgspec.Struct
    ) -> str | None:
        """An unproven RecoveryComplete is refused before the monitor steps, so the veto
        window stays open and the operator's veto still leaves (module doc)."""
        if not isinstance(message, RecoveryComplete) or self._notice is None:
            return None
        try:
            self._proven_completion(sender, message)
        except AuraError as exc:
            return exc.message
        return None

    def _proven_completion(self, sender: str, msg: RecoveryComplete) -> SecretReconstructed:
        """Only a proof of s against this device's own record of S ends the watch."""
        assert self._notice is not None
        if sender != self._notice.new_device or msg.account_id != self._notice.account_id or \
                msg.new_device_public_key != self._notice.new_device_public_key:
            raise RecoveryError(f"RecoveryComplete from {sender} does not fit")
        try:
            record = self.services.accounts.get(msg.account_id).account
        except AuraError as exc:
            raise RecoveryError(f"RecoveryComplete: {exc.message}") from None
        return _completion_proven(sender, msg, record, self._session)

    def _on_notice(self, sender: str, msg: RecoveryPending) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        try:
            record = self.services.accounts.get(msg.account_id).account
            record.holder("guardians", sender)
        except AuraError as exc:
            raise RecoveryError(f"notice from {sender}: {exc.message}") from None
        mine = tuple(h.name for h in record.guardians)
        if msg.guardians != mine:
            # the monitor was bound with the count the opening notice claimed
            raise RecoveryError(f"notice from {sender} lists guardians {list(msg.guardians)}, "
                                f"the account record here lists {list(mine)}")
        if self._notice is not None:
            if (msg.account_id, msg.new_device_public_key) != (
                    self._notice.account_id, self._notice.new_device_public_key):
                raise RecoveryError(f"{sender} describes a different recovery than "
                                    f"{self._notified_by[0]}")
            if sender not in self._notified_by:
                self._notified_by.append(sender)
            if msg.watch_until > self._watch_until:
                # this guardian's cooldown ends later than the first one's: a veto matters
                # until it has passed, so the watch lasts as long as the latest notice says
                self._watch_until = msg.watch_until
                return [eng.ArmTimer(name=WATCH_TIMER, deadline=msg.watch_until)]
            return []
        try:
            new_key = DevicePublicKey(msg.new_device_public_key)
            ApprovalThresholdMet.verify(
                [to_statement(a) for a in msg.approvals], account=record,
                session_id=self._session, new_device=new_key,
                pinned=_pinned_guardians(record, self.services))
        except (WitnessError, ValueError) as exc:
            raise RecoveryError(f"notice from {sender}: approvals rejected: {exc}") from None
        if phase_of(st) is not Watching:  # pragma: no cover - the first notice opens it
            raise RecoveryError("notice in a later phase")
        self._notice = msg
        self._notified_by.append(sender)
        for g in _pinned_names([h.name for h in record.guardians], self.services):
            self._roles.setdefault(g, "guardians")
        pinned_new = self.services.peers.get(msg.new_device)
        if pinned_new is not None and pinned_new.public_key.raw == msg.new_device_public_key:
            self._roles.setdefault(msg.new_device, "new_device")
        self._state = st.notified(msg)
        self._watch_until = msg.watch_until
        return [eng.ArmTimer(name=WATCH_TIMER, deadline=msg.watch_until)]

    def on_control(self, inp: eng.ControlAction) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        if inp.action != "veto":
            return super().on_control(inp)
        if phase_of(st) is not MayVeto:
            ph = phase_of(st).__name__
            return [eng.Reply(result={"session": self._session, "state": ph,
                                      "error": f"nothing to veto in phase {ph}"})]
        assert self._notice is not None
        guardians = tuple(n for n, r in self._roles.items() if r == "guardians")
        effects: list[eng.Effect] = []
        if not self._vetoed:
            self._vetoed = True
            reason = str(inp.args.get("reason") or "vetoed by an account device")
            effects.append(eng.Send(to=guardians, message=RecoveryVeto(
                account_id=self._notice.account_id, reason=reason)))
            self._state = st.veto()
        return [*effects, eng.Reply(result={"session": self._session, "state": "Vetoed"})]

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        st = self._state
        assert st is not None
        if inp.name != WATCH_TIMER or phase_of(st) is not MayVeto:
            return []
        self._state = st.stop_watching()
        return [eng.Complete(result=self._summary())]

    def accepts_abort_from(self, sender: str, sender_role: str) -> bool:
        """Only a guardian's abort (its word that the recovery ended) may end the watch.

        The new device is the party the veto window protects against: were its abort to end
        the watch, a hostile new device could abort only the devices (not the guardians),
        closing every veto window while the guardians' cooldowns run on to the release. Its
        abort is dropped; the device watches on until its own deadline, a guardian's abort,
        or the new device's ``RecoveryComplete``."""
        return sender_role != "new_device"

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        if abort_is_veto(reason, by_peer):
            self._ended_by_veto = True  # (another device's) veto reached a guardian
        st = self._state
        if st is None:
            return
        ph = phase_of(st)
        if ph is Watching:
            self._state = st.abort_watching()
        elif ph is MayVeto:
            self._state = st.abort_may_veto()

    def _summary(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"session": self._session,
                "account": self._notice.account_id if self._notice else "",
                "state": ("Vetoed" if (self._vetoed or self._ended_by_veto)
                          and phase != "Completed" else phase),
                "new_device": self._notice.new_device if self._notice else "",
                "notified_by": list(self._notified_by), "vetoed": self._vetoed}

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        approvals = ([to_statement(a).signer_id for a in self._notice.approvals]
                     if self._notice else [])
        return {"phase": phase, **self._summary(), "approvals": approvals}

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)


MESSAGE_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    t.__name__: t for t in (RecoveryRequest, GuardianApproval, ShareRequest, RecoveryPending,
                            RecoveryVeto, RecoveryVetoed, SealedRecoveryShare, RecoveryComplete,
                            RecoveryAbort)
}

SPEC = eng.register_protocol(
    eng.ProtocolSpec(
        choreography=CHOREOGRAPHY,
        drivers={"new_device": NewDeviceDriver, "guardians": GuardianDriver,
                 "devices": DeviceDriver},
        message_types=MESSAGE_TYPES,
        openers={"RecoveryRequest": eng.Opener(sender_role="new_device", role="guardians"),
                 "RecoveryPending": eng.Opener(sender_role="guardians", role="devices")},
        initiator_role="new_device",
        validate_params=validate_params,
        bindings=bindings,
    )
)
