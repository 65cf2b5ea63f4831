"""The node's journal witness (Trio): peers' checkpoints in, refusal state out.

Theory of operation
-------------------
:class:`JournalWitness` is the shell around the pure parts of ``aura_node.journal.witness``:

* for the transport (``PeerNetwork(witness=...)``) it gives the checkpoints a hello and a link
  carry (:meth:`own`, :meth:`held_for`) and takes the peer's (:meth:`hello`, awaited before the
  link is attached; :meth:`note`, from the link reader);
* a peer's own checkpoint goes to the :class:`~aura_node.journal.witness.PeerCheckpointStore`
  (signature checked under its pinned key, never backwards); a background task writes the
  file in a worker thread whenever it changed, so bursts of notes cost one fsync;
* a checkpoint of *our* journal a peer holds is verified under our key and judged against
  the journal (``Journal.head_at``, read in a worker thread, only for a count we have not
  already found consistent). New evidence is logged, journaled (``rollback.detected``) and
  makes :attr:`refusing` true: the daemon then refuses every session input (operator starts
  and actions, peer messages, timers, re-sends) until the operator resolves it;
* while refusing, :meth:`own` presents no checkpoint, so peers keep the newer one they hold
  (the evidence) instead of learning the suspect journal's;
* at start, journaled evidence is re-judged (:meth:`restore`): a restored newer journal never
  held it, a journal that now reproduces the checkpoint is no longer contradicted, anything
  else refuses from the first moment. With no peer linked after ``UNCHECKED_GRACE_SECONDS``
  the node warns that rollback could not be checked (and checks when a peer links).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import trio

from aura_node.crypto.keys import DevicePublicKey
from aura_node.errors import AuraError, BadSignatureError
from aura_node.journal.store import Journal
from aura_node.journal.witness import (
    KIND_ACCEPTED,
    KIND_DETECTED,
    Acceptance,
    CheckpointFormatError,
    Evidence,
    PeerCheckpointStore,
    RollbackGuard,
    checkpoint_view,
    decode_checkpoint_bytes,
    encode_acceptance,
    encode_checkpoint,
    encode_evidence,
    verify_own,
)
from aura_node.sessions import SessionFailedError
from aura_node.transport.handshake import PinnedPeer

#: with no peer linked this long after start, warn that rollback could not be checked
UNCHECKED_GRACE_SECONDS: Final = 3.0
#: a burst of held-checkpoint changes is written once, this long after the first
SAVE_DELAY_SECONDS: Final = 0.2

#: append (kind, body) records of session "" durably
AppendRecords = Callable[[Sequence[tuple[str, bytes]]], Awaitable[None]]


class JournalWitness:
    def __init__(
        self,
        *,
        journal: Journal,
        store: PeerCheckpointStore,
        append: AppendRecords,
        home: str,
        log: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self.store = store
        self._append = append
        self._home = home
        self._log = log
        self._clock = clock
        self.guard = RollbackGuard(journal_id=journal.journal_id, public=journal.public_key)
        self._own_seq = -1
        self._own = b""
        self._save_wanted = trio.Event()
        self._warned: set[tuple[str, str]] = set()
        #: called when the node stops refusing (the daemon re-queues held inputs)
        self.on_resolved: Callable[[], None] | None = None

    # --- state for the daemon and the control socket ----------------------------------------

    @property
    def refusing(self) -> bool:
        return self.guard.refusing

    def message(self) -> str:
        return self.guard.message(self._home)

    def view(self) -> dict[str, Any]:
        out = self.guard.view(self._home)
        latest = self._journal.latest_checkpoint()
        # what peers should hold of us once they have seen our newest checkpoint
        out["own"] = None if latest is None else checkpoint_view(latest)
        out["held"] = self.store.view()
        return out

    # --- start ------------------------------------------------------------------------------

    async def restore(self, records: Iterable[tuple[str, bytes]]) -> None:
        """Re-judge the journal's ``rollback.*`` records against the journal as it is."""
        for e in self.guard.restore(records):
            head = await trio.to_thread.run_sync(self._journal.head_at, e.checkpoint.count)
            if self.guard.reopen(e, journal_count=self._journal.next_seq, head_at_count=head):
                self._log.error("journal_rollback_refusing", source="journal",
                                evidence=e.view(), message=self.message())
            else:
                self._log.info("journal_rollback_evidence_cleared", evidence=e.view(),
                               reason="the journal now reproduces the checkpoint")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write the held-checkpoints file when it changed; warn once if nothing checked us."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._warn_unchecked)
            try:
                while True:
                    await self._save_wanted.wait()
                    await trio.sleep(SAVE_DELAY_SECONDS)
                    self._save_wanted = trio.Event()
                    await self._save()
            finally:
                if self.store.dirty:
                    with trio.CancelScope(shield=True):
                        await self._save()  # shutting down: the last change still counts

    async def _save(self) -> None:
        try:
            await trio.to_thread.run_sync(self.store.save)
        except OSError as exc:
            # the held checkpoints stay in memory and are written with the next change; a
            # full disk must not stop the node (its journal fails on its own if it matters)
            self.store.dirty = True
            self._log.error("peer_checkpoints_not_saved", path=str(self.store.path),
                            reason=f"{type(exc).__name__}: {exc}")

    async def _warn_unchecked(self) -> None:
        await trio.sleep(UNCHECKED_GRACE_SECONDS)
        if self.guard.state == "unchecked":
            self._log.warning("journal_rollback_unchecked", message=self.message())

    # --- the transport's side ---------------------------------------------------------------

    def own(self) -> bytes:
        if self.guard.refusing:
            return b""  # let peers keep the newer checkpoint they hold: it is the evidence
        seq = self._journal.next_seq
        if seq != self._own_seq:
            self._own = encode_checkpoint(self._journal.latest_checkpoint())
            self._own_seq = seq
        return self._own

    def held_for(self, device_id: str) -> bytes:
        return encode_checkpoint(self.store.held(device_id))

    def note(self, peer: PinnedPeer, checkpoint: bytes) -> None:
        self._take_peers(peer, checkpoint)

    async def hello(self, peer: PinnedPeer, peer_checkpoint: bytes, your_checkpoint: bytes
                    ) -> None:
        self._take_peers(peer, peer_checkpoint)
        await self._judge(peer, your_checkpoint)

    def _warn_once(self, peer: str, what: str, **fields: Any) -> None:
        if (peer, what) not in self._warned:
            self._warned.add((peer, what))
            self._log.warning(what, peer=peer, **fields)

    def _take_peers(self, peer: PinnedPeer, data: bytes) -> None:
        """Keep the newest checkpoint of ``peer``'s journal (verified under its pinned key)."""
        try:
            cp = decode_checkpoint_bytes(data, what=f"checkpoint from peer {peer.name}")
            if cp is None:
                return
            outcome = self.store.offer(peer=peer.name, public=DevicePublicKey(peer.public_key),
                                       cp=cp, now=self._clock())
        except (CheckpointFormatError, BadSignatureError) as exc:
            self._warn_once(peer.name, "peer_checkpoint_refused", reason=exc.message)
            return
        if outcome == "newer":
            self._save_wanted.set()
        elif outcome == "older":
            held = self.store.held(peer.device_id)
            self._warn_once(
                peer.name, "peer_journal_behind", presented=cp.count,
                held=held.count if held else None,
                reason="the peer presents an older checkpoint of its journal than one it "
                       "signed before: its journal may have been rolled back")
        elif outcome == "conflict":
            self._warn_once(
                peer.name, "peer_journal_forked", count=cp.count,
                reason="the peer signed two different heads at the same count")

    async def _judge(self, peer: PinnedPeer, data: bytes) -> None:
        """Judge the checkpoint of our journal ``peer`` holds."""
        try:
            cp = decode_checkpoint_bytes(data, what=f"our checkpoint as peer {peer.name} holds it")
            if cp is not None:
                verify_own(self._journal.public_key, self._journal.journal_id, cp)
        except (CheckpointFormatError, BadSignatureError) as exc:
            # not evidence against us: anyone can make bytes up; our signature is the point
            self._warn_once(peer.name, "peer_presented_forged_checkpoint", reason=exc.message)
            return
        if cp is None or (self.guard.is_known_consistent(cp) and not self.guard.refusing):
            self.guard.checked_by.add(peer.name)
            self._log.debug("journal_rollback_checked", peer=peer.name,
                            count=None if cp is None else cp.count)
            return
        head = None
        if cp.count <= self._journal.next_seq:
            head = await trio.to_thread.run_sync(self._journal.head_at, cp.count)
        was_refusing = self.guard.refusing
        evidence = self.guard.judge(
            peer=peer.name, peer_device_id=peer.device_id, cp=cp,
            journal_count=self._journal.next_seq, head_at_count=head, now=self._clock())
        if evidence is not None:
            await self._journal_evidence(evidence)
        elif was_refusing and not self.guard.refusing:
            self._resolved("a peer's checkpoint is reproduced by the journal again")
        else:
            self._log.info("journal_rollback_checked", peer=peer.name, count=cp.count,
                           state=self.guard.state)

    async def _journal_evidence(self, e: Evidence) -> None:
        self._log.error("journal_rollback_detected", verdict=e.verdict, peer=e.peer,
                        checkpoint=e.view()["checkpoint"], journal_count=e.journal_count,
                        message=self.message())
        await self._append([(KIND_DETECTED, encode_evidence(e))])

    # --- the operator's side ----------------------------------------------------------------

    async def accept(self, code: str, reason: str) -> Acceptance:
        """Accept the loss the open evidence shows (``code`` must name exactly it)."""
        acceptance = self.guard.accept(code, reason=reason)
        await self._append([(KIND_ACCEPTED, encode_acceptance(acceptance))])
        self._log.warning("journal_rollback_accepted", code=acceptance.code, reason=reason,
                          checkpoints=[c.count for c in acceptance.checkpoints])
        self._resolved("the operator accepted the loss")
        return acceptance

    def _resolved(self, why: str) -> None:
        self._log.warning("journal_rollback_resolved", reason=why, state=self.guard.state)
        if self.on_resolved is not None:
            self.on_resolved()


class RollbackRefusedError(SessionFailedError):
    """A session input refused because peers hold a newer or different journal of ours.

    A ``SessionFailedError`` so every start command passes it through unchanged (they turn
    other errors of a start into ``invalid_args``)."""

    code = "journal_rolled_back"

    def __init__(self, message: str) -> None:
        super().__init__(message, failure_code=self.code)


def refusal(witness: JournalWitness | None) -> AuraError | None:
    """The error a session input gets while the node refuses, else None."""
    if witness is None or not witness.refusing:
        return None
    return RollbackRefusedError(witness.message())
