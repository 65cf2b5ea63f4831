"""The guardian recovery choreography.

Roles: ``new_device`` (a fresh device asking to be recovered), ``guardians`` (role set of ``g``,
threshold ``t_g``) and ``devices`` (the account's existing devices as its record lists them,
``d >= 1``; some or all may be lost, which is why recovery exists).

1. Initiated: the new device asks every guardian (:class:`RecoveryRequest`).
2. CollectingApprovals: a guardian approves only when its operator says so (``ctl recovery
   approve``); silence is a refusal. Its :class:`GuardianApproval` carries its signed approval
   (bound to account, session and the new device's key) and the account record it holds: the
   new device knows the account only by id and accepts the record ``t_g`` approving guardians
   agree on. Below ``t_g`` approvals by ``recovery_approval_timeout`` the new device aborts.
3. CollectingShares: the new device forwards the ``t_g`` approvals (:class:`ShareRequest`).
   Each guardian verifies them (``ApprovalThresholdMet``) and only then starts **its own**
   cooldown and tells **every existing device** itself (:class:`RecoveryPending`, a fan-out
   from each member of one role set to every member of another: a gather whose receiver is a
   role set; each device's session opens with the first notice it gets). During the cooldown
   any device may veto: :class:`RecoveryVeto` goes from the device to every guardian, never
   through the new device. The devices are an *optional role* (``connect=True`` on that
   fan-out): a path that never notifies them leaves them out of the session entirely, and the
   first notice is their quorum, so they have no deadline before it. A guardian that a veto
   reaches before its cooldown ends tells the new device (:class:`RecoveryVetoed`, which ends
   the new device in Vetoed) and aborts the session, so the abort reaches every role it knows
   (the other guardians included).
   A guardian never waits for the ``ShareRequest`` unbounded (it may be lost): its own deadline
   (``recovery_approval_timeout``, measured from its own start as approval + cooldown + share
   timeouts, so it cannot pass before the new device's own last deadline) ends it in Failed,
   before it released anything.
4. When a guardian's own cooldown passes without a veto it releases its share, HPKE-sealed to
   the new device (:class:`SealedRecoveryShare`); the new device gathers ``t_g`` shares before
   ``recovery_share_timeout`` (counted from the end of the cooldown).
5. Reconstructing: each share is checked against the guardian's public share, ``s`` is
   interpolated and ``s·G = S`` checked; the new device announces :class:`RecoveryComplete` to
   the guardians and (if pinned) the devices, with a proof of knowledge of ``s`` bound to the
   session; each recipient checks it against the ``S`` of its own account record and ignores
   (journals as rejected) an announcement without a valid proof. A device that hears nothing
   stops watching when its deadline passes (it cannot veto any more by then); a guardian that
   hears nothing by ``recovery_share_timeout`` after its own cooldown (the same bound the
   devices watch to) aborts.
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """A guardian's signed approval as it travels (a ``SignedStatement`` in wire form)."""

    signer: bytes  # the guardian's Ed25519 public key
    session_id: str
    payload: bytes  # witnesses.approval_payload(account, new device key)
    signature: bytes


class RecoveryRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Opens a guardian's session: recover ``account_id`` onto this (the sender's) device."""

    account_id: str
    new_device_public_key: bytes
    #: the guardians this new device asked, by configured name
    guardians: tuple[str, ...]


class GuardianApproval(msgspec.Struct, frozen=True, kw_only=True):
    approval: Approval
    #: the AccountRecord this guardian holds (msgpack)
    account: bytes


class ShareRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The approvals the new device collected (each guardian checks the threshold itself)."""

    approvals: tuple[Approval, ...]


class RecoveryPending(msgspec.Struct, frozen=True, kw_only=True):
    """A guardian tells an account device: recovery onto ``new_device`` has ``t_g`` approvals;
    this guardian releases its share at ``cooldown_ends`` unless a veto reaches it first."""

    account_id: str
    new_device: str
    new_device_public_key: bytes
    approvals: tuple[Approval, ...]
    cooldown_ends: float
    #: when the device stops watching (the new device's share deadline)
    watch_until: float
    #: the account's guardians by name, from this guardian's record (every one that verifies
    #: the approvals notifies every device: the device's monitor is bound for all of them;
    #: the device checks the list against its own record)
    guardians: tuple[str, ...] = ()


class RecoveryVeto(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    reason: str


class RecoveryVetoed(msgspec.Struct, frozen=True, kw_only=True):
    """A guardian received a veto: no share will come from it; the recovery is over."""

    vetoed_by: str
    reason: str


class SealedRecoveryShare(msgspec.Struct, frozen=True, kw_only=True):
    share_index: int
    sealed_share: bytes


class RecoveryComplete(msgspec.Struct, frozen=True, kw_only=True):
    """The new device reconstructed ``s``, and proves it: ``proof`` is a DLEQ proof that
    ``log_G(S) = log_H(proof_point)`` for ``S`` the account public key and ``H`` a base bound
    to account, session and new device key (``witnesses.SecretReconstructed``). Without a
    valid proof the announcement ends nobody's watch."""

    account_id: str
    account_public_key: bytes
    new_device_public_key: bytes
    #: ``B = s·H`` (empty: no proof, rejected)
    proof_point: bytes = b""
    #: the 64-byte Chaum-Pedersen proof (empty: no proof, rejected)
    proof: bytes = b""


class RecoveryAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("recovery", abort=RecoveryAbort)
def RECOVERY(c: ChoreographyBuilder) -> None:
    new_device = c.role("new_device")
    guardians = c.role_set("guardians", size="g", minimum=1)
    devices = c.role_set("devices", size="d", minimum=1)
    t_g = c.threshold("t_g", of=guardians, minimum=1)

    c.phase(new_device, "Initiated")
    c.phase(guardians, "AwaitingRequest")
    c.phase(devices, "Watching")
    c.send(new_device, guardians, RecoveryRequest)

    c.phase(new_device, "CollectingApprovals")
    c.phase(guardians, "Deciding")
    c.gather(
        guardians,
        new_device,
        GuardianApproval,
        threshold=t_g,
        deadline="recovery_approval_timeout",
        optional=True,
    )

    c.phase(new_device, "CollectingShares")
    c.phase(guardians, "AwaitingThreshold")
    # each guardian bounds its own wait (step 3 of the module doc); on its deadline it aborts,
    # before releasing anything
    c.send(new_device, guardians, ShareRequest, deadline="recovery_approval_timeout")

    # fan-out: every guardian that verified the threshold notifies every device itself
    c.phase(guardians, "CoolingDown")
    # the devices are an optional role: the first notice connects them (each device's session
    # starts with it, and it is their quorum: no deadline), so a recovery that never gets here
    # (too few approvals, a guardian's request deadline) never involves them, not even with
    # its abort
    c.gather(
        guardians, devices, RecoveryPending, threshold=1, deadline=None, optional=True,
        connect=True,
    )
    c.phase(devices, "MayVeto")
    veto = c.gather(
        devices, guardians, RecoveryVeto, threshold=1, deadline="recovery_cooldown",
        optional=True,
    )
    with veto.on_quorum():
        c.phase(guardians, "Vetoed")
        c.gather(
            guardians, new_device, RecoveryVetoed, threshold=1,
            deadline="recovery_share_timeout",
        )
        c.phase(new_device, "Vetoed")
        c.abort(new_device)
    with veto.on_timeout():
        pass  # this guardian's own cooldown passed without a veto reaching it

    c.phase(guardians, "Releasing")
    c.gather(
        guardians,
        new_device,
        SealedRecoveryShare,
        threshold=t_g,
        deadline="recovery_share_timeout",
        optional=True,
    )

    c.phase(new_device, "Reconstructing")
    c.phase(guardians, "AwaitingCompletion")
    # each guardian bounds this wait too (step 5): no announcement by then, it aborts
    c.send(new_device, guardians, RecoveryComplete, deadline="recovery_share_timeout")
    done = c.send(new_device, devices, RecoveryComplete, deadline="recovery_share_timeout")
    with done.on_timeout():
        pass  # the device stops watching; by then it could not veto anyway
    c.phase(new_device, "Completed")
    c.phase(guardians, "Completed")
    c.phase(devices, "Completed")
