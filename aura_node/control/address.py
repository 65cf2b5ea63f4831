"""Unix socket addresses that fit in ``sun_path``, however deep the node home is.

A Unix socket address is a path of at most 107 bytes on Linux (``sun_path`` is 108 bytes with
the terminating NUL). Node homes under pytest's tmp_path, CI workspaces or ``~/.local/state``
easily exceed that, and ``bind``/``connect`` then fail with a bare "AF_UNIX path too long".

Theory of operation: when the path is too long we open the socket's *directory* (``O_PATH``)
and address the socket as ``/proc/self/fd/N/NAME``. The kernel resolves that magic link to the
directory itself, so ``bind`` creates, and ``connect`` reaches, the very inode at the long path.
Unlike ``chdir`` + relative path this never touches the process-wide working directory, so it
is safe while other threads (Trio's worker threads) resolve relative paths. Without ``/proc``
(or with a file name that is itself too long) we raise a clear error naming the limit.

Stdlib only (``os``): the ctl client imports this module and must start fast.
"""

from __future__ import annotations

import os
from types import TracebackType

from aura_node.errors import ControlError

#: longest path ``sun_path`` holds on Linux (108 bytes including the terminating NUL)
SUN_PATH_MAX = 107


class SocketPathError(ControlError):
    """A control socket path that cannot be expressed as a Unix socket address."""

    code = "socket_path"


class UnixAddress:
    """``with UnixAddress(path) as addr:`` gives a string for ``bind``/``connect``.

    ``addr`` is ``path`` itself when it fits, else ``/proc/self/fd/N/NAME`` backed by a
    directory descriptor that stays open until the ``with`` block ends (the address is only
    valid while it is open, so bind/connect must happen inside the block).
    """

    __slots__ = ("_dir_fd", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._dir_fd: int | None = None

    def __enter__(self) -> str:
        if len(os.fsencode(self.path)) <= SUN_PATH_MAX:
            return self.path
        directory, name = os.path.split(self.path)
        short_len = len(os.fsencode(f"/proc/self/fd/{2**31 - 1}/{name}"))
        if not name or short_len > SUN_PATH_MAX:
            raise SocketPathError(
                f"control socket path {self.path!r} is {len(os.fsencode(self.path))} bytes and "
                f"its file name {name!r} alone does not fit the {SUN_PATH_MAX}-byte limit of "
                "Unix socket addresses"
            )
        if not os.path.isdir("/proc/self/fd"):
            raise SocketPathError(
                f"control socket path {self.path!r} is {len(os.fsencode(self.path))} bytes, "
                f"over the {SUN_PATH_MAX}-byte limit of Unix socket addresses, and /proc is not "
                "mounted to shorten it; use a node home with a shorter path"
            )
        try:
            self._dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Same observable result as connecting to a missing short path.
            raise FileNotFoundError(2, "No such file or directory", self.path) from None
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
