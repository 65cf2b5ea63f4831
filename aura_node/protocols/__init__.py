"""The shipped protocols: one package each (choreography, and later role machines, witnesses
and rehydration). ``aura_node.protocols.registry`` lists the choreographies this node runs."""
