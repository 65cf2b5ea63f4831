"""A node's sessions: the session table, monitors in front of drivers, effects out (pure).

Theory of operation
-------------------
:class:`SessionRuntime` is synchronous at its core: each input (a command, an inbound payload,
a timer expiry) is handled by one plain method call that never awaits, so a session's state
changes atomically with respect to every other session, and returns the :class:`Step` to hand
to the effect executor. In the daemon (``aura_node.runtime``, the Trio shell) two small
consumer tasks (one per input channel) call these methods and push the steps into the bounded
effect channel; the seeded simulation (``aura_node.harness.simulation``) calls the same
methods without Trio.

The jobs, one private module each (h11 style: this package's public names are the ones below):

``_steps``      what flows through the runtime's channels: commands, steps, actions, outcomes
``_monitors``   the choreographies this node runs and one monitor per session
``_table``      the session table, its counters, and eviction of ended sessions
``_effects``    running a driver: effects -> journal records + actions; ending a session
``_inbound``    inbound payloads: signature, session lookup, monitor check, delivery
``_rehydrate``  the session table rebuilt from the journal after a restart
``_runtime``    :class:`SessionRuntime`: the above plus the commands
"""

from aura_node.sessions._inbound import MAX_EARLY, DriverObjectionError, InboundPayload
from aura_node.sessions._monitors import (
    SessionMonitor,
    choreography_monitor,
)
from aura_node.sessions._runtime import SessionRuntime
from aura_node.sessions._steps import (
    Action,
    Arm,
    Command,
    Disarm,
    Outcome,
    PeerUp,
    Resolve,
    SessionControl,
    StartSession,
    Step,
    TimerExpired,
    Transmit,
)
from aura_node.sessions._table import (
    IncompatibleVersionError,
    MonitorFactory,
    PeerDirectory,
    RoleMonitor,
    SessionEntry,
    SessionFailedError,
    UnknownSessionError,
    peer_directory,
)

__all__ = [
    "MAX_EARLY",
    "Action",
    "Arm",
    "Command",
    "Disarm",
    "DriverObjectionError",
    "IncompatibleVersionError",
    "InboundPayload",
    "MonitorFactory",
    "Outcome",
    "PeerDirectory",
    "PeerUp",
    "Resolve",
    "RoleMonitor",
    "SessionControl",
    "SessionEntry",
    "SessionFailedError",
    "SessionMonitor",
    "SessionRuntime",
    "StartSession",
    "Step",
    "TimerExpired",
    "Transmit",
    "UnknownSessionError",
    "choreography_monitor",
    "peer_directory",
]
