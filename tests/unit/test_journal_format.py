"""The journal codec, chain and checkpoints, in memory (no files)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import BadSignatureError
from aura_node.journal.format import (
    CHECKPOINT_KIND,
    DAMAGED,
    FRAME_HEADER_BYTES,
    SEGMENT_MAGIC,
    TORN,
    BatchEncoder,
    Checkpoint,
    JournalEntry,
    JournalRecord,
    ScanState,
    SegmentHeader,
    SegmentScan,
    decode_checkpoint,
    decode_record,
    encode_frame,
    encode_record,
    encode_segment_header,
    genesis_link,
    length_word,
    length_word_ok,
    link,
    scan_segment,
    sign_checkpoint,
    verify_checkpoint,
)

KEY = DeviceKey.from_seed(b"\x01" * 32)
OTHER = DeviceKey.from_seed(b"\x02" * 32)
JID = KEY.device_id

records = st.builds(
    JournalRecord,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    ts=st.floats(allow_nan=False),
    session=st.text(max_size=40),
    kind=st.text(min_size=1, max_size=40),
    body=st.binary(max_size=2000),
    prev=st.binary(min_size=32, max_size=32),
)


@given(records)
def test_record_codec_round_trips(rec: JournalRecord) -> None:
    payload = encode_record(rec)
    assert decode_record(payload) == rec
    # the frame adds length word + CRC; the scanner's checks accept it
    frame = encode_frame(payload)
    assert len(frame) == FRAME_HEADER_BYTES + len(payload)
    word = int.from_bytes(frame[4:8], "little")
    assert length_word_ok(word) and word & 0xFFFFFF == len(payload)


@given(st.integers(min_value=1, max_value=(1 << 24) - 1), st.integers(0, 31))
def test_length_word_detects_every_single_bit_flip(n: int, bit: int) -> None:
    word = length_word(n)
    assert length_word_ok(word)
    assert not length_word_ok(word ^ (1 << bit))


def test_zero_bytes_are_never_a_length_word() -> None:
    assert not length_word_ok(0)
    with pytest.raises(ValueError):
        length_word(0)


def test_payload_is_a_msgpack_array_with_the_documented_fields() -> None:
    rec = JournalRecord(seq=7, ts=1.5, session="s", kind="dkd/x", body=b"\x90", prev=b"p" * 32)
    assert msgspec.msgpack.decode(encode_record(rec)) == [7, 1.5, "s", "dkd/x", b"\x90", b"p" * 32]


def test_links_are_domain_separated() -> None:
    import hashlib

    assert link(b"abc") != hashlib.sha256(b"abc").digest()
    assert genesis_link("a") != genesis_link("b")
    assert link(b"abc") != genesis_link("abc")


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_verifies_with_the_signer_key() -> None:
    cp = sign_checkpoint(KEY, journal_id=JID, count=10, head=b"h" * 32)
    verify_checkpoint(KEY.public, cp)


def test_checkpoint_rejects_a_different_key() -> None:
    cp = sign_checkpoint(KEY, journal_id=JID, count=10, head=b"h" * 32)
    with pytest.raises(BadSignatureError, match="journal/checkpoint"):
        verify_checkpoint(OTHER.public, cp)


@pytest.mark.parametrize(
    "change",
    [
        {"head": b"H" + b"h" * 31},
        {"count": 11},
        {"count": 9},
        {"journal_id": "someone-else"},
        {"signature": bytes(64)},
    ],
)
def test_checkpoint_rejects_any_modified_field(change: dict[str, object]) -> None:
    cp = sign_checkpoint(KEY, journal_id=JID, count=10, head=b"h" * 32)
    forged = msgspec.structs.replace(cp, **change)
    with pytest.raises(BadSignatureError):
        verify_checkpoint(KEY.public, forged)


def test_checkpoint_signature_is_not_a_bare_signature_over_the_note() -> None:
    """Domain separation: the signature does not verify as a plain Ed25519 signature over the
    note text (so it cannot be replayed as any other message type)."""
    from cryptography.exceptions import InvalidSignature

    from aura_node.journal.format import checkpoint_note

    cp = sign_checkpoint(KEY, journal_id=JID, count=3, head=b"h" * 32)
    with pytest.raises(InvalidSignature):
        KEY.public.to_cryptography().verify(cp.signature, checkpoint_note(JID, 3, b"h" * 32))


# --- batches and scanning -------------------------------------------------------------------------


def _segment(
    batches: list[list[JournalEntry]], *, max_batch: int = 100
) -> tuple[bytes, list[JournalRecord]]:
    enc = BatchEncoder(KEY, journal_id=JID, max_batch=max_batch)
    data = encode_segment_header(
        SegmentHeader(magic=SEGMENT_MAGIC, journal_id=JID, index=0, first_seq=0)
    )
    seq, head = 0, genesis_link(JID)
    for b in batches:
        eb = enc.encode(b, next_seq=seq, head=head)
        assert eb.first_seq == seq and eb.checkpoint.is_checkpoint
        assert [r.session for r in eb.records] == [e.session for e in b]
        data += eb.data
        seq, head = eb.next_seq, eb.head
    return data, _frames(data)


def _frames(data: bytes) -> list[JournalRecord]:
    """Every record (checkpoints included) of a segment's bytes, header skipped."""
    out: list[JournalRecord] = []
    pos = FRAME_HEADER_BYTES + (int.from_bytes(data[4:8], "little") & 0xFFFFFF)
    while pos < len(data):
        n = int.from_bytes(data[pos + 4 : pos + 8], "little") & 0xFFFFFF
        out.append(decode_record(data[pos + FRAME_HEADER_BYTES : pos + FRAME_HEADER_BYTES + n]))
        pos += FRAME_HEADER_BYTES + n
    return out


def _entries(n: int, session: str = "s") -> list[JournalEntry]:
    return [
        JournalEntry(session=session, kind="t/x", body=bytes([i % 256]) * 20, ts=float(i))
        for i in range(n)
    ]


def _scan(data: bytes, key: DeviceKey = KEY) -> tuple[ScanState, SegmentScan]:
    state = ScanState(journal_id=JID, next_seq=0, head=genesis_link(JID))
    return state, scan_segment(data, state=state, public=key.public, expect_index=0)


def test_batch_ends_with_a_checkpoint_over_count_and_head() -> None:
    _, recs = _segment([_entries(3)])
    assert [r.seq for r in recs] == [0, 1, 2, 3]
    assert [r.is_checkpoint for r in recs] == [False, False, False, True]
    cp = decode_checkpoint(recs[3].body)
    assert cp.count == 3 and cp.head == recs[3].prev == link(encode_record(recs[2]))
    verify_checkpoint(KEY.public, cp)
    # the chain links every record to the previous one
    assert recs[0].prev == genesis_link(JID)
    for a, b in zip(recs, recs[1:], strict=False):
        assert b.prev == link(encode_record(a))


def test_large_batch_gets_a_checkpoint_every_max_batch_records() -> None:
    _, recs = _segment([_entries(7)], max_batch=3)
    kinds = ["C" if r.kind == CHECKPOINT_KIND else "r" for r in recs]
    assert "".join(kinds) == "rrrCrrrCrC"


def test_reserved_kinds_are_refused() -> None:
    enc = BatchEncoder(KEY, journal_id=JID, max_batch=10)
    bad = [JournalEntry(session="", kind="journal/checkpoint", body=b"", ts=0.0)]
    with pytest.raises(ValueError, match="reserved"):
        enc.encode(bad, next_seq=0, head=genesis_link(JID))


def test_scan_accepts_a_sound_segment_and_indexes_sessions() -> None:
    data, recs = _segment([_entries(2, "a"), _entries(3, "b"), _entries(1, "a")])
    state, scan = _scan(data)
    assert scan.problem is None
    assert scan.good_end == len(data)
    assert state.next_seq == len(recs)
    assert scan.records_verified == 6
    assert {k: len(v) for k, v in scan.sessions.items()} == {"a": 3, "b": 3}


def test_scan_refuses_checkpoints_signed_by_another_key() -> None:
    data, _ = _segment([_entries(2)])
    _, scan = _scan(data, key=OTHER)
    assert scan.problem == DAMAGED
    assert "checkpoint" in scan.reason and "signature" in scan.reason


def test_scan_calls_records_after_the_last_checkpoint_torn() -> None:
    data, recs = _segment([_entries(2), _entries(2)])
    # cut the final checkpoint off: the last two records were never acknowledged
    cut = len(data) - len(encode_frame(encode_record(recs[-1])))
    state, scan = _scan(data[:cut])
    assert scan.problem == TORN
    assert state.next_seq == 3  # back to the first batch's checkpoint
    assert scan.seq_at_stop - scan.seq_at_good_end == 2


@settings(max_examples=200)
@given(st.data())
def test_scan_never_accepts_a_flipped_bit(data: st.DataObject) -> None:
    seg, _ = _segment([_entries(3), _entries(2)])
    pos = data.draw(st.integers(0, len(seg) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(seg)
    bad[pos] ^= 1 << bit
    _, scan = _scan(bytes(bad))
    assert scan.problem == DAMAGED
    assert scan.stop <= pos


def test_checkpoint_codec_round_trips() -> None:
    cp = Checkpoint(journal_id="j", count=4, head=b"x" * 32, signature=b"s" * 64)
    assert decode_checkpoint(msgspec.msgpack.encode(cp)) == cp
