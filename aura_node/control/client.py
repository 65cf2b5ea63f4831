"""The ctl client: one blocking request/reply over the node's control socket.

Stdlib only (socket, json, os) plus the pure ``protocol`` module: it must not import Trio,
structlog, msgspec, cryptography or the protocol stack, so ``aura-node ctl status`` costs a
few tens of milliseconds (``tests/integration/test_control_cli.py`` checks the module list).

``call`` connects, sends one request line, reads one reply line within a single deadline and
returns the reply's ``result``. What can go wrong is told apart, because an operator acts on
each differently:

* ``NodeNotRunningError``  -- no socket file, or a stale one nobody listens on;
* ``ControlReplyError``    -- the node answered with an error (``remote_code``, ``message``);
* ``ControlTimeoutError``  -- no reply within ``timeout`` seconds;
* ``ControlConnectionError`` -- the node closed the connection early or sent a non-reply;
* ``ControlError`` (code ``forbidden``) -- the socket belongs to another user.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from aura_node.control.address import UnixAddress
from aura_node.control.protocol import (
    MAX_REPLY_BYTES,
    ControlConnectionError,
    ControlTimeoutError,
    Fault,
    LineFramer,
    RequestTooLargeError,
    decode_reply,
    encode_request,
)
from aura_node.errors import ControlError, NodeNotRunningError

_next_id = 0


class ControlForbiddenError(ControlError):
    """The socket exists but this user may not connect (mode 0600, owned by another uid)."""

    code = Fault.FORBIDDEN.value


def _not_running(path: str, *, stale: bool) -> NodeNotRunningError:
    home = os.path.dirname(path) or "."
    hint = f"start it with `aura-node run --home {home}`"
    if stale:
        hint = f"a stale socket file is there, nobody is listening; {hint}"
    return NodeNotRunningError(f"node not running: no control socket at {path} ({hint})")


def call(
    socket_path: str | os.PathLike[str],
    cmd: str,
    args: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send ``cmd`` with ``args`` to the node listening on ``socket_path``; its ``result``.

    ``timeout`` bounds the whole exchange (connect, send, wait for the reply).
    """
    global _next_id
    _next_id += 1
    request_id = _next_id
    path = os.fspath(socket_path)
    line = encode_request(request_id, cmd, args or {})
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ControlTimeoutError(
                f"no reply to {cmd!r} from the node at {path} within {timeout:g} s"
            )
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.settimeout(remaining())
            with UnixAddress(path) as address:
                sock.connect(address)
        except FileNotFoundError:
            raise _not_running(path, stale=False) from None
        except ConnectionRefusedError:
            raise _not_running(path, stale=True) from None
        except PermissionError:
            raise ControlForbiddenError(
                f"permission denied connecting to {path}: the node runs as another user "
                "(the control socket is mode 0600); run ctl as that user"
            ) from None
        except TimeoutError:
            raise ControlTimeoutError(
                f"could not connect to the node at {path} within {timeout:g} s "
                "(is it overloaded?)"
            ) from None
        try:
            sock.settimeout(remaining())
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            # The node may have answered and closed before reading (forbidden, busy): its
            # reply is still queued on our side, so read it rather than report a bare EPIPE.
            pass
        except TimeoutError:
            raise ControlTimeoutError(
                f"could not send {cmd!r} to the node at {path} within {timeout:g} s"
            ) from None
        reply = _read_line(sock, remaining, path)
    return decode_reply(reply, expect_id=request_id)


def _read_line(sock: socket.socket, remaining: Callable[[], float], path: str) -> bytes:
    framer = LineFramer(MAX_REPLY_BYTES)
    while True:
        try:
            sock.settimeout(remaining())
            data = sock.recv(65536)
        except TimeoutError:
            continue  # remaining() raises ControlTimeoutError on the next turn
        except ConnectionResetError:
            data = b""
        if not data:
            raise ControlConnectionError(
                f"the node at {path} closed the connection before replying "
                "(is it shutting down? see its log)"
            )
        try:
            lines = framer.feed(data)
        except RequestTooLargeError:
            raise ControlConnectionError(
                f"reply from {path} exceeds {MAX_REPLY_BYTES} bytes"
            ) from None
        if lines:
            return lines[0]
