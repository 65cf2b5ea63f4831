"""One established peer link (Trio): a reader task and a batching writer task.

Theory of operation
-------------------
A :class:`PeerLink` moves bytes between one TLS stream and the sans-IO codec
(:mod:`aura_node.transport.framing`), in the trio-websocket/hypercorn manner:

* **reader**: ``receive_some`` under an idle deadline (the peer sends a ``Keepalive`` when it
  has nothing else to say, so silence for ``idle_timeout`` means the peer or the path is dead),
  feeds the decoder, and hands every ``Data`` payload to the node's bounded inbound channel
  (``send_nowait`` first: one checkpoint per read, not per frame; when the channel is full
  the reader waits, which stops reading the socket, which is TCP backpressure on the peer).
* **writer**: waits until the link is *active*, then takes everything queued for the peer (up
  to ``BATCH_BYTES``) from its bounded :class:`~aura_node.transport.queue.PayloadQueue`,
  encodes it into one buffer and writes it with a single ``send_all``. Idle for
  ``keepalive_seconds`` -> one ``Keepalive``.

The queue belongs to the peer, not the link: payloads queued while no link is up wait there,
and a replacement link continues from it. Payloads a link had taken but not written when it
broke are lost; the runtime re-sends from its journal and peers treat duplicates idempotently.

Checkpoints. With a :class:`LinkWitness` the writer adds a ``CheckpointNote`` (our newest
journal checkpoint) to a batch when it changed, at most every ``NOTE_SECONDS``, and on idle
keepalives; the reader hands the peer's notes to the witness (rollback detection,
``journal.witness``).

Endings. Anything the peer does wrong (malformed, oversized or unexpected frame, silence,
broken TLS) raises a :class:`~aura_node.errors.TransportError` out of :meth:`PeerLink.run`;
before the socket closes the link sends ``Close(code, reason)`` so the peer can log why. An
orderly end (:meth:`PeerLink.close`, e.g. a duplicate link being superseded) stops the writer,
sends ``Close`` and keeps *reading* until the peer's own ``Close``: frames the peer wrote before
it learned of the close are still delivered, so superseding a link loses nothing.

Every ``Close`` goes out through :func:`send_close`, shielded from cancellation and bounded
by ``CLOSE_GRACE_SECONDS``: a node that stops while one of its links is closing (e.g. right
after superseding a duplicate) must still deliver that ``Close``. Otherwise the peer, which is
draining that link for our ``Close``, sees a bare EOF, or a reset when its own ``Close`` sits
unread in our socket, and logs an orderly end as a fault.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from aura_node.errors import TransportError
from aura_node.transport.errors import (
    FrameTooLargeError,
    LinkBrokenError,
    LinkTimeoutError,
    PeerClosedError,
    UnexpectedFrameError,
)
from aura_node.transport.framing import (
    CheckpointNote,
    Close,
    Data,
    FrameEncoder,
    Keepalive,
)
from aura_node.transport.handshake import Established, LinkStream, PinnedPeer
from aura_node.transport.queue import PayloadQueue

#: A write batch stops growing at this size (the queue may hold more; the next batch takes it).
BATCH_BYTES = 256 * 1024
RECEIVE_BYTES = 256 * 1024
#: How long an ending link waits to flush its Close and read the peer's.
CLOSE_GRACE_SECONDS = 1.0

#: A changed journal checkpoint is sent to the peer at most this often.
NOTE_SECONDS = 1.0

_link_ids = itertools.count(1)


class LinkWitness(Protocol):
    """The journal-checkpoint side of a link (``runtime.rollback.JournalWitness`` is one)."""

    def own(self) -> bytes:
        """Our newest signed journal checkpoint, encoded (``b""`` for none)."""
        ...

    def note(self, peer: PinnedPeer, checkpoint: bytes) -> None:
        """``peer`` sent its newest checkpoint while linked."""
        ...


async def send_close(stream: LinkStream, encoder: FrameEncoder, code: str, reason: str) -> None:
    """Send ``Close(code, reason)`` and half-close: best effort, bounded, never cancelled.

    The shield matters: trio's ``SSLStream.send_all`` checks for cancellation before it writes
    anything, so an unshielded Close from a node that is being stopped never leaves.
    """
    with trio.move_on_after(CLOSE_GRACE_SECONDS) as scope:
        scope.shield = True
        try:
            await stream.send_all(encoder.encode(Close(code=code, reason=reason[:4096])))
            # Half-close so the Close is not lost to a reset if unread bytes are pending.
            await stream.transport_stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


@dataclass(slots=True)
class LinkCounters:
    """Per-peer counters, shared by the peer's successive links."""

    frames_in: int = 0
    frames_out: int = 0


class InboundData(msgspec.Struct, frozen=True):
    """One payload a pinned peer sent us (opaque bytes to the transport).

    A frozen msgspec Struct rather than a frozen dataclass: it is built once per received
    frame, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) costs
    about four times as much.
    """

    peer_name: str
    device_id: str
    payload: bytes


class PeerLink:
    """One established, authenticated link to a pinned peer."""

    def __init__(
        self,
        established: Established,
        *,
        outbound: bool,
        queue: PayloadQueue,
        inbound: trio.MemorySendChannel[InboundData],
        counters: LinkCounters,
        encoder: FrameEncoder,
        keepalive_seconds: float,
        idle_timeout: float,
        log: Any,
        witness: LinkWitness | None = None,
    ) -> None:
        self.id = next(_link_ids)
        self.peer = established.peer
        self.outbound = outbound
        self.dialer_device_id = established.dialer_device_id
        self._stream: LinkStream = established.stream
        self._decoder = established.decoder
        self._queue = queue
        self._inbound = inbound
        self._counters = counters
        self._encoder = encoder
        self._keepalive = keepalive_seconds
        self._idle_timeout = idle_timeout
        self._log = log.bind(peer=self.peer.name, link=self.id)
        self._witness = witness
        self._active = trio.Event()
        self._closing: tuple[str, str] | None = None
        self._close_sent = False
        self._take_scope: trio.CancelScope | None = None
        #: why the peer ended the link, when it did so in order
        self.peer_close: Close | None = None

    def __repr__(self) -> str:
        way = "outbound" if self.outbound else "inbound"
        return f"PeerLink(#{self.id} {way} peer={self.peer.name})"

    def is_closing(self) -> bool:
        return self._closing is not None

    def activate(self) -> None:
        """Let the writer take payloads from the peer queue."""
        self._active.set()

    def close(self, code: str, reason: str) -> None:
        """Begin an orderly close: no more payloads, send ``Close``, drain the peer's frames."""
        if self._closing is None:
            self._closing = (code, reason)
        self._active.set()  # a writer still waiting for activation must wake up to send Close
        if self._take_scope is not None:
            self._take_scope.cancel()

    # --- the link's life --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until the link ends. Returns after an orderly close; raises ``TransportError``."""
        error: TransportError | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader()
                    # The reader ends on the peer's Close or after our own orderly close; either
                    # way the writer only has the Close left to send.
                    self.close("closed", "peer closed the link")
            except* (
                TransportError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                OSError,
            ) as group:
                # No raise in here: anything unmatched (Cancelled on shutdown) must propagate
                # on its own, not wrapped in a group together with our error.
                error = self._as_error(group.exceptions[0])
            if error is not None:
                await self._send_close(error.code, error.message)
                raise error
        finally:
            if not self._close_sent:
                # Cancelled (the node is stopping): say so, so the peer logs an orderly end.
                await self._send_close("shutdown", "the node is shutting down")
            await trio.aclose_forcefully(self._stream)

    def _as_error(self, exc: BaseException) -> TransportError:
        if isinstance(exc, TransportError):
            return exc
        return LinkBrokenError(f"link to peer {self.peer.name} broke: {exc.__cause__ or exc}")

    async def _send_close(self, code: str, reason: str) -> None:
        """Tell the peer why the link ends, once (see :func:`send_close`)."""
        if self._close_sent:
            return
        self._close_sent = True
        await send_close(self._stream, self._encoder, code, reason)

    async def _reader(self) -> None:
        decoder = self._decoder
        stream = self._stream
        inbound = self._inbound
        counters = self._counters
        name = self.peer.name
        device_id = self.peer.device_id
        while True:
            batch = decoder.frames()
            for index, frame in enumerate(batch):
                if type(frame) is Data:
                    counters.frames_in += 1
                    item = InboundData(name, device_id, frame.payload)
                    try:
                        inbound.send_nowait(item)
                    except trio.WouldBlock:
                        await inbound.send(item)
                elif type(frame) is Keepalive:
                    pass
                elif type(frame) is CheckpointNote:
                    if self._witness is not None:
                        self._witness.note(self.peer, frame.checkpoint)
                elif type(frame) is Close:
                    self.peer_close = frame
                    if frame.code in ("superseded", "closed", "shutdown", "peer_removed"):
                        return
                    raise PeerClosedError(
                        f"peer {name} dropped the link: [{frame.code}] {frame.reason}"
                    )
                else:
                    raise UnexpectedFrameError(
                        f"unexpected {type(frame).__name__} frame "
                        f"#{decoder.frames_decoded - len(batch) + index + 1} "
                        f"from peer {name} on an established link"
                    )
            if decoder.failed is not None:
                # Frames before the bad one were delivered above; now the link ends.
                raise decoder.failed
            try:
                with trio.fail_after(self._idle_timeout):
                    data = await stream.receive_some(RECEIVE_BYTES)
            except trio.TooSlowError:
                if self._closing is not None:
                    return  # the peer never confirmed our Close; nothing is lost by giving up
                raise LinkTimeoutError(
                    f"no frame from peer {name} for {self._idle_timeout:g} s "
                    f"(keepalives are sent every {self._keepalive:g} s)"
                ) from None
            if not data:
                if self._closing is not None:
                    return
                raise PeerClosedError(f"peer {name} closed the connection without a Close frame")
            decoder.feed(data)

    async def _take_batch(self) -> list[bytes]:
        """The queued payloads (one batch); ``[]`` after a keepalive interval or a close."""
        with trio.move_on_after(self._keepalive) as scope:
            self._take_scope = scope
            try:
                return await self._queue.take(BATCH_BYTES)
            except trio.EndOfChannel:
                self.close("peer_removed", f"peer {self.peer.name} is no longer pinned")
            finally:
                self._take_scope = None
        return []

    async def _writer(self) -> None:
        await self._active.wait()
        stream = self._stream
        append = self._encoder.append
        counters = self._counters
        buffer = bytearray()
        witness = self._witness
        noted = b""
        next_note = 0.0
        # A call, not an attribute test: close() may flip it across any await.
        while not self.is_closing():
            batch = await self._take_batch()
            if not batch:
                if self.is_closing():
                    break
                append(buffer, Keepalive())
            if witness is not None and (not batch or trio.current_time() >= next_note):
                checkpoint = witness.own()
                if checkpoint != noted:
                    append(buffer, CheckpointNote(checkpoint=checkpoint))
                    noted = checkpoint
                    next_note = trio.current_time() + NOTE_SECONDS
            for payload in batch:
                try:
                    append(buffer, Data(payload=payload))
                except FrameTooLargeError as exc:
                    # ``send`` checks sizes, so only a config change could get here.
                    self._log.error("payload dropped", code=exc.code, reason=exc.message)
            await stream.send_all(buffer)
            counters.frames_out += len(batch)
            buffer.clear()
        assert self._closing is not None
        # Shielded: if the node is stopped between close() and here, this Close must still go
        # out. (It used to be a plain send: cancelled before writing a byte, yet marked sent,
        # so run() did not send "shutdown" either and the peer saw a reset instead.)
        await self._send_close(*self._closing)
