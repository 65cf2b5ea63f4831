"""sd_notify datagrams (filesystem and abstract sockets) and the timer wheel."""

from __future__ import annotations

import os
import socket
import tempfile

import trio
import trio.testing

from aura_node.runtime.notify import sd_notify
from aura_node.runtime.timers import TimerWheel
from aura_node.sessions import Command, TimerExpired


def test_sd_notify_without_socket_is_a_noop() -> None:
    assert sd_notify("READY=1", env={}) is None


def test_sd_notify_filesystem_socket() -> None:
    d = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(d, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        assert sd_notify("READY=1", env={"NOTIFY_SOCKET": path}) is True
        assert srv.recv(64) == b"READY=1"
    os.unlink(path)
    os.rmdir(d)


def test_sd_notify_abstract_socket() -> None:
    name = f"aura-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(b"\0" + name.encode())
        assert sd_notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert srv.recv(64) == b"STOPPING=1"


def test_sd_notify_missing_socket_reports_failure() -> None:
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": "/nonexistent/x.sock"}) is False


async def test_timer_wheel_fires_in_deadline_order_and_skips_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, recv = trio.open_memory_channel[Command](10)
    # the wheel's wall clock is the mock clock (absolute deadlines)
    wheel = TimerWheel(send, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wheel.run)
        now = trio.current_time()
        wheel.arm("s1", "late", now + 5, 1)
        wheel.arm("s2", "early", now + 1, 2)
        wheel.arm("s3", "cancelled", now + 2, 3)
        wheel.disarm("s3", "cancelled")
        wheel.arm("s1", "rearmed", now + 3, 4)
        wheel.arm("s1", "rearmed", now + 4, 5)  # newer generation wins
        got = []
        for _ in range(3):
            got.append(await recv.receive())
            got[-1] = (got[-1], trio.current_time() - now)
        nursery.cancel_scope.cancel()
    assert [(c.session, c.name, c.generation) for c, _ in got if isinstance(c, TimerExpired)] == [
        ("s2", "early", 2), ("s1", "rearmed", 5), ("s1", "late", 1)]
    assert [round(t) for _, t in got] == [1, 4, 5]
    assert len(wheel) == 0
