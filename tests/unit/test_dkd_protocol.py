"""DKD: conformance, witnesses, honest runs, misbehaving peers (real signed envelopes).

The runs go through the product simulation (:mod:`aura_node.harness.simulation`): every node
is the daemon's own ``SessionRuntime`` with its monitors and journal, so what is asserted is
what a node does - its session's result, its journal (``dkd.rejected`` records, misbehaviour
evidence, ``msg.in``), its log - not what a driver object holds. A lying peer is modelled on
the wire: the simulation's ``intercept`` swaps the liar's message for a lie sealed with the
liar's own device key. The witness checks at the top are pure and need no world.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from aura_node.crypto.group import Point, Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.shamir import reconstruct
from aura_node.errors import WitnessError
from aura_node.harness.simulation import Faults, Simulation, reference_fingerprint
from aura_node.protocols import engine as eng
from aura_node.protocols.account import open_held_share
from aura_node.protocols.dkd.choreography import (
    DkdCollected,
    DkdCommitment,
    DkdComplete,
    DkdReveal,
    RevealedPartial,
    SignedCommitment,
)
from aura_node.protocols.dkd.roles import (
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
from aura_node.protocols.envelope import decode_wire, encode_wire, seal
from aura_node.protocols.registry import REGISTRY
from aura_node.session.conformance import check_conformance
from aura_node.session.witness import statement_bytes

SID = "a" * 32


def world(n: int, t: int, *, seed: int = 1, extra: int = 0,
          faults: Faults | None = None) -> Simulation:
    """Devices ``d1..dn`` holding a dealt ``t``-of-``n`` account, plus ``extra`` devices
    ``x1..`` that hold nothing; everyone pins everyone."""
    names = [f"d{i}" for i in range(1, n + 1)] + [f"x{i}" for i in range(1, extra + 1)]
    sim = Simulation(seed, dict.fromkeys(names, "device"), faults=faults)
    sim.deal_account(names[:n], t)
    return sim


def start(sim: Simulation, initiator: str, *, participants: list[str] | None = None,
          sid: str = SID, context: str = "mail") -> str:
    args: dict[str, Any] = {"context": context}
    if participants is not None:
        args["participants"] = participants
    p = session_params(args, sim.nodes[initiator].services)
    return sim.start(initiator, "dkd", roles=session_roles(p), params=p, session=sid)


def run(sim: Simulation, initiator: str, **kw: Any) -> str:
    sid = start(sim, initiator, **kw)
    sim.run()
    return sid


def account_id(sim: Simulation) -> str:
    return sim.nodes["d1"].accounts.only().account.account_id


def reference(sim: Simulation, context: str = "mail") -> str:
    """``s·H`` computed directly from the dealt shares (what every DKD must derive)."""
    return reference_fingerprint(sim, account_id(sim), context)


def result(sim: Simulation, node: str, sid: str = SID) -> dict[str, Any] | None:
    entry = sim.nodes[node].session(sid)
    return None if entry is None else entry.result


def fingerprints(sim: Simulation, sid: str = SID) -> set[str]:
    return {r["fingerprint"] for n in sim.nodes if (r := result(sim, n, sid)) is not None}


def rejections(sim: Simulation, node: str, sid: str = SID) -> list[tuple[str, str, str]]:
    return [(b.peer, b.code, b.reason) for b in sim.nodes[node].rejections(sid)]


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


def facts_and_contributions(sim: Simulation, holders: list[str], *, sid: str = SID,
                            context: str = "mail", of: list[str] | None = None
                            ) -> tuple[Any, list[Any]]:
    """The session facts as d1 sees them and the own contribution of each holder in ``of``
    (default: all); pure, the witnesses are checked without running a session."""
    from aura_node.protocols.dkd.roles import _facts_for

    svc = sim.nodes["d1"].services
    facts = _facts_for(svc, svc.accounts.only().account, holders, session_id=sid,
                       context=context)
    return facts, [make_contribution(sim.nodes[h].services, facts, b"e" * 32)
                   for h in (holders if of is None else of)]


def test_collected_commitments_verifier_rejections() -> None:
    facts, contribs = facts_and_contributions(world(3, 2), ["d1", "d2", "d3"])
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
    facts, contribs = facts_and_contributions(world(3, 2), ["d1", "d2", "d3"])
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
    sim = world(4, 2, faults=Faults(duplicate=0.2))
    fps = set()
    for k, (init, parts) in enumerate([("d1", ["d1", "d2"]), ("d3", ["d4"]), ("d2", None),
                                       ("d4", ["d1", "d2", "d3"])]):
        sid = run(sim, init, participants=parts, sid=f"{k:032x}")
        res = result(sim, init, sid)
        assert res is not None and set(res) == {"session", "context", "participants",
                                                "fingerprint", "public_key"}
        assert res["session"] == sid and res["context"] == "mail"
        fps |= fingerprints(sim, sid)
    assert fps == {reference(sim)}
    assert sim.stats.duplicated > 0  # the duplicates really happened, and changed nothing
    assert sim.check().ok


def test_one_of_one_account_completes_locally_with_the_same_key() -> None:
    sim = world(3, 2)
    ref = fingerprints(sim, run(sim, "d1"))
    assert ref == {reference(sim)}
    # the recovered device: holds s itself, threshold 1
    shares = []
    for n in ("d1", "d2"):
        est = sim.nodes[n].accounts.only()
        shares.append(open_held_share(est.account, est.shares[0], sim.nodes[n].key))
    alone = Simulation(9, {"d1": "device"})
    alone.deal_account(["d1"], 1, secret=reconstruct(shares, threshold=2))
    assert alone.nodes["d1"].accounts.only().account.account_id == account_id(sim)
    sid = run(alone, "d1")
    res = result(alone, "d1", sid)
    assert res is not None and res["participants"] == ["d1"]
    assert {res["fingerprint"]} == ref
    assert alone.nodes["d1"].sent() == [] and alone.stats.delivered == 0  # nothing was sent


# --- misbehaving peers -----------------------------------------------------------------------

#: a lie: (the liar's honest message, its envelope's session) -> the message to send instead
Lie = Callable[[Any, str], msgspec.Struct]


def lying(sim: Simulation, liar: str, step: str, lie: Lie | None = None, *,
          wire: Callable[[bytes], bytes] | None = None) -> list[str]:
    """From now on ``liar`` sends ``lie(msg, session)`` (sealed with its own key) instead of
    each ``step`` message it journaled, or ``wire(payload)`` for a lie below the envelope.
    The honest members' ``step`` messages are held until the first lie went out, so the
    receiver looks at the lie before a threshold of honest ones can make it moot. Returns
    the recipients lied to (filled as it happens)."""
    lied_to: list[str] = []
    held: list[tuple[str, str, bytes]] = []

    def intercept(src: str, dst: str, payload: bytes) -> bytes | None:
        env = decode_wire(payload).envelope
        if env.step != step:
            return payload
        if src != liar:
            if lied_to:
                return payload
            held.append((src, dst, payload))
            return None
        lied_to.append(dst)
        for h in held:  # after the lie (its delay is below the network's maximum)
            sim.post(*h, at=sim.now + 0.5)
        held.clear()
        if wire is not None:
            return wire(payload)
        assert lie is not None
        msg = eng.decode_message(env, eng.PROTOCOLS["dkd"].message_types[step])
        return encode_wire(seal(sim.nodes[liar].key, choreography="dkd",
                                session=env.session, message=lie(msg, env.session)))

    sim.intercept = intercept
    return lied_to


def honest_outcome(sim: Simulation, sid: str = SID, *, without: str | None = None) -> None:
    """The session completed at the initiator d1 with the key ``s·H`` (and ``without``
    that participant: a liar whose every word was refused)."""
    res = result(sim, "d1", sid)
    assert res is not None and without not in res["participants"], res
    assert fingerprints(sim, sid) == {reference(sim)}


def received_from(sim: Simulation, node: str, sender: str, step: str, sid: str = SID
                  ) -> list[bytes]:
    return [ev.envelope.digest for ev in sim.nodes[node].evidence(sid)
            if isinstance(ev, eng.Received) and ev.sender == sender
            and ev.envelope.step == step]


def test_bad_envelope_signature_is_rejected_before_the_driver() -> None:
    with capture_logs() as logs:
        sim = world(4, 2)
        d1 = sim.nodes["d1"]
        assert d1.runtime is not None
        lied_to = lying(sim, "d2", "DkdCommitment", wire=lambda payload: encode_wire(
            msgspec.structs.replace(decode_wire(payload).envelope, signature=bytes(64))))
        run(sim, "d1")
    assert "d1" in lied_to and d1.runtime.rejected >= 1
    refused = [e for e in logs if e["event"] == "message_rejected" and e.get("node") == "d1"]
    assert [e["code"] for e in refused] == ["bad_signature"], refused
    # unsigned junk is no evidence: nothing of it reached d1's journal or its driver
    assert not received_from(sim, "d1", "d2", "DkdCommitment")
    assert not d1.misbehaviour(SID) and not d1.rejections(SID)
    honest_outcome(sim, without="d2")


def test_bad_commitment_signature_rejected_by_witness_verifier() -> None:
    sim = world(4, 2)
    lying(sim, "d2", "DkdCommitment", lambda msg, _: DkdCommitment(
        commitment=msgspec.structs.replace(msg.commitment, signature=bytes(64))))
    run(sim, "d1")
    rej = rejections(sim, "d1")
    assert any(p == "d2" and "does not verify" in r for p, _, r in rej), rej
    honest_outcome(sim)


def test_message_in_the_wrong_phase_is_rejected_by_the_monitor() -> None:
    with capture_logs() as logs:
        sim = world(3, 2)
        run(sim, "d1")
        d3 = sim.nodes["d3"]
        assert d3.runtime is not None
        before = d3.runtime.rejected
        # d2 sends a DkdComplete (the initiator's last word, no opener) for a session d3
        # never heard of: refused without opening a session or journaling anything
        sim.inject("d2", "d3", seal(sim.nodes["d2"].key, choreography="dkd", session="c" * 32,
                                    message=DkdComplete(reveals=(), public_key=b"",
                                                        fingerprint="")))
    assert d3.runtime.rejected == before + 1 and d3.session("c" * 32) is None
    assert not d3.records("c" * 32)
    assert [e["step"] for e in logs if e["event"] == "unknown_session"] == ["DkdComplete"]
    # d2 sends a reveal where its commitment belongs: the monitor holds it as early (allowed
    # in a later state), never hands it over out of turn and never calls it misbehaviour
    lying(sim, "d2", "DkdCommitment", lambda msg, _: DkdReveal(reveal=RevealedPartial(
        device_id=sim.nodes["d2"].key.device_id, index=2, point=b"", proof=b"",
        commitment=msg.commitment)))
    sid = run(sim, "d1", sid="d" * 32)
    assert "early_message" not in {m.code for m in sim.nodes["d1"].misbehaviour(sid)}
    assert not received_from(sim, "d1", "d2", "DkdCommitment", sid)
    res = result(sim, "d1", sid)
    assert res is not None and res["participants"] == ["d1", "d3"]  # d3 completes it with d1


def test_reveal_not_matching_its_commitment_is_rejected() -> None:
    sim = world(4, 2)
    other_point = Point.base_mul(Scalar.from_int(7)).to_bytes()  # a valid point, not P_2
    lying(sim, "d2", "DkdReveal", lambda msg, _: DkdReveal(
        reveal=msgspec.structs.replace(msg.reveal, point=other_point)))
    run(sim, "d1")
    assert any(code == "dkd_bad_reveal" and "does not match" in r
               for _, code, r in rejections(sim, "d1"))
    honest_outcome(sim)


def test_wrong_dleq_proof_is_rejected() -> None:
    sim = world(4, 2)

    def lie(msg: DkdReveal, sid: str) -> DkdReveal:
        # a consistent lie: commit to a partial with a proof made for another context
        _, (bad,) = facts_and_contributions(sim, ["d1", "d2", "d3", "d4"], sid=sid,
                                            context="other", of=["d2"])
        return DkdReveal(reveal=msgspec.structs.replace(
            bad.reveal, commitment=msg.reveal.commitment))

    lying(sim, "d2", "DkdReveal", lie)
    run(sim, "d1")
    rej = rejections(sim, "d1")
    assert any(code == "dkd_bad_reveal" for _, code, _ in rej), rej
    honest_outcome(sim)


def test_equivocating_device_is_excluded_and_session_completes() -> None:
    sim = world(4, 2)
    d2 = sim.nodes["d2"].key

    def lie(msg: DkdReveal, sid: str) -> DkdReveal:
        # the reveal opens a second, different commitment signed by d2 for this session
        digest = bytes(32)
        other = SignedCommitment(session=sid, device_id=d2.device_id, digest=digest,
                                 signature=d2.sign(COMMITMENT_DOMAIN, statement_bytes(
                                     session_id=sid, choreography="dkd", payload=digest)))
        return DkdReveal(reveal=msgspec.structs.replace(msg.reveal, commitment=other))

    lying(sim, "d2", "DkdReveal", lie)
    run(sim, "d1")
    rej = rejections(sim, "d1")
    assert any(code == "dkd_equivocation" for _, code, _ in rej), rej
    assert "dkd.equivocation" in [r.kind for r in sim.nodes["d1"].records(SID)]
    honest_outcome(sim, without="d2")


def test_commitment_replayed_from_another_session_is_rejected() -> None:
    sim = world(4, 2)
    first = run(sim, "d1", sid="e" * 32)
    assert result(sim, "d1", first) is not None
    (old,) = [eng.decode_message(ev.envelope, DkdCommitment).commitment
              for ev in sim.nodes["d1"].evidence(first)
              if isinstance(ev, eng.Received) and ev.envelope.step == "DkdCommitment"
              and ev.sender == "d2"]
    lying(sim, "d2", "DkdCommitment", lambda msg, _: DkdCommitment(commitment=old))
    run(sim, "d1")
    rej = rejections(sim, "d1")
    assert any("session" in r and "expected" in r for p, _, r in rej if p == "d2"), rej
    honest_outcome(sim)


def test_commitment_from_a_non_member_is_rejected() -> None:
    sim = world(3, 2, extra=1)
    ref = fingerprints(sim, run(sim, "d1"))
    assert ref == {reference(sim)}
    x1 = sim.nodes["x1"].key
    sid = "f" * 32
    digest = bytes(32)
    forged = SignedCommitment(session=sid, device_id=x1.device_id, digest=digest,
                              signature=x1.sign(COMMITMENT_DOMAIN, statement_bytes(
                                  session_id=sid, choreography="dkd", payload=digest)))
    # d2 relays it as if it were its own: the driver rejects the non-member
    lying(sim, "d2", "DkdCommitment", lambda msg, _: DkdCommitment(commitment=forged))
    start(sim, "d1", participants=["d1", "d2"], sid=sid)
    # x1 (pinned, but not in this session) sends it itself: no role, journaled as evidence
    sim.inject("x1", "d1", seal(x1, choreography="dkd", session=sid,
                                message=DkdCommitment(commitment=forged)))
    (m,) = sim.nodes["d1"].misbehaviour(sid)
    assert m.peer == "x1" and "has no role" in m.reason and m.envelope
    sim.run(until=sim.now + 5.0)  # everything delivered, the deadline not reached
    rej = rejections(sim, "d1", sid)
    assert any(p == "d2" and code in ("dkd_sender_mismatch", "witness_invalid")
               for p, code, _ in rej), rej
    entry = sim.nodes["d1"].session(sid)
    assert entry is not None and entry.active
    sim.run()
    assert entry.outcome == "failed" and entry.error is not None
    assert entry.error["code"] == "timeout"
    assert not any(r.kind == eng.KIND_COMPLETE for n in sim.nodes.values()
                   for r in n.records(sid))


def test_collected_with_a_bad_set_fails_the_participant() -> None:
    sim = world(3, 2)
    lied_to = lying(sim, "d1", "DkdCollected", lambda msg, _: DkdCollected(
        commitments=(), reveal=msgspec.structs.replace(
            msg.reveal, proof=bytes(len(msg.reveal.proof)))))
    run(sim, "d1")
    assert lied_to
    for n in lied_to:
        assert result(sim, n, SID) is None, n
        assert rejections(sim, n), n
        assert not any(r.kind == eng.KIND_COMPLETE for r in sim.nodes[n].records(SID)), n
