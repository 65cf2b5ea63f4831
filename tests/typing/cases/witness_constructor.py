"""A witness cannot be made by calling its class."""

from __future__ import annotations

from aura_node.session.witness import QuorumOfSignedStatements, ThresholdEvidence


def forge(ev: ThresholdEvidence) -> None:
    QuorumOfSignedStatements(evidence=ev)  # E: Unexpected keyword argument "evidence" for "QuorumOfSignedStatements"
    ThresholdEvidence()  # E: Too few arguments for "ThresholdEvidence"
