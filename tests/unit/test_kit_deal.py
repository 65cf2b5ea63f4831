"""Kit rules genesis needs: several sends in one phase (in-place sends first, once per entry),
one message gathered from two role sets (by sender role), ``@polled`` gathers, and
``@unrepeatable`` draws that replay takes from the journal instead of recomputing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ALL, ChoreographyBuilder, choreography
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import encode_envelope, seal
from aura_node.protocols.kit import (
    NondeterminismError,
    RoleDriver,
    Step,
    polled,
    protocol,
    unrepeatable,
)
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from tests.unit.kit_support import ENTROPY, KEY_A, SERVICES, SID, Failed, HelloChoreo, Rec

S = TypeVar("S")







# --- draws that replay cannot recompute, several sends per phase, role-set dispatch -----------


class Deal(msgspec.Struct, frozen=True, kw_only=True):
    blob: bytes


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    n: int


class DealAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-deal", abort=DealAbort)
def DEAL(c: ChoreographyBuilder) -> None:
    a = c.role("a")
    bs = c.role_set("bs", size="n", minimum=1)
    cs = c.role_set("cs", size="m", minimum=0)
    c.phase(a, "Dealing")
    c.phase(bs, "Waiting")
    c.phase(cs, "Waiting")
    c.send(a, bs, Deal)
    c.send(a, cs, Deal)
    c.phase(a, "Collecting")
    c.gather(bs, a, Ack, threshold=ALL, deadline="t")
    c.gather(cs, a, Ack, threshold=ALL, deadline="t")
    c.phase(a, "Dealt")


@final
class Dealing(Phase): ...
@final
class Collecting(Phase): ...
@final
class Dealt(Phase): ...


#: how many times the dealer's draw ran (replay must never run it)
DRAWS: list[bytes] = []


def _draw() -> bytes:
    DRAWS.append(os.urandom(16))
    return DRAWS[-1]


@final
class Dealer(ChoreographicProtocol[HelloChoreo, S], choreography="kit-deal", role="a",
             initial=Dealing, abort=Failed):
    drawn: bytes
    acked: tuple[str, ...]

    def __init__(self: Dealer[Dealing], step: Step[Any]) -> None:
        self._begin(drawn=b"", acked=())

    @unrepeatable(record="kit-deal.drawn")
    @transition(source=Dealing, target=Dealing, action="send", message=Deal, peer="bs")
    def deal_bs(self: Dealer[Dealing], step: Step[Any]
                ) -> tuple[Dealer[Dealing], dict[str, Deal]]:
        drawn = step.draw(_draw)
        return (self._advance(Dealer[Dealing], drawn=drawn),
                {n: Deal(blob=drawn + n.encode()) for n in step.members("bs")})

    @transition(source=Dealing, target=Collecting, action="send", message=Deal, peer="cs")
    def deal_cs(self: Dealer[Dealing], step: Step[Any]) -> tuple[Dealer[Collecting], Deal]:
        return self._advance(Dealer[Collecting]), Deal(blob=self.drawn)

    @transition(source=Collecting, target=Collecting, action="gather", message=Ack, peer="bs")
    def ack_b(self: Dealer[Collecting], ack: Ack, step: Step[Any]) -> Dealer[Collecting]:
        return self._advance(Dealer[Collecting], acked=(*self.acked, f"b:{step.sender}"))

    @polled
    @transition(source=Collecting, target=Dealt, action="gather", message=Ack, peer="cs")
    def ack_c(self: Dealer[Collecting], ack: Ack | None, step: Step[Any]
              ) -> Dealer[Collecting] | Dealer[Dealt]:
        acked = self.acked if ack is None else (*self.acked, f"c:{step.sender}")
        if len(acked) < len(step.members("bs")) + len(step.members("cs")):
            return self._advance(Dealer[Collecting], acked=acked)
        step.complete(acked=list(acked))
        return self._advance(Dealer[Dealt], acked=acked)

    @transition(source=Collecting, target=Failed, action="timeout")
    def time_out(self: Dealer[Collecting], step: Step[Any]) -> Dealer[Failed]:
        return self._advance(Dealer[Failed])


@pytest.fixture
def dealer() -> Iterator[type[RoleDriver]]:
    p = protocol(DEAL, Dealer, conformance_bindings={"n": 2, "m": 1})
    try:
        yield p.drivers["a"]
    finally:
        del eng.PROTOCOLS["kit-deal"]


def _deal_start(*cs: str) -> eng.Start:
    roles = {"a": "a", "b1": "bs", "b2": "bs", **dict.fromkeys(cs, "cs")}
    return eng.Start(session=SID, choreography="kit-deal", role="a", self_name="a",
                     roles=roles, params={}, now=100.0, entropy=ENTROPY)


def _ack(sender: str, role: str) -> eng.MessageIn:
    env = seal(KEY_A, choreography="kit-deal", session=SID, message=Ack(n=1))
    return eng.MessageIn(sender=sender, sender_role=role, message=Ack(n=1), envelope=env,
                         now=101.0)


def _journal(start: eng.Start, effects: list[eng.Effect]) -> list[Rec]:
    """The records the runtime journals for a start step (in effect order)."""
    recs = [Rec(seq=0, ts=100.0, session=SID, kind=eng.KIND_START, body=eng.encode_body(
        eng.StartBody(choreography=start.choreography, role=start.role,
                      self_name=start.self_name, roles=dict(start.roles), params={},
                      now=start.now, entropy=start.entropy)))]
    for e in effects:
        if isinstance(e, eng.Send):
            env = seal(KEY_A, choreography="kit-deal", session=SID, message=e.message)
            body = eng.encode_body(eng.OutBody(to=list(e.to), envelope=encode_envelope(env)))
            recs.append(Rec(seq=len(recs), ts=100.0, session=SID, kind=eng.KIND_OUT,
                            body=body))
        elif isinstance(e, eng.RecordEvidence):
            recs.append(Rec(seq=len(recs), ts=100.0, session=SID, kind=e.kind, body=e.body))
    return recs


def test_several_sends_in_one_phase_run_in_order_and_a_draw_is_journaled(
        dealer: type[RoleDriver]) -> None:
    d = dealer(SERVICES)
    effects = d.start(_deal_start("c1"))
    drawn = DRAWS[-1]
    # the self-loop send first (per member), its draw journaled with it, then the leaving send
    assert effects == [eng.Send(to=("b1",), message=Deal(blob=drawn + b"b1")),
                       eng.Send(to=("b2",), message=Deal(blob=drawn + b"b2")),
                       eng.RecordEvidence(kind="kit-deal.drawn", body=drawn),
                       eng.Send(to=("c1",), message=Deal(blob=drawn))]
    assert d.status()["phase"] == "Collecting"
    # one message type from two role sets (in the monitor's order): by the sender's role
    assert d.on_message(_ack("b1", "bs")) == []
    assert d.on_message(_ack("b2", "bs")) == []
    assert d.on_message(_ack("c1", "cs")) == [eng.Complete(
        result={"acked": ["b:b1", "b:b2", "c:c1"]})]


def test_a_polled_gather_completes_on_another_input_of_its_phase(
        dealer: type[RoleDriver]) -> None:
    d = dealer(SERVICES)
    d.start(_deal_start())  # no cs at all: its gather never gets a message
    assert d.status()["phase"] == "Collecting"  # polled, but the bs acks are not in yet
    assert d.on_message(_ack("b1", "bs")) == []
    assert d.on_message(_ack("b2", "bs")) == [eng.Complete(result={"acked": ["b:b1", "b:b2"]})]
    d = dealer(SERVICES)
    d.start(_deal_start("c1"))
    assert d.on_message(_ack("c1", "cs")) == d.on_message(_ack("b1", "bs")) == []
    assert d.on_message(_ack("b2", "bs")) == [eng.Complete(  # cs answered before the bs did
        result={"acked": ["c:c1", "b:b1", "b:b2"]})]


def test_replay_takes_an_unrepeatable_draw_from_the_journal(dealer: type[RoleDriver]) -> None:
    start = _deal_start("c1")
    recs = _journal(start, dealer(SERVICES).start(start))
    before = len(DRAWS)
    d = dealer.rehydrate(recs, SERVICES)
    assert len(DRAWS) == before  # not drawn again: the journaled record was used
    assert d is not None and d.status()["phase"] == "Collecting" and d.resume(101.0) == []
    # live again after the replay: the gather goes on from the restored value
    assert d.on_message(_ack("b1", "bs")) == d.on_message(_ack("b2", "bs")) == []
    assert isinstance(d.on_message(_ack("c1", "cs"))[-1], eng.Complete)


def test_replay_refuses_a_draw_the_journal_does_not_prove(dealer: type[RoleDriver]) -> None:
    start = _deal_start("c1")
    recs = _journal(start, dealer(SERVICES).start(start))
    drawn = next(r for r in recs if r.kind == "kit-deal.drawn")
    # a record that does not match the journaled sends
    forged = [Rec(r.seq, r.ts, r.session, r.kind, b"x" * 16) if r is drawn else r
              for r in recs]
    with pytest.raises(NondeterminismError, match="different content"):
        dealer.rehydrate(forged, SERVICES)
    with pytest.raises(NondeterminismError, match="holds no kit-deal.drawn record"):
        dealer.rehydrate([r for r in recs if r is not drawn], SERVICES)
    with pytest.raises(NondeterminismError, match="draws that replaying its inputs does not"):
        dealer.rehydrate([*recs, Rec(99, 100.0, SID, drawn.kind, drawn.body)], SERVICES)


def test_unrepeatable_and_polled_are_declared_where_they_apply() -> None:
    def recv(self: Any, m: Ack, step: Any) -> Any: ...

    receive = transition(source=Collecting, target=Dealt, action="recv", message=Ack,
                         peer="bs")(recv)
    with pytest.raises(TypeError, match="above the @transition of a send"):
        unrepeatable(record="x.y")(receive)
    with pytest.raises(TypeError, match="above a gather"):
        polled(receive)
    with pytest.raises(TypeError, match="above the @transition"):
        unrepeatable(record="x.y")(recv)  # below @transition: nothing declared yet


def test_a_draw_outside_an_unrepeatable_transition_is_refused() -> None:
    from tests.unit.test_kit import INITIATOR, _start

    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    with pytest.raises(eng.DriverError, match="outside a transition declared @unrepeatable"):
        Step(d, now=1.0).draw(_draw)
