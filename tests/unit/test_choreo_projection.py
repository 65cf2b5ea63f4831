"""Projection of the shipped choreographies and of small hand-written ones."""

from __future__ import annotations

import msgspec
import pytest

from aura_node.choreo import ALL, ChoreographyBuilder, LocalTransition, LocalType, choreography
from aura_node.choreo.syntax import Gather, Send
from aura_node.protocols.dkd.choreography import DKD, DkdCommitment, DkdReveal
from aura_node.protocols.genesis.choreography import GENESIS, ShareAck
from aura_node.protocols.recovery.choreography import RECOVERY, RecoveryVeto, RecoveryVetoed
from aura_node.protocols.registry import REGISTRY


def phases(lt: LocalType) -> set[str]:
    return set(lt.phases.values())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_shipped_choreographies_are_well_formed(name: str) -> None:
    chor = REGISTRY[name]
    assert chor.check() == ()
    for role in chor.roles:
        lt = chor.project(role)
        assert lt.choreography == name and lt.role == role
        assert lt.initial in lt.states and lt.final <= set(lt.states)
        assert lt.abort_state in lt.final
        for t in lt.transitions:
            assert isinstance(t, LocalTransition)
            assert t.source in lt.states and t.target in lt.states
            assert (t.message is None) == (t.action in ("timeout", "abort"))
            if t.action == "gather" and not (t.connect and t.threshold == 1):
                # (a connecting gather of 1 has no deadline: its first message is the quorum)
                assert t.threshold is not None and t.deadline
                assert any(x.action == "timeout" for x in lt.outgoing(t.source))
        # every state is reachable from the initial one
        seen, stack = set(), [lt.initial]
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack.extend(t.target for t in lt.outgoing(s))
        assert seen == set(lt.states)


DKD_PHASES = {"Initializing", "CommitmentPhase", "RevealPhase", "Finalizing", "Completed", "Failed"}


def explicit_run(lt: LocalType) -> list[tuple[str, str, str]]:
    """The non-timeout path from the initial state: (phase, action message peer, phase after);
    fails if some state on it offers more than one way forward."""
    out, state = [], lt.initial
    while state not in lt.final:
        (t,) = [x for x in lt.explicit(state) if x.action != "timeout"]
        out.append((lt.phases[state], t.describe(), lt.phases[t.target]))
        state = t.target
    return out


def test_dkd_phases() -> None:
    # a star through the initiator: only it gathers, q of the m participants, twice
    lt = DKD.project("initiator", {"m": 5, "q": 3})
    assert phases(lt) == DKD_PHASES
    assert lt.final == {"Completed", "Failed"}
    gathers = [t for t in lt.transitions if t.action == "gather"]
    assert [(t.message, t.peer, t.threshold, t.threshold_expr) for t in gathers] == [
        (DkdCommitment, "participants", 3, "q of m"),
        (DkdReveal, "participants", 3, "q of m"),
    ]
    assert [lt.phases[t.source] for t in gathers] == ["CommitmentPhase", "RevealPhase"]
    assert all(t.deadline == "dkd_timeout" for t in gathers)
    assert explicit_run(lt) == [
        ("Initializing", "send DkdRequest to participants", "CommitmentPhase"),
        ("CommitmentPhase", "gather q of m DkdCommitment from participants", "RevealPhase"),
        ("RevealPhase", "send DkdCollected to participants", "RevealPhase"),
        ("RevealPhase", "gather q of m DkdReveal from participants", "Finalizing"),
        ("Finalizing", "send DkdComplete to participants", "Completed"),
    ]
    # a participant only talks to the initiator and waits (with a deadline) for its relays
    part = DKD.project("participants", {"m": 5, "q": 3})
    # issue 11: a participant's consent (answer or refuse) is its own phase
    assert phases(part) == DKD_PHASES | {"Consenting"}
    assert part.final == {"Completed", "Failed"}
    assert not [t for t in part.transitions if t.action == "gather"]
    assert explicit_run(part) == [
        ("Initializing", "recv DkdRequest from initiator", "Consenting"),
        ("Consenting", "send DkdCommitment to initiator", "CommitmentPhase"),
        ("CommitmentPhase", "recv DkdCollected from initiator", "RevealPhase"),
        ("RevealPhase", "send DkdReveal to initiator", "Finalizing"),
        ("Finalizing", "recv DkdComplete from initiator", "Completed"),
    ]
    timed = {(part.phases[t.source], t.deadline) for t in part.transitions if t.action == "timeout"}
    assert timed == {("CommitmentPhase", "dkd_timeout"), ("Finalizing", "dkd_timeout")}
    assert all(t.target == part.abort_state for t in part.transitions if t.action == "timeout")


def test_recovery_phases_and_veto_window() -> None:
    lt = RECOVERY.project("new_device", {"g": 5, "t_g": 3, "d": 2})
    assert phases(lt) == {
        "Initiated",
        "CollectingApprovals",
        "CollectingShares",
        "Reconstructing",
        "Completed",
        "Vetoed",
        "Failed",
    }
    assert {"Completed", "Failed"} <= lt.final
    # the veto window runs at each guardian, not at the new device
    assert not [t for t in lt.transitions if t.message is RecoveryVeto]
    (vetoed,) = [t for t in lt.transitions if t.message is RecoveryVetoed]
    assert vetoed.action == "gather" and lt.phases[vetoed.target] == "Vetoed"
    g = RECOVERY.project("guardians", {"g": 5, "d": 2})
    (veto,) = [t for t in g.transitions if t.message is RecoveryVeto and t.action == "gather"
               and g.phases[t.source] == "CoolingDown"][:1]
    assert veto.threshold == 1
    (window,) = [t for t in g.outgoing(veto.source) if t.action == "timeout"]
    assert window.deadline == "recovery_cooldown"
    assert g.phases[window.target] == "Releasing"
    assert g.phases[veto.target] == "Vetoed"
    # an existing device may veto or stay silent: both are open in the same state
    dev = RECOVERY.project("devices", {"d": 2})
    (send,) = [t for t in dev.transitions if t.action == "send"]
    assert send.message is RecoveryVeto and send.peer == "guardians"
    assert {t.action for t in dev.explicit(send.source)} == {"send", "recv", "timeout"}


def test_genesis_gathers_every_ack_and_empty_guardians() -> None:
    lt = GENESIS.project("dealer", {"n": 3, "g": 0})
    acks = [t for t in lt.transitions if t.message is ShareAck]
    assert [(t.peer, t.threshold) for t in acks] == [("devices", 3), ("guardians", 0)]


def test_ast_records_source_lines() -> None:
    sends = [s for s in DKD.decl.body if isinstance(s, Send | Gather)]
    assert sends and all(
        s.where.startswith("aura_node/protocols/dkd/choreography.py:") for s in sends
    )
    assert DKD.role("participants").where.startswith("aura_node/protocols/dkd/choreography.py:")


def test_projection_is_cached_and_deterministic() -> None:
    assert DKD.project("participants") is DKD.project("participants")
    assert DKD.project("participants", {"m": 1}) == DKD.project("participants")
    assert DKD.project("participants", {"m": 1, "q": 1}) == DKD.project("participants")
    assert DKD.project("initiator", {"m": 4}) != DKD.project("initiator")
    with pytest.raises(KeyError):
        DKD.project("nobody")


class Req(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Yes(msgspec.Struct, frozen=True, kw_only=True):
    pass


class No(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Note(msgspec.Struct, frozen=True, kw_only=True):
    pass


class More(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Done(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Stop(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


def test_merge_lets_a_third_party_learn_from_the_message() -> None:
    @choreography("relay", abort=Stop)
    def relay(c: ChoreographyBuilder) -> None:
        a, b, obs = c.role("a"), c.role("b"), c.role("observer")
        c.send(a, b, Req)
        with c.choice(b) as choose:
            with choose.branch("yes"):
                c.send(b, obs, Yes)
                c.send(obs, a, Note)
            with choose.branch("no"):
                c.send(b, obs, No)
                c.send(obs, a, Note)

    assert relay.check() == ()
    a = relay.project("a")
    # `a` is not told the decision, but it behaves the same in both branches: receive Note
    assert [t.describe() for t in a.explicit(a.outgoing(a.initial)[0].target)] == [
        "recv Note from observer"
    ]
    obs = relay.project("observer")
    assert sorted(t.describe() for t in obs.explicit(obs.initial)) == [
        "recv No from b",
        "recv Yes from b",
    ]


def test_loops_project_to_cycles() -> None:
    @choreography("stream", abort=Stop)
    def stream(c: ChoreographyBuilder) -> None:
        src, sink = c.role("src"), c.role("sink")
        with c.loop("chunks") as loop:
            with c.choice(src) as choose:
                with choose.branch("more"):
                    c.send(src, sink, More)
                    loop.again()
                with choose.branch("done"):
                    c.send(src, sink, Done)

    assert stream.check() == ()
    sink = stream.project("sink")
    (more,) = [t for t in sink.transitions if t.message is More]
    assert more.source == more.target == sink.initial


def test_all_threshold_over_role_set() -> None:
    @choreography("poll", abort=Stop)
    def poll(c: ChoreographyBuilder) -> None:
        asker, crowd = c.role("asker"), c.role_set("crowd", size="m", minimum=1)
        c.send(asker, crowd, Req)
        c.gather(crowd, asker, Yes, threshold=ALL, deadline="poll_timeout")

    lt = poll.project("asker", {"m": 4})
    (g,) = [t for t in lt.transitions if t.action == "gather"]
    assert (g.threshold, g.threshold_expr, g.deadline) == (4, "all m", "poll_timeout")
