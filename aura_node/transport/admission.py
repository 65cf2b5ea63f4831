"""Which inbound handshakes may hold the node's attention (sans-IO policy).

Theory of operation
-------------------
Every inbound TCP connection runs its handshake under one deadline that starts at accept
(``handshake_timeout_seconds``): nothing waits outside it. What bounds the work an unknown
party can make the node do is this policy, not a queue:

* **Unidentified** connections (accepted, preface certificate not yet read) are at most
  ``max_unidentified``. A newcomer past that evicts the *oldest* unidentified one. A scanner
  or a trickler gains nothing by holding connections open: each newcomer pushes the oldest
  out, and an honest dialer, which sends its preface at once, is identified long before
  ``max_unidentified`` newer connections could push it out. (Queueing newcomers instead let
  300 tricklers keep honest peers waiting ~12 s, outside their deadline: issue 13.)
* Once the preface names a **pinned** key the connection is *identified*: it leaves the
  unidentified pool, so floods of unknown connections can no longer evict it, and it counts
  against its peer's own allowance of ``per_peer`` concurrent handshakes (the preface is not
  proof of the key: TLS is. A party replaying a pinned peer's public certificate competes only
  with that peer's allowance, and again the oldest goes first, so the honest newest dial wins).

The policy holds opaque tickets and says whom to evict; the Trio shell cancels the evicted
connections' scopes (:meth:`aura_node.transport.peers.PeerNetwork._handle_inbound`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

#: unidentified connections in the handshake at once (unauthenticated work is bounded)
MAX_UNIDENTIFIED = 64
#: identified handshakes at once per pinned peer (an honest peer dials one at a time)
PER_PEER = 4


class HandshakeAdmission(Generic[T]):
    """Admission of inbound handshakes: ``admit`` at accept, ``identify`` when the preface
    named a pinned peer, ``release`` when the handshake ended (either way). ``admit`` and
    ``identify`` return the tickets to evict (their handshakes are to be cancelled)."""

    def __init__(self, *, max_unidentified: int = MAX_UNIDENTIFIED,
                 per_peer: int = PER_PEER) -> None:
        if max_unidentified < 1 or per_peer < 1:
            raise ValueError("handshake admission limits must be at least 1")
        self.max_unidentified = max_unidentified
        self.per_peer = per_peer
        self._unidentified: OrderedDict[T, None] = OrderedDict()
        self._identified: dict[str, OrderedDict[T, None]] = {}
        self._peer_of: dict[T, str] = {}

    @property
    def unidentified(self) -> int:
        return len(self._unidentified)

    def identified(self, peer: str) -> int:
        return len(self._identified.get(peer, ()))

    def admit(self, ticket: T) -> list[T]:
        """A new connection; the oldest unidentified ones it displaces."""
        evicted: list[T] = []
        while len(self._unidentified) >= self.max_unidentified:
            victim, _ = self._unidentified.popitem(last=False)
            evicted.append(victim)
        self._unidentified[ticket] = None
        return evicted

    def identify(self, ticket: T, peer: str) -> list[T]:
        """``ticket``'s preface named pinned ``peer``; the oldest handshakes of that peer it
        displaces. A ticket already released or evicted is ignored (returns [])."""
        if ticket not in self._unidentified:
            return []
        del self._unidentified[ticket]
        pool = self._identified.setdefault(peer, OrderedDict())
        evicted: list[T] = []
        while len(pool) >= self.per_peer:
            victim, _ = pool.popitem(last=False)
            del self._peer_of[victim]
            evicted.append(victim)
        pool[ticket] = None
        self._peer_of[ticket] = peer
        return evicted

    def release(self, ticket: T) -> None:
        """The handshake of ``ticket`` ended (done, failed or evicted); idempotent."""
        self._unidentified.pop(ticket, None)
        peer = self._peer_of.pop(ticket, None)
        if peer is not None:
            pool = self._identified[peer]
            pool.pop(ticket, None)
            if not pool:
                del self._identified[peer]
