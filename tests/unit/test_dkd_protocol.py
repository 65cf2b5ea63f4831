"""DKD: conformance, witnesses, honest runs, misbehaving peers (real signed envelopes)."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from aura_node.crypto.group import Point, Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import WitnessError
from aura_node.protocols import engine as eng
from aura_node.protocols.dkd.choreography import (
    DkdCollected,
    DkdCommitment,
    DkdComplete,
    DkdReveal,
    RevealedPartial,
    SignedCommitment,
)
from aura_node.protocols.dkd.roles import (
    SPEC,
    DkdInitiator,
    DkdParticipant,
    make_contribution,
    session_params,
    session_roles,
)
from aura_node.protocols.dkd.witnesses import (
    COMMITMENT_DOMAIN,
    CollectedCommitments,
    VerifiedReveals,
    check_commitment,
)
from aura_node.protocols.envelope import seal
from aura_node.protocols.registry import REGISTRY
from aura_node.session.conformance import check_conformance
from aura_node.session.witness import statement_bytes
from tests.unit.protocol_sim import Cluster, Device, InFlight, account_devices

SID = "a" * 32


def _run(devs: dict[str, Device], initiator: str, *, participants: list[str] | None = None,
         sid: str = SID, seed: int = 0, cluster: Cluster | None = None) -> Cluster:
    c = cluster or Cluster(devs, SPEC, rng=random.Random(seed), duplicate_rate=0.2)
    args: dict[str, Any] = {"context": "mail"}
    if participants is not None:
        args["participants"] = participants
    p = session_params(args, devs[initiator].services)
    c.start(initiator, session=sid, params=p, roles=session_roles(p),
            entropy=bytes([seed % 256]) * 32)
    c.run()
    return c


def _fingerprints(c: Cluster, sid: str = SID) -> set[str]:
    return {r["fingerprint"] for n in c.devices if (r := c.result(n, sid)) is not None}


# --- conformance and witnesses --------------------------------------------------------------


@pytest.mark.parametrize(("m", "q"), [(1, 1), (2, 1), (4, 2)])
def test_roles_conform_to_projected_local_types(m: int, q: int) -> None:
    chor = REGISTRY["dkd"]
    check_conformance(DkdInitiator, chor.project("initiator", {"m": m, "q": q}))
    check_conformance(DkdParticipant, chor.project("participants", {"m": m, "q": q}))


def test_witnesses_have_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        CollectedCommitments(evidence=None, digests={})  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        VerifiedReveals()  # type: ignore[call-arg]


def _facts_and_contributions(n: int = 3, t: int = 2) -> tuple[Any, list[Any], dict[str, Device]]:
    from aura_node.protocols.dkd.roles import _facts_for

    devs = account_devices(n, t)
    holders = [f"d{i}" for i in range(1, n + 1)]
    acct = devs["d1"].services.accounts.only().account
    facts = _facts_for(devs["d1"].services, acct, holders, session_id=SID, context="mail")
    contribs = [make_contribution(devs[h].services, facts, b"e" * 32) for h in holders]
    return facts, contribs, devs


def test_collected_commitments_verifier_rejections() -> None:
    facts, contribs, devs = _facts_and_contributions()
    good = [c.commitment for c in contribs]
    w = CollectedCommitments.verify(good, facts)
    assert set(w.digests) == {c.reveal.device_id for c in contribs}
    # duplicates count once: two copies of one commitment are not a threshold of 2
    with pytest.raises(WitnessError, match="got 1 distinct"):
        CollectedCommitments.verify([good[0], good[0]], facts)
    # below threshold
    with pytest.raises(WitnessError, match="2 of 3 members needed"):
        CollectedCommitments.verify(good[:1], facts)
    # bad signature
    bad = msgspec.structs.replace(good[1], signature=bytes(64))
    with pytest.raises(WitnessError, match="does not verify"):
        CollectedCommitments.verify([good[0], bad], facts)
    # wrong session (a commitment replayed from another session)
    other = msgspec.structs.replace(good[1], session="b" * 32)
    with pytest.raises(WitnessError, match="expected 'a+'"):
        check_commitment(other, facts)
    # non-member
    stranger = DeviceKey.from_seed(b"\x77" * 32)
    forged = SignedCommitment(session=SID, device_id=stranger.device_id, digest=bytes(32),
                              signature=stranger.sign(COMMITMENT_DOMAIN, statement_bytes(
                                  session_id=SID, choreography="dkd", payload=bytes(32))))
    with pytest.raises(WitnessError, match="not a holder"):
        CollectedCommitments.verify([good[0], good[1], forged], facts)


def test_verified_reveals_rejects_mismatch_and_bad_proof() -> None:
    facts, contribs, _ = _facts_and_contributions()
    w = CollectedCommitments.verify([c.commitment for c in contribs], facts)
    reveals = [c.reveal for c in contribs]
    v = VerifiedReveals.verify(w, reveals, facts)
    assert len(v.partials) == 2
    swapped = msgspec.structs.replace(reveals[0], point=reveals[1].point)
    with pytest.raises(WitnessError, match="does not match its commitment"):
        VerifiedReveals.verify(w, [swapped, reveals[1]], facts)
    with pytest.raises(WitnessError, match="2 verified reveals needed, got 1"):
        VerifiedReveals.verify(w, reveals[:1], facts)


# --- honest runs -----------------------------------------------------------------------------


def test_any_subset_and_initiator_derive_the_same_key() -> None:
    devs = account_devices(4, 2)
    fps = set()
    for k, (init, parts) in enumerate([("d1", ["d1", "d2"]), ("d3", ["d4"]), ("d2", None),
                                       ("d4", ["d1", "d2", "d3"])]):
        sid = f"{k:032x}"
        c = _run(devs, init, participants=parts, sid=sid, seed=k)
        res = c.result(init, sid)
        assert res is not None and set(res) == {"session", "context", "participants",
                                                "fingerprint", "public_key"}
        assert res["session"] == sid and res["context"] == "mail"
        fps |= _fingerprints(c, sid)
    assert len(fps) == 1


def test_one_of_one_account_completes_locally_with_the_same_key() -> None:
    devs = account_devices(3, 2)
    ref = _fingerprints(_run(devs, "d1"))
    # the recovered device: holds s itself, threshold 1
    from aura_node.crypto.dealing import Holder, deal_account
    from aura_node.crypto.feldman import FeldmanCommitments
    from aura_node.crypto.shamir import reconstruct
    from aura_node.protocols.account import (
        AccountEstablished,
        AccountHolder,
        AccountRecord,
        AccountStore,
        genesis_held_share,
        open_held_share,
    )
    shares = [open_held_share(devs[n].services.accounts.only().account,
                              devs[n].services.accounts.only().shares[0], devs[n].key)
              for n in ("d1", "d2")]
    s = reconstruct(shares, threshold=2)
    new = account_devices(1, 1, seed=9)["d1"]
    dealing = deal_account(threshold=1, holders=[Holder(index=1, public_key=new.key.public)],
                           session_id="recovery", secret=s)
    record = AccountRecord(
        account_id=dealing.account_id, public_key=dealing.public_key.to_bytes(), threshold=1,
        devices=(AccountHolder(name="d1", device_id=new.key.device_id, index=1,
                               public_share=dealing.shares[0].public_share.to_bytes()),),
        device_commitments=dealing.commitments.to_bytes())
    assert FeldmanCommitments.from_bytes(record.device_commitments).threshold == 1
    new.services.accounts = AccountStore()
    new.services.accounts.add(AccountEstablished(account=record, shares=(genesis_held_share(
        holder_set="devices", index=1, sealed=dealing.shares[0].sealed,
        session_id="recovery"),)))
    c = _run({"d1": new}, "d1")
    res = c.result("d1", SID)
    assert res is not None and res["participants"] == ["d1"]
    assert {res["fingerprint"]} == ref
    assert not c.queue  # nothing was sent


# --- misbehaving peers -----------------------------------------------------------------------


def _reseal(item: InFlight, devs: dict[str, Device], message: msgspec.Struct) -> InFlight:
    """The sender's own valid envelope around a lying message."""
    env = seal(devs[item.sender].key, choreography="dkd", session=item.wire.session,
               message=message)
    return InFlight(sender=item.sender, to=item.to, wire=env)


def _lying(devs: dict[str, Device], liar: str, step: str, lie: Any) -> Cluster:
    c = Cluster(devs, SPEC, rng=random.Random(1))
    lied: list[bool] = []
    held: list[InFlight] = []

    def tamper(item: InFlight) -> InFlight | None:
        if item.sender == liar and item.wire.step == step:
            msg = eng.decode_message(item.wire, SPEC.message_types[step])
            lied.append(True)
            # the honest ones' messages of this step go after the lie, so it is looked at
            c.queue.extend(held)
            held.clear()
            return lie(item, msg)
        if item.wire.step == step and not lied:
            held.append(item)
            return None
        return item

    c.tamper = tamper
    return c


def _rejections(devs: dict[str, Device], name: str, sid: str = SID) -> list[tuple[str, str, str]]:
    """The ``dkd.rejected`` records ``name`` journaled in ``sid``: (peer, code, reason)."""
    out = []
    for rec in devs[name].records(sid):
        body = eng.decode_rejection(rec.body) if rec.kind == "dkd.rejected" else None
        if body is not None:
            out.append((body.peer, body.code, body.reason))
    return out


def _honest_reference(n: int, t: int) -> set[str]:
    return _fingerprints(_run(account_devices(n, t), "d1"))


def test_bad_envelope_signature_is_rejected_before_the_driver() -> None:
    devs = account_devices(4, 2)

    def lie(item: InFlight, msg: Any) -> InFlight:
        return InFlight(sender=item.sender, to=item.to,
                        wire=msgspec.structs.replace(item.wire, signature=bytes(64)))

    c = _run(devs, "d1", cluster=_lying(devs, "d2", "DkdCommitment", lie))
    assert any(code == "bad_signature" for _, code, _ in devs["d1"].misbehaviour)
    assert _fingerprints(c) == _honest_reference(4, 2)
    assert c.result("d1", SID) is not None and "d2" not in c.result("d1", SID)["participants"]


def test_bad_commitment_signature_rejected_by_witness_verifier() -> None:
    devs = account_devices(4, 2)

    def lie(item: InFlight, msg: DkdCommitment) -> InFlight:
        bad = msgspec.structs.replace(msg.commitment, signature=bytes(64))
        return _reseal(item, devs, DkdCommitment(commitment=bad))

    c = _run(devs, "d1", cluster=_lying(devs, "d2", "DkdCommitment", lie))
    rej = _rejections(devs, "d1")
    assert any(p == "d2" and "does not verify" in r for p, _, r in rej), rej
    assert _fingerprints(c) == _honest_reference(4, 2)


def test_message_in_the_wrong_phase_is_rejected_by_the_monitor() -> None:
    devs = account_devices(3, 2)
    c = _run(devs, "d1")
    # d2 sends a DkdCollected (an initiator-only message) to d1 in the finished session
    env = seal(devs["d2"].key, choreography="dkd", session="c" * 32,
               message=DkdComplete(reveals=(), public_key=b"", fingerprint=""))
    c.deliver(InFlight(sender="d2", to="d3", wire=env))
    assert devs["d3"].misbehaviour[-1][1] == "no_session"
    c2 = _lying(devs, "d2", "DkdCommitment",
                lambda item, msg: _reseal(item, devs, DkdReveal(reveal=RevealedPartial(
                    device_id=devs["d2"].key.device_id, index=2, point=b"", proof=b"",
                    commitment=msg.commitment))))
    c2 = _run(devs, "d1", sid="d" * 32, cluster=c2)
    codes = [code for _, code, _ in devs["d1"].misbehaviour]
    assert "early_message" not in codes  # buffered, never handed over
    assert c2.result("d1", "d" * 32) is not None  # d3 still completes it with d1


def test_reveal_not_matching_its_commitment_is_rejected() -> None:
    devs = account_devices(4, 2)

    other_point = Point.base_mul(Scalar.from_int(7)).to_bytes()  # a valid point, not P_2

    def lie(item: InFlight, msg: DkdReveal) -> InFlight:
        return _reseal(item, devs, DkdReveal(reveal=msgspec.structs.replace(
            msg.reveal, point=other_point)))

    c = _run(devs, "d1", cluster=_lying(devs, "d2", "DkdReveal", lie))
    assert any(code == "dkd_bad_reveal" and "does not match" in r
               for _, code, r in _rejections(devs, "d1"))
    assert _fingerprints(c) == _honest_reference(4, 2)


def test_wrong_dleq_proof_is_rejected() -> None:
    devs = account_devices(4, 2)
    facts_holder: dict[str, Any] = {}

    def lie(item: InFlight, msg: DkdReveal) -> InFlight:
        # a consistent lie: commit to a partial with a proof made for another context
        from aura_node.protocols.dkd.roles import _facts_for

        d2 = devs["d2"]
        acct = d2.services.accounts.only().account
        wrong = _facts_for(d2.services, acct, ["d1", "d2", "d3", "d4"],
                           session_id=SID, context="other")
        bad = make_contribution(d2.services, wrong, b"z" * 32).reveal
        facts_holder["bad"] = bad
        forged = msgspec.structs.replace(bad, commitment=msg.reveal.commitment)
        return _reseal(item, devs, DkdReveal(reveal=forged))

    c = _run(devs, "d1", cluster=_lying(devs, "d2", "DkdReveal", lie))
    rej = _rejections(devs, "d1")
    assert any(code == "dkd_bad_reveal" for _, code, _ in rej), rej
    assert _fingerprints(c) == _honest_reference(4, 2)


def test_equivocating_device_is_excluded_and_session_completes() -> None:
    devs = account_devices(4, 2)

    def lie(item: InFlight, msg: DkdReveal) -> InFlight:
        # the reveal opens a second, different commitment signed by d2 for this session
        d2 = devs["d2"]
        digest = bytes(32)
        sig = d2.key.sign(COMMITMENT_DOMAIN, statement_bytes(
            session_id=SID, choreography="dkd", payload=digest))
        other = SignedCommitment(session=SID, device_id=d2.key.device_id, digest=digest,
                                 signature=sig)
        return _reseal(item, devs, DkdReveal(reveal=msgspec.structs.replace(
            msg.reveal, commitment=other)))

    c = _run(devs, "d1", cluster=_lying(devs, "d2", "DkdReveal", lie))
    rej = _rejections(devs, "d1")
    assert any(code == "dkd_equivocation" for _, code, _ in rej), rej
    kinds = [r.kind for r in devs["d1"].records(SID)]
    assert "dkd.equivocation" in kinds
    res = c.result("d1", SID)
    assert res is not None and "d2" not in res["participants"]
    assert _fingerprints(c) == _honest_reference(4, 2)


def test_commitment_replayed_from_another_session_is_rejected() -> None:
    devs = account_devices(4, 2)
    old: dict[str, SignedCommitment] = {}
    first = _run(devs, "d1", sid="e" * 32)
    assert first.result("d1", "e" * 32) is not None
    for recs in devs["d1"].records("e" * 32):
        if recs.kind == eng.KIND_IN:
            ev = eng.parse_record(recs)
            assert isinstance(ev, eng.Received)
            if ev.envelope.step == "DkdCommitment" and ev.sender == "d2":
                old["c"] = eng.decode_message(ev.envelope, DkdCommitment).commitment

    c = _run(devs, "d1", cluster=_lying(
        devs, "d2", "DkdCommitment",
        lambda item, msg: _reseal(item, devs, DkdCommitment(commitment=old["c"]))))
    rej = _rejections(devs, "d1")
    assert any("session" in r and "expected" in r for p, _, r in rej if p == "d2"), rej
    assert _fingerprints(c) == _honest_reference(4, 2)


def test_commitment_from_a_non_member_is_rejected() -> None:
    devs = account_devices(3, 2, extra=1)
    x1 = devs["x1"]
    c = _run(devs, "d1")
    digest = bytes(32)
    forged = SignedCommitment(session="f" * 32, device_id=x1.key.device_id, digest=digest,
                              signature=x1.key.sign(COMMITMENT_DOMAIN, statement_bytes(
                                  session_id="f" * 32, choreography="dkd", payload=digest)))
    c2 = Cluster(devs, SPEC, rng=random.Random(3))
    p = session_params({"context": "mail", "participants": ["d1", "d2"]}, devs["d1"].services)
    c2.start("d1", session="f" * 32, params=p, roles=session_roles(p), entropy=b"q" * 32)
    # x1 (pinned, but not in this session) sends a commitment: no role, rejected
    c2.deliver(InFlight(sender="x1", to="d1", wire=seal(
        x1.key, choreography="dkd", session="f" * 32, message=DkdCommitment(commitment=forged))))
    assert devs["d1"].misbehaviour[-1][1] == "no_role"
    # d2 relays it as if it were its own: the driver rejects the non-member
    c2.tamper = lambda item: (_reseal(item, devs, DkdCommitment(commitment=forged))
                              if item.wire.step == "DkdCommitment" else item)
    c2.run()
    rej = _rejections(devs, "d1", "f" * 32)
    assert any(code in ("dkd_sender_mismatch", "witness_invalid") for _, code, _ in rej), rej
    assert c2.result("d1", "f" * 32) is None
    c2.fire_timers(c2.now + 31)
    assert c2.error("d1", "f" * 32) is not None and c2.error("d1", "f" * 32)[0] == "timeout"
    assert _fingerprints(c) == _honest_reference(3, 2)


def test_collected_with_a_bad_set_fails_the_participant() -> None:
    devs = account_devices(3, 2)

    def lie(item: InFlight, msg: DkdCollected) -> InFlight:
        return _reseal(item, devs, DkdCollected(commitments=(), reveal=msgspec.structs.replace(
            msg.reveal, proof=bytes(len(msg.reveal.proof)))))

    c = _run(devs, "d1", cluster=_lying(devs, "d1", "DkdCollected", lie))
    for n in ("d2", "d3"):
        assert c.result(n, SID) is None
        assert _rejections(devs, n)
