"""The guardian recovery choreography.

Roles: ``new_device`` (asks to be recovered), ``guardians`` (role set of ``g``, threshold
``t_g``) and ``devices`` (the account's existing devices, ``d >= 0``: often every old device
is lost, which is why recovery exists).

1. Initiated: the new device asks every guardian.
2. CollectingApprovals: guardians *may* approve (silence is a refusal); the new device gathers
   ``t_g`` approvals before ``recovery_approval_timeout`` or fails. It then tells every
   existing device that the cooldown started; during ``recovery_cooldown`` any device may
   veto (one veto is enough). A veto ends the session in Vetoed, announced to everyone.
3. CollectingShares: when the cooldown passes without a veto, the new device asks the
   guardians for their shares (sealed to it) and gathers ``t_g`` of them.
4. Reconstructing: it verifies each share against the guardian's public share, reconstructs
   ``s`` and checks ``s * G = S``; then it announces completion to every role.
5. Completed. Missed deadlines and failed verification abort: Failed, reaching every role.

A veto that arrives after the cooldown is accepted by the monitor and dropped (the window is
decided by the new device's clock, as in any timed protocol).
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography


class RecoveryRequest(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    account_id: bytes
    new_device_public_key: bytes
    signature: bytes


class GuardianApproval(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    guardian: bytes
    approval: bytes
    signature: bytes


class CooldownStarted(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    new_device_public_key: bytes
    approvals: tuple[bytes, ...]
    cooldown_seconds: int
    signature: bytes


class RecoveryVeto(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    device: bytes
    reason: str
    signature: bytes


class RecoveryVetoed(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    veto: bytes
    signature: bytes


class ShareRequest(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    approvals: tuple[bytes, ...]
    signature: bytes


class SealedRecoveryShare(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    guardian: bytes
    share_index: int
    sealed_share: bytes
    signature: bytes


class RecoveryComplete(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    account_public_key: bytes
    new_device_public_key: bytes
    signature: bytes


class RecoveryAbort(msgspec.Struct, frozen=True, kw_only=True):
    session_id: bytes
    reason: str


@choreography("recovery", abort=RecoveryAbort)
def RECOVERY(c: ChoreographyBuilder) -> None:
    new_device = c.role("new_device")
    guardians = c.role_set("guardians", size="g", minimum=1)
    devices = c.role_set("devices", size="d", minimum=0)
    t_g = c.threshold("t_g", of=guardians, minimum=1)

    c.phase(new_device, "Initiated")
    c.send(new_device, guardians, RecoveryRequest)

    c.phase(new_device, "CollectingApprovals")
    c.gather(
        guardians,
        new_device,
        GuardianApproval,
        threshold=t_g,
        deadline="recovery_approval_timeout",
        optional=True,
    )
    c.send(new_device, devices, CooldownStarted)
    cooldown = c.gather(
        devices,
        new_device,
        RecoveryVeto,
        threshold=1,
        deadline="recovery_cooldown",
        optional=True,
    )
    with cooldown.on_quorum():
        c.phase(new_device, "Vetoed")
        c.send(new_device, guardians, RecoveryVetoed)
        c.send(new_device, devices, RecoveryVetoed)
        c.end()
    with cooldown.on_timeout():
        pass  # the cooldown passed without a veto: carry on

    c.phase(new_device, "CollectingShares")
    c.send(new_device, guardians, ShareRequest)
    c.gather(
        guardians,
        new_device,
        SealedRecoveryShare,
        threshold=t_g,
        deadline="recovery_share_timeout",
        optional=True,
    )

    c.phase(new_device, "Reconstructing")
    c.send(new_device, guardians, RecoveryComplete)
    c.send(new_device, devices, RecoveryComplete)
    c.phase(new_device, "Completed")
