"""An in-memory journal in the real on-disk format, for the simulation.

Theory of operation
-------------------
A node's journal on disk is one or more segment files of frames (``aura_node.journal.format``).
:class:`MemoryJournal` keeps the bytes of a single segment in memory and produces them with the
same pure codec the file store uses: ``BatchEncoder`` turns one group commit (every record of
one protocol step) into records with seq, ts, session, kind, body and the hash-chain link,
closed by a checkpoint signed with the node's device key. Reading goes through
``scan_segment`` (checksums, length words, chain, checkpoint signatures) and ``decode_record``,
exactly as opening a journal after a restart does, so what a rehydrated driver sees has made
the full round trip through the format.

A crash in the middle of a group commit is modelled by :meth:`MemoryJournal.tear`: only a
prefix of the batch's bytes reaches the "disk". :meth:`MemoryJournal.reopen` then does what
opening does: scan, and cut a torn tail back to the last verified checkpoint; anything else
that does not verify is corruption and raises ``JournalCorruptError``.
"""

from __future__ import annotations

from collections.abc import Sequence

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import JournalCorruptError
from aura_node.journal import format as jf


class MemoryJournal:
    """One node's journal as the bytes of one segment (see the module docstring)."""

    def __init__(self, key: DeviceKey, *, journal_id: str) -> None:
        self.journal_id = journal_id
        self.public = key.public
        self._encoder = jf.BatchEncoder(key, journal_id=journal_id, max_batch=1 << 16)
        self.data = bytearray(jf.encode_segment_header(jf.SegmentHeader(
            magic=jf.SEGMENT_MAGIC, journal_id=journal_id, index=0, first_seq=0)))
        self.next_seq = 0
        self.head = jf.genesis_link(journal_id)
        #: group commits acknowledged (appends that reached the disk whole)
        self.commits = 0

    def encode(self, entries: Sequence[jf.JournalEntry]) -> jf.EncodedBatch:
        return self._encoder.encode(entries, next_seq=self.next_seq, head=self.head)

    def commit(self, batch: jf.EncodedBatch) -> None:
        """The batch reached the disk whole (write + fsync acknowledged)."""
        self.data += batch.data
        self.next_seq, self.head = batch.next_seq, batch.head
        self.commits += 1

    def tear(self, batch: jf.EncodedBatch, keep: int) -> None:
        """A crash during the write: only ``keep`` bytes of the batch reached the disk."""
        self.data += batch.data[:max(0, min(keep, len(batch.data) - 1))]

    def scan(self) -> jf.SegmentScan:
        state = jf.ScanState(journal_id=self.journal_id, next_seq=0,
                             head=jf.genesis_link(self.journal_id))
        return jf.scan_segment(bytes(self.data), state=state, public=self.public,
                               expect_index=0)

    def reopen(self) -> None:
        """What opening the journal after a crash does: cut a torn tail back to the last
        checkpoint; refuse (raise) on damage."""
        scan = self.scan()
        if scan.problem == jf.DAMAGED:
            raise JournalCorruptError(
                f"journal {self.journal_id} damaged at offset {scan.stop}: {scan.reason}")
        del self.data[scan.good_end:]
        self.next_seq, self.head = scan.seq_at_good_end, scan.head_at_good_end

    def records(self) -> list[jf.JournalRecord]:
        """Every verified record (checkpoints excluded), in order; raises on damage."""
        scan = self.scan()
        if scan.problem == jf.DAMAGED:
            raise JournalCorruptError(
                f"journal {self.journal_id} damaged at offset {scan.stop}: {scan.reason}")
        offsets = sorted(off for offs in scan.sessions.values() for off in offs)
        return [self._record_at(off) for off in offsets]

    def by_session(self) -> dict[str, list[jf.JournalRecord]]:
        scan = self.scan()
        if scan.problem == jf.DAMAGED:
            raise JournalCorruptError(
                f"journal {self.journal_id} damaged at offset {scan.stop}: {scan.reason}")
        return {sid: [self._record_at(off) for off in offs]
                for sid, offs in scan.sessions.items()}

    def _record_at(self, offset: int) -> jf.JournalRecord:
        _crc, word = jf.FRAME_HEADER.unpack_from(self.data, offset)
        n = word & 0xFFFFFF
        start = offset + jf.FRAME_HEADER_BYTES
        return jf.decode_record(bytes(self.data[start:start + n]))
