"""Bounded asynchronous subtyping (``aura_node.choreo.subtyping``): known pairs from the
literature, reflexivity over the shipped and random choreographies, the bound, and the
choreography-level compatibility verdict with the first role and step that differ."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.choreo import Choreography, ChoreographyBuilder, choreography
from aura_node.choreo.local import LocalTransition, LocalType
from aura_node.choreo.subtyping import (
    SubtypingError,
    compatibility,
    is_subtype,
    wire_incompatibility,
)
from aura_node.protocols.registry import REGISTRY
from tests.unit.test_choreo_random import Plan, build, plans


class A(msgspec.Struct, frozen=True, kw_only=True):
    x: int = 0


class B(msgspec.Struct, frozen=True, kw_only=True):
    x: int = 0


class C(msgspec.Struct, frozen=True, kw_only=True):
    x: int = 0


class Stop(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Abort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


MSG = {"a": A, "b": B, "c": C, "stop": Stop}


def lt(spec: str, *, role: str = "r") -> LocalType:
    """A local type from ``"0 !p.a 1; 1 ?q.b 2"``: source, action (``!`` send, ``?`` recv,
    ``~`` timeout), target; states without outgoing edges are final."""
    edges: list[LocalTransition] = []
    states: dict[str, None] = {}
    for part in spec.split(";"):
        src, act, dst = part.split()
        states.setdefault(src, None)
        states.setdefault(dst, None)
        if act == "~":
            edges.append(LocalTransition(source=src, action="timeout", peer="", message=None,
                                         target=dst))
            continue
        peer, msg = act[1:].split(".")
        edges.append(LocalTransition(source=src, action="send" if act[0] == "!" else "recv",
                                     peer=peer, message=MSG[msg], target=dst))
    final = frozenset(s for s in states if not any(e.source == s for e in edges))
    return LocalType(choreography="t", role=role, initial=spec.split()[0], states=tuple(states),
                     final=final, phases={}, transitions=tuple(edges))


# --- known pairs (new <= old) ---------------------------------------------------------------

POSITIVE = [
    # internal choice covariance: send fewer alternatives
    ("0 !p.a 1", "0 !p.a 1; 0 !p.b 1"),
    # external choice contravariance: receive more alternatives
    ("0 ?p.a 1; 0 ?p.b 1; 0 ?p.c 1", "0 ?p.a 1; 0 ?p.b 1"),
    # output anticipation over an input (the classic asynchronous subtyping example)
    ("0 !p.b 1; 1 ?p.a 2", "0 ?p.a 1; 1 !p.b 2"),
    # output to p anticipated over an output to another role
    ("0 !p.a 1; 1 !q.b 2", "0 !q.b 1; 1 !p.a 2"),
    # input from p anticipated over an input from another role (multiparty precision)
    ("0 ?p.a 1; 1 ?q.b 2", "0 ?q.b 1; 1 ?p.a 2"),
    # anticipation inside a loop: the same situation recurs, accepted coinductively
    ("0 !p.b 1; 1 ?p.a 0", "0 ?p.a 1; 1 !p.b 0"),
    # anticipation over every branch of an input choice (an input context)
    ("0 !q.c 1; 1 ?p.a 2; 1 ?p.b 3", "0 ?p.a 1; 0 ?p.b 2; 1 !q.c 3; 2 !q.c 4"),
]

NEGATIVE = [
    # sending an alternative the old role never sends
    ("0 !p.a 1; 0 !p.b 1", "0 !p.a 1"),
    # receiving fewer alternatives than old peers may send
    ("0 ?p.a 1", "0 ?p.a 1; 0 ?p.b 1"),
    # delaying an output past an input (the reverse of anticipation)
    ("0 ?p.a 1; 1 !p.b 2", "0 !p.b 1; 1 ?p.a 2"),
    # reordering two receives from the same role (FIFO per pair)
    ("0 ?p.b 1; 1 ?p.a 2", "0 ?p.a 1; 1 ?p.b 2"),
    # reordering two sends to the same role
    ("0 !p.b 1; 1 !p.a 2", "0 !p.a 1; 1 !p.b 2"),
    # anticipating a send the old role makes in only one branch of an input choice
    ("0 !q.c 1; 1 ?p.a 2; 1 ?p.b 3", "0 ?p.a 1; 0 ?p.b 2; 1 !q.c 3"),
    # ending early / going on longer
    ("0 !p.a 1", "0 !p.a 1; 1 ?p.b 2"),
    ("0 !p.a 1; 1 ?p.b 2", "0 !p.a 1"),
    # anticipating a send in a loop the old role leaves on ``stop`` without sending it
    ("0 !p.b 1; 1 ?p.a 0; 1 ?p.stop 2", "0 ?p.a 1; 0 ?p.stop 2; 1 !p.b 0"),
    # the orphan-message example: sending forever without taking the old role's inputs
    ("0 !p.a 0", "0 ?p.b 1; 1 !p.a 0"),
    # ignoring a timeout the old role handles
    ("0 ?p.a 1", "0 ?p.a 1; 0 ~ 2"),
]


@pytest.mark.parametrize(("new", "old"), POSITIVE)
def test_known_subtypes_are_accepted(new: str, old: str) -> None:
    v = is_subtype(lt(new), lt(old))
    assert v.ok, v.describe()


@pytest.mark.parametrize(("new", "old"), NEGATIVE)
def test_known_non_subtypes_are_refused_with_a_reason(new: str, old: str) -> None:
    v = is_subtype(lt(new), lt(old))
    assert not v.ok
    assert v.reason and v.step >= 1 and "role r" in v.describe()


def test_the_bound_is_respected_and_enough_bound_proves_it() -> None:
    # the new role anticipates one send over four inputs: the old side's pending actions
    # reach five before the send is matched
    new = "0 !p.a 1; 1 ?s.c 2; 2 ?s.c 3; 3 ?s.c 4; 4 ?s.c 5"
    old = "0 ?s.c 1; 1 ?s.c 2; 2 ?s.c 3; 3 ?s.c 4; 4 !p.a 5"
    assert is_subtype(lt(new), lt(old), bound=8).ok
    v = is_subtype(lt(new), lt(old), bound=2)
    assert not v.ok and "bound 2" in v.reason


def test_orphan_loop_hits_the_bound_not_a_guess() -> None:
    v = is_subtype(lt("0 !p.a 0"), lt("0 ?p.b 1; 1 !p.a 0"), bound=3)
    assert not v.ok and "bound 3" in v.reason


def test_unknown_action_kinds_are_refused_by_name() -> None:
    odd = LocalType(choreography="t", role="r", initial="0", states=("0", "1"),
                    final=frozenset({"1"}), phases={}, transitions=(LocalTransition(
                        source="0", action="connect", peer="p", message=A,  # type: ignore[arg-type]
                        target="1"),))
    with pytest.raises(SubtypingError, match="'connect'"):
        is_subtype(odd, lt("0 !p.a 1"))


# --- reflexivity ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "role"), [(n, r) for n, c in REGISTRY.items() for r in c.roles])
def test_every_shipped_projection_is_its_own_subtype_by_the_walk(name: str, role: str) -> None:
    from aura_node.choreo.subtyping import _Walk

    chor = REGISTRY[name]
    local = chor.project(role)
    # the walk itself, not the identical-shape shortcut
    assert _Walk(local, local, 8, 50_000).run().ok


_ACTIONS = st.sampled_from(["!p.a", "!p.b", "?p.a", "?q.b", "!q.c", "?p.stop"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), _ACTIONS, st.integers(0, 5)), min_size=1,
                max_size=10))
def test_subtyping_is_reflexive_on_random_local_types(edges: list[tuple[int, str, int]]) -> None:
    from aura_node.choreo.subtyping import _Walk

    # deterministic machines: one edge per (state, action)
    seen: dict[tuple[int, str], int] = {}
    for src, act, dst in edges:
        seen.setdefault((src, act), dst)
    spec = "; ".join(f"{s} {a} {d}" for (s, a), d in seen.items())
    local = lt(spec)
    v = _Walk(local, local, 8, 50_000).run()
    # reflexive, or (when a state mixes sends and receives) at worst "not proven", never a
    # wrong difference
    assert v.ok or "not proven" in v.reason, v.describe()


# --- messages and whole choreographies ------------------------------------------------------


class PingV1(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


class PingWider(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes
    note: str = ""


class PingRequired(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes
    note: str


class PingRetyped(msgspec.Struct, frozen=True, kw_only=True):
    nonce: str


def test_wire_compatibility_of_message_versions() -> None:
    assert wire_incompatibility(PingWider, PingV1) is None
    assert "no default" in (wire_incompatibility(PingRequired, PingV1) or "")
    assert "changed type" in (wire_incompatibility(PingRetyped, PingV1) or "")


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool = True


class Echo(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool = True


def _probe(version: int, probe: type, answer: type) -> Choreography:
    @choreography("probe", abort=Abort, version=version)
    def chor(c: ChoreographyBuilder) -> None:
        i, r = c.role("initiator"), c.role("responder")
        c.send(i, r, probe)
        c.send(r, i, answer, deadline="probe_timeout")

    return chor


def test_choreography_compatibility_names_the_first_role_and_step() -> None:
    v1 = _probe(1, PingV1, Reply)
    assert compatibility(v1, v1).ok
    bad = compatibility(_probe(2, PingV1, Echo), v1)
    assert not bad.ok
    failure = bad.first_failure
    assert failure is not None and failure.role == "initiator"
    text = bad.describe()
    assert text.startswith("incompatible: probe v2 cannot stand in for probe v1")
    assert "recv Echo from responder" in text and "send PingV1 to responder" in text


def test_choreography_with_other_roles_is_incompatible() -> None:
    @choreography("probe", abort=Abort, version=2)
    def other(c: ChoreographyBuilder) -> None:
        i, r = c.role("initiator"), c.role("server")
        c.send(i, r, PingV1)

    res = compatibility(other, _probe(1, PingV1, Reply))
    assert not res.ok and "roles differ" in res.describe()


def test_version_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        choreography("x", abort=Abort, version=0)
    assert _probe(3, PingV1, Reply).version == 3
    assert REGISTRY["ping"].version == 1


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=plans())
def test_every_role_of_a_random_choreography_stands_in_for_itself(plan: Plan) -> None:
    from aura_node.choreo.subtyping import _Walk

    chor = build(plan)
    for role in chor.roles:
        local = chor.project(role)
        v = _Walk(local, local, 8, 50_000).run()
        assert v.ok, v.describe()
    assert compatibility(chor, chor).ok


def test_a_walk_deeper_than_the_depth_bound_is_not_proven_rather_than_a_crash() -> None:
    import sys

    from aura_node.choreo.subtyping import MAX_DEPTH

    steps = 3 * MAX_DEPTH
    old = "; ".join(f"{i} !p.a {i + 1}" for i in range(steps))
    new = old + f"; {steps} !p.b {steps + 1}"  # differs only at the very end
    v = is_subtype(lt(new), lt(old))
    assert not v.ok and v.reason == f"not proven: the walk is deeper than {MAX_DEPTH} steps"
    assert v.step == MAX_DEPTH
    # a shorter one is walked to the real difference, whatever the recursion limit
    short = MAX_DEPTH // 2
    old = "; ".join(f"{i} !p.a {i + 1}" for i in range(short))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default: the walk must fit in it
    try:
        v = is_subtype(lt(old + f"; {short} !p.b {short + 1}"), lt(old))
    finally:
        sys.setrecursionlimit(limit)
    assert v.reason == "the new version does send B to p, which the old one never does"
