"""The node daemon: ``aura-node run --home DIR`` wires the pieces into one ``trio.run``.

Theory of operation
-------------------
Start-up, in order (each step can fail with a clear error before the node says it is ready):

1. load config and device key; import the protocol modules (built-ins and ``--plugin``
   modules) so the choreography registry and its hash are final;
2. open the journal (recovery scan in a worker thread) and its group-commit task;
3. read the journal and rebuild the session table (:meth:`SessionRuntime.rehydrate`);
4. start the peer network (listening; the actual address is logged), the control socket, the
   timer wheel, the executor and the two input consumers;
5. queue the rehydration steps (re-sends of journaled envelopes, re-armed timers, aborts),
   write ``node.pid``, send ``READY=1``;
6. watch the peer links: each link that comes (back) up becomes a ``PeerUp`` command, and the
   runtime re-sends that peer what its active sessions sent it (end-to-end retransmission);
   if the peer holds or held a share of one of this device's accounts, an ``account-sync``
   session with it exchanges the epoch facts either side lacks (``protocols/account_sync``),
   and so does every fact adopted later, with each linked holder.

Rollback refusal (``runtime.rollback``, issue 13): the journal witness judges what peers hold
of our journal as their links come up. While it has open evidence of a rolled-back or forked
journal, the input consumers refuse every session input: operator starts and actions fail
with ``journal_rolled_back`` and the message saying what to do, peer messages and link-up
re-sends are dropped (counted, logged), timer expiries are held and re-queued once the
operator resolves it (``journal.accept_rollback``), so nothing is signed or sent meanwhile.

Channels (all bounded; a full channel makes its producers wait):

``command``  control requests (start a session, a session action), timer expiries, links up
``event``    ``InboundData`` from the peer network
``effect``   :class:`~aura_node.sessions.Step` from the session runtime to the executor

Shutdown (SIGTERM, SIGINT or ``ctl shutdown``): ``STOPPING=1``; the control socket and the
peer network stop taking work (their tasks are cancelled), the consumers stop, the effect
channel is closed, the executor drains what is queued (the group commit in flight is shielded
and completes; sends after the links closed fail and are logged: the envelopes are journaled
and are re-sent on the next start), the journal closes, ``node.pid`` is removed, exit 0.
A journal failure (``JournalFailedError``) stops the node with exit code 1.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from aura_node.config import NodeHome
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import AuraError, JournalFailedError
from aura_node.logs import get_logger
from aura_node.protocols.account import KIND_ACCOUNT, AccountEstablished, AccountStore
from aura_node.protocols.dkd.consent import KIND_CONSENT
from aura_node.protocols.engine import EvidenceRecord, load_protocols
from aura_node.protocols.epochs import KIND_EPOCH_FACT, FactVerdict
from aura_node.protocols.registry import advertised_choreographies, registry_fingerprint
from aura_node.protocols.services import NodeServices
from aura_node.runtime.executor import DurableHook, EffectExecutor
from aura_node.runtime.handlers import control_handlers, session_wait_expired
from aura_node.runtime.notify import sd_notify
from aura_node.runtime.rollback import JournalWitness, refusal
from aura_node.runtime.timers import TimerWheel, WaitDeadlines
from aura_node.sessions import (
    Command,
    Outcome,
    PeerUp,
    SessionControl,
    SessionRuntime,
    StartSession,
    Step,
    TimerExpired,
    choreography_monitor,
    peer_directory,
)

COMMAND_CAPACITY = 1024
EVENT_CAPACITY = 4096
EFFECT_CAPACITY = 4096
#: how often the link watcher looks for links that came (back) up
LINK_POLL_SECONDS = 0.5


class Node:
    """One running device. ``await Node(home).run()`` returns the process exit code."""

    def __init__(self, home: NodeHome, *, plugins: Sequence[str] = ()) -> None:
        self.home = home
        self.plugins = tuple(plugins)
        self.config = home.load_config()
        self.key = DeviceKey.load(home.key_path)
        self.name = self.config.node.name
        self.log = get_logger("aura_node.node", node=self.name)
        self.protocols = load_protocols(self.plugins)
        self.registry_hash = registry_fingerprint()
        #: the choreography versions this node holds (its hello says so; sessions check them)
        self.choreographies = advertised_choreographies()
        self.ready = False
        self.listen: tuple[str, int] | None = None
        self.started = time.time()
        self._stop = trio.Event()
        self.runtime: SessionRuntime | None = None
        self.network: Any = None
        self.executor: EffectExecutor | None = None
        #: the deadlines of control handlers waiting for a session's end (``wait_session``)
        self.wait_deadlines: WaitDeadlines | None = None
        self.command_send: trio.MemorySendChannel[Command] | None = None
        self.witness: JournalWitness | None = None
        #: timer expiries held while the node refuses sessions (re-queued when resolved)
        self._held_timers: list[Command] = []
        self.refused_inbound = 0

    def request_shutdown(self, reason: str) -> None:
        if not self._stop.is_set():
            self.log.info("shutdown_requested", reason=reason)
            self._stop.set()

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> int:
        from aura_node.journal.group_commit import GroupCommitJournal

        cfg = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            self.log.info("starting", home=str(self.home.root), device_id=self.key.device_id,
                          registry_hash=self.registry_hash.hex(), plugins=list(self.plugins),
                          protocols=sorted(self.protocols))
            failed: JournalFailedError | None = None
            try:
                async with GroupCommitJournal.open(
                    self.home.journal_dir, self.key, max_batch=cfg.journal.max_batch,
                    segment_bytes=cfg.journal.segment_bytes,
                ) as journal:
                    await self._run_with_journal(journal, signals)
            except JournalFailedError as exc:
                failed = exc
            except BaseExceptionGroup as group:
                # nurseries wrap what their tasks raise; a journal failure anywhere inside
                # is the node's reason to stop, anything else is a bug and propagates
                match, rest = group.split(JournalFailedError)
                if rest is not None:
                    raise
                assert match is not None
                failed = _first_leaf(match)
            finally:
                self._remove_pid()
            if failed is not None:
                # never retry an fsync: stop, and let the supervisor restart into recovery
                self.log.error("journal_failed", reason=failed.message)
                return 1
        self.log.info("stopped")
        return 0

    async def _run_with_journal(self, journal: Any, signals: Any) -> None:
        from aura_node.control.server import ControlServer
        from aura_node.transport import PeerNetwork

        cfg = self.config
        startup = await trio.to_thread.run_sync(_read_journal, journal.journal)
        by_session, accounts, rollback_records = (startup.by_session, startup.accounts,
                                                  startup.rollback)

        command_send, command_recv = trio.open_memory_channel[Command](COMMAND_CAPACITY)
        event_send, event_recv = trio.open_memory_channel[Any](EVENT_CAPACITY)
        effect_send, effect_recv = trio.open_memory_channel[Step](EFFECT_CAPACITY)
        self.command_send = command_send

        store = AccountStore()
        learn = account_folder(store, self.log)
        learn([("", kind, body) for kind, body in accounts])
        # from here on, a fact adopted from a durable batch is passed on to linked holders
        learn = account_folder(store, self.log, on_new_fact=self._spread_fact)
        runtime = SessionRuntime(
            key=self.key, self_name=self.name, peers=peer_directory(cfg),
            protocols=self.protocols, monitor_for=choreography_monitor,
            services=NodeServices.from_config(cfg, self.key, accounts=store),
            resend_horizon=max(cfg.protocols.ping_timeout_seconds,
                               cfg.protocols.dkd_timeout_seconds),
            # ended sessions leave memory after the window / beyond the cache; the journal
            # (indexed by session) answers for them after that
            ended_retention=cfg.sessions.ended_session_retention_seconds,
            ended_cache=cfg.sessions.ended_session_cache,
            journal_records=journal.journal.session_records,
        )
        self.runtime = runtime
        # the DKD rate limiter counts what this node admitted before it (re)started
        runtime.services.dkd_consent.recall(startup.consent, now=time.time())
        timers = TimerWheel(command_send)
        from aura_node.journal import JournalEntry
        from aura_node.journal.witness import STORE_NAME, PeerCheckpointStore

        async def append_node_records(records: Sequence[tuple[str, bytes]]) -> None:
            await journal.append_many([JournalEntry(session="", kind=k, body=b, ts=time.time())
                                       for k, b in records])

        witness = JournalWitness(
            journal=journal.journal, append=append_node_records, home=str(self.home.root),
            store=await trio.to_thread.run_sync(PeerCheckpointStore.load,
                                                self.home.root / STORE_NAME),
            log=self.log)
        await witness.restore(rollback_records)
        witness.on_resolved = self._release_held
        self.witness = witness
        self.wait_deadlines = WaitDeadlines(session_wait_expired)
        network = PeerNetwork(key=self.key, config=cfg, choreographies=self.choreographies,
                              inbound=event_send, witness=witness)
        self.network = network
        runtime.advertised = self.choreographies
        runtime.peer_choreographies = network.peer_choreographies

        async def append(records: Sequence[tuple[str, str, bytes]], ts: float) -> None:
            from aura_node.journal import JournalEntry

            await journal.append_many(
                [JournalEntry(session=s, kind=k, body=b, ts=ts) for s, k, b in records])

        # the account store learns an account only once its record is durable (genesis
        # holders and dealer, a recovered new device): the executor's post-commit hook
        executor = EffectExecutor(effects=effect_recv, append=append, network=network,
                                  timers=timers, max_steps=cfg.journal.max_batch,
                                  on_durable=learn)
        self.executor = executor
        control = ControlServer(self.home.control_socket, control_handlers(self), log=self.log,
                                max_connections=cfg.control.max_connections,
                                idle_timeout=cfg.control.idle_timeout_seconds,
                                request_timeout=cfg.control.request_timeout_seconds)

        async with trio.open_nursery() as outer:
            outer.start_soon(executor.run)
            try:
                async with trio.open_nursery() as work:
                    await work.start(witness.run)
                    self.listen = await work.start(network.serve)
                    self.log.info("listening", host=self.listen[0], port=self.listen[1])
                    await work.start(control.serve)
                    work.start_soon(timers.run)
                    work.start_soon(self.wait_deadlines.run)
                    work.start_soon(self._consume_commands, command_recv, effect_send)
                    work.start_soon(self._consume_events, event_recv, effect_send)
                    for step in runtime.rehydrate(by_session):
                        await effect_send.send(step)
                    # Long-lived state (config, registry, rehydrated sessions) never becomes
                    # garbage: move it out of the collector's sight, and collect young objects
                    # less often (a session allocates a few hundred; the default threshold of
                    # 700 runs a collection every couple of messages under load).
                    gc.freeze()
                    gc.set_threshold(50_000, 20, 100)
                    self._write_pid()
                    self.ready = True
                    sd_notify("READY=1")
                    self.log.info("ready", sessions=runtime.counts(),
                                  control_socket=str(self.home.control_socket))
                    work.start_soon(self._watch_signals, signals)
                    work.start_soon(self._watch_links, network, command_send)
                    await self._stop.wait()
                    self.ready = False
                    sd_notify("STOPPING=1")
                    self.log.info("stopping")
                    with trio.move_on_after(2.0):
                        await control.aclose()
                    work.cancel_scope.cancel()
            finally:
                # producers are gone: let the executor drain and finish the commit in flight
                effect_send.close()

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            self.request_shutdown(signal.Signals(signum).name)

    async def _watch_links(self, network: Any, out: trio.MemorySendChannel[Command]) -> None:
        """Queue a :class:`PeerUp` for every link that came (back) up since the last look.

        The transport reports link states, not transitions, so they are polled: a link is
        new when it is up now and was not up at the last look, or is up with a different
        ``since`` (it went down and up again between two looks)."""
        seen: dict[str, object] = {}
        while True:
            for peer, info in network.link_states().items():
                since = info.get("since") if info.get("state") == "up" else None
                if since is not None and seen.get(peer) != since:
                    self.log.info("peer_up", peer=peer)
                    await out.send(PeerUp(peer=peer))
                    self._start_sync([peer])
                seen[peer] = since
            await trio.sleep(LINK_POLL_SECONDS)

    def _release_held(self) -> None:
        """The node takes part in sessions again: re-queue the timer expiries it held."""
        held, self._held_timers = self._held_timers, []
        if held and self.command_send is not None:
            self.log.info("held_timers_released", count=len(held))
            for cmd in held:
                try:
                    self.command_send.send_nowait(cmd)
                except trio.WouldBlock:
                    self._held_timers.append(cmd)  # the rest wait for the next release

    def _refuse_command(self, cmd: Command) -> bool:
        """True when ``cmd`` is refused (answered, held or dropped) because of a rollback."""
        error = refusal(self.witness)
        if error is None:
            return False
        if isinstance(cmd, StartSession | SessionControl):
            self.log.warning("session_refused", command=type(cmd).__name__,
                             session=cmd.session, reason=error.message)
            cmd.reply.fail(error)
        elif isinstance(cmd, TimerExpired):
            self._held_timers.append(cmd)
        # PeerUp: re-sending journaled envelopes is taking part too; nothing to hold
        return True

    def _linked(self) -> list[str]:
        if self.network is None:
            return []
        return [p for p, info in self.network.link_states().items()
                if info.get("state") == "up"]

    def _start_sync(self, peers: Sequence[str]) -> None:
        """Start an ``account-sync`` session with each of ``peers`` that holds or held a share
        of an account here. Queued without waiting: a full command channel drops the sync
        (logged), and the next link-up or adopted fact starts another."""
        from aura_node.protocols.account_sync.roles import CHOREOGRAPHY, sync_peers

        if self.runtime is None or self.command_send is None:
            return
        services = self.runtime.services
        relevant = set(sync_peers(services.accounts, services.peers))
        for peer in sorted(set(peers) & relevant):
            timeout = self.config.protocols.account_sync_timeout_seconds
            cmd = StartSession(choreography=CHOREOGRAPHY, params={"timeout": timeout},
                               roles={self.name: "initiator", peer: "responder"},
                               session=self.runtime.new_session_id(), entropy=os.urandom(32),
                               reply=Outcome())
            try:
                self.command_send.send_nowait(cmd)
            except trio.WouldBlock:
                self.log.warning("account_sync_dropped", peer=peer, reason="command queue full")

    def _spread_fact(self, verdict: FactVerdict, session: str) -> None:
        """A fact became durable and new here: sync with every linked holder, except the
        peers of the session it came in (they have it)."""
        entry = self.runtime.sessions.get(session) if self.runtime and session else None
        had = set(entry.roles) if entry is not None else set()
        self._start_sync([p for p in self._linked() if p not in had])

    async def _consume_commands(
        self, recv: trio.MemoryReceiveChannel[Command], out: trio.MemorySendChannel[Step]
    ) -> None:
        assert self.runtime is not None
        handle = self.runtime.handle_command
        async for cmd in recv:
            if self.witness is not None and self.witness.refusing and self._refuse_command(cmd):
                continue
            try:
                step = handle(cmd)
            except Exception as exc:  # a runtime bug: lose this input, keep the node
                self.log.error("command_failed", command=type(cmd).__name__, exc_info=True)
                reply = getattr(cmd, "reply", None)
                if reply is not None:
                    reply.fail(AuraError(f"internal error: {type(exc).__name__}: {exc}"))
                continue
            if step is not None:
                await out.send(step)

    async def _consume_events(
        self, recv: trio.MemoryReceiveChannel[Any], out: trio.MemorySendChannel[Step]
    ) -> None:
        assert self.runtime is not None
        handle = self.runtime.handle_inbound
        while True:
            data = await recv.receive()
            # drain what is already queued without a checkpoint per message (trio channels
            # cost ~4 us per blocking receive; nowait bursts are ~20x cheaper)
            while True:
                witness = self.witness
                if witness is not None and witness.refusing:
                    self._refuse_inbound(data)
                    try:
                        data = recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    continue
                try:
                    step = handle(data)
                except Exception:  # a runtime bug: drop this payload, keep the node
                    self.log.error("inbound_failed", peer=getattr(data, "peer_name", None),
                                   exc_info=True)
                    step = None
                if step is not None:
                    try:
                        out.send_nowait(step)
                    except trio.WouldBlock:
                        await out.send(step)
                try:
                    data = recv.receive_nowait()
                except trio.WouldBlock:
                    break

    def _refuse_inbound(self, data: Any) -> None:
        """Drop a peer's session message while refusing: logged (the first and every 100th)
        and counted; the journaled ``rollback.detected`` record is the refusal's evidence."""
        self.refused_inbound += 1
        if self.refused_inbound % 100 == 1:
            self.log.warning("inbound_refused", peer=getattr(data, "peer_name", None),
                             refused=self.refused_inbound,
                             reason="peers hold a newer or different journal of this node")

    # --- pid file -------------------------------------------------------------------------

    def _write_pid(self) -> None:
        tmp = self.home.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.home.pid_path)

    def _remove_pid(self) -> None:
        try:
            if self.home.pid_path.read_text().strip() == str(os.getpid()):
                self.home.pid_path.unlink()
        except (FileNotFoundError, ValueError):
            pass


def _first_leaf(group: BaseExceptionGroup[JournalFailedError]) -> JournalFailedError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, JournalFailedError)
    return exc


def account_folder(store: AccountStore, log: Any,
                   on_new_fact: Callable[[FactVerdict, str], None] | None = None
                   ) -> DurableHook:
    """The account store's fold over durable records: every ``account.established`` and
    ``account.epoch`` body is folded into ``store`` (start-up: the journal's; run time: each
    group commit's, from the executor's ``on_durable`` hook). A record that does not check is
    logged and skipped, so one bad record can neither stop the node from starting nor lose a
    batch's sends. ``on_new_fact(verdict, session)`` hears of each fact (or signature) the
    store did not hold before."""

    def learn(records: Sequence[tuple[str, str, bytes]]) -> None:
        for session, kind, body in records:
            if kind not in (KIND_ACCOUNT, KIND_EPOCH_FACT):
                continue
            try:
                done = store.fold(kind, body)
            except AuraError as exc:
                log.error("account_not_learned", session=session or None, code=exc.code,
                          reason=exc.message)
                continue
            if isinstance(done, AccountEstablished):
                log.info("account_learned", session=session or None,
                         account_id=done.account.account_id, epoch=done.epoch,
                         holds=[f"{s.holder_set}#{s.index}" for s in done.shares])
            elif isinstance(done, FactVerdict):
                event = "epoch_fact_refused" if done.outcome == "refused" else "epoch_fact"
                log.info(event, session=session or None, account_id=done.account_id,
                         epoch=done.epoch, outcome=done.outcome, reason=done.reason or None,
                         current_epoch=store.current_epoch(done.account_id))
                if done.new and on_new_fact is not None:
                    on_new_fact(done, session)

    return learn


@dataclass(slots=True)
class StartupRecords:
    """What start-up needs from the journal, gathered in one pass (:func:`_read_journal`)."""

    #: every session's records, in journal order
    by_session: dict[str, list[EvidenceRecord]] = field(
        default_factory=lambda: defaultdict(list))
    #: (kind, body) of the ``account.established`` / ``account.epoch`` records (the account
    #: store's fold)
    accounts: list[tuple[str, bytes]] = field(default_factory=list)
    #: (kind, body) of the rollback witness's records
    rollback: list[tuple[str, bytes]] = field(default_factory=list)
    #: (session, body) of the ``dkd.consent`` records (the DKD rate limiter's count)
    consent: list[tuple[str, bytes]] = field(default_factory=list)


def _read_journal(journal: Any) -> StartupRecords:
    """One pass over the journal for everything start-up folds (journal order kept)."""
    out = StartupRecords()
    for rec in journal.records():
        if rec.session:
            out.by_session[rec.session].append(rec)
            if rec.kind == KIND_CONSENT:
                out.consent.append((rec.session, rec.body))
        elif rec.kind.startswith("rollback."):
            out.rollback.append((rec.kind, rec.body))
        if rec.kind in (KIND_ACCOUNT, KIND_EPOCH_FACT):
            out.accounts.append((rec.kind, rec.body))
    return out


def run_node(home: NodeHome, *, plugins: Sequence[str] = ()) -> int:
    """Run a node until it stops; its exit code. An operator error found while starting (a
    journal locked by another node, a control socket in use, a bad listen address) is raised
    as that one ``AuraError`` (the CLI prints it), not as a group of task failures."""
    node = Node(home, plugins=plugins)
    try:
        return _run(node)
    except BaseExceptionGroup as group:
        match, rest = group.split(AuraError)
        if rest is not None or match is None:
            raise
        exc: BaseException = match
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        raise exc from None


def _run(node: Node) -> int:
    profile = os.environ.get("AURA_NODE_PROFILE")
    if not profile:
        return trio.run(node.run)
    # Performance work only: write a cProfile of the whole run to $AURA_NODE_PROFILE.
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(trio.run, node.run)
    finally:
        prof.dump_stats(profile)
