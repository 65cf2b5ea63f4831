"""Witnesses cannot be forged; the threshold verifier rejects every kind of bad evidence."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pickle
import pkgutil
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aura_node.session
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import WitnessError
from aura_node.session.witness import (
    NoPublicConstructor,
    QuorumOfSignedStatements,
    SignedStatement,
    ThresholdConfigError,
    ThresholdEvidence,
    Witness,
    verify_threshold_evidence,
)

DOMAIN = "test/statement"
CHOREO = "toy-vote"
SID = "session-1"
KEYS = [DeviceKey.from_seed(bytes([i]) * 32) for i in range(1, 8)]
MEMBERS = [k.public for k in KEYS[:5]]
OUTSIDER = KEYS[6]


def stmt(key: DeviceKey, payload: bytes = b"yes", *, session_id: str = SID,
         choreography: str = CHOREO, domain: str = DOMAIN) -> SignedStatement:
    return SignedStatement.sign(
        key, domain=domain, session_id=session_id, choreography=choreography, payload=payload
    )


def verify(items: list[SignedStatement], threshold: int = 3) -> ThresholdEvidence:
    return verify_threshold_evidence(
        items, members=MEMBERS, session_id=SID, choreography=CHOREO, domain=DOMAIN,
        threshold=threshold,
    )


def all_witness_classes() -> list[type[Witness]]:
    found: dict[str, type[Witness]] = {}
    for info in pkgutil.walk_packages(aura_node.session.__path__, "aura_node.session."):
        mod = importlib.import_module(info.name)
        for obj in vars(mod).values():
            if (
                isinstance(obj, NoPublicConstructor)
                and issubclass(obj, Witness)
                and obj.__module__ == mod.__name__
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = cast(type[Witness], obj)
    return list(found.values())


# --- unforgeability ------------------------------------------------------------------------------


def test_every_witness_class_refuses_direct_construction() -> None:
    classes = all_witness_classes()
    names = {c.__qualname__ for c in classes}
    assert {"Witness", "ThresholdEvidence", "QuorumOfSignedStatements"} <= names
    good = verify([stmt(k) for k in KEYS[:3]])
    for cls in classes:
        for args, kwargs in [((), {}), ((object(),), {}), ((), {"evidence": good})]:
            with pytest.raises(TypeError, match="has no public constructor"):
                cast(Any, cls)(*args, **kwargs)


def test_subclassing_a_concrete_witness_is_refused() -> None:
    with pytest.raises(TypeError, match="subclasses the concrete witness QuorumOfSignedStatements"):

        class Wider(QuorumOfSignedStatements):  # type: ignore[misc]
            pass

    with pytest.raises(TypeError, match="subclasses the concrete witness ThresholdEvidence"):

        class ClaimsAbstract(ThresholdEvidence, abstract=True):  # type: ignore[misc]
            pass


def test_abstract_witness_bases_cannot_be_created() -> None:
    with pytest.raises(TypeError, match="abstract witness base"):
        Witness._create()

    class Base(Witness, abstract=True):
        __slots__ = ()

    with pytest.raises(TypeError, match="abstract witness base"):
        Base._create()


def test_create_checks_the_exact_fields() -> None:
    with pytest.raises(TypeError, match="needs exactly the fields"):
        QuorumOfSignedStatements._create()
    with pytest.raises(TypeError, match="needs exactly the fields"):
        QuorumOfSignedStatements._create(evidence=None, extra=1)


def test_object_new_bypass_yields_an_empty_shell() -> None:
    """Documented hole: object.__new__ skips the metaclass. The shell carries no evidence."""
    shell = object.__new__(QuorumOfSignedStatements)
    with pytest.raises(AttributeError):
        _ = shell.evidence


def test_witnesses_are_immutable_and_refuse_pickle() -> None:
    q = QuorumOfSignedStatements._create(evidence=verify([stmt(k) for k in KEYS[:3]]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.evidence = q.evidence  # type: ignore[misc]
    with pytest.raises(TypeError, match="cannot be pickled: unpickling would skip"):
        pickle.dumps(q)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(q.evidence)
    assert copy.copy(q) is q and copy.deepcopy(q) is q


# --- the verifier: acceptance ----------------------------------------------------------------


def test_quorum_carries_the_verified_evidence() -> None:
    items = [stmt(KEYS[i], payload=bytes([i])) for i in (2, 0, 1)]
    q = QuorumOfSignedStatements.verify(
        items, members=MEMBERS, session_id=SID, choreography=CHOREO, domain=DOMAIN, threshold=3
    )
    ev = q.evidence
    assert ev.signers == tuple(sorted(k.device_id for k in KEYS[:3]))
    assert set(q.payloads) == {b"\x00", b"\x01", b"\x02"}
    assert ev.threshold == 3 and ev.session_id == SID and ev.domain == DOMAIN
    assert ev.members == frozenset(m.device_id for m in MEMBERS)
    assert ev.equivocations == ()
    # the evidence re-verifies: it is the signed items, not a flag
    for s in ev.statements:
        s.signer.verify(DOMAIN, _signed(s), s.signature)


def _signed(s: SignedStatement) -> bytes:
    from aura_node.session.witness import statement_bytes

    return statement_bytes(session_id=s.session_id, choreography=s.choreography, payload=s.payload)


def test_identical_duplicates_count_once() -> None:
    a, b = stmt(KEYS[0]), stmt(KEYS[1])
    with pytest.raises(WitnessError, match="got 2 distinct valid signer"):
        verify([a, a, b, b, a])
    ev = verify([a, a, b, stmt(KEYS[2]), b])
    assert len(ev.statements) == 3 and ev.equivocations == ()


# --- the verifier: rejections -------------------------------------------------------------------


def test_non_member_is_rejected() -> None:
    with pytest.raises(WitnessError) as exc:
        verify([stmt(KEYS[0]), stmt(OUTSIDER), stmt(KEYS[1]), stmt(KEYS[2])])
    assert exc.value.message == (
        f"evidence item 1: {DOMAIN}: signer {OUTSIDER.device_id} is not a member of "
        f"{CHOREO} session {SID}"
    )
    assert exc.value.code == "witness_invalid"


def test_wrong_session_is_rejected() -> None:
    with pytest.raises(WitnessError, match=f"item 2: .*is for session 'other', expected '{SID}'"):
        verify([stmt(KEYS[0]), stmt(KEYS[1]), stmt(KEYS[2], session_id="other")])


def test_wrong_choreography_is_rejected() -> None:
    with pytest.raises(WitnessError, match="is for choreography 'dkd', expected 'toy-vote'"):
        verify([stmt(KEYS[0], choreography="dkd"), stmt(KEYS[1]), stmt(KEYS[2])])


def test_bad_signature_is_rejected() -> None:
    good = stmt(KEYS[1])
    tampered = dataclasses.replace(good, payload=b"no")
    with pytest.raises(WitnessError, match=f"item 1: .*from {KEYS[1].device_id}.*does not verify"):
        verify([stmt(KEYS[0]), tampered, stmt(KEYS[2])])
    sig = good.signature
    flipped = dataclasses.replace(good, signature=bytes([sig[0] ^ 1]) + sig[1:])
    with pytest.raises(WitnessError, match="does not verify: bad"):
        verify([stmt(KEYS[0]), flipped, stmt(KEYS[2])])
    short = dataclasses.replace(good, signature=good.signature[:10])
    with pytest.raises(WitnessError, match="must be 64 bytes"):
        verify([stmt(KEYS[0]), short, stmt(KEYS[2])])


def test_signature_for_another_domain_is_rejected() -> None:
    with pytest.raises(WitnessError, match="does not verify"):
        verify([stmt(KEYS[0]), stmt(KEYS[1], domain="dkd/commitment"), stmt(KEYS[2])])


def test_key_swap_is_rejected() -> None:
    """A statement signed by an outsider but labelled with a member's key fails the signature."""
    forged = dataclasses.replace(stmt(OUTSIDER), signer=KEYS[3].public)
    with pytest.raises(WitnessError, match=f"from {KEYS[3].device_id}.*does not verify"):
        verify([stmt(KEYS[0]), stmt(KEYS[1]), forged])


def test_below_threshold_is_rejected_with_the_count() -> None:
    with pytest.raises(WitnessError) as exc:
        verify([stmt(KEYS[0]), stmt(KEYS[1])], threshold=3)
    ids = ", ".join(sorted(k.device_id for k in KEYS[:2]))
    assert exc.value.message == (
        f"{DOMAIN}: 3 of 5 members needed in {CHOREO} session {SID}, "
        f"got 2 distinct valid signer(s) ({ids})"
    )
    with pytest.raises(WitnessError, match=r"got 0 distinct valid signer\(s\) \(none\)"):
        verify([], threshold=1)


def test_impossible_threshold_is_a_local_error() -> None:
    for bad in (0, 6, -1):
        with pytest.raises(ThresholdConfigError, match=r"threshold must be in 1\.\.5"):
            verify([stmt(k) for k in KEYS[:5]], threshold=bad)


def test_equivocation_is_detected_excluded_and_kept_as_evidence() -> None:
    liar = KEYS[1]
    one, two = stmt(liar, b"yes"), stmt(liar, b"no")
    ev = verify([stmt(KEYS[0]), one, stmt(KEYS[2]), two, stmt(KEYS[3]), stmt(liar, b"maybe")])
    assert liar.device_id not in ev.signers
    assert len(ev.statements) == 3
    assert ev.misbehaving == (liar.device_id,)
    (eq,) = ev.equivocations
    assert (eq.first, eq.second) == (one, two)
    # the kept evidence is itself signature-valid: it proves the signer equivocated
    for s in (eq.first, eq.second):
        liar.public.verify(DOMAIN, _signed(s), s.signature)
    # and when excluding the liar drops the pool below threshold, the error says why
    with pytest.raises(WitnessError, match=f"excluded for equivocation: {liar.device_id}"):
        verify([stmt(KEYS[0]), one, stmt(KEYS[2]), two])


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from([b"a", b"b"])), min_size=0, max_size=14
    ),
    threshold=st.integers(1, 5),
)
def test_verifier_counts_exactly_the_honest_distinct_members(
    picks: list[tuple[int, bytes]], threshold: int
) -> None:
    items = [stmt(KEYS[i], p) for i, p in picks]
    outsiders = any(i >= 5 for i, _ in picks)
    payloads: dict[int, set[bytes]] = {}
    for i, p in picks:
        payloads.setdefault(i, set()).add(p)
    honest = {i for i, ps in payloads.items() if len(ps) == 1 and i < 5}
    liars = {KEYS[i].device_id for i, ps in payloads.items() if len(ps) > 1 and i < 5}
    try:
        ev = verify(items, threshold=threshold)
    except WitnessError as exc:
        assert outsiders or len(honest) < threshold, exc
        return
    assert not outsiders and len(honest) >= threshold
    assert set(ev.signers) == {KEYS[i].device_id for i in honest}
    assert set(ev.misbehaving) == liars
    assert len(set(ev.signers)) == len(ev.signers)


def test_signed_statement_round_trip_uses_device_key_domain() -> None:
    s = stmt(KEYS[0])
    assert isinstance(s.signer, DevicePublicKey)
    # changing any signed field breaks the signature
    for change in ({"session_id": "x"}, {"choreography": "x"}, {"payload": b"x"}):
        with pytest.raises(WitnessError, match="does not verify|is for"):
            verify([dataclasses.replace(s, **change), stmt(KEYS[1]), stmt(KEYS[2])])
