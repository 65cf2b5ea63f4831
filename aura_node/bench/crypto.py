"""`aura-node bench crypto`: per-operation rates of the crypto layer and the DKD crypto floor.

Every rate is a calibrated loop (about 0.2 s per repeat, 0.03 s with ``--quick``), median of
the repeats, measured through the same ``aura_node.crypto`` calls the protocols make.

The *DKD crypto floor* is the crypto one *blinded* DKD session cannot do without, per role,
done for real in a loop (``dkd_role_work``; ``dkd_role_operations`` lists it). A session of
threshold ``t`` has one initiator (the requester) and ``q = t - 1`` participants answering:

initiator
    ``H = hash_to_group(account, context)``; draw ``r`` and blind ``B = r·H`` (1 scalar mult);
    seal ``r`` to its own key (HPKE: the only form it is journaled in); its own partial
    ``s_i·B`` with a DLEQ proof and the commitment hash; 4 Ed25519 signatures (its commitment,
    the envelopes of ``DkdRequest``, ``DkdCollected`` and ``DkdComplete``); per participant:
    2 envelope verifications (``DkdCommitment``, ``DkdReveal``), 1 commitment signature
    verification, 1 point decode (its partial), the commitment hash recomputed, 1 DLEQ
    verification; Lagrange combine over ``t``; unblind (``r⁻¹``, 1 scalar mult); derive (HKDF,
    Ed25519 public key, fingerprint).
participant
    3 envelope verifications (``DkdRequest``, ``DkdCollected``, ``DkdComplete``); decode
    ``B``; ``H = hash_to_group`` (to refuse an unblinded ``B = H``); verify the initiator's
    commitment signature; its own partial ``s_i·B`` with its DLEQ proof and commitment hash;
    3 signatures (its commitment, the envelopes of ``DkdCommitment`` and ``DkdReveal``); the
    initiator's reveal: point decode, commitment hash, DLEQ verification; for ``t > 2`` the
    other ``t - 2`` participants' relayed commitments and reveals the same way.

Not included: checks of a node's *own* evidence (its own commitment signature and DLEQ proof:
a node need not verify what it just made), public shares ``Y_i`` (decoded from the account
record once and cached), message encoding, and journal checkpoint signatures (the journal's
cost, per batch, not per session). The DKD benchmark adds its I/O floors on top.

The ``bench crypto`` figure of each role's floor also carries, as its "floor", the rate
*predicted* by adding the measured per-operation costs of its operation list; a ratio near
1.0 says the floor is what the list says it is.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aura_node.bench import Figure
from aura_node.crypto import dkd, dleq
from aura_node.crypto.dealing import Holder, deal_account, open_and_verify_share
from aura_node.crypto.group import (
    Point,
    Scalar,
    decode_point_uncached,
    hash_to_group,
    seeded_rng,
)
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.seal import SealBinding, open_share, seal, seal_share
from aura_node.crypto.shamir import Share, interpolate_in_exponent, split

_COMMIT_DOMAIN = "dkd/commitment"
_ENVELOPE_DOMAIN = "msg/dkd/bench"


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


Role = Literal["initiator", "participant"]
ROLES: tuple[Role, ...] = ("initiator", "participant")

#: bytes an envelope signature covers, about a DKD message's signed bytes (Ed25519 signing
#: and verification cost hardly depends on the length at this size)
_ENVELOPE_BYTES = 512


def dkd_role_operations(role: Role, t: int) -> dict[str, int]:
    """How many of each operation one node in ``role`` performs in one blinded DKD session of
    threshold ``t`` (``t`` holders answering: the initiator and ``t - 1`` participants); what
    ``dkd_role_work`` times. Keys name rates of ``operation_rates``."""
    if t < 2:
        raise ValueError(f"a DKD exchange needs t >= 2 (t = 1 exchanges nothing), got t={t}")
    q = t - 1
    if role == "initiator":
        return {
            "hash_to_group": 1,
            "scalar mult (x·H)": 1 + 1,  # blind B = r·H, unblind r⁻¹·(s·B)
            "scalar invert": 1,
            "hpke seal 32 B": 1,
            "dleq prove": 1,
            "sha256 commitment": 1 + q,
            "ed25519 sign (256 B)": 1 + 3,
            "ed25519 verify (256 B)": 3 * q,
            "point decode (validated)": q,
            "dleq verify": q,
            f"lagrange combine t={t}": 1,
            "derive (hkdf + ed25519 key + fingerprint)": 1,
        }
    others = t - 2  # participants other than this one whose evidence is relayed to it
    return {
        "hash_to_group": 1,
        "point decode (validated)": 1 + 1 + others,
        "ed25519 verify (256 B)": 3 + 1 + others,
        "dleq prove": 1,
        "sha256 commitment": 1 + 1 + others,
        "ed25519 sign (256 B)": 1 + 2,
        "dleq verify": 1 + others,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class _Evidence:
    """One holder's answer in the fixture session, as it arrives at another node."""

    key: DevicePublicKey
    index: int
    ctx: bytes
    public_share: Point
    commitment: bytes
    commitment_sig: bytes
    point: bytes
    proof: dleq.DleqProof
    envelope_sigs: tuple[bytes, ...]


def dkd_role_work(role: Role, t: int) -> Callable[[], bytes]:
    """A closure doing one node's crypto in ``role`` for one blinded DKD session of threshold
    ``t`` (``dkd_role_operations``), over a fixture account of ``t`` holders (the initiator is
    holder 1); the others' messages are prepared once, as they would arrive. Returns a value
    of the last step (the fingerprint, or the participant's commitment) so the work cannot be
    skipped; raises if any check fails (the fixture is a real, consistent session)."""
    dkd_role_operations(role, t)  # validates t
    acct = _account(t, t)
    context, session = "bench-context", "bench-session"
    rng = seeded_rng(b"bench/crypto/dkd")
    r = dkd.draw_blinding(rng)
    h = hash_to_group(dkd.H2G_DOMAIN, acct.account_id, context)
    b = dkd.blind(h, r)
    envelope = bytes(_ENVELOPE_BYTES)

    def answer(i: int) -> _Evidence:
        key = acct.keys[i]
        ctx = dkd.proof_context(account_id=acct.account_id, context=context,
                                session_id=session, device_id=key.device_id)
        p = dkd.partial(share=acct.shares[i], base=b, public_share=acct.public_shares[i + 1],
                        proof_ctx=ctx, rng=rng)
        digest = dkd.partial_commitment(p, ctx)
        return _Evidence(key=key.public, index=i + 1, ctx=ctx,
                         public_share=acct.public_shares[i + 1], commitment=digest,
                         commitment_sig=key.sign(_COMMIT_DOMAIN, digest),
                         point=p.point.to_bytes(), proof=p.proof,
                         envelope_sigs=tuple(key.sign(_ENVELOPE_DOMAIN, envelope)
                                             for _ in range(3)))

    with dleq.own_proofs.paused():  # the others' proofs: checked in full by the loop
        evidence = [answer(i) for i in range(t)]

    def check(ev: _Evidence, *, envelopes: int, commitment_signature: bool = True) -> Point:
        """What a node does with another holder's commitment and reveal."""
        for sig in ev.envelope_sigs[:envelopes]:
            ev.key.verify(_ENVELOPE_DOMAIN, envelope, sig)
        if commitment_signature:
            ev.key.verify(_COMMIT_DOMAIN, ev.commitment, ev.commitment_sig)
        point = _decode_uncached(ev.point)
        p = dkd.DkdPartial(index=ev.index, point=point, proof=ev.proof)
        if dkd.partial_commitment(p, ev.ctx) != ev.commitment:
            raise AssertionError("benchmark fixture: reveal does not match its commitment")
        dleq.verify(ev.proof, Point.base(), ev.public_share, b, point, ev.ctx)
        return point

    def own(index: int) -> tuple[Point, bytes]:
        """This node's partial on ``B`` with its proof, its commitment, signed."""
        ev = evidence[index]
        p = dkd.partial(share=acct.shares[index], base=b, public_share=ev.public_share,
                        proof_ctx=ev.ctx)
        digest = dkd.partial_commitment(p, ev.ctx)
        acct.keys[index].sign(_COMMIT_DOMAIN, digest)
        return p.point, digest

    me_key = acct.keys[0]
    binding = SealBinding(purpose="dkd/blinding", account_id=acct.account_id,
                          session_id=session, recipient_device_id=me_key.device_id)

    def initiator() -> bytes:
        base = hash_to_group(dkd.H2G_DOMAIN, acct.account_id, context)
        dkd.draw_blinding()  # the fixture's r stands in for it (the others answered for it)
        if dkd.blind(base, r) != b:
            raise AssertionError("benchmark fixture: B != r·H")
        seal(r.to_bytes(), me_key.public, binding)
        mine, _ = own(0)
        for _ in range(3):  # DkdRequest, DkdCollected, DkdComplete
            me_key.sign(_ENVELOPE_DOMAIN, envelope)
        points = {1: mine}
        for i in range(1, t):
            points[i + 1] = check(evidence[i], envelopes=2)  # DkdCommitment, DkdReveal
        k = dkd.unblind(interpolate_in_exponent(points, threshold=t), r)
        return dkd.derive(k, acct.account_id, context).fingerprint.encode()

    def participant() -> bytes:
        # holder 2 answering the initiator (holder 1); holders 3..t are the other participants
        me, init = acct.keys[1], evidence[0]
        init.key.verify(_ENVELOPE_DOMAIN, envelope, init.envelope_sigs[0])  # DkdRequest
        blinded = _decode_uncached(b.to_bytes())
        if blinded == hash_to_group(dkd.H2G_DOMAIN, acct.account_id, context):
            raise AssertionError("benchmark fixture: unblinded request")
        init.key.verify(_COMMIT_DOMAIN, init.commitment, init.commitment_sig)
        _, digest = own(1)
        for _ in range(2):  # DkdCommitment, DkdReveal
            me.sign(_ENVELOPE_DOMAIN, envelope)
        # DkdCollected (the initiator's reveal, the other participants' commitments) and
        # DkdComplete (their reveals): two envelopes, every relayed item checked once
        for sig in init.envelope_sigs[1:3]:
            init.key.verify(_ENVELOPE_DOMAIN, envelope, sig)
        check(init, envelopes=0, commitment_signature=False)  # checked with the request
        for ev in evidence[2:]:
            check(ev, envelopes=0)
        return digest

    return initiator if role == "initiator" else participant


def _decode_uncached(data: bytes) -> Point:
    """``Point.from_bytes`` without its memo: a session's partials are new bytes each time,
    so the floor pays every validation."""
    return decode_point_uncached(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class DkdCryptoFloor:
    """Seconds of crypto per blinded DKD session of threshold ``t``, by role, timed now."""

    t: int
    initiator: float
    participant: float

    @property
    def session(self) -> float:
        """All the session's crypto: the initiator's and ``t - 1`` participants'."""
        return self.initiator + (self.t - 1) * self.participant

    def mean(self, other: DkdCryptoFloor) -> DkdCryptoFloor:
        return DkdCryptoFloor(t=self.t, initiator=(self.initiator + other.initiator) / 2,
                              participant=(self.participant + other.participant) / 2)


def dkd_crypto_floor(t: int, *, quick: bool = False) -> DkdCryptoFloor:
    """Each role's crypto seconds per blinded DKD session of threshold ``t``, timed in this
    process now."""
    return DkdCryptoFloor(
        t=t, **{role: 1.0 / _rate(dkd_role_work(role, t), quick=quick) for role in ROLES})


def predicted_seconds(role: Role, t: int, rates: dict[str, float]) -> float:
    """``role``'s seconds per session predicted from per-operation ``rates``."""
    return sum(count / rates[op] for op, count in dkd_role_operations(role, t).items())


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
    with dleq.own_proofs.paused():  # "dleq verify" times the maths, not the own-proof memo
        a, b, proof = dleq.prove(x, g, h, ctx, rng)
    share = Share(index=1, value=x)
    binding = SealBinding(
        purpose="bench/share", account_id="a", session_id="s", recipient_device_id=key.device_id
    )
    sealed = seal_share(share, key.public, binding)
    partial = dkd.DkdPartial(index=1, point=b, proof=proof)
    rates: dict[str, float] = {
        "ed25519 sign (256 B)": _rate(lambda: key.sign("bench", msg), quick=quick),
        "ed25519 verify (256 B)": _rate(lambda: key.public.verify("bench", msg, sig), quick=quick),
        "scalar mult (x·H)": _rate(lambda: x * h, quick=quick),
        "base mult (x·G)": _rate(lambda: Point.base_mul(x), quick=quick),
        "point add": _rate(lambda: g + h, quick=quick),
        "scalar invert": _rate(x.invert, quick=quick),
        "point decode (validated)": _rate(lambda: _decode_uncached(h.to_bytes()), quick=quick),
        "hash_to_group": _rate(lambda: hash_to_group("aura/bench/h", b"h"), quick=quick),
        "dleq prove": _rate(lambda: dleq.prove(x, g, h, ctx, rng), quick=quick),
        "dleq verify": _rate(lambda: dleq.verify(proof, g, a, h, b, ctx), quick=quick),
        "hpke seal share": _rate(lambda: seal_share(share, key.public, binding), quick=quick),
        "hpke seal 32 B": _rate(lambda: seal(x.to_bytes(), key.public, binding), quick=quick),
        "sha256 commitment": _rate(lambda: dkd.partial_commitment(partial, ctx), quick=quick),
        "derive (hkdf + ed25519 key + fingerprint)": _rate(
            lambda: dkd.derive(b, "bench-account", "bench-context"), quick=quick),
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
    for t in (2, 3):
        floor = dkd_crypto_floor(t, quick=quick)
        for role in ROLES:
            figures.append(Figure(
                name=f"dkd crypto floor, {role}, t={t} (blinded)",
                value=1.0 / getattr(floor, role), unit="sessions/s",
                floor=1.0 / predicted_seconds(role, t, rates),
                floor_name="sum of its per-op costs"))
        figures.append(Figure(
            name=f"dkd crypto floor, whole session, t={t} (initiator + {t - 1} "
                 f"participant{'s' if t > 2 else ''})",
            value=floor.session * 1e3, unit="ms", higher_is_better=False))
    return figures
