"""Protocols: one package per choreography (declaration, role drivers, rehydration), plus the
signed message envelope and the engine interface that plugs drivers into the node runtime.
``aura_node.protocols.registry`` lists the choreographies this node runs."""
