"""A plugin that only adds a simulation scenario (``cluster simulate --plugin`` tests).

It registers the shipped DKD scenario under a second name: a run of ``--protocol
dkd-again`` can only succeed if the plugin was loaded before the scenario was looked up.
"""

from aura_node.harness.simulation import SCENARIOS

SCENARIOS["dkd-again"] = SCENARIOS["dkd"]
