"""Account epochs as signed facts (the vocabulary shared by resharing and the epoch store).

Theory of operation
-------------------
An account's membership changes by *resharing* (``protocols/reshare``): t holders of the current
epoch deal sub-shares of their own shares to a new holder set, so ``s`` and ``S`` never change
but the holders, thresholds, public shares and Feldman commitments do. Each such membership is an
**epoch**: epoch 0 is what genesis (or recovery) established, epoch ``e + 1`` is what a reshare
session that started from epoch ``e`` produced.

An epoch is published as an :class:`EpochFact`: the new public :class:`AccountRecord` and its
epoch number ``e + 1``, the digest of the fact it extends, the reshare session and who dealt it, and
signatures (:class:`EpochSignature`) over :func:`fact_digest` by the dealers (at least the old
threshold of old holders: they authorised the change) and by every new holder (each verified its
sub-shares, so the new epoch is usable). Facts are evidence any holder can check with public
keys only; they carry no share and nothing a share follows from.

This module holds the vocabulary both sides need (structs, digest, signing) and
:class:`EpochStore`, the set of verified facts a device keeps.

Verification (:meth:`EpochStore.offer`)
--------------------------------------
A fact of epoch ``e + 1`` is **valid** when

* its record passes :meth:`AccountRecord.check` (ids, thresholds, commitments, public shares);
* it *extends a fact the store holds*: ``previous`` is the digest of a held fact of epoch
  ``e`` of the same account id with the same public key ``S`` (a reshare never changes ``S``);
* its dealers are a quorum of that previous epoch's holders, all from **one** holder set:
  at least ``threshold`` of its devices, or at least ``guardian_threshold`` of its guardians.
  A reshare combines sub-shares of one Shamir sharing with that sharing's Lagrange weights,
  so the two sets never mix. Guardians dealing is the recovery path: when too few devices
  are left (the lost-phone case below the device threshold), ``t_g`` guardians deal the
  account to a new device set, and the fact records that the guardians authorised it;
* every dealer signed the digest as ``"dealer"``, every signature's key is the key of the
  device id it names (:meth:`EpochSignature.verify`), each signer signs at most once per
  role, and nobody signs who is not a dealer (``"dealer"``) or a new holder (``"holder"``).

New holders may sign later than the dealers: the store keeps a held fact's signatures as a
set and merges copies of the same fact (same digest) by union. A fact is **acknowledged**
once every new holder (each device and each guardian of the new record) has signed it: each
then verified its sub-shares, so the epoch is usable. Only acknowledged facts count towards
the current epoch.

Two ways in besides extension: **roots** (:meth:`EpochStore.add_root`) are the epoch-0 facts
of the accounts this device established itself (genesis, recovery: the ``account.established``
record it verified); they are never accepted from a peer, because a record alone does not
prove who holds the shares it commits to. **Anchors** (:meth:`EpochStore.anchor`) are facts
of an epoch this device holds a share of by its own reshare session (a new holder has no
fact of the epoch before it); ``AccountStore`` decides that, the store only checks the fact
itself.

A fact whose predecessor the store does not hold (yet) is held aside as **pending** when it
is otherwise sound (record, signatures): facts can arrive in any order (a journal fold, a
join). Pending facts are retried whenever a fact is adopted and are never journaled (a sync
session journals only what it verified); the pending set is bounded (:data:`PENDING_LIMIT`,
oldest dropped first), so a peer cannot grow it without limit. Anything else is **refused**
with a one-line reason (:class:`FactVerdict`).

The join (a state-based CRDT)
-----------------------------
The state is, per account, the set of held facts and, per fact, the set of its signatures;
:meth:`EpochStore.merge` is the union (every fact of the other store offered here, so the
result holds only what verifies). Union is commutative, associative and idempotent, and a
fact's validity depends only on the facts it extends, so any two stores that saw the same
facts, in any order, duplicated or replayed, hold the same state.
:meth:`EpochStore.current` reduces the state deterministically: the acknowledged fact with
the highest epoch, and among several of that epoch (concurrent reshares that extended the
same predecessor) the one with the lowest digest; :meth:`EpochStore.conflicts` reports every
epoch with more than one acknowledged fact, so an operator sees that two reshares raced.

Pure: no trio, no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import msgspec

from aura_node.crypto.keys import PUBLIC_KEY_BYTES, DeviceKey, DevicePublicKey, device_id_for
from aura_node.errors import BadSignatureError, ProtocolError
from aura_node.protocols.account_record import AccountError, AccountRecord

KIND_EPOCH_FACT = "account.epoch"
#: signature domain of an epoch fact (``DeviceKey.sign(EPOCH_SIGN_DOMAIN, fact_digest(...))``)
EPOCH_SIGN_DOMAIN = "aura-node/account-epoch/v1"
_DIGEST_DOMAIN = b"aura-node/account-epoch-digest/v1\n"


class EpochError(ProtocolError):
    code = "epoch"


class EpochSignature(msgspec.Struct, frozen=True, kw_only=True):
    """One device's signature over a fact digest; ``role`` says in which capacity it signed."""

    role: str  # "dealer" (an old-epoch holder that dealt) or "holder" (a new-epoch holder)
    device_id: str
    public_key: bytes  # the signer's Ed25519 device key; device_id_for(public_key) == device_id
    signature: bytes

    def verify(self, digest: bytes) -> None:
        if len(self.public_key) != PUBLIC_KEY_BYTES or (
            device_id_for(self.public_key) != self.device_id
        ):
            raise EpochError(f"epoch signature key does not belong to device {self.device_id}")
        try:
            DevicePublicKey(self.public_key).verify(EPOCH_SIGN_DOMAIN, digest, self.signature)
        except BadSignatureError as exc:
            raise EpochError(f"{self.role} {self.device_id}: {exc}") from None


class EpochFact(msgspec.Struct, frozen=True, kw_only=True):
    """A new epoch of an account: its public record and the evidence that made it."""

    account: AccountRecord
    epoch: int
    previous: bytes  # fact_digest of the epoch it extends (b"" for an epoch-0 fact)
    session_id: str  # the reshare session that dealt it ("" for epoch 0)
    dealers: tuple[str, ...]  # device ids of the old-epoch holders whose dealings were combined
    signatures: tuple[EpochSignature, ...] = ()

    def digest(self) -> bytes:
        return fact_digest(
            self.account,
            epoch=self.epoch,
            previous=self.previous,
            session_id=self.session_id,
            dealers=self.dealers,
        )


_encoder = msgspec.msgpack.Encoder()


def fact_digest(
    account: AccountRecord,
    *,
    epoch: int,
    previous: bytes,
    session_id: str,
    dealers: tuple[str, ...],
) -> bytes:
    """What every dealer and new holder signs: the new record, its epoch, what it extends and
    who dealt it."""
    body = _encoder.encode((account, epoch, previous, session_id, sorted(dealers)))
    return hashlib.sha256(_DIGEST_DOMAIN + body).digest()


def root_fact(account: AccountRecord) -> EpochFact:
    """The epoch-0 fact of an account as genesis established it: no previous fact, no reshare
    session, no dealers, no signatures (its authority is the account record every holder verified
    at genesis, whose id is a hash of ``S``). Epoch 1 extends ``root_fact(record).digest()``."""
    return EpochFact(account=account, epoch=0, previous=b"", session_id="", dealers=())


def sign_fact(key: DeviceKey, digest: bytes, *, role: str) -> EpochSignature:
    return EpochSignature(
        role=role,
        device_id=key.device_id,
        public_key=key.public.raw,
        signature=key.sign(EPOCH_SIGN_DOMAIN, digest),
    )


_fact_decoder = msgspec.msgpack.Decoder(EpochFact)

#: facts held aside, per store, waiting for the fact they extend (module doc)
PENDING_LIMIT = 64
SIGNER_ROLES = ("dealer", "holder")

Outcome = Literal["adopted", "updated", "known", "pending", "refused"]


def encode_fact(fact: EpochFact) -> bytes:
    """The body of an :data:`KIND_EPOCH_FACT` journal record."""
    return _encoder.encode(fact)


def decode_fact(body: bytes) -> EpochFact:
    try:
        return _fact_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise EpochError(f"{KIND_EPOCH_FACT} record does not decode: {exc}") from None


def holder_ids(account: AccountRecord) -> frozenset[str]:
    """Device ids of every holder of a share in ``account``: its devices and its guardians."""
    return frozenset(h.device_id for h in (*account.devices, *account.guardians))


def _label(fact: EpochFact) -> str:
    return (f"epoch {fact.epoch} fact {fact.digest().hex()[:16]} of account "
            f"{fact.account.account_id}")


class FactVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`EpochStore.offer` did with a fact, and why (one line, for a log or a
    ``.rejected`` record)."""

    outcome: Outcome
    account_id: str
    epoch: int
    digest: bytes
    reason: str = ""

    @property
    def new(self) -> bool:
        """The store learnt something (a fact, or a signature of one)."""
        return self.outcome in ("adopted", "updated")


def _verdict(fact: EpochFact, outcome: Outcome, reason: str = "") -> FactVerdict:
    return FactVerdict(outcome=outcome, account_id=fact.account.account_id, epoch=fact.epoch,
                       digest=fact.digest(), reason=reason)


def check_self_contained(fact: EpochFact) -> None:
    """Everything about ``fact`` that needs no other fact: the record, the dealer list, every
    signature (key, digest, capacity), every dealer signed. Raises :class:`EpochError`."""
    if fact.epoch < 1:
        raise EpochError(f"an epoch-{fact.epoch} fact is not exchanged: an account's epoch 0 is "
                         "the genesis or recovery record its holders verified")
    try:
        fact.account.check()
    except AccountError as exc:
        raise EpochError(f"{_label(fact)}: record does not check: {exc.message}") from None
    if not fact.dealers:
        raise EpochError(f"{_label(fact)} names no dealers")
    if len(set(fact.dealers)) != len(fact.dealers):
        raise EpochError(f"{_label(fact)} names a dealer twice")
    check_signatures(fact)


def check_signatures(fact: EpochFact, *, known: frozenset[tuple[str, str]] = frozenset()
                     ) -> None:
    """Every signature of ``fact`` (but those ``known``: (role, device id) pairs already
    verified over this digest) is by a dealer or new holder, in that capacity, once, with the
    key of the device it names; every dealer signed. Raises :class:`EpochError`."""
    digest = fact.digest()
    holders = holder_ids(fact.account)
    seen: set[tuple[str, str]] = set()
    for sig in fact.signatures:
        if sig.role not in SIGNER_ROLES:
            raise EpochError(f"{_label(fact)}: signature in unknown capacity {sig.role[:20]!r} "
                             f"(expected one of {', '.join(SIGNER_ROLES)})")
        if (sig.role, sig.device_id) in seen:
            raise EpochError(f"{_label(fact)}: {sig.role} {sig.device_id[:40]} signed twice")
        seen.add((sig.role, sig.device_id))
        allowed = fact.dealers if sig.role == "dealer" else holders
        if sig.device_id not in allowed:
            raise EpochError(f"{_label(fact)}: {sig.device_id[:40]} signed as {sig.role} but is "
                             f"not one of its {sig.role}s")
        if (sig.role, sig.device_id) not in known:
            try:
                sig.verify(digest)
            except EpochError as exc:
                raise EpochError(f"{_label(fact)}: {exc.message}") from None
    missing = [d for d in fact.dealers if ("dealer", d) not in seen | known]
    if missing:
        raise EpochError(f"{_label(fact)}: dealer(s) {', '.join(missing)} did not sign")


def check_extends(fact: EpochFact, previous: EpochFact) -> None:
    """``fact`` is a valid successor of ``previous``: same account and key, a later epoch
    (usually the next; a reshare from a recovered device numbers its epoch above every
    participant's, so it may skip numbers that another lineage used), dealt by a quorum of one
    of ``previous``'s holder sets (module doc). Raises EpochError."""
    old, new = previous.account, fact.account
    if (old.account_id, old.public_key) != (new.account_id, new.public_key):
        raise EpochError(f"{_label(fact)} changes the account key (a reshare keeps S)")
    if fact.epoch <= previous.epoch:
        raise EpochError(f"{_label(fact)} extends an epoch-{previous.epoch} fact; expected "
                         f"an epoch above {previous.epoch}")
    dealers = set(fact.dealers)
    for holders, t, what in ((old.devices, old.threshold, "devices"),
                             (old.guardians, old.guardian_threshold, "guardians")):
        ids = {h.device_id for h in holders}
        if holders and dealers <= ids:
            if len(dealers) < t:
                raise EpochError(f"{_label(fact)} was dealt by {len(dealers)} of the "
                                 f"{what} of epoch {previous.epoch}; its threshold is {t}")
            return
    raise EpochError(f"{_label(fact)}: its dealers are not all devices or all guardians of "
                     f"epoch {previous.epoch}")


def acknowledged(fact: EpochFact) -> bool:
    """Every new holder signed (roots: by definition)."""
    if fact.epoch == 0:
        return True
    signed = {s.device_id for s in fact.signatures if s.role == "holder"}
    return holder_ids(fact.account) <= signed


class EpochStore:
    """The verified epoch facts of the accounts this device knows (module doc).

    Pure and synchronous; the node keeps one inside its ``AccountStore``."""

    __slots__ = ("_facts", "_pending", "_roots")

    def __init__(self) -> None:
        #: account id -> digest -> fact (signatures: the union of every verified copy)
        self._facts: dict[str, dict[bytes, EpochFact]] = {}
        #: account id -> digests of its roots (also in ``_facts``)
        self._roots: dict[str, set[bytes]] = {}
        self._pending: OrderedDict[bytes, EpochFact] = OrderedDict()

    # --- what comes in ----------------------------------------------------------------------

    def add_root(self, root: EpochFact) -> None:
        """The epoch-0 fact of an account this device established (never from a peer)."""
        if root.epoch != 0 or root.previous or root.dealers or root.signatures:
            raise EpochError("a root is an epoch-0 fact with no previous fact, dealers or "
                             "signatures (root_fact)")
        root.account.check()
        digest = root.digest()
        self._facts.setdefault(root.account.account_id, {})[digest] = root
        self._roots.setdefault(root.account.account_id, set()).add(digest)
        self._retry_pending()

    def offer(self, fact: EpochFact) -> FactVerdict:
        """Verify ``fact`` and keep it if it holds (module doc): ``adopted`` (new),
        ``updated`` (new signatures of a held fact), ``known``, ``pending`` or ``refused``."""
        verdict = self._offer(fact)
        if verdict.outcome == "adopted":
            self._retry_pending()
        return verdict

    def anchor(self, fact: EpochFact) -> FactVerdict:
        """Keep ``fact`` without a predecessor: this device holds a share of its epoch from
        its own reshare session (the caller's decision; see ``AccountStore``). The fact must
        still be self-consistent and correctly signed."""
        try:
            check_self_contained(fact)
        except EpochError as exc:
            return _verdict(fact, "refused", exc.message)
        self._pending.pop(fact.digest(), None)
        verdict = self._keep(fact)
        if verdict.outcome == "adopted":
            self._retry_pending()
        return verdict

    def merge(self, other: EpochStore) -> list[FactVerdict]:
        """Join ``other`` into this store: its roots, and every fact it holds or holds
        aside, verified here. Returns what each offered fact did."""
        for account_id, digests in other._roots.items():
            for d in digests:
                self.add_root(other._facts[account_id][d])
        out = [self.offer(f) for facts in other._facts.values() for f in facts.values()
               if f.epoch > 0]
        out += [self.offer(f) for f in list(other._pending.values())]
        return out

    def copy(self) -> EpochStore:
        new = EpochStore()
        new._facts = {a: dict(f) for a, f in self._facts.items()}
        new._roots = {a: set(r) for a, r in self._roots.items()}
        new._pending = OrderedDict(self._pending)
        return new

    def _offer(self, fact: EpochFact) -> FactVerdict:
        held = self._facts.get(fact.account.account_id, {})
        same = held.get(fact.digest())
        if same is not None and fact.epoch > 0:
            # the digest binds the record, epoch, predecessor and dealers, all verified when
            # the fact was adopted: only signatures the held copy lacks need checking
            known = {(s.role, s.device_id): s for s in same.signatures}
            try:
                check_signatures(fact, known=frozenset(
                    k for k, sig in known.items() if sig in fact.signatures))
            except EpochError as exc:
                return _verdict(fact, "refused", exc.message)
            return self._keep(fact)
        try:
            check_self_contained(fact)
        except EpochError as exc:
            return _verdict(fact, "refused", exc.message)
        # looked up over every account: a fact that names another account's fact as its
        # predecessor changed S, and is refused as such rather than held aside
        previous = held.get(fact.previous) or self._find(fact.previous)
        if previous is None:
            self._hold_aside(fact)
            return _verdict(fact, "pending", f"{_label(fact)} extends fact "
                            f"{fact.previous.hex()[:16]}, which this device does not hold")
        try:
            check_extends(fact, previous)
        except EpochError as exc:
            return _verdict(fact, "refused", exc.message)
        return self._keep(fact)

    def _find(self, digest: bytes) -> EpochFact | None:
        for facts in self._facts.values():
            fact = facts.get(digest)
            if fact is not None:
                return fact
        return None

    def _keep(self, fact: EpochFact) -> FactVerdict:
        digest = fact.digest()
        facts = self._facts.setdefault(fact.account.account_id, {})
        held = facts.get(digest)
        if held is None:
            facts[digest] = _canonical(fact, fact.signatures)
            return _verdict(fact, "adopted")
        merged = {(s.role, s.device_id): s for s in (*held.signatures, *fact.signatures)}
        if len(merged) == len(held.signatures):
            return _verdict(fact, "known")
        facts[digest] = _canonical(held, tuple(merged.values()))
        return _verdict(fact, "updated")

    def _hold_aside(self, fact: EpochFact) -> None:
        digest = fact.digest()
        old = self._pending.pop(digest, None)
        if old is not None:  # keep every signature any copy carried
            merged = {(s.role, s.device_id): s for s in (*old.signatures, *fact.signatures)}
            fact = _canonical(fact, tuple(merged.values()))
        self._pending[digest] = fact
        while len(self._pending) > PENDING_LIMIT:
            self._pending.popitem(last=False)

    def _retry_pending(self) -> None:
        progress = True
        while progress and self._pending:
            progress = False
            for digest, fact in list(self._pending.items()):
                if self._find(fact.previous) is None:
                    continue
                del self._pending[digest]
                if self._offer(fact).outcome in ("adopted", "updated"):
                    progress = True

    # --- what it says -----------------------------------------------------------------------

    def accounts(self) -> list[str]:
        return sorted(self._facts)

    def facts(self, account_id: str) -> list[EpochFact]:
        """Held facts of ``account_id`` (roots included), by epoch then digest."""
        return sorted(self._facts.get(account_id, {}).values(),
                      key=lambda f: (f.epoch, f.digest()))

    def pending(self) -> list[EpochFact]:
        return list(self._pending.values())

    def current(self, account_id: str) -> EpochFact | None:
        """The current epoch's fact: the acknowledged fact with the highest epoch, the lowest
        digest among several of that epoch; None when the store holds none."""
        best: tuple[int, bytes] | None = None
        chosen: EpochFact | None = None
        for digest, fact in self._facts.get(account_id, {}).items():
            if not acknowledged(fact):
                continue
            key = (-fact.epoch, digest)
            if best is None or key < best:
                best, chosen = key, fact
        return chosen

    def conflicts(self, account_id: str) -> list[dict[str, object]]:
        """Epochs (>= 1) with more than one acknowledged fact: concurrent reshares. Each as
        ``{"epoch", "facts": [digest hex...], "chosen": digest hex}`` (the lowest digest)."""
        by_epoch: dict[int, list[bytes]] = {}
        for digest, fact in self._facts.get(account_id, {}).items():
            if fact.epoch > 0 and acknowledged(fact):
                by_epoch.setdefault(fact.epoch, []).append(digest)
        return [{"epoch": e, "facts": [d.hex() for d in sorted(ds)], "chosen": min(ds).hex()}
                for e, ds in sorted(by_epoch.items()) if len(ds) > 1]

    def shares_with(self, account_id: str, device_id: str) -> bool:
        """Whether ``device_id`` holds (or held) a share in some epoch this store holds."""
        return any(device_id in holder_ids(f.account)
                   for f in self._facts.get(account_id, {}).values())

    def summary(self, account_id: str) -> dict[bytes, int]:
        """What a peer needs to tell what this store lacks: digest -> signature count."""
        return {d: len(f.signatures) for d, f in self._facts.get(account_id, {}).items()}

    def missing_from(self, account_id: str, summary: Mapping[bytes, int]) -> list[EpochFact]:
        """Held facts of ``account_id`` (not roots) that a store with ``summary`` lacks or
        holds with fewer signatures, by epoch (so a receiver meets each predecessor first)."""
        return [f for f in self.facts(account_id)
                if f.epoch > 0 and summary.get(f.digest(), -1) < len(f.signatures)]

    def state(self) -> frozenset[tuple[str, bytes, frozenset[bytes]]]:
        """The join's state, for comparisons: (account, fact digest, its signatures)."""
        return frozenset((a, d, frozenset(s.signature for s in f.signatures))
                         for a, facts in self._facts.items() for d, f in facts.items())

    def __iter__(self) -> Iterator[EpochFact]:
        for account_id in self.accounts():
            yield from self.facts(account_id)

    def __len__(self) -> int:
        return sum(len(f) for f in self._facts.values())


def _canonical(fact: EpochFact, signatures: Iterable[EpochSignature]) -> EpochFact:
    """``fact`` with ``signatures`` in one order, so equal states encode equally."""
    ordered = tuple(sorted(signatures, key=lambda s: (s.role, s.device_id)))
    return EpochFact(account=fact.account, epoch=fact.epoch, previous=fact.previous,
                     session_id=fact.session_id, dealers=fact.dealers, signatures=ordered)


__all__ = [
    "EPOCH_SIGN_DOMAIN",
    "KIND_EPOCH_FACT",
    "PENDING_LIMIT",
    "EpochError",
    "EpochFact",
    "EpochSignature",
    "EpochStore",
    "FactVerdict",
    "acknowledged",
    "check_extends",
    "check_self_contained",
    "check_signatures",
    "decode_fact",
    "encode_fact",
    "fact_digest",
    "holder_ids",
    "root_fact",
    "sign_fact",
]
