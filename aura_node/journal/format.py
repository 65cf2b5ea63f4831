"""Journal wire format: frames, records, the hash chain and signed checkpoints (pure).

Theory of operation
-------------------
A journal is a sequence of *segment files*. Each segment starts with a header frame and then
holds record frames. Every frame on disk is::

    +----------------+------------------+---------------------------+
    | crc32 (4, LE)  | length word (4)  | payload (msgpack, N bytes)|
    +----------------+------------------+---------------------------+

* The **length word** is a little-endian u32: the low 24 bits are N (so a payload is at most
  16 MiB - 1) and the high 8 bits are a check byte, ``0xA5 ^ b0 ^ b1 ^ b2`` over the three
  length bytes. A single flipped bit in the length is therefore seen as *damage*, not misread
  as "the frame runs past the end of the file" (which is what a torn final write looks like).
  All-zero bytes are never a valid length word.
* The **checksum** is ``zlib.crc32`` over the payload (the length word carries its own check
  byte, and a length damaged past it slices the wrong bytes, failing the CRC). CRC32C is not in the
  standard library; zlib's CRC-32 runs in C at GB/s, detects every burst of up to 32 bits and
  every 1-2 bit error at these sizes, which is all a checksum is for here: telling torn or
  rotted bytes from good ones. It is *not* the integrity mechanism against a tamperer; that
  is the hash chain plus the signed checkpoints below (SHA-256 and Ed25519).
* The **payload** of a record frame is a msgpack array (msgspec, ``array_like``):
  ``[seq, ts, session, kind, body, prev]`` (``JournalRecord``). ``seq`` numbers every record
  from 0, checkpoints included; ``prev`` is the chain link::

      genesis  = SHA-256("aura-node/journal/genesis/v1\\0" || journal_id)
      link(p)  = SHA-256("aura-node/journal/link/v1\\0"    || payload bytes p)
      record[0].prev = genesis;  record[i].prev = link(payload of record[i-1])

  so the head after record i, ``link(payload_i)``, commits to the whole journal so far.
* Every group commit (one write, one fdatasync) ends with a **checkpoint record** (kind
  ``journal/checkpoint``, session ""). Its body is a ``Checkpoint``: journal id, record count
  and chain head, with an Ed25519 signature by the device key under the domain
  ``journal/checkpoint``. The signed message is a C2SP signed-note style text (origin line,
  decimal size, base64 root)::

      aura-node/journal/v1 <journal id>\\n<count>\\n<base64 head>\\n

  A checkpoint at seq ``n`` covers records ``0..n-1``: its ``count`` is ``n`` and its ``head``
  is its own ``prev``. So signing costs once per batch, and a checkpoint is itself chained:
  the next batch links to it.

This module is pure (no files, no clock, no trio): ``BatchEncoder`` turns entries into the bytes
of one group commit, and ``scan_segment`` verifies the bytes of one segment and reports where
(and why) it stops. ``store.py`` does the file I/O around them.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import BadSignatureError

CHECKPOINT_KIND: Final = "journal/checkpoint"
CHECKPOINT_DOMAIN: Final = "journal/checkpoint"
#: kinds under this prefix belong to the journal itself; appenders may not use them
RESERVED_KIND_PREFIX: Final = "journal/"
SEGMENT_MAGIC: Final = "aura-node/journal-segment/v1"

GENESIS_DOMAIN: Final = b"aura-node/journal/genesis/v1\x00"
LINK_DOMAIN: Final = b"aura-node/journal/link/v1\x00"
HASH_BYTES: Final = 32

FRAME_HEADER: Final = struct.Struct("<II")  # crc32, length word
FRAME_HEADER_BYTES: Final = FRAME_HEADER.size
MAX_PAYLOAD: Final = (1 << 24) - 1
_CHECK_SEED: Final = 0xA5


class JournalRecord(msgspec.Struct, frozen=True, array_like=True, kw_only=True):
    """One journal record, exactly as it is encoded on disk (the msgpack payload).

    ``body`` is opaque msgpack the protocol layer encoded; ``prev`` is the chain link (the hash
    of the previous record's payload, or the genesis link for seq 0).
    """

    seq: int
    ts: float
    session: str
    kind: str
    body: bytes
    prev: bytes

    @property
    def is_checkpoint(self) -> bool:
        return self.kind == CHECKPOINT_KIND


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What an appender hands in: the journal assigns ``seq`` and ``prev``."""

    session: str
    kind: str
    body: bytes
    ts: float


class Checkpoint(msgspec.Struct, frozen=True, array_like=True, kw_only=True):
    """Signed statement: journal ``journal_id`` had ``count`` records with chain head ``head``."""

    journal_id: str
    count: int
    head: bytes
    signature: bytes


class SegmentHeader(msgspec.Struct, frozen=True, array_like=True, kw_only=True):
    """First frame of every segment file (not part of the hash chain)."""

    magic: str
    journal_id: str
    index: int
    first_seq: int


_encoder: Final = msgspec.msgpack.Encoder()
_record_decoder: Final = msgspec.msgpack.Decoder(JournalRecord)
_checkpoint_decoder: Final = msgspec.msgpack.Decoder(Checkpoint)
_header_decoder: Final = msgspec.msgpack.Decoder(SegmentHeader)
_link_prefix: Final = hashlib.sha256(LINK_DOMAIN)
_crc32: Final = zlib.crc32
_pack_header: Final = FRAME_HEADER.pack
_unpack_header: Final = FRAME_HEADER.unpack_from


# --- frames ------------------------------------------------------------------------------------


def length_word(n: int) -> int:
    """The 32-bit length word for a payload of ``n`` bytes (24-bit length + check byte)."""
    if not 0 < n <= MAX_PAYLOAD:
        raise ValueError(f"a journal payload is 1..{MAX_PAYLOAD} bytes, got {n}")
    check = _CHECK_SEED ^ (n & 0xFF) ^ ((n >> 8) & 0xFF) ^ (n >> 16)
    return n | (check << 24)


def length_word_ok(word: int) -> bool:
    n = word & 0xFFFFFF
    return n > 0 and (word >> 24) == _CHECK_SEED ^ (n & 0xFF) ^ ((n >> 8) & 0xFF) ^ (n >> 16)


def encode_frame(payload: bytes) -> bytes:
    return _pack_header(_crc32(payload), length_word(len(payload))) + payload


def link(payload: bytes | memoryview) -> bytes:
    """Chain head after a record whose payload bytes are ``payload``."""
    h = _link_prefix.copy()
    h.update(payload)
    return h.digest()


def genesis_link(journal_id: str) -> bytes:
    return hashlib.sha256(GENESIS_DOMAIN + journal_id.encode("utf-8")).digest()


def encode_record(record: JournalRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(payload: bytes | memoryview) -> JournalRecord:
    """Decode one record payload; raises ``msgspec.DecodeError`` / ``ValidationError``."""
    return _record_decoder.decode(payload)


def encode_segment_header(header: SegmentHeader) -> bytes:
    return encode_frame(_encoder.encode(header))


# --- checkpoints --------------------------------------------------------------------------------


def checkpoint_note(journal_id: str, count: int, head: bytes) -> bytes:
    """The exact text a checkpoint signature covers (C2SP signed-note checkpoint style)."""
    if len(head) != HASH_BYTES:
        raise ValueError(f"a chain head is {HASH_BYTES} bytes, got {len(head)}")
    if "\n" in journal_id:
        raise ValueError("a journal id cannot contain a newline")
    b64 = base64.b64encode(head).decode("ascii")
    return f"aura-node/journal/v1 {journal_id}\n{count}\n{b64}\n".encode()


def sign_checkpoint(key: DeviceKey, *, journal_id: str, count: int, head: bytes) -> Checkpoint:
    sig = key.sign(CHECKPOINT_DOMAIN, checkpoint_note(journal_id, count, head))
    return Checkpoint(journal_id=journal_id, count=count, head=head, signature=sig)


def verify_checkpoint(public: DevicePublicKey, checkpoint: Checkpoint) -> None:
    """Raise ``BadSignatureError`` unless ``public`` signed exactly this (id, count, head)."""
    if len(checkpoint.head) != HASH_BYTES or "\n" in checkpoint.journal_id:
        raise BadSignatureError(
            f"malformed checkpoint: head of {len(checkpoint.head)} bytes, "
            f"journal id {checkpoint.journal_id!r}"
        )
    note = checkpoint_note(checkpoint.journal_id, checkpoint.count, checkpoint.head)
    public.verify(CHECKPOINT_DOMAIN, note, checkpoint.signature)


def decode_checkpoint(body: bytes) -> Checkpoint:
    return _checkpoint_decoder.decode(body)


# --- writing: one group commit ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedBatch:
    """The bytes of one group commit and what they hold (not yet written)."""

    data: bytes
    first_seq: int
    #: the entries' records in order (checkpoints not included)
    records: list[JournalRecord]
    #: (session, offset of the record's frame within ``data``) for records with a session
    session_offsets: list[tuple[str, int]]
    #: the last checkpoint record of the batch (every batch ends with one)
    checkpoint: JournalRecord
    next_seq: int
    head: bytes


class BatchEncoder:
    """Encodes group commits for one journal: assigns seqs, links, and closing checkpoints.

    Pure: the caller (``Journal``) writes ``data`` and only then calls ``advance`` with the
    result, so a failed write never moves the chain.
    """

    __slots__ = ("_key", "journal_id", "max_batch")

    def __init__(self, key: DeviceKey, *, journal_id: str, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._key = key
        self.journal_id = journal_id
        self.max_batch = max_batch

    def encode(
        self, entries: Sequence[JournalEntry], *, next_seq: int, head: bytes
    ) -> EncodedBatch:
        """Records for ``entries`` with a signed checkpoint after every ``max_batch`` of them
        (and after the last), as one contiguous byte string."""
        if not entries:
            raise ValueError("a group commit needs at least one entry")
        for e in entries:
            if e.kind.startswith(RESERVED_KIND_PREFIX):
                raise ValueError(f"record kind {e.kind!r} is reserved for the journal itself")
        # The hot path of every append: one pass, locals only, header and payload appended
        # separately so the final join is the only copy of the payload bytes.
        encode = _encoder.encode
        crc32 = _crc32
        pack = _pack_header
        copy = _link_prefix.copy
        seed = _CHECK_SEED
        parts: list[bytes] = []
        append = parts.append
        records: list[JournalRecord] = []
        add_record = records.append
        session_offsets: list[tuple[str, int]] = []
        add_session = session_offsets.append
        pos = 0
        seq = next_seq
        max_batch = self.max_batch
        total = len(entries)
        done = 0
        while done < total:
            chunk = entries[done : done + max_batch]
            done += len(chunk)
            for e in chunk:
                rec = JournalRecord(
                    seq=seq, ts=e.ts, session=e.session, kind=e.kind, body=e.body, prev=head
                )
                payload = encode(rec)
                n = len(payload)
                if n > MAX_PAYLOAD:
                    raise ValueError(f"record payload of {n} bytes exceeds {MAX_PAYLOAD}")
                append(
                    pack(
                        crc32(payload),
                        n | ((seed ^ (n & 0xFF) ^ (n >> 8 & 0xFF) ^ (n >> 16)) << 24),
                    )
                )
                append(payload)
                h = copy()
                h.update(payload)
                head = h.digest()
                add_record(rec)
                if e.session:
                    add_session((e.session, pos))
                pos += 8 + n
                seq += 1
            cp = sign_checkpoint(self._key, journal_id=self.journal_id, count=seq, head=head)
            checkpoint = JournalRecord(
                seq=seq,
                ts=chunk[-1].ts,
                session="",
                kind=CHECKPOINT_KIND,
                body=encode(cp),
                prev=head,
            )
            payload = encode(checkpoint)
            frame = encode_frame(payload)
            head = link(payload)
            append(frame)
            pos += len(frame)
            seq += 1
        return EncodedBatch(
            data=b"".join(parts),
            first_seq=next_seq,
            records=records,
            session_offsets=session_offsets,
            checkpoint=checkpoint,
            next_seq=seq,
            head=head,
        )


# --- reading: verify one segment ----------------------------------------------------------------

#: why a scan stopped early
TORN: Final = "torn"  # frame runs past the end of the data, or zeros to the end: a torn write
DAMAGED: Final = "damaged"  # bad length word, checksum, encoding, seq, chain or signature


@dataclass(slots=True, kw_only=True)
class ScanState:
    """Chain state carried from one segment to the next while scanning a journal."""

    journal_id: str
    next_seq: int
    head: bytes
    #: seq, head and end offset of the last verified checkpoint in this scan
    checkpoint: JournalRecord | None = None


@dataclass(slots=True, kw_only=True)
class SegmentScan:
    """Result of scanning one segment's bytes."""

    header: SegmentHeader | None
    #: offset just past the last verified checkpoint (or past the header if none)
    good_end: int
    #: chain state at ``good_end``
    seq_at_good_end: int
    head_at_good_end: bytes
    #: offset where verified frames stop (>= good_end); == len(data) when all is well
    stop: int
    #: None when every byte verified; else TORN or DAMAGED
    problem: str | None = None
    reason: str = ""
    #: offsets of records (not checkpoints) up to good_end, by session (sessions "" skipped)
    sessions: dict[str, list[int]] = field(default_factory=dict)
    seq_at_stop: int = 0
    records_verified: int = 0
    checkpoints_verified: int = 0
    last_checkpoint: JournalRecord | None = None
    last_checkpoint_offset: int = -1


def _all_zero(data: memoryview, start: int) -> bool:
    return not bytes(data[start:]).strip(b"\x00")


def scan_segment(
    data: bytes,
    *,
    state: ScanState,
    public: DevicePublicKey,
    expect_index: int,
) -> SegmentScan:
    """Verify one segment's bytes from its header on; stop at the first bad frame.

    Checks every frame's length word and CRC, decodes every record, checks that seqs count up
    and that every ``prev`` is the head so far, and verifies every checkpoint's signature,
    count and head. ``state`` is advanced to the last verified checkpoint. Frames after the
    last checkpoint that verify are counted but do not move ``good_end``: without their
    checkpoint they were never acknowledged.
    """
    mv = memoryview(data)
    end = len(data)
    scan = SegmentScan(
        header=None,
        good_end=0,
        seq_at_good_end=state.next_seq,
        head_at_good_end=state.head,
        stop=0,
        seq_at_stop=state.next_seq,
    )

    def stop(pos: int, reason: str, *, torn: bool = False) -> SegmentScan:
        if not torn and _all_zero(mv, pos):
            torn, reason = True, f"zeros to the end of the file ({reason})"
        scan.stop = pos
        scan.problem = TORN if torn else DAMAGED
        scan.reason = reason
        return scan

    # header frame
    if end < FRAME_HEADER_BYTES:
        return stop(0, f"segment header incomplete ({end} bytes)", torn=True)
    crc, word = _unpack_header(data, 0)
    if not length_word_ok(word):
        return stop(0, f"segment header length word {word:#010x} is invalid")
    n = word & 0xFFFFFF
    if FRAME_HEADER_BYTES + n > end:
        return stop(0, "segment header runs past the end of the file", torn=True)
    if _crc32(mv[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + n]) != crc:
        return stop(0, "segment header checksum mismatch")
    try:
        header = _header_decoder.decode(mv[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + n])
    except msgspec.MsgspecError as exc:
        return stop(0, f"segment header does not decode: {exc}")
    if header.magic != SEGMENT_MAGIC:
        return stop(0, f"segment magic is {header.magic!r}, expected {SEGMENT_MAGIC!r}")
    if header.journal_id != state.journal_id:
        return stop(
            0, f"segment belongs to journal {header.journal_id!r}, expected {state.journal_id!r}"
        )
    if header.index != expect_index:
        return stop(0, f"segment index is {header.index}, expected {expect_index}")
    if header.first_seq != state.next_seq:
        return stop(0, f"segment starts at seq {header.first_seq}, expected {state.next_seq}")
    scan.header = header
    pos = FRAME_HEADER_BYTES + n
    scan.good_end = pos

    # records: the hot loop (locals for speed; no closures over loop variables)
    seq = state.next_seq
    head = state.head
    decode = _record_decoder.decode
    crc32 = _crc32
    unpack = _unpack_header
    prefix = _link_prefix
    hb = FRAME_HEADER_BYTES
    sessions = scan.sessions
    pending: list[tuple[str, int]] = []  # sessions of records since the last checkpoint
    records = 0
    reason = ""
    torn = False
    while pos < end:
        if end - pos < hb:
            reason, torn = f"frame header incomplete ({end - pos} of {hb} bytes)", True
            break
        crc, word = unpack(data, pos)
        n = word & 0xFFFFFF
        if n == 0 or (word >> 24) != _CHECK_SEED ^ (n & 0xFF) ^ ((n >> 8) & 0xFF) ^ (n >> 16):
            reason = f"invalid length word {word:#010x}"
            break
        pend = pos + hb + n
        if pend > end:
            reason, torn = f"frame of {n} bytes runs past the end of the file", True
            break
        payload = mv[pos + hb : pend]
        if crc32(payload) != crc:
            reason = "checksum mismatch"
            break
        try:
            rec = decode(payload)
        except msgspec.MsgspecError as exc:
            reason = f"record does not decode: {exc}"
            break
        if rec.seq != seq:
            reason = f"record seq is {rec.seq}, expected {seq}"
            break
        if rec.prev != head:
            reason = f"chain link mismatch at seq {seq} (prev is not the previous record's hash)"
            break
        if rec.kind == CHECKPOINT_KIND:
            problem = _check_checkpoint(rec, state.journal_id, public)
            if problem:
                reason = problem
                break
            h = prefix.copy()
            h.update(payload)
            head = h.digest()
            seq += 1
            pos = pend
            scan.good_end = pos
            scan.seq_at_good_end = seq
            scan.head_at_good_end = head
            scan.checkpoints_verified += 1
            scan.records_verified = records
            scan.last_checkpoint = rec
            scan.last_checkpoint_offset = pos - hb - n
            for s, off in pending:
                lst = sessions.get(s)
                if lst is None:
                    sessions[s] = [off]
                else:
                    lst.append(off)
            pending.clear()
            continue
        h = prefix.copy()
        h.update(payload)
        head = h.digest()
        seq += 1
        records += 1
        if rec.session:
            pending.append((rec.session, pos))
        pos = pend
    state.next_seq = scan.seq_at_good_end
    state.head = scan.head_at_good_end
    if scan.last_checkpoint is not None:
        state.checkpoint = scan.last_checkpoint
    scan.stop = pos
    scan.seq_at_stop = seq
    if pos < end:
        if not torn and _all_zero(mv, pos):
            # zeros from here to the end: a file extended but never written (crash between
            # the size update and the data reaching the disk), not rot in written data
            torn, reason = True, f"zeros to the end of the file ({reason})"
        scan.problem = TORN if torn else DAMAGED
        scan.reason = reason
    elif pos != scan.good_end:
        scan.problem = TORN
        scan.reason = f"{seq - scan.seq_at_good_end} record(s) after the last checkpoint"
    return scan


def _check_checkpoint(rec: JournalRecord, journal_id: str, public: DevicePublicKey) -> str:
    """Why checkpoint record ``rec`` is not valid, or "" when it is."""
    try:
        cp = _checkpoint_decoder.decode(rec.body)
    except msgspec.MsgspecError as exc:
        return f"checkpoint at seq {rec.seq} does not decode: {exc}"
    if cp.journal_id != journal_id or cp.count != rec.seq or cp.head != rec.prev:
        return (
            f"checkpoint at seq {rec.seq} claims journal {cp.journal_id!r} count {cp.count}; "
            f"expected journal {journal_id!r} count {rec.seq} and the chain head"
        )
    try:
        verify_checkpoint(public, cp)
    except BadSignatureError as exc:
        return f"checkpoint at seq {rec.seq}: {exc.message}"
    return ""
