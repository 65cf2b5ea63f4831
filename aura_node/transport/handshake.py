"""Link establishment (Trio): preface, TLS 1.3 with a pinned trust store, then Hello/HelloAck.

Theory of operation
-------------------
A connection becomes a link in three steps, all under the caller's ``trio.fail_after``:

1. **Preface** (cleartext, :mod:`aura_node.transport.preface`): the dialer shows its
   certificate; the acceptor refuses unless its key is pinned, else shows its own; the dialer
   refuses unless that key is the pin of the peer it meant to dial, else sends ACCEPT.
2. **TLS 1.3**, mutual, each side trusting exactly the certificate it was shown; afterwards the
   key of the certificate TLS verified is compared with the pin again (belt and braces: the
   preface is unauthenticated).
3. **Hello**: TLS 1.3 reports a refused client certificate only at the first read, so a link is
   up only after ``Hello`` -> ``HelloAck``, which also checks the protocol version and the device
   id, and tells each side the choreography versions the other holds (kept in
   :class:`Established`; the session layer decides per choreography whether a session may
   run, so a node that upgraded one protocol still links with every peer). A refusal is sent
   to the peer as ``HelloReject`` carrying the same code and message.

The hellos also exchange journal checkpoints (rollback detection, ``journal.witness``): each
side sends its own newest one and the newest one of the other side's journal it holds, taken
from ``LocalIdentity.checkpoints`` *before* it reads the other's hello, so what it presents is
never the value it just received. ``Established`` hands the peer's two on, unjudged.

Every refusal raises a :class:`~aura_node.errors.HandshakeError` subclass with a code; the
caller logs it and closes the stream.

The acceptor's link is up as soon as it has sent ``HelloAck``, while the dialer still waits
for it. So the dialer side is split in two (:func:`dial_tls`, then :func:`dial_hello`): from
the moment ``Hello`` may be on the wire the dialer holds the TLS stream and ends a failed or
cancelled attempt with ``Close`` like an established link, and the acceptor logs the real
reason instead of a bare EOF on a link it believed up. An acceptor that reads ``Close`` where
the ``Hello`` belongs reports the dialer's code and reason.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from aura_node import PROTOCOL_VERSION
from aura_node.crypto.keys import device_id_for
from aura_node.errors import HandshakeError, TransportError
from aura_node.transport import preface, tls
from aura_node.transport.errors import (
    PeerClosedError,
    PeerKeyMismatchError,
    PeerRefusedError,
    ProtocolVersionError,
    TlsHandshakeError,
    UnexpectedFrameError,
    UnknownPeerError,
)
from aura_node.transport.framing import (
    ChoreographyVersion,
    Close,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Hello,
    HelloAck,
    HelloReject,
)

LinkStream = trio.SSLStream[trio.SocketStream]


@dataclass(frozen=True, slots=True, kw_only=True)
class PinnedPeer:
    """What the handshake needs to know about a pinned peer."""

    name: str
    public_key: bytes
    device_id: str


class CheckpointSource(Protocol):
    """Journal checkpoints a hello carries (encoded; ``b""`` for none)."""

    def own(self) -> bytes:
        """Our newest signed journal checkpoint."""
        ...

    def held_for(self, device_id: str) -> bytes:
        """The newest checkpoint of that peer's journal we hold."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalIdentity:
    node_name: str
    device_id: str
    tls: tls.TlsIdentity
    #: every choreography version this node can take part in (sent in the hello)
    choreographies: tuple[ChoreographyVersion, ...]
    max_frame_bytes: int
    checkpoints: CheckpointSource | None = None

    def hello_checkpoints(self, peer: PinnedPeer) -> tuple[bytes, bytes]:
        """(ours, the newest of ``peer``'s we hold) for a hello to ``peer``."""
        if self.checkpoints is None:
            return b"", b""
        return self.checkpoints.own(), self.checkpoints.held_for(peer.device_id)


@dataclass(slots=True, kw_only=True)
class Established:
    """A connection that passed the handshake: a link ready to carry Data frames."""

    stream: LinkStream
    peer: PinnedPeer
    #: device id of the side that dialed (duplicate-link resolution keys on it)
    dialer_device_id: str
    #: holds any frames the peer sent right after its HelloAck
    decoder: FrameDecoder
    #: the choreography versions the peer's hello says it holds
    peer_choreographies: tuple[ChoreographyVersion, ...] = ()
    #: from the peer's hello: its newest checkpoint, and the newest of ours it holds
    peer_checkpoint: bytes = b""
    your_checkpoint: bytes = b""


async def _receive_exactly(stream: trio.SocketStream, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        # Never read past the preface: the bytes after it belong to TLS.
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise PeerClosedError(
                f"peer closed the connection during the {what} (got {len(buf)} of {n} bytes)"
            )
        buf += chunk
    return bytes(buf)


async def _read_preface(
    stream: trio.SocketStream, expect: tuple[preface.Kind, ...]
) -> tuple[preface.Kind, bytes]:
    header = preface.parse_header(
        await _receive_exactly(stream, preface.HEADER_BYTES, "preface header"), expect=expect
    )
    body = await _receive_exactly(stream, header.length, "preface body") if header.length else b""
    return header.kind, body


async def _refuse_preface(stream: trio.SocketStream, error: HandshakeError) -> None:
    # Best effort: the refused side logs the same reason; a dead socket changes nothing.
    try:
        await stream.send_all(preface.encode_refuse(error.code, error.message))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _peer_refused(who: str, refusal: preface.Refusal) -> PeerRefusedError:
    return PeerRefusedError(
        f"{who} refused the connection: [{refusal.code}] {refusal.reason}",
        peer_code=refusal.code,
    )


async def _tls(
    transport: trio.SocketStream, ctx: ssl.SSLContext, *, server_side: bool, peer: PinnedPeer
) -> LinkStream:
    stream = trio.SSLStream(transport, ctx, server_side=server_side)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        raise TlsHandshakeError(f"TLS handshake with peer {peer.name} failed: {cause}") from None
    der = stream.getpeercert(binary_form=True)
    if der is None:
        raise TlsHandshakeError(f"peer {peer.name} presented no certificate in TLS")
    got = tls.certificate_public_key(der)
    if got != peer.public_key:
        raise PeerKeyMismatchError(
            f"peer {peer.name}: TLS certificate key {got.hex()} is not the pinned key "
            f"{peer.public_key.hex()}"
        )
    return stream


async def _read_frame(stream: LinkStream, decoder: FrameDecoder, what: str) -> Frame:
    while (frame := decoder.next_frame()) is None:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__ or exc
            # TLS 1.3: a client certificate the server refused surfaces here, not earlier.
            raise TlsHandshakeError(f"link broke while waiting for the {what}: {cause}") from None
        if not data:
            raise PeerClosedError(f"peer closed the connection while we waited for the {what}")
        decoder.feed(data)
    return frame


def _check_hello(local: LocalIdentity, peer: PinnedPeer, hello: Hello | HelloAck) -> None:
    if hello.version != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"protocol version mismatch: {local.node_name} speaks {PROTOCOL_VERSION}, "
            f"peer {peer.name} speaks {hello.version}"
        )
    if hello.device_id != peer.device_id:
        raise PeerKeyMismatchError(
            f"peer {peer.name} claims device id {hello.device_id}, "
            f"its pinned key gives {peer.device_id}"
        )


async def dial_handshake(
    transport: trio.SocketStream, *, local: LocalIdentity, peer: PinnedPeer
) -> Established:
    """Turn a connection we dialed to ``peer`` into a link, or raise ``HandshakeError``."""
    stream = await dial_tls(transport, local=local, peer=peer)
    return await dial_hello(stream, local=local, peer=peer)


async def dial_tls(
    transport: trio.SocketStream, *, local: LocalIdentity, peer: PinnedPeer
) -> LinkStream:
    """Dialer steps 1 and 2: preface and TLS with ``peer``; raises ``HandshakeError``."""
    await transport.send_all(preface.encode_certificate(local.tls.certificate_der))
    kind, body = await _read_preface(transport, (preface.Kind.CERT, preface.Kind.REFUSE))
    if kind is preface.Kind.REFUSE:
        raise _peer_refused(f"peer {peer.name}", preface.parse_refusal(body))
    try:
        got = tls.certificate_public_key(body)
        if got != peer.public_key:
            raise PeerKeyMismatchError(
                f"peer {peer.name} at its address presented key {got.hex()} "
                f"(device {device_id_for(got)}), but the pinned key is {peer.public_key.hex()}"
            )
        ctx = tls.client_context(local.tls, body)
    except HandshakeError as exc:
        await _refuse_preface(transport, exc)
        raise
    # ACCEPT and the ClientHello leave together: no extra round trip.
    await transport.send_all(preface.encode_accept())
    return await _tls(transport, ctx, server_side=False, peer=peer)


async def dial_hello(stream: LinkStream, *, local: LocalIdentity, peer: PinnedPeer) -> Established:
    """Dialer step 3: ``Hello`` -> ``HelloAck``; raises ``HandshakeError``.

    Once this has started, the peer may already run the link (it sends ``HelloAck`` and goes
    live): a caller that abandons it should send ``Close`` on ``stream``, not just close it.
    """
    decoder = FrameDecoder(max_frame_bytes=local.max_frame_bytes)
    encoder = FrameEncoder(max_frame_bytes=local.max_frame_bytes)
    ours, held = local.hello_checkpoints(peer)
    await stream.send_all(
        encoder.encode(
            Hello(
                version=PROTOCOL_VERSION,
                device_id=local.device_id,
                node_name=local.node_name,
                choreographies=local.choreographies,
                checkpoint=ours,
                your_checkpoint=held,
            )
        )
    )
    reply = await _read_frame(stream, decoder, "HelloAck")
    if isinstance(reply, HelloReject):
        raise PeerRefusedError(
            f"peer {peer.name} refused the link: [{reply.code}] {reply.reason}",
            peer_code=reply.code,
        )
    if not isinstance(reply, HelloAck):
        raise UnexpectedFrameError(
            f"expected HelloAck or HelloReject from peer {peer.name}, got {type(reply).__name__}"
        )
    _check_hello(local, peer, reply)
    return Established(stream=stream, peer=peer, dialer_device_id=local.device_id, decoder=decoder,
                       peer_checkpoint=reply.checkpoint, your_checkpoint=reply.your_checkpoint,
                       peer_choreographies=reply.choreographies)


async def accept_handshake(
    transport: trio.SocketStream,
    *,
    local: LocalIdentity,
    lookup: Callable[[bytes], PinnedPeer | None],
) -> Established:
    """Turn an accepted connection into a link, or raise ``HandshakeError``.

    ``lookup`` maps a raw public key to the pinned peer, or ``None`` when it is not pinned.
    """
    _, body = await _read_preface(transport, (preface.Kind.CERT,))
    try:
        key = tls.certificate_public_key(body)
        peer = lookup(key)
        if peer is None:
            raise UnknownPeerError(
                f"unknown peer: public key {key.hex()} (device {device_id_for(key)}) "
                f"is not pinned by {local.node_name}"
            )
        ctx = tls.server_context(local.tls, body)
    except HandshakeError as exc:
        await _refuse_preface(transport, exc)
        raise
    await transport.send_all(preface.encode_certificate(local.tls.certificate_der))
    kind, refusal = await _read_preface(transport, (preface.Kind.ACCEPT, preface.Kind.REFUSE))
    if kind is preface.Kind.REFUSE:
        raise _peer_refused(f"dialing peer {peer.name}", preface.parse_refusal(refusal))
    stream = await _tls(transport, ctx, server_side=True, peer=peer)
    decoder = FrameDecoder(max_frame_bytes=local.max_frame_bytes)
    encoder = FrameEncoder(max_frame_bytes=local.max_frame_bytes)
    ours, held = local.hello_checkpoints(peer)
    hello = await _read_frame(stream, decoder, "Hello")
    if isinstance(hello, Close):
        # The dialer gave up after TLS (stopping, or its own deadline) and said why.
        raise PeerClosedError(
            f"peer {peer.name} ended the connection before its Hello: [{hello.code}] {hello.reason}"
        )
    try:
        if not isinstance(hello, Hello):
            raise UnexpectedFrameError(
                f"expected Hello from peer {peer.name}, got {type(hello).__name__}"
            )
        _check_hello(local, peer, hello)
    except TransportError as exc:
        try:
            await stream.send_all(
                encoder.encode(HelloReject(code=exc.code, reason=exc.message[:4096]))
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        raise
    await stream.send_all(
        encoder.encode(
            HelloAck(
                version=PROTOCOL_VERSION,
                device_id=local.device_id,
                node_name=local.node_name,
                choreographies=local.choreographies,
                checkpoint=ours,
                your_checkpoint=held,
            )
        )
    )
    return Established(stream=stream, peer=peer, dialer_device_id=peer.device_id, decoder=decoder,
                       peer_checkpoint=hello.checkpoint, your_checkpoint=hello.your_checkpoint,
                       peer_choreographies=hello.choreographies)
