"""The control socket: how an operator (``aura-node ctl``) talks to a running node.

* ``protocol`` -- pure: the wire format (one JSON object per line), fault codes, the command
  table (name, arguments, result fields) that the ctl CLI and the node's handlers share.
* ``address``  -- stdlib only: Unix socket addresses longer than ``sun_path`` allows.
* ``client``   -- stdlib only: ``call(socket_path, cmd, args, timeout)``; no Trio, so
  ``aura-node ctl status`` starts in a few tens of milliseconds.
* ``server``   -- Trio: ``ControlServer`` (0600 socket, stale detection, SO_PEERCRED).

This ``__init__`` imports nothing, so importing the client never drags in the server.
"""
