"""Peer links: pinned mutual TLS 1.3, hello, framing, per-peer queues (see DESIGN.md "Transport").

The runtime uses :class:`PeerNetwork` and :class:`InboundData` only; the other modules are the
pieces it is built from (``framing``, ``preface`` and ``errors`` are sans-IO and import no
trio, ``tls`` builds identities and contexts, ``handshake``, ``link``, ``queue`` and ``peers``
are the Trio shell). The two names are loaded lazily so that importing the sans-IO modules
does not import trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aura_node.transport.link import InboundData
    from aura_node.transport.peers import PeerNetwork

__all__ = ["InboundData", "PeerNetwork"]


def __getattr__(name: str) -> Any:
    if name == "PeerNetwork":
        from aura_node.transport.peers import PeerNetwork

        return PeerNetwork
    if name == "InboundData":
        from aura_node.transport.link import InboundData

        return InboundData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
