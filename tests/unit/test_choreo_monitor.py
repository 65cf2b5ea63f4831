"""Monitors: a state x message x peer sweep over every shipped choreography and a small
all-to-all one declared here (accepted exactly when the local type allows it), plus gathers,
stragglers, early messages and aborts."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from aura_node.choreo import (
    ChoreographyBuilder,
    DuplicateGatherMessageError,
    EarlyMessageError,
    LocalType,
    Monitor,
    MonitorUsageError,
    NoTimeoutError,
    UnexpectedMessageError,
    UnexpectedSendError,
    choreography,
)
from aura_node.choreo.dsl import Choreography
from aura_node.choreo.simulate import sample_message
from aura_node.errors import LocalProtocolError, RemoteProtocolError
from aura_node.protocols.dkd.choreography import (
    DKD,
    DkdAbort,
    DkdCollected,
    DkdCommitment,
    DkdComplete,
    DkdRequest,
    DkdReveal,
)
from aura_node.protocols.registry import REGISTRY


class Begin(msgspec.Struct, frozen=True, kw_only=True):
    members: tuple[str, ...]


class Share(msgspec.Struct, frozen=True, kw_only=True):
    value: bytes


class Report(msgspec.Struct, frozen=True, kw_only=True):
    value: bytes


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool


class Done(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Stop(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("rounds", abort=Stop)
def ROUNDS(c: ChoreographyBuilder) -> None:
    """All-to-all rounds (no shipped choreography has one): a coordinator starts the group,
    every member sends to every member twice, then the coordinator gathers verdicts."""
    coordinator = c.role("coordinator")
    group = c.role_set("group", size="n", minimum=2)
    t = c.threshold("t", of=group, minimum=2)
    c.phase(coordinator, "Starting")
    c.phase(group, "Starting")
    c.send(coordinator, group, Begin)
    c.phase(coordinator, "Waiting")
    c.phase(group, "FirstRound")
    c.all_to_all(group, Share, threshold=t, deadline="round_timeout")
    c.phase(group, "SecondRound")
    c.all_to_all(group, Verdict, threshold=t, deadline="round_timeout")
    c.phase(group, "Reporting")
    c.gather(group, coordinator, Report, threshold=t, deadline="round_timeout")
    c.send(coordinator, group, Done)
    c.phase(coordinator, "Completed")
    c.phase(group, "Completed")


CHOREOGRAPHIES: dict[str, Choreography] = {**REGISTRY, "rounds": ROUNDS}


def _bindings() -> Iterator[tuple[str, str, dict[str, int]]]:
    for name, c in CHOREOGRAPHIES.items():
        sizes = {r.size: r.minimum for r in c.decl.roles if r.size}
        larger = {k: v + 2 for k, v in sizes.items()}
        for t in c.decl.thresholds:
            larger[t.name] = max(t.minimum, 1) + 1
        for role in c.roles:
            yield name, role, {}
            yield name, role, larger


CASES = list(_bindings())


def test_sweep_binds_dkd_at_its_minimum_and_above() -> None:
    assert [(role, b) for name, role, b in CASES if name == "dkd"] == [
        ("initiator", {}),
        ("initiator", {"m": 3, "q": 2}),
        ("participants", {}),
        ("participants", {"m": 3, "q": 2}),
    ]
    assert DKD.project("initiator").set_sizes == {"participants": 1}


def _peers(lt: LocalType) -> set[str]:
    c = CHOREOGRAPHIES[lt.choreography]
    return {r for r in c.roles if r != lt.role or c.role(r).is_set}


def _settle(lt: LocalType, state: str) -> str:
    """Where a monitor placed at ``state`` really is: a gather of 0 (empty role set) completes
    on arrival, and so does the only send of a state when it goes to an empty role set."""
    for t in lt.outgoing(state):
        if t.action == "gather" and (t.threshold or 0) <= 0:
            return _settle(lt, t.target)
    explicit = lt.explicit(state)
    if len(explicit) == 1 and explicit[0].action == "send" and lt.set_sizes.get(
        explicit[0].peer
    ) == 0:
        return _settle(lt, explicit[0].target)
    return state


def _later(lt: LocalType, state: str) -> set[tuple[str, type]]:
    seen: set[str] = set()
    stack = [t.target for t in lt.explicit(state)]
    out: set[tuple[str, type]] = set()
    while stack:
        s = stack.pop()
        if s in seen:
            continue
        seen.add(s)
        for t in lt.explicit(s):
            if t.action in ("recv", "gather") and t.message is not None:
                out.add((t.peer, t.message))
            stack.append(t.target)
    return out


@pytest.mark.parametrize(("name", "role", "bindings"), CASES)
def test_inbound_sweep(name: str, role: str, bindings: dict[str, int]) -> None:
    c = CHOREOGRAPHIES[name]
    lt = c.project(role, bindings)
    peers = _peers(lt)
    checked = 0
    for start in lt.states:
        state = _settle(lt, start)
        for mtype in c.messages:
            msg = sample_message(mtype)
            for peer in c.roles:
                mon = Monitor(lt, state=start)
                assert mon.state == state
                allowed = [
                    t
                    for t in lt.outgoing(state)
                    if t.action in ("recv", "gather") and t.peer == peer and t.message is mtype
                ]
                inputs = {
                    (t.peer, t.message) for t in lt.transitions if t.action in ("recv", "gather")
                }
                absorbed = peer in peers and (
                    (state == lt.abort_state and (peer, mtype) in inputs)
                    or (state in lt.final and mtype is c.decl.abort_message)
                )
                if allowed or absorbed:
                    mon.check_inbound(peer, msg, member=(peer, 0))
                    if allowed and (allowed[0].action == "recv" or allowed[0].threshold == 1):
                        assert mon.state == _settle(lt, allowed[0].target)
                    else:
                        assert mon.state == state
                else:
                    with pytest.raises(RemoteProtocolError) as info:
                        mon.check_inbound(peer, msg, member=(peer, 0))
                    err = info.value
                    early = (peer, mtype) in _later(lt, state)
                    assert isinstance(err, EarlyMessageError if early else UnexpectedMessageError)
                    assert mtype.__name__ in err.message and f"state {state}" in err.message
                    assert mon.state == state, "a rejected message must not move the monitor"
                checked += 1
    assert checked == len(lt.states) * len(c.messages) * len(c.roles)


@pytest.mark.parametrize(("name", "role", "bindings"), CASES)
def test_outbound_sweep(name: str, role: str, bindings: dict[str, int]) -> None:
    c = CHOREOGRAPHIES[name]
    lt = c.project(role, bindings)
    peers = _peers(lt)
    for start in lt.states:
        state = _settle(lt, start)
        for mtype in c.messages:
            msg = sample_message(mtype)
            for peer in c.roles:
                mon = Monitor(lt, state=start)
                allowed = [
                    t
                    for t in lt.outgoing(state)
                    if t.action == "send" and t.peer == peer and t.message is mtype
                ]
                is_abort = mtype is c.decl.abort_message and peer in peers
                if allowed:
                    mon.check_outbound(peer, msg)
                    assert mon.state == _settle(lt, allowed[0].target)
                elif is_abort and (state == lt.abort_state or state not in lt.final):
                    mon.check_outbound(peer, msg)
                    assert mon.state == lt.abort_state
                else:
                    with pytest.raises(UnexpectedSendError) as info:
                        mon.check_outbound(peer, msg)
                    assert isinstance(info.value, LocalProtocolError)
                    assert f"can't send {mtype.__name__} to {peer}" in info.value.message
                    assert mon.state == state


def _gather_3_of_4(
    mon: Monitor, peer: str, mtype: type, later: type | None, next_phase: str
) -> None:
    """``mon`` is in a gather of 3 ``mtype`` from the 4 members of ``peer``; ``later`` (if any)
    is a message of ``peer`` that is only allowed after the gather."""
    gathering = mon.state
    msg = sample_message(mtype)
    with pytest.raises(MonitorUsageError):
        mon.check_inbound(peer, msg)
    mon.check_inbound(peer, msg, member="a")
    with pytest.raises(DuplicateGatherMessageError) as info:
        mon.check_inbound(peer, msg, member="a")
    assert info.value.code == "duplicate_gather_message"
    assert mon.gathered(peer, mtype) == 1
    if later is not None:  # a later message is legal later, not now: the runtime buffers it
        with pytest.raises(EarlyMessageError) as early:
            mon.check_inbound(peer, sample_message(later), member="b")
        assert f"{mtype.__name__} from {peer} (gather 1/3)" in early.value.message
        assert mon.state == gathering
    mon.check_inbound(peer, msg, member="b")
    assert mon.state == gathering
    mon.check_inbound(peer, msg, member="c")
    assert mon.state != gathering and mon.phase == next_phase
    # the fourth member's message is a straggler: accepted once, without effect
    here = mon.state
    mon.check_inbound(peer, msg, member="d")
    assert mon.state == here
    with pytest.raises(UnexpectedMessageError):
        mon.check_inbound(peer, msg, member="d")
    with pytest.raises(UnexpectedMessageError):
        mon.check_inbound(peer, msg, member="a")


def test_gather_counts_distinct_members_and_drops_stragglers() -> None:
    # DKD: the initiator gathers q = 3 commitments of the m = 4 participants
    mon = Monitor(DKD.project("initiator", {"m": 4, "q": 3}))
    mon.check_outbound("participants", sample_message(DkdRequest))
    assert mon.phase == "CommitmentPhase"
    _gather_3_of_4(mon, "participants", DkdCommitment, DkdReveal, "RevealPhase")
    # ... then, after relaying what it collected, 3 reveals
    mon.check_outbound("participants", sample_message(DkdCollected))
    _gather_3_of_4(mon, "participants", DkdReveal, None, "Finalizing")
    mon.check_outbound("participants", sample_message(DkdComplete))
    assert mon.state == "Completed" and mon.is_final


def test_all_to_all_gather_counts_distinct_members_and_drops_stragglers() -> None:
    # an all-to-all round: each member gathers 3 of its group's 4 (itself included)
    mon = Monitor(ROUNDS.project("group", {"n": 4, "t": 3}))
    mon.check_inbound("coordinator", sample_message(Begin))
    mon.check_outbound("group", sample_message(Share))
    assert mon.phase == "FirstRound"
    _gather_3_of_4(mon, "group", Share, Verdict, "SecondRound")


def test_timeouts_aborts_and_final_states() -> None:
    lt = DKD.project("participants")
    mon = Monitor(lt)
    with pytest.raises(NoTimeoutError):
        mon.timeout()
    assert not mon.can_time_out
    mon.check_inbound("initiator", sample_message(DkdRequest))
    assert not mon.can_time_out  # its own commitment is still to be sent
    mon.check_outbound("initiator", sample_message(DkdCommitment))
    assert mon.can_time_out  # waiting for DkdCollected, with a deadline
    mon.timeout()
    assert mon.state == "Failed" and mon.is_final and mon.phase == "Failed"
    # fanning the abort out is allowed, and the abort state drops whatever still arrives
    mon.check_outbound("initiator", sample_message(DkdAbort))
    mon.check_outbound("participants", sample_message(DkdAbort))
    mon.check_inbound("initiator", sample_message(DkdCollected))
    mon.check_inbound("initiator", sample_message(DkdComplete))
    # ... but only what this role could ever receive
    with pytest.raises(UnexpectedMessageError):
        mon.check_inbound("participants", sample_message(DkdReveal), member="x")
    with pytest.raises(UnexpectedSendError):
        mon.check_outbound("initiator", sample_message(DkdCommitment))
    with pytest.raises(LocalProtocolError):
        mon.abort()

    other = Monitor(lt)
    other.abort()
    assert other.state == lt.abort_state
    third = Monitor(lt)
    third.check_inbound("initiator", sample_message(DkdAbort))
    assert third.state == lt.abort_state

    # the initiator can time out while gathering, not before it has asked anyone
    init = Monitor(DKD.project("initiator"))
    assert not init.can_time_out
    init.check_outbound("participants", sample_message(DkdRequest))
    assert init.can_time_out
    init.timeout()
    assert init.state == "Failed" and init.is_final
    init.check_inbound("participants", sample_message(DkdReveal), member="y")
    with pytest.raises(UnexpectedMessageError):
        init.check_inbound("participants", sample_message(DkdCollected), member="y")


def test_error_names_expected_actual_and_state() -> None:
    mon = Monitor(DKD.project("initiator"))
    with pytest.raises(UnexpectedMessageError) as info:
        mon.check_inbound("participants", sample_message(DkdCollected), member="p")
    text = info.value.message
    assert text.startswith("dkd/initiator in state Initializing: expected ")
    assert "got DkdCollected from participants" in text
    assert info.value.code == "unexpected_message"
    # a reveal is a message the initiator will gather, just not yet
    with pytest.raises(EarlyMessageError) as early:
        mon.check_inbound("participants", sample_message(DkdReveal), member="p")
    assert early.value.message.startswith(
        "dkd/initiator in state Initializing: DkdReveal from "
        "participants is not allowed yet (expected "
    )
    assert mon.state == "Initializing"
    with pytest.raises(MonitorUsageError):
        Monitor(DKD.project("initiator"), state="NoSuchState")


def test_monitor_is_slotted() -> None:
    mon = Monitor(DKD.project("initiator"))
    assert not hasattr(mon, "__dict__")
