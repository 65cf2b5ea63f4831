"""aura-node: choreographic threshold protocols between a person's devices.

Layers (imports point downwards only):

* edges      -- ``aura_node.cli``, ``aura_node.harness``: argv, processes, files.
* Trio shell -- ``aura_node.runtime``, ``aura_node.transport``, ``aura_node.control``.
* pure core  -- ``aura_node.choreo``, ``aura_node.session``, ``aura_node.protocols``,
  ``aura_node.crypto``, ``aura_node.journal`` record format: no Trio, no sockets, no clock.

Importing this package imports nothing heavy: the control client must start fast.
"""

__version__ = "0.1.0"

#: Wire/protocol version carried in the peer hello.
PROTOCOL_VERSION = 1
