"""``aura-node bench dkd``: DKD sessions/s and latency against floors measured in the same run.

What is measured (in-process part; the 3-node cluster run needs ``account create`` and the
node in main and is not here yet): three devices holding a 2-of-3 account run DKD sessions
through their pure drivers with real signed envelopes (sealed, opened with the pinned key)
and a durable journal per device (every input's effect group is appended to a file and
``fdatasync``-ed before its messages are delivered). All three devices share this process,
so the crypto floor is the per-node floor of ``bench.crypto.dkd_session_crypto_floor`` times
the number of devices. The latency floor is 2 round trips over a kernel socket pair plus
2 ``fdatasync`` calls, measured here.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections import deque
from typing import Any

from aura_node.bench import Figure
from aura_node.bench.crypto import dkd_session_crypto_floor
from aura_node.protocols import engine as eng
from aura_node.protocols.dkd.roles import SPEC, session_params, session_roles
from aura_node.protocols.envelope import encode_envelope, open_envelope, seal


def _devices(n: int, t: int) -> dict[str, Any]:
    from aura_node.crypto.dealing import Holder, deal_account
    from aura_node.crypto.keys import DeviceKey
    from aura_node.protocols.account import (
        AccountEstablished,
        AccountHolder,
        AccountRecord,
        AccountStore,
        genesis_held_share,
    )
    from aura_node.protocols.services import NodeServices, PeerInfo

    keys = {f"d{i}": DeviceKey.generate() for i in range(1, n + 1)}
    names = list(keys)
    dealing = deal_account(threshold=t, session_id="bench", holders=[
        Holder(index=i + 1, public_key=keys[nm].public) for i, nm in enumerate(names)])
    record = AccountRecord(
        account_id=dealing.account_id, public_key=dealing.public_key.to_bytes(), threshold=t,
        devices=tuple(AccountHolder(name=names[i], device_id=s.device_id, index=s.index,
                                    public_share=s.public_share.to_bytes())
                      for i, s in enumerate(dealing.shares)),
        device_commitments=dealing.commitments.to_bytes())
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        store = AccountStore()
        store.add(AccountEstablished(account=record, shares=(genesis_held_share(
            holder_set="devices", index=i + 1, sealed=dealing.shares[i].sealed,
            session_id="bench"),)))
        out[name] = NodeServices(
            self_name=name, self_role="device", device_key=keys[name], accounts=store,
            peers={o: PeerInfo(name=o, role="device", public_key=k.public)
                   for o, k in keys.items() if o != name})
    return out


class _Journal:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, chunks: list[bytes]) -> None:
        os.write(self.fd, b"".join(chunks))
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _session(services: dict[str, Any], journals: dict[str, _Journal], k: int) -> bool:
    sid = f"{k:032x}"
    init = "d1"
    params = session_params({"context": "bench"}, services[init])
    roles = session_roles(params)
    drivers: dict[str, eng.ProtocolDriver] = {}
    queue: deque[tuple[str, str, Any]] = deque()
    done = False

    def apply(name: str, effects: list[eng.Effect]) -> None:
        nonlocal done
        chunks: list[bytes] = []
        for eff in effects:
            if isinstance(eff, eng.Send):
                env = seal(services[name].device_key, choreography="dkd", session=sid,
                           message=eff.message)
                chunks.append(encode_envelope(env))
                queue.extend((name, to, env) for to in eff.to)
            elif isinstance(eff, eng.Complete) and name == init:
                done = True
        journals[name].append(chunks or [b"."])

    drivers[init] = SPEC.driver_class("initiator")(services[init])
    apply(init, drivers[init].start(eng.Start(
        session=sid, choreography="dkd", role="initiator", self_name=init, roles=roles,
        params=params, now=0.0, entropy=os.urandom(32))))
    while queue:
        sender, to, env = queue.popleft()
        key = services[to].peers[sender].public_key
        opened = open_envelope(env, link_device_id=key.device_id, link_key=key,
                               message_types=SPEC.message_types)
        drv = drivers.get(to)
        if drv is None:
            drv = drivers[to] = SPEC.driver_class("participants")(services[to])
            drv.start(eng.Start(session=sid, choreography="dkd", role="participants",
                                self_name=to, roles={to: "participants", sender: "initiator"},
                                params={}, now=0.0, entropy=os.urandom(32), opened_by=sender))
        if drv.is_final:
            continue
        apply(to, drv.on_message(eng.MessageIn(
            sender=sender, sender_role=drv.roles[sender], message=opened.message, envelope=env,
            now=0.0)))
    return done


def _latency_floor(directory: str, repeats: int) -> float:
    a, b = socket.socketpair()
    j = _Journal(os.path.join(directory, "floor.journal"))
    samples = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(2):
                a.sendall(b"x" * 200)
                b.recv(4096)
                b.sendall(b"y" * 200)
                a.recv(4096)
                j.append([b"z" * 200])
            samples.append(time.perf_counter() - t0)
    finally:
        a.close()
        b.close()
        j.close()
    return statistics.median(samples)


def run(args: argparse.Namespace) -> list[Figure]:
    quick = bool(getattr(args, "quick", False))
    n, t = 3, 2
    sessions = 20 if quick else 200
    base = getattr(args, "dir", None) or None
    with tempfile.TemporaryDirectory(dir=base) as d:
        services = _devices(n, t)
        journals = {name: _Journal(os.path.join(d, f"{name}.journal")) for name in services}
        try:
            lat = []
            t_all = time.perf_counter()
            for k in range(sessions):
                t0 = time.perf_counter()
                if not _session(services, journals, k):
                    raise RuntimeError("a benchmark DKD session did not complete")
                lat.append(time.perf_counter() - t0)
            total = time.perf_counter() - t_all
        finally:
            for j in journals.values():
                j.close()
        floor_latency = _latency_floor(d, 20 if quick else 100)
    crypto_floor_rate = 1.0 / (n * dkd_session_crypto_floor(n, t, quick=quick))
    lat.sort()
    p50 = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return [
        Figure(name=f"dkd sessions/s (in-process, {n} devices, t={t}, durable journals)",
               value=sessions / total, unit="sessions/s", floor=crypto_floor_rate,
               floor_name="crypto floor (all devices' crypto, one process)", target=">= 0.5"),
        Figure(name="dkd p50 latency", value=p50 * 1000, unit="ms", floor=floor_latency * 1000,
               floor_name="2 RTT (socketpair) + 2 fdatasync", target="<= 3",
               higher_is_better=False),
        Figure(name="dkd p99 latency", value=p99 * 1000, unit="ms", floor=floor_latency * 1000,
               floor_name="2 RTT (socketpair) + 2 fdatasync", higher_is_better=False),
    ]
