"""The registry keyed by (name, version): upgrades by a higher version, declared older
versions, per-choreography hashes and what the hello advertises (only older versions the
running one is proven to stand in for)."""

from __future__ import annotations

import msgspec
import pytest

from aura_node.choreo import Choreography, ChoreographyBuilder, choreography
from aura_node.errors import ChoreographyError
from aura_node.protocols import registry
from aura_node.protocols.ping.choreography import PING, PingAbort, Pong
from tests.unit.kit_support import registrations_undone


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes
    note: str = ""  # v2: an optional field, wire compatible with v1's Ping


class Echo(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


def ping_version(version: int, answer: type) -> Choreography:
    @choreography("ping", abort=PingAbort, version=version)
    def chor(c: ChoreographyBuilder) -> None:
        i, r = c.role("initiator"), c.role("responder")
        c.phase(i, "Probing")
        c.phase(r, "AwaitingPing")
        c.send(i, r, Ping)
        c.phase(i, "AwaitingPong")
        c.phase(r, "Answering")
        c.send(r, i, answer, deadline="ping_timeout")
        c.phase(i, "Completed")
        c.phase(r, "Completed")

    return chor


def entries(name: str) -> list[tuple[str, int]]:
    return [(n, v) for n, v, _h in registry.advertised_choreographies() if n == name]


def test_hashes_are_per_choreography_and_cover_the_version() -> None:
    h1 = registry.choreography_hash(PING)
    assert len(h1) == 32 and h1 == registry.choreography_hash(PING)
    assert registry.choreography_hash(ping_version(2, Pong)) != registry.choreography_hash(
        ping_version(3, Pong))  # same structure, another version
    assert registry.choreography_hash(registry.REGISTRY["dkd"]) != h1


def test_a_compatible_upgrade_keeps_advertising_the_old_version() -> None:
    with registrations_undone():
        v2 = ping_version(2, Pong)
        assert registry.register_choreography(v2) is v2
        assert registry.node_registry()["ping"] is v2
        assert registry.node_versions()[("ping", 1)] is PING
        assert entries("ping") == [("ping", 2), ("ping", 1)]
    assert registry.node_registry()["ping"] is PING and entries("ping") == [("ping", 1)]


def test_an_incompatible_upgrade_advertises_only_itself() -> None:
    with registrations_undone():
        registry.register_choreography(ping_version(2, Echo))
        assert entries("ping") == [("ping", 2)]
        assert ("ping", 1) in registry.node_versions()  # still declared, for `choreo compat`


def test_upgrades_must_raise_the_version_and_older_ones_must_be_older() -> None:
    with registrations_undone():
        with pytest.raises(ChoreographyError, match="must declare a higher version, got 1"):
            registry.register_choreography(ping_version(1, Pong))
        v3 = ping_version(3, Pong)
        registry.register_choreography(v3)
        v2 = ping_version(2, Pong)
        assert registry.declare_older_version(v2) is v2
        assert entries("ping") == [("ping", 3), ("ping", 2), ("ping", 1)]
        with pytest.raises(ChoreographyError, match="not older than the v3"):
            registry.declare_older_version(ping_version(4, Pong))
        with pytest.raises(ChoreographyError, match="two different definitions of ping v2"):
            registry.declare_older_version(ping_version(2, Echo))
        with pytest.raises(ChoreographyError, match="no choreography 'nope' runs"):
            @choreography("nope", abort=PingAbort)
            def nope(c: ChoreographyBuilder) -> None:
                i, r = c.role("initiator"), c.role("responder")
                c.send(i, r, Ping)

            registry.declare_older_version(nope)
