"""Peer checkpoints: witnessing each other's journals to catch a rollback or a fork.

Theory of operation
-------------------
A journal restored from an older copy passes every local check (its chain and checkpoints
are sound, it simply ends earlier), yet the node could then answer a session again
differently from what it already signed: the equivocation the journal exists to prevent. Only
someone who saw the newer journal can tell, so peers witness each other, in the manner of
C2SP transparency-log witnesses:

* **Holding.** Every node keeps, per pinned peer, the newest signed checkpoint (journal id,
  count, chain head; ``journal.format``) of that peer's journal it has seen, verified under
  the peer's pinned key before it is kept, in a small file under the node home
  (:class:`PeerCheckpointStore`: written to a temporary file, fsync'd, renamed over the old,
  directory fsync'd). It never goes backwards: an older checkpoint never replaces a newer one,
  and a different head at the same count is kept out and reported as the peer's fork.
* **Presenting.** The link hello carries the sender's own newest checkpoint and the newest
  checkpoint of the *receiver's* journal the sender holds; while linked, a checkpoint frame
  refreshes the former.
* **Judging** (:func:`judge_own`). A checkpoint of our own journal that a peer presents,
  signed by our key, is compared with our journal: a count beyond ours means our journal was
  rolled back (records we signed are gone); a count we hold whose head our journal does not
  reproduce at that count means a fork (we signed two different histories). Either is
  :class:`Evidence`. A checkpoint that is not signed by our key proves nothing against us (the
  peer misbehaves) and is refused.
* **Refusing** (:class:`RollbackGuard`). While evidence is open the node takes part in no
  session. Evidence is journaled (``rollback.detected``, with the checkpoint as the peer
  presented it), so the refusal survives restarts even after the peer's copy changes, and it is
  lifted in one of two ways: the operator restores the newer journal (the check then finds the
  checkpoint consistent and the refusal is gone, as the restored journal never held the
  detection), or accepts the loss deliberately (``aura-node journal accept-rollback`` with the
  code of the exact evidence shown, journaled as ``rollback.accepted``; the checkpoints it
  names are then ignored for good).
* **Unchecked.** Until a peer has linked and presented what it holds, the node cannot know;
  it says so (state ``unchecked``) and does not refuse.

This module is pure apart from the store's file I/O (no trio, no sockets, no clock: times
come in as arguments); the Trio side is ``aura_node.runtime.rollback``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from aura_node.crypto.keys import DevicePublicKey
from aura_node.errors import AuraError, BadSignatureError
from aura_node.journal.format import HASH_BYTES, Checkpoint, verify_checkpoint

#: journal record kinds (session ""): evidence found, and an operator's acceptance of it
KIND_DETECTED: Final = "rollback.detected"
KIND_ACCEPTED: Final = "rollback.accepted"
#: the held-checkpoints file in the node home
STORE_NAME: Final = "peer-checkpoints.msgpack"
#: the longest encoded checkpoint accepted from the wire (journal id, count, 32 + 64 bytes)
MAX_CHECKPOINT_BYTES: Final = 512
#: (count, head) pairs remembered as already found consistent (saves re-reading the journal)
_CONSISTENT_MEMORY: Final = 256

Verdict = Literal["consistent", "rollback", "fork", "accepted"]

_encoder: Final = msgspec.msgpack.Encoder()
_checkpoint_decoder: Final = msgspec.msgpack.Decoder(Checkpoint)


class CheckpointFormatError(AuraError):
    """Bytes offered as a checkpoint that do not decode as one."""

    code = "bad_checkpoint"


class PeerCheckpointsError(AuraError):
    """The held-checkpoints file cannot be read."""

    code = "peer_checkpoints"


def encode_checkpoint(cp: Checkpoint | None) -> bytes:
    """Wire form of a checkpoint (msgpack); ``b""`` for none."""
    return b"" if cp is None else _encoder.encode(cp)


def decode_checkpoint_bytes(data: bytes, *, what: str) -> Checkpoint | None:
    """A checkpoint from its wire form (``None`` for ``b""``), or ``CheckpointFormatError``."""
    if not data:
        return None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointFormatError(
            f"{what}: expected a checkpoint of at most {MAX_CHECKPOINT_BYTES} bytes, "
            f"got {len(data)}")
    try:
        cp = _checkpoint_decoder.decode(data)
    except msgspec.MsgspecError as exc:
        raise CheckpointFormatError(f"{what}: expected a signed checkpoint, got {exc}") from None
    if cp.count < 0 or len(cp.head) != HASH_BYTES:
        raise CheckpointFormatError(
            f"{what}: expected a count >= 0 and a {HASH_BYTES}-byte head, got count "
            f"{cp.count} and {len(cp.head)} bytes")
    return cp


def checkpoint_view(cp: Checkpoint) -> dict[str, Any]:
    """A checkpoint for JSON (status, logs): no secret in it, the signature is public."""
    return {"journal_id": cp.journal_id, "count": cp.count, "head": cp.head.hex()}


# --- judging a checkpoint of our own journal ------------------------------------------------


def verify_own(public: DevicePublicKey, journal_id: str, cp: Checkpoint) -> None:
    """Raise ``BadSignatureError`` unless ``cp`` is a checkpoint of our journal, signed by us."""
    if cp.journal_id != journal_id:
        raise BadSignatureError(
            f"expected a checkpoint of journal {journal_id}, got one of {cp.journal_id!r}")
    verify_checkpoint(public, cp)


def judge_own(
    cp: Checkpoint,
    *,
    journal_count: int,
    head_at_count: bytes | None,
    accepted: Iterable[tuple[int, bytes]] = (),
) -> Verdict:
    """What a (verified) checkpoint of our journal says about the journal we hold.

    ``journal_count`` is our record count (``Journal.next_seq``) and ``head_at_count`` our
    chain head after ``cp.count`` records (``Journal.head_at``; ``None`` when we hold fewer).
    A checkpoint the operator accepted losing is ``accepted`` whatever the journal says."""
    if (cp.count, cp.head) in set(accepted):
        return "accepted"
    if cp.count > journal_count or head_at_count is None:
        return "rollback"
    if head_at_count != cp.head:
        return "fork"
    return "consistent"


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint of our journal that a peer holds and our journal contradicts.

    The body of a ``rollback.detected`` record: ``checkpoint`` is the peer's copy, signed by
    our key, so the record proves by itself what we once signed."""

    verdict: str
    peer: str
    peer_device_id: str
    checkpoint: Checkpoint
    #: our record count when it was found
    journal_count: int
    seen: float

    def key(self) -> tuple[int, bytes]:
        return (self.checkpoint.count, self.checkpoint.head)

    def view(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "peer": self.peer,
            "peer_device_id": self.peer_device_id,
            "checkpoint": checkpoint_view(self.checkpoint),
            "journal_count": self.journal_count,
            "seen": self.seen,
        }

    def describe(self) -> str:
        cp = self.checkpoint
        if self.verdict == "rollback":
            return (f"peer {self.peer} holds our checkpoint of {cp.count} records, but our "
                    f"journal holds {self.journal_count}: it was rolled back (restored from an "
                    f"older copy?)")
        return (f"peer {self.peer} holds our checkpoint of {cp.count} records with head "
                f"{cp.head.hex()[:16]}..., which our journal does not reproduce at that count: "
                f"a fork (we signed two different histories)")


class Acceptance(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a ``rollback.accepted`` record: the operator accepted losing these."""

    code: str
    checkpoints: list[Checkpoint]
    reason: str


_evidence_decoder: Final = msgspec.msgpack.Decoder(Evidence)
_acceptance_decoder: Final = msgspec.msgpack.Decoder(Acceptance)


def encode_evidence(e: Evidence) -> bytes:
    return _encoder.encode(e)


def encode_acceptance(a: Acceptance) -> bytes:
    return _encoder.encode(a)


def acceptance_code(evidence: Iterable[Evidence]) -> str:
    """A short code naming exactly this set of evidence (what ``accept-rollback`` must quote):
    new evidence arriving after the operator looked changes it, so nothing is accepted unseen."""
    h = hashlib.sha256(b"aura-node/rollback/accept/v1\x00")
    for count, head in sorted({e.key() for e in evidence}):
        h.update(count.to_bytes(8, "big") + head)
    return h.hexdigest()[:12]


def resolution_hint(home: str, code: str) -> str:
    return (f"to resolve: stop the node and restore its newest journal copy (the one holding "
            f"these checkpoints) into {home}/journal, then start it again; or, to accept losing "
            f"those records for good, run `aura-node journal accept-rollback --home {home} "
            f"--code {code}` (journaled and logged)")


@dataclass(slots=True, kw_only=True)
class RollbackGuard:
    """Whether this node may take part in sessions, judged from peers' checkpoints of ours.

    Pure state: the shell feeds it the journal's past decisions (:meth:`restore`), each
    peer's presented checkpoint with the journal facts it needs (:meth:`judge`), and
    operator acceptances (:meth:`accept`)."""

    journal_id: str
    public: DevicePublicKey
    #: (count, head) the operator accepted losing
    accepted: set[tuple[int, bytes]] = field(default_factory=set)
    #: open evidence by (count, head)
    evidence: dict[tuple[int, bytes], Evidence] = field(default_factory=dict)
    #: peers that presented what they hold of ours at least once since start
    checked_by: set[str] = field(default_factory=set)
    _consistent: dict[tuple[int, bytes], None] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.evidence:
            return "refusing"
        return "ok" if self.checked_by else "unchecked"

    @property
    def refusing(self) -> bool:
        return bool(self.evidence)

    def code(self) -> str:
        return acceptance_code(self.evidence.values())

    def restore(self, records: Iterable[tuple[str, bytes]]) -> list[Evidence]:
        """Fold the journal's ``rollback.*`` records (kind, body) in order; returns the open
        evidence they leave (to re-judge against the journal as it is now)."""
        found: dict[tuple[int, bytes], Evidence] = {}
        for kind, body in records:
            if kind == KIND_DETECTED:
                e = _evidence_decoder.decode(body)
                found[e.key()] = e
            elif kind == KIND_ACCEPTED:
                for cp in _acceptance_decoder.decode(body).checkpoints:
                    self.accepted.add((cp.count, cp.head))
        return [e for k, e in found.items() if k not in self.accepted]

    def is_known_consistent(self, cp: Checkpoint) -> bool:
        return (cp.count, cp.head) in self._consistent

    def judge(
        self,
        *,
        peer: str,
        peer_device_id: str,
        cp: Checkpoint,
        journal_count: int,
        head_at_count: bytes | None,
        now: float,
    ) -> Evidence | None:
        """Judge a checkpoint of ours that ``peer`` holds (signature already verified).

        Returns *new* evidence (to journal and report), else None. Evidence already open for
        the same checkpoint is not repeated."""
        self.checked_by.add(peer)
        verdict = judge_own(cp, journal_count=journal_count, head_at_count=head_at_count,
                            accepted=self.accepted)
        key = (cp.count, cp.head)
        if verdict == "consistent":
            self._consistent[key] = None
            if len(self._consistent) > _CONSISTENT_MEMORY:
                del self._consistent[next(iter(self._consistent))]
            # a restored journal: evidence it now reproduces is no longer evidence
            self.evidence.pop(key, None)
            return None
        if verdict == "accepted" or key in self.evidence:
            return None
        e = Evidence(verdict=verdict, peer=peer, peer_device_id=peer_device_id, checkpoint=cp,
                     journal_count=journal_count, seen=now)
        self.evidence[key] = e
        return e

    def reopen(self, e: Evidence, *, journal_count: int, head_at_count: bytes | None) -> bool:
        """Re-judge journaled evidence at start; True (and open) unless the journal now
        reproduces the checkpoint (it was restored) or it was accepted."""
        verdict = judge_own(e.checkpoint, journal_count=journal_count,
                            head_at_count=head_at_count, accepted=self.accepted)
        if verdict in ("consistent", "accepted"):
            return False
        self.evidence[e.key()] = Evidence(
            verdict=verdict, peer=e.peer, peer_device_id=e.peer_device_id,
            checkpoint=e.checkpoint, journal_count=journal_count, seen=e.seen)
        return True

    def accept(self, code: str, *, reason: str) -> Acceptance:
        """The operator's acceptance of the open evidence, if ``code`` names exactly it.

        Raises ``RollbackAcceptError`` otherwise (nothing changes)."""
        if not self.evidence:
            raise RollbackAcceptError(
                "nothing to accept: no peer reports a rolled-back or forked journal")
        current = self.code()
        if code != current:
            raise RollbackAcceptError(
                f"acceptance code {code!r} does not name the current evidence (its code is "
                f"{current}; check `aura-node journal verify --peers` and quote that)")
        acceptance = Acceptance(
            code=current, reason=reason,
            checkpoints=[e.checkpoint for _, e in sorted(self.evidence.items())])
        self.accepted.update(self.evidence)
        self.evidence.clear()
        return acceptance

    def message(self, home: str) -> str:
        """One paragraph for the operator: what is wrong, who says so, what to do."""
        if self.state == "unchecked":
            return ("rollback could not be checked: no pinned peer has linked yet to present "
                    "the checkpoints of this journal it holds; it is checked when one links")
        if self.state == "ok":
            return f"checked against {', '.join(sorted(self.checked_by))}: consistent"
        found = "; ".join(e.describe() for _, e in sorted(self.evidence.items()))
        return (f"refusing to take part in sessions: {found}; "
                f"{resolution_hint(home, self.code())}")

    def view(self, home: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "checked_by": sorted(self.checked_by),
            "evidence": [e.view() for _, e in sorted(self.evidence.items())],
            "message": self.message(home),
        }
        if self.evidence:
            out["code"] = self.code()
        return out


class RollbackAcceptError(AuraError):
    code = "conflict"


# --- what we hold of our peers' journals ----------------------------------------------------


class HeldCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    peer: str
    checkpoint: Checkpoint
    received: float


class _StoreFile(msgspec.Struct, kw_only=True):
    version: int
    held: dict[str, HeldCheckpoint]


_store_decoder: Final = msgspec.msgpack.Decoder(_StoreFile)

Offer = Literal["newer", "same", "older", "conflict"]


class PeerCheckpointStore:
    """The newest verified checkpoint of each pinned peer's journal, kept in one file.

    ``offer`` changes memory only; ``save`` makes it durable (the shell calls it from a
    worker thread, coalescing bursts of offers)."""

    def __init__(self, path: Path, held: Mapping[str, HeldCheckpoint] | None = None) -> None:
        self.path = path
        self._held: dict[str, HeldCheckpoint] = dict(held or {})
        self.dirty = False
        #: peer device id -> a checkpoint that contradicts the held one at the same count
        self.conflicts: dict[str, Checkpoint] = {}

    @classmethod
    def load(cls, path: Path) -> PeerCheckpointStore:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise PeerCheckpointsError(f"cannot read {path}: {exc}") from None
        try:
            f = _store_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise PeerCheckpointsError(
                f"{path} is damaged ({exc}); it holds the checkpoints peers signed, used to "
                f"detect their rollbacks: move it aside to start without them") from None
        if f.version != 1:
            raise PeerCheckpointsError(f"{path}: expected version 1, got {f.version}")
        return cls(path, f.held)

    def held(self, device_id: str) -> Checkpoint | None:
        h = self._held.get(device_id)
        return None if h is None else h.checkpoint

    def all(self) -> dict[str, HeldCheckpoint]:
        return dict(self._held)

    def offer(
        self, *, peer: str, public: DevicePublicKey, cp: Checkpoint, now: float
    ) -> Offer:
        """Keep ``cp`` if it is ``peer``'s and newer than what we hold; never go backwards.

        Raises ``BadSignatureError`` unless it is a checkpoint of the peer's own journal signed
        by its pinned key. ``conflict``: same count, different head (the peer forked); the held
        one stays and the other is remembered in ``conflicts``."""
        device_id = public.device_id
        if cp.journal_id != device_id:
            raise BadSignatureError(
                f"peer {peer} presented a checkpoint of journal {cp.journal_id!r}, expected its "
                f"own ({device_id})")
        verify_checkpoint(public, cp)
        current = self._held.get(device_id)
        if current is not None:
            old = current.checkpoint
            if cp.count < old.count:
                return "older"
            if cp.count == old.count:
                if cp.head == old.head:
                    return "same"
                self.conflicts[device_id] = cp
                return "conflict"
        self._held[device_id] = HeldCheckpoint(peer=peer, checkpoint=cp, received=now)
        self.dirty = True
        return "newer"

    def save(self) -> None:
        """Atomically replace the file: temporary file, fsync, rename, directory fsync."""
        self.dirty = False
        data = _encoder.encode(_StoreFile(version=1, held=dict(self._held)))
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for device_id, h in sorted(self._held.items()):
            v: dict[str, Any] = {"peer": h.peer, **checkpoint_view(h.checkpoint),
                                 "received": h.received}
            conflict = self.conflicts.get(device_id)
            if conflict is not None:
                v["conflict"] = checkpoint_view(conflict)
            out[h.peer] = v
        return out
