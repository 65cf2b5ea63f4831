"""Control commands of protocols written on the authoring kit, built-in or plugin alike.

Theory of operation
-------------------
A protocol written on the authoring kit declares its operator actions as ``command=``
transitions, and may declare start commands of its own (``kit.command``); this module is their
face on the control socket, so a plugin needs no handler code of its own.

A declared start command ``NAME`` (``kit.command(NAME, roles=..., params=...)``, pure functions
of the request's arguments) starts a session with this node as the initiator and, unless it
says ``wait=False``, answers with the session's durable result (``{"session", ...result}``);
its ``timeout`` argument is how long to wait. For every protocol ``NAME`` registered with
``control=True`` the node also serves (``aura-node ctl call``):

* ``NAME.start`` - start a session with this node as the initiator. The arguments are the role
  assignment, by role name (a device name, or a list of names for a role set), plus the
  protocol's params (checked by its params struct)::

      {"approvers": ["b", "c"], "payee": "acme", "amount": 1250, "k": 2}

  The reply ``{"session", "phase"}`` comes once the start and its first messages are durable;
  ``ctl session ID`` follows the session to its end.
* ``NAME.COMMAND`` - ``{"session": ID, ...}``: run the ``command=COMMAND`` transition of this
  node's role in that session; the other arguments go to the transition. The reply comes once
  its effects are journaled. A command the role cannot take in its current phase is refused
  (``conflict``) and changes nothing.

Listed in ``handlers.HANDLER_MODULES``; the shipped protocols, registered without
``control=True``, have their contract commands in ``protocol_commands``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aura_node.control import protocol as p
from aura_node.errors import AuraError
from aura_node.protocols.engine import ProtocolSpec, StartCommand
from aura_node.protocols.kit import REGISTERED, Protocol
from aura_node.runtime.handlers import (
    Handler,
    RunningNode,
    control_session,
    start_session,
    wait_session,
)
from aura_node.sessions import SessionFailedError, UnknownSessionError


def handlers(node: RunningNode) -> dict[str, Handler]:
    """The declared start commands of every protocol the node runs, and ``NAME.start`` /
    ``NAME.COMMAND`` for every ``control=True`` kit protocol (plugins included: they are
    imported before the handler table is built)."""
    table: dict[str, Handler] = {}
    for spec in node.protocols.values():
        for cmd in spec.commands:
            if cmd.name in table:
                raise ValueError(f"two protocols declare the control command {cmd.name!r}")
            table[cmd.name] = _declared(node, spec, cmd)
    for name, proto in sorted(REGISTERED.items()):
        if proto.control and name in node.protocols:
            generated = {f"{name}.start": _start(node, proto),
                         **{f"{name}.{c}": _act(node, name, c) for c in proto.commands}}
            clash = sorted(set(generated) & set(table))
            if clash:
                raise ValueError(f"{name} declares control commands {clash} twice")
            table.update(generated)
    return table


def _need_ready(node: RunningNode) -> None:
    if not node.ready or node.runtime is None:
        raise p.NotReadyError("the node is starting (rehydrating or links not listening)")


def _start(node: RunningNode, proto: Protocol) -> Handler:
    name = proto.choreography.name
    initiator = proto.spec.initiator_role

    async def start(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        roles = {node.name: initiator}
        params = dict(args)
        for role in proto.choreography.roles:
            if role == initiator:
                continue
            given = params.pop(role, None)
            names = [given] if isinstance(given, str) else given
            if (not isinstance(names, list) or not names
                    or not all(isinstance(n, str) and n for n in names)):
                raise p.InvalidArgsError(
                    f"{name}.start needs {role!r}: a device name or a list of device names")
            if len(names) > 1 and not proto.choreography.role(role).is_set:
                raise p.InvalidArgsError(f"{role!r} of {name} is one device, got {names}")
            for n in names:
                if n in roles:
                    raise p.InvalidArgsError(f"{n!r} is given two roles in {name}")
                roles[n] = role
        try:
            sid = await start_session(node, name, roles=roles, params=params)
        except SessionFailedError:
            raise
        except AuraError as exc:
            raise p.InvalidArgsError(exc.message) from None
        assert node.runtime is not None
        return {"session": sid, "phase": node.runtime.get(sid).state}

    return start


def _act(node: RunningNode, name: str, command: str) -> Handler:
    async def act(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        assert node.runtime is not None
        rest = dict(args)
        session = rest.pop("session", None)
        if not isinstance(session, str) or not session:
            raise p.InvalidArgsError(f"{name}.{command} needs 'session': the session id")
        try:
            entry = node.runtime.get(session)
        except UnknownSessionError as exc:
            raise p.NotFoundError(exc.message) from None
        if entry.choreography != name:
            raise p.InvalidArgsError(f"session {session} runs {entry.choreography}, not {name}")
        try:
            reply = await control_session(node, session, command, rest)
        except UnknownSessionError as exc:
            raise p.ConflictError(exc.message) from None
        if "error" in reply:
            raise p.ConflictError(f"cannot {command} session {session}: {reply['error']}")
        return {"session": session, **reply}

    return act


def _wait_seconds(args: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    raw = args.get("timeout", params.get("timeout"))
    if raw is None:
        return p.DEFAULT_SESSION_WAIT_SECONDS
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise p.InvalidArgsError(f"timeout must be a positive number of seconds, got {raw!r}")
    return float(raw) + p.SESSION_WAIT_GRACE_SECONDS / 2


def _declared(node: RunningNode, spec: ProtocolSpec, cmd: StartCommand) -> Handler:
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
