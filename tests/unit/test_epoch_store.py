"""The epoch store: verification of facts, and the join (a state-based CRDT) of verified facts.

A small universe of real facts (dealt with real Feldman commitments and signed with real
device keys, once per module) over one account with genesis devices d1, d2, d3 at 2-of-3:

    root --E1a (d1,d2 deal; holders d1,d2,d4 at 2-of-3)--> E2 (d1,d4 deal; d1,d4,d5)
         \\-E1b (d2,d3 deal; holders d2,d3 at 2-of-2)        (E1a and E1b: concurrent reshares)

plus partially signed copies (holders sign later) and forged variants. Hypothesis draws
stores as arbitrary sequences of these, then checks the join laws, convergence under
reordering, duplication and a journal replay, and that forged facts never get in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.crypto.group import Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.harness.simulation import dealt_account
from aura_node.protocols.account import (
    KIND_ACCOUNT,
    AccountError,
    AccountEstablished,
    AccountStore,
    encode_established,
)
from aura_node.protocols.epochs import (
    KIND_EPOCH_FACT,
    PENDING_LIMIT,
    EpochFact,
    EpochSignature,
    EpochStore,
    decode_fact,
    encode_fact,
    root_fact,
    sign_fact,
)
from tests.epoch_support import epoch_records, reshared

SECRET = Scalar.from_int(123456789)


def key(name: str) -> DeviceKey:
    return DeviceKey.from_seed(name.encode().ljust(32, b"\0"))


@dataclass(frozen=True)
class Universe:
    genesis: dict[str, AccountEstablished]
    root: EpochFact
    e1a: EpochFact
    e1b: EpochFact
    e2: EpochFact
    e1a_partial: EpochFact  # dealers and d1 only: not acknowledged yet
    established: dict[str, dict[int, AccountEstablished]]  # E1a / E2 records per new holder
    forged: dict[str, EpochFact]

    def valid(self) -> list[EpochFact]:
        return [self.e1a, self.e1b, self.e2, self.e1a_partial]


@functools.cache
def universe() -> Universe:
    k = {n: key(n) for n in ("d1", "d2", "d3", "d4", "d5", "x")}
    genesis = dealt_account({n: k[n].public for n in ("d1", "d2", "d3")}, 2, secret=SECRET)
    root = root_fact(genesis["d1"].account)
    e1a, est_a = reshared(root, secret=SECRET, dealers=[k["d1"], k["d2"]],
                          devices={n: k[n] for n in ("d1", "d2", "d4")}, t=2, session_id="a")
    e1b, _ = reshared(root, secret=SECRET, dealers=[k["d2"], k["d3"]],
                      devices={n: k[n] for n in ("d2", "d3")}, t=2, session_id="b")
    e2, est_2 = reshared(e1a, secret=SECRET, dealers=[k["d1"], k["d4"]],
                         devices={n: k[n] for n in ("d1", "d4", "d5")}, t=2, session_id="c")
    partial = msgspec.structs.replace(
        e1a, signatures=tuple(s for s in e1a.signatures
                              if s.role == "dealer" or s.device_id == k["d1"].device_id))
    digest = e1a.digest()
    other_key = dealt_account({"d1": k["d1"].public}, 1)["d1"].account  # another account
    forged = {
        # a signature by a key that is not the device it names
        "stolen signature": msgspec.structs.replace(e1a, signatures=(
            *e1a.signatures[:-1], EpochSignature(
                role="holder", device_id=e1a.signatures[-1].device_id,
                public_key=k["x"].public.raw,
                signature=k["x"].sign("aura-node/account-epoch/v1", digest)))),
        # a dealer that did not sign
        "unsigned dealer": msgspec.structs.replace(
            e1a, signatures=tuple(s for s in e1a.signatures if s.role != "dealer")),
        # signed over another digest (the epoch number changed after signing)
        "tampered": msgspec.structs.replace(e1a, epoch=2),
        # a signer who is neither dealer nor new holder
        "extra signer": msgspec.structs.replace(
            e1a, signatures=(*e1a.signatures, sign_fact(k["x"], digest, role="holder"))),
        # the same dealer twice
        "duplicate signer": msgspec.structs.replace(
            e1a, signatures=(*e1a.signatures, e1a.signatures[0])),
        # one dealer, below the genesis device threshold of 2
        "below threshold": reshared(root, secret=SECRET, dealers=[k["d1"]],
                                    devices={"d1": k["d1"]}, t=1, session_id="d")[0],
        # dealt by a device that was never a holder
        "outsider dealer": reshared(root, secret=SECRET, dealers=[k["d1"], k["x"]],
                                    devices={"d1": k["d1"], "d2": k["d2"]}, t=2,
                                    session_id="e")[0],
        # a different account key S (another secret)
        "other key": reshared(root, secret=Scalar.from_int(42), dealers=[k["d1"], k["d2"]],
                              devices={"d1": k["d1"], "d2": k["d2"]}, t=2, session_id="f")[0],
        # extends a fact of another account
        "foreign predecessor": reshared(root_fact(other_key), secret=SECRET,
                                        dealers=[k["d1"], k["d2"]],
                                        devices={"d1": k["d1"], "d2": k["d2"]}, t=2,
                                        session_id="g")[0],
    }
    return Universe(genesis=genesis, root=root, e1a=e1a, e1b=e1b, e2=e2, e1a_partial=partial,
                    established={n: {1: est_a[n]} for n in est_a} | {
                        n: {**({1: est_a[n]} if n in est_a else {}), 2: est_2[n]}
                        for n in est_2},
                    forged=forged)


def store_of(facts: list[EpochFact]) -> EpochStore:
    s = EpochStore()
    s.add_root(universe().root)
    for f in facts:
        s.offer(f)
    return s


def cur(s: EpochStore) -> bytes:
    """The digest of the store's current fact (held facts keep their signatures sorted, so
    compare digests, not structs)."""
    fact = s.current(universe().root.account.account_id)
    assert fact is not None
    return fact.digest()


def join(a: EpochStore, b: EpochStore) -> EpochStore:
    out = a.copy()
    out.merge(b)
    return out


facts_st = st.lists(st.sampled_from(range(4)), max_size=8).map(
    lambda ix: [universe().valid()[i] for i in ix])
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    universe()  # deal and sign once, outside Hypothesis' timing


# --- verification ----------------------------------------------------------------------------


def test_valid_facts_extend_the_root_and_the_current_epoch_is_the_newest_acknowledged() -> None:
    u = universe()
    s = store_of([u.e1a_partial])
    assert cur(s) == u.root.digest()  # not acknowledged by d2, d4 yet
    assert s.offer(u.e1a).outcome == "updated"  # the missing holder signatures
    assert cur(s) == u.e1a.digest()
    assert s.offer(u.e2).outcome == "adopted"
    assert s.offer(u.e2).outcome == "known"
    assert cur(s) == u.e2.digest()


@pytest.mark.parametrize("name", sorted([
    "stolen signature", "unsigned dealer", "tampered", "extra signer", "duplicate signer",
    "below threshold", "outsider dealer", "other key"]))
def test_a_forged_or_non_extending_fact_is_refused_with_a_reason(name: str) -> None:
    s = store_of([])
    verdict = s.offer(universe().forged[name])
    assert verdict.outcome == "refused", verdict
    assert verdict.reason and "\n" not in verdict.reason
    assert len(s) == 1 and not s.pending()


def test_the_reasons_say_what_was_wrong() -> None:
    f, s = universe().forged, store_of([])
    assert "does not belong" in s.offer(f["stolen signature"]).reason
    assert "did not sign" in s.offer(f["unsigned dealer"]).reason
    assert "threshold is 2" in s.offer(f["below threshold"]).reason
    assert "not all devices or all guardians" in s.offer(f["outsider dealer"]).reason
    assert "changes the account key" in s.offer(f["other key"]).reason
    assert "signed twice" in s.offer(f["duplicate signer"]).reason
    assert "not one of its holders" in s.offer(f["extra signer"]).reason


def test_a_fact_whose_predecessor_is_unknown_waits_bounded_and_is_never_current() -> None:
    u = universe()
    s = store_of([])
    v = s.offer(u.forged["foreign predecessor"])
    assert v.outcome == "pending" and "does not hold" in v.reason
    assert cur(s) == u.root.digest()
    # a flood of unverifiable facts keeps at most PENDING_LIMIT of them
    for i in range(PENDING_LIMIT + 5):
        s.offer(msgspec.structs.replace(u.e2, previous=i.to_bytes(32, "big"), signatures=()))
    assert len(s.pending()) <= PENDING_LIMIT


def test_epoch_zero_facts_come_only_from_this_devices_own_records() -> None:
    u = universe()
    v = store_of([]).offer(u.root)
    assert v.outcome == "refused" and "epoch 0" in v.reason


def test_concurrent_reshares_resolve_to_the_lowest_digest_and_are_reported() -> None:
    u = universe()
    s = store_of([u.e1a, u.e1b])
    aid = u.root.account.account_id
    winner = min((u.e1a, u.e1b), key=lambda f: f.digest())
    assert cur(s) == winner.digest()
    (conflict,) = s.conflicts(aid)
    assert conflict["epoch"] == 1 and conflict["chosen"] == winner.digest().hex()
    assert conflict["facts"] == sorted([u.e1a.digest().hex(), u.e1b.digest().hex()])


def test_fact_bodies_round_trip_and_garbage_is_a_clear_error() -> None:
    from aura_node.protocols.epochs import EpochError

    assert decode_fact(encode_fact(universe().e2)) == universe().e2
    with pytest.raises(EpochError, match="does not decode"):
        decode_fact(b"\x93junk")


# --- the join laws -------------------------------------------------------------------------


@SETTINGS
@given(facts_st, facts_st)
def test_join_is_commutative(a: list[EpochFact], b: list[EpochFact]) -> None:
    x, y = store_of(a), store_of(b)
    assert join(x, y).state() == join(y, x).state()


@SETTINGS
@given(facts_st, facts_st, facts_st)
def test_join_is_associative(a: list[EpochFact], b: list[EpochFact], c: list[EpochFact]) -> None:
    x, y, z = store_of(a), store_of(b), store_of(c)
    assert join(join(x, y), z).state() == join(x, join(y, z)).state()


@SETTINGS
@given(facts_st)
def test_join_is_idempotent(a: list[EpochFact]) -> None:
    x = store_of(a)
    assert join(x, x).state() == x.state()


@SETTINGS
@given(st.permutations(range(4)), st.lists(st.sampled_from(range(4)), max_size=6))
def test_reordered_and_duplicated_arrivals_converge(order: list[int], dups: list[int]) -> None:
    u = universe()
    facts = [u.valid()[i] for i in order]
    arrivals = facts + [u.valid()[i] for i in dups]
    reference = store_of([u.e1a, u.e1b, u.e2, u.e1a_partial])
    got = store_of(arrivals)
    aid = u.root.account.account_id
    assert got.state() == reference.state()
    assert cur(got) == cur(reference) == u.e2.digest()
    assert got.conflicts(aid) == reference.conflicts(aid)
    assert not got.pending()


@SETTINGS
@given(facts_st, st.sampled_from(sorted(["stolen signature", "unsigned dealer", "tampered",
                                          "extra signer", "below threshold", "outsider dealer",
                                          "other key", "foreign predecessor"])))
def test_forged_facts_never_enter_whatever_the_order(a: list[EpochFact], name: str) -> None:
    # (a forged copy of E1a shares its digest: what must not enter is its bad signature)
    forged = universe().forged[name]
    s = store_of([*a, forged, *a])
    assert s.state() == store_of(a).state()
    bad = {sig.signature for sig in forged.signatures} - {
        sig.signature for f in universe().valid() for sig in f.signatures}
    assert bad.isdisjoint(sig for _, _, sigs in s.state() for sig in sigs)
    assert join(s, store_of(a)).state() == store_of(a).state()


# --- the account store over journal records ------------------------------------------------


def _journal(u: Universe, holder: str, facts: list[EpochFact]) -> list[tuple[str, bytes]]:
    recs = [(KIND_ACCOUNT, encode_established(u.genesis[holder]))] if holder in u.genesis else []
    for e, est in sorted(u.established.get(holder, {}).items()):
        recs += epoch_records(u.e1a if e == 1 else u.e2, est)
    return recs + [(KIND_EPOCH_FACT, encode_fact(f)) for f in facts]


@SETTINGS
@given(st.permutations(range(4)))
def test_a_restarted_node_folds_its_journal_to_the_same_view(order: list[int]) -> None:
    u = universe()
    recs = _journal(u, "d3", [u.valid()[i] for i in order])
    live = AccountStore()
    for kind, body in recs:
        live.fold(kind, body)
    again = AccountStore.from_records(recs + recs)  # replayed, and replayed twice
    assert again.epochs.state() == live.epochs.state()
    aid = u.root.account.account_id
    assert again.show(aid) == live.show(aid)


def test_a_removed_device_has_no_usable_share_and_is_told_why() -> None:
    u = universe()
    aid = u.root.account.account_id
    d3 = AccountStore.from_records(_journal(u, "d3", [u.e1a]))
    with pytest.raises(AccountError, match=f"removed from account {aid} at epoch 1"):
        d3.get(aid)
    with pytest.raises(AccountError, match="removed"):
        d3.held_share(aid, "devices")
    view = d3.show(aid)
    assert view["epoch"] == 1 and view["removed_at_epoch"] == 1
    assert view["holders"] == ["d1", "d2", "d4"]
    # d2 is still a holder: before its epoch-1 record it has no share of epoch 1 yet
    d2 = AccountStore.from_records(_journal(u, "d3", [u.e1a])[:1])
    d2.add(u.genesis["d2"])
    d2.learn_fact(u.e1a)
    with pytest.raises(AccountError, match="no share of account .* at its current epoch 1 yet"):
        d2.get(aid)
    assert "removed_at_epoch" not in d2.show(aid) and d2.show(aid)["epoch"] == 1
    d2.add(u.established["d2"][1])
    assert d2.get(aid).epoch == 1 and d2.show(aid)["epoch"] == 1


def test_a_new_holder_anchors_its_own_epoch_and_follows_later_ones() -> None:
    u = universe()
    aid = u.root.account.account_id
    d4 = AccountStore.from_records(_journal(u, "d4", []))  # no genesis record: added at 1
    assert d4.get(aid).epoch == 2 and d4.current_epoch(aid) == 2
    # the fact first, its record after (either journal order works)
    first = AccountStore()
    assert first.learn_fact(u.e1a).outcome == "pending"
    first.add(u.established["d4"][1])
    assert first.current_epoch(aid) == 1 and first.get(aid).epoch == 1
    assert "conflicts" not in first.show(aid)


def test_concurrent_epochs_show_conflicts_and_the_losing_share_is_refused() -> None:
    u = universe()
    aid = u.root.account.account_id
    s = AccountStore.from_records(_journal(u, "d2", [u.e1a, u.e1b]))
    view = s.show(aid)
    assert [c["epoch"] for c in view["conflicts"]] == [1]
    current = s.epochs.current(aid)
    assert current is not None and current.epoch == 1
    if current.digest() == u.e1b.digest():  # d2's share is of E1a: it lost
        with pytest.raises(AccountError, match="is of another epoch-1 reshare attempt than fact"):
            s.get(aid)
    else:
        assert s.get(aid).account == u.e1a.account


def test_a_successor_epoch_must_be_later_and_may_skip_numbers() -> None:
    # a reshare from a recovered device numbers its epoch above every participant's, so its
    # fact may extend epoch 0 with epoch 4; never an equal or earlier epoch
    u = universe()
    from aura_node.protocols.epochs import EpochError, check_extends

    check_extends(msgspec.structs.replace(u.e1a, epoch=4), u.root)
    for epoch in (0, -1):
        with pytest.raises(EpochError, match="expected an epoch above 0"):
            check_extends(msgspec.structs.replace(u.e1a, epoch=epoch), u.root)
    with pytest.raises(EpochError, match="expected an epoch above 1"):
        check_extends(msgspec.structs.replace(u.e2, epoch=1), u.e1a)
