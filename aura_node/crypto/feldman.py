"""Feldman verifiable secret sharing: public commitments to the dealer's polynomial.

Theory of operation
-------------------
For the sharing polynomial ``f(x) = Σ a_j x^j`` the dealer publishes ``C_j = a_j·G``. Anyone can
then compute holder ``i``'s *public share* ``Y_i = Σ C_j·i^j = f(i)·G`` and a holder checks its
secret share with ``s_i·G == Y_i``. ``C_0 = s·G = S`` is the account public key. Commitments
reveal nothing beyond the ``Y_i`` and ``S`` (discrete-log hiding, not perfectly hiding: that
is the Feldman trade-off, fine here because S is public anyway).

The commitment vector is the account's public record: its byte encoding (``to_bytes``: the
``t`` points concatenated, 32 bytes each) is what protocols journal and sign, and ``threshold``
is its length. Decoding refuses identity and invalid points like every other point decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aura_node.crypto.errors import PointEncodingError, ShareError, ThresholdError
from aura_node.crypto.group import POINT_BYTES, Point, Scalar
from aura_node.crypto.shamir import MAX_INDEX, Polynomial, Share, check_index


@dataclass(frozen=True, slots=True, kw_only=True)
class FeldmanCommitments:
    """``points[j] = a_j·G`` for the sharing polynomial; ``points[0]`` is the public key S."""

    points: tuple[Point, ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ThresholdError("Feldman commitments need at least one point")
        if len(self.points) > MAX_INDEX:
            raise ThresholdError(f"{len(self.points)} commitments: threshold above {MAX_INDEX}")

    @classmethod
    def commit(cls, polynomial: Polynomial) -> FeldmanCommitments:
        return cls(points=tuple(Point.base_mul(a) for a in polynomial.coefficients))

    @property
    def threshold(self) -> int:
        return len(self.points)

    @property
    def public_key(self) -> Point:
        """The account public key S = s·G."""
        return self.points[0]

    def public_share(self, index: int) -> Point:
        """``Y_i = Σ C_j·i^j = s_i·G`` (Horner's rule in the exponent: t-1 mults and adds)."""
        x = Scalar.from_int(check_index(index))
        acc = self.points[-1]
        for c in reversed(self.points[:-1]):
            acc = x * acc + c
        return acc

    def public_shares(self, indices: Sequence[int]) -> dict[int, Point]:
        return {i: self.public_share(i) for i in indices}

    def verify_share(self, share: Share) -> None:
        """Raise ``ShareError`` unless ``share.value·G`` equals holder ``share.index``'s public
        share."""
        verify_share(self, share.index, share.value)

    def to_bytes(self) -> bytes:
        return b"".join(p.to_bytes() for p in self.points)

    @classmethod
    def from_bytes(cls, data: bytes) -> FeldmanCommitments:
        if not data or len(data) % POINT_BYTES:
            raise PointEncodingError(
                f"Feldman commitments are a positive multiple of {POINT_BYTES} bytes, "
                f"got {len(data)}"
            )
        points = []
        for k in range(0, len(data), POINT_BYTES):
            try:
                points.append(Point.from_bytes(data[k : k + POINT_BYTES]))
            except PointEncodingError as exc:
                raise PointEncodingError(
                    f"Feldman commitment {k // POINT_BYTES}: {exc.message}"
                ) from None
        return cls(points=tuple(points))


def public_share(commitments: FeldmanCommitments, index: int) -> Point:
    """Holder ``index``'s public share ``s_index·G`` from the commitments."""
    return commitments.public_share(index)


def verify_share(commitments: FeldmanCommitments, index: int, share: Scalar) -> None:
    """Raise ``ShareError`` unless ``share·G == public_share(commitments, index)``."""
    expected = commitments.public_share(index)
    if Point.base_mul(share) != expected:
        raise ShareError(
            f"share for holder {index} fails its Feldman check: share·G does not match the "
            f"public share {expected.hex()} derived from the commitments"
        )
