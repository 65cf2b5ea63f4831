"""A one-way ``notice`` protocol for the node benchmark (``aura-node run --plugin`` this module).

``sender -> receiver: Notice`` and the session is over: the smallest protocol in which a
receiving node does everything it does for any inbound message - decode, verify the signature
against the link's pinned key, open a session (monitor projected from the choreography), check
the monitor, hand the message to the driver, journal ``session.start`` + ``msg.in`` +
``session.complete`` in a group commit - and nothing else (no reply to sign). The benchmark
counts these per second against the Ed25519 verify rate of one core.

Loading it registers an extra choreography, so only nodes (and the benchmark's own peer) that
load it link with each other: the registry hash differs from a plain node's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.protocols import engine as eng
from aura_node.protocols.registry import register_choreography
from aura_node.protocols.services import NodeServices


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    payload: bytes


class NoticeAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("bench-notice", abort=NoticeAbort)
def NOTICE(c: ChoreographyBuilder) -> None:
    sender = c.role("sender")
    receiver = c.role("receiver")
    c.phase(sender, "Sending")
    c.phase(receiver, "Waiting")
    c.send(sender, receiver, Notice)
    c.phase(sender, "Done")
    c.phase(receiver, "Done")


class NoticeReceiver(eng.ProtocolDriver):
    choreography = "bench-notice"
    role = "receiver"

    def __init__(self, services: NodeServices) -> None:
        super().__init__(services)
        self._roles: dict[str, str] = {}
        self._done = False

    @property
    def roles(self) -> Mapping[str, str]:
        return self._roles

    def start(self, inp: eng.Start) -> list[eng.Effect]:
        self._roles = dict(inp.roles)
        return []

    def on_message(self, inp: eng.MessageIn) -> list[eng.Effect]:
        self._done = True
        return [eng.Complete(result={})]

    def status(self) -> dict[str, Any]:
        return {"phase": "Done" if self._done else "Waiting"}

    @property
    def is_final(self) -> bool:
        return self._done

    @classmethod
    def rehydrate(cls, evidence: Sequence[eng.EvidenceRecord], services: NodeServices
                  ) -> Self | None:
        started = [e for e in eng.parse_evidence(evidence) if isinstance(e, eng.Started)]
        if not started:
            return None
        d = cls(services)
        d._roles = dict(started[0].start.roles)
        return d


register_choreography(NOTICE)
SPEC = eng.register_protocol(eng.ProtocolSpec(
    choreography="bench-notice",
    drivers={"receiver": NoticeReceiver},
    message_types={"Notice": Notice, "NoticeAbort": NoticeAbort},
    openers={"Notice": eng.Opener(sender_role="sender", role="receiver")},
))
