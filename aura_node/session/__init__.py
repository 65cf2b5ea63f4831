"""Typestate sessions, runtime witnesses and conformance (pure core, no trio).

* :mod:`.typestate` - ``ChoreographicProtocol[C, S]``, ``Phase``, ``@transition``, ``@requires``:
  a role as a linear value whose type names its phase, with a runtime guard behind it.
* :mod:`.witness` - ``Witness`` (no public constructor) and the threshold-evidence verifier.
* :mod:`.conformance` - check a typestate class against its role's projected local type.
* :mod:`.example` - a toy protocol that exercises all of it.
"""

from aura_node.session.conformance import ConformanceError, check_conformance
from aura_node.session.typestate import (
    ChoreographicProtocol,
    Phase,
    TransitionDecl,
    declared_transitions,
    phase_of,
    requires,
    transition,
)
from aura_node.session.witness import (
    Equivocation,
    NoPublicConstructor,
    QuorumOfSignedStatements,
    SignedStatement,
    ThresholdConfigError,
    ThresholdEvidence,
    Witness,
    verify_statement,
    verify_threshold_evidence,
)

__all__ = [
    "ChoreographicProtocol",
    "ConformanceError",
    "Equivocation",
    "NoPublicConstructor",
    "Phase",
    "QuorumOfSignedStatements",
    "SignedStatement",
    "ThresholdConfigError",
    "ThresholdEvidence",
    "TransitionDecl",
    "Witness",
    "check_conformance",
    "declared_transitions",
    "phase_of",
    "requires",
    "transition",
    "verify_statement",
    "verify_threshold_evidence",
]
