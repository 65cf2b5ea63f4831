"""Control-socket handlers of a running node (the request table is in
``aura_node.control.protocol``; these fill in the results).

Handlers never touch a session directly: starting a session or acting on one goes through the
command channel, and the answer comes back only after the session runtime's step is durable in
the journal (the executor resolves the reply after the fsync). Read-only queries (status,
peers, sessions) read the session table directly: the runtime is single-threaded, so a read
between two steps is consistent.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio

from aura_node.config import NodeConfig, NodeHome
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import AuraError
from aura_node.protocols.engine import ProtocolSpec
from aura_node.runtime.executor import EffectExecutor
from aura_node.runtime.timers import WaitDeadlines
from aura_node.sessions import (
    Command,
    IncompatibleVersionError,
    Outcome,
    SessionControl,
    SessionFailedError,
    SessionRuntime,
    StartSession,
    UnknownSessionError,
    peer_directory,
)


class RunningNode(Protocol):
    """The running node as control handlers see it (``runtime.daemon.Node`` is one).

    Handler modules depend on this, never on the daemon: the daemon builds the handler table,
    so a handler importing the daemon back would close an import circle. Read-only except
    ``config`` (``reload`` swaps it)."""

    config: NodeConfig

    @property
    def name(self) -> str: ...
    @property
    def key(self) -> DeviceKey: ...
    @property
    def home(self) -> NodeHome: ...
    @property
    def ready(self) -> bool: ...
    @property
    def listen(self) -> tuple[str, int] | None: ...
    @property
    def registry_hash(self) -> bytes: ...
    @property
    def protocols(self) -> Mapping[str, ProtocolSpec]: ...
    @property
    def runtime(self) -> SessionRuntime | None: ...
    @property
    def network(self) -> Any: ...
    @property
    def executor(self) -> EffectExecutor | None: ...
    @property
    def command_send(self) -> trio.MemorySendChannel[Command] | None: ...
    @property
    def log(self) -> Any: ...
    def request_shutdown(self, reason: str) -> None: ...


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

#: modules with protocol control handlers (account.create, dkd, recovery.*): each exposes
#: ``handlers(node) -> dict[str, Handler]`` and builds them with :func:`start_session`,
#: :func:`wait_session` and :func:`control_session` below. Protocol packages are pure (no
#: trio), so these modules live in the shell; later issues append theirs here.
HANDLER_MODULES: list[str] = [
    "aura_node.runtime.protocol_commands",
    "aura_node.runtime.kit_commands",  # every kit protocol's generated and declared commands
]


def _errors() -> Any:
    from aura_node.control import protocol

    return protocol


def peer_views(node: RunningNode) -> list[dict[str, Any]]:
    links: Mapping[str, Any] = node.network.link_states() if node.network is not None else {}
    out = []
    for p in node.config.peers:
        link = links.get(p.name, {})
        state = link.get("state", "down") if isinstance(link, Mapping) else str(link)
        view: dict[str, Any] = {
            "name": p.name,
            "device_id": _device_id(p.public_key),
            "role": p.role,
            "address": p.address,
            "link": state,
        }
        if isinstance(link, Mapping):
            view["link_detail"] = {k: v for k, v in link.items() if k != "state"}
        out.append(view)
    return out


def _device_id(public_key_hex: str) -> str:
    from aura_node.crypto.keys import device_id_for

    return device_id_for(bytes.fromhex(public_key_hex))


async def start_session(
    node: RunningNode, choreography: str, *, roles: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
) -> str:
    """Start a session through the command channel; returns its id once the start (and the
    first messages) are durable. For protocol handlers (genesis, dkd, recovery) too."""
    assert node.command_send is not None and node.runtime is not None
    reply = Outcome()
    session = node.runtime.new_session_id()
    await node.command_send.send(StartSession(
        choreography=choreography, params=dict(params or {}), roles=dict(roles),
        session=session, entropy=os.urandom(32), reply=reply,
    ))
    await reply.wait()
    return session


async def wait_session(node: RunningNode, session: str, timeout: float) -> dict[str, Any]:
    """Wait until ``session`` ended (durably); its result, or the error it failed with.
    A driver failure coded ``timeout`` and an expired wait both become the control
    ``timeout`` fault. The wait's own deadline is the node's ``wait_deadlines`` (one heap for
    every parked handler, ``runtime.timers.WaitDeadlines``) when it has one."""
    assert node.runtime is not None
    p = _errors()
    entry = node.runtime.get(session)
    deadlines: WaitDeadlines | None = getattr(node, "wait_deadlines", None)
    try:
        if deadlines is not None:
            return await deadlines.wait(entry.final, timeout, session)
        with trio.move_on_after(timeout):
            return await entry.final.wait()
    except SessionFailedError as exc:
        if exc.failure_code == "timeout":
            raise p.RequestTimeoutError(
                f"session {session} timed out: {exc.message}") from None
        raise
    raise session_wait_expired(session, timeout)


def session_wait_expired(session: str, timeout: float) -> AuraError:
    """The control fault of a handler whose wait for ``session`` outlived ``timeout``."""
    error: AuraError = _errors().RequestTimeoutError(
        f"session {session} did not finish within {timeout:g} s")
    return error


async def control_session(
    node: RunningNode, session: str, action: str, args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run an operator action (approve, veto, ...) on an active session; the driver's reply
    once its effects are durable."""
    assert node.command_send is not None
    reply = Outcome()
    await node.command_send.send(SessionControl(session=session, action=action,
                                                args=dict(args or {}), reply=reply))
    return await reply.wait()


def control_handlers(node: RunningNode) -> dict[str, Handler]:
    p = _errors()

    def need_ready() -> None:
        if not node.ready:
            raise p.NotReadyError("the node is starting (rehydrating or links not listening)")

    async def status(_args: dict[str, Any]) -> dict[str, Any]:
        rt = node.runtime
        out: dict[str, Any] = {
            "name": node.name,
            "device_id": node.key.device_id,
            "role": node.config.node.role,
            "ready": node.ready,
            "peers": peer_views(node),
            "sessions": rt.states() if rt is not None else {},
            "outcomes": rt.counts() if rt is not None else {},
            "listen": None if node.listen is None else f"{node.listen[0]}:{node.listen[1]}",
            "pid": os.getpid(),
            "registry_hash": node.registry_hash.hex(),
            "protocols": sorted(node.protocols),
        }
        if rt is not None:
            out["messages"] = {"accepted": rt.accepted, "rejected": rt.rejected,
                               "duplicates": rt.duplicates}
        if node.executor is not None:
            out["journal"] = node.executor.stats()
        witness = getattr(node, "witness", None)
        if witness is not None:
            # issue 13: whether peers hold a newer or different journal of ours, which peer
            # holds what, and what to do about it
            out["rollback"] = witness.view()
        return out

    async def peers(_args: dict[str, Any]) -> dict[str, Any]:
        return {"peers": peer_views(node)}

    async def sessions(args: dict[str, Any]) -> dict[str, Any]:
        rt = node.runtime
        if rt is None:
            return {"sessions": []}
        # --all: the active sessions and the ended ones still in memory (the
        # [sessions] retention window and cache); older ones: `ctl session ID`
        show_all = bool(args.get("all", False))
        entries = rt.sessions.values() if show_all else rt.active_sessions()
        return {"sessions": [e.summary() for e in entries]}

    async def session(args: dict[str, Any]) -> dict[str, Any]:
        assert node.runtime is not None
        try:
            # an ended session evicted from memory is answered from the journal
            return node.runtime.describe(str(args["session"]))
        except UnknownSessionError as exc:
            raise p.NotFoundError(exc.message) from None

    async def shutdown(_args: dict[str, Any]) -> dict[str, Any]:
        node.request_shutdown("ctl shutdown")
        return {"stopping": True}

    async def reload(_args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.protocols.services import NodeServices

        need_ready()
        cfg = NodeHome(node.home.root).load_config()
        old = {q.name for q in node.config.peers}
        new = {q.name for q in cfg.peers}
        node.network.update_peers(cfg)
        assert node.runtime is not None
        node.runtime.peers = peer_directory(cfg)
        node.runtime.services.peers = NodeServices.from_config(cfg, node.key).peers
        node.config = cfg
        node.log.info("reloaded", peers=sorted(new), added=sorted(new - old),
                      removed=sorted(old - new))
        return {"peers": sorted(new), "added": sorted(new - old), "removed": sorted(old - new)}

    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        need_ready()
        peer = str(args["peer"])
        if peer not in {q.name for q in node.config.peers}:
            known = ", ".join(q.name for q in node.config.peers) or "none"
            raise p.InvalidArgsError(f"no pinned peer named {peer!r} (pinned: {known})")
        timeout = float(args.get("timeout") or node.config.protocols.ping_timeout_seconds)
        try:
            sid = await start_session(node, "ping", roles={node.name: "initiator",
                                                             peer: "responder"},
                                      params={"timeout": timeout})
        except (SessionFailedError, IncompatibleVersionError):
            raise  # the session or the peer's ping version, not the operator's arguments
        except AuraError as exc:
            raise p.InvalidArgsError(exc.message) from None
        # the driver's own deadline fails the session at ``timeout``; the extra second only
        # covers the journal commit of that failure
        result = await wait_session(node, sid, timeout + 1.0)
        return {"peer": peer, "rtt_ms": result["rtt_ms"], "session": sid}

    async def accept_rollback(args: dict[str, Any]) -> dict[str, Any]:
        """Accept losing the records the open rollback evidence shows (deliberate: ``code``
        must name exactly the evidence the operator saw; journaled and logged)."""
        need_ready()
        witness = getattr(node, "witness", None)
        if witness is None:
            raise p.NotReadyError("the journal witness is not running")
        unknown = sorted(set(args) - {"code", "reason"})
        if unknown:
            raise p.InvalidArgsError(
                f"journal.accept_rollback: unknown argument(s) {', '.join(unknown)} "
                f"(allowed: code, reason)")
        code = args.get("code")
        reason = args.get("reason", "")
        if not isinstance(code, str) or not code:
            raise p.InvalidArgsError(
                f"journal.accept_rollback: argument 'code' must be the code `journal verify "
                f"--peers` shows, got {code!r}")
        if not isinstance(reason, str):
            raise p.InvalidArgsError(
                f"journal.accept_rollback: argument 'reason' must be a string, got {reason!r}")
        from aura_node.journal.witness import checkpoint_view

        acceptance = await witness.accept(code, reason)
        return {"accepted": [checkpoint_view(c) for c in acceptance.checkpoints],
                "code": acceptance.code, "state": witness.guard.state}

    table: dict[str, Handler] = {
        "journal.accept_rollback": accept_rollback,
        "status": status,
        "peers": peers,
        "sessions": sessions,
        "session": session,
        "shutdown": shutdown,
        "reload": reload,
        "ping": ping,
    }
    import importlib

    for name in HANDLER_MODULES:
        extra: dict[str, Handler] = importlib.import_module(name).handlers(node)
        clash = sorted(set(extra) & set(table))
        if clash:
            raise ValueError(f"{name} redefines control commands {clash}")
        table.update(extra)
    return table
