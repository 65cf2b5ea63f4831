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
   runtime re-sends that peer what its active sessions sent it (end-to-end retransmission).

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
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from aura_node.config import NodeHome
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import AuraError, JournalFailedError
from aura_node.logs import get_logger
from aura_node.protocols.account import KIND_ACCOUNT, AccountStore, decode_established
from aura_node.protocols.engine import EvidenceRecord, load_protocols
from aura_node.protocols.registry import advertised_choreographies, registry_fingerprint
from aura_node.protocols.services import NodeServices
from aura_node.runtime.executor import DurableHook, EffectExecutor
from aura_node.runtime.handlers import control_handlers
from aura_node.runtime.notify import sd_notify
from aura_node.runtime.timers import TimerWheel
from aura_node.sessions import (
    Command,
    PeerUp,
    SessionRuntime,
    Step,
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
        self.command_send: trio.MemorySendChannel[Command] | None = None

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
        by_session, accounts = await trio.to_thread.run_sync(_read_journal, journal.journal)

        command_send, command_recv = trio.open_memory_channel[Command](COMMAND_CAPACITY)
        event_send, event_recv = trio.open_memory_channel[Any](EVENT_CAPACITY)
        effect_send, effect_recv = trio.open_memory_channel[Step](EFFECT_CAPACITY)
        self.command_send = command_send

        store = AccountStore()
        learn = account_folder(store, self.log)
        learn([("", KIND_ACCOUNT, body) for body in accounts])
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
        timers = TimerWheel(command_send)
        network = PeerNetwork(key=self.key, config=cfg, choreographies=self.choreographies,
                              inbound=event_send)
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
                    self.listen = await work.start(network.serve)
                    self.log.info("listening", host=self.listen[0], port=self.listen[1])
                    await work.start(control.serve)
                    work.start_soon(timers.run)
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
                seen[peer] = since
            await trio.sleep(LINK_POLL_SECONDS)

    async def _consume_commands(
        self, recv: trio.MemoryReceiveChannel[Command], out: trio.MemorySendChannel[Step]
    ) -> None:
        assert self.runtime is not None
        handle = self.runtime.handle_command
        async for cmd in recv:
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


def account_folder(store: AccountStore, log: Any) -> DurableHook:
    """The account store's fold over durable records: every ``account.established`` body is
    added to ``store`` (start-up: the journal's; run time: each group commit's, from the
    executor's ``on_durable`` hook). A record that does not check is logged and skipped, so
    one bad record can neither stop the node from starting nor lose a batch's sends."""

    def learn(records: Sequence[tuple[str, str, bytes]]) -> None:
        for session, kind, body in records:
            if kind != KIND_ACCOUNT:
                continue
            try:
                established = decode_established(body)
                store.add(established)
            except AuraError as exc:
                log.error("account_not_learned", session=session or None, code=exc.code,
                          reason=exc.message)
                continue
            log.info("account_learned", session=session or None,
                     account_id=established.account.account_id,
                     holds=[f"{s.holder_set}#{s.index}" for s in established.shares])

    return learn


def _read_journal(journal: Any) -> tuple[Mapping[str, list[EvidenceRecord]], list[bytes]]:
    """One pass over the journal: records grouped by session (in journal order), and the
    bodies of the ``account.established`` records (the account store's fold)."""
    out: dict[str, list[EvidenceRecord]] = defaultdict(list)
    accounts: list[bytes] = []
    for rec in journal.records():
        if rec.session:
            out[rec.session].append(rec)
        if rec.kind == KIND_ACCOUNT:
            accounts.append(rec.body)
    return out, accounts


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
