"""The fault proxy: a loopback TCP proxy that the harness controls at run time.

Why a proxy and not network namespaces: namespaces (and tc/netem inside them) need root or
user namespaces that CI runners and developer laptops often do not grant, and they fault the
whole interface rather than one node pair. A user-space proxy on loopback needs no privileges,
runs the same code on every machine, and still gives real TCP behaviour to the nodes: their
connects, TLS handshakes, stalls, and resets all happen on real sockets. What it cannot do
(drop individual IP packets) is modelled as the application-visible effect; the fault model and
its honest limits are in ``harness/faults.py``.

Layout: one listening port per directed dial link A->B. Node A's config pins peer B at that
port; the proxy forwards each accepted connection to B's real listen address. TLS runs end to
end between the nodes, so the proxy sees only ciphertext and cannot tamper with identities.

One proxy process serves a whole cluster (``python -m aura_node.harness.proxy --control SOCK``).
It is driven over a Unix control socket with one JSON object per line in each direction:

    {"op": "add_link", "src": "d1", "dst": "d2", "target": "127.0.0.1:4100", "port": 0}
    {"op": "partition", "directions": [["d1", "d2"], ...], "mode": "blackhole"|"reset"}
    {"op": "shape", "directions": [...], "delay_ms": 50, "jitter_ms": 10, "loss": 0.01}
    {"op": "heal", "directions": [...] | null}
    {"op": "status"}   {"op": "hello"}   {"op": "shutdown"}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``. Every
change of faults is appended to the fault log (JSON lines: wall time, op, directions, params)
before the reply, so a run's faults can be lined up with its journals afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket as stdsocket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from aura_node.config import parse_address
from aura_node.errors import AuraError, ConfigError
from aura_node.harness.faults import (
    Direction,
    FaultError,
    FaultTable,
    HarnessError,
    PartitionMode,
    Shaping,
    plan_chunk,
)
from aura_node.logs import configure_logging, get_logger

CHUNK_BYTES = 64 * 1024
#: chunks held between reading one side and writing the other (bounds memory per direction)
PIPE_CHUNKS = 64
CONNECT_TIMEOUT_S = 5.0
MAX_CONTROL_LINE = 1024 * 1024

log = get_logger("harness.proxy")


@dataclass(slots=True, kw_only=True)
class DialLink:
    """The listening port that ``src`` dials to reach ``dst``."""

    src: str
    dst: str
    target: tuple[str, int]
    port: int
    listener: trio.SocketListener
    accepted: int = 0
    resets: int = 0
    bytes_up: int = 0  # src -> dst
    bytes_down: int = 0  # dst -> src

    def to_json(self, open_conns: int) -> dict[str, object]:
        return {
            "src": self.src,
            "dst": self.dst,
            "port": self.port,
            "target": f"{self.target[0]}:{self.target[1]}",
            "accepted": self.accepted,
            "open": open_conns,
            "resets": self.resets,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


@dataclass(slots=True, kw_only=True, eq=False)
class Conn:
    id: int
    link: DialLink
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    sockets: list[trio.socket.SocketType] = field(default_factory=list)
    reset: bool = False

    @property
    def directions(self) -> tuple[Direction, Direction]:
        return (self.link.src, self.link.dst), (self.link.dst, self.link.src)


def _set_rst_on_close(sock: trio.socket.SocketType) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    try:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class FaultProxy:
    """The proxy state and its Trio tasks; one instance per proxy process."""

    def __init__(self, *, fault_log: Path | None, seed: int) -> None:
        self.table = FaultTable()
        self.rng = random.Random(seed)
        self.seed = seed
        self.links: dict[tuple[str, str], DialLink] = {}
        self.conns: set[Conn] = set()
        self._ids = itertools.count(1)
        self._changed = trio.Event()
        self._fault_log = fault_log
        self._nursery: trio.Nursery | None = None
        self.shutdown = trio.Event()

    # -- fault bookkeeping ------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _until_flowing(self, direction: Direction) -> Shaping:
        while True:
            shaping = self.table.get(direction)
            if shaping.partition is None:
                return shaping
            await self._changed.wait()

    def _record(self, op: str, directions: Sequence[Direction] | None, **params: object) -> None:
        entry = {
            "t": time.time(),
            "source": "proxy",
            "op": op,
            "directions": None if directions is None else [list(d) for d in directions],
            **params,
        }
        log.info("fault", **entry)
        if self._fault_log is not None:
            with open(self._fault_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def _reset_conns_on(self, directions: Sequence[Direction]) -> int:
        cut = set(directions)
        n = 0
        for conn in list(self.conns):
            if cut.intersection(conn.directions) and not conn.reset:
                self._reset(conn)
                n += 1
        return n

    def _reset(self, conn: Conn) -> None:
        conn.reset = True
        conn.link.resets += 1
        for s in conn.sockets:
            _set_rst_on_close(s)
        conn.scope.cancel()

    # -- links and connections ----------------------------------------------------------------

    async def add_link(self, src: str, dst: str, target: tuple[str, int], port: int = 0) -> int:
        if (src, dst) in self.links:
            port_now = self.links[src, dst].port
            raise HarnessError(f"link {src}->{dst} already exists on port {port_now}")
        if src == dst:
            raise FaultError(f"a link needs two different nodes, got {src}->{dst}")
        assert self._nursery is not None
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        listener = listeners[0]
        for extra in listeners[1:]:
            await extra.aclose()
        bound = int(listener.socket.getsockname()[1])
        link = DialLink(src=src, dst=dst, target=target, port=bound, listener=listener)
        self.links[src, dst] = link
        self._nursery.start_soon(self._accept_loop, link)
        log.info("link_added", src=src, dst=dst, port=bound, target=f"{target[0]}:{target[1]}")
        return bound

    async def _accept_loop(self, link: DialLink) -> None:
        assert self._nursery is not None
        async with link.listener:
            while True:
                stream = await link.listener.accept()
                link.accepted += 1
                self._nursery.start_soon(self._serve_conn, link, stream)

    async def _serve_conn(self, link: DialLink, client: trio.SocketStream) -> None:
        conn = Conn(id=next(self._ids), link=link)
        conn.sockets.append(client.socket)
        up, down = conn.directions
        self.conns.add(conn)
        try:
            with conn.scope:
                if "reset" in (self.table.get(up).partition, self.table.get(down).partition):
                    self._reset(conn)
                    return
                # A blackholed link never lets a connection reach the target.
                await self._until_flowing(up)
                try:
                    with trio.fail_after(CONNECT_TIMEOUT_S):
                        server = await trio.open_tcp_stream(*link.target)
                except (OSError, trio.TooSlowError) as exc:
                    # Target down: the dialer sees a reset, as if the port refused it.
                    log.info("target_unreachable", src=link.src, dst=link.dst, error=str(exc))
                    _set_rst_on_close(client.socket)
                    return
                conn.sockets.append(server.socket)
                if conn.reset:  # a reset partition arrived while we were connecting
                    _set_rst_on_close(server.socket)
                async with server:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, conn, up, client, server)
                        nursery.start_soon(self._pipe, conn, down, server, client)
        finally:
            self.conns.discard(conn)
            await client.aclose()

    async def _pipe(
        self, conn: Conn, direction: Direction, src: trio.SocketStream, dst: trio.SocketStream
    ) -> None:
        send, recv = trio.open_memory_channel[tuple[float, bytes]](PIPE_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe_reader, conn, direction, src, send)
            nursery.start_soon(self._pipe_writer, conn, direction, dst, recv)

    async def _pipe_reader(
        self,
        conn: Conn,
        direction: Direction,
        src: trio.SocketStream,
        out: trio.MemorySendChannel[tuple[float, bytes]],
    ) -> None:
        previous_due = 0.0
        async with out:
            while True:
                await self._until_flowing(direction)
                try:
                    data = await src.receive_some(CHUNK_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return  # closing the channel tells the writer to send EOF
                shaping = self.table.get(direction)
                plan = plan_chunk(
                    shaping,
                    size=len(data),
                    now=trio.current_time(),
                    previous_due=previous_due,
                    rng=self.rng,
                )
                if plan.reset:
                    log.info("loss_reset", conn=conn.id, src=direction[0], dst=direction[1])
                    await trio.sleep_until(plan.due)
                    self._reset(conn)
                    return
                previous_due = plan.due
                await out.send((plan.due, data))

    async def _pipe_writer(
        self,
        conn: Conn,
        direction: Direction,
        dst: trio.SocketStream,
        chunks: trio.MemoryReceiveChannel[tuple[float, bytes]],
    ) -> None:
        upstream = direction == (conn.link.src, conn.link.dst)
        async with chunks:
            async for due, data in chunks:
                await trio.sleep_until(due)
                await self._until_flowing(direction)
                try:
                    await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.scope.cancel()
                    return
                if upstream:
                    conn.link.bytes_up += len(data)
                else:
                    conn.link.bytes_down += len(data)
        try:
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.scope.cancel()

    # -- control --------------------------------------------------------------------------------

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "hello":
            return {"pid": os.getpid(), "seed": self.seed}
        if op == "add_link":
            host, port = parse_address(str(req.get("target", "")), what="target")
            src, dst = str(req.get("src", "")), str(req.get("dst", ""))
            bound = await self.add_link(src, dst, (host, port), int(req.get("port", 0)))
            return {"port": bound}
        if op == "partition":
            mode: PartitionMode = req.get("mode", "blackhole")
            dirs = self.table.partition(_directions(req.get("directions")), mode)
            self._record("partition", dirs, mode=mode)
            reset = self._reset_conns_on(dirs) if mode == "reset" else 0
            self._notify()
            return {"directions": [list(d) for d in dirs], "connections_reset": reset}
        if op == "shape":
            kw = {
                k: (float(req[ms]) / 1000.0 if ms.endswith("_ms") else float(req[ms]))
                for k, ms in (("delay_s", "delay_ms"), ("jitter_s", "jitter_ms"), ("loss", "loss"))
                if req.get(ms) is not None
            }
            dirs = self.table.shape(_directions(req.get("directions")), **kw)
            params = {k: req[k] for k in ("delay_ms", "jitter_ms", "loss") if k in req}
            self._record("shape", dirs, **params)
            self._notify()
            return {"directions": [list(d) for d in dirs]}
        if op == "heal":
            raw = req.get("directions")
            healed = self.table.heal(None if raw is None else _directions(raw))
            self._record("heal", None if raw is None else healed)
            self._notify()
            return {"healed": [list(d) for d in healed]}
        if op == "status":
            open_by_link: dict[tuple[str, str], int] = {}
            for c in self.conns:
                key = (c.link.src, c.link.dst)
                open_by_link[key] = open_by_link.get(key, 0) + 1
            return {
                "pid": os.getpid(),
                "links": [
                    link.to_json(open_by_link.get(k, 0)) for k, link in sorted(self.links.items())
                ],
                "faults": [
                    {"from": d[0], "to": d[1], **s.to_json()} for d, s in self.table.items()
                ],
            }
        if op == "shutdown":
            self.shutdown.set()
            return {}
        raise FaultError(f"unknown proxy op {op!r} (ops: add_link, partition, shape, heal, status)")

    async def serve_control(
        self, path: Path, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        if path.exists():
            path.unlink()
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._control_client, stream)

    async def _control_client(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                buf += data
                if len(buf) > MAX_CONTROL_LINE:
                    return
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf = bytearray(rest)
                    reply = await self._reply(line)
                    try:
                        await stream.send_all(json.dumps(reply).encode() + b"\n")
                    except trio.BrokenResourceError:
                        return

    async def _reply(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise FaultError("a proxy request is a JSON object")
            return {"ok": True, **await self.handle(req)}
        except AuraError as exc:
            return {"ok": False, "error": exc.to_json()}
        except (ValueError, TypeError, KeyError, OSError) as exc:
            return {"ok": False, "error": {"code": "bad_request", "message": str(exc)}}

    async def run(self, control: Path) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.serve_control, control)
            log.info("proxy_ready", control=str(control), pid=os.getpid(), seed=self.seed)
            await self.shutdown.wait()
            log.info("proxy_stopping")
            nursery.cancel_scope.cancel()
        control.unlink(missing_ok=True)


def _directions(raw: object) -> list[Direction]:
    if not isinstance(raw, list):
        raise FaultError(f"directions must be a list of [from, to] pairs, got {raw!r}")
    out: list[Direction] = []
    for d in raw:
        if not (isinstance(d, list | tuple) and len(d) == 2):
            raise FaultError(f"a direction is [from_node, to_node], got {d!r}")
        out.append((str(d[0]), str(d[1])))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aura_node.harness.proxy")
    parser.add_argument("--control", required=True, help="Unix socket path for the control channel")
    parser.add_argument("--fault-log", default=None, help="append every fault here (JSON lines)")
    parser.add_argument("--seed", type=int, default=0, help="seed for jitter and loss draws")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level, fmt="json")
    proxy = FaultProxy(fault_log=Path(args.fault_log) if args.fault_log else None, seed=args.seed)

    import signal

    async def _main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                async def _on_signal() -> None:
                    async for _ in signals:
                        proxy.shutdown.set()
                        return

                nursery.start_soon(_on_signal)
                await proxy.run(Path(args.control))
                nursery.cancel_scope.cancel()

    try:
        trio.run(_main)
    except ConfigError as exc:
        sys.stderr.write(f"proxy: error: {exc.message}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
