"""Epoch facts made offline for tests (no reshare protocol): a new epoch of an account dealt
with the test's own secret and keys, its fact signed by the dealers and the new holders.

``reshared(previous, secret=..., dealers=..., devices=..., t=...)`` gives the new fact and
each new holder's ``account.established`` body for that epoch (sealed share included), exactly
what a completed reshare journals on every new holder (the contract in
``aura_node/protocols/epochs.py``). The secret ``s`` stays the same, so ``S`` and every derived
key do too. Pure (no trio): unit, simulation and process tests share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from aura_node.crypto.group import Scalar
from aura_node.crypto.keys import DeviceKey
from aura_node.harness.simulation import dealt_account
from aura_node.protocols.account import AccountEstablished, encode_established
from aura_node.protocols.epochs import EpochFact, encode_fact, fact_digest, sign_fact


def reshared(previous: EpochFact, *, secret: Scalar, dealers: Sequence[DeviceKey],
             devices: Mapping[str, DeviceKey], t: int,
             guardians: Mapping[str, DeviceKey] | None = None, tg: int = 0,
             session_id: str = "reshare-test",
             holder_signers: Sequence[str] | None = None,
             ) -> tuple[EpochFact, dict[str, AccountEstablished]]:
    """Epoch ``previous.epoch + 1`` of ``previous``'s account: ``s`` dealt ``t``-of-n to
    ``devices`` (and ``tg``-of-m to ``guardians``), the fact signed by every dealer and by
    every new holder (or only the holders named in ``holder_signers``)."""
    guardians = dict(guardians or {})
    established = dealt_account({n: k.public for n, k in devices.items()}, t,
                                {n: k.public for n, k in guardians.items()}, tg,
                                secret=secret, session_id=session_id)
    record = next(iter(established.values())).account
    epoch = previous.epoch + 1
    dealer_ids = tuple(k.device_id for k in dealers)
    digest = fact_digest(record, epoch=epoch, previous=previous.digest(),
                         session_id=session_id, dealers=dealer_ids)
    keys = {**devices, **guardians}
    signers = list(keys) if holder_signers is None else list(holder_signers)
    sigs = (*(sign_fact(k, digest, role="dealer") for k in dealers),
            *(sign_fact(keys[n], digest, role="holder") for n in signers))
    fact = EpochFact(account=record, epoch=epoch, previous=previous.digest(),
                     session_id=session_id, dealers=dealer_ids, signatures=sigs)
    return fact, {n: msgspec.structs.replace(e, epoch=epoch) for n, e in established.items()}


def epoch_records(fact: EpochFact, established: AccountEstablished | None
                  ) -> list[tuple[str, bytes]]:
    """The (kind, body) records a new holder journals for a reshare (or, without
    ``established``, what a device that only learnt the fact journals)."""
    from aura_node.protocols.account import KIND_ACCOUNT
    from aura_node.protocols.epochs import KIND_EPOCH_FACT

    out = [(KIND_EPOCH_FACT, encode_fact(fact))]
    if established is not None:
        out.insert(0, (KIND_ACCOUNT, encode_established(established)))
    return out
