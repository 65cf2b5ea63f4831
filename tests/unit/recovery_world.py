"""Shared set-up for the recovery tests: an account made by genesis, then a new device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aura_node.config import ProtocolSection
from aura_node.crypto import dkd
from aura_node.harness.simulation import Faults, Simulation
from aura_node.protocols.account import AccountEstablished, open_held_share
from aura_node.protocols.genesis import roles as _genesis  # noqa: F401  (registers genesis)
from aura_node.protocols.recovery import roles as rec
from aura_node.protocols.services import PeerRole
from tests.unit.accounts_sim import Sim

ROLES: dict[str, PeerRole] = {
    "d1": "device", "d2": "device", "g1": "guardian", "g2": "guardian", "g3": "guardian",
    "n1": "device",
}
GENESIS_PARAMS = {"devices": ["d1", "d2"], "threshold": 2, "guardians": ["g1", "g2", "g3"],
                  "guardian_threshold": 2, "timeout": 30}
GENESIS_ROLES = {"d1": "dealer", "d2": "devices", "g1": "guardians", "g2": "guardians",
                 "g3": "guardians"}
COOLDOWN = 600.0


def world(seed: int = 0, *, duplicates: float = 0.0,
          pins: Mapping[str, list[str]] | None = None) -> Sim:
    sim = Sim(ROLES, seed=seed, duplicates=duplicates, pins=pins, cooldown=COOLDOWN)
    sim.start("d1", "genesis", roles=GENESIS_ROLES, params=GENESIS_PARAMS)
    sim.run()
    assert all(len(sim.nodes[n].services.accounts) == 1 for n in GENESIS_ROLES)
    return sim


def account_id(sim: Sim) -> str:
    return sim.nodes["d1"].services.accounts.only().account.account_id


def start_recovery(sim: Sim, guardians: tuple[str, ...] = ("g1", "g2", "g3"),
                   account: str | None = None) -> str:
    services = sim.nodes["n1"].services
    params = rec.start_params({"account": account or account_id(sim),
                               "guardians": list(guardians)}, services)
    return sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)


def entry_status(sim: Sim, node: str, sid: str) -> dict[str, Any]:
    e = sim.nodes[node].sessions[sid]
    assert e.driver is not None
    return e.driver.status()


def fingerprint(est: AccountEstablished, shares: list[Any], context: str) -> str:
    """DKD of ``context`` from opened shares of ``est`` (threshold of its record)."""
    acct = est.account
    base = dkd.dkd_base(acct.account_id, context)
    commitments = acct.commitments("devices")
    parts = []
    for share in shares:
        ctx = dkd.proof_context(account_id=acct.account_id, context=context, session_id="s",
                                device_id=str(share.index))
        pub = commitments.public_share(share.index)
        p = dkd.partial(share=share, base=base, public_share=pub, proof_ctx=ctx)
        parts.append(dkd.verify_partial(p, base=base, public_share=pub, proof_ctx=ctx))
    k = dkd.combine(parts, threshold=acct.threshold)
    return dkd.derive(k, acct.account_id, context).fingerprint


def device_fingerprint(sim: Sim, names: list[str], context: str) -> str:
    shares = []
    est = sim.nodes[names[0]].services.accounts.only()
    for n in names:
        node = sim.nodes[n]
        e = node.services.accounts.only()
        shares.append(open_held_share(e.account, e.shares[0], node.key))
    return fingerprint(est, shares, context)


# --- the same world on the real runtime (aura_node.harness.simulation) --------------------------
# (test_recovery_crash uses these; test_recovery_roles still uses the legacy Sim above)

SIM_PROTOCOLS = ProtocolSection(recovery_cooldown_seconds=COOLDOWN)


def sim_world(seed: int = 0, *, duplicates: float = 0.0,
              pins: Mapping[str, list[str]] | None = None) -> Simulation:
    sim = Simulation(seed, ROLES, faults=Faults(duplicate=duplicates), protocols=SIM_PROTOCOLS,
                     pins=pins)
    sim.start("d1", "genesis", roles=GENESIS_ROLES, params=GENESIS_PARAMS)
    sim.run()
    assert all(len(sim.nodes[n].accounts) == 1 for n in GENESIS_ROLES)
    return sim


def sim_account_id(sim: Simulation) -> str:
    return sim.nodes["d1"].accounts.only().account.account_id


def sim_start_recovery(sim: Simulation, guardians: tuple[str, ...] = ("g1", "g2", "g3"),
                       account: str | None = None) -> str:
    services = sim.nodes["n1"].services
    params = rec.start_params({"account": account or sim_account_id(sim),
                               "guardians": list(guardians)}, services)
    return sim.start("n1", "recovery", roles=rec.session_roles(params), params=params)


def settle(sim: Simulation, seconds: float = 10.0) -> None:
    """Deliver what is in flight (and bring crashed nodes back) without reaching the recovery
    deadlines: ``seconds`` of virtual time, far below the cooldown."""
    sim.run(until=sim.now + seconds)
