"""The runtime's view of the choreographies: the registry it runs and one monitor per session.

:class:`SessionMonitor` wraps ``aura_node.choreo.Monitor`` (projected from this node's
choreography for the session's role) and adds what the runtime needs around it: the
choreography's abort message (built when a session fails, fanned out to every other role, and
recognised when a peer sends it), and deadline handling that is a no-op in states without a
deadline (drivers may run local timers, e.g. a recovery cooldown).

The registry this node runs is ``aura_node.protocols.registry.node_registry()``: the shipped
choreographies plus those ``--plugin`` modules register (``kit.protocol`` does it). A name
never maps to two choreographies, so projections are cached per (choreography, role,
bindings) for the life of the process; monitors are per session.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, cast

import msgspec

from aura_node.choreo import LocalType, Monitor
from aura_node.errors import ChoreographyError
from aura_node.protocols.registry import node_registry


@lru_cache(maxsize=1024)
def _project(choreography: str, role: str, bindings: tuple[tuple[str, int], ...]) -> LocalType:
    chor = node_registry().get(choreography)
    if chor is None:
        raise ChoreographyError(f"choreography {choreography!r} is not in this node's registry")
    return chor.project(role, dict(bindings) or None)


class SessionMonitor:
    # Sends to a role set bound to size 0 (genesis without guardians) are stepped over by
    # ``choreo.Monitor`` itself, like gathers over an empty set.
    __slots__ = ("_abort_type", "_monitor")

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._abort_type = monitor.local_type.abort_message

    def check_inbound(self, sender_role: str, message: msgspec.Struct, *, member: str) -> None:
        self._monitor.check_inbound(sender_role, message, member=member)

    def check_outbound(self, receiver_role: str, message: msgspec.Struct) -> None:
        self._monitor.check_outbound(receiver_role, message)

    def on_timeout(self) -> None:
        """A driver timer fired: follow the state's deadline edge if it has one."""
        lt = self._monitor.local_type
        if any(t.action == "timeout" for t in lt.outgoing(self._monitor.state)):
            self._monitor.timeout()

    def on_abort(self) -> None:
        """This side gives up (before the runtime fans the abort message out)."""
        if not self._monitor.is_final:
            self._monitor.abort()

    def is_abort(self, message: object) -> bool:
        return self._abort_type is not None and type(message) is self._abort_type

    def abort_message(self, reason: str) -> msgspec.Struct | None:
        t: Any = self._abort_type
        if t is None:
            return None
        fields = {f.name for f in msgspec.structs.fields(t)}
        return cast(msgspec.Struct, t(reason=reason[:500]) if "reason" in fields else t())

    def state(self) -> str:
        return str(self._monitor.state)

    @property
    def is_final(self) -> bool:
        return bool(self._monitor.is_final)


#: Monitor's per-session (mutable) slots; every other slot is derived from the local type
#: alone and can be shared between sessions. ``connected`` is a set the monitor adds to (the
#: optional roles this session knows about): shared, one session's roles would leak into all
#: the others of the same template
_SESSION_SLOTS = frozenset({"_counting", "_stragglers", "connected", "state"})
_CLONABLE = _SESSION_SLOTS <= set(Monitor.__slots__)


@lru_cache(maxsize=1024)
def _template(choreography: str, role: str, bindings: tuple[tuple[str, int], ...]
              ) -> tuple[Monitor, tuple[tuple[str, Any], ...]]:
    """The monitor in its initial state and its shared slots as (name, value) pairs, read
    once here rather than per session."""
    m = Monitor(_project(choreography, role, bindings))
    return m, _shared_slots(m)


def _shared_slots(template: Monitor) -> tuple[tuple[str, Any], ...]:
    return tuple((slot, getattr(template, slot)) for slot in Monitor.__slots__
                 if slot not in _SESSION_SLOTS)


def _fresh_monitor(template: Monitor, shared: tuple[tuple[str, Any], ...] | None = None
                   ) -> Monitor:
    """A monitor in the template's initial state without re-deriving its tables (building a
    Monitor walks the whole local type: ~20 us, per session). Shares the immutable tables,
    copies nothing mutable. Falls back to the constructor if Monitor's layout changed."""
    if not _CLONABLE:
        return Monitor(template.local_type)
    m = Monitor.__new__(Monitor)
    for slot, value in shared if shared is not None else _shared_slots(template):
        setattr(m, slot, value)
    m._counting = {}
    m._stragglers = {}
    m.connected = set()
    m.state = template.state
    return m


def choreography_monitor(
    choreography: str, role: str, bindings: Mapping[str, int]
) -> SessionMonitor:
    """A fresh monitor for ``role`` of ``choreography`` (projected once per bindings)."""
    key = tuple(sorted(bindings.items())) if bindings else ()
    return SessionMonitor(_fresh_monitor(*_template(choreography, role, key)))
