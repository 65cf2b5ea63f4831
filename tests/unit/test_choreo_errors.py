"""Error text of ill-formed choreographies: the choreography's name, the offending line
(``file:line`` of the DSL call), what is wrong, and a counterexample trace; all errors at once."""

from __future__ import annotations

import inspect

import msgspec
import pytest

from aura_node.choreo import ALL, ChoreographyBuilder, ChoreographyErrors, choreography
from aura_node.choreo.errors import BindingError
from aura_node.errors import ChoreographyError
from aura_node.protocols.dkd.choreography import DKD


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    price: int


class Accept(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Reject(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Ship(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Bill(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Cancel(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


LINES: dict[str, int] = {}


def here(tag: str) -> None:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    LINES[tag] = frame.f_back.f_lineno + 1  # the DSL call on the next line


@choreography("shop", abort=Cancel)
def SHOP(c: ChoreographyBuilder) -> None:
    buyer, seller, courier = c.role("buyer"), c.role("seller"), c.role("courier")
    voters = c.role_set("voters", size="n", minimum=2)
    c.send(seller, buyer, Offer)
    here("choice")
    with c.choice(buyer) as choose:
        with choose.branch("accept"):
            c.send(buyer, seller, Accept)
            c.send(seller, courier, Ship)
        with choose.branch("reject"):
            c.send(buyer, seller, Reject)
            c.send(courier, seller, Bill)  # the courier was never told: it cannot know
    here("gather")
    c.gather(voters, buyer, Vote, threshold=3, deadline=None)
    here("ghost")
    c.send(buyer, "auditor", Bill)


def test_every_error_is_reported_with_line_and_trace() -> None:
    errors = SHOP.check()
    by_kind = {e.kind: e for e in errors}
    assert {"knowledge_of_choice", "threshold_bounds", "wait_forever", "unknown_role"} <= set(
        by_kind
    )
    koc = by_kind["knowledge_of_choice"]
    assert koc.where == f"tests/unit/test_choreo_errors.py:{LINES['choice']}"
    assert koc.message.startswith(
        f"choreography 'shop', tests/unit/test_choreo_errors.py:{LINES['choice']}: "
        "role 'courier' cannot learn the choice by buyer: after 'accept' it receives Ship from "
        "seller, after 'reject' it sends Bill to seller [knowledge_of_choice]"
    )
    assert "\n  trace: seller -> buyer: Offer" in koc.message
    thr = by_kind["threshold_bounds"]
    assert thr.where.endswith(f":{LINES['gather']}")
    assert "threshold 3 is larger than role set 'voters'" in thr.message
    assert "trace: seller -> buyer: Offer ; voters -> buyer: Vote [gather 3]" in thr.message
    assert by_kind["wait_forever"].where.endswith(f":{LINES['gather']}")
    ghost = by_kind["unknown_role"]
    assert ghost.where.endswith(f":{LINES['ghost']}")
    assert "unknown role 'auditor'" in ghost.message
    for e in errors:
        assert isinstance(e, ChoreographyError) and e.code == "choreography_ill_formed"


def test_project_refuses_an_ill_formed_choreography() -> None:
    with pytest.raises(ChoreographyErrors) as info:
        SHOP.project("buyer")
    assert len(info.value.errors) == len(SHOP.check()) >= 4
    assert "choreography 'shop' is ill formed" in info.value.message


@choreography("late", abort=Cancel)
def LATE(c: ChoreographyBuilder) -> None:
    a, b = c.role("a"), c.role("b")
    group = c.role_set("group", size="n", minimum=1)
    c.send(a, b, Offer)
    c.end()
    here("after_end")
    c.send(b, a, Accept)
    c.gather(group, a, Vote, threshold=ALL, deadline="d")


def test_statement_after_end_is_unreachable() -> None:
    (err,) = [e for e in LATE.check() if e.kind == "unreachable"]
    assert err.where.endswith(f"test_choreo_errors.py:{LINES['after_end']}")
    assert "statement after end() can never run" in err.message
    assert "trace: a -> b: Offer" in err.message


class Share(msgspec.Struct, frozen=True, kw_only=True):
    pass


@choreography("council", abort=Cancel)
def COUNCIL(c: ChoreographyBuilder) -> None:
    """Declared bounds above 1 (a role set of at least 2, a threshold of at least 2), which no
    shipped choreography has: the lower bounds must be enforced as declared, not as 1."""
    chair = c.role("chair")
    members = c.role_set("members", size="n", minimum=2)
    t = c.threshold("t", of=members, minimum=2)
    c.send(chair, members, Offer)
    c.all_to_all(members, Share, threshold=t, deadline="d_round")
    c.gather(members, chair, Vote, threshold=t, deadline="d_vote")


def test_binding_outside_declared_bounds() -> None:
    # DKD: participants (m >= 1) and q over them (1 <= q <= m)
    with pytest.raises(
        BindingError, match=r"threshold 'q' must satisfy 1 <= q <= \|participants\| = 3, got 4"
    ):
        DKD.project("participants", {"m": 3, "q": 4})
    with pytest.raises(
        BindingError, match=r"threshold 'q' must satisfy 1 <= q <= \|participants\| = 3, got 0"
    ):
        DKD.project("initiator", {"m": 3, "q": 0})
    with pytest.raises(BindingError, match="needs m >= 1, got 0"):
        DKD.project("participants", {"m": 0})
    with pytest.raises(BindingError, match=r"unknown parameters \['n', 't'\]"):
        DKD.project("participants", {"n": 3, "t": 2})
    # declared minimums above 1 are enforced as declared
    assert COUNCIL.check() == ()
    with pytest.raises(
        BindingError, match=r"threshold 't' must satisfy 2 <= t <= \|members\| = 3, got 4"
    ):
        COUNCIL.project("members", {"n": 3, "t": 4})
    with pytest.raises(
        BindingError, match=r"threshold 't' must satisfy 2 <= t <= \|members\| = 3, got 1"
    ):
        COUNCIL.project("chair", {"n": 3, "t": 1})
    with pytest.raises(BindingError, match="needs n >= 2, got 1"):
        COUNCIL.project("members", {"n": 1})
    with pytest.raises(BindingError, match="unknown parameters"):
        COUNCIL.project("members", {"q": 1})
