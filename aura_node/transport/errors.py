"""Transport errors: each with a stable ``code`` (logged, shown by ``ctl peers``).

Handshake refusals are sent to the peer (preface refusal or ``HelloReject``) with the same code
and message, so both sides log the same reason.
"""

from __future__ import annotations

from aura_node.errors import FrameError, HandshakeError, TransportError


class FrameTooLargeError(FrameError):
    code = "frame_too_large"


class UnexpectedFrameError(FrameError):
    code = "unexpected_frame"


class PrefaceError(HandshakeError):
    """The cleartext preface before TLS was not ours (wrong magic/version/kind/length)."""

    code = "bad_preface"


class UnknownPeerError(HandshakeError):
    code = "unknown_peer"


class PeerKeyMismatchError(HandshakeError):
    code = "peer_key_mismatch"


class TlsHandshakeError(HandshakeError):
    code = "tls_failed"


class ProtocolVersionError(HandshakeError):
    code = "protocol_version_mismatch"


class RegistryMismatchError(HandshakeError):
    code = "registry_mismatch"


class PeerRefusedError(HandshakeError):
    """The peer refused us; ``peer_code`` is the code it sent."""

    code = "refused_by_peer"

    def __init__(self, message: str, *, peer_code: str) -> None:
        super().__init__(message)
        self.peer_code = peer_code


class LinkTimeoutError(TransportError):
    code = "link_timeout"


class LinkBrokenError(TransportError):
    code = "link_broken"


class PeerClosedError(TransportError):
    code = "peer_closed"


class UnknownPeerNameError(TransportError):
    """Local: ``send`` to a name that is not pinned."""

    code = "no_such_peer"


class ListenError(TransportError):
    """The node cannot listen for peers on ``[node] listen`` (port in use, no such address)."""

    code = "listen_failed"


class HandshakeEvictedError(HandshakeError):
    """An inbound handshake cancelled to make room (``transport.admission``)."""

    code = "handshake_evicted"
