"""The node's peer network (Trio): one authenticated link per pinned peer.

Theory of operation
-------------------
:class:`PeerNetwork` listens on ``[node] listen`` and dials every pinned peer. Each peer has a
:class:`_PeerSlot` that outlives connections: its bounded payload queue (``send`` waits when it
is full: backpressure, not memory growth), its counters, its link state for ``ctl peers``, and
at most one *active* :class:`~aura_node.transport.link.PeerLink`.

Dialing: one task per peer. While the peer has an active link (in either direction) it waits;
otherwise it connects (``connect_timeout_seconds``), runs the handshake
(``handshake_timeout_seconds``) and runs the link. Failures back off exponentially with jitter,
capped at ``reconnect_max_seconds`` (:func:`backoff_delay`).

Duplicate links. Both sides dial, so two links can come up at once. Both sides rank links the
same way: a link dialed by the side with the *lower device id* beats one dialed by the higher;
between equals the newer wins (the older one's dialer has given up on it). When a link comes up
and the slot already has an active one, the lower-ranked of the two is closed in order with
``Close("superseded")``: its writer stops taking payloads, it keeps reading until the peer's
``Close``, so nothing either side wrote on it is lost. Both sides see the same two links and
apply the same rule, so they keep the same one; if that one then fails, the dialers start over,
so no race leaves the pair with zero links for longer than one backoff.

Inbound handshakes: one deadline (``handshake_timeout_seconds``) bounds the whole time from
accept to the hello; no connection waits for a slot outside it. What bounds unauthenticated
work is :class:`~aura_node.transport.admission.HandshakeAdmission`: past 64 unidentified
connections a newcomer evicts the oldest, and a connection whose preface names a pinned peer
leaves that pool (floods of unknown connections cannot push it out).

Journal checkpoints (rollback detection, ``journal.witness``): with a :class:`NetworkWitness`
the hellos carry checkpoints, and a link's hello checkpoints are judged (``witness.hello``,
awaited) before the link is attached, so no frame of a peer that reveals a rolled-back journal
reaches the runtime before the node knows it; links then refresh them (``CheckpointNote``).

Faults stay local: any error on one connection (refused handshake, bad frame, timeout) is
logged with the peer name, a code and the reason, and ends that connection only.
"""

from __future__ import annotations

import errno
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec
import trio

from aura_node.config import NodeConfig, PeerConfig, parse_address
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import AuraError, TransportError
from aura_node.logs import get_logger
from aura_node.transport import tls
from aura_node.transport.admission import HandshakeAdmission
from aura_node.transport.errors import (
    FrameTooLargeError,
    HandshakeEvictedError,
    LinkBrokenError,
    LinkTimeoutError,
    ListenError,
    UnknownPeerNameError,
)
from aura_node.transport.framing import (
    Choreographies,
    ChoreographyVersion,
    FrameEncoder,
    max_data_payload,
)
from aura_node.transport.handshake import (
    Established,
    LinkStream,
    LocalIdentity,
    PinnedPeer,
    accept_handshake,
    dial_hello,
    dial_tls,
)
from aura_node.transport.link import (
    InboundData,
    LinkCounters,
    LinkWitness,
    PeerLink,
    send_close,
)
from aura_node.transport.queue import PayloadQueue

#: First reconnect delay; doubles per failed attempt up to ``reconnect_max_seconds``.
RECONNECT_BASE_SECONDS = 0.1
#: A link that lived this long resets the backoff.
STABLE_LINK_SECONDS = 5.0
KEEPALIVE_SECONDS = 5.0
#: Silence for this many keepalive intervals means the peer is gone.
IDLE_KEEPALIVES = 3

__all__ = ["InboundData", "PeerNetwork", "backoff_delay"]


class NetworkWitness(LinkWitness, Protocol):
    """What the network needs for rollback detection (``runtime.rollback.JournalWitness``)."""

    def held_for(self, device_id: str) -> bytes:
        """The newest checkpoint of that peer's journal we hold, encoded (``b""``: none)."""
        ...

    async def hello(self, peer: PinnedPeer, peer_checkpoint: bytes, your_checkpoint: bytes
                    ) -> None:
        """Judge the checkpoints of a hello, before the link is attached."""
        ...


def _listen_failure(host: str, port: int, exc: OSError) -> str:
    """One line for an operator whose ``[node] listen`` cannot be bound, with what to do."""
    hints = {
        errno.EADDRINUSE: "another program (another node?) uses that port: stop it or change "
                          "[node] listen",
        errno.EACCES: "ports below 1024 need privileges: use a higher port in [node] listen",
        errno.EADDRNOTAVAIL: "that address is not on this machine: fix the host in [node] "
                             "listen",
    }
    reason = exc.strerror or str(exc)
    hint = hints.get(exc.errno or 0, "check [node] listen")
    return f"cannot listen for peers on {host}:{port}: {reason} ({hint})"


def backoff_delay(attempt: int, *, base: float, cap: float, unit: float) -> float:
    """Delay before reconnect ``attempt`` (1, 2, ...): "equal jitter" exponential backoff.

    ``unit`` in [0, 1) is the randomness (pure function: the caller draws it). The delay lies
    in [d/2, d) for d = min(cap, base * 2**(attempt-1)), so peers that lost each other at the
    same moment do not retry in lockstep, and a retry never comes sooner than half the step.
    """
    if attempt <= 0:
        return 0.0
    step = min(cap, base * math.pow(2.0, min(attempt - 1, 60)))
    return min(step, step / 2 + step / 2 * unit)  # min: float rounding near unit = 1


class _PeerSlot:
    """Everything about one pinned peer that outlives its connections."""

    def __init__(self, config: PeerConfig, queue_frames: int, local_device_id: str) -> None:
        raw = DevicePublicKey.from_hex(config.public_key)
        self.config = config
        #: the device id whose dialed links win duplicate resolution (the lower of the pair)
        self.preferred_dialer = min(local_device_id, raw.device_id)
        self.pinned = PinnedPeer(name=config.name, public_key=raw.raw, device_id=raw.device_id)
        self.address = parse_address(config.address, what=f"peer {config.name} address")
        self.queue = PayloadQueue(queue_frames)
        self.counters = LinkCounters()
        self.active: PeerLink | None = None
        self.links: set[PeerLink] = set()
        self.no_link = trio.Event()
        self.no_link.set()
        self.state = "down"
        self.since = time.time()
        self.last_error: str | None = None
        self.dialer: trio.CancelScope | None = None
        self.removed = False
        #: what the peer's last hello said it holds (kept while the link is down: the
        #: session layer judges new sessions by it; None until a link first came up)
        self.choreographies: tuple[tuple[str, int, bytes], ...] | None = None

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()

    def rank(self, link: PeerLink) -> tuple[bool, int]:
        # Both sides compute the same first component; the second (local arrival order) only
        # decides between links dialed by the same side, where the newer is the live one.
        return (link.dialer_device_id == self.preferred_dialer, link.id)

    def attach(self, link: PeerLink) -> PeerLink | None:
        """Add an established link; returns the link that lost (to close), if any."""
        self.links.add(link)
        current = self.active
        if current is None or self.rank(link) > self.rank(current):
            self.active = link
            self.no_link = trio.Event()
            self.set_state("up")
            link.activate()
            return current
        return link

    def detach(self, link: PeerLink) -> None:
        self.links.discard(link)
        if self.active is link:
            self.active = None
            self.no_link.set()
            self.set_state("down")

    async def wait_no_link(self) -> None:
        while self.active is not None:
            await self.no_link.wait()


class PeerNetwork:
    """All peer links of one node. The runtime's only entry point to the transport."""

    def __init__(
        self,
        *,
        key: DeviceKey,
        config: NodeConfig,
        choreographies: Sequence[tuple[str, int, bytes]],
        inbound: trio.MemorySendChannel[InboundData],
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        reconnect_base_seconds: float = RECONNECT_BASE_SECONDS,
        rng: Callable[[], float] = random.random,
        witness: NetworkWitness | None = None,
    ) -> None:
        try:
            advertised = tuple(ChoreographyVersion(name=n, version=v, hash=h)
                               for n, v, h in choreographies)
            # the peer's decoder enforces the wire limits: refuse here what it would refuse
            msgspec.convert(msgspec.to_builtins(advertised), Choreographies)
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            raise TransportError(f"choreographies to advertise are not valid: {exc}") from None
        self._config = config
        self._transport = config.transport
        self._local = LocalIdentity(
            node_name=config.node.name,
            device_id=key.device_id,
            tls=tls.tls_identity(key),
            choreographies=advertised,
            max_frame_bytes=config.transport.max_frame_bytes,
            checkpoints=witness,
        )
        self._witness = witness
        self._inbound = inbound
        self._keepalive = keepalive_seconds
        self._reconnect_base = reconnect_base_seconds
        self._rng = rng
        self._encoder = FrameEncoder(max_frame_bytes=config.transport.max_frame_bytes)
        self._max_payload = max_data_payload(config.transport.max_frame_bytes)
        self._slots: dict[str, _PeerSlot] = {}
        self._by_key: dict[bytes, _PeerSlot] = {}
        self._nursery: trio.Nursery | None = None
        self._admission: HandshakeAdmission[trio.CancelScope] = HandshakeAdmission()
        self._log = get_logger("aura_node.transport", node=config.node.name)
        for peer in config.peers:
            self._add_slot(peer)

    @property
    def device_id(self) -> str:
        return self._local.device_id

    # --- API for the runtime -----------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every pinned peer, run until cancelled.

        ``task_status.started((host, port))`` reports the address actually bound (port 0 in
        config picks a free one).
        """
        host, port = parse_address(self._config.node.listen, what="[node] listen")
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ListenError(_listen_failure(host, port, exc)) from None
        try:
            sockname = listeners[0].socket.getsockname()
            bound = (str(sockname[0]), int(sockname[1]))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(trio.serve_listeners, self._handle_inbound, listeners)
                for slot in self._slots.values():
                    self._start_dialer(slot)
                self._log.info("listening", address=f"{bound[0]}:{bound[1]}")
                task_status.started(bound)
        finally:
            self._nursery = None
            for listener in listeners:
                listener.socket.close()

    async def send(self, peer_name: str, payload: bytes) -> None:
        """Queue ``payload`` for ``peer_name``; waits while the peer's queue is full."""
        slot = self._slot_for_send(peer_name, payload)
        try:
            await slot.queue.put(payload)
        except trio.ClosedResourceError:
            raise UnknownPeerNameError(
                f"peer {peer_name!r} was removed while a payload waited for its queue"
            ) from None

    def send_nowait(self, peer_name: str, payload: bytes) -> bool:
        """Queue ``payload`` if there is room; ``False`` when the peer's queue is full."""
        slot = self._slot_for_send(peer_name, payload)
        try:
            return slot.queue.put_nowait(payload)
        except trio.ClosedResourceError:
            raise UnknownPeerNameError(f"peer {peer_name!r} is no longer pinned") from None

    def peer_choreographies(self, peer_name: str) -> tuple[tuple[str, int, bytes], ...] | None:
        """(name, version, hash) of every choreography version ``peer_name``'s last hello
        advertised; ``None`` for an unknown peer or one never linked since this node started."""
        slot = self._slots.get(peer_name)
        return None if slot is None else slot.choreographies

    def link_states(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, slot in self._slots.items():
            active = slot.active
            out[name] = {
                "state": slot.state
                if active is not None
                else ("connecting" if slot.state == "connecting" else "down"),
                "since": slot.since,
                "last_error": slot.last_error,
                "frames_in": slot.counters.frames_in,
                "frames_out": slot.counters.frames_out,
                "queued": len(slot.queue),
                "device_id": slot.pinned.device_id,
                "address": slot.config.address,
                "direction": None
                if active is None
                else ("outbound" if active.outbound else "inbound"),
                "connections": len(slot.links),
            }
        return out

    def update_peers(self, config: NodeConfig) -> None:
        """Apply a reloaded peer list: add new pins, drop removed ones, re-pin changed keys.

        Only ``peers`` is reloaded; listen address and transport settings need a restart.
        """
        wanted = {p.name: p for p in config.peers}
        for name, slot in list(self._slots.items()):
            new = wanted.get(name)
            if new is None or new.public_key != slot.config.public_key:
                self._remove_slot(slot)
            elif new != slot.config:
                slot.config = new
                slot.address = parse_address(new.address, what=f"peer {name} address")
        for name, peer in wanted.items():
            if name not in self._slots:
                slot = self._add_slot(peer)
                if self._nursery is not None:
                    self._start_dialer(slot)
        self._config = self._config.with_peers(config.peers)

    # --- slots -------------------------------------------------------------------------------

    def _slot_for_send(self, peer_name: str, payload: bytes) -> _PeerSlot:
        slot = self._slots.get(peer_name)
        if slot is None:
            known = ", ".join(sorted(self._slots)) or "none"
            raise UnknownPeerNameError(f"no pinned peer named {peer_name!r} (pinned: {known})")
        if len(payload) > self._max_payload:
            raise FrameTooLargeError(
                f"payload of {len(payload)} bytes for peer {peer_name} exceeds the "
                f"{self._max_payload}-byte limit ([transport] max_frame_bytes = "
                f"{self._transport.max_frame_bytes} minus framing)"
            )
        return slot

    def _add_slot(self, peer: PeerConfig) -> _PeerSlot:
        slot = _PeerSlot(peer, self._transport.peer_queue_frames, self._local.device_id)
        self._slots[peer.name] = slot
        self._by_key[slot.pinned.public_key] = slot
        return slot

    def _remove_slot(self, slot: _PeerSlot) -> None:
        slot.removed = True
        del self._slots[slot.pinned.name]
        if self._by_key.get(slot.pinned.public_key) is slot:
            del self._by_key[slot.pinned.public_key]
        if slot.dialer is not None:
            slot.dialer.cancel()
        for link in list(slot.links):
            link.close("peer_removed", f"peer {slot.pinned.name} is no longer pinned")
        # Wakes senders blocked on the full queue with an error instead of leaving them hanging.
        slot.queue.close()
        self._log.info("peer unpinned", peer=slot.pinned.name)

    def _lookup(self, public_key: bytes) -> PinnedPeer | None:
        slot = self._by_key.get(public_key)
        return None if slot is None else slot.pinned

    def _start_dialer(self, slot: _PeerSlot) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        slot.dialer = scope
        self._nursery.start_soon(self._dial_loop, slot, scope)

    # --- connections -------------------------------------------------------------------------

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            remote = stream.socket.getpeername()
            where = f"{remote[0]}:{remote[1]}"
        except OSError:
            where = "?"
        identified: list[PinnedPeer] = []
        # The deadline starts at accept and covers everything up to the hello (issue 13: the
        # wait for a handshake slot used to come before it, unbounded).
        deadline = trio.current_time() + self._transport.handshake_timeout_seconds
        ticket = trio.CancelScope(deadline=deadline)
        self._evict(self._admission.admit(ticket), "unidentified")

        def lookup(public_key: bytes) -> PinnedPeer | None:
            found = self._lookup(public_key)
            if found is not None:
                identified.append(found)
                self._evict(self._admission.identify(ticket, found.name), found.name)
            return found

        try:
            established: Established | None = None
            with ticket:
                established = await accept_handshake(stream, local=self._local, lookup=lookup)
            if established is None:
                raise self._handshake_cut_short(ticket, where)
        except Exception as exc:
            error = self._as_transport_error(exc, "handshake", where)
            peer = identified[0].name if identified else None
            self._log.warning(
                "inbound connection refused",
                remote=where,
                peer=peer,
                code=error.code,
                reason=error.message,
            )
            slot = self._slots.get(peer) if peer else None
            if slot is not None:
                slot.last_error = f"{error.code}: {error.message}"
            await trio.aclose_forcefully(stream)
            return
        finally:
            self._admission.release(ticket)
        slot = self._slots.get(established.peer.name)
        if slot is None or slot.pinned != established.peer:
            # Unpinned while the handshake ran.
            await trio.aclose_forcefully(established.stream)
            return
        await self._run_link(slot, established, outbound=False)

    def _evict(self, victims: list[trio.CancelScope], pool: str) -> None:
        for victim in victims:
            victim.cancel()
        if victims:
            self._log.debug("inbound handshakes evicted", count=len(victims), pool=pool)

    def _handshake_cut_short(self, ticket: trio.CancelScope, where: str) -> TransportError:
        """The error for a handshake whose scope ended it: its deadline, or an eviction."""
        if trio.current_time() >= ticket.deadline:
            limit = self._transport.handshake_timeout_seconds
            return LinkTimeoutError(
                f"handshake with {where} took longer than {limit:g} s (from accept to hello)")
        return HandshakeEvictedError(
            f"handshake with {where} evicted: newer connections needed its place "
            f"(more than {self._admission.max_unidentified} unidentified at once, or more "
            f"than {self._admission.per_peer} for one pinned peer)")

    async def _dial_loop(self, slot: _PeerSlot, scope: trio.CancelScope) -> None:
        with scope:
            attempt = 0
            while True:
                await slot.wait_no_link()
                if attempt:
                    await trio.sleep(
                        backoff_delay(
                            attempt,
                            base=self._reconnect_base,
                            cap=self._transport.reconnect_max_seconds,
                            unit=self._rng(),
                        )
                    )
                    if slot.active is not None:
                        continue
                attempt += 1
                slot.set_state("connecting")
                established = await self._dial_once(slot)
                if established is None:
                    if slot.active is None:
                        slot.set_state("down")
                    continue
                started = trio.current_time()
                await self._run_link(slot, established, outbound=True)
                if trio.current_time() - started >= STABLE_LINK_SECONDS:
                    attempt = 1

    async def _dial_once(self, slot: _PeerSlot) -> Established | None:
        host, port = slot.address
        where = f"{host}:{port}"
        try:
            with trio.fail_after(self._transport.connect_timeout_seconds):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            error = self._as_transport_error(exc, "connect", where)
            slot.last_error = f"{error.code}: {error.message}"
            self._log.debug(
                "connect failed", peer=slot.pinned.name, code=error.code, reason=error.message
            )
            return None
        # Set once TLS is up: from then on the peer may already have the link up (it goes live
        # on sending HelloAck), so an abandoned attempt ends with Close, as a link would.
        link_stream: LinkStream | None = None
        try:
            with trio.fail_after(self._transport.handshake_timeout_seconds):
                link_stream = await dial_tls(stream, local=self._local, peer=slot.pinned)
                return await dial_hello(link_stream, local=self._local, peer=slot.pinned)
        except Exception as exc:
            error = self._as_transport_error(exc, "handshake", where)
            if link_stream is not None:
                await send_close(link_stream, self._encoder, error.code, error.message)
            await trio.aclose_forcefully(stream)
            slot.last_error = f"{error.code}: {error.message}"
            self._log.warning(
                "outbound connection refused",
                peer=slot.pinned.name,
                remote=where,
                code=error.code,
                reason=error.message,
            )
            return None
        except BaseException:
            # Cancelled: the node is stopping (the handshake deadline arrives as TooSlowError
            # above). Same Close as a link's; and the socket must not be left to the GC.
            if link_stream is not None:
                await send_close(
                    link_stream, self._encoder, "shutdown", "the node is shutting down"
                )
            await trio.aclose_forcefully(stream)
            raise

    async def _run_link(self, slot: _PeerSlot, established: Established, *, outbound: bool) -> None:
        if self._witness is not None:
            try:
                await self._witness.hello(
                    established.peer, established.peer_checkpoint, established.your_checkpoint)
            except Exception:  # a bug in the check must not take the link (or node) down
                self._log.error("checkpoint check failed", peer=slot.pinned.name, exc_info=True)
        link = PeerLink(
            established,
            outbound=outbound,
            queue=slot.queue,
            inbound=self._inbound,
            counters=slot.counters,
            encoder=self._encoder,
            keepalive_seconds=self._keepalive,
            idle_timeout=self._keepalive * IDLE_KEEPALIVES,
            log=self._log,
            witness=self._witness,
        )
        slot.choreographies = tuple((c.name, c.version, c.hash)
                                    for c in established.peer_choreographies)
        loser = slot.attach(link)
        self._log.info(
            "link up",
            peer=slot.pinned.name,
            link=link.id,
            direction="outbound" if outbound else "inbound",
            active=slot.active is link,
        )
        if loser is not None:
            loser.close(
                "superseded",
                f"duplicate link to {slot.pinned.name}: kept link "
                f"dialed by {slot.active.dialer_device_id if slot.active else '?'}",
            )
        try:
            await link.run()
        except TransportError as exc:
            slot.last_error = f"{exc.code}: {exc.message}"
            self._log.warning(
                "link dropped",
                peer=slot.pinned.name,
                link=link.id,
                code=exc.code,
                reason=exc.message,
            )
        except Exception as exc:  # a bug in this layer must not take the node down
            slot.last_error = f"internal: {exc!r}"
            self._log.error("link failed", peer=slot.pinned.name, link=link.id, exc_info=True)
        else:
            close = link.peer_close
            self._log.info(
                "link closed",
                peer=slot.pinned.name,
                link=link.id,
                code=close.code if close else "local",
                reason=close.reason if close else "",
            )
        finally:
            slot.detach(link)

    # --- errors ------------------------------------------------------------------------------

    def _as_transport_error(self, exc: BaseException, stage: str, where: str) -> AuraError:
        if isinstance(exc, AuraError):
            return exc
        if isinstance(exc, trio.TooSlowError):
            limit = (
                self._transport.connect_timeout_seconds
                if stage == "connect"
                else self._transport.handshake_timeout_seconds
            )
            return LinkTimeoutError(f"{stage} with {where} took longer than {limit:g} s")
        cause = exc.__cause__ or exc
        return LinkBrokenError(f"{stage} with {where} failed: {cause}")
