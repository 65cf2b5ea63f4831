"""sd_notify without libsystemd: one AF_UNIX datagram to ``$NOTIFY_SOCKET``.

systemd (``Type=notify``) passes the socket path in ``NOTIFY_SOCKET``; a leading ``@`` means
the Linux abstract namespace (the ``@`` becomes a NUL byte). Without the variable every call is
a no-op, so the daemon can call :func:`sd_notify` unconditionally. A failed send is reported to
the caller (logged there) and never raised: a supervisor's socket going away must not take the
node down.
"""

from __future__ import annotations

import os
import socket

ENV = "NOTIFY_SOCKET"


def notify_address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def sd_notify(state: str, *, env: dict[str, str] | None = None) -> bool | None:
    """Send ``state`` (e.g. ``"READY=1"``). None without ``NOTIFY_SOCKET``; else success."""
    value = (os.environ if env is None else env).get(ENV)
    if not value:
        return None
    if not value.startswith(("/", "@")):
        return False  # vsock and other schemes are not supported
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), notify_address(value))
    except OSError:
        return False
    return True
