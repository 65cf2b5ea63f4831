"""The ping protocol's roles, written on the authoring kit (``aura_node.protocols.kit``).

The initiator sends ``Ping(nonce)`` (the nonce drawn from the session's journaled entropy, so a
replay after a crash sends the same Ping), the responder echoes it in ``Pong``, the initiator
measures the round trip. Every input reaches the transition its declaration names; abort edges
come from ``abort=Failed``; rehydration is the kit's deterministic replay.
"""

from __future__ import annotations

from typing import Annotated, TypeVar, final

import msgspec

from aura_node.kit import RemoteProtocolError, Step, protocol
from aura_node.protocols.ping.choreography import PING, Ping, Pong
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

S = TypeVar("S")


class PingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class PingChoreography:
    """Choreography marker type (the ``C`` of ``ChoreographicProtocol[C, S]``)."""


@final
class Probing(Phase): ...
@final
class AwaitingPong(Phase): ...
@final
class AwaitingPing(Phase): ...
@final
class Answering(Phase): ...
@final
class Completed(Phase): ...
@final
class Failed(Phase): ...


@final
class PingInitiator(ChoreographicProtocol[PingChoreography, S], choreography="ping",
                    role="initiator", initial=Probing, abort=Failed):
    nonce: bytes
    sent_at: float

    def __init__(self: PingInitiator[Probing], step: Step[PingParams]) -> None:
        self._begin(nonce=step.random(16, "nonce"), sent_at=step.now)

    @transition(source=Probing, target=AwaitingPong, action="send", message=Ping,
                peer="responder")
    def send_ping(self: PingInitiator[Probing], step: Step[PingParams]
                  ) -> tuple[PingInitiator[AwaitingPong], Ping]:
        step.arm("deadline", at=step.now + step.params.timeout)
        return self._advance(PingInitiator[AwaitingPong]), Ping(nonce=self.nonce)

    @transition(source=AwaitingPong, target=Completed, action="recv", message=Pong,
                peer="responder")
    def receive_pong(self: PingInitiator[AwaitingPong], pong: Pong, step: Step[PingParams]
                     ) -> PingInitiator[Completed]:
        if pong.nonce != self.nonce:
            raise RemoteProtocolError(f"Pong echoes nonce {pong.nonce.hex()[:32]}, "
                                      f"expected {self.nonce.hex()}")
        step.cancel("deadline")
        step.complete(peer=step.sender, rtt_ms=round((step.now - self.sent_at) * 1000.0, 3))
        return self._advance(PingInitiator[Completed])

    @transition(source=AwaitingPong, target=Failed, action="timeout")
    def time_out(self: PingInitiator[AwaitingPong], step: Step[PingParams]
                 ) -> PingInitiator[Failed]:
        step.fail("timeout", f"no Pong from {step.the('responder')} within "
                             f"{step.params.timeout:g} s")
        return self._advance(PingInitiator[Failed])


@final
class PingResponder(ChoreographicProtocol[PingChoreography, S], choreography="ping",
                    role="responder", initial=AwaitingPing, abort=Failed):
    nonce: bytes

    def __init__(self: PingResponder[AwaitingPing], step: Step[PingParams]) -> None:
        self._begin(nonce=b"")

    @transition(source=AwaitingPing, target=Answering, action="recv", message=Ping,
                peer="initiator")
    def receive_ping(self: PingResponder[AwaitingPing], ping: Ping, step: Step[PingParams]
                     ) -> PingResponder[Answering]:
        return self._advance(PingResponder[Answering], nonce=ping.nonce)

    @transition(source=Answering, target=Completed, action="send", message=Pong,
                peer="initiator")
    def send_pong(self: PingResponder[Answering], step: Step[PingParams]
                  ) -> tuple[PingResponder[Completed], Pong]:
        return self._advance(PingResponder[Completed]), Pong(nonce=self.nonce)


PROTOCOL = protocol(PING, PingInitiator, PingResponder, params=PingParams)
SPEC = PROTOCOL.spec
