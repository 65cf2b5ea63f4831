"""Genesis dealing, DKD and recovery maths end to end (pure, no I/O)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto import dkd
from aura_node.crypto.dealing import (
    Dealing,
    Holder,
    account_id_for,
    deal_account,
    open_and_verify_share,
)
from aura_node.crypto.errors import ProofError, SealError, ShareError, ThresholdError
from aura_node.crypto.feldman import FeldmanCommitments
from aura_node.crypto.group import Point, Scalar, seeded_rng
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.recovery import (
    open_recovery_share,
    reconstruct_account_secret,
    recovery_binding,
)
from aura_node.crypto.seal import seal_share
from aura_node.crypto.shamir import Share

KEYS = [DeviceKey.from_seed(bytes([i]) * 32) for i in range(1, 10)]


def _holders(n: int, offset: int = 0) -> list[Holder]:
    return [Holder(index=i + 1, public_key=KEYS[offset + i].public) for i in range(n)]


def _open_all(dealing: Dealing, n: int, offset: int = 0) -> list[Share]:
    return [
        open_and_verify_share(
            commitments=dealing.commitments,
            sealed=dealing.share_for(KEYS[offset + i].device_id).sealed,
            index=i + 1,
            device_key=KEYS[offset + i],
            account_id=dealing.account_id,
            session_id=dealing.session_id,
            role=dealing.role,
        )
        for i in range(n)
    ]


# --- genesis --------------------------------------------------------------------------------------


def test_dealing_opens_and_verifies_for_every_holder() -> None:
    secret = Scalar.random(seeded_rng(b"genesis"))
    d = deal_account(threshold=2, holders=_holders(3), session_id="g1", secret=secret)
    assert d.public_key == Point.base_mul(secret)
    assert d.account_id == account_id_for(d.public_key) and len(d.account_id) == 32
    assert d.threshold == 2
    shares = _open_all(d, 3)
    for s, ss in zip(shares, d.shares, strict=True):
        assert Point.base_mul(s.value) == ss.public_share
    assert reconstruct_account_secret(shares[1:], d.commitments) == secret


def test_guardian_dealing_shares_the_same_account() -> None:
    rng = seeded_rng(b"guardians")
    secret = Scalar.random(rng)
    devices = deal_account(threshold=2, holders=_holders(3), session_id="g", secret=secret, rng=rng)
    guardians = deal_account(
        threshold=2,
        holders=_holders(3, offset=3),
        session_id="g",
        role="guardian",
        secret=secret,
        rng=rng,
    )
    assert guardians.account_id == devices.account_id
    assert guardians.public_key == devices.public_key
    assert guardians.commitments != devices.commitments
    g_shares = _open_all(guardians, 3, offset=3)
    assert reconstruct_account_secret(g_shares[:2], guardians.commitments) == secret
    # A guardian share cannot be opened as a device share (purpose binding).
    with pytest.raises(SealError):
        open_and_verify_share(
            commitments=guardians.commitments,
            sealed=guardians.shares[0].sealed,
            index=1,
            device_key=KEYS[3],
            account_id=guardians.account_id,
            session_id="g",
            role="device",
        )


def test_open_and_verify_share_rejections() -> None:
    d = deal_account(threshold=2, holders=_holders(3), session_id="g2", rng=seeded_rng(b"r"))
    mine = d.share_for(KEYS[0].device_id)

    def attempt(
        *,
        sealed: bytes = mine.sealed,
        index: int = 1,
        key: DeviceKey = KEYS[0],
        account_id: str = d.account_id,
        session_id: str = "g2",
    ) -> Share:
        return open_and_verify_share(
            commitments=d.commitments,
            sealed=sealed,
            index=index,
            device_key=key,
            account_id=account_id,
            session_id=session_id,
        )

    assert attempt().index == 1
    with pytest.raises(SealError):  # someone else's key
        attempt(key=KEYS[1])
    with pytest.raises(SealError):  # other session
        attempt(session_id="g3")
    with pytest.raises(ShareError, match="expected 2"):  # other index
        attempt(index=2)
    with pytest.raises(ShareError, match="does not match the commitments"):
        attempt(account_id="0" * 32)
    # A dealer that seals a share inconsistent with its commitments is caught.
    bad = seal_share(
        Share(index=1, value=Scalar.from_int(12345)),
        KEYS[0].public,
        dataclasses.replace(
            recovery_binding(account_id=d.account_id, session_id="g2", new_device_id="x"),
            purpose="genesis/device-share",
            recipient_device_id=KEYS[0].device_id,
        ),
    )
    with pytest.raises(ShareError, match="Feldman check"):
        attempt(sealed=bad)


def test_deal_account_validation() -> None:
    with pytest.raises(ThresholdError):
        deal_account(threshold=4, holders=_holders(3), session_id="s")
    with pytest.raises(ShareError, match="only one share"):
        deal_account(
            threshold=1,
            holders=[Holder(index=1, public_key=KEYS[0].public)] * 2,
            session_id="s",
        )
    with pytest.raises(ShareError, match="duplicate holder index"):
        deal_account(
            threshold=1,
            holders=[
                Holder(index=1, public_key=KEYS[0].public),
                Holder(index=1, public_key=KEYS[1].public),
            ],
            session_id="s",
        )
    with pytest.raises(ShareError, match="at least one holder"):
        deal_account(threshold=1, holders=[], session_id="s")


# --- DKD ------------------------------------------------------------------------------------------


def _run_dkd(
    shares: list[Share],
    commitments: FeldmanCommitments,
    account_id: str,
    context: str,
    subset: list[int],
    session: str,
) -> list[dkd.VerifiedPartial]:
    h = dkd.dkd_base(account_id, context)
    verified = []
    for i in subset:
        ctx = dkd.proof_context(
            account_id=account_id, context=context, session_id=session, device_id=f"dev-{i}"
        )
        y = commitments.public_share(i)
        p = dkd.partial(share=shares[i - 1], base=h, public_share=y, proof_ctx=ctx)
        verified.append(dkd.verify_partial(p, base=h, public_share=y, proof_ctx=ctx))
    return verified


@st.composite
def dkd_cases(draw: st.DrawFn) -> tuple[int, int, list[int], list[int], bytes]:
    n = draw(st.integers(1, 6))
    t = draw(st.integers(1, n))
    a = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    b = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    return t, n, a, b, draw(st.binary(min_size=1, max_size=8))


@settings(max_examples=100, deadline=None)
@given(dkd_cases(), st.text(min_size=1, max_size=12))
def test_any_threshold_subset_derives_the_same_key(
    case: tuple[int, int, list[int], list[int], bytes], context: str
) -> None:
    t, n, subset_a, subset_b, seed = case
    rng = seeded_rng(seed)
    secret = Scalar.random(rng)
    d = deal_account(threshold=t, holders=_holders(n), session_id="g", secret=secret, rng=rng)
    shares = _open_all(d, n)
    ka = dkd.combine(
        _run_dkd(shares, d.commitments, d.account_id, context, subset_a, "s-a"), threshold=t
    )
    kb = dkd.combine(
        _run_dkd(shares, d.commitments, d.account_id, context, subset_b, "s-b"), threshold=t
    )
    assert ka == kb == secret * dkd.dkd_base(d.account_id, context)
    da, db = dkd.derive(ka, d.account_id, context), dkd.derive(kb, d.account_id, context)
    assert da == db
    assert da.public_key == dkd.derived_public_key(
        dkd.derive_key_material(ka, d.account_id, context)
    )
    if t >= 2:
        few = _run_dkd(shares, d.commitments, d.account_id, context, subset_a[: t - 1], "s-c")
        with pytest.raises(ThresholdError):
            dkd.combine(few, threshold=t)
        # Interpolating below threshold gives some other point (overwhelming probability).
        assert dkd.combine(few, threshold=t - 1) != ka


def test_dkd_different_contexts_and_accounts_differ() -> None:
    rng = seeded_rng(b"ctx")
    d = deal_account(threshold=2, holders=_holders(3), session_id="g", rng=rng)
    shares = _open_all(d, 3)

    def fp(context: str) -> str:
        k = dkd.combine(
            _run_dkd(shares, d.commitments, d.account_id, context, [1, 3], "s"), threshold=2
        )
        return dkd.derive(k, d.account_id, context).fingerprint

    assert fp("mail") != fp("chat")
    assert dkd.dkd_base("acct-a", "ctx") != dkd.dkd_base("acct-b", "ctx")


def test_wrong_partials_fail_verification() -> None:
    rng = seeded_rng(b"wrong")
    d = deal_account(threshold=2, holders=_holders(3), session_id="g", rng=rng)
    shares = _open_all(d, 3)
    h = dkd.dkd_base(d.account_id, "ctx")
    ctx1 = dkd.proof_context(account_id=d.account_id, context="ctx", session_id="s", device_id="a")
    y1, y2 = d.commitments.public_share(1), d.commitments.public_share(2)
    good = dkd.partial(share=shares[0], base=h, public_share=y1, proof_ctx=ctx1)
    # Checked against another holder's public share.
    with pytest.raises(ProofError, match="holder 1"):
        dkd.verify_partial(good, base=h, public_share=y2, proof_ctx=ctx1)
    # Replayed into another session / by another device.
    ctx_other = dkd.proof_context(
        account_id=d.account_id, context="ctx", session_id="s2", device_id="a"
    )
    with pytest.raises(ProofError):
        dkd.verify_partial(good, base=h, public_share=y1, proof_ctx=ctx_other)
    # Another context's base point.
    with pytest.raises(ProofError):
        dkd.verify_partial(
            good, base=dkd.dkd_base(d.account_id, "other"), public_share=y1, proof_ctx=ctx1
        )
    # A point that is not s_1·H, with the honest proof attached.
    forged = dkd.DkdPartial(index=1, point=good.point + h, proof=good.proof)
    with pytest.raises(ProofError):
        dkd.verify_partial(forged, base=h, public_share=y1, proof_ctx=ctx1)
    # Proving with a share that does not match the public share is refused locally.
    with pytest.raises(ShareError, match="does not match its public share"):
        dkd.partial(share=shares[1], base=h, public_share=y1, proof_ctx=ctx1)


def test_partial_commitment_binds_everything() -> None:
    rng = seeded_rng(b"commit")
    d = deal_account(threshold=1, holders=_holders(1), session_id="g", rng=rng)
    (share,) = _open_all(d, 1)
    h = dkd.dkd_base(d.account_id, "c")
    ctx = dkd.proof_context(account_id=d.account_id, context="c", session_id="s", device_id="a")
    p = dkd.partial(share=share, base=h, public_share=d.commitments.public_share(1), proof_ctx=ctx)
    c = dkd.partial_commitment(p, ctx)
    assert len(c) == 32 and c == dkd.partial_commitment(p, ctx)
    assert c != dkd.partial_commitment(p, ctx + b"x")
    assert c != dkd.partial_commitment(dataclasses.replace(p, point=p.point + h), ctx)


def test_verified_partial_has_no_public_constructor_and_combine_checks() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        dkd.VerifiedPartial(_token=object(), index=1, point=Point.base(), base=Point.base())
    rng = seeded_rng(b"combine")
    d = deal_account(threshold=2, holders=_holders(3), session_id="g", rng=rng)
    shares = _open_all(d, 3)
    v1 = _run_dkd(shares, d.commitments, d.account_id, "c", [1, 2], "s")
    v2 = _run_dkd(shares, d.commitments, d.account_id, "other", [3], "s")
    with pytest.raises(ShareError, match="two partials for holder index 1"):
        dkd.combine([v1[0], v1[0]], threshold=2)
    with pytest.raises(ShareError, match="different DKD base"):
        dkd.combine([v1[0], v2[0]], threshold=2)
    with pytest.raises(ThresholdError):
        dkd.combine([], threshold=2)
    with pytest.raises(ShareError, match="identity"):
        dkd.derive_key_material(Point.identity(), d.account_id, "c")


def test_dkd_known_answer() -> None:
    """Pinned end-to-end vector: a fixed secret and a fixed context give a fixed key."""
    secret = Scalar.from_int(0xA0A0)
    d = deal_account(
        threshold=2, holders=_holders(3), session_id="g", secret=secret, rng=seeded_rng(b"kat")
    )
    assert d.public_key.hex() == KAT_PUBLIC_KEY
    assert d.account_id == KAT_ACCOUNT_ID
    assert dkd.dkd_base(d.account_id, "kat-context").hex() == KAT_BASE
    shares = _open_all(d, 3)
    k = dkd.combine(
        _run_dkd(shares, d.commitments, d.account_id, "kat-context", [2, 3], "s"), threshold=2
    )
    derived = dkd.derive(k, d.account_id, "kat-context")
    assert derived.public_key.hex() == KAT_DERIVED_PUBLIC_KEY
    assert derived.fingerprint == KAT_FINGERPRINT


# --- recovery -------------------------------------------------------------------------------------


def test_recovery_from_guardian_shares() -> None:
    rng = seeded_rng(b"recovery")
    secret = Scalar.random(rng)
    g = deal_account(
        threshold=2, holders=_holders(3), session_id="g", role="guardian", secret=secret, rng=rng
    )
    guardian_shares = _open_all(g, 3)
    new_device = KEYS[8]
    binding = recovery_binding(
        account_id=g.account_id, session_id="rec-1", new_device_id=new_device.device_id
    )
    sealed = {s.index: seal_share(s, new_device.public, binding) for s in guardian_shares}
    opened = [
        open_recovery_share(
            commitments=g.commitments,
            sealed=sealed[i],
            guardian_index=i,
            device_key=new_device,
            account_id=g.account_id,
            session_id="rec-1",
        )
        for i in (1, 3)
    ]
    assert reconstruct_account_secret(opened, g.commitments) == secret
    with pytest.raises(ThresholdError):
        reconstruct_account_secret(opened[:1], g.commitments)
    with pytest.raises(SealError):  # replayed into another recovery session
        open_recovery_share(
            commitments=g.commitments,
            sealed=sealed[1],
            guardian_index=1,
            device_key=new_device,
            account_id=g.account_id,
            session_id="rec-2",
        )
    # A lying guardian: a well-sealed share that fails its Feldman check is named.
    lie = seal_share(Share(index=2, value=Scalar.from_int(7)), new_device.public, binding)
    with pytest.raises(ShareError, match="holder 2 fails its Feldman check"):
        open_recovery_share(
            commitments=g.commitments,
            sealed=lie,
            guardian_index=2,
            device_key=new_device,
            account_id=g.account_id,
            session_id="rec-1",
        )
    with pytest.raises(ShareError, match="holder 2"):
        reconstruct_account_secret(
            [opened[0], Share(index=2, value=Scalar.from_int(7))], g.commitments
        )


KAT_PUBLIC_KEY = "c2323d08998f692946d27ef184182ecaccb224b30adf52a3c5b49c55b3b7cc91"
KAT_ACCOUNT_ID = "0dc7d1e8bc5c985becf9196afd423269"
KAT_BASE = "f9a76f545dca529b1efbdc4ce1f11273cbe904bb5e99abd866fa04b35e52f61f"
KAT_DERIVED_PUBLIC_KEY = "355e1febe8cb0b0ddf750a19a5854bd36cb69bad6678bc87f0863b43d9155178"
KAT_FINGERPRINT = "67e97c4b3e01f4e89da806fed247dace"
