"""The happy path type-checks cleanly under --strict, with the types the pattern promises."""

from __future__ import annotations

from typing import assert_type

from aura_node.crypto.keys import DeviceKey
from aura_node.session.example import (
    VOTE_DOMAIN,
    Aborted,
    Collecting,
    Decided,
    Decision,
    Deciding,
    ToyCoordinator,
)
from aura_node.session.witness import QuorumOfSignedStatements, SignedStatement
from aura_node.choreo.local import LocalType


def run(keys: list[DeviceKey]) -> bytes:
    items = [
        SignedStatement.sign(
            k, domain=VOTE_DOMAIN, session_id="s", choreography="toy-vote", payload=b"yes"
        )
        for k in keys
    ]
    quorum = QuorumOfSignedStatements.verify(
        items,
        members=[k.public for k in keys],
        session_id="s",
        choreography="toy-vote",
        domain=VOTE_DOMAIN,
        threshold=len(keys),
    )
    s = ToyCoordinator(session_id="s", threshold=len(keys))
    assert_type(s, ToyCoordinator[Collecting])
    d = s.collect(quorum)
    assert_type(d, ToyCoordinator[Deciding])
    done, msg = d.decide()
    assert_type(done, ToyCoordinator[Decided])
    assert_type(msg, Decision)
    return done.result()


def give_up() -> ToyCoordinator[Aborted]:
    return ToyCoordinator(session_id="s", threshold=1).time_out()


def introspect(local: LocalType) -> int:
    from aura_node.session.conformance import check_conformance
    from aura_node.session.typestate import TransitionDecl, declared_transitions

    decls = declared_transitions(ToyCoordinator)
    assert_type(decls, tuple[TransitionDecl, ...])
    check_conformance(ToyCoordinator, local)
    return len(decls)
