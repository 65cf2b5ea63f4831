"""Genesis then DKD between three in-process session runtimes (real drivers, real monitors,
real signed envelopes; the wire is a queue and the journal a list, so the run is exact).

What it pins down about the runtime's multi-party paths: responder sessions opened by peers
(``SealedShare``, ``DkdRequest``) with their monitor bindings, a send to a role set of two
members stepping the sender's monitor once, every monitor ending in a final state, the account
store learning the account from the durable records only, and no message of an honest peer
ever rejected.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from structlog.testing import capture_logs

from aura_node.crypto.keys import DeviceKey
from aura_node.logs import get_logger
from aura_node.protocols import engine as eng
from aura_node.protocols.account import AccountStore
from aura_node.protocols.services import NodeServices, PeerInfo
from aura_node.runtime.daemon import account_folder
from aura_node.sessions import (
    Outcome,
    PeerDirectory,
    Resolve,
    SessionRuntime,
    StartSession,
    Step,
    Transmit,
    choreography_monitor,
)

NAMES = ("d1", "d2", "d3")
KEYS = {n: DeviceKey.from_seed(f"dkd-{n}".encode().ljust(32, b"\0")) for n in NAMES}


@dataclass(frozen=True)
class Inbound:
    peer_name: str
    device_id: str
    payload: bytes


class CountingMonitor:
    """Wraps a session monitor and counts outbound steps per (role, message type)."""

    def __init__(self, inner: Any, log: list[tuple[str, str]]) -> None:
        self._inner = inner
        self._log = log

    def check_outbound(self, receiver_role: str, message: Any) -> None:
        self._log.append((receiver_role, type(message).__name__))
        self._inner.check_outbound(receiver_role, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Net:
    def __init__(self) -> None:
        self.outbound: dict[str, list[tuple[str, str]]] = {n: [] for n in NAMES}
        self.journal: dict[str, list[tuple[str, str, bytes]]] = {n: [] for n in NAMES}
        self.rts: dict[str, SessionRuntime] = {}
        self.learn = {}
        for n in NAMES:
            store = AccountStore()
            services = NodeServices(
                self_name=n, self_role="device", device_key=KEYS[n], accounts=store,
                peers={p: PeerInfo(name=p, role="device", public_key=KEYS[p].public)
                       for p in NAMES if p != n})

            def monitor_for(chor: str, role: str, bindings: Any, n: str = n) -> Any:
                return CountingMonitor(choreography_monitor(chor, role, bindings),
                                       self.outbound[n])

            self.rts[n] = SessionRuntime(
                key=KEYS[n], self_name=n,
                peers=PeerDirectory({p: KEYS[p].public for p in NAMES if p != n}),
                protocols=eng.load_protocols(), monitor_for=monitor_for, services=services,
                clock=lambda: 1000.0)
            self.learn[n] = account_folder(store, get_logger("test", node=n))
        self.wire: deque[tuple[str, Inbound]] = deque()

    def run(self, node: str, step: Step | None) -> None:
        """What the executor does: journal (here: a list), learn accounts, then act."""
        if step is None:
            return
        records = [(step.session, k, b) for k, b in step.records]
        self.journal[node].extend(records)
        self.learn[node](records)
        for a in step.actions:
            if isinstance(a, Transmit):
                self.wire.append((a.peer, Inbound(peer_name=node,
                                                  device_id=KEYS[node].device_id,
                                                  payload=a.payload)))
            elif isinstance(a, Resolve):
                if a.error is not None:
                    a.outcome.fail(a.error)
                else:
                    a.outcome.set(a.value or {})

    def pump(self) -> None:
        while self.wire:
            dst, data = self.wire.popleft()
            self.run(dst, self.rts[dst].handle_inbound(data))

    def start(self, node: str, choreography: str, roles: dict[str, str],
              params: dict[str, Any]) -> str:
        rt = self.rts[node]
        sid = rt.new_session_id()
        reply = Outcome()
        self.run(node, rt.handle_command(StartSession(
            choreography=choreography, params=params, roles=roles, session=sid,
            entropy=node.encode() * 8, reply=reply)))
        assert reply.done and reply.error is None, reply.error
        self.pump()
        return sid


def test_genesis_then_dkd_among_three_runtimes() -> None:
    from aura_node.protocols.dkd.roles import session_params, session_roles

    net = Net()
    gid = net.start("d1", "genesis", {"d1": "dealer", "d2": "devices", "d3": "devices"},
                    {"devices": list(NAMES), "threshold": 2})
    views = set()
    for n in NAMES:
        entry = net.rts[n].get(gid)
        assert entry.outcome == "completed", (n, entry.error)
        assert entry.monitor is not None and entry.monitor.is_final, (n, entry.monitor.state())
        (est,) = net.rts[n].services.accounts.accounts().values()  # learned from its record
        views.add(est.account.public_key)
    assert len(views) == 1
    # the dealer's monitor stepped once per interaction: shares to the set (two members, two
    # Sends with different content) and the completion (one Send to both) - not per member
    assert net.outbound["d1"] == [("devices", "SealedShare"), ("devices", "GenesisComplete")]

    results = {}
    for initiator, asked in (("d1", ["d1", "d2", "d3"]), ("d2", ["d2", "d3"])):
        net.outbound[initiator].clear()
        params = session_params({"context": "mail", "participants": asked},
                                net.rts[initiator].services)
        sid = net.start(initiator, "dkd", session_roles(params), params)
        for n in asked:
            entry = net.rts[n].get(sid)
            assert entry.outcome == "completed", (n, entry.error)
            assert entry.monitor is not None and entry.monitor.is_final
            assert entry.result is not None
            results[(initiator, n)] = entry.result["fingerprint"]
        if len(asked) == 3:
            # DkdRequest, DkdCollected and DkdComplete each went to the two participants in
            # one Send: one monitor step each
            assert [m for _, m in net.outbound[initiator]] == [
                "DkdRequest", "DkdCollected", "DkdComplete"]
    assert len(set(results.values())) == 1, results
    assert all(rt.accepted > 0 for rt in net.rts.values())


def test_no_honest_message_is_rejected() -> None:
    """Only stragglers after a session ended are dropped (a third reveal when t = 2), at
    info level; nothing is misbehaviour or a protocol rejection."""
    with capture_logs() as logs:
        test_genesis_then_dkd_among_three_runtimes()
    loud = [e for e in logs if e.get("log_level") in ("warning", "error")]
    assert not loud, loud
    dropped = [e for e in logs if e["event"] == "session_closed"]
    assert all(e["step"] == "DkdReveal" and e["state"] == "completed" for e in dropped)
