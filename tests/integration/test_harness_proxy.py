"""The fault proxy with real sockets: forwarding, delay, blackhole, reset, heal, fault log."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_node.harness.procs import ManagedProcess
from aura_node.harness.proxy_client import ProxyClient, ProxyError


class EchoServer:
    """A threaded TCP echo server on a loopback port 0."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        try:  # wakes the thread blocked in accept(); close() alone would not on Linux
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def proxy() -> Iterator[tuple[ProxyClient, Path, EchoServer]]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="aura-px-"))
    control = d / "proxy.sock"
    proc = ManagedProcess.spawn(
        "proxy",
        [sys.executable, "-m", "aura_node.harness.proxy", "--control", str(control),
         "--fault-log", str(d / "faults.jsonl"), "--seed", "1"],
        log_path=d / "proxy.log",
        marker=str(control),
        detached=False,
    )
    echo = EchoServer()
    client = ProxyClient(control)
    try:
        client.wait_up(10.0)
        yield client, d, echo
    finally:
        report = proc.stop(grace=5.0)
        echo.close()
        shutil.rmtree(d, ignore_errors=True)
    assert report.how == "sigterm" and report.exit_code == 0, report


def _roundtrip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_bytes_both_ways(proxy: tuple[ProxyClient, Path, EchoServer]) -> None:
    client, _d, echo = proxy
    port = client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    payload = bytes(range(256)) * 1000
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert _roundtrip(s, payload) == payload
    link = client.status()["links"][0]
    assert (link["src"], link["dst"], link["port"]) == ("a", "b", port)
    assert link["bytes_up"] == len(payload) and link["bytes_down"] == len(payload)


def test_delay_applies_per_direction(proxy: tuple[ProxyClient, Path, EchoServer]) -> None:
    client, _d, echo = proxy
    port = client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        _roundtrip(s, b"x")
        base = time.monotonic() - t0
        client.shape([("a", "b"), ("b", "a")], delay_ms=150)
        t0 = time.monotonic()
        assert _roundtrip(s, b"y") == b"y"
        delayed = time.monotonic() - t0
    assert delayed >= 0.3 > base


def test_blackhole_holds_bytes_and_heal_delivers_them(
    proxy: tuple[ProxyClient, Path, EchoServer],
) -> None:
    client, d, echo = proxy
    port = client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert _roundtrip(s, b"before") == b"before"
        client.partition([("a", "b")])
        s.sendall(b"during")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(100)
        client.heal()
        s.settimeout(5)
        assert s.recv(100) == b"during"  # held, not lost: TCP semantics survive the partition
    ops = [json.loads(line)["op"] for line in (d / "faults.jsonl").read_text().splitlines()]
    assert ops == ["partition", "heal"]


def test_reset_partition_cuts_open_and_new_connections(
    proxy: tuple[ProxyClient, Path, EchoServer],
) -> None:
    client, _d, echo = proxy
    port = client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert _roundtrip(s, b"hi") == b"hi"
        reply = client.partition([("b", "a")], mode="reset")  # either direction cuts the conn
        assert reply["connections_reset"] == 1
        with pytest.raises(ConnectionResetError):
            s.sendall(b"x")
            s.recv(10)
    with pytest.raises(ConnectionResetError):  # at connect or at the first read
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s2:
            s2.recv(10)
    client.heal([("b", "a")])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s3:
        assert _roundtrip(s3, b"again") == b"again"


def test_dead_target_looks_like_a_reset(proxy: tuple[ProxyClient, Path, EchoServer]) -> None:
    client, _d, echo = proxy
    port = client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    echo.close()
    with pytest.raises(ConnectionResetError):  # at connect or at the first read
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            s.recv(10)


def test_bad_requests_get_error_codes(proxy: tuple[ProxyClient, Path, EchoServer]) -> None:
    client, _d, echo = proxy
    with pytest.raises(ProxyError, match="fault_invalid"):
        client.request("partition", directions=[["a"]], mode="blackhole")
    with pytest.raises(ProxyError, match="loss must be a probability"):
        client.shape([("a", "b")], loss=1.5)
    with pytest.raises(ProxyError, match="unknown proxy op"):
        client.request("explode")
    client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    with pytest.raises(ProxyError, match="already exists"):
        client.add_link("a", "b", f"127.0.0.1:{echo.port}")
    assert client.status()["faults"] == []
