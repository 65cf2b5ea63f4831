"""The kit runs a role that is connected only on some paths (issue 12, optional participants).

A travel agency written with the kit between three in-memory session runtimes (real monitors,
signed envelopes, the kit's dispatch; no sockets): the client asks the agency for a quote and
either accepts, connecting the bank with ``Pay`` (the bank's session opens on that message,
the kit's default opener for its first receive), or rejects, and then the bank is never sent
anything, has no session, and nobody waits for it: the client and the agency complete.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar, final

import msgspec
import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.kit import (
    ChoreographicProtocol,
    ChoreographyBuilder,
    Phase,
    Step,
    choreography,
    protocol,
    transition,
)
from aura_node.protocols.engine import ProtocolSpec
from aura_node.protocols.kit import Decline
from aura_node.protocols.services import NodeServices, PeerInfo
from aura_node.sessions import (
    Outcome,
    PeerDirectory,
    SessionRuntime,
    StartSession,
    Transmit,
    choreography_monitor,
)
from tests.unit.kit_support import registrations_undone

S = TypeVar("S")
NAMES = ("a", "b", "c")  # client, agency, bank
KEYS = {n: DeviceKey.from_seed(n.encode() * 32) for n in NAMES}


class Query(msgspec.Struct, frozen=True, kw_only=True):
    trip: str


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    price: int


class Accept(msgspec.Struct, frozen=True, kw_only=True):
    price: int


class Reject(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


class Pay(msgspec.Struct, frozen=True, kw_only=True):
    amount: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    amount: int


class TravelAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-travel", abort=TravelAbort)
def TRAVEL(c: ChoreographyBuilder) -> None:
    client, agency, bank = c.role("client"), c.role("agency"), c.role("bank")
    c.phase(client, "Asking")
    c.phase(agency, "Listening")
    c.phase(bank, "Idle")
    c.send(client, agency, Query)
    c.phase(agency, "Quoting")
    c.phase(client, "Deciding")
    c.send(agency, client, Quote)
    c.phase(agency, "Waiting")
    with c.choice(client) as ch:
        with ch.branch("accept"):
            c.send(client, agency, Accept)
            c.phase(agency, "Booked")
            c.phase(client, "Paying")
            c.connect(client, bank, Pay)
            c.phase(bank, "Charging")
            c.send(bank, client, Receipt)
            c.phase(client, "Paid")
            c.phase(bank, "Charged")
            c.disconnect(client, bank)
        with ch.branch("reject"):
            c.send(client, agency, Reject)
            c.phase(client, "Declined")
            c.phase(agency, "Declined")


class TravelChoreography:
    """Choreography marker type."""


class TravelParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    accept: bool = True


@final
class Asking(Phase): ...


@final
class Deciding(Phase): ...


@final
class Paying(Phase): ...


@final
class Paid(Phase): ...


@final
class Declined(Phase): ...


@final
class Listening(Phase): ...


@final
class Quoting(Phase): ...


@final
class Waiting(Phase): ...


@final
class Booked(Phase): ...


@final
class Idle(Phase): ...


@final
class Charging(Phase): ...


@final
class Charged(Phase): ...


@final
class Failed(Phase): ...


@final
class Client(
    ChoreographicProtocol[TravelChoreography, S],
    choreography="kit-travel",
    role="client",
    initial=Asking,
    abort=Failed,
):
    price: int

    def __init__(self: Client[Asking], step: Step[TravelParams]) -> None:
        self._begin(price=0)

    @transition(source=Asking, target=Deciding, action="send", message=Query, peer="agency")
    def ask(self: Client[Asking], step: Step[TravelParams]) -> tuple[Client[Deciding], Query]:
        return self._advance(Client[Deciding]), Query(trip="lisbon")

    @transition(source=Deciding, target=Deciding, action="recv", message=Quote, peer="agency")
    def quoted(self: Client[Deciding], q: Quote, step: Step[TravelParams]) -> Client[Deciding]:
        return self._advance(Client[Deciding], price=q.price)

    @transition(source=Deciding, target=Paying, action="send", message=Accept, peer="agency")
    def accept(self: Client[Deciding], step: Step[TravelParams]) -> tuple[Client[Paying], Accept]:
        if not self.price or not step.params.accept:
            raise Decline
        return self._advance(Client[Paying]), Accept(price=self.price)

    @transition(source=Deciding, target=Declined, action="send", message=Reject, peer="agency")
    def reject(self: Client[Deciding], step: Step[TravelParams]) -> tuple[Client[Declined], Reject]:
        if not self.price:
            raise Decline
        step.complete(decision="rejected")
        return self._advance(Client[Declined]), Reject(reason="too dear")

    @transition(source=Paying, target=Paying, action="send", message=Pay, peer="bank")
    def pay(self: Client[Paying], step: Step[TravelParams]) -> tuple[Client[Paying], Pay]:
        return self._advance(Client[Paying]), Pay(amount=self.price)

    @transition(source=Paying, target=Paid, action="recv", message=Receipt, peer="bank")
    def paid(self: Client[Paying], r: Receipt, step: Step[TravelParams]) -> Client[Paid]:
        step.complete(decision="accepted", paid=r.amount)
        return self._advance(Client[Paid])


@final
class Agency(
    ChoreographicProtocol[TravelChoreography, S],
    choreography="kit-travel",
    role="agency",
    initial=Listening,
    abort=Failed,
):
    def __init__(self: Agency[Listening], step: Step[TravelParams]) -> None:
        self._begin()

    @transition(source=Listening, target=Quoting, action="recv", message=Query, peer="client")
    def heard(self: Agency[Listening], q: Query, step: Step[TravelParams]) -> Agency[Quoting]:
        return self._advance(Agency[Quoting])

    @transition(source=Quoting, target=Waiting, action="send", message=Quote, peer="client")
    def quote(self: Agency[Quoting], step: Step[TravelParams]) -> tuple[Agency[Waiting], Quote]:
        return self._advance(Agency[Waiting]), Quote(price=420)

    @transition(source=Waiting, target=Booked, action="recv", message=Accept, peer="client")
    def booked(self: Agency[Waiting], a: Accept, step: Step[TravelParams]) -> Agency[Booked]:
        step.complete(decision="booked")
        return self._advance(Agency[Booked])

    @transition(source=Waiting, target=Declined, action="recv", message=Reject, peer="client")
    def declined(self: Agency[Waiting], r: Reject, step: Step[TravelParams]) -> Agency[Declined]:
        step.complete(decision="declined")
        return self._advance(Agency[Declined])


@final
class Bank(
    ChoreographicProtocol[TravelChoreography, S],
    choreography="kit-travel",
    role="bank",
    initial=Idle,
    abort=Failed,
):
    amount: int

    def __init__(self: Bank[Idle], step: Step[TravelParams]) -> None:
        self._begin(amount=0)

    @transition(source=Idle, target=Charging, action="recv", message=Pay, peer="client")
    def charge(self: Bank[Idle], p: Pay, step: Step[TravelParams]) -> Bank[Charging]:
        return self._advance(Bank[Charging], amount=p.amount)

    @transition(source=Charging, target=Charged, action="send", message=Receipt, peer="client")
    def receipt(self: Bank[Charging], step: Step[TravelParams]) -> tuple[Bank[Charged], Receipt]:
        step.complete(charged=self.amount)
        return self._advance(Bank[Charged]), Receipt(amount=self.amount)


@dataclass(frozen=True)
class Inbound:
    peer_name: str
    device_id: str
    payload: bytes


def _runtime(name: str, spec: ProtocolSpec) -> SessionRuntime:
    others = [n for n in NAMES if n != name]
    return SessionRuntime(
        key=KEYS[name],
        self_name=name,
        peers=PeerDirectory({n: KEYS[n].public for n in others}),
        protocols={"kit-travel": spec},
        monitor_for=choreography_monitor,
        clock=lambda: 1000.0,
        services=NodeServices(
            self_name=name,
            self_role="device",
            device_key=KEYS[name],
            peers={n: PeerInfo(name=n, role="device", public_key=KEYS[n].public) for n in others},
        ),
    )


@pytest.fixture
def runtimes() -> Iterator[dict[str, SessionRuntime]]:
    with registrations_undone():
        proto = protocol(TRAVEL, Client, Agency, Bank, params=TravelParams)
        yield {n: _runtime(n, proto.spec) for n in NAMES}


def _run(rts: dict[str, SessionRuntime], sid: str, *, accept: bool) -> list[str]:
    """Start a session on the client and deliver every frame until none is left; returns the
    receivers of every frame sent, in order."""
    step = rts["a"].handle_command(
        StartSession(
            choreography="kit-travel",
            params={"accept": accept},
            roles={"a": "client", "b": "agency", "c": "bank"},
            session=sid,
            entropy=bytes(32),
            reply=Outcome(),
        )
    )
    frames = deque([("a", step)])
    receivers: list[str] = []
    while frames:
        sender, st = frames.popleft()
        if st is None:
            continue
        for act in st.actions:
            if isinstance(act, Transmit):
                receivers.append(act.peer)
                inbound = Inbound(sender, KEYS[sender].device_id, act.payload)
                frames.append((act.peer, rts[act.peer].handle_inbound(inbound)))
    return receivers


def test_accepting_connects_the_bank_whose_session_opens_on_pay(
    runtimes: dict[str, SessionRuntime],
) -> None:
    sid = "1" * 32
    receivers = _run(runtimes, sid, accept=True)
    assert receivers.count("c") == 1  # only Pay: the release needs no message
    client, agency, bank = (runtimes[n].get(sid) for n in NAMES)
    assert (client.outcome, client.state, client.result) == (
        "completed",
        "Paid",
        {"decision": "accepted", "paid": 420},
    )
    assert (agency.outcome, agency.state) == ("completed", "Booked")
    assert (bank.outcome, bank.state, bank.result) == ("completed", "Charged", {"charged": 420})
    assert bank.opened_by == "a"


def test_rejecting_never_involves_the_bank_and_nobody_waits_for_it(
    runtimes: dict[str, SessionRuntime],
) -> None:
    sid = "2" * 32
    receivers = _run(runtimes, sid, accept=False)
    assert "c" not in receivers
    client, agency = runtimes["a"].get(sid), runtimes["b"].get(sid)
    assert (client.outcome, client.state, client.result) == (
        "completed",
        "Declined",
        {"decision": "rejected"},
    )
    assert (agency.outcome, agency.state) == ("completed", "Declined")
    with pytest.raises(Exception, match="unknown session|no session"):
        runtimes["c"].get(sid)


@final
class EagerBank(
    ChoreographicProtocol[TravelChoreography, S],
    choreography="kit-travel",
    role="bank",
    initial=Idle,
    abort=Failed,
):
    """A bank that sends its receipt before anybody connected it."""

    def __init__(self: EagerBank[Idle], step: Step[TravelParams]) -> None:
        self._begin()

    @transition(source=Idle, target=Charged, action="send", message=Receipt, peer="client")
    def receipt(
        self: EagerBank[Idle], step: Step[TravelParams]
    ) -> tuple[EagerBank[Charged], Receipt]:
        return self._advance(EagerBank[Charged]), Receipt(amount=0)


def test_conformance_says_an_optional_role_starts_on_its_connect_message() -> None:
    from aura_node.session.conformance import ConformanceError, check_conformance

    with pytest.raises(ConformanceError) as exc:
        check_conformance(EagerBank, TRAVEL.project("bank"))
    assert "bank is an optional role: its session starts on a connect message (Pay)" in str(
        exc.value
    )
    check_conformance(Bank, TRAVEL.project("bank"))
