"""Runtime monitors: clones behave like fresh monitors; plugin choreographies change the hash."""

from __future__ import annotations

import msgspec
import pytest

from aura_node.choreo import Monitor
from aura_node.errors import AuraError
from aura_node.protocols.registry import REGISTRY
from aura_node.sessions import _monitors as monitors


def _outcome(m: Monitor, role: str, msg: object, inbound: bool) -> str:
    try:
        if inbound:
            m.check_inbound(role, msg, member="x")
        else:
            m.check_outbound(role, msg)
    except AuraError as exc:
        return exc.code
    return m.state


def _instance(t: type) -> object:
    fields = msgspec.structs.fields(t)
    return msgspec.convert({f.name: _zero(f.type) for f in fields}, t)


def _zero(tp: object) -> object:
    return {bytes: "", str: "", int: 1, float: 1.0, bool: False}.get(tp, [])  # type: ignore[call-overload]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_cloned_monitor_behaves_like_a_fresh_one(name: str) -> None:
    chor = REGISTRY[name]
    compared = 0
    for role in chor.roles:
        try:
            lt = chor.project(role)
        except AuraError:
            continue  # role sets that need bindings: covered by the protocols' own tests
        tmpl = Monitor(lt)
        for t in lt.transitions:
            if t.message is None:
                continue
            try:
                msg = _instance(t.message)
            except (msgspec.ValidationError, TypeError):
                continue
            inbound = t.action in ("recv", "gather")
            fresh, clone = Monitor(lt), monitors._fresh_monitor(tmpl)
            assert _outcome(clone, t.peer, msg, inbound) == _outcome(fresh, t.peer, msg, inbound)
            compared += 1
        assert tmpl.state == lt.initial  # the template itself is never advanced
    assert compared > 0


def test_clones_do_not_share_session_state() -> None:
    a = monitors.choreography_monitor("ping", "responder", {})
    b = monitors.choreography_monitor("ping", "responder", {})
    from aura_node.protocols.ping.choreography import Ping

    a.check_inbound("initiator", Ping(nonce=b""), member="x")
    assert a.state() != b.state()


def test_clones_do_not_share_the_connected_roles() -> None:
    # ``connected`` is added to as optional roles join: one set per session, not per template
    a = monitors.choreography_monitor("ping", "responder", {})
    b = monitors.choreography_monitor("ping", "responder", {})
    a._monitor.connected.add("guardian")
    assert "guardian" not in b._monitor.connected


def test_a_plugin_choreography_changes_the_registry_hash() -> None:
    from aura_node.choreo import ChoreographyBuilder, choreography

    class Hi(msgspec.Struct, frozen=True, kw_only=True):
        n: int

    class HiAbort(msgspec.Struct, frozen=True, kw_only=True):
        reason: str

    @choreography("test-hi", abort=HiAbort)
    def HI(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        c.phase(a, "A")
        c.phase(b, "B")
        c.send(a, b, Hi)

    from aura_node.protocols import registry

    before = registry.registry_fingerprint()
    registry.register_choreography(HI)
    try:
        assert registry.registry_fingerprint() != before
        assert monitors.choreography_monitor("test-hi", "b", {}).state()
        with pytest.raises(AuraError, match="registered already"):
            registry.register_choreography(HI.__class__(HI.decl))  # same name, another object
        assert registry.register_choreography(REGISTRY["ping"]) is REGISTRY["ping"]  # no-op
    finally:
        registry._PLUGINS.pop("test-hi")
        monitors._project.cache_clear()
        monitors._template.cache_clear()
    assert registry.registry_fingerprint() == before
