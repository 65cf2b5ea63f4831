"""Account genesis maths: deal the account secret to its holders (dealer = one device for now).

Theory of operation
-------------------
The dealer draws the account secret ``s`` (or is given it, to deal the same ``s`` a second time
to the guardians with their own threshold), Shamir-shares it ``t``-of-``n`` among the holders'
indices, publishes Feldman commitments ``C_j = a_j·G`` (so ``S = C_0 = s·G`` is the account
public key) and seals each holder's share to that holder's device key with HPKE. The account id
is a hash of ``S`` (``account_id_for``), so it is fixed before anything is sealed and every
seal is bound to it, to the genesis session and to the recipient (``share_binding``).

A holder opens its sealed share with ``open_and_verify_share``, which also checks that the
dealing's account id matches its commitments, that the share is for the holder's own index and
that ``s_i·G`` equals the public share derived from the commitments. Only then may it
acknowledge. The ``Dealing`` value holds only public data and sealed bytes: the polynomial and
the plaintext shares never leave ``deal_account``.

Device dealings use purpose ``"genesis/device-share"``, guardian dealings
``"genesis/guardian-share"``; a device share can therefore never be opened as a guardian share
(or the other way round) even for the same recipient and session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from aura_node.crypto.errors import ShareError
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point, Rng, Scalar
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.seal import SealBinding, open_share, seal_share
from aura_node.crypto.shamir import Share, check_index, check_threshold, split
from aura_node.crypto.transcript import transcript

HolderRole = Literal["device", "guardian"]
_ACCOUNT_ID_DOMAIN: Final = "aura/account-id"


def account_id_for(public_key: Point) -> str:
    """Account id: 16 bytes of SHA-256 over the domain-separated account public key, hex."""
    return hashlib.sha256(transcript(_ACCOUNT_ID_DOMAIN, public_key.to_bytes())).hexdigest()[:32]


def share_binding(
    *, role: HolderRole, account_id: str, session_id: str, device_id: str
) -> SealBinding:
    """The HPKE binding of a genesis share for ``device_id``."""
    return SealBinding(
        purpose=f"genesis/{role}-share",
        account_id=account_id,
        session_id=session_id,
        recipient_device_id=device_id,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    """A share holder: its Shamir index and its pinned device public key."""

    index: int
    public_key: DevicePublicKey

    def __post_init__(self) -> None:
        check_index(self.index)

    @property
    def device_id(self) -> str:
        return self.public_key.device_id


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedShare:
    """One holder's part of a dealing: its sealed share and its public share ``s_i·G``."""

    index: int
    device_id: str
    public_share: Point
    sealed: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Dealing:
    """Everything a dealer sends out (public data and sealed shares only)."""

    account_id: str
    role: HolderRole
    session_id: str
    commitments: FeldmanCommitments
    shares: tuple[SealedShare, ...]

    @property
    def threshold(self) -> int:
        return self.commitments.threshold

    @property
    def public_key(self) -> Point:
        return self.commitments.public_key

    def share_for(self, device_id: str) -> SealedShare:
        for s in self.shares:
            if s.device_id == device_id:
                return s
        raise ShareError(f"dealing {self.session_id} has no share for device {device_id}")


def new_account_secret(rng: Rng | None = None) -> Scalar:
    """A fresh, uniformly random, non-zero account secret."""
    return Scalar.random(rng)


def deal_account(
    *,
    threshold: int,
    holders: Sequence[Holder],
    session_id: str,
    role: HolderRole = "device",
    secret: Scalar | None = None,
    rng: Rng | None = None,
) -> Dealing:
    """Share ``secret`` (fresh when None) ``threshold``-of-``len(holders)`` and seal each share.

    Deal the same ``secret`` twice (``role="device"``, then ``role="guardian"``) to give the
    guardians their own sharing of the same account; both dealings have the same public key
    and account id.
    """
    if not holders:
        raise ShareError("a dealing needs at least one holder")
    check_threshold(threshold, len(holders))
    device_ids = [h.device_id for h in holders]
    if len(set(device_ids)) != len(device_ids):
        raise ShareError(f"a device may hold only one share of a dealing: {sorted(device_ids)}")
    s = new_account_secret(rng) if secret is None else secret
    if s.is_zero():
        raise ShareError("the account secret must be non-zero")
    poly, shares = split(s, threshold=threshold, indices=[h.index for h in holders], rng=rng)
    commitments = FeldmanCommitments.commit(poly)
    account_id = account_id_for(commitments.public_key)
    sealed = tuple(
        SealedShare(
            index=h.index,
            device_id=h.device_id,
            public_share=commitments.public_share(h.index),
            sealed=seal_share(
                share,
                h.public_key,
                share_binding(
                    role=role, account_id=account_id, session_id=session_id, device_id=h.device_id
                ),
            ),
        )
        for h, share in zip(holders, shares, strict=True)
    )
    return Dealing(
        account_id=account_id,
        role=role,
        session_id=session_id,
        commitments=commitments,
        shares=sealed,
    )


def open_and_verify_share(
    *,
    commitments: FeldmanCommitments,
    sealed: bytes,
    index: int,
    device_key: DeviceKey,
    account_id: str,
    session_id: str,
    role: HolderRole = "device",
) -> Share:
    """Open this device's sealed genesis share and verify it against the commitments.

    Raises ``ShareError`` if the account id does not belong to the commitments, the share is
    for another index or fails its Feldman check; ``SealError`` if it cannot be opened.
    """
    expected_account = account_id_for(commitments.public_key)
    if account_id != expected_account:
        raise ShareError(
            f"account id {account_id} does not match the commitments (expected {expected_account})"
        )
    binding = share_binding(
        role=role, account_id=account_id, session_id=session_id, device_id=device_key.device_id
    )
    share = open_share(sealed, device_key, binding, expected_index=index)
    commitments.verify_share(share)
    return share
