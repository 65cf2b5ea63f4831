"""Resharing maths: move the account secret to a new holder set without ever forming it.

Theory of operation
-------------------
The current epoch shares ``s`` ``t``-of-``n``: holder ``j`` (old index ``j``) has ``s_j = f(j)``
and the account record publishes ``Y_j = s_j·G``. To hand ``s`` to a new holder set with a new
threshold ``t'`` without anyone learning it, any ``t`` old holders (the *dealers*, index set
``D``) each Shamir-share **their own share**: dealer ``j`` draws ``g_j`` of degree ``t' - 1`` with
``g_j(0) = s_j``, publishes Feldman commitments ``E_j = (g_j coefficients)·G`` and seals
``g_j(k)`` to new holder ``k`` (HPKE, bound to the account, the session, the recipient and the
dealer's index: :func:`subshare_binding`).

A new holder ``k`` checks each sub-share two ways before it uses it
(:func:`open_and_verify_subshare` / :func:`check_dealer_commitments`): ``g_j(k)·G`` against
``E_j`` (the sub-share is the dealt one), and ``E_j[0] == Y_j`` (the dealer dealt its *real*
share, the one the old record commits to - without this a dealer could deal anything). It then
combines with the dealers' Lagrange weights over the *old* indices:

    s'_k = Σ_{j ∈ D} λ_j^D · g_j(k)        and  f'(x) = Σ λ_j^D · g_j(x)  has  f'(0) = Σ λ_j s_j = s

so the ``s'_k`` are a ``t'``-of-``n'`` Shamir sharing of the same ``s``. The new Feldman
commitments are the same weighted sums of the dealers' commitment vectors
(:func:`combine_commitments`), whose constant term must be ``S`` (checked: it is the proof that
the dealers' shares interpolate the account key). Old and new shares lie on different random
polynomials, so a mix of them interpolates garbage (property-tested), and a removed holder's
share is useless once the new epoch is adopted.

Every seal is domain separated by its purpose (``reshare/<role>-subshare/<dealer index>``), so
a sub-share can never be opened as a genesis share, a recovery share or another dealer's
sub-share. Nothing here returns a dealer's polynomial or a plaintext sub-share to the caller
except :func:`combine_subshares`'s result (the holder's own new share, which the caller seals
to itself at once). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aura_node.crypto.dealing import Holder, HolderRole, account_id_for
from aura_node.crypto.errors import ShareError
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point, Rng, Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.seal import SealBinding, open_share, seal_share
from aura_node.crypto.shamir import (
    Share,
    check_index,
    check_threshold,
    lagrange_coefficients,
    split,
)

SUBSHARE_PURPOSE: Final = "reshare/{role}-subshare/{dealer}"
#: the purpose a holder's combined new share is sealed to itself under
RESHARED_PURPOSE: Final = "reshare/{role}-share"


def subshare_binding(*, role: HolderRole, account_id: str, session_id: str, dealer_index: int,
                     device_id: str) -> SealBinding:
    """The HPKE binding of the sub-share dealer ``dealer_index`` seals to ``device_id``."""
    return SealBinding(purpose=SUBSHARE_PURPOSE.format(role=role, dealer=check_index(dealer_index)),
                       account_id=account_id, session_id=session_id,
                       recipient_device_id=device_id)


def reshared_binding(*, role: HolderRole, account_id: str, session_id: str,
                     device_id: str) -> SealBinding:
    """The binding a new holder seals its own combined share under (``HeldShare.purpose``)."""
    return SealBinding(purpose=RESHARED_PURPOSE.format(role=role), account_id=account_id,
                       session_id=session_id, recipient_device_id=device_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedSubShare:
    index: int  # the recipient's new index
    device_id: str
    sealed: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SubDealing:
    """What one dealer publishes for one new holder set: commitments and sealed sub-shares."""

    dealer_index: int
    role: HolderRole
    commitments: FeldmanCommitments
    shares: tuple[SealedSubShare, ...]

    def share_for(self, device_id: str) -> SealedSubShare:
        for s in self.shares:
            if s.device_id == device_id:
                return s
        raise ShareError(f"dealer {self.dealer_index} dealt no {self.role} sub-share to "
                         f"device {device_id}")


def deal_subshares(share: Share, *, threshold: int, holders: Sequence[Holder], account_id: str,
                   session_id: str, role: HolderRole, rng: Rng | None = None) -> SubDealing:
    """Share ``share.value`` ``threshold``-of-``len(holders)`` and seal each sub-share.

    The polynomial and the plaintext sub-shares die here; only commitments and sealed bytes
    return."""
    if not holders:
        raise ShareError("a sub-dealing needs at least one new holder")
    check_threshold(threshold, len(holders))
    ids = [h.device_id for h in holders]
    if len(set(ids)) != len(ids):
        raise ShareError(f"a device may hold only one sub-share of a dealing: {sorted(ids)}")
    poly, subs = split(share.value, threshold=threshold, indices=[h.index for h in holders],
                       rng=rng)
    commitments = FeldmanCommitments.commit(poly)
    del poly
    sealed = tuple(
        SealedSubShare(index=h.index, device_id=h.device_id, sealed=seal_share(
            sub, h.public_key, subshare_binding(role=role, account_id=account_id,
                                                session_id=session_id,
                                                dealer_index=share.index,
                                                device_id=h.device_id)))
        for h, sub in zip(holders, subs, strict=True))
    return SubDealing(dealer_index=share.index, role=role, commitments=commitments,
                      shares=sealed)


def check_dealer_commitments(commitments: FeldmanCommitments, *, old_public_share: Point,
                             dealer_index: int, threshold: int) -> None:
    """A dealer's commitments have the new threshold and commit to its *old* public share
    (``E_j[0] == Y_j``); ``ShareError`` names what is wrong."""
    if commitments.threshold != threshold:
        raise ShareError(f"dealer {dealer_index} committed to a degree-{commitments.threshold - 1}"
                         f" sharing, the new threshold {threshold} needs degree {threshold - 1}")
    if commitments.public_key != old_public_share:
        raise ShareError(f"dealer {dealer_index} dealt something other than its share: its "
                         "commitments' constant term is not its public share in the current "
                         "epoch")


def open_and_verify_subshare(*, commitments: FeldmanCommitments, old_public_share: Point,
                             threshold: int, sealed: bytes, index: int, dealer_index: int,
                             device_key: DeviceKey, account_id: str, session_id: str,
                             role: HolderRole) -> Share:
    """Open dealer ``dealer_index``'s sub-share for this device (new index ``index``) and check
    it against the dealer's commitments, and those against the dealer's old public share."""
    check_dealer_commitments(commitments, old_public_share=old_public_share,
                             dealer_index=dealer_index, threshold=threshold)
    binding = subshare_binding(role=role, account_id=account_id, session_id=session_id,
                               dealer_index=dealer_index, device_id=device_key.device_id)
    sub = open_share(sealed, device_key, binding, expected_index=index)
    try:
        commitments.verify_share(sub)
    except ShareError as exc:
        raise ShareError(f"sub-share from dealer {dealer_index}: {exc.message}") from None
    return sub


def dealer_weights(dealer_indices: Sequence[int]) -> dict[int, Scalar]:
    """λ_j at 0 over the dealers' *old* indices."""
    return lagrange_coefficients(dealer_indices)


def combine_subshares(subshares: Mapping[int, Share], *, index: int) -> Share:
    """This holder's new share ``Σ λ_j·g_j(index)`` from verified sub-shares by dealer index."""
    if not subshares:
        raise ShareError("no sub-shares to combine")
    weights = dealer_weights(list(subshares))
    acc = Scalar.zero()
    for j, sub in subshares.items():
        if sub.index != index:
            raise ShareError(f"sub-share of dealer {j} is for index {sub.index}, not {index}")
        acc = acc + weights[j] * sub.value
    return Share(index=index, value=acc)


def combine_commitments(by_dealer: Mapping[int, FeldmanCommitments], *,
                        public_key: Point) -> FeldmanCommitments:
    """The new epoch's commitments ``Σ λ_j·E_j`` (pointwise); their constant term must be
    ``S`` - else the dealers' shares do not interpolate the account key (``ShareError``)."""
    if not by_dealer:
        raise ShareError("no dealer commitments to combine")
    sizes = {c.threshold for c in by_dealer.values()}
    if len(sizes) != 1:
        raise ShareError(f"dealers committed to different thresholds {sorted(sizes)}")
    (t,) = sizes
    weights = dealer_weights(list(by_dealer))
    points = []
    for k in range(t):
        acc = Point.identity()
        for j, c in by_dealer.items():
            acc = acc + weights[j] * c.points[k]
        if acc.is_identity():
            raise ShareError(f"combined commitment {k} is the identity")
        points.append(acc)
    out = FeldmanCommitments(points=tuple(points))
    if out.public_key != public_key:
        raise ShareError("the dealers' commitments do not combine to the account key "
                         f"(account {account_id_for(public_key)})")
    return out


__all__ = [
    "RESHARED_PURPOSE",
    "SUBSHARE_PURPOSE",
    "SealedSubShare",
    "SubDealing",
    "check_dealer_commitments",
    "combine_commitments",
    "combine_subshares",
    "deal_subshares",
    "dealer_weights",
    "open_and_verify_subshare",
    "reshared_binding",
    "subshare_binding",
]
