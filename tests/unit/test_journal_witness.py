"""Rollback and fork detection, the pure parts (issue 13): judging a checkpoint of our own
journal, the refusal state and its deliberate acceptance, the held-checkpoints store (never
backwards, bad signatures refused, durable file), ``Journal.head_at`` and the hello fields.
No sockets; the store and ``head_at`` use files under ``tmp_path``."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import BadSignatureError
from aura_node.journal import Journal, JournalEntry
from aura_node.journal.format import Checkpoint, genesis_link, sign_checkpoint
from aura_node.journal.witness import (
    KIND_ACCEPTED,
    KIND_DETECTED,
    CheckpointFormatError,
    PeerCheckpointsError,
    PeerCheckpointStore,
    RollbackAcceptError,
    RollbackGuard,
    acceptance_code,
    decode_checkpoint_bytes,
    encode_acceptance,
    encode_checkpoint,
    encode_evidence,
    judge_own,
    verify_own,
)
from aura_node.transport.framing import CheckpointNote, FrameDecoder, FrameEncoder, Hello

KEY = DeviceKey.from_seed(b"\x11" * 32)
PEER = DeviceKey.from_seed(b"\x22" * 32)
OTHER = DeviceKey.from_seed(b"\x33" * 32)


def _head(n: int, fork: int = 0) -> bytes:
    return bytes([n % 256, fork]) * 16


def _cp(key: DeviceKey, count: int, fork: int = 0) -> Checkpoint:
    return sign_checkpoint(key, journal_id=key.device_id, count=count, head=_head(count, fork))


def _guard() -> RollbackGuard:
    return RollbackGuard(journal_id=KEY.device_id, public=KEY.public)


# --- judging ------------------------------------------------------------------------------------


def test_judge_own_tells_consistent_rollback_fork_and_accepted() -> None:
    cp = _cp(KEY, 10)
    assert judge_own(cp, journal_count=12, head_at_count=_head(10)) == "consistent"
    assert judge_own(cp, journal_count=10, head_at_count=_head(10)) == "consistent"
    assert judge_own(cp, journal_count=9, head_at_count=None) == "rollback"
    assert judge_own(cp, journal_count=12, head_at_count=_head(10, fork=1)) == "fork"
    assert judge_own(cp, journal_count=9, head_at_count=None,
                     accepted=[(10, _head(10))]) == "accepted"


def test_only_our_own_signature_counts_as_evidence() -> None:
    verify_own(KEY.public, KEY.device_id, _cp(KEY, 3))
    with pytest.raises(BadSignatureError):
        verify_own(KEY.public, KEY.device_id, sign_checkpoint(
            OTHER, journal_id=KEY.device_id, count=3, head=_head(3)))
    with pytest.raises(BadSignatureError, match="expected a checkpoint of journal"):
        verify_own(KEY.public, KEY.device_id, _cp(PEER, 3))
    forged = msgspec.structs.replace(_cp(KEY, 3), count=300)
    with pytest.raises(BadSignatureError):
        verify_own(KEY.public, KEY.device_id, forged)


def test_guard_refuses_on_evidence_and_acceptance_must_quote_its_code() -> None:
    g = _guard()
    assert g.state == "unchecked" and "could not be checked" in g.message("/h")
    assert g.judge(peer="b", peer_device_id=PEER.device_id, cp=_cp(KEY, 5), journal_count=8,
                   head_at_count=_head(5), now=1.0) is None
    assert g.state == "ok" and not g.refusing and g.is_known_consistent(_cp(KEY, 5))
    e = g.judge(peer="b", peer_device_id=PEER.device_id, cp=_cp(KEY, 20), journal_count=8,
                head_at_count=None, now=2.0)
    assert e is not None and e.verdict == "rollback" and g.state == "refusing"
    # the same checkpoint again is not new evidence
    assert g.judge(peer="c", peer_device_id=OTHER.device_id, cp=_cp(KEY, 20), journal_count=8,
                   head_at_count=None, now=3.0) is None
    msg = g.message("/h")
    assert "peer b holds our checkpoint of 20 records" in msg and "holds 8" in msg
    assert f"accept-rollback --home /h --code {g.code()}" in msg
    code = g.code()
    f = g.judge(peer="c", peer_device_id=OTHER.device_id, cp=_cp(KEY, 6, fork=1),
                journal_count=8, head_at_count=_head(6), now=4.0)
    assert f is not None and f.verdict == "fork" and "does not reproduce" in g.message("/h")
    # new evidence changes the code: the old one accepts nothing
    assert g.code() != code
    with pytest.raises(RollbackAcceptError, match="does not name the current evidence"):
        g.accept(code, reason="x")
    assert g.state == "refusing" and len(g.evidence) == 2
    acceptance = g.accept(g.code(), reason="restored from backup")
    assert {c.count for c in acceptance.checkpoints} == {6, 20}
    assert g.state == "ok"
    with pytest.raises(RollbackAcceptError, match="nothing to accept"):
        g.accept(acceptance.code, reason="again")
    # an accepted checkpoint is never evidence again, whatever the journal holds later
    assert g.judge(peer="b", peer_device_id=PEER.device_id, cp=_cp(KEY, 20), journal_count=30,
                   head_at_count=_head(20, fork=7), now=5.0) is None
    assert not g.refusing


def test_journaled_decisions_are_folded_and_rejudged_at_start() -> None:
    g = _guard()
    e1 = g.judge(peer="b", peer_device_id=PEER.device_id, cp=_cp(KEY, 20), journal_count=8,
                 head_at_count=None, now=1.0)
    assert e1 is not None
    accepted = g.accept(g.code(), reason="r")
    e2 = g.judge(peer="b", peer_device_id=PEER.device_id, cp=_cp(KEY, 40), journal_count=30,
                 head_at_count=None, now=2.0)
    assert e2 is not None
    records = [(KIND_DETECTED, encode_evidence(e1)), (KIND_ACCEPTED, encode_acceptance(accepted)),
               (KIND_DETECTED, encode_evidence(e2)), ("other.kind", b"\x00")]
    fresh = _guard()
    pending = fresh.restore(records)
    assert [e.checkpoint.count for e in pending] == [40]
    assert (20, _head(20)) in fresh.accepted
    # the journal grew past 40 with another history: still open, now as a fork
    assert fresh.reopen(pending[0], journal_count=45, head_at_count=_head(40, fork=2))
    assert fresh.refusing and next(iter(fresh.evidence.values())).verdict == "fork"
    # a restored newer journal reproduces it: cleared
    other = _guard()
    assert not other.reopen(pending[0], journal_count=45, head_at_count=_head(40))
    assert not other.refusing


def test_acceptance_code_depends_only_on_the_checkpoints() -> None:
    g = _guard()
    for n, peer in ((20, "b"), (21, "c")):
        g.judge(peer=peer, peer_device_id=PEER.device_id, cp=_cp(KEY, n), journal_count=8,
                head_at_count=None, now=float(n))
    code = g.code()
    assert len(code) == 12 and code == acceptance_code(reversed(list(g.evidence.values())))


# --- the held-checkpoints store -----------------------------------------------------------------


def test_store_keeps_the_newest_and_never_goes_backwards(tmp_path: Path) -> None:
    s = PeerCheckpointStore(tmp_path / "held")
    assert s.offer(peer="b", public=PEER.public, cp=_cp(PEER, 10), now=1.0) == "newer"
    assert s.offer(peer="b", public=PEER.public, cp=_cp(PEER, 4), now=2.0) == "older"
    assert s.offer(peer="b", public=PEER.public, cp=_cp(PEER, 10), now=3.0) == "same"
    assert s.offer(peer="b", public=PEER.public, cp=_cp(PEER, 10, fork=1), now=4.0) == "conflict"
    held = s.held(PEER.device_id)
    assert held is not None and (held.count, held.head) == (10, _head(10))
    assert s.view()["b"]["conflict"]["head"] == _head(10, fork=1).hex()
    assert s.offer(peer="b", public=PEER.public, cp=_cp(PEER, 11), now=5.0) == "newer"


def test_store_refuses_checkpoints_the_peer_did_not_sign(tmp_path: Path) -> None:
    s = PeerCheckpointStore(tmp_path / "held")
    by_other = sign_checkpoint(OTHER, journal_id=PEER.device_id, count=9, head=_head(9))
    with pytest.raises(BadSignatureError):
        s.offer(peer="b", public=PEER.public, cp=by_other, now=1.0)
    with pytest.raises(BadSignatureError, match="expected its own"):
        s.offer(peer="b", public=PEER.public, cp=_cp(OTHER, 9), now=1.0)
    tampered = msgspec.structs.replace(_cp(PEER, 9), count=99)
    with pytest.raises(BadSignatureError):
        s.offer(peer="b", public=PEER.public, cp=tampered, now=1.0)
    assert s.held(PEER.device_id) is None and not s.dirty


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2)), min_size=1, max_size=25))
def test_store_holds_the_first_head_seen_at_the_largest_count(
    offers: list[tuple[int, int]],
) -> None:
    s = PeerCheckpointStore(Path("/nonexistent/held"))
    for i, (count, fork) in enumerate(offers):
        s.offer(peer="b", public=PEER.public, cp=_cp(PEER, count, fork), now=0.0)
        held_now = s.held(PEER.device_id)
        # after every offer: the largest count so far, never less
        assert held_now is not None and held_now.count == max(c for c, _ in offers[: i + 1])
    held = s.held(PEER.device_id)
    top = max(c for c, _ in offers)
    assert held is not None and held.count == top
    # the head kept at the top count is the first one seen there, whatever came later
    first_top = next(f for c, f in offers if c == top)
    assert held.head == _head(top, first_top)


def _dirty(s: PeerCheckpointStore) -> bool:
    return s.dirty  # a call: mypy would narrow the attribute across ``save()``


def test_store_file_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "held"
    s = PeerCheckpointStore.load(path)  # no file yet: empty
    s.offer(peer="b", public=PEER.public, cp=_cp(PEER, 7), now=1.0)
    assert _dirty(s)
    s.save()
    assert not _dirty(s) and not (tmp_path / "held.tmp").exists()
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = PeerCheckpointStore.load(path)
    held = again.held(PEER.device_id)
    assert held is not None and held == _cp(PEER, 7)
    path.write_bytes(b"\xc1 not msgpack")
    with pytest.raises(PeerCheckpointsError, match="is damaged .* move it aside"):
        PeerCheckpointStore.load(path)


def test_wire_checkpoints_decode_or_fail_with_one_line() -> None:
    cp = _cp(KEY, 3)
    assert decode_checkpoint_bytes(encode_checkpoint(cp), what="x") == cp
    assert decode_checkpoint_bytes(b"", what="x") is None and encode_checkpoint(None) == b""
    with pytest.raises(CheckpointFormatError, match="x: expected a signed checkpoint"):
        decode_checkpoint_bytes(b"\x93\x01\x02\x03", what="x")
    with pytest.raises(CheckpointFormatError, match="at most 512 bytes, got 600"):
        decode_checkpoint_bytes(b"\x00" * 600, what="x")
    short = msgspec.msgpack.encode(Checkpoint(journal_id="j", count=1, head=b"ab",
                                              signature=b""))
    with pytest.raises(CheckpointFormatError, match="32-byte head, got count 1 and 2 bytes"):
        decode_checkpoint_bytes(short, what="x")


# --- the journal's heads at past counts ---------------------------------------------------------


def test_head_at_reads_the_chain_head_at_any_count_across_segments(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j", KEY, max_batch=3, segment_bytes=4096) as j:
        heads = {0: genesis_link(KEY.device_id)}
        for i in range(60):
            j.append_batch([JournalEntry(session="s", kind="k", body=bytes(200), ts=float(i))])
            heads[j.next_seq] = j.head
        assert len(list((tmp_path / "j").glob("segment-*"))) > 2
        expected = {}
        for rec in j.records(include_checkpoints=True):
            expected[rec.seq] = rec.prev
        expected[j.next_seq] = j.head
        for count in (0, 1, 2, 17, 60, 61, j.next_seq - 1, j.next_seq):
            assert j.head_at(count) == expected[count]
        for count, head in heads.items():
            assert j.head_at(count) == head
        assert j.head_at(j.next_seq + 1) is None and j.head_at(-1) is None
    # reopened: the same answers from the scan's state
    with Journal.open(tmp_path / "j", KEY, max_batch=3, segment_bytes=4096) as j:
        for count, head in heads.items():
            assert j.head_at(count) == head
    with Journal.open(tmp_path / "empty", KEY) as e:
        assert e.head_at(0) == genesis_link(KEY.device_id) and e.head_at(1) is None


# --- the hello carries them ---------------------------------------------------------------------


def test_hello_checkpoint_fields_are_optional_and_bounded() -> None:
    enc = FrameEncoder(max_frame_bytes=4096)
    cp = encode_checkpoint(_cp(KEY, 3))
    hello = Hello(version=1, device_id="ab" * 16, node_name="a", choreographies=(),
                  checkpoint=cp, your_checkpoint=b"")
    old = msgspec.msgpack.encode(["hello", 1, "ab" * 16, "a", []])  # a hello without them
    dec = FrameDecoder(max_frame_bytes=4096)
    dec.feed(enc.encode(hello) + len(old).to_bytes(4, "big") + old
             + enc.encode(CheckpointNote(checkpoint=cp)))
    got = dec.frames()
    assert got[0] == hello
    assert isinstance(got[1], Hello) and got[1].checkpoint == b"" == got[1].your_checkpoint
    assert got[2] == CheckpointNote(checkpoint=cp)
    bad = FrameDecoder(max_frame_bytes=4096)
    bad.feed(enc.encode(CheckpointNote(checkpoint=b"\x00" * 513)))
    with pytest.raises(Exception, match="length <= 512"):
        bad.next_frame()
