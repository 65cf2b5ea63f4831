"""Shamir secret sharing over the scalar field of the Ed25519 group, and Lagrange interpolation.

Theory of operation
-------------------
A secret ``s`` is the constant term of a random polynomial ``f(x) = a_0 + a_1 x + ... +
a_{t-1} x^{t-1}`` over Z_L with ``a_0 = s``. Holder ``i`` (an index in ``1..MAX_INDEX``; 0 is
the secret itself and never a holder) gets the share ``s_i = f(i)``. Any ``t`` distinct shares
determine ``f`` and therefore ``s = f(0) = Σ λ_i·s_i`` with the Lagrange coefficients at zero

    λ_i = Π_{j ∈ S, j ≠ i}  j / (j - i)      (mod L)

for the index set ``S``; fewer than ``t`` shares say nothing about ``s`` (every value is equally
likely). The same weights applied "in the exponent" to points ``P_i = s_i·H`` give
``Σ λ_i·P_i = s·H`` (``interpolate_in_exponent``), which is how DKD combines partial results
without anyone learning ``s``.

The non-constant coefficients are drawn non-zero so that the Feldman commitments ``a_j·G``
are never the identity (which ``Point.from_bytes`` refuses on the wire). ``Polynomial`` holds
secrets: no ``repr`` of its values, no pickling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from aura_node.crypto.errors import ShareError, ThresholdError
from aura_node.crypto.group import Point, Rng, Scalar

#: Largest holder index. Generous for a person's devices and guardians; keeps indices small
#: enough to travel as plain integers in messages.
MAX_INDEX: Final = 0xFFFF


def check_index(index: int) -> int:
    """Return ``index`` if it is a valid holder index (1..MAX_INDEX), else raise ``ShareError``."""
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_INDEX:
        raise ShareError(f"holder index must be an integer in 1..{MAX_INDEX}, got {index!r}")
    return index


def _check_index_set(indices: Iterable[int]) -> tuple[int, ...]:
    seen: set[int] = set()
    out = []
    for i in indices:
        check_index(i)
        if i in seen:
            raise ShareError(f"duplicate holder index {i}")
        seen.add(i)
        out.append(i)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Share:
    """Holder ``index``'s share ``value = f(index)``."""

    index: int
    value: Scalar

    def __post_init__(self) -> None:
        check_index(self.index)

    def __repr__(self) -> str:
        return f"Share(index={self.index}, value=<hidden>)"


class Polynomial:
    """The dealer's secret polynomial; ``coefficients[0]`` is the secret."""

    __slots__ = ("coefficients",)
    coefficients: tuple[Scalar, ...]

    def __init__(self, coefficients: Sequence[Scalar]) -> None:
        if not coefficients:
            raise ThresholdError("a polynomial needs at least one coefficient (threshold >= 1)")
        self.coefficients = tuple(coefficients)

    @classmethod
    def random(cls, *, secret: Scalar, threshold: int, rng: Rng | None = None) -> Polynomial:
        """Degree ``threshold - 1`` polynomial with constant term ``secret``."""
        check_threshold(threshold)
        return cls([secret, *(Scalar.random(rng) for _ in range(threshold - 1))])

    @property
    def threshold(self) -> int:
        return len(self.coefficients)

    @property
    def secret(self) -> Scalar:
        return self.coefficients[0]

    def evaluate(self, x: int) -> Scalar:
        """``f(x)`` by Horner's rule."""
        xs = Scalar.from_int(x)
        acc = self.coefficients[-1]
        for a in reversed(self.coefficients[:-1]):
            acc = acc * xs + a
        return acc

    def share(self, index: int) -> Share:
        return Share(index=check_index(index), value=self.evaluate(index))

    def __repr__(self) -> str:
        return f"Polynomial(threshold={self.threshold}, coefficients=<hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Polynomial cannot be pickled (it holds the secret)")


def check_threshold(threshold: int, holders: int | None = None) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ThresholdError(f"threshold must be an integer >= 1, got {threshold!r}")
    if holders is not None and threshold > holders:
        raise ThresholdError(f"threshold {threshold} exceeds the number of holders {holders}")


def split(
    secret: Scalar,
    *,
    threshold: int,
    indices: Sequence[int],
    rng: Rng | None = None,
) -> tuple[Polynomial, tuple[Share, ...]]:
    """Share ``secret`` ``threshold``-of-``len(indices)`` among the holder ``indices``.

    Returns the polynomial (the caller derives Feldman commitments from it, then drops it) and
    one share per index, in the order given.
    """
    idx = _check_index_set(indices)
    check_threshold(threshold, len(idx))
    poly = Polynomial.random(secret=secret, threshold=threshold, rng=rng)
    return poly, tuple(poly.share(i) for i in idx)


def lagrange_coefficient(i: int, indices: Iterable[int]) -> Scalar:
    """λ_i at x = 0 for the index set ``indices`` (which must contain ``i``)."""
    idx = _check_index_set(indices)
    if i not in idx:
        raise ShareError(f"index {i} is not in the interpolation set {sorted(idx)}")
    num = Scalar.one()
    den = Scalar.one()
    xi = Scalar.from_int(i)
    for j in idx:
        if j == i:
            continue
        xj = Scalar.from_int(j)
        num = num * xj
        den = den * (xj - xi)
    return num * den.invert()


def lagrange_coefficients(indices: Iterable[int]) -> dict[int, Scalar]:
    """All λ_i at 0 for ``indices`` (one inversion per index; sets here are small)."""
    idx = _check_index_set(indices)
    return {i: lagrange_coefficient(i, idx) for i in idx}


def _take_threshold(indices: Sequence[int], threshold: int | None) -> tuple[int, ...]:
    idx = _check_index_set(indices)
    if threshold is None:
        return idx
    check_threshold(threshold)
    if len(idx) < threshold:
        raise ThresholdError(
            f"need shares from at least {threshold} distinct holders, got {len(idx)} "
            f"(indices {sorted(idx)})"
        )
    # Any t of them determine the same polynomial; the t smallest make the choice
    # deterministic and the work minimal.
    return tuple(sorted(idx)[:threshold])


def reconstruct(shares: Sequence[Share], *, threshold: int | None = None) -> Scalar:
    """Interpolate ``f(0)`` from ``shares``.

    With ``threshold`` given, refuses fewer than ``threshold`` distinct indices and uses the
    ``threshold`` smallest; without it, interpolates through every share given (the caller
    vouches that there are enough). Duplicate indices and index 0 are refused.
    """
    by_index = {s.index: s for s in shares}
    if len(by_index) != len(shares):
        dup = sorted(i for i in by_index if sum(1 for s in shares if s.index == i) > 1)
        raise ShareError(f"duplicate share indices {dup}")
    use = _take_threshold([s.index for s in shares], threshold)
    if not use:
        raise ThresholdError("no shares to reconstruct from")
    acc = Scalar.zero()
    for i in use:
        acc = acc + lagrange_coefficient(i, use) * by_index[i].value
    return acc


def interpolate_in_exponent(
    points_by_index: Mapping[int, Point], *, threshold: int | None = None
) -> Point:
    """``Σ λ_i·P_i`` over the indices (the ``threshold`` smallest when ``threshold`` is given);
    equals ``f(0)·H`` when every ``P_i = f(i)·H``."""
    use = _take_threshold(list(points_by_index), threshold)
    if not use:
        raise ThresholdError("no points to interpolate")
    acc = Point.identity()
    for i in use:
        acc = acc + lagrange_coefficient(i, use) * points_by_index[i]
    return acc
