"""Threshold deterministic key derivation (DKD) maths.

Theory of operation
-------------------
For an account with secret ``s`` (Shamir-shared, holder ``i`` has ``s_i`` and public share
``Y_i = s_i·G``) and a context string ``c``:

1. ``H = dkd_base(account_id, c) = hash_to_group("aura/dkd/h2g", account_id, c)``: a point
   nobody knows the discrete log of.
2. Participant ``i`` computes ``P_i = s_i·H`` and a DLEQ proof that ``log_G(Y_i) = log_H(P_i)``,
   bound to ``proof_context(account, c, session, device)`` (``partial``). In the protocol it
   first commits to ``partial_commitment(...)`` and reveals the partial later.
3. Everyone checks each revealed partial against that holder's public share (``verify_partial``
   turns a ``DkdPartial`` into a ``VerifiedPartial``; there is no other way to get one).
4. ``K = Σ λ_i·P_i`` over any ``t`` verified partials equals ``s·H`` (``combine``; it refuses
   fewer than ``t`` distinct holders or partials for different bases). Because ``K`` depends
   only on ``s`` and ``H``, **any** ``t`` participants derive the same ``K``; fewer than ``t``
   learn nothing about it.
   In the protocol the partials are **blinded** (in the spirit of threshold OPRFs such as
   TOPPSS): the requesting device draws a non-zero scalar ``r`` (``draw_blinding``) and asks
   for ``B = r·H`` (``blind``); participant ``i`` answers ``s_i·B`` with its DLEQ proof for
   base ``B``; ``Σ λ_i·(s_i·B) = s·B = r·K``, and ``unblind`` multiplies by ``r⁻¹``. ``B`` is
   a uniformly random group element whatever ``H`` is, so ``B`` and the blinded answers say
   nothing about ``K`` to anyone who does not hold ``r``: only the requester learns ``K``.
5. The key material is ``HKDF-SHA256(ikm = K, salt = "aura-node/v1/dkd", info =
   transcript("aura/dkd/key", account_id, c))``, 32 bytes, used as an Ed25519 seed. Only its
   public key and ``fingerprint`` (``SHA-256(transcript("aura/dkd/fingerprint", pk))``, first
   16 bytes, hex) are ever published. The requester keeps the material as a
   :class:`DerivedSeed` (memory only: no repr, no copy, no pickle) to sign with it or export
   it on its operator's request; it is re-derived (a new DKD) whenever it is needed again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aura_node.crypto import dleq
from aura_node.crypto.errors import ProofError, ShareError, ThresholdError
from aura_node.crypto.group import Point, Rng, Scalar, hash_to_group
from aura_node.crypto.memo import VerificationMemo
from aura_node.crypto.shamir import Share, check_index, check_threshold, interpolate_in_exponent
from aura_node.crypto.transcript import transcript

H2G_DOMAIN: Final = "aura/dkd/h2g"
_PROOF_CONTEXT_DOMAIN: Final = "aura/dkd/proof-context"
_COMMITMENT_DOMAIN: Final = "aura/dkd/commitment"
_KEY_DOMAIN: Final = "aura/dkd/key"
_FINGERPRINT_DOMAIN: Final = "aura/dkd/fingerprint"
HKDF_SALT: Final = b"aura-node/v1/dkd"
KEY_MATERIAL_BYTES: Final = 32


@functools.lru_cache(maxsize=1024)
def dkd_base(account_id: str, context: str) -> Point:
    """``H = hash_to_group("aura/dkd/h2g", account_id, context)``.

    Cached (a pure function of public strings): a session and the control handler that starts
    it, and repeated derivations for one context, share the two Elligator maps."""
    return hash_to_group(H2G_DOMAIN, account_id, context)


def draw_blinding(rng: Rng | None = None) -> Scalar:
    """The requester's blinding scalar ``r`` (uniform, non-zero; the OS CSPRNG by default)."""
    return Scalar.random(rng)


def blind(base: Point, r: Scalar) -> Point:
    """``B = r·H``: the point the participants are asked to multiply by their shares."""
    if r.is_zero():
        raise ShareError("DKD blinding scalar must be non-zero")
    return r * base


def unblind(blinded: Point, r: Scalar) -> Point:
    """``K = r⁻¹·(s·B)`` from the combined blinded answers ``s·B`` (see ``combine``)."""
    return r.invert() * blinded


def proof_context(*, account_id: str, context: str, session_id: str, device_id: str) -> bytes:
    """The DLEQ context of one participant's partial in one DKD session."""
    return transcript(_PROOF_CONTEXT_DOMAIN, account_id, context, session_id, device_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class DkdPartial:
    """Holder ``index``'s claimed ``P_i = s_i·H`` with its DLEQ proof (not yet verified)."""

    index: int
    point: Point
    proof: dleq.DleqProof

    def __post_init__(self) -> None:
        check_index(self.index)


def partial_commitment(p: DkdPartial, proof_ctx: bytes) -> bytes:
    """32-byte hash commitment to a partial, bound to its proof context (session, device)."""
    return hashlib.sha256(
        transcript(_COMMITMENT_DOMAIN, proof_ctx, p.index, p.point.to_bytes(), p.proof.to_bytes())
    ).digest()


_VERIFIED: Final = object()


class VerifiedPartial:
    """A partial whose DLEQ proof verified against its holder's public share.

    Only ``verify_partial`` makes these; ``combine`` accepts nothing else.
    """

    __slots__ = ("base", "index", "point")
    index: int
    point: Point
    base: Point

    def __init__(self, *, _token: object, index: int, point: Point, base: Point) -> None:
        if _token is not _VERIFIED:
            raise TypeError("VerifiedPartial has no public constructor; use verify_partial()")
        self.index = index
        self.point = point
        self.base = base

    def __repr__(self) -> str:
        return f"VerifiedPartial(index={self.index}, point={self.point.hex()})"


def partial(
    *,
    share: Share,
    base: Point,
    public_share: Point,
    proof_ctx: bytes,
    rng: Rng | None = None,
) -> DkdPartial:
    """``P_i = s_i·H`` with a proof that it uses the share behind ``public_share``.

    Raises ``ShareError`` if ``share`` does not match ``public_share`` (the proof would fail).
    """
    y, p, proof = dleq.prove(share.value, Point.base(), base, proof_ctx, rng)
    if y != public_share:
        raise ShareError(
            f"own share for holder {share.index} does not match its public share "
            f"{public_share.hex()}"
        )
    return DkdPartial(index=share.index, point=p, proof=proof)


def verify_partial(
    p: DkdPartial, *, base: Point, public_share: Point, proof_ctx: bytes,
    memo: VerificationMemo | None = None,
) -> VerifiedPartial:
    """Check ``p``'s DLEQ proof against holder ``p.index``'s public share; ``ProofError`` if
    it fails. With ``memo`` (a session's), a check of exactly these bytes that already
    succeeded in this session is not run again."""
    try:
        if memo is None:
            dleq.verify(p.proof, Point.base(), public_share, base, p.point, proof_ctx)
        else:
            memo.verify_dleq(p.proof, Point.base(), public_share, base, p.point, proof_ctx)
    except ProofError as exc:
        raise ProofError(f"DKD partial of holder {p.index}: {exc.message}") from None
    return VerifiedPartial(_token=_VERIFIED, index=p.index, point=p.point, base=base)


def combine(partials: Sequence[VerifiedPartial], *, threshold: int) -> Point:
    """``Σ λ_i·P_i`` over the ``threshold`` lowest-indexed verified partials: ``s·H`` for
    partials of ``H``, ``s·B`` for blinded ones (``unblind`` turns that into ``K``)."""
    check_threshold(threshold)
    if not partials:
        raise ThresholdError(f"need {threshold} verified partials, got none")
    base = partials[0].base
    by_index: dict[int, Point] = {}
    for vp in partials:
        if not isinstance(vp, VerifiedPartial):
            raise TypeError(f"combine() takes VerifiedPartial values, got {type(vp).__name__}")
        if vp.base != base:
            raise ShareError(f"partial of holder {vp.index} is for a different DKD base point")
        if vp.index in by_index:
            raise ShareError(f"two partials for holder index {vp.index}")
        by_index[vp.index] = vp.point
    return interpolate_in_exponent(by_index, threshold=threshold)


def derive_key_material(k: Point, account_id: str, context: str) -> bytes:
    """32 bytes of key material from ``K``, bound to the account and the context."""
    if k.is_identity():
        raise ShareError("DKD result K is the identity: refusing to derive a key from it")
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_MATERIAL_BYTES,
        salt=HKDF_SALT,
        info=transcript(_KEY_DOMAIN, account_id, context),
    ).derive(k.to_bytes())


def derived_public_key(material: bytes) -> bytes:
    """The raw Ed25519 public key whose seed is ``material``."""
    if len(material) != KEY_MATERIAL_BYTES:
        raise ValueError(f"DKD key material is {KEY_MATERIAL_BYTES} bytes, got {len(material)}")
    return Ed25519PrivateKey.from_private_bytes(material).public_key().public_bytes_raw()


def fingerprint(public_key: bytes) -> str:
    """Hex fingerprint (16 bytes) of a derived public key."""
    return hashlib.sha256(transcript(_FINGERPRINT_DOMAIN, public_key)).hexdigest()[:32]


@dataclass(frozen=True, slots=True, kw_only=True)
class DerivedKey:
    """The publishable result of a DKD: never the key material itself."""

    public_key: bytes
    fingerprint: str


def derive(k: Point, account_id: str, context: str) -> DerivedKey:
    """``derive_key_material`` -> public key -> fingerprint, dropping the material."""
    pk = derived_public_key(derive_key_material(k, account_id, context))
    return DerivedKey(public_key=pk, fingerprint=fingerprint(pk))


class DerivedSeed:
    """The derived Ed25519 seed, held in memory by the requesting device only.

    Never printed (``repr`` is redacted), copied or pickled; it leaves the process only as a
    signature (:meth:`sign`) or as the PKCS#8 PEM its operator asked for (:meth:`pkcs8_pem`).
    """

    __slots__ = ("_material", "public_key")

    def __init__(self, material: bytes) -> None:
        self.public_key = derived_public_key(material)
        self._material = material

    def __repr__(self) -> str:
        return f"DerivedSeed(public_key={self.public_key.hex()}, seed=<redacted>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a DerivedSeed is never pickled or copied")

    def __copy__(self) -> DerivedSeed:
        raise TypeError("a DerivedSeed is never pickled or copied")

    def __deepcopy__(self, memo: object) -> DerivedSeed:
        raise TypeError("a DerivedSeed is never pickled or copied")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """A plain Ed25519 signature over ``data`` (RFC 8032: ``openssl pkeyutl -verify``)."""
        return Ed25519PrivateKey.from_private_bytes(self._material).sign(data)

    def pkcs8_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for the operator's ``dkd export``)."""
        return Ed25519PrivateKey.from_private_bytes(self._material).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def public_pem(self) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self._material).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def derive_seed(k: Point, account_id: str, context: str) -> DerivedSeed:
    """``derive_key_material`` kept as a :class:`DerivedSeed` (the requester's only)."""
    return DerivedSeed(derive_key_material(k, account_id, context))
