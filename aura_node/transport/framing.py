"""Peer-link frames: a sans-IO codec (no trio, no sockets).

Theory of operation
-------------------
Inside the TLS stream a link carries *frames*: a 4-byte big-endian body length followed by a
msgpack body. The body is one of a closed set of frame types (a msgspec tagged union, encoded
as a msgpack array whose first element is the tag)::

    Hello(version, device_id, node_name, choreographies,
          checkpoint, your_checkpoint)                     dialer -> acceptor, first frame
    HelloAck(... the same fields ...)                      acceptor -> dialer: link is up
    HelloReject(code, reason)                              acceptor -> dialer: refused, closes
    Data(payload)                                          opaque bytes for the layer above
    Keepalive()                                            sent when idle; proves liveness
    CheckpointNote(checkpoint)                             the sender's newer journal checkpoint
    Close(code, reason)                                    orderly end, with why

A hello's ``choreographies`` lists the (name, version, hash) of every choreography version the
node can take part in (``protocols.registry.advertised_choreographies``): links come up
whatever they are, and the session layer decides per choreography whether two peers may run a
session.

``checkpoint`` is the sender's newest signed journal checkpoint and ``your_checkpoint`` the
newest checkpoint of the *receiver's* journal the sender holds (both msgpack-encoded
``journal.format.Checkpoint``, empty for none; ``journal.witness`` explains the rollback
check they feed). They come last with empty defaults, so a hello without them still decodes.

:class:`FrameDecoder` takes bytes in arbitrary chunks (``feed``) and hands back whole frames
(``next_frame`` / ``frames``); it never buffers more than one maximum-size frame plus one
read. A length
above ``max_frame_bytes`` is refused as soon as the 4-byte prefix arrives (before the body is
buffered), with the size and the limit in the message. Any error moves the decoder to a
terminal failed state (the h2 habit): later calls raise the same error, because after a bad
frame the byte stream has no trustworthy frame boundary left.

:class:`FrameEncoder` appends frames to one buffer so a link writes a whole batch with a single
``send_all``. Encoding checks the same limit (a local error: the payload is refused, the link
stays up).
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Annotated, Final

import msgspec

from aura_node.errors import FrameError
from aura_node.transport.errors import FrameTooLargeError

LENGTH_PREFIX: Final = struct.Struct(">I")
PREFIX_BYTES: Final = LENGTH_PREFIX.size
#: Upper bound of the msgpack bytes a Data frame adds around its payload (array header, tag,
#: bin32 header). ``max_data_payload`` uses it so a payload that fits is never refused later.
DATA_OVERHEAD: Final = 16

DeviceIdText = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
NodeName = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
ChoreographyName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ChoreographyHash = Annotated[bytes, msgspec.Meta(min_length=1, max_length=64)]
#: a node runs a few dozen choreographies; the cap bounds what an unauthenticated-until-now
#: hello can make the acceptor hold
MAX_CHOREOGRAPHIES: Final = 512
Code = Annotated[str, msgspec.Meta(max_length=64)]
Reason = Annotated[str, msgspec.Meta(max_length=4096)]
#: an encoded journal checkpoint (``journal.witness.MAX_CHECKPOINT_BYTES``), or empty
CheckpointBytes = Annotated[bytes, msgspec.Meta(max_length=512)]


class ChoreographyVersion(
    msgspec.Struct, frozen=True, kw_only=True, array_like=True, forbid_unknown_fields=True
):
    """One entry of a hello's ``choreographies``: a version of a choreography and its hash."""

    name: ChoreographyName
    version: Annotated[int, msgspec.Meta(ge=1)]
    hash: ChoreographyHash


Choreographies = Annotated[
    tuple[ChoreographyVersion, ...], msgspec.Meta(max_length=MAX_CHOREOGRAPHIES)
]


class Hello(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="hello",
):
    version: int
    device_id: DeviceIdText
    node_name: NodeName
    choreographies: Choreographies
    checkpoint: CheckpointBytes = b""
    your_checkpoint: CheckpointBytes = b""


class HelloAck(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="ack",
):
    version: int
    device_id: DeviceIdText
    node_name: NodeName
    choreographies: Choreographies
    checkpoint: CheckpointBytes = b""
    your_checkpoint: CheckpointBytes = b""


class HelloReject(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="reject",
):
    code: Code
    reason: Reason


class Data(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="data",
):
    payload: bytes


class Keepalive(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="ka",
):
    pass


class CheckpointNote(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="cp",
):
    """The sender's newest journal checkpoint, refreshed while linked (see ``Hello``)."""

    checkpoint: CheckpointBytes


class Close(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag="close",
):
    code: Code
    reason: Reason


Frame = Hello | HelloAck | HelloReject | Data | Keepalive | CheckpointNote | Close


def max_data_payload(max_frame_bytes: int) -> int:
    """The largest payload a ``Data`` frame may carry under ``max_frame_bytes``."""
    return max_frame_bytes - DATA_OVERHEAD


class FrameEncoder:
    """Appends frames (prefix + msgpack body) to a buffer; one buffer per ``send_all``."""

    __slots__ = ("_encoder", "max_frame_bytes")

    def __init__(self, *, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._encoder = msgspec.msgpack.Encoder()

    def append(self, buffer: bytearray, frame: Frame) -> None:
        """Encode ``frame`` at the end of ``buffer``; ``FrameTooLargeError`` leaves it intact."""
        start = len(buffer)
        # Reserve the prefix, encode the body straight into the buffer, then fill the prefix in:
        # no intermediate bytes object per frame.
        self._encoder.encode_into(frame, buffer, start + PREFIX_BYTES)
        size = len(buffer) - start - PREFIX_BYTES
        if size > self.max_frame_bytes:
            del buffer[start:]
            raise FrameTooLargeError(
                f"refusing to send a {type(frame).__name__} frame of {size} bytes: "
                f"the maximum frame size is {self.max_frame_bytes} bytes"
            )
        LENGTH_PREFIX.pack_into(buffer, start, size)

    def encode(self, frame: Frame) -> bytes:
        buffer = bytearray()
        self.append(buffer, frame)
        return bytes(buffer)

    def encode_batch(self, frames: list[Frame]) -> bytearray:
        buffer = bytearray()
        for frame in frames:
            self.append(buffer, frame)
        return buffer


class FrameDecoder:
    """Bytes in (any chunking), frames out. Terminal after the first error.

    Whole frames are parsed in batches (one buffer view per batch, not per frame: decoding is
    the receive path's per-frame cost) into a pending list; frames that arrived before a bad
    one are still handed out, then the error is raised.
    """

    __slots__ = (
        "_buf",
        "_decode",
        "_error",
        "_parsed",
        "_pending",
        "_pos",
        "frames_decoded",
        "max_frame_bytes",
    )

    def __init__(self, *, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)
        self._decode = decoder.decode
        self._buf = bytearray()
        self._pos = 0
        self._pending: deque[Frame] = deque()
        self._parsed = 0
        self._error: FrameError | None = None
        #: frames handed out so far
        self.frames_decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into frames."""
        return len(self._buf) - self._pos

    @property
    def failed(self) -> FrameError | None:
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._pos:
            # Compact lazily: only the unparsed tail is kept.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        self._parse()

    def next_frame(self) -> Frame | None:
        """The next whole frame, or ``None`` until more bytes are fed."""
        if self._pending:
            self.frames_decoded += 1
            return self._pending.popleft()
        if self._error is not None:
            raise self._error
        return None

    def frames(self) -> list[Frame]:
        """Every whole frame received so far (raises once only the error is left)."""
        if not self._pending:
            if self._error is not None:
                raise self._error
            return []
        out = list(self._pending)
        self._pending.clear()
        self.frames_decoded += len(out)
        return out

    def _parse(self) -> None:
        buf = self._buf
        pos = self._pos
        size_all = len(buf)
        limit = self.max_frame_bytes
        decode = self._decode
        out = self._pending
        unpack_from = LENGTH_PREFIX.unpack_from
        try:
            # One view per batch; every slice of it is released as soon as decode returns.
            with memoryview(buf) as view:
                while size_all - pos >= PREFIX_BYTES:
                    (size,) = unpack_from(buf, pos)
                    if size > limit:
                        self._error = FrameTooLargeError(
                            f"frame #{self._parsed + 1} announces {size} bytes: "
                            f"the maximum frame size is {limit} bytes"
                        )
                        return
                    end = pos + PREFIX_BYTES + size
                    if end > size_all:
                        return
                    try:
                        out.append(decode(view[pos + PREFIX_BYTES : end]))
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        self._error = FrameError(
                            f"malformed frame #{self._parsed + 1} ({size} bytes): {exc}"
                        )
                        return
                    self._parsed += 1
                    pos = end
        finally:
            self._pos = pos
