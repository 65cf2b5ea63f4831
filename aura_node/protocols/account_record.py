"""The public record of an account (what every holder keeps) and its consistency check.

Split out of :mod:`aura_node.protocols.account` so that the epoch facts
(:mod:`aura_node.protocols.epochs`), which carry an :class:`AccountRecord`, and the account
store, which keeps epoch facts, can both build on it without importing each other.
``aura_node.protocols.account`` re-exports every name here; import them from there.

Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from aura_node.crypto.dealing import account_id_for
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point
from aura_node.errors import ProtocolError

HolderSet = Literal["devices", "guardians"]


class AccountError(ProtocolError):
    code = "account"


class AccountHolder(msgspec.Struct, frozen=True, kw_only=True):
    """One holder of a share: its configured name, device id, Shamir index, ``s_i·G``."""

    name: str
    device_id: str
    index: int
    public_share: bytes


def _check_distinct(holders: Iterable[AccountHolder], what: str) -> None:
    """One index per holder and one holder per device (and per name) in a holder set: two
    holders with one index would be one Shamir point counted twice (Lagrange weights divide by
    zero), and one device under two indices would let it count twice towards the threshold."""
    seen: dict[str, dict[object, str]] = {"index": {}, "device": {}, "name": {}}
    for h in holders:
        for key, value in (("index", h.index), ("device", h.device_id), ("name", h.name)):
            other = seen[key].get(value)
            if other is not None:
                raise AccountError(f"{what} holders {other} and {h.name} have the same {key} "
                                   f"{str(value)[:40]}")
            seen[key][value] = h.name


class AccountRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The public view of an account, identical on every holder."""

    account_id: str
    public_key: bytes
    threshold: int
    devices: tuple[AccountHolder, ...]
    device_commitments: bytes
    guardians: tuple[AccountHolder, ...] = ()
    guardian_threshold: int = 0
    guardian_commitments: bytes = b""

    def check(self) -> None:
        """Internal consistency: ids, thresholds, commitments, public shares."""
        s = Point.from_bytes(self.public_key)
        if account_id_for(s) != self.account_id:
            raise AccountError(f"account id {self.account_id} does not match its public key")
        for holders, commit_bytes, t, what in (
            (self.devices, self.device_commitments, self.threshold, "device"),
            (self.guardians, self.guardian_commitments, self.guardian_threshold, "guardian"),
        ):
            if not holders:
                if t:
                    raise AccountError(f"{what} threshold {t} with no {what}s")
                continue
            _check_distinct(holders, what)
            commitments = FeldmanCommitments.from_bytes(commit_bytes)
            if commitments.public_key != s:
                raise AccountError(f"{what} commitments do not commit to the account key")
            if commitments.threshold != t or not 1 <= t <= len(holders):
                raise AccountError(
                    f"{what} threshold {t} does not fit {len(holders)} holders / "
                    f"{commitments.threshold} commitments"
                )
            for h in holders:
                if commitments.public_share(h.index).to_bytes() != h.public_share:
                    raise AccountError(f"public share of {what} {h.name} does not match")

    def commitments(self, holder_set: HolderSet) -> FeldmanCommitments:
        raw = self.device_commitments if holder_set == "devices" else self.guardian_commitments
        if not raw:
            raise AccountError(f"account {self.account_id} has no {holder_set}")
        return FeldmanCommitments.from_bytes(raw)

    def holders(self, holder_set: HolderSet) -> tuple[AccountHolder, ...]:
        return self.devices if holder_set == "devices" else self.guardians

    def holder(self, holder_set: HolderSet, name: str) -> AccountHolder:
        for h in self.holders(holder_set):
            if h.name == name:
                return h
        raise AccountError(f"{name!r} is not one of the {holder_set} of {self.account_id}")

    def to_json(self) -> dict[str, Any]:
        """The ``ctl account show`` / ``account create`` view."""
        return {
            "account_id": self.account_id,
            "public_key": self.public_key.hex(),
            "threshold": self.threshold,
            "devices": [h.name for h in self.devices],
            "guardians": [h.name for h in self.guardians],
            "guardian_threshold": self.guardian_threshold,
        }


__all__ = ["AccountError", "AccountHolder", "AccountRecord", "HolderSet"]
