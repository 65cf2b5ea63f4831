"""Peer links: pinned mutual TLS 1.3, hello, framing, per-peer queues (see DESIGN.md "Transport").

The runtime uses :class:`PeerNetwork` and :class:`InboundData` only; the other modules are the
pieces it is built from (``framing`` and ``preface`` are sans-IO, ``tls`` builds identities and
contexts, ``handshake`` and ``link`` are the Trio shell).
"""

from aura_node.transport.link import InboundData
from aura_node.transport.peers import PeerNetwork

__all__ = ["InboundData", "PeerNetwork"]
