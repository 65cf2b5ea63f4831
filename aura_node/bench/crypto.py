"""`aura-node bench crypto`: per-operation rates of the crypto layer and the DKD crypto floor.

Every rate is a calibrated loop (about 0.2 s per repeat, 0.03 s with ``--quick``), median of
the repeats, measured through the same ``aura_node.crypto`` calls the protocols make.

The *DKD crypto floor* is what one node must compute in one DKD session, done for real in a
loop (``dkd_session_crypto_floor``). The operation list is ``dkd_session_operations``:

- ``H = dkd_base(account, context)`` (hash to group);
- its own partial ``P_i = s_i·H`` with a DLEQ proof (``dkd.partial``) and the hash commitment
  to it (``dkd.partial_commitment``);
- 2 Ed25519 signatures (its commitment and its reveal messages);
- ``2·(n-1)`` Ed25519 verifications (the other participants' commitments and reveals);
- ``n`` reveal checks: recompute the commitment hash and verify the DLEQ proof
  (``dkd.verify_partial``; its own included, so that every partial becomes a
  ``VerifiedPartial`` the same way);
- ``combine`` over ``t`` verified partials (Lagrange weights, ``t`` scalar mults);
- ``derive``: HKDF, Ed25519 key from the material, fingerprint.

Not included: public shares ``Y_i`` (derived from the Feldman commitments once per account and
cached), message encoding and journal checkpoint signatures (the journal's cost, per batch).
The DKD benchmark adds its own I/O floors on top of this one.

The figure for the floor also carries, as its "floor", the rate *predicted* by adding the
measured per-operation costs; a ratio near 1.0 says the floor is what the list says it is.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from aura_node.bench import Figure
from aura_node.crypto import dkd, dleq
from aura_node.crypto.dealing import Holder, deal_account, open_and_verify_share
from aura_node.crypto.group import Point, Scalar, hash_to_group, seeded_rng
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.seal import SealBinding, open_share, seal_share
from aura_node.crypto.shamir import Share, interpolate_in_exponent, split

_COMMIT_DOMAIN = "dkd/commitment"
_REVEAL_DOMAIN = "dkd/reveal"


def _rate(op: Callable[[], object], *, quick: bool) -> float:
    """Median operations per second of ``op`` over calibrated repeats."""
    target = 0.03 if quick else 0.2
    repeats = 3 if quick else 5
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            op()
        dt = time.perf_counter() - t0
        if dt >= target / 4:
            break
        n *= 4 if dt < target / 40 else 2
    n = max(1, int(n * target / dt))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            op()
        rates.append(n / (time.perf_counter() - t0))
    rates.sort()
    return rates[len(rates) // 2]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Account:
    keys: tuple[DeviceKey, ...]
    shares: tuple[Share, ...]
    public_shares: dict[int, Point]
    account_id: str


def _account(n: int, t: int) -> _Account:
    rng = seeded_rng(b"bench/crypto/account")
    keys = tuple(DeviceKey.from_seed(bytes([i + 1]) * 32) for i in range(n))
    holders = [Holder(index=i + 1, public_key=k.public) for i, k in enumerate(keys)]
    d = deal_account(threshold=t, holders=holders, session_id="bench-genesis", rng=rng)
    shares = tuple(
        open_and_verify_share(
            commitments=d.commitments,
            sealed=d.shares[i].sealed,
            index=i + 1,
            device_key=k,
            account_id=d.account_id,
            session_id="bench-genesis",
        )
        for i, k in enumerate(keys)
    )
    return _Account(
        keys=keys,
        shares=shares,
        public_shares=d.commitments.public_shares(range(1, n + 1)),
        account_id=d.account_id,
    )


def dkd_session_operations(n: int, t: int) -> dict[str, int]:
    """How many of each operation one node performs in one DKD session of ``n`` participants
    with threshold ``t`` (what ``dkd_session_crypto_floor`` times)."""
    return {
        "hash_to_group": 1,
        "dleq_prove (incl. P_i = s_i·H)": 1,
        "commitment hash": 1 + n,
        "ed25519_sign": 2,
        "ed25519_verify": 2 * (n - 1),
        "dleq_verify": n,
        f"combine t={t}": 1,
        "derive (hkdf + ed25519 key + fingerprint)": 1,
    }


def dkd_session_work(n: int, t: int) -> Callable[[], str]:
    """A closure doing one node's crypto for one DKD session (node = participant 1); returns
    the fingerprint so the work cannot be skipped."""
    if not 1 <= t <= n:
        raise ValueError(f"need 1 <= t <= n, got t={t}, n={n}")
    acct = _account(n, t)
    context = "bench-context"
    session = "bench-session"
    h = dkd.dkd_base(acct.account_id, context)
    ctxs = [
        dkd.proof_context(
            account_id=acct.account_id, context=context, session_id=session, device_id=k.device_id
        )
        for k in acct.keys
    ]
    # The other participants' messages, prepared as they would arrive.
    others = []
    for i in range(1, n):
        p = dkd.partial(
            share=acct.shares[i], base=h, public_share=acct.public_shares[i + 1], proof_ctx=ctxs[i]
        )
        commitment = dkd.partial_commitment(p, ctxs[i])
        reveal = p.point.to_bytes() + p.proof.to_bytes()
        others.append(
            (
                p,
                commitment,
                acct.keys[i].sign(_COMMIT_DOMAIN, commitment),
                reveal,
                acct.keys[i].sign(_REVEAL_DOMAIN, reveal),
                acct.keys[i].public,
                ctxs[i],
                acct.public_shares[i + 1],
            )
        )
    me = acct.keys[0]

    def one_session() -> str:
        base = dkd.dkd_base(acct.account_id, context)
        mine = dkd.partial(
            share=acct.shares[0], base=base, public_share=acct.public_shares[1], proof_ctx=ctxs[0]
        )
        my_commitment = dkd.partial_commitment(mine, ctxs[0])
        me.sign(_COMMIT_DOMAIN, my_commitment)
        me.sign(_REVEAL_DOMAIN, mine.point.to_bytes() + mine.proof.to_bytes())
        verified = [
            dkd.verify_partial(
                mine, base=base, public_share=acct.public_shares[1], proof_ctx=ctxs[0]
            )
        ]
        for p, commitment, csig, reveal, rsig, pub, ctx, y in others:
            pub.verify(_COMMIT_DOMAIN, commitment, csig)
            pub.verify(_REVEAL_DOMAIN, reveal, rsig)
            if dkd.partial_commitment(p, ctx) != commitment:
                raise AssertionError("benchmark fixture: reveal does not match its commitment")
            verified.append(dkd.verify_partial(p, base=base, public_share=y, proof_ctx=ctx))
        k = dkd.combine(verified, threshold=t)
        return dkd.derive(k, acct.account_id, context).fingerprint

    return one_session


def dkd_session_crypto_floor(n: int, t: int, *, quick: bool = False) -> float:
    """Seconds of crypto one node spends per DKD session (n participants, threshold t),
    timed in this process now."""
    return 1.0 / _rate(dkd_session_work(n, t), quick=quick)


def operation_rates(*, quick: bool = False) -> dict[str, float]:
    """Per-operation rates (ops/s), keyed by a short name."""
    rng = seeded_rng(b"bench/crypto/ops")
    key = DeviceKey.from_seed(bytes(32))
    msg = bytes(256)
    sig = key.sign("bench", msg)
    x = Scalar.random(rng)
    g = Point.base()
    h = hash_to_group("aura/bench/h", b"h")
    ctx = b"bench-context"
    a, b, proof = dleq.prove(x, g, h, ctx, rng)
    share = Share(index=1, value=x)
    binding = SealBinding(
        purpose="bench/share", account_id="a", session_id="s", recipient_device_id=key.device_id
    )
    sealed = seal_share(share, key.public, binding)
    rates: dict[str, float] = {
        "ed25519 sign (256 B)": _rate(lambda: key.sign("bench", msg), quick=quick),
        "ed25519 verify (256 B)": _rate(lambda: key.public.verify("bench", msg, sig), quick=quick),
        "scalar mult (x·H)": _rate(lambda: x * h, quick=quick),
        "base mult (x·G)": _rate(lambda: Point.base_mul(x), quick=quick),
        "point add": _rate(lambda: g + h, quick=quick),
        "point decode (validated)": _rate(lambda: Point.from_bytes(h.to_bytes()), quick=quick),
        "hash_to_group": _rate(lambda: hash_to_group("aura/bench/h", b"h"), quick=quick),
        "dleq prove": _rate(lambda: dleq.prove(x, g, h, ctx, rng), quick=quick),
        "dleq verify": _rate(lambda: dleq.verify(proof, g, a, h, b, ctx), quick=quick),
        "hpke seal share": _rate(lambda: seal_share(share, key.public, binding), quick=quick),
        "hpke open share": _rate(
            lambda: open_share(sealed, key, binding, expected_index=1), quick=quick
        ),
    }
    for t in (2, 3, 5):
        _, shares = split(x, threshold=t, indices=range(1, t + 1), rng=rng)
        points = {s.index: s.value * h for s in shares}
        rates[f"lagrange combine t={t}"] = _rate(
            functools.partial(interpolate_in_exponent, points, threshold=t), quick=quick
        )
    return rates


def run(args: argparse.Namespace) -> list[Figure]:
    quick = bool(getattr(args, "quick", False))
    rates = operation_rates(quick=quick)
    figures = [Figure(name=name, value=rate, unit="ops/s") for name, rate in rates.items()]
    for n, t in ((3, 2), (5, 3)):
        floor_rate = 1.0 / dkd_session_crypto_floor(n, t, quick=quick)
        predicted_s = (
            1 / rates["hash_to_group"]
            + 1 / rates["dleq prove"]
            + 2 / rates["ed25519 sign (256 B)"]
            + 2 * (n - 1) / rates["ed25519 verify (256 B)"]
            + n / rates["dleq verify"]
            + 1 / rates[f"lagrange combine t={t}"]
        )
        figures.append(
            Figure(
                name=f"dkd session crypto floor n={n} t={t}",
                value=floor_rate,
                unit="sessions/s",
                floor=1 / predicted_s,
                floor_name="sum of per-op costs",
            )
        )
    return figures
