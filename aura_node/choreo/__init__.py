"""The choreography language: declare a protocol once, project it to each role.

Public surface (everything else is private to the package):

- DSL: :func:`choreography`, :class:`ChoreographyBuilder`, :data:`ALL`, :class:`Role`,
  :class:`Threshold`; the result is a :class:`Choreography` (``name``, ``roles``,
  ``messages``, ``check()``, ``project(role, bindings)``).
- Local types: :class:`LocalType`, :class:`LocalTransition` (``aura_node.choreo.local``).
- :class:`Monitor` (``aura_node.choreo.monitor``).
- Renderers in ``aura_node.choreo.render``.
- Errors in ``aura_node.choreo.errors``.

Pure code: no Trio, no sockets, no clock, no disk. Modules from the bottom up (each imports
only those before it): ``errors``, ``local``, ``syntax`` (the AST), ``projection``,
``wellformed``, ``dsl`` (builder, decorator, :class:`Choreography`); ``monitor`` needs
only ``errors`` and ``local``; ``render`` and ``simulate`` come last. ``subtyping`` (is a new
version of a choreography compatible with an old one?) reads only ``local`` types (and
``dsl`` for whole choreographies).
"""

from aura_node.choreo.dsl import Choreography, ChoreographyBuilder, choreography
from aura_node.choreo.errors import (
    BindingError,
    ChoreographyErrors,
    DuplicateGatherMessageError,
    EarlyMessageError,
    IllFormedChoreography,
    MonitorUsageError,
    NoTimeoutError,
    UnexpectedMessageError,
    UnexpectedSendError,
)
from aura_node.choreo.local import LocalTransition, LocalType
from aura_node.choreo.monitor import Monitor
from aura_node.choreo.syntax import ALL, Role, Threshold

__all__ = [
    "ALL",
    "BindingError",
    "Choreography",
    "ChoreographyBuilder",
    "ChoreographyErrors",
    "DuplicateGatherMessageError",
    "EarlyMessageError",
    "IllFormedChoreography",
    "LocalTransition",
    "LocalType",
    "Monitor",
    "MonitorUsageError",
    "NoTimeoutError",
    "Role",
    "Threshold",
    "UnexpectedMessageError",
    "UnexpectedSendError",
    "choreography",
]
