"""Control commands that protocols declare (``kit.command``), served the same way for all.

Theory of operation
-------------------
A protocol - shipped or a ``--plugin`` - declares, next to its roles, the commands that start a
session of it (:class:`~aura_node.protocols.engine.StartCommand`: pure functions from the
request's arguments to the role assignment and the session parameters). This module is their
shell-side face: for every loaded protocol's commands it builds one handler that starts the
session through the command channel (the reply waits for the start to be durable) and, unless
the command says ``wait=False``, waits for the session's durable end and answers with its
result. ``session.action`` runs an operator action (a kit ``command=`` transition: approve,
reject, ...) on a running session of any protocol. So ``aura-node ctl call NAME --args JSON``
reaches any protocol's commands with no Trio code in the protocol.

Errors: arguments the declaration refuses (``ValueError``/``KeyError``/``TypeError``/params)
are ``invalid_args`` naming the command; a session that fails answers ``session_failed`` (or
``timeout``) with the driver's reason; an unknown session is ``not_found``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aura_node.control import protocol as p
from aura_node.errors import AuraError
from aura_node.protocols.engine import ProtocolSpec, StartCommand
from aura_node.runtime.handlers import (
    Handler,
    RunningNode,
    control_session,
    start_session,
    wait_session,
)
from aura_node.sessions import SessionFailedError, UnknownSessionError

#: the action command every protocol's running sessions answer
SESSION_ACTION = "session.action"


def _need_ready(node: RunningNode) -> None:
    if not node.ready or node.runtime is None:
        raise p.NotReadyError("the node is starting (rehydrating or links not listening)")


def _wait_seconds(args: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    raw = args.get("timeout", params.get("timeout"))
    if raw is None:
        return p.DEFAULT_SESSION_WAIT_SECONDS
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise p.InvalidArgsError(f"timeout must be a positive number of seconds, got {raw!r}")
    return float(raw) + p.SESSION_WAIT_GRACE_SECONDS / 2


def _start_handler(node: RunningNode, spec: ProtocolSpec, cmd: StartCommand) -> Handler:
    async def handle(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        given = {k: v for k, v in args.items() if k != "timeout"}
        try:
            roles = dict(cmd.roles(given, node.name))
            params = dict(cmd.params(given))
        except (ValueError, KeyError, TypeError, AuraError) as exc:
            msg = exc.message if isinstance(exc, AuraError) else str(exc).strip("'\"")
            raise p.InvalidArgsError(f"{cmd.name}: {msg}") from None
        wait = _wait_seconds(args, params)
        try:
            session = await start_session(node, spec.choreography, roles=roles, params=params)
        except SessionFailedError:
            raise
        except AuraError as exc:
            raise p.InvalidArgsError(f"{cmd.name}: {exc.message}") from None
        if not cmd.wait:
            return {"session": session}
        result = await wait_session(node, session, wait)
        return {"session": session, **result}

    return handle


def handlers(node: RunningNode) -> dict[str, Handler]:
    table: dict[str, Handler] = {}
    for spec in node.protocols.values():
        for cmd in spec.commands:
            if cmd.name in table:
                raise ValueError(f"two protocols declare the control command {cmd.name!r}")
            table[cmd.name] = _start_handler(node, spec, cmd)

    async def session_action(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        session, action = args.get("session"), args.get("action")
        extra = args.get("args", {})
        if not isinstance(session, str) or not isinstance(action, str) or not isinstance(
                extra, dict):
            raise p.InvalidArgsError(
                f"{SESSION_ACTION} takes session (str), action (str) and optional args "
                f"(object), got {sorted(args)}")
        try:
            reply = await control_session(node, session, action, extra)
        except UnknownSessionError as exc:
            raise p.NotFoundError(exc.message) from None
        return {"session": session, **reply}

    table[SESSION_ACTION] = session_action
    return table
