"""Per-session version checks in the session runtime: a session of a choreography starts only
with peers whose advertised versions fit (``protocols.registry.session_refusal``); the
initiator's start is refused naming both versions, a responder refuses the opener with a
journaled rejection, and other choreographies' sessions are unaffected."""

from __future__ import annotations

from aura_node.protocols import engine as eng
from aura_node.protocols.registry import advertised_choreographies, session_refusal
from aura_node.sessions import IncompatibleVersionError, Outcome, SessionRuntime, StartSession
from tests.unit.test_runtime_peer_up import KEYS, Clock, Inbound, ping, runtime, transmits

V1 = ("ping", 1, b"\x01" * 32)
V2 = ("ping", 2, b"\x02" * 32)
V2_OTHER = ("ping", 2, b"\x03" * 32)
DKD = ("dkd", 1, b"\x04" * 32)


def test_session_refusal_is_symmetric_and_names_both_versions() -> None:
    # a v2 node that declares v1 (proven compatible) runs sessions with a v1 node, both ways
    assert session_refusal("ping", [V2, V1], [V1], peer="a") is None
    assert session_refusal("ping", [V1], [V2, V1], peer="b") is None
    # a v2 that does not stand in for v1
    why = session_refusal("ping", [V1], [V2, DKD], peer="c")
    assert why is not None and "this node runs v1, peer c runs v2" in why
    back = session_refusal("ping", [V2, DKD], [V1], peer="a")
    assert back is not None and "this node runs v2, peer a runs v1" in back
    same = session_refusal("ping", [V2], [V2_OTHER], peer="c")
    assert same is not None and "both run v2 but the two definitions differ" in same
    absent = session_refusal("ping", [V1], [DKD], peer="c")
    assert absent is not None and "does not run ping at all" in absent
    # other choreographies are judged on their own
    assert session_refusal("dkd", [V1, DKD], [V2, DKD], peer="c") is None


def with_versions(rt: SessionRuntime, peers: dict[str, tuple[tuple[str, int, bytes], ...]]
                  ) -> SessionRuntime:
    rt.advertised = (V1,)
    rt.peer_choreographies = peers.get
    return rt


def test_the_initiator_refuses_to_start_with_an_incompatible_peer() -> None:
    clock = Clock()
    a = with_versions(runtime("a", clock), {"b": (V2,), "c": (V1,)})
    reply = Outcome()
    step = a.handle_command(StartSession(
        choreography="ping", params={"timeout": 5}, roles={"a": "initiator", "b": "responder"},
        session="1" * 32, entropy=bytes(32), reply=reply))
    assert step is None and isinstance(reply.error, IncompatibleVersionError)
    assert reply.error.code == "incompatible_version"
    assert reply.error.message == (
        "cannot start ping: ping: this node runs v1, peer b runs v2, and peer b's v2 is not "
        "declared compatible with v1 (check with `aura-node choreo compat`)")
    assert "1" * 32 not in a.sessions
    # a compatible peer, and a peer never linked (judged by its own node), start fine
    assert transmits(ping(a, "c", "2" * 32))
    a.peer_choreographies = lambda _name: None
    assert transmits(ping(a, "b", "3" * 32))


def test_the_responder_refuses_an_incompatible_opener_with_a_journaled_rejection() -> None:
    clock = Clock()
    a = runtime("a", clock)  # no version check on a's side (e.g. it never saw b's hello)
    [out] = transmits(ping(a, "b", "1" * 32))
    b = with_versions(runtime("b", clock), {"a": (V2,)})
    step = b.handle_inbound(Inbound("a", KEYS["a"].device_id, out.payload))
    assert step is not None and step.actions == [] and b.rejected == 1
    [(kind, body)] = step.records
    assert kind == "ping.rejected"
    rejection = eng.decode_rejection(body)
    assert rejection is not None and rejection.peer == "a"
    assert rejection.code == "incompatible_version"
    assert "this node runs v1, peer a runs v2" in rejection.reason
    assert "1" * 32 not in b.sessions  # no session opened; nothing to rehydrate


def test_a_node_without_versions_checks_nothing() -> None:
    rt = runtime("a", Clock())
    assert rt.version_refusal("ping", ["b"]) is None
    assert advertised_choreographies()[0][0] == "account-sync"  # name order, running first

