"""Blocking client for the fault proxy's control socket (stdlib only, no trio).

One request per connection: connect, send one JSON line, read one JSON line. The harness calls
it from ordinary (non-async) test code and CLI commands. Protocol: ``harness/proxy.py``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aura_node.harness.faults import Direction, HarnessError, PartitionMode


class ProxyError(HarnessError):
    code = "proxy"


class ProxyClient:
    def __init__(self, control: Path, *, timeout: float = 10.0) -> None:
        self.control = control
        self.timeout = timeout

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        payload = json.dumps({"op": op, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.control))
                s.sendall(payload)
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ProxyError(
                f"fault proxy is not running (control socket {self.control}: {exc})"
            ) from None
        except OSError as exc:
            raise ProxyError(f"fault proxy request {op!r} failed: {exc}") from None
        if not buf:
            raise ProxyError(f"fault proxy closed the connection without answering {op!r}")
        reply = json.loads(buf)
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise ProxyError(f"fault proxy refused {op!r}: {err.get('code')}: {err.get('message')}")
        return dict(reply)

    def wait_up(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("hello")
            except ProxyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def add_link(self, src: str, dst: str, target: str, port: int = 0) -> int:
        return int(self.request("add_link", src=src, dst=dst, target=target, port=port)["port"])

    def partition(
        self, directions: Iterable[Direction], mode: PartitionMode = "blackhole"
    ) -> dict[str, Any]:
        return self.request("partition", directions=[list(d) for d in directions], mode=mode)

    def shape(
        self,
        directions: Iterable[Direction],
        *,
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
        loss: float | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "shape",
            directions=[list(d) for d in directions],
            delay_ms=delay_ms,
            jitter_ms=jitter_ms,
            loss=loss,
        )

    def heal(self, directions: Iterable[Direction] | None = None) -> dict[str, Any]:
        dirs = None if directions is None else [list(d) for d in directions]
        return self.request("heal", directions=dirs)

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def shutdown(self) -> None:
        self.request("shutdown")
