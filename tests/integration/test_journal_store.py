"""The journal on real files: append, reopen, index, segments, torn writes, bit flips, failures."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import JournalCorruptError, JournalError, JournalFailedError
from aura_node.journal import Journal, JournalEntry, JournalRecord, verify_journal
from aura_node.journal.format import CHECKPOINT_KIND, decode_checkpoint, verify_checkpoint

KEY = DeviceKey.from_seed(b"\x07" * 32)


def entries(n: int, *, tag: str = "", session: str | None = None) -> list[JournalEntry]:
    return [
        JournalEntry(
            session=session if session is not None else f"s{i % 3}",
            kind="test/entry",
            body=f"{tag}:{i}".encode() * 5,
            ts=1000.0 + i,
        )
        for i in range(n)
    ]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("segment-*.journal"))


def test_append_reopen_and_read_back(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal.open(d, KEY) as j:
        a = j.append_batch(entries(3, tag="a"))
        b = j.append_batch(entries(2, tag="b"))
        assert [r.seq for r in a + b] == [0, 1, 2, 4, 5]  # seq 3 is a's checkpoint
        assert j.record_count == 5
    with Journal.open(d, KEY) as j:
        assert list(j.records()) == a + b
        assert j.next_seq == 7
        assert j.sessions() == ["s0", "s1", "s2"]
        assert j.session_records("s0") == [a[0], b[0]]
        assert j.session_records("nope") == []
        cp = j.latest_checkpoint()
        assert cp is not None and cp.count == 6
        verify_checkpoint(KEY.public, cp)
        all_recs = list(j.records(include_checkpoints=True))
        assert [r.kind == CHECKPOINT_KIND for r in all_recs] == [False] * 3 + [True] + [
            False
        ] * 2 + [True]
        # appends after reopen continue the chain and the index
        c = j.append_batch(entries(1, tag="c", session="s0"))
        assert c[0].seq == 7 and j.session_records("s0")[-1] == c[0]
    assert verify_journal(d, KEY.public).ok


def test_segments_roll_over_and_the_chain_crosses_them(tmp_path: Path) -> None:
    d = tmp_path / "j"
    written: list[JournalRecord] = []
    with Journal.open(d, KEY, segment_bytes=4096) as j:
        for k in range(40):
            written += j.append_batch(entries(4, tag=str(k)))
    assert len(segments(d)) >= 4
    with Journal.open(d, KEY, segment_bytes=4096) as j:
        assert list(j.records()) == written
        assert j.session_records("s1") == [r for r in written if r.session == "s1"]
    report = verify_journal(d, KEY.public)
    assert report.ok and report.segments == len(segments(d)) and report.records == 160


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY), pytest.raises(JournalError, match="in use"):
        Journal.open(tmp_path, KEY)


def test_wrong_key_or_journal_id_is_refused(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY) as j:
        j.append_batch(entries(2))
    with pytest.raises(JournalCorruptError, match="segment-00000000.journal"):
        Journal.open(tmp_path, DeviceKey.from_seed(b"\x08" * 32))
    with pytest.raises(JournalCorruptError, match="belongs to journal"):
        Journal.open(tmp_path, KEY, journal_id="another")


def test_reserved_kind_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY) as j:
        with pytest.raises(ValueError, match="reserved"):
            j.append_batch([JournalEntry(session="", kind="journal/x", body=b"", ts=0.0)])
        assert j.next_seq == 0 and j.failure is None
        j.append_batch(entries(1))


# --- torn writes ---------------------------------------------------------------------------------


def _build(
    d: Path, *, segment_bytes: int = 1 << 20, roll: bool = False
) -> tuple[list[JournalRecord], int, Path]:
    """Acknowledged batches, then one last batch; returns (records before the last batch,
    offset where the last batch starts, segment holding it). With ``roll`` the last batch
    starts a new segment, so tearing it can also tear that segment's header."""
    with Journal.open(d, KEY, segment_bytes=segment_bytes) as j:
        acked: list[JournalRecord] = []
        for k in range(3):
            acked += j.append_batch(entries(3, tag=f"b{k}"))
        while roll and segments(d)[-1].stat().st_size < segment_bytes:
            acked += j.append_batch([JournalEntry(session="", kind="t/pad", body=b"x" * 900,
                                                  ts=0.0)])
        last = segments(d)[-1]
        start = last.stat().st_size
        j.append_batch(entries(4, tag="last"))
    new_last = segments(d)[-1]
    assert (new_last != last) == roll
    if roll:
        start = 0  # all of the new segment file is the last batch
    return acked, start, new_last


@pytest.mark.parametrize("roll", [False, True], ids=["same-segment", "new-segment"])
def test_truncation_at_every_offset_of_the_last_batch_recovers(
    tmp_path: Path, roll: bool
) -> None:
    template = tmp_path / "template"
    segment_bytes = 4096
    acked, start, last = _build(template, segment_bytes=segment_bytes, roll=roll)
    with Journal.open(template, KEY, segment_bytes=segment_bytes) as j:
        everything = list(j.records())
    assert everything[: len(acked)] == acked and len(everything) == len(acked) + 4
    size = last.stat().st_size
    assert size - start > 100
    # with roll, a cut right after the new segment's header leaves a sound empty segment
    word = int.from_bytes(last.read_bytes()[4:8], "little")
    header_end = 8 + (word & 0xFFFFFF) if roll else -1
    work = tmp_path / "work"
    for cut in range(start, size + 1):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        os.truncate(work / last.name, cut)
        with capture_logs() as logs, Journal.open(work, KEY, segment_bytes=segment_bytes) as j:
            got = list(j.records())
            if cut == size:
                assert got == everything
                assert not logs
            else:
                # every acknowledged record, none of the torn batch
                assert got == acked, f"cut at {cut}"
                events = {e["event"] for e in logs}
                if (cut > start or roll) and cut != header_end:
                    assert events & {
                        "journal_torn_tail_truncated", "journal_torn_segment_removed"
                    }, f"cut at {cut}: {events}"
            # the recovered journal accepts appends and stays verifiable
            j.append_batch(entries(1, tag="after"))
        assert verify_journal(work, KEY.public).ok


def test_torn_tail_log_names_what_was_dropped(tmp_path: Path) -> None:
    acked, start, last = _build(tmp_path)
    size = last.stat().st_size
    os.truncate(last, size - 10)  # inside the last batch's checkpoint
    with capture_logs() as logs, Journal.open(tmp_path, KEY) as j:
        assert list(j.records()) == acked
    (event,) = [e for e in logs if e["event"] == "journal_torn_tail_truncated"]
    assert event["from_offset"] == start
    assert event["to_offset"] == size - 10
    assert event["dropped_records"] == 4  # four complete records, their checkpoint torn
    assert event["segment"].endswith(last.name)


def test_zeros_after_the_last_checkpoint_are_a_torn_tail(tmp_path: Path) -> None:
    acked, _, last = _build(tmp_path)
    with Journal.open(tmp_path, KEY) as j:
        everything = list(j.records())
    with open(last, "ab") as f:
        f.write(bytes(5000))  # size extended, data never written (crash on some filesystems)
    with Journal.open(tmp_path, KEY) as j:
        assert list(j.records()) == everything
        assert [r.seq for r in everything[: len(acked)]] == [r.seq for r in acked]


# --- bit flips ------------------------------------------------------------------------------------


def test_bit_flips_never_yield_a_corrupted_record(tmp_path: Path, full_run: bool) -> None:
    template = tmp_path / "template"
    with Journal.open(template, KEY, segment_bytes=4096) as j:
        for k in range(16):
            j.append_batch(entries(5, tag=f"b{k}"))
        original = list(j.records())
    files = segments(template)
    assert len(files) >= 2
    rng = random.Random(20261125)
    trials = 1500 if full_run else 150
    work = tmp_path / "work"
    refused = 0
    for _ in range(trials):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        victim = work / rng.choice(files).name
        data = bytearray(victim.read_bytes())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(data))
        try:
            with Journal.open(work, KEY, segment_bytes=4096) as j:
                got = list(j.records())
        except JournalCorruptError as exc:
            refused += 1
            assert victim.name in exc.message and "byte offset" in exc.message
            assert "aura-node journal verify --home" in exc.message
            offset = int(exc.message.split("byte offset ")[1].split(":")[0])
            assert offset <= pos  # the damage is reported at or before the flipped byte
            report = verify_journal(work, KEY.public)
            assert not report.ok and report.problem is not None
            assert report.problem["segment"].endswith(victim.name)
            continue
        # every batch was acknowledged: opening may only succeed with all of them intact
        assert got == original
    # every byte of an acknowledged journal is covered by a checksum, link or signature
    assert refused == trials


def test_a_missing_middle_segment_is_damage(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY, segment_bytes=4096) as j:
        for k in range(30):
            j.append_batch(entries(4, tag=str(k)))
    segs = segments(tmp_path)
    segs[1].unlink()
    with pytest.raises(JournalCorruptError, match="missing"):
        Journal.open(tmp_path, KEY)


def test_damage_in_an_earlier_segment_is_never_truncated(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY, segment_bytes=4096) as j:
        for k in range(30):
            j.append_batch(entries(4, tag=str(k)))
    first = segments(tmp_path)[0]
    size = first.stat().st_size
    os.truncate(first, size - 1)  # looks torn, but later segments prove it was acknowledged
    with pytest.raises(JournalCorruptError, match="not the last"):
        Journal.open(tmp_path, KEY)
    assert first.stat().st_size == size - 1  # open did not cut anything


# --- failures -------------------------------------------------------------------------------------


def test_failed_fdatasync_fails_the_journal_and_is_never_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journal.open(tmp_path, KEY)
    try:
        ok = j.append_batch(entries(2, tag="ok"))
        calls: list[int] = []

        def broken(fd: int) -> None:
            calls.append(fd)
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(JournalFailedError, match="Input/output error"):
            j.append_batch(entries(1, tag="lost"))
        assert len(calls) == 1
        assert j.failure is not None and "Input/output error" in j.failure
        monkeypatch.undo()  # even with a working disk again, the journal stays failed
        for call in (
            lambda: j.append_batch(entries(1)),
            lambda: list(j.records()),
            lambda: j.session_records("s0"),
            j.sessions,
        ):
            with pytest.raises(JournalFailedError, match="Input/output error"):
                call()
        assert len(calls) == 1
    finally:
        j.close()
    # the acknowledged records survive; the failed batch was never acknowledged
    with Journal.open(tmp_path, KEY) as j2:
        recs = list(j2.records())
        assert recs[: len(ok)] == ok


def test_failed_write_fails_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal.open(tmp_path, KEY) as j:
        j.append_batch(entries(1))

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(JournalFailedError, match="No space left"):
            j.append_batch(entries(1))
        monkeypatch.undo()
        with pytest.raises(JournalFailedError, match="No space left"):
            j.append_batch(entries(1))


def test_checkpoint_of_a_reopened_journal_is_signed_by_the_device(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY) as j:
        j.append_batch(entries(2))
    with Journal.open(tmp_path, KEY) as j:
        last = list(j.records(include_checkpoints=True))[-1]
        assert last.is_checkpoint
        cp = decode_checkpoint(last.body)
        assert cp.journal_id == KEY.device_id == j.journal_id
        verify_checkpoint(KEY.public, cp)


def test_prepared_batches_commit_only_in_order(tmp_path: Path) -> None:
    with Journal.open(tmp_path, KEY) as j:
        first = j.prepare_batch(entries(2, tag="1"))
        second = j.prepare_batch(entries(2, tag="2"))  # chained onto the prepared first
        assert second.first_seq == first.next_seq
        with pytest.raises(ValueError, match="order prepared"):
            j.commit_batch(second)
        assert j.next_seq == 0 and j.failure is None  # nothing written
        assert j.commit_batch(first) == first.records
        assert j.commit_batch(second) == second.records
    with Journal.open(tmp_path, KEY) as j:
        assert list(j.records()) == first.records + second.records
