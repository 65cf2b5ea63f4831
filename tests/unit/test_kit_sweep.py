"""State x input sweep of kit-generated drivers (the h2 habit): whatever arrives in whatever
phase, a driver answers with well-formed effects, refuses an input its declarations do not
cover with a ``LocalProtocolError`` naming role and phase, keeps a readable phase, and once
final stays final and quiet."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import LocalProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import seal
from aura_node.protocols.ping.roles import SPEC as PING
from aura_node.protocols.services import NodeServices
from tests.unit.test_kit import VOTE_PROTOCOL

SERVICES = NodeServices(self_name="x", self_role="device",
                        device_key=DeviceKey.from_seed(b"x" * 32), peers={})
EFFECTS = (eng.Send, eng.RecordEvidence, eng.ArmTimer, eng.CancelTimer, eng.Reply,
           eng.Complete, eng.Fail)
CASES: list[tuple[eng.ProtocolSpec, str, dict[str, str], dict[str, Any]]] = [
    (PING, "initiator", {"x": "initiator", "p": "responder"}, {"timeout": 5}),
    (PING, "responder", {"x": "responder", "p": "initiator"}, {}),
    (VOTE_PROTOCOL.spec, "coordinator",
     {"x": "coordinator", "p": "voters", "q": "voters", "r": "voters"}, {"k": 2, "n": 3}),
    (VOTE_PROTOCOL.spec, "voters", {"x": "voters", "p": "coordinator"}, {}),
]


def _values(t: type[msgspec.Struct]) -> st.SearchStrategy[msgspec.Struct]:
    fields = {}
    for f in msgspec.structs.fields(t):
        kind = {bytes: st.binary(max_size=20), str: st.text(max_size=8), bool: st.booleans(),
                int: st.integers(-3, 3), float: st.floats(0, 10)}.get(f.type, st.none())
        if f.type == list[str]:
            kind = st.lists(st.sampled_from(["p", "q", "r", "x"]), max_size=3)
        fields[f.name] = kind
    return st.fixed_dictionaries(fields).map(lambda kw: t(**kw))


def _inputs(spec: eng.ProtocolSpec, roles: dict[str, str]) -> st.SearchStrategy[Any]:
    peers = [n for n in roles if n != "x"]
    messages = st.one_of(*[
        st.tuples(st.just("msg"), st.sampled_from(peers), _values(t))
        for t in spec.message_types.values()])
    return st.one_of(
        messages,
        st.tuples(st.just("timer"), st.sampled_from(["deadline", "other"]), st.floats(0, 200)),
        st.tuples(st.just("abort"), st.sampled_from([None, *peers]), st.just("bye")),
        st.tuples(st.just("control"), st.sampled_from(["approve", "x"]), st.just({})),
    )


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(range(len(CASES))), data=st.data())
def test_every_input_in_every_phase(case: int, data: st.DataObject) -> None:
    spec, role, roles, params = CASES[case]
    drv = spec.driver_class(role)(SERVICES)
    out = drv.start(eng.Start(session="s" * 32, choreography=spec.choreography, role=role,
                              self_name="x", roles=roles, params=params, now=100.0,
                              entropy=b"e" * 32, opened_by=None if role in (
                                  "initiator", "coordinator") else "p"))
    assert all(isinstance(e, EFFECTS) for e in out)
    phases = {"Starting"} | {p.__name__ for cls in (spec.driver_class(r).role_class  # type: ignore[attr-defined]
                                                    for r in spec.drivers)
                             for p in _phases(cls)}
    for kind, a, b in data.draw(st.lists(_inputs(spec, roles), max_size=12)):
        was_final = drv.is_final
        try:
            if kind == "msg":
                env = seal(DeviceKey.from_seed(a.encode() * 32), choreography=spec.choreography,
                           session="s" * 32, message=b)
                out = drv.on_message(eng.MessageIn(sender=a, sender_role=roles[a], message=b,
                                                   envelope=env, now=101.0))
            elif kind == "timer":
                out = drv.on_timer(eng.TimerFired(name=a, now=b))
            elif kind == "control":
                out = drv.on_control(eng.ControlAction(action=a, args=b, now=101.0))
            else:
                drv.on_abort(b, by_peer=a)
                out = []
        except LocalProtocolError as exc:
            assert role in str(exc) or "phase" in str(exc)
            continue
        assert all(isinstance(e, EFFECTS) for e in out)
        assert drv.status()["phase"] in phases
        if was_final:
            assert drv.is_final
            assert not [e for e in out if isinstance(e, eng.Send | eng.Complete | eng.Fail)]


def _phases(cls: Any) -> set[type]:
    from aura_node.session.typestate import declared_transitions

    out = {cls.initial_phase, cls.abort_phase}
    for d in declared_transitions(cls):
        out |= {d.source, d.target}
    return out
