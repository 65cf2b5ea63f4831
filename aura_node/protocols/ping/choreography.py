"""The ping choreography: ``initiator -> responder: Ping``, ``responder -> initiator: Pong``.

The initiator's wait for the pong is bounded by ``ping_timeout``; when it passes the
initiator aborts (and tells the responder).
"""

from __future__ import annotations

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


class Pong(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


class PingAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("ping", abort=PingAbort)
def PING(c: ChoreographyBuilder) -> None:
    initiator = c.role("initiator")
    responder = c.role("responder")
    c.phase(initiator, "Probing")
    c.phase(responder, "AwaitingPing")
    c.send(initiator, responder, Ping)
    c.phase(initiator, "AwaitingPong")
    c.phase(responder, "Answering")
    c.send(responder, initiator, Pong, deadline="ping_timeout")
    c.phase(initiator, "Completed")
    c.phase(responder, "Completed")
