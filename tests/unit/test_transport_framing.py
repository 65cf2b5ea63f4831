"""The sans-IO frame codec and the TLS preface: round trips, chunking, limits, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_node.errors import FrameError
from aura_node.transport import preface
from aura_node.transport.errors import FrameTooLargeError, PrefaceError
from aura_node.transport.framing import (
    CheckpointNote,
    ChoreographyVersion,
    Close,
    Data,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Hello,
    HelloAck,
    HelloReject,
    Keepalive,
    max_data_payload,
)
from aura_node.transport.peers import backoff_delay

LIMIT = 4096
hexid = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
names = st.text(alphabet="abcdefghij-_0123", min_size=1, max_size=32)
short = st.text(max_size=60)
choreographies = st.lists(
    st.builds(ChoreographyVersion, name=names, version=st.integers(1, 2**31),
              hash=st.binary(min_size=1, max_size=64)),
    max_size=4,
).map(tuple)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        Hello,
        version=st.integers(0, 2**31),
        device_id=hexid,
        node_name=names,
        choreographies=choreographies,
    ),
    st.builds(
        HelloAck,
        version=st.integers(0, 2**31),
        device_id=hexid,
        node_name=names,
        choreographies=choreographies,
    ),
    st.builds(HelloReject, code=st.text(max_size=20), reason=short),
    st.builds(Data, payload=st.binary(max_size=300)),
    st.just(Keepalive()),
    st.builds(CheckpointNote, checkpoint=st.binary(max_size=512)),
    st.builds(Close, code=st.text(max_size=20), reason=short),
)


@given(st.lists(frames, max_size=20), st.data())
def test_round_trip_under_arbitrary_chunking(items: list[Frame], data: st.DataObject) -> None:
    wire = bytes(FrameEncoder(max_frame_bytes=LIMIT).encode_batch(items))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = FrameDecoder(max_frame_bytes=LIMIT)
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        decoder.feed(wire[prev:cut])
        out.extend(decoder.frames())
        prev = cut
    assert out == items
    assert decoder.buffered == 0 and decoder.frames_decoded == len(items)


def test_many_frames_in_one_chunk_and_partial_tail() -> None:
    enc = FrameEncoder(max_frame_bytes=LIMIT)
    wire = enc.encode_batch([Data(payload=b"%d" % i) for i in range(100)])
    dec = FrameDecoder(max_frame_bytes=LIMIT)
    dec.feed(wire + wire[:3])
    assert [f.payload for f in dec.frames() if isinstance(f, Data)] == [
        b"%d" % i for i in range(100)
    ]
    assert dec.next_frame() is None and dec.buffered == 3


def test_oversized_length_refused_before_body_arrives_and_decoder_stays_failed() -> None:
    dec = FrameDecoder(max_frame_bytes=LIMIT)
    dec.feed((LIMIT + 1).to_bytes(4, "big"))
    with pytest.raises(FrameTooLargeError) as info:
        dec.next_frame()
    assert f"{LIMIT + 1} bytes" in info.value.message and f"{LIMIT} bytes" in info.value.message
    assert info.value.code == "frame_too_large"
    with pytest.raises(FrameTooLargeError):
        dec.feed(b"more")
    with pytest.raises(FrameTooLargeError):
        dec.next_frame()
    assert dec.failed is info.value


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"\xc1", "malformed frame #1"),  # never-used msgpack byte
        (b"\x92\xa4nope\xc0", "malformed frame #1"),  # unknown tag
        (b"\x92\xa4data\xa3str", "malformed frame #1"),  # payload must be bin
        (b"\x93\xa4data\xc4\x00\xc0", "malformed frame #1"),  # extra field
    ],
)
def test_malformed_bodies(body: bytes, needle: str) -> None:
    dec = FrameDecoder(max_frame_bytes=LIMIT)
    dec.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(FrameError) as info:
        dec.next_frame()
    assert needle in info.value.message and f"({len(body)} bytes)" in info.value.message
    assert info.value.code == "frame_invalid"


def test_encoder_refuses_oversized_frames_and_keeps_the_buffer() -> None:
    enc = FrameEncoder(max_frame_bytes=LIMIT)
    buf = bytearray()
    enc.append(buf, Data(payload=b"ok"))
    before = bytes(buf)
    with pytest.raises(FrameTooLargeError) as info:
        enc.append(buf, Data(payload=b"x" * LIMIT))
    assert bytes(buf) == before
    assert f"maximum frame size is {LIMIT}" in info.value.message
    # The documented payload limit always fits.
    enc.append(buf, Data(payload=b"x" * max_data_payload(LIMIT)))


def test_hello_fields_are_validated() -> None:
    enc = FrameEncoder(max_frame_bytes=LIMIT)
    bad = enc.encode(Hello(version=1, device_id="XYZ", node_name="a", choreographies=()))
    dec = FrameDecoder(max_frame_bytes=LIMIT)
    dec.feed(bad)
    with pytest.raises(FrameError, match=r"matching regex .* at `\$\[2\]`"):
        dec.next_frame()


def test_hello_choreography_entries_are_validated() -> None:
    enc = FrameEncoder(max_frame_bytes=LIMIT)
    zero = ChoreographyVersion(name="ping", version=0, hash=b"h")
    bad = enc.encode(Hello(version=1, device_id="0" * 32, node_name="a", choreographies=(zero,)))
    dec = FrameDecoder(max_frame_bytes=LIMIT)
    dec.feed(bad)
    with pytest.raises(FrameError, match=r">= 1"):
        dec.next_frame()


def test_preface_round_trip_and_refusals() -> None:
    msg = preface.encode_certificate(b"cert")
    header = preface.parse_header(msg[: preface.HEADER_BYTES], expect=(preface.Kind.CERT,))
    assert header.kind is preface.Kind.CERT and header.length == 4
    refuse = preface.encode_refuse("unknown_peer", "why\nnot")
    h = preface.parse_header(refuse[:8], expect=(preface.Kind.CERT, preface.Kind.REFUSE))
    r = preface.parse_refusal(refuse[8 : 8 + h.length])
    assert (r.code, r.reason) == ("unknown_peer", "why\nnot")
    with pytest.raises(PrefaceError, match="not an aura-node peer"):
        preface.parse_header(b"GET / HT", expect=(preface.Kind.CERT,))
    with pytest.raises(PrefaceError, match="expected a preface CERT message, got ACCEPT"):
        preface.parse_header(preface.encode_accept(), expect=(preface.Kind.CERT,))
    with pytest.raises(PrefaceError, match="version mismatch"):
        preface.parse_header(b"AURA\x07\x01\x00\x00", expect=(preface.Kind.CERT,))
    with pytest.raises(PrefaceError, match="exceeds"):
        preface.parse_header(b"AURA\x01\x01\xff\xff", expect=(preface.Kind.CERT,))


@given(st.integers(1, 200), st.floats(0, 1, exclude_max=True))
def test_backoff_is_jittered_exponential_and_capped(attempt: int, unit: float) -> None:
    d = backoff_delay(attempt, base=0.1, cap=10.0, unit=unit)
    step = min(10.0, 0.1 * 2 ** min(attempt - 1, 60))
    assert step / 2 <= d <= step
    assert d <= 10.0
    assert backoff_delay(0, base=0.1, cap=10.0, unit=unit) == 0.0


def test_sans_io_modules_do_not_import_trio() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import aura_node.transport.framing, aura_node.transport.preface\n"
        "import aura_node.transport.errors\n"
        "assert 'trio' not in sys.modules, 'trio imported'\n"
        "from aura_node.transport import PeerNetwork, InboundData\n"
        "assert 'trio' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
