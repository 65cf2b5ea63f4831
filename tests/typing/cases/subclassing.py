"""Protocol classes and witnesses are final."""

from __future__ import annotations

from aura_node.session.example import Collecting, ToyCoordinator
from aura_node.session.witness import QuorumOfSignedStatements, ThresholdEvidence


class Sneaky(  # E: Cannot inherit from final class "ToyCoordinator"
    ToyCoordinator[Collecting], choreography="toy-vote", role="coordinator", initial=Collecting
):
    pass


class WiderQuorum(QuorumOfSignedStatements):  # E: Cannot inherit from final class "QuorumOfSignedStatements"
    pass


class MoreEvidence(ThresholdEvidence):  # E: Cannot inherit from final class "ThresholdEvidence"
    pass
