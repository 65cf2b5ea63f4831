"""The inbound handshake admission policy (pure): the oldest unidentified connection makes
room, an identified one is out of reach of unknown floods, and each pinned peer has its own
allowance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.transport.admission import HandshakeAdmission


def test_the_oldest_unidentified_connection_makes_room() -> None:
    adm: HandshakeAdmission[int] = HandshakeAdmission(max_unidentified=3, per_peer=2)
    assert [adm.admit(i) for i in range(3)] == [[], [], []]
    assert adm.admit(3) == [0]
    assert adm.admit(4) == [1]
    assert adm.unidentified == 3


def test_an_identified_handshake_is_out_of_reach_of_unknown_floods() -> None:
    adm: HandshakeAdmission[str] = HandshakeAdmission(max_unidentified=2, per_peer=2)
    adm.admit("honest")
    assert adm.identify("honest", "bob") == []
    evicted = [v for i in range(100) for v in adm.admit(f"junk{i}")]
    assert "honest" not in evicted
    assert len(evicted) == 98 and adm.unidentified == 2 and adm.identified("bob") == 1


def test_each_pinned_peer_has_its_own_allowance_oldest_first() -> None:
    adm: HandshakeAdmission[str] = HandshakeAdmission(max_unidentified=10, per_peer=2)
    for t in ("b1", "b2", "b3", "c1"):
        adm.admit(t)
    assert adm.identify("b1", "bob") == []
    assert adm.identify("b2", "bob") == []
    assert adm.identify("c1", "carol") == []
    assert adm.identify("b3", "bob") == ["b1"]  # the newest dial of bob wins
    assert adm.identified("bob") == 2 and adm.identified("carol") == 1


def test_release_is_idempotent_and_evicted_tickets_are_ignored() -> None:
    adm: HandshakeAdmission[str] = HandshakeAdmission(max_unidentified=1, per_peer=1)
    adm.admit("a")
    assert adm.admit("b") == ["a"]
    assert adm.identify("a", "bob") == []  # evicted already: not admitted to bob's pool
    assert adm.identified("bob") == 0
    adm.release("a")
    adm.release("b")
    adm.release("b")
    assert adm.unidentified == 0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HandshakeAdmission(max_unidentified=0)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit", "identify", "release"]),
                          st.integers(0, 30), st.sampled_from(["p", "q"])), max_size=200))
def test_bounds_hold_under_any_sequence(ops: list[tuple[str, int, str]]) -> None:
    adm: HandshakeAdmission[int] = HandshakeAdmission(max_unidentified=4, per_peer=2)
    live: set[int] = set()
    for op, t, peer in ops:
        if op == "admit" and t not in live:
            live.add(t)
            live -= set(adm.admit(t))
        elif op == "identify" and t in live:
            live -= set(adm.identify(t, peer))
        elif op == "release":
            adm.release(t)
            live.discard(t)
        assert adm.unidentified <= 4
        assert adm.identified("p") <= 2 and adm.identified("q") <= 2
        assert adm.unidentified + adm.identified("p") + adm.identified("q") == len(live)
