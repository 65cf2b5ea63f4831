"""DKD verification memo, opened-share cache and decode cache: each check runs once per exact
bytes, and nothing that did not verify ever passes because something else did."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest

from aura_node.crypto import dleq
from aura_node.crypto.dkd import DkdPartial, verify_partial
from aura_node.crypto.errors import PointEncodingError, ProofError
from aura_node.crypto.group import Point, Scalar, seeded_rng
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.memo import MemoizedPublicKey, VerificationMemo
from aura_node.errors import BadSignatureError, WitnessError
from aura_node.harness.simulation import Faults, Simulation
from aura_node.protocols.dkd.roles import (
    _facts_for,
    make_contribution,
    session_params,
    session_roles,
)
from aura_node.protocols.dkd.witnesses import (
    CollectedCommitments,
    VerifiedReveals,
    check_commitment,
    check_reveal,
)

SID = "c" * 32
DOMAIN = "dkd/commitment"


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


# --- the memo itself --------------------------------------------------------------------------


def test_signature_verified_once_per_exact_bytes() -> None:
    key = DeviceKey.from_seed(b"\x01" * 32)
    memo = VerificationMemo()
    sig = key.sign(DOMAIN, b"m")
    memo.verify_signature(key.public, DOMAIN, b"m", sig)
    memo.verify_signature(key.public, DOMAIN, b"m", sig)
    assert (memo.counts["ed25519"], memo.hits["ed25519"]) == (1, 1)
    # a different signature for the same key and message: verified afresh, rejected, not cached
    for _ in range(2):
        with pytest.raises(BadSignatureError):
            memo.verify_signature(key.public, DOMAIN, b"m", _flip(sig, 5))
    assert memo.counts["ed25519"] == 3
    # the same signature over another message, domain or key is another check, and fails
    with pytest.raises(BadSignatureError):
        memo.verify_signature(key.public, DOMAIN, b"n", sig)
    with pytest.raises(BadSignatureError):
        memo.verify_signature(key.public, "dkd/other", b"m", sig)
    other = DeviceKey.from_seed(b"\x02" * 32).public
    with pytest.raises(BadSignatureError):
        memo.verify_signature(other, DOMAIN, b"m", sig)
    assert memo.counts["ed25519"] == 6 and len(memo) == 1


def test_memoized_key_behaves_like_the_pinned_key() -> None:
    key = DeviceKey.from_seed(b"\x03" * 32)
    memo = VerificationMemo()
    mk = memo.key(key.public)
    assert isinstance(mk, MemoizedPublicKey) and mk.device_id == key.device_id
    assert mk == memo.key(key.public) and mk == VerificationMemo().key(key.public)
    sig = key.sign(DOMAIN, b"x")
    mk.verify(DOMAIN, b"x", sig)
    mk.verify(DOMAIN, b"x", sig)
    assert memo.counts["ed25519"] == 1
    with pytest.raises(BadSignatureError):
        mk.verify(DOMAIN, b"x", bytes(64))
    # a fresh memo knows nothing: it verifies
    fresh = VerificationMemo()
    fresh.key(key.public).verify(DOMAIN, b"x", sig)
    assert fresh.counts["ed25519"] == 1


def test_dleq_memo_reverifies_a_different_proof_for_the_same_statement() -> None:
    x = Scalar.random(seeded_rng(b"x"))
    h = Point.base_mul(Scalar.random(seeded_rng(b"h")))
    g = Point.base()
    a, b, proof = dleq.prove(x, g, h, b"ctx", seeded_rng(b"1"))
    _, _, proof2 = dleq.prove(x, g, h, b"ctx", seeded_rng(b"2"))
    assert proof2.to_bytes() != proof.to_bytes()
    memo = VerificationMemo()
    memo.verify_dleq(proof, g, a, h, b, b"ctx")
    memo.verify_dleq(proof, g, a, h, b, b"ctx")
    assert (memo.counts["dleq"], memo.hits["dleq"]) == (1, 1)
    memo.verify_dleq(proof2, g, a, h, b, b"ctx")  # valid, but other bytes: run again
    assert memo.counts["dleq"] == 2
    bad = dleq.DleqProof.from_bytes(_flip(proof.to_bytes(), 40))
    for _ in range(2):
        with pytest.raises(ProofError):
            memo.verify_dleq(bad, g, a, h, b, b"ctx")
    with pytest.raises(ProofError):  # same proof, another context (session/device)
        memo.verify_dleq(proof, g, a, h, b, b"other")
    with pytest.raises(ProofError):  # same proof, another claimed partial
        memo.verify_dleq(proof, g, a, h, b + g, b"ctx")
    assert memo.counts["dleq"] == 6


# --- inside the witnesses ---------------------------------------------------------------------


def _world(seed: int = 1, faults: Faults | None = None) -> Simulation:
    """Three devices holding a dealt 2-of-3 account."""
    sim = Simulation(seed, dict.fromkeys(["d1", "d2", "d3"], "device"), faults=faults)
    sim.deal_account(["d1", "d2", "d3"], 2)
    return sim


def _setup() -> tuple[Any, list[Any]]:
    sim = _world()
    holders = ["d1", "d2", "d3"]
    svc = sim.nodes["d1"].services
    facts = _facts_for(svc, svc.accounts.only().account, holders, session_id=SID,
                       context="mail", memo=VerificationMemo())
    contribs = [make_contribution(sim.nodes[h].services, facts, b"e" * 32) for h in holders]
    return facts, contribs


def test_witness_verifiers_reuse_receipt_checks_and_still_reject_other_bytes() -> None:
    facts, contribs = _setup()
    good = [c.commitment for c in contribs]
    for c in good:
        check_commitment(c, facts)
    assert facts.memo.counts["ed25519"] == 3
    w = CollectedCommitments.verify(good, facts)
    assert facts.memo.counts["ed25519"] == 3  # nothing re-verified
    assert set(w.digests) == {c.device_id for c in good}
    # the same signer, same digest, another signature: verified and rejected
    forged = msgspec.structs.replace(good[1], signature=_flip(good[1].signature, 3))
    with pytest.raises(WitnessError, match="does not verify"):
        check_commitment(forged, facts)
    with pytest.raises(WitnessError, match="does not verify"):
        CollectedCommitments.verify([good[0], forged], facts)
    # a memo entry for one session does not carry to another
    other = msgspec.structs.replace(good[1], session="d" * 32)
    with pytest.raises(WitnessError):
        check_commitment(other, facts)

    reveals = [c.reveal for c in contribs]
    for r in reveals:
        check_reveal(r, r.commitment.digest, facts)
    assert facts.memo.counts["dleq"] == 3
    v = VerifiedReveals.verify(w, reveals, facts)
    assert facts.memo.counts["dleq"] == 3 and len(v.partials) == 2
    # a wrong proof for a partial whose right proof is in the memo is rejected
    p = reveals[0]
    part = DkdPartial(index=p.index, point=Point.from_bytes(p.point),
                      proof=dleq.DleqProof.from_bytes(_flip(p.proof, 33)))
    with pytest.raises(ProofError):
        verify_partial(part, base=facts.base, public_share=facts.public_share(p.device_id),
                       proof_ctx=facts.proof_ctx(p.device_id), memo=facts.memo)


# --- whole sessions ---------------------------------------------------------------------------


def _count_primitive_checks(sim: Simulation, monkeypatch: pytest.MonkeyPatch
                            ) -> Counter[tuple[str, str]]:
    """(node, "ed25519" | "dleq") -> the primitive checks that node's runtime really ran: a
    commitment signature (``dkd/commitment``) or a DLEQ proof, whatever memo sits above."""
    counts: Counter[tuple[str, str]] = Counter()
    running: list[str] = []
    real_verify, real_dleq = DevicePublicKey.verify, dleq.verify

    def verify(self: DevicePublicKey, domain: str, message: bytes, signature: bytes) -> None:
        if domain == DOMAIN:
            counts[(running[-1], "ed25519")] += 1
        real_verify(self, domain, message, signature)

    def verify_dleq(*args: Any, **kwargs: Any) -> None:
        counts[(running[-1], "dleq")] += 1
        real_dleq(*args, **kwargs)

    monkeypatch.setattr(DevicePublicKey, "verify", verify)
    monkeypatch.setattr(dleq, "verify", verify_dleq)
    def on(name: str, real: Any) -> Any:
        def step(*args: Any) -> Any:
            running.append(name)
            try:
                return real(*args)
            finally:
                running.pop()

        return step

    for name, node in sim.nodes.items():
        rt = node.runtime
        assert rt is not None
        for method in ("handle_inbound", "handle_command"):
            monkeypatch.setattr(rt, method, on(name, getattr(rt, method)))
    return counts


def test_verifications_per_session_and_share_opened_once_per_account(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts the benchmark's profile reports, for a t = 2 session of 2 participants."""
    sim = _world(0, Faults(duplicate=0.2))
    counts = _count_primitive_checks(sim, monkeypatch)
    for k in range(3):
        before = Counter(counts)
        p = session_params({"context": f"ctx{k}", "participants": ["d1", "d2"]},
                           sim.nodes["d1"].services)
        sid = sim.start("d1", "dkd", roles=session_roles(p), params=p, session=f"{k:032x}")
        sim.run()
        d1, d2 = (sim.nodes[n].session(sid) for n in ("d1", "d2"))
        assert d1 is not None and d2 is not None
        assert d1.result == d2.result != None  # noqa: E711
        spent = counts - before
        for name in ("d1", "d2"):
            # 2 commitments (own + the other's) and 2 DLEQ proofs (own + the other's), once
            # each, however often the session re-checks them and whatever was duplicated
            assert spent[(name, "ed25519")] == 2, (k, name, spent)
            assert spent[(name, "dleq")] == 2, (k, name, spent)
        assert not any(n == "d3" for n, _ in spent), spent
    assert sim.stats.duplicated > 0
    for name in ("d1", "d2"):
        assert sim.nodes[name].services.opened_shares.opens == 1
    assert "hidden" in repr(sim.nodes["d1"].services.opened_shares)
    assert "opened_shares" not in repr(sim.nodes["d1"].services)


def test_opened_share_cache_keys_on_the_sealed_share() -> None:
    sim = _world()
    svc = sim.nodes["d1"].services
    acct = svc.accounts.only().account
    share = svc.open_share(acct, "devices")
    assert svc.open_share(acct, "devices").value == share.value
    assert svc.opened_shares.opens == 1
    held = svc.accounts.held_share(acct.account_id, "devices")
    tampered = msgspec.structs.replace(held, sealed=_flip(held.sealed, len(held.sealed) - 1))
    with pytest.raises(Exception):  # noqa: B017 - any open error: it is not served from cache
        svc.opened_shares.get(acct, tampered, svc.device_key)
    other = sim.nodes["d2"].services
    with pytest.raises(Exception):  # noqa: B017 - sealed to d1, opened with d2's key
        other.opened_shares.get(acct, held, other.device_key)
    assert svc.opened_shares.opens == 1


# --- point decode cache ------------------------------------------------------------------------


def test_point_decode_cache_is_exactly_as_strict() -> None:
    good = Point.base_mul(Scalar.from_int(7)).to_bytes()
    assert Point.from_bytes(good) == Point.from_bytes(good)
    order_2 = bytes([0xEC]) + b"\xff" * 30 + b"\x7f"  # y = -1: the point of order 2
    non_canonical = bytes([0xEE]) + b"\xff" * 30 + b"\x7f"  # y = p + 1 >= p
    mixed_order = (Point.from_bytes(good) + Point._trusted(order_2)).to_bytes()
    bad_inputs = [order_2, non_canonical, mixed_order, b"\xff" * 32, good[:31]]
    for bad in bad_inputs:
        for _ in range(2):
            with pytest.raises(PointEncodingError):
                Point.from_bytes(bad)
    with pytest.raises(PointEncodingError):
        Point.from_bytes(b"\x01" + bytes(31))  # identity, after a good decode

    class Sly(bytes):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(good)

    with pytest.raises(PointEncodingError):
        Point.from_bytes(Sly(b"\xff" * 32))


def test_memoized_key_is_still_a_device_public_key() -> None:
    raw = DeviceKey.from_seed(b"\x05" * 32).public.raw
    mk = VerificationMemo().key(DevicePublicKey(raw))
    assert isinstance(mk, DevicePublicKey)
    assert "memo" not in repr(mk)
