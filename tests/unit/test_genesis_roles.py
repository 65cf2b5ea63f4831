"""Genesis in memory: dealing, verification, acks, completion, rejection, secret erasure."""

from __future__ import annotations

import msgspec
import pytest

from aura_node.choreo import Choreography
from aura_node.crypto.group import Point, Scalar, seeded_rng
from aura_node.protocols.account import open_held_share
from aura_node.protocols.genesis import roles as gen
from aura_node.protocols.genesis.choreography import SealedShare
from aura_node.protocols.registry import REGISTRY
from aura_node.session.conformance import check_conformance
from tests.unit.accounts_sim import Sim

ROLES = {"d1": "device", "d2": "device", "d3": "device",
         "g1": "guardian", "g2": "guardian", "g3": "guardian"}
PARAMS = {"devices": ["d1", "d2", "d3"], "threshold": 2,
          "guardians": ["g1", "g2", "g3"], "guardian_threshold": 2, "timeout": 30}
SESSION_ROLES = {"d1": "dealer", "d2": "devices", "d3": "devices",
                 "g1": "guardians", "g2": "guardians", "g3": "guardians"}


def create(sim: Sim, dealer: str = "d1") -> str:
    return sim.start(dealer, "genesis", roles=SESSION_ROLES, params=PARAMS)


@pytest.mark.parametrize("seed", range(4))
def test_genesis_establishes_the_same_account_on_every_holder(seed: int) -> None:
    sim = Sim(ROLES, seed=seed, duplicates=0.3)
    sid = create(sim)
    sim.run()
    out = sim.nodes["d1"].sessions[sid].outcome
    assert out is not None and out["threshold"] == 2 and out["guardian_threshold"] == 2
    assert out["devices"] == ["d1", "d2", "d3"] and out["guardians"] == ["g1", "g2", "g3"]
    views = {n: node.services.accounts.only().account.to_json()
             for n, node in sim.nodes.items()}
    assert all(v == out for v in views.values()), views
    # every holder can open its own share and it verifies against the commitments
    for n, node in sim.nodes.items():
        est = node.services.accounts.only()
        (held,) = est.shares
        share = open_held_share(est.account, held, node.key)
        assert share.index == est.account.holder(held.holder_set, n).index
    for n in ("d2", "d3", "g1"):
        assert sim.nodes[n].sessions[sid].outcome == out


def test_secret_and_plaintext_shares_never_reach_a_journal(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(gen.GenesisDealerDriver, "test_rng",
                        staticmethod(seeded_rng(b"genesis-test")))
    sim = Sim(ROLES, seed=1)
    create(sim)
    sim.run()
    # the dealer's first draw from that stream is the secret
    secret = Scalar.random(seeded_rng(b"genesis-test"))
    est = sim.nodes["d2"].services.accounts.only()
    assert est.account.public_key == Point.base_mul(secret).to_bytes()
    # shares: evaluate every holder's opened share
    secrets = [secret.to_bytes()]
    for node in sim.nodes.values():
        est = node.services.accounts.only()
        secrets += [open_held_share(est.account, h, node.key).value.to_bytes()
                    for h in est.shares]
    assert len(set(secrets)) == 7
    for node in sim.nodes.values():
        blob = node.journal_bytes()
        for s in secrets:
            assert s not in blob and s.hex().encode() not in blob
    driver = sim.nodes["d1"].sessions[next(iter(sim.nodes["d1"].sessions))].driver
    assert secret.to_bytes() not in msgspec.msgpack.encode(driver.status())  # type: ignore[union-attr]


def test_a_bad_share_is_rejected_and_the_session_aborts_everywhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = gen.GenesisDealerDriver.start

    def corrupt(self: gen.GenesisDealerDriver, inp: object) -> list[object]:
        effects = real(self, inp)  # type: ignore[arg-type]
        out = []
        for e in effects:
            msg = getattr(e, "message", None)
            if isinstance(msg, SealedShare) and e.to == ("d2",):  # type: ignore[attr-defined]
                bad = bytearray(msg.sealed_share)
                bad[-1] ^= 1
                e = type(e)(to=e.to, message=msgspec.structs.replace(  # type: ignore[attr-defined,call-arg]
                    msg, sealed_share=bytes(bad)))
            out.append(e)
        return out

    monkeypatch.setattr(gen.GenesisDealerDriver, "start", corrupt)
    sim = Sim(ROLES, seed=2)
    sid = create(sim)
    sim.run()
    d2 = sim.nodes["d2"].sessions[sid]
    assert d2.error is not None and d2.error[0] == "share_rejected"
    assert len(sim.nodes["d2"].services.accounts) == 0
    dealer = sim.nodes["d1"].sessions[sid]
    assert dealer.error is not None and dealer.error[0] == "aborted_by_peer"
    assert dealer.outcome is None and len(sim.nodes["d1"].services.accounts) == 0
    for n in ("d3", "g1", "g2", "g3"):
        assert sim.nodes[n].sessions[sid].error is not None


def test_missing_ack_times_out() -> None:
    sim = Sim(ROLES, seed=3)
    sim.nodes["g3"].down = True
    sid = create(sim)
    sim.run()
    err = sim.nodes["d1"].sessions[sid].error
    assert err is not None and err[0] == "timeout" and "g3" in err[1]


@pytest.mark.parametrize("params, fragment", [
    ({"devices": ["a"], "threshold": 2}, "threshold must be in 1..1"),
    ({"devices": ["a", "a"], "threshold": 1}, "twice"),
    ({"devices": ["a"], "threshold": 1, "guardians": ["a"]}, "both"),
    ({"devices": ["a"], "threshold": 1, "guardians": ["g"], "guardian_threshold": 2},
     "guardian threshold"),
    ({"devices": ["a"], "threshold": 1, "bogus": 1}, "unknown"),
])
def test_params_are_validated(params: dict[str, object], fragment: str) -> None:
    with pytest.raises(gen.eng.ParamsError, match=fragment):
        gen.parse_params(params)


@pytest.mark.parametrize("cls, role", [
    (gen.GenesisDealer, "dealer"), (gen.GenesisHolder, "devices"),
    (gen.GenesisGuardianHolder, "guardians"),
])
def test_typestate_conforms_to_the_projection(cls: type, role: str) -> None:
    chor: Choreography = REGISTRY["genesis"]
    check_conformance(cls, chor.project(role, {"n": 2, "g": 3}))


def test_ack_verifier_rejects_non_members_and_wrong_shares() -> None:
    sim = Sim(ROLES, seed=4)
    create(sim)
    sim.run()
    rec = sim.nodes["d1"].services.accounts.only().account
    good = {n: gen.ShareAck(account_id=rec.account_id, holder_set="devices",
                            share_index=rec.holder("devices", n).index,
                            public_share=rec.holder("devices", n).public_share)
            for n in ("d2", "d3")}
    assert gen.verify_acks(rec, "devices", ["d2", "d3"], good).holder_set == "devices"
    with pytest.raises(gen.WitnessError, match="no devices ShareAck from d3"):
        gen.verify_acks(rec, "devices", ["d2", "d3"], {"d2": good["d2"]})
    wrong = dict(good, d3=msgspec.structs.replace(good["d3"], public_share=good["d2"].public_share))
    with pytest.raises(gen.WitnessError, match="expected index"):
        gen.verify_acks(rec, "devices", ["d2", "d3"], wrong)
    with pytest.raises(TypeError):
        gen.AcknowledgedShares()  # type: ignore[call-arg]
