"""Journal storage: segment files, durable group commits, open-time recovery, reads (sync I/O).

Theory of operation
-------------------
The journal directory holds ``segment-00000000.journal``, ``segment-00000001.journal``, ...
and a ``LOCK`` file (an exclusive ``flock`` so two processes never append to one journal).
Only the last segment is ever written; a new one is started, before a batch, once the current
one holds ``segment_bytes`` or more.

*Append* (``Journal.append_batch``): the pure ``BatchEncoder`` produces the records and the
closing signed checkpoint as one byte string; it goes to the file in one ``write`` and one
``os.fdatasync`` (plus an ``fsync`` of the directory when the batch created the segment). Only
then does the in-memory chain state move and the call return: a record handed back is durable.
A failed write or fsync is never retried (after a failed fsync the page cache may say "clean"
for data that never reached the disk; retrying would lie), so the journal turns *failed*:
every later call raises ``JournalFailedError`` naming the original error.

*Open* (``Journal.open``): scan every segment with ``format.scan_segment`` (checksums, seqs,
chain, checkpoint signatures). Batches after the last valid checkpoint were never acknowledged
(their fsync had not returned), so a *torn* tail, i.e. a frame running past the end of the last
segment, zeros to its end, or complete records without a closing checkpoint, is cut back to
the last checkpoint and logged (records and byte range dropped). Anything else is *damage*:
a bad checksum, length word, encoding, seq, link or signature in written data, or any
problem in a segment other than the last (a later segment exists only after every batch of
the earlier ones was durable). Damage refuses to open with ``JournalCorruptError`` naming the
segment file, byte offset and reason, and the hint to run ``aura-node journal verify``.
Guessing would risk dropping acknowledged evidence, which is exactly what invariant 1 forbids.

*Read*: ``records()`` streams all records from the files, ``session_records(id)`` uses an
in-memory index (session -> file positions) built by the open scan and kept current by
appends, so one session's evidence is read without a full scan. Reads check every frame's
checksum again and never return a record that fails it.

``verify_journal`` is the read-only scan behind ``aura-node journal verify``: it never
truncates and never takes the lock.
"""

from __future__ import annotations

import fcntl
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import msgspec

from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import JournalCorruptError, JournalError, JournalFailedError
from aura_node.journal.format import (
    DAMAGED,
    FRAME_HEADER,
    FRAME_HEADER_BYTES,
    SEGMENT_MAGIC,
    BatchEncoder,
    Checkpoint,
    EncodedBatch,
    JournalEntry,
    JournalRecord,
    ScanState,
    SegmentHeader,
    SegmentScan,
    decode_checkpoint,
    decode_record,
    encode_record,
    encode_segment_header,
    genesis_link,
    length_word_ok,
    link,
    scan_segment,
)
from aura_node.logs import get_logger

SEGMENT_RE: Final = re.compile(r"^segment-(\d{8})\.journal$")
LOCK_NAME: Final = "LOCK"
DEFAULT_MAX_BATCH: Final = 512
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
#: a position in the session index: segment index in the high bits, byte offset in the low 40
_POS_SHIFT: Final = 40
_POS_MASK: Final = (1 << _POS_SHIFT) - 1

log = get_logger("aura_node.journal")


def segment_name(index: int) -> str:
    return f"segment-{index:08d}.journal"


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for p in directory.iterdir():
        m = SEGMENT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    return found


def _verify_hint(directory: Path) -> str:
    return f"inspect it with `aura-node journal verify --home {directory.parent}`"


def _corrupt(path: Path, offset: int, reason: str, directory: Path) -> JournalCorruptError:
    return JournalCorruptError(
        f"journal segment {path} is damaged at byte offset {offset}: {reason}; "
        f"refusing to open the journal ({_verify_hint(directory)})"
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Segment:
    index: int
    path: Path


@dataclass(slots=True, kw_only=True)
class _Scanned:
    """What a whole-journal scan found (shared by open and verify)."""

    segments: list[_Segment]
    scans: list[SegmentScan]
    state: ScanState
    #: (segment position in ``segments``, scan) of the first problem, if any
    problem_at: int = -1


def _scan_all(directory: Path, public: DevicePublicKey, journal_id: str) -> _Scanned:
    segs = [_Segment(index=i, path=p) for i, p in _list_segments(directory)]
    state = ScanState(journal_id=journal_id, next_seq=0, head=genesis_link(journal_id))
    out = _Scanned(segments=segs, scans=[], state=state)
    for pos, seg in enumerate(segs):
        if seg.index != pos:
            # a missing segment file: later ones cannot be verified against the chain
            missing = segment_name(pos)
            sc = SegmentScan(
                header=None, good_end=0, seq_at_good_end=state.next_seq,
                head_at_good_end=state.head, stop=0, seq_at_stop=state.next_seq,
                problem=DAMAGED, reason=f"segment {missing} is missing before this one",
            )
            out.scans.append(sc)
            out.problem_at = pos
            return out
        data = seg.path.read_bytes()
        sc = scan_segment(data, state=state, public=public, expect_index=seg.index)
        out.scans.append(sc)
        if sc.problem is not None:
            out.problem_at = pos
            return out
    return out


class Journal:
    """An open, writable journal (one per directory per process; see the module doc)."""

    def __init__(
        self,
        *,
        directory: Path,
        key: DeviceKey,
        journal_id: str,
        max_batch: int,
        segment_bytes: int,
        lock_fd: int,
        scanned: _Scanned,
    ) -> None:
        self.directory = directory
        self.journal_id = journal_id
        self.public_key = key.public
        self.max_batch = max_batch
        self.segment_bytes = segment_bytes
        self._encoder = BatchEncoder(key, journal_id=journal_id, max_batch=max_batch)
        self._lock_fd: int | None = lock_fd
        self._failed: str | None = None
        self._closed = False
        st = scanned.state
        self._next_seq = st.next_seq
        self._head = st.head
        # chain state after the last *prepared* batch (ahead of the committed one while a
        # prepared batch waits for its commit)
        self._prep_seq = st.next_seq
        self._prep_head = st.head
        self._checkpoint = st.checkpoint
        self._record_count = 0
        #: segment index -> committed size in bytes
        self._seg_sizes: dict[int, int] = {}
        self._paths: dict[int, Path] = {}
        self._sessions: dict[str, list[int]] = {}
        for seg, sc in zip(scanned.segments, scanned.scans, strict=True):
            self._seg_sizes[seg.index] = sc.good_end
            self._paths[seg.index] = seg.path
            self._record_count += sc.records_verified
            base = seg.index << _POS_SHIFT
            for s, offs in sc.sessions.items():
                lst = self._sessions.setdefault(s, [])
                lst.extend(base | o for o in offs)
        self._write_fd: int | None = None
        self._write_index = -1
        if self._seg_sizes:
            self._write_index = max(self._seg_sizes)
            self._write_fd = os.open(
                self._paths[self._write_index], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            )
        self._read_fds: dict[int, int] = {}

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        key: DeviceKey,
        *,
        journal_id: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> Journal:
        """Open (creating if needed) the journal in ``directory``, recovering a torn tail.

        Raises ``JournalCorruptError`` on damage before the last valid checkpoint and
        ``JournalError`` when another process holds the journal.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes must be at least 4096, got {segment_bytes}")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        jid = key.device_id if journal_id is None else journal_id
        lock_fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(
                    f"journal {d} is in use by another process (lock {d / LOCK_NAME} is held)"
                ) from None
            scanned = _scan_all(d, key.public, jid)
            if scanned.problem_at >= 0:
                _recover(d, scanned)
            return cls(
                directory=d, key=key, journal_id=jid, max_batch=max_batch,
                segment_bytes=segment_bytes, lock_fd=lock_fd, scanned=scanned,
            )
        except BaseException:
            os.close(lock_fd)
            raise

    # --- state --------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """Seq the next record will get (= records written so far, checkpoints included)."""
        return self._next_seq

    @property
    def head(self) -> bytes:
        """Chain head: the link after the last written record."""
        return self._head

    @property
    def record_count(self) -> int:
        """Records in the journal, checkpoints not counted."""
        return self._record_count

    @property
    def failure(self) -> str | None:
        """Why the journal failed (it is then unusable), or None."""
        return self._failed

    def latest_checkpoint(self) -> Checkpoint | None:
        """The last signed checkpoint (verified at open or written since), or None if empty."""
        if self._checkpoint is None:
            return None
        return decode_checkpoint(self._checkpoint.body)

    def head_at(self, count: int) -> bytes | None:
        """The chain head after the first ``count`` records (checkpoints included), or None
        when the journal holds fewer. Rollback/fork checks compare it with a checkpoint a peer
        holds (``journal.witness``).

        Safe to call from a worker thread while batches commit: the committed end is taken
        from one reference (the last checkpoint record, set after the segment sizes), never
        from ``next_seq`` and ``head``, which a commit sets one after the other; files are read
        through private descriptors. Reads only the segment that holds record ``count``."""
        self._check_usable()
        last = self._checkpoint
        if last is None:
            return genesis_link(self.journal_id) if count == 0 else None
        if count < 0 or count > last.seq + 1:
            return None
        if count == last.seq + 1:
            return link(encode_record(last))
        if count == last.seq:
            return last.prev
        if count == 0:
            return genesis_link(self.journal_id)
        sizes = dict(self._seg_sizes)
        paths = dict(self._paths)
        for index in sorted(sizes, reverse=True):
            fd = os.open(paths[index], os.O_RDONLY | os.O_CLOEXEC)
            try:
                first = _segment_first_seq(os.pread(fd, FRAME_HEADER_BYTES + 256, 0))
                if first is None or first > count:
                    continue
                data = os.pread(fd, sizes[index], 0)
            finally:
                os.close(fd)
            for rec in _frames(data, sizes[index], paths[index], self.directory, True):
                if rec.seq == count:
                    return rec.prev
            break
        raise JournalCorruptError(
            f"journal {self.directory}: record {count} is not in the segment its headers "
            f"place it in; {_verify_hint(self.directory)}"
        )

    def sessions(self) -> list[str]:
        """Session ids with at least one record, in order of first appearance."""
        self._check_usable()
        return list(self._sessions)

    # --- writing ------------------------------------------------------------------------------

    def append_batch(self, entries: Sequence[JournalEntry]) -> list[JournalRecord]:
        """Durably append ``entries`` as one group commit; returns their records in order.

        One write and one ``fdatasync`` for the records and their closing checkpoint(s) (a
        checkpoint follows every ``max_batch`` records). On any write or sync error the
        journal fails for good and this (and every later call) raises ``JournalFailedError``.
        """
        if not entries:
            self._check_usable()
            return []
        return self.commit_batch(self.prepare_batch(entries))

    def prepare_batch(self, entries: Sequence[JournalEntry]) -> EncodedBatch:
        """Encode and sign the next group commit without writing it (CPU only).

        Batches must be committed in the order they were prepared; preparing the next batch
        while the previous one is being synced (``commit_batch`` in another thread) overlaps
        encoding and signing with the disk. Raises ``ValueError`` for a bad entry (nothing
        changes then).
        """
        self._check_usable()
        batch = self._encoder.encode(entries, next_seq=self._prep_seq, head=self._prep_head)
        self._prep_seq = batch.next_seq
        self._prep_head = batch.head
        return batch

    def commit_batch(self, batch: EncodedBatch) -> list[JournalRecord]:
        """Write and fdatasync a prepared batch; returns its records once durable."""
        self._check_usable()
        if batch.first_seq != self._next_seq:
            raise ValueError(
                f"batches must be committed in the order prepared: this one starts at seq "
                f"{batch.first_seq}, the journal is at {self._next_seq}"
            )
        new_segment = self._write_fd is None or (
            self._seg_sizes[self._write_index] >= self.segment_bytes
        )
        index = self._write_index + 1 if new_segment else self._write_index
        prefix = b""
        if new_segment:
            prefix = encode_segment_header(
                SegmentHeader(
                    magic=SEGMENT_MAGIC, journal_id=self.journal_id, index=index,
                    first_seq=batch.first_seq,
                )
            )
        data = prefix + batch.data if prefix else batch.data
        try:
            if new_segment:
                path = self.directory / segment_name(index)
                fd = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    0o600,
                )
                if self._write_fd is not None:
                    os.close(self._write_fd)
                self._write_fd = fd
                self._write_index = index
                self._paths[index] = path
                self._seg_sizes[index] = 0
            wfd = self._write_fd
            assert wfd is not None
            written = os.write(wfd, data)
            if written < len(data):  # short writes are legal; finish the batch
                view = memoryview(data)
                while written < len(data):
                    written += os.write(wfd, view[written:])
            os.fdatasync(wfd)
            if new_segment:
                _fsync_dir(self.directory)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            raise JournalFailedError(
                f"journal write failed, journal is now unusable: {self._failed}"
            ) from exc
        base = self._seg_sizes[index] + len(prefix)
        self._seg_sizes[index] = base + len(batch.data)
        pos_base = (index << _POS_SHIFT) | base
        sessions = self._sessions
        for session, off in batch.session_offsets:
            lst = sessions.get(session)
            if lst is None:
                sessions[session] = [pos_base + off]
            else:
                lst.append(pos_base + off)
        self._checkpoint = batch.checkpoint
        self._next_seq = batch.next_seq
        self._head = batch.head
        self._record_count += len(batch.records)
        return batch.records

    def _fail(self, reason: str) -> None:
        self._failed = reason
        log.error("journal_failed", directory=str(self.directory), reason=reason)

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.directory} is closed")
        if self._failed is not None:
            raise JournalFailedError(
                f"journal {self.directory} failed earlier and is unusable: {self._failed}"
            )

    # --- reading ------------------------------------------------------------------------------

    def _read_fd(self, index: int) -> int:
        fd = self._read_fds.get(index)
        if fd is None:
            fd = os.open(self._paths[index], os.O_RDONLY | os.O_CLOEXEC)
            self._read_fds[index] = fd
        return fd

    def _read_frame(self, index: int, offset: int) -> JournalRecord:
        fd = self._read_fd(index)
        head = os.pread(fd, FRAME_HEADER_BYTES + 512, offset)
        crc, word = FRAME_HEADER.unpack_from(head, 0) if len(head) >= 8 else (0, 0)
        n = word & 0xFFFFFF
        if not length_word_ok(word):
            raise _corrupt(self._paths[index], offset, "invalid length word on read",
                           self.directory)
        frame = head if len(head) >= FRAME_HEADER_BYTES + n else os.pread(
            fd, FRAME_HEADER_BYTES + n, offset
        )
        return _check_frame(
            memoryview(frame)[: FRAME_HEADER_BYTES + n], crc, self._paths[index], offset,
            self.directory,
        )

    def session_records(self, session_id: str) -> list[JournalRecord]:
        """Every record of ``session_id`` in journal order (index lookup, no full scan)."""
        self._check_usable()
        return [
            self._read_frame(p >> _POS_SHIFT, p & _POS_MASK)
            for p in self._sessions.get(session_id, ())
        ]

    def records(self, *, include_checkpoints: bool = False) -> Iterator[JournalRecord]:
        """Every record in journal order. Checkpoint records are skipped unless
        ``include_checkpoints`` (then ``record.is_checkpoint`` tells them apart)."""
        self._check_usable()
        for index in sorted(self._seg_sizes):
            size = self._seg_sizes[index]
            data = os.pread(self._read_fd(index), size, 0)
            yield from _frames(data, size, self._paths[index], self.directory,
                               include_checkpoints)

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd releases the flock
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _segment_first_seq(head: bytes) -> int | None:
    """``first_seq`` from the start of a segment file (its header frame), or None if unreadable."""
    if len(head) < FRAME_HEADER_BYTES:
        return None
    crc, word = FRAME_HEADER.unpack_from(head, 0)
    end = FRAME_HEADER_BYTES + (word & 0xFFFFFF)
    if not length_word_ok(word) or end > len(head):
        return None
    if zlib.crc32(head[FRAME_HEADER_BYTES:end]) != crc:
        return None
    try:
        header = msgspec.msgpack.decode(head[FRAME_HEADER_BYTES:end], type=SegmentHeader)
    except msgspec.MsgspecError:
        return None
    return header.first_seq


def _check_frame(
    frame: memoryview, crc: int, path: Path, offset: int, directory: Path
) -> JournalRecord:
    """Decode one frame read back from disk; a checksum mismatch is damage, never returned."""
    if len(frame) < FRAME_HEADER_BYTES or zlib.crc32(frame[FRAME_HEADER_BYTES:]) != crc:
        raise _corrupt(path, offset, "checksum mismatch on read", directory)
    try:
        return decode_record(frame[FRAME_HEADER_BYTES:])
    except msgspec.MsgspecError as exc:
        raise _corrupt(path, offset, f"record does not decode on read: {exc}", directory) from None


def _frames(
    data: bytes, size: int, path: Path, directory: Path, include_checkpoints: bool
) -> Iterator[JournalRecord]:
    """Records of one segment's first ``size`` (already verified) bytes, header skipped."""
    mv = memoryview(data)
    pos = 0
    first = True
    while pos < size:
        if size - pos < FRAME_HEADER_BYTES:
            raise _corrupt(path, pos, "frame header cut short on read", directory)
        crc, word = FRAME_HEADER.unpack_from(data, pos)
        end = pos + FRAME_HEADER_BYTES + (word & 0xFFFFFF)
        if not length_word_ok(word) or end > size:
            raise _corrupt(path, pos, "invalid frame on read", directory)
        if first:  # the segment header frame
            first = False
            pos = end
            continue
        rec = _check_frame(mv[pos:end], crc, path, pos, directory)
        pos = end
        if include_checkpoints or not rec.is_checkpoint:
            yield rec


def read_records(
    directory: str | os.PathLike[str],
    public_key: DevicePublicKey,
    *,
    journal_id: str | None = None,
    session: str | None = None,
    include_checkpoints: bool = False,
) -> Iterator[JournalRecord]:
    """Read-only: verify the whole journal (like ``verify_journal``), then yield its records
    up to the last valid checkpoint (optionally one session's). Never truncates, never locks;
    raises ``JournalCorruptError`` on damage."""
    d = Path(directory)
    if not d.is_dir():
        raise JournalError(f"journal directory {d} does not exist")
    jid = public_key.device_id if journal_id is None else journal_id
    scanned = _scan_all(d, public_key, jid)
    if scanned.problem_at >= 0:
        pos = scanned.problem_at
        sc = scanned.scans[pos]
        if sc.problem == DAMAGED or pos != len(scanned.segments) - 1:
            raise _corrupt(scanned.segments[pos].path, sc.stop, sc.reason, d)
    for seg, sc in zip(scanned.segments, scanned.scans, strict=True):
        if sc.header is None:
            continue
        data = seg.path.read_bytes()
        for rec in _frames(data, sc.good_end, seg.path, d, include_checkpoints):
            if session is None or rec.session == session:
                yield rec


def _recover(directory: Path, scanned: _Scanned) -> None:
    """Cut a torn tail of the last segment back to its last checkpoint, or refuse on damage."""
    pos = scanned.problem_at
    seg = scanned.segments[pos]
    sc = scanned.scans[pos]
    is_last = pos == len(scanned.segments) - 1
    if sc.problem == DAMAGED or not is_last:
        reason = sc.reason
        if not is_last and sc.problem != DAMAGED:
            reason += " (in a segment that is not the last, so it was acknowledged)"
        raise _corrupt(seg.path, sc.stop, reason, directory)
    size = seg.path.stat().st_size
    dropped_records = sc.seq_at_stop - sc.seq_at_good_end
    if sc.header is None:
        # the segment's own header never made it to disk: the whole file is a torn write
        log.warning(
            "journal_torn_segment_removed", segment=str(seg.path), bytes=size, reason=sc.reason
        )
        os.unlink(seg.path)
        _fsync_dir(directory)
        del scanned.segments[pos]
        del scanned.scans[pos]
    else:
        log.warning(
            "journal_torn_tail_truncated",
            segment=str(seg.path),
            from_offset=sc.good_end,
            to_offset=size,
            dropped_bytes=size - sc.good_end,
            dropped_records=dropped_records,
            torn_at_offset=sc.stop,
            reason=sc.reason,
        )
        fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, sc.good_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    scanned.problem_at = -1


# --- read-only verification ---------------------------------------------------------------------


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``verify_journal`` found. ``ok`` is False only for damage (see the module doc)."""

    ok: bool
    directory: str
    journal_id: str
    segments: int
    records: int
    checkpoints: int
    next_seq: int
    head: str
    #: set when the last segment ends in a torn tail that opening would cut (not damage)
    torn_tail: dict[str, Any] | None = None
    #: set when ``ok`` is False: segment, offset, reason
    problem: dict[str, Any] | None = None


def verify_journal(
    directory: str | os.PathLike[str],
    public_key: DevicePublicKey,
    *,
    journal_id: str | None = None,
) -> VerifyReport:
    """Verify every segment, checksum, link and checkpoint signature; never modify anything."""
    d = Path(directory)
    if not d.is_dir():
        raise JournalError(f"journal directory {d} does not exist")
    jid = public_key.device_id if journal_id is None else journal_id
    scanned = _scan_all(d, public_key, jid)
    records = sum(s.records_verified for s in scanned.scans)
    checkpoints = sum(s.checkpoints_verified for s in scanned.scans)
    torn: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None
    if scanned.problem_at >= 0:
        seg = scanned.segments[scanned.problem_at]
        sc = scanned.scans[scanned.problem_at]
        is_last = scanned.problem_at == len(scanned.segments) - 1
        where = {"segment": str(seg.path), "offset": sc.stop, "reason": sc.reason}
        if sc.problem == DAMAGED or not is_last:
            problem = where
        else:
            torn = {
                **where,
                "truncate_to": sc.good_end,
                "unacknowledged_records": sc.seq_at_stop - sc.seq_at_good_end,
            }
    return VerifyReport(
        ok=problem is None,
        directory=str(d),
        journal_id=jid,
        segments=len(scanned.segments),
        records=records,
        checkpoints=checkpoints,
        next_seq=scanned.state.next_seq,
        head=scanned.state.head.hex(),
        torn_tail=torn,
        problem=problem,
    )
