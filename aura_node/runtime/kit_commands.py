"""Control commands generated for protocols registered with ``kit.protocol(..., control=True)``.

Theory of operation
-------------------
A protocol written on the authoring kit declares its operator actions as ``command=``
transitions; this module is their face on the control socket, so a plugin needs no handler
code of its own. For every such protocol ``NAME`` the node serves (``aura-node ctl call``):

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

Listed in ``handlers.HANDLER_MODULES``; protocols registered without ``control=True`` (the
shipped ones, which have hand-written commands in ``protocol_commands``) get nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aura_node.control import protocol as p
from aura_node.errors import AuraError
from aura_node.runtime.handlers import Handler, control_session, start_session
from aura_node.runtime.sessions import SessionFailedError, UnknownSessionError

if TYPE_CHECKING:
    from aura_node.protocols.kit import Protocol
    from aura_node.runtime.daemon import Node


def handlers(node: Node) -> dict[str, Handler]:
    """``NAME.start`` and ``NAME.COMMAND`` for every ``control=True`` kit protocol the node
    runs (plugins included: they are imported before the handler table is built)."""
    from aura_node.protocols.kit import REGISTERED

    table: dict[str, Handler] = {}
    for name, proto in sorted(REGISTERED.items()):
        if proto.control and name in node.protocols:
            table[f"{name}.start"] = _start(node, proto)
            for command in proto.commands:
                table[f"{name}.{command}"] = _act(node, name, command)
    return table


def _need_ready(node: Node) -> None:
    if not node.ready or node.runtime is None:
        raise p.NotReadyError("the node is starting (rehydrating or links not listening)")


def _start(node: Node, proto: Protocol) -> Handler:
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


def _act(node: Node, name: str, command: str) -> Handler:
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
