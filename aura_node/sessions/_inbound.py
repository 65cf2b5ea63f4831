"""Inbound checking and delivery: one payload from a pinned peer's link.

1. decode the :class:`~aura_node.protocols.envelope.WireMessage`; look up the protocol by the
   envelope's choreography; verify the signature with the *link's* pinned key (the sender field
   must be the link's device). Failures are logged and dropped: unsigned junk is no evidence,
   so the journal stays untouched.
2. find the session (or open a responder session if the message type is an opener); drop
   envelopes already journaled (same digest): a *replayed* duplicate is answered by re-sending
   this device's own journaled envelopes of that session to the sender. A session evicted
   from the table is answered from the journal the same way, never re-opened.
3. ask the driver whether it objects (``rejects_message``: a message whose acceptance would
   move the local type past a point safety depends on, e.g. an unproven recovery completion),
   then check the message against the receiving role's monitor. An objection or a violation
   is journaled as ``misbehaviour`` (the signed envelope is evidence), logged with the
   reason, and dropped; the monitor does not move. A message the monitor calls early (allowed
   in a later state) is kept, up to :data:`MAX_EARLY`, and retried after each step.
   The choreography's abort message ends the session unless the driver refuses that sender's
   abort (``accepts_abort_from``): then it is logged and dropped, and the session carries on.
4. hand the message to the driver; journal ``msg.in`` together with the records the driver's
   effects need, all in the same step, so inbound evidence is durable before anything it
   caused leaves the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from aura_node.errors import AuraError, BadSignatureError, RemoteProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import (
    Envelope,
    EnvelopeError,
    decode_wire,
    encode_envelope,
    encode_wire,
    open_envelope,
)
from aura_node.sessions._effects import EffectApplication, _start_record
from aura_node.sessions._steps import Step, Transmit
from aura_node.sessions._table import IncompatibleVersionError, SessionEntry


class DriverObjectionError(RemoteProtocolError):
    """The receiving role's driver refused a message before the monitor stepped."""

    code = "refused_by_protocol"


#: early messages buffered per session until the monitor reaches their state
MAX_EARLY = 256


class InboundPayload(Protocol):
    """``aura_node.transport.InboundData``: who sent it (link-authenticated) and the bytes."""

    @property
    def peer_name(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def payload(self) -> bytes: ...



class InboundDelivery(EffectApplication):
    """Inbound payloads: checked, then delivered to the driver or answered."""

    # --- inbound ----------------------------------------------------------------------------

    def handle_inbound(self, data: InboundPayload) -> Step | None:
        peer = data.peer_name
        now = self._clock()
        try:
            wire = decode_wire(data.payload)
            env = wire.envelope
            spec = self.protocols.get(env.choreography)
            if spec is None:
                raise EnvelopeError(f"no protocol {env.choreography!r} on this node")
            key = self.peers.key(peer)
            if key is None or self.peers.device_id(peer) != data.device_id:
                raise EnvelopeError(f"{peer!r} is not a pinned peer (or its key changed)")
            opened = open_envelope(env, link_device_id=data.device_id, link_key=key,
                                   message_types=spec.message_types)
        except (RemoteProtocolError, BadSignatureError) as exc:
            self.rejected += 1
            self._log.warning("message_rejected", peer=peer, code=exc.code, reason=exc.message)
            return None

        if self._ended:
            self.prune(now)
        entry = self.sessions.get(env.session)
        if entry is None and self._journal_records is not None:
            journaled = self._journaled(env.session)
            if journaled is not None:
                # evicted from memory (ended long ago): answer from the journal, never re-open
                return self._inbound_evicted(env, journaled[1], peer, opened.digest,
                                             wire.replay, now)
        if entry is None:
            opener = spec.openers.get(env.step)
            if opener is None:
                self.rejected += 1
                self._log.info("unknown_session", session=env.session, peer=peer,
                               step=env.step, choreography=env.choreography)
                return None
            refused = self.version_refusal(env.choreography, (peer,))
            if refused is not None:
                return self._refuse_session(env, peer, refused, now)
            return self._open_responder(spec, opener, peer, opened.message, env,
                                        opened.digest, now)

        if entry.choreography != env.choreography:
            self.rejected += 1
            self._log.warning("message_rejected", session=entry.id, peer=peer,
                              code="wrong_choreography",
                              reason=f"session runs {entry.choreography}, "
                                     f"message is {env.choreography}/{env.step}")
            return None
        digest = opened.digest
        if digest in entry.seen:
            self.duplicates += 1
            if not wire.replay:
                return None
            # The peer restarted and re-sends from its journal: it may have lost what we sent.
            step = Step(session=entry.id, ts=now)
            for to, sent in entry.sent:
                if peer in to:
                    step.actions.append(Transmit(peer=peer, payload=encode_wire(sent)))
            self._log.info("replay_answered", session=entry.id, peer=peer,
                           resent=len(step.actions))
            return step if step.actions else None
        if entry.driver is None or not entry.active:
            self.rejected += 1
            self._log.info("session_closed", session=entry.id, peer=peer, step=env.step,
                           state=entry.outcome)
            return None
        return self._deliver(entry, peer, opened.message, env, digest, now, [])

    def _inbound_evicted(
        self, env: Envelope, evidence: Sequence[eng.Evidence], peer: str, digest: bytes,
        replay: bool, now: float,
    ) -> Step | None:
        """A message for a session only the journal remembers: the same answers the table
        entry would give (duplicate dropped, replay answered with our journaled envelopes,
        anything else refused as for a closed session), never a new session."""
        start = next(e.start for e in evidence if isinstance(e, eng.Started))
        if start.choreography != env.choreography:
            self.rejected += 1
            self._log.warning("message_rejected", session=env.session, peer=peer,
                              code="wrong_choreography",
                              reason=f"session ran {start.choreography}, "
                                     f"message is {env.choreography}/{env.step}")
            return None
        seen = any(isinstance(e, eng.Received) and e.envelope.digest == digest
                   for e in evidence)
        if not seen:
            self.rejected += 1
            self._log.info("session_closed", session=env.session, peer=peer, step=env.step,
                           state="evicted")
            return None
        self.duplicates += 1
        if not replay:
            return None
        step = Step(session=env.session, ts=now)
        for e in evidence:
            if isinstance(e, eng.Sent) and peer in e.to:
                step.actions.append(Transmit(peer=peer, payload=encode_wire(e.envelope)))
        self._log.info("replay_answered", session=env.session, peer=peer,
                       resent=len(step.actions), from_journal=True)
        return step if step.actions else None

    def _refuse_session(self, env: Envelope, peer: str, reason: str, now: float) -> Step:
        """A peer opened a session of a choreography version this node cannot run with it:
        no session, a ``<choreography>.rejected`` record with the reason (evidence, not a
        session: rehydration skips it), other sessions untouched."""
        self.rejected += 1
        self._log.warning("session_refused", session=env.session, peer=peer,
                          code=IncompatibleVersionError.code, reason=reason)
        record = eng.rejection(f"{env.choreography}.rejected", peer=peer,
                               code=IncompatibleVersionError.code,
                               reason=f"refused to open session: {reason}")
        return Step(session=env.session, ts=now, records=[(record.kind, record.body)])

    def _open_responder(
        self, spec: eng.ProtocolSpec, opener: eng.Opener, peer: str,
        message: msgspec.Struct, env: Envelope, digest: bytes, now: float,
    ) -> Step | None:
        start = eng.Start(
            session=env.session, choreography=spec.choreography, role=opener.role,
            self_name=self.self_name, roles={self.self_name: opener.role,
                                             peer: opener.sender_role},
            params={}, now=now, entropy=self._entropy(32), opened_by=peer,
        )
        try:
            driver = spec.driver_class(opener.role)(self.services)
            monitor = self._monitor_for(spec.choreography, opener.role,
                                        spec.bindings(start, message))
        except AuraError as exc:
            self._log.error("responder_open_failed", session=env.session, code=exc.code,
                            reason=exc.message)
            return None
        entry = SessionEntry(id=env.session, choreography=spec.choreography, role=opener.role,
                             started=now, driver=driver, monitor=monitor, opened_by=peer,
                             last_activity=now, roles=dict(start.roles))
        self.sessions[entry.id] = entry
        self._active.add(entry.id)
        self._log.info("session_opened", session=entry.id, choreography=entry.choreography,
                       role=entry.role, peer=peer)
        scratch = Step(session=entry.id, ts=now, records=[_start_record(start)])
        try:
            self._apply(entry, driver.start(start), scratch, now, None)
        except Exception as exc:
            return self._abort(entry, scratch.records[:1], exc, now)
        if not entry.active:
            return scratch
        # the opening message goes into the start's own step (what ``_deliver`` does, without
        # copying the start's records and actions into a second Step)
        if self._deliver_one(entry, peer, message, env, digest, now, scratch):
            self._retry_early(entry, now, scratch)
        return scratch

    def _deliver(
        self, entry: SessionEntry, peer: str, message: msgspec.Struct, env: Envelope,
        digest: bytes, now: float, pre: list[tuple[str, bytes]], pre_actions: Sequence[Any] = (),
    ) -> Step:
        step = Step(session=entry.id, ts=now, records=list(pre), actions=list(pre_actions))
        if self._deliver_one(entry, peer, message, env, digest, now, step):
            self._retry_early(entry, now, step)
        return step

    def _retry_early(self, entry: SessionEntry, now: float, step: Step) -> None:
        """The session advanced (a message, a timer, a control action): early messages may
        fit its new state now; deliver them in arrival order, adding to ``step``."""
        progress = True
        while progress and entry.early and entry.active:
            progress = False
            for item in list(entry.early):
                entry.early.remove(item)
                if item[3] in entry.seen:
                    # another copy (a retransmission) was delivered meanwhile: a duplicate
                    self.duplicates += 1
                    continue
                if self._deliver_one(entry, *item, now, step):
                    progress = True
                    break

    def _deliver_one(
        self, entry: SessionEntry, peer: str, message: msgspec.Struct, env: Envelope,
        digest: bytes, now: float, step: Step,
    ) -> bool:
        """Monitor-check and hand one message to the driver, adding to ``step``. True when the
        message was accepted (the session advanced)."""
        assert entry.driver is not None and entry.monitor is not None
        if not entry.active:
            return False
        sender_role = entry.driver.roles.get(peer)
        is_abort = entry.monitor.is_abort(message)  # by type: the same before and after
        try:
            if sender_role is None:
                raise RemoteProtocolError(
                    f"{peer!r} has no role in session {entry.id} "
                    f"(roles: {dict(entry.driver.roles)})")
            if is_abort and not entry.driver.accepts_abort_from(
                    peer, sender_role):
                # this role may not end the session here (the driver says why it matters);
                # nothing changes, so nothing is journaled and the monitor is not stepped
                self._log.info("abort_not_accepted", session=entry.id, peer=peer,
                               role=sender_role,
                               reason=str(getattr(message, "reason", "")))
                return False
            objection = entry.driver.rejects_message(peer, sender_role, message)
            if objection is not None:
                raise DriverObjectionError(objection)
            entry.monitor.check_inbound(sender_role, message, member=peer)
        except RemoteProtocolError as exc:
            if exc.code == "early_message" and any(d == digest for *_, d in entry.early):
                self.duplicates += 1  # a retransmitted copy of a message already held
                return False
            if exc.code == "early_message" and len(entry.early) < MAX_EARLY:
                entry.early.append((peer, message, env, digest))
                self._log.debug("message_early", session=entry.id, peer=peer, step=env.step)
                return False
            self.rejected += 1
            self._log.warning("misbehaviour", session=entry.id, peer=peer, code=exc.code,
                              reason=exc.message, step=env.step)
            body = eng.MisbehaviourBody(peer=peer, code=exc.code, reason=exc.message,
                                        envelope=encode_envelope(env))
            step.records.append((eng.KIND_MISBEHAVIOUR, eng.encode_body(body)))
            return False
        entry.seen.add(digest)
        self.accepted += 1
        entry.last_activity = now
        rec = (eng.KIND_IN, eng.encode_body(eng.InBody(
            sender=peer, sender_role=sender_role, envelope=encode_envelope(env), now=now)))
        if is_abort:
            # the choreography's abort message: the session ends everywhere
            reason = str(getattr(message, "reason", "")) or "no reason given"
            step.records.append(rec)
            step.records.append((eng.KIND_FAIL, eng.encode_body(eng.FailBody(
                code="aborted_by_peer", reason=f"{peer} aborted: {reason}"))))
            self._finish(entry, step, now, error={"code": "aborted_by_peer",
                                                  "reason": f"{peer} aborted: {reason}"},
                         by_peer=peer)
            return True
        inp = eng.MessageIn(sender=peer, sender_role=sender_role, message=message,
                            envelope=env, now=now)
        sub = self._run(entry, entry.driver.on_message, inp, [rec], now)
        step.records.extend(sub.records)
        step.actions.extend(sub.actions)
        return True
