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

from aura_node.crypto.dealing import share_binding
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.seal import SealBinding, open_share
from aura_node.crypto.shamir import Share
from aura_node.protocols.account_record import (
    AccountError,
    AccountHolder,
    AccountRecord,
    HolderSet,
)
from aura_node.protocols.epochs import (
    KIND_EPOCH_FACT,
    EpochFact,
    EpochStore,
    FactVerdict,
    decode_fact,
    holder_ids,
    root_fact,
)

KIND_ACCOUNT = "account.established"
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
    """Accounts this device holds a share of: a pure fold over ``account.established`` and
    ``account.epoch`` journal records (start-up, and each durable batch).

    Per account it keeps the ``account.established`` record of each epoch this device held a
    share of, and the account's verified epoch facts (:class:`~aura_node.protocols.epochs.
    EpochStore`). What the node *uses* is the current epoch the facts reduce to
    (:meth:`get`): its record and this device's share of it. A device that is not a holder of
    the current epoch has no usable share: :meth:`get` (and so every protocol that needs the
    share or the record: DKD, resharing) raises ``this device was removed from account X at
    epoch E``. An account whose facts say nothing beyond epoch 0 (no reshare yet) is used as
    its epoch-0 ``account.established`` record says, as before epochs existed; a later epoch-0
    record for the same account id replaces the earlier one only if its public key is the same
    (an account id is a hash of ``S``).

    A record of a later epoch is used only once the fully signed fact it names
    (``fact_digest``) is current. A reshare participant journals its new share as soon as it
    verified its sub-shares and signed (``protocols/reshare``), before it knows whether the
    epoch will be acknowledged, so a record of an aborted attempt (a fact that never gets
    every signature) never becomes usable, and records of several attempts at one epoch are
    kept side by side, keyed by the fact they name: whichever attempt's fact becomes current
    selects its own record, whatever the journal order.

    Epoch facts come in two ways besides the journal of this device's own reshare sessions:
    a fact whose predecessor the store lacks is *anchored* when this device journaled its own
    ``account.established`` record for that very epoch and record (it was a new holder of a
    reshare, so it verified its sub-shares and needs no older fact), and otherwise verified
    as extending a held fact (:meth:`EpochStore.offer`)."""

    __slots__ = ("_accounts", "_by_epoch", "epochs")

    def __init__(self) -> None:
        #: account id -> its newest epoch-0 record (genesis or recovery)
        self._accounts: dict[str, AccountEstablished] = {}
        #: account id -> epoch -> digest of the fact it names -> this device's record of it
        #: (epochs >= 1: reshares; several attempts at one epoch may each have left one)
        self._by_epoch: dict[str, dict[int, dict[bytes, AccountEstablished]]] = {}
        self.epochs = EpochStore()

    @classmethod
    def from_bodies(cls, bodies: Iterable[bytes]) -> AccountStore:
        store = cls()
        for body in bodies:
            store.add(decode_established(body))
        return store

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, bytes]]) -> AccountStore:
        """The fold over (kind, body) of journal records, in journal order: both
        ``account.established`` and ``account.epoch``; other kinds are skipped. A record that
        does not check raises (use :meth:`fold` one by one to skip bad ones)."""
        store = cls()
        for kind, body in records:
            store.fold(kind, body)
        return store

    def fold(self, kind: str, body: bytes) -> object:
        """Fold one journal record; returns what it did (the established record, a fact
        verdict) or None for a kind this store does not keep. Raises AuraError on a record
        that does not decode or check."""
        if kind == KIND_ACCOUNT:
            established = decode_established(body)
            self.add(established)
            return established
        if kind == KIND_EPOCH_FACT:
            return self.learn_fact(decode_fact(body))
        return None

    def add(self, established: AccountEstablished) -> None:
        acct = established.account
        acct.check()
        known = self._accounts.get(acct.account_id) or self._newest(acct.account_id)
        if known is not None and known.account.public_key != acct.public_key:
            raise AccountError(f"account {acct.account_id} re-established with another key")
        if established.epoch < 0:
            raise AccountError(f"account {acct.account_id} established at epoch "
                               f"{established.epoch}; expected 0 or more")
        if established.epoch == 0:
            self._accounts[acct.account_id] = established
            self.epochs.add_root(root_fact(acct))
            return
        self._by_epoch.setdefault(acct.account_id, {}).setdefault(
            established.epoch, {})[established.fact_digest] = established
        # the fact of this epoch may have come first and be waiting for its predecessor
        for fact in self.epochs.pending():
            if self._mine(fact) is established:
                self.epochs.anchor(fact)

    def _mine(self, fact: EpochFact) -> AccountEstablished | None:
        """This device's record of ``fact``'s very epoch attempt: the one naming its digest
        (a record without a digest: the one with its record)."""
        attempts = self._by_epoch.get(fact.account.account_id, {}).get(fact.epoch, {})
        mine = attempts.get(fact.digest()) or attempts.get(b"")
        return mine if mine is not None and mine.account == fact.account else None

    def _newest(self, account_id: str) -> AccountEstablished | None:
        """The newest later-epoch record this device journaled (usable or not), if any."""
        later = self._by_epoch.get(account_id, {})
        if not later:
            return None
        return next(reversed(later[max(later)].values()))

    def learn_fact(self, fact: EpochFact) -> FactVerdict:
        """Offer an epoch fact (see the class doc for anchoring); the verdict says what it
        did and why."""
        return self.check_fact(fact, self.epochs)

    def check_fact(self, fact: EpochFact, epochs: EpochStore) -> FactVerdict:
        """Offer ``fact`` to ``epochs`` (this store's, or a scratch copy of it that a sync
        checks a message's facts against), anchoring it when this device holds a share of
        its very epoch and record."""
        verdict = epochs.offer(fact)
        if verdict.outcome == "pending" and self._mine(fact) is not None:
            return epochs.anchor(fact)
        return verdict

    def current_epoch(self, account_id: str) -> int:
        """The account's current epoch as the facts say (0 without facts beyond genesis)."""
        fact = self.epochs.current(account_id)
        return 0 if fact is None else fact.epoch

    def get(self, account_id: str) -> AccountEstablished:
        """This device's record and share of the current epoch of ``account_id``; raises
        AccountError when it holds none (never held, or removed at the current epoch)."""
        base = self._accounts.get(account_id)
        later = self._by_epoch.get(account_id, {})
        if base is None and not later:
            raise AccountError(
                f"this device holds no account {account_id!r} "
                f"(holds: {', '.join(sorted(self._known())) or 'none'})"
            )
        fact = self.epochs.current(account_id)
        if fact is None or fact.epoch == 0:
            # no acknowledged fact beyond genesis (yet): a later record is of an attempt whose
            # fact is not current (still running, aborted, or its fact not arrived here yet)
            if base is not None:
                return base
            raise AccountError(f"this device holds no share of account {account_id} yet: the "
                               "reshare that made it a holder has not completed here (its "
                               "signed epoch fact has not arrived)")
        mine = self._mine(fact)
        if mine is not None:
            return mine
        if self._device_ids() & holder_ids(fact.account):
            if later.get(fact.epoch):
                raise AccountError(f"this device's share of account {account_id} is of another "
                                   f"epoch-{fact.epoch} reshare attempt than fact "
                                   f"{fact.digest().hex()[:16]} (see conflicts)")
            # still a holder, and the epoch's own record has not been journaled here yet
            raise AccountError(f"this device holds no share of account {account_id} at its "
                               f"current epoch {fact.epoch} yet")
        raise AccountError(f"this device was removed from account {account_id} at epoch "
                           f"{self._removed_at(account_id, fact)}")

    def _device_ids(self) -> set[str]:
        """Device ids this store's own records say this device holds shares under (the
        holders whose index and set match a held share)."""
        out: set[str] = set()
        for est in (*self._accounts.values(),
                    *(e for by in self._by_epoch.values() for attempts in by.values()
                      for e in attempts.values())):
            for held in est.shares:
                for h in est.account.holders(held.holder_set):
                    if h.index == held.index:
                        out.add(h.device_id)
        return out

    def _removed_at(self, account_id: str, current: EpochFact) -> int:
        """The first epoch on the way to ``current`` whose holders do not include this
        device (the epoch the reshare that removed it produced)."""
        ids = self._device_ids()
        held = {f.digest(): f for f in self.epochs.facts(account_id)}
        chain = [current]
        while chain[-1].epoch > 0 and chain[-1].previous in held:
            chain.append(held[chain[-1].previous])
        removed = current.epoch
        for fact in chain:  # newest first: the oldest epoch without us, after the last with us
            if ids & holder_ids(fact.account):
                break
            removed = fact.epoch
        return removed

    def show(self, account_id: str) -> dict[str, Any]:
        """The ``ctl account show`` view of ``account_id``: the current epoch's record,
        ``epoch``, ``holders`` (names of its devices and guardians), ``conflicts`` when
        concurrent reshares made two facts of one epoch, and ``removed_at_epoch`` when this
        device holds no share of the current epoch."""
        fact = self.epochs.current(account_id)
        try:
            established = self.get(account_id)
            record, epoch, removed = established.account, established.epoch, None
        except AccountError:
            if fact is None:
                raise
            record, epoch = fact.account, fact.epoch
            # a holder whose share of this epoch is not journaled yet was not removed
            removed = (None if self._device_ids() & holder_ids(fact.account)
                       else self._removed_at(account_id, fact))
        out = record.to_json()
        out["epoch"] = epoch
        out["holders"] = [h.name for h in (*record.devices, *record.guardians)]
        conflicts = self.epochs.conflicts(account_id)
        if conflicts:
            out["conflicts"] = conflicts
        if removed is not None:
            out["removed_at_epoch"] = removed
        return out

    def _known(self) -> list[str]:
        return sorted({*self._accounts, *self._by_epoch})

    def only(self) -> AccountEstablished:
        """The single account this device holds (``ctl dkd`` without ``--account``)."""
        known = self._known()
        if len(known) != 1:
            raise AccountError(
                f"expected exactly one account on this device, found {len(known)}"
            )
        return self.get(known[0])

    def held_share(self, account_id: str, holder_set: HolderSet) -> HeldShare:
        for s in self.get(account_id).shares:
            if s.holder_set == holder_set:
                return s
        raise AccountError(f"this device holds no {holder_set} share of {account_id}")

    def accounts(self) -> Mapping[str, AccountEstablished]:
        """Every account this device holds or held, with its newest record here (usable or
        not: :meth:`get` says whether it is)."""
        out: dict[str, AccountEstablished] = {}
        for account_id in self._known():
            try:
                out[account_id] = self.get(account_id)
            except AccountError:
                out[account_id] = self._newest(account_id) or self._accounts[account_id]
        return out

    def __len__(self) -> int:
        return len(self._known())


__all__ = [
    "KIND_ACCOUNT",
    "AccountError",
    "AccountEstablished",
    "AccountHolder",
    "AccountRecord",
    "AccountStore",
    "HeldShare",
    "HolderSet",
    "OpenedShares",
    "decode_established",
    "encode_established",
    "genesis_held_share",
    "open_held_share",
    "share_binding",
]
