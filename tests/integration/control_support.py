"""Shared helpers for the control socket tests (not a test module)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from aura_node.control import client
from aura_node.control.server import ControlServer, Handler


class RecordingLog:
    """A structlog-shaped logger that records ``(level, event, fields)``."""

    def __init__(self, records: list[tuple[str, str, dict[str, Any]]] | None = None,
                 bound: dict[str, Any] | None = None) -> None:
        self.records = [] if records is None else records
        self._bound = bound or {}

    def bind(self, **kw: Any) -> RecordingLog:
        return RecordingLog(self.records, {**self._bound, **kw})

    def _rec(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, {**self._bound, **kw}))

    def debug(self, event: str, **kw: Any) -> None:
        self._rec("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._rec("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._rec("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._rec("error", event, **kw)

    def events(self, level: str | None = None) -> list[str]:
        return [e for lv, e, _ in self.records if level is None or lv == level]


@contextmanager
def socket_dir() -> Iterator[str]:
    """A short directory under /tmp (Unix socket paths must stay under ~107 bytes)."""
    d = tempfile.mkdtemp(prefix="aura-ctl-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@asynccontextmanager
async def running_server(
    path: str, handlers: Mapping[str, Handler], log: Any | None = None, **kw: Any
) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, handlers, log=log if log is not None else RecordingLog(), **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


async def acall(path: str, cmd: str, args: dict[str, Any] | None = None,
                timeout: float = 10.0) -> dict[str, Any]:
    """``client.call`` from a worker thread, so the Trio server keeps running."""
    return await trio.to_thread.run_sync(
        functools.partial(client.call, path, cmd, args, timeout=timeout)
    )


def make_stale_socket(path: str) -> None:
    """Leave a socket file at ``path`` with nobody listening (a node that was SIGKILLed)."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    finally:
        s.close()
    assert os.path.exists(path)
