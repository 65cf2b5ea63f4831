"""The public authoring API: everything a protocol (shipped or plugin) is written with.

A protocol is its choreography plus one typestate class per role; see
``docs/writing-a-protocol.md`` for the walk-through and ``aura_node/protocols/ping/roles.py``
for the smallest complete example. Import from here, not from the private modules::

    from aura_node.kit import (ChoreographicProtocol, ChoreographyBuilder, Phase, Step,
                               choreography, protocol, transition)

* the language: :func:`choreography`, :class:`ChoreographyBuilder` (roles, role sets,
  thresholds, sends, gathers, choices, loops, deadlines, abort);
* roles: :class:`ChoreographicProtocol` (class keywords ``choreography``, ``role``,
  ``initial``, ``abort``), :class:`Phase`, :func:`transition`, :func:`requires`, :func:`phase_of`;
* the step a transition sees and the effects it asks for: :class:`Step`;
* witnesses: :class:`Witness`, :class:`NoPublicConstructor`, :class:`SignedStatement`,
  :func:`verify_threshold_evidence`, :class:`ThresholdEvidence`;
* errors a transition raises: :class:`RemoteProtocolError` (the peer's fault: that message is
  rejected and journaled, the session goes on), :class:`WitnessError`, :class:`ParamsError`;
* registration: :func:`protocol` (conformance-checked against the projection), :class:`NoParams`,
  and :func:`command` for the control commands that start a session (``ctl call NAME``);
* declarations beside ``@transition``: :func:`unrepeatable` (a send whose content is drawn
  live and journaled, replayed from the journal) and :func:`polled` (a gather another input
  can complete).
* versions: ``choreography(name, version=N)``; :func:`protocol` with a higher version of a
  registered choreography upgrades it on this node, and :func:`declare_older_version` keeps
  another older version declared (peers still running it keep running sessions with this node
  when the new version is proven to stand in for it; see ``aura-node choreo compat``).

This module only re-exports; it is pure (no trio).
"""

from __future__ import annotations

from aura_node.choreo import ALL, ChoreographyBuilder, Role, Threshold, choreography
from aura_node.errors import RemoteProtocolError, WitnessError
from aura_node.protocols.engine import ParamsError
from aura_node.protocols.kit import (
    NondeterminismError,
    NoParams,
    Protocol,
    Step,
    command,
    polled,
    protocol,
    unrepeatable,
)
from aura_node.protocols.registry import declare_older_version
from aura_node.session.typestate import (
    ChoreographicProtocol,
    Phase,
    phase_of,
    requires,
    transition,
)
from aura_node.session.witness import (
    NoPublicConstructor,
    SignedStatement,
    ThresholdEvidence,
    Witness,
    verify_statement,
    verify_threshold_evidence,
)

__all__ = [
    "ALL",
    "ChoreographicProtocol",
    "ChoreographyBuilder",
    "NoParams",
    "NoPublicConstructor",
    "NondeterminismError",
    "ParamsError",
    "Phase",
    "Protocol",
    "RemoteProtocolError",
    "Role",
    "SignedStatement",
    "Step",
    "ThresholdEvidence",
    "Threshold",
    "Witness",
    "WitnessError",
    "choreography",
    "command",
    "declare_older_version",
    "phase_of",
    "polled",
    "protocol",
    "requires",
    "transition",
    "unrepeatable",
    "verify_statement",
    "verify_threshold_evidence",
]
