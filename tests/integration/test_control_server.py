"""The control socket server over real Unix sockets: concurrency, permissions, stale sockets,
peer uid, malformed input, handler failures, shutdown."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import sys
import textwrap
import time
from typing import Any

import pytest
import structlog
import trio

from aura_node.control.protocol import (
    ControlConnectionError,
    ControlReplyError,
    ControlTimeoutError,
    NodeAlreadyRunningError,
    NotFoundError,
)
from aura_node.control.server import ControlServer, peer_credentials
from aura_node.errors import ControlError, JournalFailedError
from aura_node.logs import get_logger
from tests.integration.control_support import (
    RecordingLog,
    acall,
    make_stale_socket,
    running_server,
    socket_dir,
)


async def _status(_args: dict[str, Any]) -> dict[str, Any]:
    return {"name": "alpha", "device_id": "00" * 16, "role": "device", "ready": True,
            "peers": [], "sessions": {}}


async def _echo(args: dict[str, Any]) -> dict[str, Any]:
    return {"echo": args}


def _raw_exchange(path: str, payload: bytes, *, replies: int) -> tuple[list[dict[str, Any]], bytes]:
    """Send raw bytes on one connection; read ``replies`` reply lines, then whatever follows
    until EOF or a short timeout (to tell a kept connection from a closed one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < replies:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        lines = buf.split(b"\n")
        got = [json.loads(x) for x in lines[:replies]]
        rest = b"\n".join(lines[replies:])
        s.settimeout(0.3)
        try:
            more = s.recv(65536)
            tail = rest + (more if more else b"<EOF>")
        except TimeoutError:
            tail = rest + b"<OPEN>"
        return got, tail


async def test_many_concurrent_clients_are_served_concurrently() -> None:
    n = 16
    arrived = 0
    all_here = trio.Event()

    async def rendezvous(args: dict[str, Any]) -> dict[str, Any]:
        # Every handler waits until all n are inside: a server that served one connection at a
        # time would never get there (fail_after below turns that into a failure).
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_here.set()
        await all_here.wait()
        return {"i": args["i"]}

    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"rendezvous": rendezvous}):
            results: dict[int, dict[str, Any]] = {}

            async def one(i: int) -> None:
                results[i] = await acall(path, "rendezvous", {"i": i})

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(one, i)
        assert results == {i: {"i": i} for i in range(n)}


async def test_socket_is_0600_cloexec_and_umask_is_restored() -> None:
    before = os.umask(0o022)
    os.umask(before)
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status}):
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.getuid()
            now = os.umask(0o022)
            os.umask(now)
            assert now == before
            fd = _listening_fd(path)
            assert not os.get_inheritable(fd), "the listening socket must be close-on-exec"
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert (await acall(path, "status"))["name"] == "alpha"
        assert not os.path.exists(path), "socket must be unlinked on shutdown"


def _listening_fd(path: str) -> int:
    """Our file descriptor of the socket listening on ``path`` (via /proc/net/unix inodes)."""
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {row[6] for row in rows if len(row) >= 8 and row[7] == path}
    assert len(inodes) == 1, inodes
    (inode,) = inodes
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used
        if target == f"socket:[{inode}]":
            return int(name)
    raise AssertionError(f"no descriptor of ours for socket inode {inode}")


async def test_stale_socket_is_replaced_and_logged() -> None:
    log = RecordingLog()
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        make_stale_socket(path)
        async with running_server(path, {"status": _status}, log=log):
            assert (await acall(path, "status"))["ready"] is True
        assert "removed stale control socket" in log.events("warning")


async def test_live_node_refuses_a_second_server_and_keeps_serving() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status}):
            second = ControlServer(path, {"status": _status}, log=RecordingLog())
            with pytest.raises(NodeAlreadyRunningError, match=f"another node is running on {d}"):
                await second.serve()
            assert (await acall(path, "status"))["name"] == "alpha"
            assert os.path.exists(path)


async def test_socket_answered_by_someone_else_is_not_removed() -> None:
    # A listener that does not use our lock file (another program, an older node): the connect
    # probe alone must detect it.
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(path)
            other.listen()
            server = ControlServer(path, {"status": _status}, log=RecordingLog())
            with pytest.raises(NodeAlreadyRunningError, match="something answers"):
                await server.serve()
            assert os.path.exists(path)


async def test_non_socket_file_at_the_path_is_never_removed() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        with open(path, "w") as f:
            f.write("precious")
        server = ControlServer(path, {"status": _status}, log=RecordingLog())
        with pytest.raises(ControlError, match="is not a socket"):
            await server.serve()
        with open(path) as f:
            assert f.read() == "precious"


async def test_foreign_uid_is_refused_simulated() -> None:
    # We cannot switch uid without root, so the server is told that only another uid is
    # allowed: the real SO_PEERCRED uid of our client (ours) is then the foreign one.
    log = RecordingLog()
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status}, log=log,
                                  allowed_uids={os.getuid() + 1}):
            with pytest.raises(ControlReplyError) as info:
                await acall(path, "status")
            assert info.value.remote_code == "forbidden"
            assert f"uid {os.getuid()}" in info.value.message
    refused = [kw for lv, e, kw in log.records if e.startswith("control connection refused")]
    assert refused and refused[0]["peer_uid"] == os.getuid()
    assert refused[0]["peer_pid"] == os.getpid()


def test_so_peercred_reports_our_real_credentials() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


_FOREIGN_CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(sys.argv[1])
    except PermissionError:
        print(json.dumps({"uid": os.getuid(), "connect": "EACCES"}))
        raise SystemExit(0)
    try:
        s.sendall(b'{"id": 1, "cmd": "status", "args": {}}\\n')
    except BrokenPipeError:
        pass  # the server answered and closed first; its reply is still queued for us
    buf = b""
    while not buf.endswith(b"\\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    print(json.dumps({"uid": os.getuid(), "reply": json.loads(buf)}))
""")


async def _python_runnable_as(uid: int) -> str:
    """An interpreter the other uid may execute (our venv may sit under a 0700 home)."""
    candidates = [sys.executable, getattr(sys, "_base_executable", ""),
                  shutil.which("python3") or "", "/usr/bin/python3"]
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            proc = await trio.run_process([python, "-I", "-c", "pass"], user=uid, group=uid,
                                          extra_groups=[], check=False, cwd="/",
                                          capture_stderr=True)
        except OSError:
            continue
        if proc.returncode == 0:
            return python
    pytest.skip(f"no Python interpreter here is executable by uid {uid}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_foreign_uid_is_refused_for_real_when_root() -> None:
    nobody = 65534
    python = await _python_runnable_as(nobody)
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status}):
            os.chmod(d, 0o711)

            async def as_nobody() -> dict[str, Any]:
                proc = await trio.run_process(
                    [python, "-I", "-c", _FOREIGN_CLIENT, path],
                    user=nobody, group=nobody, extra_groups=[], capture_stdout=True,
                    capture_stderr=True, cwd="/",
                )
                out: dict[str, Any] = json.loads(proc.stdout)
                return out

            # Mode 0600 alone keeps the other uid out ...
            first = await as_nobody()
            assert first == {"uid": nobody, "connect": "EACCES"}
            # ... and if an operator loosens it, SO_PEERCRED still refuses the uid.
            os.chmod(path, 0o666)
            second = await as_nobody()
            assert second["uid"] == nobody
            assert second["reply"]["ok"] is False
            assert second["reply"]["error"]["code"] == "forbidden"
            assert (await acall(path, "status"))["name"] == "alpha"


async def test_malformed_requests_get_codes_and_the_connection_keeps_serving() -> None:
    called: list[dict[str, Any]] = []

    async def dkd(args: dict[str, Any]) -> dict[str, Any]:
        called.append(args)
        return {"session": "s", "context": args["context"], "participants": [],
                "fingerprint": "f", "public_key": "p"}

    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"echo": _echo, "dkd": dkd}):
            payload = b"".join([
                b"not json\n",
                b"[1, 2]\n",
                b'{"id": 1}\n',
                b'{"id": 2, "cmd": "echo", "args": [1]}\n',
                b"\xff\xfe\n",
                b'{"id": true, "cmd": "echo"}\n',
                b'{"id": 3, "cmd": "echo", "extra": 1}\n',
                b'{"id": 4, "cmd": "nope"}\n',
                b'{"id": 5, "cmd": "dkd", "args": {"context": ""}}\n',
                b'{"id": 6, "cmd": "dkd", "args": {"context": "c", "bogus": 1}}\n',
                b"\n",
                b'{"id": "last", "cmd": "echo", "args": {"x": 1}}\n',
            ])
            replies, tail = await trio.to_thread.run_sync(
                lambda: _raw_exchange(path, payload, replies=12))
    codes = [(r["id"], r["error"]["code"]) if not r["ok"] else (r["id"], "ok") for r in replies]
    assert codes == [
        (None, "bad_request"),
        (None, "bad_request"),
        (1, "bad_request"),
        (2, "bad_request"),
        (None, "bad_request"),
        (None, "bad_request"),
        (3, "bad_request"),
        (4, "unknown_command"),
        (5, "invalid_args"),
        (6, "invalid_args"),
        (None, "bad_request"),
        ("last", "ok"),
    ]
    assert replies[-1]["result"] == {"echo": {"x": 1}}
    assert "known: dkd, echo" in replies[7]["error"]["message"]
    assert "bogus" in replies[9]["error"]["message"]
    assert called == [], "the handler must not see arguments the table rejects"
    assert tail == b"<OPEN>", "a malformed request must not cost the connection"


async def test_oversized_request_is_answered_then_closed_and_server_lives() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"echo": _echo}, max_request_bytes=1024):
            payload = b'{"id": 1, "cmd": "echo", "args": {"x": "' + b"a" * 5000
            replies, tail = await trio.to_thread.run_sync(
                lambda: _raw_exchange(path, payload, replies=1))
            assert replies[0]["ok"] is False
            assert replies[0]["error"]["code"] == "request_too_large"
            assert "1024" in replies[0]["error"]["message"]
            assert tail == b"<EOF>"
            assert await acall(path, "echo", {"y": 2}) == {"echo": {"y": 2}}


async def test_pipelined_requests_are_answered_in_order() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"echo": _echo}):
            payload = b"".join(
                json.dumps({"id": i, "cmd": "echo", "args": {"i": i}}).encode() + b"\n"
                for i in range(5))
            replies, _ = await trio.to_thread.run_sync(
                lambda: _raw_exchange(path, payload, replies=5))
    assert [r["result"]["echo"]["i"] for r in replies] == list(range(5))
    assert [r["id"] for r in replies] == list(range(5))


async def test_handler_failures_become_error_replies_and_the_server_survives() -> None:
    async def crash(_args: dict[str, Any]) -> dict[str, Any]:
        secret = "hunter2"
        raise ZeroDivisionError(f"boom {secret}")

    async def not_found(args: dict[str, Any]) -> dict[str, Any]:
        raise NotFoundError(f"no session {args['session']!r}")

    async def journal_down(_args: dict[str, Any]) -> dict[str, Any]:
        raise JournalFailedError("fdatasync failed: EIO")

    async def grouped(_args: dict[str, Any]) -> dict[str, Any]:
        async def fail() -> None:
            raise NotFoundError("inside a nursery")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        return {}

    async def not_json(_args: dict[str, Any]) -> dict[str, Any]:
        return {"raw": b"\x00"}

    handlers = {"crash": crash, "session": not_found, "journal": journal_down,
                "grouped": grouped, "not_json": not_json, "status": _status}
    with socket_dir() as d, structlog.testing.capture_logs() as logs:
        path = os.path.join(d, "control.sock")
        async with running_server(path, handlers, log=get_logger("control")):
            with pytest.raises(ControlReplyError) as info:
                await acall(path, "crash")
            assert info.value.remote_code == "internal"
            assert "ZeroDivisionError" in info.value.message
            assert "hunter2" not in info.value.message

            with pytest.raises(ControlReplyError) as info:
                await acall(path, "session", {"session": "abc"})
            assert (info.value.remote_code, info.value.message) == ("not_found",
                                                                   "no session 'abc'")
            with pytest.raises(ControlReplyError) as info:
                await acall(path, "journal")
            assert info.value.remote_code == "journal_failed"
            with pytest.raises(ControlReplyError) as info:
                await acall(path, "grouped")
            assert (info.value.remote_code, info.value.message) == ("not_found",
                                                                   "inside a nursery")
            with pytest.raises(ControlReplyError) as info:
                await acall(path, "not_json")
            assert info.value.remote_code == "internal"

            assert (await acall(path, "status"))["name"] == "alpha"
    crashes = [e for e in logs if e["event"] == "control handler crashed"]
    assert len(crashes) == 2
    assert crashes[0]["cmd"] == "crash"
    assert isinstance(crashes[0]["exc_info"], ZeroDivisionError)
    assert crashes[0]["log_level"] == "error"


async def test_result_missing_documented_fields_is_logged() -> None:
    async def thin_status(_args: dict[str, Any]) -> dict[str, Any]:
        return {"name": "alpha"}

    log = RecordingLog()
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": thin_status}, log=log):
            assert await acall(path, "status") == {"name": "alpha"}
    lacks = [kw for lv, e, kw in log.records if e == "control result lacks documented fields"]
    assert lacks and lacks[0]["missing"] == ["device_id", "role", "ready", "peers", "sessions"]


class _BusyHogs:
    """``n`` connections each inside a request that blocks until ``release``: every slot of
    the server is busy (not merely open)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.inside = 0

    async def hold(self, _args: dict[str, Any]) -> dict[str, Any]:
        self.inside += 1
        await self.release.wait()
        return {"held": True}

    async def fill(self, path: str, n: int, nursery: trio.Nursery) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []

        async def one() -> None:
            replies.append(await acall(path, "hold", timeout=30))

        for _ in range(n):
            nursery.start_soon(one)
        with trio.fail_after(10):
            while self.inside < n:
                await trio.sleep(0.01)
        return replies


async def _release_after(event: trio.Event, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await event.wait()
    event.set()


async def _peers(_args: dict[str, Any]) -> dict[str, Any]:
    return {"peers": []}


async def test_connection_limit_answers_busy_but_status_gets_through() -> None:
    hogs = _BusyHogs()
    handlers = {"status": _status, "peers": _peers, "hold": hogs.hold}
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, handlers, max_connections=1) as server:
            async with trio.open_nursery() as nursery:
                held = await hogs.fill(path, 1, nursery)
                try:
                    with pytest.raises(ControlReplyError) as info:
                        await acall(path, "peers")
                    assert info.value.remote_code == "busy"
                    # the operator's commands are answered past the limit
                    assert (await acall(path, "status"))["name"] == "alpha"
                    assert server.connection_count == 1
                finally:
                    hogs.release.set()
            assert held == [{"held": True}]  # the busy connection was never evicted
            assert await acall(path, "peers") == {"peers": []}


def _late_request(path: str, delay: float, cmd: str = "peers") -> dict[str, Any]:
    """A client that connects, waits ``delay`` s (the server is already deciding), then sends
    its request and reads one reply line; a reset or broken pipe propagates."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        time.sleep(delay)
        s.sendall(json.dumps({"id": 77, "cmd": cmd, "args": {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply


async def test_busy_refusal_is_a_reply_not_a_reset() -> None:
    # The refused client's request arrives after the server decided to refuse: a server that
    # answered and closed at once made the client's send fail (EPIPE/ECONNRESET) and lost
    # the refusal; now the request is read first and the reply carries its id.
    hogs = _BusyHogs()
    handlers = {"status": _status, "peers": _peers, "hold": hogs.hold}
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, handlers, max_connections=1):
            async with trio.open_nursery() as nursery:
                await hogs.fill(path, 1, nursery)
                try:
                    reply = await trio.to_thread.run_sync(_late_request, path, 0.3)
                    assert reply["id"] == 77
                    assert reply["error"]["code"] == "busy"
                    assert "1 control connections are busy" in reply["error"]["message"]
                    late = await trio.to_thread.run_sync(_late_request, path, 0.3, "status")
                    assert late["id"] == 77 and late["ok"] is True
                finally:
                    hogs.release.set()


async def test_burst_beyond_the_limit_all_get_busy_replies() -> None:
    limit, extra = 4, 24
    hogs = _BusyHogs()
    handlers = {"status": _status, "peers": _peers, "hold": hogs.hold}
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, handlers, max_connections=limit):
            async with trio.open_nursery() as hog_nursery:
                await hogs.fill(path, limit, hog_nursery)
                hog_nursery.start_soon(_release_after, hogs.release, 25.0)  # even on failure
                outcomes: list[str] = []

                async def one(delay: float, cmd: str) -> None:
                    try:
                        if delay:
                            reply = await trio.to_thread.run_sync(_late_request, path, delay, cmd)
                            outcomes.append(reply.get("error", {}).get("code", "served"))
                        else:
                            await acall(path, cmd)
                            outcomes.append("served")
                    except ControlReplyError as exc:
                        outcomes.append(exc.remote_code)
                    except (ControlConnectionError, OSError) as exc:
                        outcomes.append(f"lost: {exc!r}")

                with trio.fail_after(20):
                    async with trio.open_nursery() as nursery:
                        for i in range(extra):
                            nursery.start_soon(one, 0.0 if i % 2 else 0.05,
                                               "status" if i % 6 == 0 else "peers")
                assert len(outcomes) == extra
                assert sorted(set(outcomes)) == ["busy", "served"]
                assert outcomes.count("served") == len(range(0, extra, 6))
                hogs.release.set()


async def test_idle_connections_cannot_lock_out_the_operator() -> None:
    # Issue 13: 64 connections that never send a byte held every slot for the idle timeout
    # (300 s) and `ctl status` got `busy`. Now the newcomer evicts the longest-waiting one;
    # request_timeout is long here so eviction alone must do it.
    stop = trio.Event()

    async def shutdown(_args: dict[str, Any]) -> dict[str, Any]:
        stop.set()
        return {"stopping": True}

    log = RecordingLog()
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status, "shutdown": shutdown}, log=log,
                                  request_timeout=60.0) as server:
            idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(80)]
            try:
                def connect_all() -> None:  # in a thread: the server must accept meanwhile
                    for s in idle:
                        s.connect(path)

                await trio.to_thread.run_sync(connect_all)
                with trio.fail_after(10):
                    while server.connection_count < 64:
                        await trio.sleep(0.01)
                await trio.sleep(1.1)  # they have waited past the eviction grace
                with trio.fail_after(3):
                    assert (await acall(path, "status"))["name"] == "alpha"
                    assert await acall(path, "shutdown") == {"stopping": True}
                assert server.connection_count <= 64
            finally:
                for s in idle:
                    s.close()
    assert stop.is_set()
    assert "control connection evicted: the limit is reached and it waited longest" in (
        log.events("info"))


async def test_a_polling_monitor_is_not_evicted_between_polls() -> None:
    # A client that keeps one connection and asks `status` every 0.1 s is idle only between
    # polls (under the eviction grace): newcomers past the limit do not push it out.
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status, "peers": _peers},
                                  max_connections=1):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as monitor:
                monitor.settimeout(5)
                await trio.to_thread.run_sync(monitor.connect, path)
                refusals = []
                for i in range(10):
                    monitor.sendall(b'{"id": %d, "cmd": "status"}\n' % i)
                    reply = await trio.to_thread.run_sync(monitor.recv, 65536)
                    assert json.loads(reply)["id"] == i
                    with pytest.raises(ControlReplyError) as info:
                        await acall(path, "peers")
                    refusals.append(info.value.remote_code)
                    await trio.sleep(0.1)
                assert refusals == ["busy"] * 10


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def test_a_connection_owes_a_complete_request_within_request_timeout() -> None:
    log = RecordingLog()
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"status": _status}, log=log, request_timeout=0.5,
                                  idle_timeout=30.0) as server:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent, \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as trickler, \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as regular:
                for s in (silent, regular):
                    s.connect(path)
                regular.sendall(b'{"id": 1, "cmd": "status"}\n')

                def trickle() -> bool:
                    # one byte every 0.1 s, never a newline: closed at ~0.5 s, not at 30 s
                    trickler.connect(path)
                    trickler.settimeout(0.1)
                    for _ in range(40):
                        try:
                            trickler.sendall(b" ")
                            if trickler.recv(1) == b"":
                                return True
                        except TimeoutError:
                            continue
                        except (BrokenPipeError, ConnectionResetError):
                            return True
                    return False

                started = time.monotonic()
                assert await trio.to_thread.run_sync(_closed_within, silent, 3.0)
                assert await trio.to_thread.run_sync(trickle)
                assert time.monotonic() - started < 3.0
                # A connection that sent its request may idle between requests (idle_timeout).
                regular.settimeout(3)
                assert json.loads(regular.recv(65536))["ok"] is True  # already sent
                assert not await trio.to_thread.run_sync(_closed_within, regular, 1.0)
                regular.settimeout(3)
                regular.sendall(b'{"id": 2, "cmd": "status"}\n')
                reply = await trio.to_thread.run_sync(regular.recv, 65536)
                assert json.loads(reply)["id"] == 2
                assert server.connection_count == 1
    closed = [kw for _lv, e, kw in log.records
              if e == "control connection closed: no request in time"]
    assert len(closed) == 2
    assert sorted(kw["partial_bytes"] > 0 for kw in closed) == [False, True]


async def test_graceful_close_sends_the_shutdown_reply_then_unlinks() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        stop = trio.Event()

        async def shutdown(_args: dict[str, Any]) -> dict[str, Any]:
            stop.set()
            return {"stopping": True}

        server = ControlServer(path, {"shutdown": shutdown, "status": _status},
                               log=RecordingLog())
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
                    idle.connect(path)  # an idle client must not hold the shutdown up

                    async def stopper() -> None:
                        await stop.wait()
                        await server.aclose(grace=5)

                    nursery.start_soon(stopper)
                    assert await acall(path, "shutdown") == {"stopping": True}
            assert not os.path.exists(path)
        # The lock is released: a new server can take the same home.
        async with running_server(path, {"status": _status}):
            assert (await acall(path, "status"))["name"] == "alpha"


async def test_socket_path_longer_than_sun_path() -> None:
    with socket_dir() as d:
        deep = os.path.join(d, "h" * 60, "o" * 60)
        os.makedirs(deep)
        path = os.path.join(deep, "control.sock")
        assert len(path.encode()) > 107
        async with running_server(path, {"status": _status}):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert (await acall(path, "status"))["name"] == "alpha"
            with pytest.raises(NodeAlreadyRunningError):
                await ControlServer(path, {}, log=RecordingLog()).serve()
        assert not os.path.exists(path)
        make_stale_socket_long(path)
        async with running_server(path, {"status": _status}):
            assert (await acall(path, "status"))["ready"] is True


def make_stale_socket_long(path: str) -> None:
    from aura_node.control.address import UnixAddress

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s, UnixAddress(path) as address:
        s.bind(address)
    assert os.path.exists(path)


async def test_client_gives_up_after_its_timeout_and_the_server_lives_on() -> None:
    release = trio.Event()

    async def slow(_args: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {}

    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        async with running_server(path, {"slow": slow, "status": _status}):
            with pytest.raises(ControlTimeoutError, match="no reply to 'slow'"):
                await acall(path, "slow", timeout=0.3)
            release.set()
            assert (await acall(path, "status"))["name"] == "alpha"


async def test_client_reports_a_connection_closed_without_reply() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rude:
            rude.bind(path)
            rude.listen()

            async def accept_and_close() -> None:
                conn, _ = await trio.to_thread.run_sync(rude.accept)
                conn.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_and_close)
                with pytest.raises(ControlConnectionError, match="closed the connection"):
                    await acall(path, "status")
