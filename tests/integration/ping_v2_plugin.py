"""A plugin that upgrades the shipped ping to version 2 (``aura-node run --plugin``).

``AURA_TEST_PING_V2`` selects the upgrade:

``compatible``    ``Ping`` gains an optional field (``note``, default ""): every role's new
                  local type stands in for its old one (the old side decodes the new Ping and
                  ignores the note, the new side decodes the old Ping with the default), so the
                  node advertises ping v1 as well and runs sessions with v1 peers;
``incompatible``  the responder answers ``Echo`` instead of ``Pong``: no role can stand in
                  for its old self, so the node advertises only v2 and sessions with v1 (or
                  compatible v2) peers are refused, naming both versions.

Both are written with the public authoring kit only, like any plugin.
"""

from __future__ import annotations

import os
from typing import TypeVar, final

import msgspec

from aura_node.kit import (
    ChoreographicProtocol,
    ChoreographyBuilder,
    Phase,
    RemoteProtocolError,
    Step,
    choreography,
    protocol,
    transition,
)
from aura_node.protocols.ping.choreography import PingAbort, Pong
from aura_node.protocols.ping.roles import PingParams

S = TypeVar("S")
MODE = os.environ.get("AURA_TEST_PING_V2", "compatible")


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    """Version 2's Ping: v1's fields plus an optional note (wire compatible)."""

    nonce: bytes
    note: str = ""


class Echo(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


@choreography("ping", abort=PingAbort, version=2)
def PING_V2(c: ChoreographyBuilder) -> None:
    initiator = c.role("initiator")
    responder = c.role("responder")
    c.phase(initiator, "Probing")
    c.phase(responder, "AwaitingPing")
    c.send(initiator, responder, Ping)
    c.phase(initiator, "AwaitingPong")
    c.phase(responder, "Answering")
    c.send(responder, initiator, Echo if MODE == "incompatible" else Pong,
           deadline="ping_timeout")
    c.phase(initiator, "Completed")
    c.phase(responder, "Completed")


class PingV2Choreography:
    """Choreography marker type."""


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


Answer: type[Pong] | type[Echo] = Echo if MODE == "incompatible" else Pong


@final
class PingV2Initiator(ChoreographicProtocol[PingV2Choreography, S], choreography="ping",
                      role="initiator", initial=Probing, abort=Failed):
    nonce: bytes

    def __init__(self: PingV2Initiator[Probing], step: Step[PingParams]) -> None:
        self._begin(nonce=step.random(16, "nonce"))

    @transition(source=Probing, target=AwaitingPong, action="send", message=Ping,
                peer="responder")
    def send_ping(self: PingV2Initiator[Probing], step: Step[PingParams]
                  ) -> tuple[PingV2Initiator[AwaitingPong], Ping]:
        step.arm("deadline", at=step.now + step.params.timeout)
        return self._advance(PingV2Initiator[AwaitingPong]), Ping(nonce=self.nonce, note="v2")

    @transition(source=AwaitingPong, target=Completed, action="recv", message=Answer,
                peer="responder")
    def receive_answer(self: PingV2Initiator[AwaitingPong], answer: Pong | Echo,
                       step: Step[PingParams]) -> PingV2Initiator[Completed]:
        if answer.nonce != self.nonce:
            raise RemoteProtocolError("the answer does not echo our nonce")
        step.cancel("deadline")
        step.complete(peer=step.sender, rtt_ms=0.0, version=2)
        return self._advance(PingV2Initiator[Completed])

    @transition(source=AwaitingPong, target=Failed, action="timeout")
    def time_out(self: PingV2Initiator[AwaitingPong], step: Step[PingParams]
                 ) -> PingV2Initiator[Failed]:
        step.fail("timeout", f"no answer from {step.the('responder')}")
        return self._advance(PingV2Initiator[Failed])


@final
class PingV2Responder(ChoreographicProtocol[PingV2Choreography, S], choreography="ping",
                      role="responder", initial=AwaitingPing, abort=Failed):
    nonce: bytes

    def __init__(self: PingV2Responder[AwaitingPing], step: Step[PingParams]) -> None:
        self._begin(nonce=b"")

    @transition(source=AwaitingPing, target=Answering, action="recv", message=Ping,
                peer="initiator")
    def receive_ping(self: PingV2Responder[AwaitingPing], ping: Ping, step: Step[PingParams]
                     ) -> PingV2Responder[Answering]:
        return self._advance(PingV2Responder[Answering], nonce=ping.nonce)

    @transition(source=Answering, target=Completed, action="send", message=Answer,
                peer="initiator")
    def send_answer(self: PingV2Responder[Answering], step: Step[PingParams]
                    ) -> tuple[PingV2Responder[Completed], Pong | Echo]:
        return self._advance(PingV2Responder[Completed]), Answer(nonce=self.nonce)


PROTOCOL = protocol(PING_V2, PingV2Initiator, PingV2Responder, params=PingParams)
