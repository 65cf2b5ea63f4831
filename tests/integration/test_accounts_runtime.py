"""The runtime's plumbing for the account protocols, with a real journal and real monitors.

* the account store learns an ``account.established`` record only after the group commit that
  made it durable, before anything the same batch sends (the executor's ``on_durable`` hook);
* the genesis dealer's per-holder sends (one sealed share per member of a role set) are one
  interaction of its local type, live and when the monitor is replayed from the journal;
* a peer message a driver rejects is journaled *and* logged with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import JournalFailedError
from aura_node.harness.simulation import dealt_account
from aura_node.journal import JournalEntry
from aura_node.journal.group_commit import GroupCommitJournal
from aura_node.logs import get_logger
from aura_node.protocols import engine as eng
from aura_node.protocols.account import (
    KIND_ACCOUNT,
    AccountEstablished,
    AccountStore,
    encode_established,
)
from aura_node.protocols.envelope import decode_wire, encode_wire, seal
from aura_node.protocols.genesis.choreography import ShareAck
from aura_node.protocols.genesis.roles import KIND_REJECTED
from aura_node.protocols.services import NodeServices, PeerInfo, PeerRole
from aura_node.runtime.daemon import account_folder
from aura_node.runtime.executor import EffectExecutor
from aura_node.runtime.timers import TimerWheel
from aura_node.sessions import (
    Outcome,
    PeerDirectory,
    SessionRuntime,
    StartSession,
    Step,
    Transmit,
    choreography_monitor,
)

ROLES: dict[str, PeerRole] = {"d1": "device", "d2": "device", "d3": "device",
                              "g1": "guardian", "g2": "guardian"}
KEYS = {n: DeviceKey.from_seed(n.encode().ljust(32, b"\0")) for n in ROLES}


def services(name: str, accounts: AccountStore | None = None) -> NodeServices:
    return NodeServices(
        self_name=name, self_role=ROLES[name], device_key=KEYS[name],
        peers={n: PeerInfo(name=n, role=r, public_key=KEYS[n].public)
               for n, r in ROLES.items() if n != name},
        accounts=accounts if accounts is not None else AccountStore())


def runtime(name: str) -> SessionRuntime:
    return SessionRuntime(
        key=KEYS[name], self_name=name,
        peers=PeerDirectory({n: KEYS[n].public for n in ROLES if n != name}),
        protocols=eng.load_protocols(), monitor_for=choreography_monitor,
        services=services(name), clock=lambda: 1000.0)


def established_body() -> tuple[str, bytes]:
    account = dealt_account({n: KEYS[n].public for n in ("d1", "d2", "d3")}, 2)["d1"].account
    return account.account_id, encode_established(AccountEstablished(account=account))


class StoreWatchingNetwork:
    """Records, for every send, whether the account store already held the account."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store
        self.sent: list[tuple[str, int]] = []

    async def send(self, peer_name: str, payload: bytes) -> None:
        self.send_nowait(peer_name, payload)

    def send_nowait(self, peer_name: str, payload: bytes) -> bool:
        self.sent.append((peer_name, len(self.store)))
        return True


def _executor(store: AccountStore, append: Any, hook: Any
              ) -> tuple[EffectExecutor, StoreWatchingNetwork, trio.MemorySendChannel[Step]]:
    send, recv = trio.open_memory_channel[Step](10)
    cmd_send, _ = trio.open_memory_channel[Any](10)
    net = StoreWatchingNetwork(store)
    ex = EffectExecutor(effects=recv, append=append, network=net,
                        timers=TimerWheel(cmd_send), on_durable=hook)
    return ex, net, send


async def test_the_account_store_learns_an_account_after_its_fsync_before_the_sends(
    tmp_path: Path,
) -> None:
    account_id, body = established_body()
    store = AccountStore()
    learn = account_folder(store, get_logger("test"))
    async with GroupCommitJournal.open(tmp_path / "j", KEYS["d2"]) as gcj:
        seen_at_hook: list[tuple[bool, int]] = []

        async def append(records: Any, ts: float) -> None:
            assert len(store) == 0  # nothing learned before the commit
            await gcj.append_many([JournalEntry(session=s, kind=k, body=b, ts=ts)
                                   for s, k, b in records])

        def hook(records: Any) -> None:
            durable = {r.body for r in gcj.journal.records()}
            seen_at_hook.append((body in durable, len(store)))
            learn(records)

        ex, net, send = _executor(store, append, hook)
        send.send_nowait(Step(session="s" * 32, ts=0.0, records=[(KIND_ACCOUNT, body)],
                              actions=[Transmit(peer="d1", payload=b"ack")]))
        send.close()
        await ex.run()
    assert seen_at_hook == [(True, 0)]  # the hook ran once, with the record on disk
    assert net.sent == [("d1", 1)]  # the ack left after the store learned the account
    assert store.get(account_id).account.account_id == account_id


async def test_a_failed_commit_teaches_the_store_nothing() -> None:
    _, body = established_body()
    store = AccountStore()
    calls: list[Any] = []

    async def append(records: Any, ts: float) -> None:
        raise JournalFailedError("fsync failed (EIO)")

    ex, net, send = _executor(store, append, calls.append)
    with pytest.raises(JournalFailedError):
        await ex.execute([Step(session="s" * 32, ts=0.0, records=[(KIND_ACCOUNT, body)],
                               actions=[Transmit(peer="d1", payload=b"ack")])])
    assert calls == [] and len(store) == 0 and net.sent == []


async def test_a_record_that_does_not_check_is_logged_and_the_batch_still_sends() -> None:
    store = AccountStore()

    async def append(records: Any, ts: float) -> None:
        return None

    with capture_logs() as logs:
        learn = account_folder(store, get_logger("test"))
        ex, net, send = _executor(store, append, learn)
        await ex.execute([Step(session="s" * 32, ts=0.0,
                               records=[(KIND_ACCOUNT, b"\x93garbage")],
                               actions=[Transmit(peer="d1", payload=b"x")])])
    assert len(store) == 0 and net.sent == [("d1", 0)]
    (line,) = [e for e in logs if e["event"] == "account_not_learned"]
    assert line["session"] == "s" * 32 and "does not decode" in line["reason"]


# --- the genesis dealer's scatter -------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


@dataclass(frozen=True)
class Inbound:
    peer_name: str
    device_id: str
    payload: bytes


def start_genesis(rt: SessionRuntime) -> tuple[str, Step]:
    reply = Outcome()
    sid = rt.new_session_id()
    step = rt.handle_command(StartSession(
        choreography="genesis",
        params={"devices": ["d1", "d2", "d3"], "threshold": 2, "guardians": ["g1", "g2"],
                "guardian_threshold": 2},
        roles={"d1": "dealer", "d2": "devices", "d3": "devices", "g1": "guardians",
               "g2": "guardians"},
        session=sid, entropy=b"e" * 32, reply=reply))
    assert step is not None
    return sid, step


def test_the_dealer_sends_one_share_per_holder_as_one_interaction_per_role_set() -> None:
    rt = runtime("d1")
    sid, step = start_genesis(rt)
    kinds = [k for k, _ in step.records]
    assert eng.KIND_FAIL not in kinds, rt.get(sid).error
    sends = [a for a in step.actions if isinstance(a, Transmit)]
    # one share per holder, each sealed to its holder: four different envelopes
    assert sorted(a.peer for a in sends) == ["d2", "d3", "g1", "g2"]
    steps = {a.peer: decode_wire(a.payload).envelope.step for a in sends}
    assert steps == {"d2": "SealedShare", "d3": "SealedShare", "g1": "SealedGuardianShare",
                     "g2": "SealedGuardianShare"}
    assert len({a.payload for a in sends}) == 4
    entry = rt.get(sid)
    assert entry.active and entry.state == "CollectingAcks"
    assert entry.monitor is not None and entry.monitor.state().startswith("CollectingAcks")

    # the monitor replayed from the journal groups the four msg.out records the same way
    records = [Rec(seq=i, ts=1000.0, session=sid, kind=k, body=b)
               for i, (k, b) in enumerate(step.records)]
    again = runtime("d1")
    resumed = again.rehydrate({sid: records})
    assert not any(eng.KIND_FAIL == k for s in resumed for k, _ in s.records)
    back = again.get(sid)
    assert back.active and back.state == "CollectingAcks"
    assert back.monitor is not None and back.monitor.state() == entry.monitor.state()
    # the re-sends after a restart are the journaled envelopes, byte for byte
    resent = sorted((a.peer, decode_wire(a.payload).envelope.digest)
                    for s in resumed for a in s.actions if isinstance(a, Transmit))
    assert resent == sorted((a.peer, decode_wire(a.payload).envelope.digest) for a in sends)


def test_a_rejected_peer_message_is_journaled_and_logged_with_its_reason() -> None:
    with capture_logs() as logs:
        rt = runtime("d1")
        sid, _ = start_genesis(rt)
        env = seal(KEYS["d2"], choreography="genesis", session=sid, message=ShareAck(
            account_id="0" * 32, holder_set="devices", share_index=2, public_share=b"\1" * 32))
        step = rt.handle_inbound(Inbound(peer_name="d2", device_id=KEYS["d2"].device_id,
                                         payload=encode_wire(env)))
    assert step is not None
    rejected = [msgspec.msgpack.decode(b) for k, b in step.records if k == KIND_REJECTED]
    assert len(rejected) == 1 and rejected[0]["peer"] == "d2"
    (line,) = [e for e in logs if e["event"] == "protocol_rejected"]
    assert line["session"] == sid and line["peer"] == "d2" and line["kind"] == KIND_REJECTED
    assert line["reason"] == rejected[0]["reason"] and line["reason"]
    assert rt.get(sid).active  # a bad ack does not end the dealer's session
    assert rt.rejected == 1
