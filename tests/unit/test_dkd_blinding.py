"""Blinded DKD: only the requesting device ever holds ``K``, the derived seed or ``r``.

After honest runs in the product simulation (every node is the daemon's own runtime and
journal), every node's journal bytes and the log are searched for ``K``, the derived seed,
``r`` and every unblinded partial ``s_i·H``; and an attacker holding the union of all the
other nodes' journals (and the public account record) tries every point and every 32-byte
value in them, and every Lagrange combination of the blinded reveals, as ``K`` or as the seed:
none gives the derived key. The same attack with the requester's journal and its device key
(which opens ``r``) does give it, so the search is not vacuous.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import msgspec
import pytest

from aura_node.crypto.dkd import (
    derive,
    derive_key_material,
    derived_public_key,
    dkd_base,
    unblind,
)
from aura_node.crypto.errors import CryptoError
from aura_node.crypto.group import Point, Scalar
from aura_node.crypto.shamir import interpolate_in_exponent, reconstruct
from aura_node.protocols import engine as eng
from aura_node.protocols.account import open_held_share
from aura_node.protocols.dkd.choreography import DkdComplete, DkdRequest
from aura_node.protocols.dkd.roles import KIND_BLINDING, _facts_for, open_blinding
from tests.unit.test_dkd_protocol import SID, account_id, lying, result, run, world

CONTEXT = "mail"


def _bytes_in(value: Any) -> list[bytes]:
    """Every bytes value inside a msgpack structure, nested msgpack (bodies, envelopes,
    payloads) opened too."""
    out: list[bytes] = []
    if isinstance(value, bytes):
        out.append(value)
        try:
            out.extend(_bytes_in(msgspec.msgpack.decode(value)))
        except (msgspec.DecodeError, ValueError, TypeError):
            pass
    elif isinstance(value, dict):
        for k, v in value.items():
            out.extend(_bytes_in(k) + _bytes_in(v))
    elif isinstance(value, list | tuple):
        for v in value:
            out.extend(_bytes_in(v))
    return out


def _journal_values(sim: Any, names: list[str]) -> list[bytes]:
    values: list[bytes] = []
    for n in names:
        for rec in sim.nodes[n].records():
            values.extend(_bytes_in(msgspec.msgpack.encode(rec)))
    return values


def _messages(sim: Any, names: list[str], kind: type[msgspec.Struct]) -> list[Any]:
    found = []
    for n in names:
        for _, env in sim.nodes[n].sent(SID):
            if env.step == kind.__name__:
                found.append(eng.decode_message(env, kind))
    return found


def _secrets(sim: Any, requester: str) -> dict[str, bytes]:
    """``K``, the derived seed, ``r`` (opened with the requester's own key) and every
    holder's unblinded partial ``s_i·H``, computed here from the holders' shares."""
    shares = []
    for n in ("d1", "d2", "d3"):
        est = sim.nodes[n].accounts.only()
        shares.append(open_held_share(est.account, est.shares[0], sim.nodes[n].key))
    acct = account_id(sim)
    h = dkd_base(acct, CONTEXT)
    k = reconstruct(shares[:2], threshold=2) * h
    out = {"K": k.to_bytes(), "seed": derive_key_material(k, acct, CONTEXT)}
    for sh in shares:
        out[f"partial {sh.index}"] = (sh.value * h).to_bytes()
    node = sim.nodes[requester]
    sealed = [r.body for r in node.records(SID) if r.kind == KIND_BLINDING]
    assert len(sealed) == 1, "the requester journals r exactly once, sealed"
    facts = _facts_for(node.services, node.accounts.only().account, ("d1", "d2", "d3"),
                       session_id=SID, context=CONTEXT)
    out["r"] = open_blinding(node.services, facts, sealed[0]).to_bytes()
    return out


def _needles(secrets: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return [(name, form) for name, s in secrets.items()
            for form in (s, s.hex().encode(), s.hex().upper().encode())]


@pytest.mark.parametrize("participants", [["d1", "d2"], ["d1", "d3"], ["d1", "d2", "d3"]])
def test_no_journal_or_log_holds_k_seed_r_or_a_partial(participants: list[str]) -> None:
    sim = world(3, 2)
    run(sim, "d1", participants=participants, context=CONTEXT)
    res = result(sim, "d1", SID)
    assert res is not None and "fingerprint" in res
    secrets = _secrets(sim, "d1")
    # the secrets are right: K derives the key the requester reports
    k = Point.from_bytes(secrets["K"])
    assert derive(k, account_id(sim), CONTEXT).fingerprint == res["fingerprint"]
    places = {n: sim.nodes[n].journal_bytes() for n in sim.nodes} | {"log": sim.log_bytes()}
    for where, data in places.items():
        for name, needle in _needles(secrets):
            assert needle not in data, f"{name} found in {where}"
    for n in participants[1:]:
        r = result(sim, n, SID)
        assert r is not None and r["fingerprint"] == res["fingerprint"]
        for name, needle in _needles(secrets):
            assert needle not in repr(r).encode(), f"{name} in {n}'s session result"


def _candidates(values: list[bytes], reveals: list[DkdComplete], t: int) -> list[Point]:
    points = []
    for v in values:
        if len(v) == 32:
            try:
                points.append(Point.from_bytes(v))
            except CryptoError:
                pass
    for msg in reveals:  # the blinded reveals combined every way the threshold allows
        by_index = {r.index: Point.from_bytes(r.point) for r in msg.reveals}
        for subset in combinations(sorted(by_index), t):
            points.append(interpolate_in_exponent({i: by_index[i] for i in subset},
                                                  threshold=t))
    return points


def test_the_other_nodes_journals_do_not_give_k() -> None:
    sim = world(3, 2)
    run(sim, "d1", participants=["d1", "d2", "d3"], context=CONTEXT)
    res = result(sim, "d1", SID)
    assert res is not None
    acct, target = account_id(sim), bytes.fromhex(res["public_key"])
    others = ["d2", "d3"]
    values = _journal_values(sim, others)
    completes = _messages(sim, ["d1"], DkdComplete)
    assert completes and values
    candidates = _candidates(values, completes, 2)
    assert len(candidates) > 5  # B, the reveals, their combination s·B, public shares, ...
    for p in candidates:
        if not p.is_identity():
            assert derive(p, acct, CONTEXT).public_key != target, "K follows from the journals"
    for v in values:  # nor is any 32-byte value there the derived seed
        if len(v) == 32:
            assert derived_public_key(v) != target
    # the same search with the requester's journal and device key (which opens r) succeeds:
    # the attack above is the right one, only r is missing
    secrets = _secrets(sim, "d1")
    r = Scalar.from_bytes(secrets["r"])
    request = _messages(sim, ["d1"], DkdRequest)[0]
    assert Point.from_bytes(request.blinded_base) != dkd_base(acct, CONTEXT)
    assert any(not p.is_identity() and derive(unblind(p, r), acct, CONTEXT).public_key == target
               for p in candidates)


def test_a_participant_refuses_an_unblinded_request() -> None:
    sim = world(3, 2)
    acct = account_id(sim)

    def unblinded(msg: Any, session: str) -> msgspec.Struct:
        return msgspec.structs.replace(msg, blinded_base=dkd_base(acct, CONTEXT).to_bytes())

    lying(sim, "d1", "DkdRequest", unblinded)
    run(sim, "d1", participants=["d1", "d2"], context=CONTEXT)
    rej = [(b.code, b.reason) for b in sim.nodes["d2"].rejections(SID)]
    assert any(code == "dkd_bad_request" and "not blinded" in reason for code, reason in rej)
    assert result(sim, "d2", SID) is None


def test_the_derived_seed_stays_in_the_requesters_memory() -> None:
    import copy
    import pickle

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from aura_node.protocols.dkd.roles import DkdInitiator, DkdParticipant

    sim = world(3, 2)
    run(sim, "d1", participants=["d1", "d2"], context=CONTEXT)
    res = result(sim, "d1", SID)
    assert res is not None
    entry = sim.nodes["d1"].session(SID)
    assert entry is not None
    value = getattr(entry.driver, "value", None)
    assert isinstance(value, DkdInitiator)
    seed = value.derived_seed()
    assert seed is not None and seed.public_key.hex() == res["public_key"]
    secrets = _secrets(sim, "d1")
    assert secrets["seed"].hex() not in repr(seed) and "redacted" in repr(seed)
    for copier in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="never pickled"):
            copier(seed)
    Ed25519PublicKey.from_public_bytes(seed.public_key).verify(seed.sign(b"doc"), b"doc")
    assert b"PRIVATE KEY" in seed.pkcs8_pem()
    other = sim.nodes["d2"].session(SID)
    assert other is not None
    assert isinstance(getattr(other.driver, "value", None), DkdParticipant)
    assert not hasattr(DkdParticipant, "derived_seed")  # a participant never has one
