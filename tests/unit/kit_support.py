"""What the authoring-kit tests share: a device's services, a session id, journal records, a
phase for test choreographies' abort, and undoing the registrations a test makes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import final

import msgspec

from aura_node.crypto.keys import DeviceKey
from aura_node.protocols import engine as eng
from aura_node.protocols import registry
from aura_node.protocols.kit import REGISTERED
from aura_node.protocols.services import NodeServices
from aura_node.session.typestate import Phase
from aura_node.sessions import _monitors as monitors

SID = "ab" * 16
KEY_A = DeviceKey.from_seed(b"a" * 32)
SERVICES = NodeServices(self_name="a", self_role="device", device_key=KEY_A, peers={})
ENTROPY = bytes(range(32))


class HelloChoreo:
    """Choreography marker of the small test roles."""


@final
class Failed(Phase):
    """The abort phase of the test choreographies."""


@dataclass(frozen=True)
class Rec:
    """A journal record as a driver sees it (``engine.EvidenceRecord``)."""

    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def records(*items: tuple[str, msgspec.Struct]) -> list[Rec]:
    return [Rec(seq=i, ts=100.0, session=SID, kind=k, body=eng.encode_body(b))
            for i, (k, b) in enumerate(items)]


@contextmanager
def registrations_undone() -> Iterator[None]:
    """Protocols and choreographies registered inside are unregistered afterwards: the
    process's registry hash stays the shipped one for tests that compare it with a node's."""
    saved = (dict(eng.PROTOCOLS), dict(REGISTERED), dict(registry._PLUGINS),
             dict(registry._OLDER))
    try:
        yield
    finally:
        for table, before in zip(
            (eng.PROTOCOLS, REGISTERED, registry._PLUGINS, registry._OLDER), saved, strict=True
        ):
            table.clear()
            table.update(before)  # type: ignore[attr-defined]
        monitors._project.cache_clear()
        monitors._template.cache_clear()
