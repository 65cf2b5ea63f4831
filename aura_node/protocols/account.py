"""The account a device holds a share of, as journal evidence.

Theory of operation
-------------------
An account is created by genesis (a dealer shares the secret ``s`` t-of-n among devices and,
separately, among guardians) and re-created on a new device by guardian recovery. Either way the
device ends up with two things:

* the public :class:`AccountRecord` (account id, ``S = s·G``, thresholds, the holders with
  their indices and public shares ``s_i·G``, and the Feldman commitments), the same on every
  holder;
* its own :class:`HeldShare`: the share, **sealed** (HPKE) to this device's key exactly as it
  arrived, with what is needed to open it again (holder set, index, the session that sealed it).
  The plaintext share is never written anywhere; it is opened in memory when a protocol step
  first needs it, Feldman-checked then, and kept in memory only (:class:`OpenedShares`, one
  per node, keyed by account, commitments, the sealed share and the key).

Both are journaled together as one ``account.established`` record (:data:`KIND_ACCOUNT`), signed
and hash-chained like all evidence. :class:`AccountStore` is the pure fold over those records
that a node rebuilds at start-up; a later record for the same account id replaces the earlier
one only if its public key is the same (an account id is a hash of ``S``).

A recovered device holds ``s`` itself as a 1-of-1 holder: its record has ``threshold = 1``,
one device holder with public share ``S`` and the degree-0 commitments ``(S,)``, so threshold
DKD with ``t = 1`` gives ``K = s·H``, the same key the original devices derive.

Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, NoReturn

import msgspec

from aura_node.crypto.dealing import account_id_for, share_binding
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.seal import SealBinding, open_share
from aura_node.crypto.shamir import Share
from aura_node.errors import ProtocolError

KIND_ACCOUNT = "account.established"
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


class HeldShare(msgspec.Struct, frozen=True, kw_only=True):
    """This device's share, sealed to its own key, and how to open it."""

    holder_set: HolderSet
    index: int
    sealed: bytes
    #: the SealBinding the share was sealed under (purpose, session); recipient = this device
    purpose: str
    session_id: str


class AccountEstablished(msgspec.Struct, frozen=True, kw_only=True):
    """Body of a :data:`KIND_ACCOUNT` journal record."""

    account: AccountRecord
    shares: tuple[HeldShare, ...] = ()
    #: 0 for what genesis or recovery established; each reshare makes the next
    #: (protocols/epochs). Not part of AccountRecord: that record travels inside journaled
    #: protocol messages, whose bytes replay must reproduce.
    epoch: int = 0
    #: digest of the epoch fact that made this record (``protocols/reshare``); b"" for epoch 0,
    #: whose fact is ``epochs.root_fact(account)``. What the next reshare's fact extends.
    fact_digest: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AccountEstablished)


def encode_established(body: AccountEstablished) -> bytes:
    return _encoder.encode(body)


def decode_established(data: bytes) -> AccountEstablished:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise AccountError(f"{KIND_ACCOUNT} record does not decode: {exc}") from None


def genesis_held_share(
    *, holder_set: HolderSet, index: int, sealed: bytes, session_id: str
) -> HeldShare:
    role: Literal["device", "guardian"] = "device" if holder_set == "devices" else "guardian"
    return HeldShare(
        holder_set=holder_set,
        index=index,
        sealed=sealed,
        purpose=f"genesis/{role}-share",
        session_id=session_id,
    )


def open_held_share(account: AccountRecord, held: HeldShare, key: DeviceKey) -> Share:
    """Open this device's sealed share and check it against the commitments (every time)."""
    binding = SealBinding(
        purpose=held.purpose,
        account_id=account.account_id,
        session_id=held.session_id,
        recipient_device_id=key.device_id,
    )
    share = open_share(held.sealed, key, binding, expected_index=held.index)
    account.commitments(held.holder_set).verify_share(share)
    return share


class OpenedShares:
    """This node's shares, opened once per account and held in memory only.

    Opening a share is an HPKE open plus a Feldman check (about a millisecond); a DKD session
    needs the share every time. The cache key is everything the opened value depends on: the
    account id, the holder set's Feldman commitments (the check was against those), the exact
    sealed :class:`HeldShare` and the device key that opened it. A different sealed share, a
    re-established account with other commitments or another key opens and checks afresh.

    Never journaled, never logged (``repr`` shows only a count, ``Scalar`` hides its value),
    not picklable, not copyable: it dies with the process."""

    __slots__ = ("_opened", "opens")

    def __init__(self) -> None:
        self._opened: dict[tuple[str, bytes, HeldShare, str], Share] = {}
        #: how many times a share was actually opened and checked (tests, debug runs)
        self.opens = 0

    def get(self, account: AccountRecord, held: HeldShare, key: DeviceKey) -> Share:
        """``open_held_share(account, held, key)``, run once per (account, share, key)."""
        commitments = (account.device_commitments if held.holder_set == "devices"
                       else account.guardian_commitments)
        k = (account.account_id, commitments, held, key.device_id)
        share = self._opened.get(k)
        if share is None:
            share = open_held_share(account, held, key)  # raises: nothing is cached
            self.opens += 1
            self._opened[k] = share
        return share

    def clear(self) -> None:
        self._opened.clear()

    def __len__(self) -> int:
        return len(self._opened)

    def __repr__(self) -> str:
        return f"OpenedShares(<{len(self._opened)} hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("opened shares cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("opened shares cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("opened shares cannot be copied")


class AccountStore:
    """Accounts this device holds, folded from ``account.established`` journal records."""

    __slots__ = ("_accounts",)

    def __init__(self) -> None:
        self._accounts: dict[str, AccountEstablished] = {}

    @classmethod
    def from_bodies(cls, bodies: Iterable[bytes]) -> AccountStore:
        store = cls()
        for body in bodies:
            store.add(decode_established(body))
        return store

    def add(self, established: AccountEstablished) -> None:
        acct = established.account
        acct.check()
        old = self._accounts.get(acct.account_id)
        if old is not None:
            if old.account.public_key != acct.public_key:
                raise AccountError(f"account {acct.account_id} re-established with another key")
            # the newest epoch wins (a reshare made it; the fold may meet older records later)
            if established.epoch < old.epoch:
                return
            if established.epoch == old.epoch and old.account != acct and old.epoch > 0:
                raise AccountError(f"account {acct.account_id}: two different records for "
                                   f"epoch {old.epoch}")
        self._accounts[acct.account_id] = established

    def get(self, account_id: str) -> AccountEstablished:
        try:
            return self._accounts[account_id]
        except KeyError:
            raise AccountError(
                f"this device holds no account {account_id!r} "
                f"(holds: {', '.join(sorted(self._accounts)) or 'none'})"
            ) from None

    def only(self) -> AccountEstablished:
        """The single account this device holds (``ctl dkd`` without ``--account``)."""
        if len(self._accounts) != 1:
            raise AccountError(
                f"expected exactly one account on this device, found {len(self._accounts)}"
            )
        return next(iter(self._accounts.values()))

    def held_share(self, account_id: str, holder_set: HolderSet) -> HeldShare:
        for s in self.get(account_id).shares:
            if s.holder_set == holder_set:
                return s
        raise AccountError(f"this device holds no {holder_set} share of {account_id}")

    def accounts(self) -> Mapping[str, AccountEstablished]:
        return dict(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)


__all__ = [
    "KIND_ACCOUNT",
    "AccountError",
    "AccountEstablished",
    "AccountHolder",
    "AccountRecord",
    "AccountStore",
    "HeldShare",
    "OpenedShares",
    "decode_established",
    "encode_established",
    "genesis_held_share",
    "open_held_share",
    "share_binding",
]
