"""Guardian recovery maths: rebuild the account secret from guardian shares, checked.

Theory of operation
-------------------
Each guardian ``i`` sends its share sealed to the new device (``seal.seal_share`` with
``recovery_binding``). The new device opens each with ``open_recovery_share``, which checks the
share against the *guardian* Feldman commitments (so a guardian that sends a wrong share is
caught and named, not averaged in). ``reconstruct_account_secret`` then interpolates ``s`` from
``t_g`` verified shares and checks ``s·G == S`` before returning it: a recovery never declares
success with a secret that is not the account's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aura_node.crypto.dealing import account_id_for
from aura_node.crypto.errors import ReconstructionError, ShareError
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point, Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.seal import SealBinding, open_share
from aura_node.crypto.shamir import Share, reconstruct

RECOVERY_PURPOSE: Final = "recovery/share"


def recovery_binding(*, account_id: str, session_id: str, new_device_id: str) -> SealBinding:
    """The HPKE binding of a guardian's share sent to the recovering device."""
    return SealBinding(
        purpose=RECOVERY_PURPOSE,
        account_id=account_id,
        session_id=session_id,
        recipient_device_id=new_device_id,
    )


def open_recovery_share(
    *,
    commitments: FeldmanCommitments,
    sealed: bytes,
    guardian_index: int,
    device_key: DeviceKey,
    account_id: str,
    session_id: str,
) -> Share:
    """Open guardian ``guardian_index``'s sealed share and verify it (Feldman) before use."""
    expected = account_id_for(commitments.public_key)
    if account_id != expected:
        raise ShareError(f"account id {account_id} does not match the commitments ({expected})")
    share = open_share(
        sealed,
        device_key,
        recovery_binding(
            account_id=account_id, session_id=session_id, new_device_id=device_key.device_id
        ),
        expected_index=guardian_index,
    )
    commitments.verify_share(share)
    return share


def reconstruct_account_secret(shares: Sequence[Share], commitments: FeldmanCommitments) -> Scalar:
    """Interpolate ``s`` from at least ``commitments.threshold`` shares; every share is checked
    against the commitments first and the result must satisfy ``s·G == S``."""
    for share in shares:
        commitments.verify_share(share)
    s = reconstruct(shares, threshold=commitments.threshold)
    # Unreachable once every share passed its Feldman check; kept as the final guard the
    # protocol's success claim rests on.
    if Point.base_mul(s) != commitments.public_key:  # pragma: no cover
        raise ReconstructionError(
            "reconstructed secret does not match the account public key "
            f"{commitments.public_key.hex()}"
        )
    return s
