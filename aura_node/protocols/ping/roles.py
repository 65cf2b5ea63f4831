"""The ping protocol's role machines (typestate) and their runtime drivers.

Theory of operation
-------------------
``ping`` proves the runtime end to end before the real protocols exist: the initiator sends
``Ping(nonce)``, the responder answers ``Pong(nonce)`` with the same nonce, the initiator
measures the round trip. Each role is a typestate class (``aura_node.session``) whose
transitions declare the message they send or receive, so a unit test checks them against the
projected local types of ``aura_node/protocols/ping/choreography.py``:

    PingInitiator:  Probing --send Ping--> AwaitingPong --recv Pong--> Completed
                                           AwaitingPong --timeout----> Failed
    PingResponder:  AwaitingPing --recv Ping--> Answering --send Pong--> Completed

plus, from every non-final phase, ``abort`` (this side gives up) and ``recv PingAbort`` (the
peer gave up) to Failed: the choreography's implicit abort edges. The runtime sends and
receives the abort message itself and tells the driver through ``on_abort``.

The drivers (:class:`PingInitiatorDriver`, :class:`PingResponderDriver`) adapt the typestate
values to the engine interface: inputs in, effects out. The nonce comes from the start input's
entropy (journaled in ``session.start``), so a rehydrated initiator knows the nonce it sent.

Rehydration (pure folds over the session's journal records, conservative):

* initiator: ``session.start`` + ``msg.out Ping`` proves AwaitingPong (the runtime re-sends the
  journaled Ping and re-arms the journaled deadline); a start without the Ping proves nothing
  (None: the runtime aborts the session). A journaled Pong means the session ended and the
  runtime does not ask.
* responder: ``msg.in Ping`` without ``msg.out Pong`` proves Answering, and :meth:`resume`
  sends the Pong (none was journaled, so this is not a second, different answer);
  with ``msg.out Pong`` it is Completed (the runtime re-sends the journaled Pong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self, TypeVar, final

from aura_node.errors import RemoteProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.ping.choreography import Ping, PingAbort, Pong
from aura_node.protocols.services import NodeServices
from aura_node.session.rehydrate import PhaseOrder
from aura_node.session.typestate import ChoreographicProtocol, Phase, phase_of, transition

S = TypeVar("S")

NONCE_BYTES = 16
DEFAULT_TIMEOUT = 10.0
DEADLINE_TIMER = "deadline"


class PingChoreography:
    """Choreography marker type (the ``C`` of ``ChoreographicProtocol[C, S]``)."""


# --- phases (named as the choreography labels them) ----------------------------------------


@final
class Probing(Phase):
    """Initiator: nonce drawn, Ping not sent yet."""


@final
class AwaitingPong(Phase):
    """Initiator: Ping sent (journaled), waiting for the Pong or the deadline."""


@final
class AwaitingPing(Phase):
    """Responder: waiting for the Ping that opened the session."""


@final
class Answering(Phase):
    """Responder: Ping received, Pong not sent yet."""


@final
class Completed(Phase):
    """Both roles: the exchange is done (terminal)."""


@final
class Failed(Phase):
    """Both roles: aborted - a deadline passed, this side gave up, or the peer aborted
    (terminal; the choreography's abort phase)."""


INITIATOR_ORDER = PhaseOrder((Probing, AwaitingPong, Completed), frozenset({Failed}))
RESPONDER_ORDER = PhaseOrder((AwaitingPing, Answering, Completed), frozenset({Failed}))


# --- typestate role machines ------------------------------------------------------------------


@final
class PingInitiator(
    ChoreographicProtocol[PingChoreography, S],
    choreography="ping",
    role="initiator",
    initial=Probing,
):
    session_id: str
    nonce: bytes
    sent_at: float
    answered_at: float

    def __init__(self: PingInitiator[Probing], *, session_id: str, nonce: bytes) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"ping nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
        self._begin(session_id=session_id, nonce=nonce, sent_at=0.0, answered_at=0.0)

    @transition(source=Probing, target=AwaitingPong, action="send", message=Ping,
                peer="responder")
    def send_ping(self: PingInitiator[Probing], now: float
                  ) -> tuple[PingInitiator[AwaitingPong], Ping]:
        return self._advance(PingInitiator[AwaitingPong], sent_at=now), Ping(nonce=self.nonce)

    @transition(source=AwaitingPong, target=Completed, action="recv", message=Pong,
                peer="responder")
    def receive_pong(self: PingInitiator[AwaitingPong], pong: Pong, now: float
                     ) -> PingInitiator[Completed]:
        if pong.nonce != self.nonce:
            # the value stays live: a wrong Pong is the peer's error
            raise RemoteProtocolError(
                f"Pong in session {self.session_id} echoes nonce {pong.nonce.hex()[:32]}, "
                f"expected {self.nonce.hex()}"
            )
        return self._advance(PingInitiator[Completed], answered_at=now)

    @transition(source=AwaitingPong, target=Failed, action="timeout")
    def time_out(self: PingInitiator[AwaitingPong]) -> PingInitiator[Failed]:
        return self._advance(PingInitiator[Failed])

    @transition(source=Probing, target=Failed, action="abort")
    def abort_probing(self: PingInitiator[Probing]) -> PingInitiator[Failed]:
        return self._advance(PingInitiator[Failed])

    @transition(source=AwaitingPong, target=Failed, action="abort")
    def abort_waiting(self: PingInitiator[AwaitingPong]) -> PingInitiator[Failed]:
        return self._advance(PingInitiator[Failed])

    @transition(source=Probing, target=Failed, action="recv", message=PingAbort,
                peer="responder")
    def peer_aborted_probing(self: PingInitiator[Probing], _msg: PingAbort
                             ) -> PingInitiator[Failed]:
        return self._advance(PingInitiator[Failed])

    @transition(source=AwaitingPong, target=Failed, action="recv", message=PingAbort,
                peer="responder")
    def peer_aborted_waiting(self: PingInitiator[AwaitingPong], _msg: PingAbort
                             ) -> PingInitiator[Failed]:
        return self._advance(PingInitiator[Failed])


@final
class PingResponder(
    ChoreographicProtocol[PingChoreography, S],
    choreography="ping",
    role="responder",
    initial=AwaitingPing,
):
    session_id: str
    nonce: bytes

    def __init__(self: PingResponder[AwaitingPing], *, session_id: str) -> None:
        self._begin(session_id=session_id, nonce=b"")

    @transition(source=AwaitingPing, target=Answering, action="recv", message=Ping,
                peer="initiator")
    def receive_ping(self: PingResponder[AwaitingPing], ping: Ping) -> PingResponder[Answering]:
        return self._advance(PingResponder[Answering], nonce=ping.nonce)

    @transition(source=Answering, target=Completed, action="send", message=Pong,
                peer="initiator")
    def send_pong(self: PingResponder[Answering]) -> tuple[PingResponder[Completed], Pong]:
        return self._advance(PingResponder[Completed]), Pong(nonce=self.nonce)

    @transition(source=AwaitingPing, target=Failed, action="abort")
    def abort_waiting(self: PingResponder[AwaitingPing]) -> PingResponder[Failed]:
        return self._advance(PingResponder[Failed])

    @transition(source=Answering, target=Failed, action="abort")
    def abort_answering(self: PingResponder[Answering]) -> PingResponder[Failed]:
        return self._advance(PingResponder[Failed])

    @transition(source=AwaitingPing, target=Failed, action="recv", message=PingAbort,
                peer="initiator")
    def peer_aborted_waiting(self: PingResponder[AwaitingPing], _msg: PingAbort
                             ) -> PingResponder[Failed]:
        return self._advance(PingResponder[Failed])

    @transition(source=Answering, target=Failed, action="recv", message=PingAbort,
                peer="initiator")
    def peer_aborted_answering(self: PingResponder[Answering], _msg: PingAbort
                               ) -> PingResponder[Failed]:
        return self._advance(PingResponder[Failed])


# --- drivers --------------------------------------------------------------------------------------


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - {"timeout"})
    if unknown:
        raise eng.ParamsError(f"ping takes only 'timeout', got {unknown}")
    timeout = params.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise eng.ParamsError(f"ping timeout must be a positive number, got {timeout!r}")
    return {"timeout": float(timeout)}


def _peer_with_role(roles: Mapping[str, str], role: str) -> str:
    names = [n for n, r in roles.items() if r == role]
    if len(names) != 1:
        raise eng.ParamsError(f"ping needs exactly one {role}, got {names}")
    return names[0]


class PingInitiatorDriver(eng.ProtocolDriver):
    choreography = "ping"
    role = "initiator"

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: PingInitiator[Any] | None = None
        self._roles: dict[str, str] = {}
        self._peer = ""
        self._timeout = DEFAULT_TIMEOUT

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._roles = dict(inp.roles)
        self._peer = _peer_with_role(inp.roles, "responder")
        self._timeout = float(inp.params.get("timeout", DEFAULT_TIMEOUT))
        ready = PingInitiator(session_id=inp.session, nonce=inp.entropy[:NONCE_BYTES])
        self._state, ping = ready.send_ping(inp.now)
        return [
            eng.Send(to=(self._peer,), message=ping),
            eng.ArmTimer(name=DEADLINE_TIMER, deadline=inp.now + self._timeout),
        ]

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        assert self._state is not None and isinstance(inp.message, Pong)
        self._state = self._state.receive_pong(inp.message, inp.now)
        rtt = (self._state.answered_at - self._state.sent_at) * 1000.0
        return [
            eng.CancelTimer(name=DEADLINE_TIMER),
            eng.Complete(result={"peer": self._peer, "rtt_ms": round(rtt, 3)}),
        ]

    def on_timer(self, inp: eng.TimerFired) -> list[eng.Effect]:
        assert self._state is not None
        state = self._state
        if phase_of(state) is not AwaitingPong:
            return []  # already over (a stale timer): nothing to do
        self._state = state.time_out()
        return [eng.Fail(code="timeout",
                         reason=f"no Pong from {self._peer} within {self._timeout:g} s")]

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        st = self._state
        if st is None:
            return
        phase = phase_of(st)
        abort = PingAbort(reason=reason)
        if phase is Probing:
            self._state = (st.peer_aborted_probing(abort) if by_peer else st.abort_probing())
        elif phase is AwaitingPong:
            self._state = (st.peer_aborted_waiting(abort) if by_peer else st.abort_waiting())

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"phase": phase, "peer": self._peer, "timeout": self._timeout}

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        start: eng.Start | None = None
        ping: Ping | None = None
        for ev in eng.parse_evidence(evidence):
            if isinstance(ev, eng.Started):
                start = ev.start
            elif isinstance(ev, eng.Sent) and ev.envelope.step == "Ping":
                ping = eng.decode_message(ev.envelope, Ping)
        if start is None or ping is None:
            return None  # no durable Ping: nothing was promised, the runtime aborts
        if ping.nonce != start.entropy[:NONCE_BYTES]:
            return None  # evidence contradicts itself: refuse to guess
        drv = cls(services)
        drv._roles = dict(start.roles)
        drv._peer = _peer_with_role(start.roles, "responder")
        drv._timeout = float(start.params.get("timeout", DEFAULT_TIMEOUT))
        # AwaitingPong, with the journaled send time; a Pong would have ended the session
        drv._state = PingInitiator._restore(
            PingInitiator[AwaitingPong], session_id=start.session, nonce=ping.nonce,
            sent_at=start.now, answered_at=0.0,
        )
        return drv


class PingResponderDriver(eng.ProtocolDriver):
    choreography = "ping"
    role = "responder"

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._state: PingResponder[Any] | None = None
        self._roles: dict[str, str] = {}
        self._peer = ""

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._roles = dict(inp.roles)
        self._peer = _peer_with_role(inp.roles, "initiator")
        self._state = PingResponder(session_id=inp.session)
        return []

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        assert self._state is not None and isinstance(inp.message, Ping)
        self._state = self._state.receive_ping(inp.message)
        return self._reply()

    def _reply(self) -> list[eng.Effect]:
        assert self._state is not None
        self._state, pong = self._state.send_pong()
        return [eng.Send(to=(self._peer,), message=pong), eng.Complete(result={})]

    def resume(self, now: float) -> list[eng.Effect]:
        if self._state is not None and phase_of(self._state) is Answering:
            return self._reply()
        return []

    def on_abort(self, reason: str, *, by_peer: str | None) -> None:
        st = self._state
        if st is None:
            return
        phase = phase_of(st)
        abort = PingAbort(reason=reason)
        if phase is AwaitingPing:
            self._state = (st.peer_aborted_waiting(abort) if by_peer else st.abort_waiting())
        elif phase is Answering:
            self._state = (st.peer_aborted_answering(abort) if by_peer
                           else st.abort_answering())

    def status(self) -> dict[str, Any]:
        phase = "Starting" if self._state is None else phase_of(self._state).__name__
        return {"phase": phase, "peer": self._peer}

    @property
    def is_final(self) -> bool:
        return self._state is not None and phase_of(self._state) in (Completed, Failed)

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        start: eng.Start | None = None
        ping: Ping | None = None
        pong_sent = False
        for ev in eng.parse_evidence(evidence):
            if isinstance(ev, eng.Started):
                start = ev.start
            elif isinstance(ev, eng.Received) and ev.envelope.step == "Ping" and ping is None:
                ping = eng.decode_message(ev.envelope, Ping)
            elif isinstance(ev, eng.Sent) and ev.envelope.step == "Pong":
                pong_sent = ping is not None
        if start is None:
            return None
        drv = cls(services)
        drv._roles = dict(start.roles)
        drv._peer = _peer_with_role(start.roles, "initiator")
        if ping is None:
            drv._state = PingResponder(session_id=start.session)
        elif pong_sent:
            drv._state = PingResponder._restore(
                PingResponder[Completed], session_id=start.session, nonce=ping.nonce)
        else:
            drv._state = PingResponder._restore(
                PingResponder[Answering], session_id=start.session, nonce=ping.nonce)
        return drv


SPEC = eng.register_protocol(
    eng.ProtocolSpec(
        choreography="ping",
        drivers={"initiator": PingInitiatorDriver, "responder": PingResponderDriver},
        message_types={"Ping": Ping, "Pong": Pong, "PingAbort": PingAbort},
        openers={"Ping": eng.Opener(sender_role="initiator", role="responder")},
        initiator_role="initiator",
        validate_params=validate_params,
    )
)
