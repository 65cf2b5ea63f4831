"""Genesis in memory: dealing, verification, acks, completion, rejection, secret erasure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aura_node.choreo import Choreography
from aura_node.crypto.group import Point, Scalar, seeded_rng
from aura_node.crypto.keys import DeviceKey
from aura_node.harness.simulation import Faults, Simulation
from aura_node.protocols import engine as eng
from aura_node.protocols.account import open_held_share
from aura_node.protocols.envelope import seal
from aura_node.protocols.genesis import roles as gen
from aura_node.protocols.genesis.choreography import SealedShare
from aura_node.protocols.kit import NoParams
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import NodeServices, PeerInfo, PeerRole
from aura_node.session.conformance import check_conformance

ROLES: dict[str, PeerRole] = {"d1": "device", "d2": "device", "d3": "device",
         "g1": "guardian", "g2": "guardian", "g3": "guardian"}
PARAMS = {"devices": ["d1", "d2", "d3"], "threshold": 2,
          "guardians": ["g1", "g2", "g3"], "guardian_threshold": 2, "timeout": 30}
SESSION_ROLES: dict[str, PeerRole] = {"d1": "dealer", "d2": "devices", "d3": "devices",
                 "g1": "guardians", "g2": "guardians", "g3": "guardians"}


def create(sim: Simulation, dealer: str = "d1") -> str:
    return sim.start(dealer, "genesis", roles=SESSION_ROLES, params=PARAMS)


def world(seed: int, *, duplicates: float = 0.0) -> Simulation:
    """The six nodes on the real runtime (deterministic simulation, optional duplicates)."""
    return Simulation(seed, ROLES, faults=Faults(duplicate=duplicates))


@pytest.mark.parametrize("seed", range(4))
def test_genesis_establishes_the_same_account_on_every_holder(seed: int) -> None:
    sim = world(seed, duplicates=0.3)
    sid = create(sim)
    sim.run()
    dealer = sim.nodes["d1"].session(sid)
    assert dealer is not None and dealer.outcome == "completed"
    out = dealer.result
    assert out is not None and out["threshold"] == 2 and out["guardian_threshold"] == 2
    assert out["devices"] == ["d1", "d2", "d3"] and out["guardians"] == ["g1", "g2", "g3"]
    views = {n: node.accounts.only().account.to_json()
             for n, node in sim.nodes.items()}
    assert all(v == out for v in views.values()), views
    # every holder can open its own share and it verifies against the commitments
    for n, node in sim.nodes.items():
        est = node.accounts.only()
        (held,) = est.shares
        share = open_held_share(est.account, held, node.key)
        assert share.index == est.account.holder(held.holder_set, n).index
    for n in ("d2", "d3", "g1"):
        s = sim.nodes[n].session(sid)
        assert s is not None and s.outcome == "completed" and s.result == out


def test_secret_and_plaintext_shares_never_reach_a_journal(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(gen.GenesisDealer, "test_rng",
                        staticmethod(seeded_rng(b"genesis-test")))
    sim = world(1)
    create(sim)
    sim.run()
    # the dealer's first draw from that stream is the secret
    secret = Scalar.random(seeded_rng(b"genesis-test"))
    est = sim.nodes["d2"].accounts.only()
    assert est.account.public_key == Point.base_mul(secret).to_bytes()
    # shares: evaluate every holder's opened share
    secrets = [secret.to_bytes()]
    for node in sim.nodes.values():
        est = node.accounts.only()
        secrets += [open_held_share(est.account, h, node.key).value.to_bytes()
                    for h in est.shares]
    assert len(set(secrets)) == 7
    for node in sim.nodes.values():
        blob = node.journal_bytes()
        for s in secrets:
            assert s not in blob and s.hex().encode() not in blob
    runtime = sim.nodes["d1"].runtime
    assert runtime is not None
    (entry,) = runtime.sessions.values()
    assert entry.driver is not None
    assert secret.to_bytes() not in msgspec.msgpack.encode(entry.driver.status())


def test_a_bad_share_is_rejected_and_the_session_aborts_everywhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dealer_driver = gen.SPEC.driver_class("dealer")
    real = dealer_driver.start

    def corrupt(self: object, inp: object) -> list[object]:
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

    monkeypatch.setattr(dealer_driver, "start", corrupt)
    sim = world(2)
    sid = create(sim)
    sim.run()
    d2 = sim.nodes["d2"].session(sid)
    assert d2 is not None and d2.error is not None and d2.error["code"] == "share_rejected"
    assert len(sim.nodes["d2"].accounts) == 0
    dealer = sim.nodes["d1"].session(sid)
    assert dealer is not None and dealer.error is not None
    assert dealer.error["code"] == "aborted_by_peer"
    assert dealer.outcome == "failed" and dealer.result is None
    assert len(sim.nodes["d1"].accounts) == 0
    for n in ("d3", "g1", "g2", "g3"):
        s = sim.nodes[n].session(sid)
        assert s is not None and s.outcome == "failed" and s.error is not None


def test_missing_ack_times_out() -> None:
    sim = world(3)
    sim.isolated.add("g3")  # down for the whole run: its ack never comes
    sid = create(sim)
    sim.run()
    dealer = sim.nodes["d1"].session(sid)
    assert dealer is not None and dealer.error is not None
    assert dealer.error["code"] == "timeout" and "g3" in dealer.error["reason"]


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
    sim = world(4)
    create(sim)
    sim.run()
    rec = sim.nodes["d1"].accounts.only().account
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


# --- journals written before the kit ---------------------------------------------------------

GOLDEN = Path(__file__).parent.parent / "golden" / "genesis_journal_9209d78.msgpack"
OLD_ROLES: dict[str, PeerRole] = {"d1": "device", "d2": "device", "d3": "device",
                                  "g1": "guardian"}


@dataclass(frozen=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def _services(name: str) -> NodeServices:
    keys = {n: DeviceKey.from_seed(n.encode().ljust(32, b"\0")) for n in OLD_ROLES}
    return NodeServices(self_name=name, self_role=OLD_ROLES[name], device_key=keys[name],
                        peers={n: PeerInfo(name=n, role=r, public_key=keys[n].public)
                               for n, r in OLD_ROLES.items() if n != name})


def test_a_journal_written_by_the_hand_written_drivers_still_replays() -> None:
    """The golden file holds what the drivers of commit 9209d78 (before the kit) journaled for
    one genesis (d1 deals to d2, d3 and g1): the dealer's start step and d2's ack, and d2's
    share-in/ack-out step. The kit's replay reaches the same phases from it and goes on."""
    data = msgspec.msgpack.decode(GOLDEN.read_bytes())
    sid = data["session"]

    def recs(items: list[list[Any]]) -> list[Rec]:
        return [Rec(seq=i, ts=now, session=sid, kind=k, body=b)
                for i, (k, b, now) in enumerate(items)]

    dealer = gen.SPEC.driver_class("dealer").rehydrate(recs(data["dealer"]), _services("d1"))
    holder = gen.SPEC.driver_class("devices").rehydrate(recs(data["holder"]), _services("d2"))
    assert dealer is not None and holder is not None
    account_id = holder.status()["account_id"]
    assert dealer.status() == {"phase": "CollectingAcks", "acks": ["d2"],
                               "account_id": account_id}
    assert holder.status()["phase"] == "AwaitingCompletion"
    assert dealer.resume(1003.0) == [] and holder.resume(1003.0) == []
    # the other holders answer the journaled shares; the dealer completes
    shares = [eng.parse_record(r) for r in recs(data["dealer"]) if r.kind == eng.KIND_OUT]
    out: list[eng.Effect] = []
    for sent in shares:
        assert isinstance(sent, eng.Sent)
        (name,) = sent.to
        if name == "d2":
            continue
        role = "devices" if name.startswith("d") else "guardians"
        h = gen.SPEC.driver_class(role)(_services(name))
        h.start(eng.Start(session=sid, choreography="genesis", role=role, self_name=name,
                          roles={name: role, "d1": "dealer"}, params={}, now=1003.0,
                          entropy=b"x" * 32, opened_by="d1"))
        msg = eng.decode_message(sent.envelope, gen.SPEC.message_types[sent.envelope.step])
        (ack,) = [e for e in h.on_message(eng.MessageIn(
            sender="d1", sender_role="dealer", message=msg, envelope=sent.envelope,
            now=1003.0)) if isinstance(e, eng.Send)]
        env = seal(_services(name).device_key, choreography="genesis", session=sid,
                   message=ack.message)
        out = dealer.on_message(eng.MessageIn(sender=name, sender_role=role,
                                              message=ack.message, envelope=env, now=1004.0))
    assert isinstance(out[-1], eng.Complete) and out[-1].result["account_id"] == account_id


def test_holders_are_opened_without_params() -> None:
    """Only the dealer gets the operator's params; a holder is opened by the dealer's share
    and GenesisParams has required fields, so the kit gives the holders NoParams."""
    assert gen.PROTOCOL.drivers["dealer"].params_type is gen.GenesisParams
    assert gen.PROTOCOL.drivers["devices"].params_type is NoParams
    assert gen.PROTOCOL.drivers["guardians"].params_type is NoParams
