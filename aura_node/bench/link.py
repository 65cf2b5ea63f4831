"""Link-layer throughput: 300-byte payloads per second over an established mTLS peer link
between two processes, against raw Trio TCP between two processes with the same frames and
the same batching, measured in the same run (target >= 0.4x).

* figure: this process runs a ``PeerNetwork`` ("tx") and sends ``count`` payloads through
  ``send_nowait``/``send``; a child process (``python -m aura_node.bench.link --peer tls``)
  runs a ``PeerNetwork`` ("rx") that reads every ``InboundData`` from its inbound channel and
  answers with one ``done`` payload over the same link when it has them all. Timed from the
  first send to the ``done``.
* floor: the same, over a plain ``trio`` TCP connection (``--peer raw``): the sender encodes
  the same ``Data`` frames with the same encoder and writes them in batches of the same size
  (``link.BATCH_BYTES``); the receiver decodes every frame with the same ``FrameDecoder``.
  So the ratio is what TLS, the bounded queues and the link tasks cost.

Both children run at once and the rounds alternate (raw, mTLS, raw, mTLS, ...), so the two
medians see the same load on a shared machine. Each child gets its key seed on stdin (never
argv) and prints its port on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

from aura_node.bench import Figure

PAYLOAD = b"\xab" * 300
DONE = b"done"


def _config(name: str, listen: str, peer: str, peer_pk: str, peer_port: int) -> Any:
    from aura_node.config import NodeConfig, NodeSection, PeerConfig, TransportSection

    return NodeConfig(
        node=NodeSection(name=name, listen=listen),
        transport=TransportSection(peer_queue_frames=4096),
        peers=(PeerConfig(name=peer, public_key=peer_pk, address=f"127.0.0.1:{peer_port}"),),
    )


# --- child side -------------------------------------------------------------------------------


async def _tls_receiver(seed: bytes, tx_pk: str, count: int) -> None:
    from aura_node.crypto.keys import DeviceKey
    from aura_node.transport import InboundData, PeerNetwork

    key = DeviceKey.from_seed(seed)
    # tx's address is unknown here: rx never reaches it (port 1) and tx dials rx instead.
    cfg = _config("rx", "127.0.0.1:0", "tx", tx_pk, 1)
    send, recv = trio.open_memory_channel[InboundData](4096)
    net = PeerNetwork(key=key, config=cfg, choreographies=(("bench", 1, bytes(32)),), inbound=send)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(net.serve)
        print(port, flush=True)
        got = 0
        while True:
            # Drain without a checkpoint per item, like a runtime reading bursts.
            item = await recv.receive()
            got += 1
            while True:
                try:
                    item = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                got += 1
            del item
            if got >= count:
                got -= count
                await net.send("tx", DONE)


async def _raw_receiver(count: int, max_frame_bytes: int) -> None:
    from aura_node.transport.framing import Data, FrameDecoder

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    stream = await listeners[0].accept()
    decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
    got = 0
    async with stream:
        while data := await stream.receive_some(256 * 1024):
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if type(frame) is Data:
                    got += 1
            if got >= count:
                got -= count
                await stream.send_all(b"d")
    for listener in listeners:
        await listener.aclose()


# --- parent side ------------------------------------------------------------------------------


def _spawn(mode: str, count: int, stdin: bytes) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aura_node.bench.link", "--peer", mode, "--count", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    line = proc.stdout.readline()
    if not line.strip():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"benchmark peer ({mode}) did not start")
    return proc, int(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def _raw_round(stream: trio.SocketStream, encoder: Any, count: int) -> float:
    from aura_node.transport.framing import Data
    from aura_node.transport.link import BATCH_BYTES

    t0 = time.perf_counter()
    buffer = bytearray()
    for _ in range(count):
        encoder.append(buffer, Data(payload=PAYLOAD))
        if len(buffer) >= BATCH_BYTES:
            await stream.send_all(buffer)
            buffer.clear()
    if buffer:
        await stream.send_all(buffer)
    with trio.fail_after(120):
        ack = await stream.receive_some(1)
    assert ack == b"d"
    return count / (time.perf_counter() - t0)


async def _tls_round(net: Any, recv: Any, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        if not net.send_nowait("rx", PAYLOAD):
            await net.send("rx", PAYLOAD)
    with trio.fail_after(120):
        ack = await recv.receive()
    assert ack.payload == DONE
    return count / (time.perf_counter() - t0)


async def _measure(
    tx_seed: bytes, rx_pk: str, tls_port: int, raw_port: int, count: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Alternate raw and mTLS rounds so both see the same machine load (it is shared)."""
    from aura_node.crypto.keys import DeviceKey
    from aura_node.transport import InboundData, PeerNetwork
    from aura_node.transport.framing import FrameEncoder

    cfg = _config("tx", "127.0.0.1:0", "rx", rx_pk, tls_port)
    send, recv = trio.open_memory_channel[InboundData](16)
    net = PeerNetwork(
        key=DeviceKey.from_seed(tx_seed), config=cfg, choreographies=(("bench", 1, bytes(32)),),
        inbound=send,
    )
    encoder = FrameEncoder(max_frame_bytes=cfg.transport.max_frame_bytes)
    raw: list[float] = []
    tls: list[float] = []
    stream = await trio.open_tcp_stream("127.0.0.1", raw_port)
    async with stream, trio.open_nursery() as nursery:
        await nursery.start(net.serve)
        with trio.fail_after(30):
            while net.link_states()["rx"]["state"] != "up":
                await trio.sleep(0.01)
        for _ in range(repeats):
            raw.append(await _raw_round(stream, encoder, count))
            tls.append(await _tls_round(net, recv, count))
        nursery.cancel_scope.cancel()
    return raw, tls


def run(args: Any) -> list[Figure]:
    from aura_node.crypto.keys import DeviceKey
    from aura_node.logs import configure_logging

    # Link logs go to stderr at warning level so a --json run prints only figures.
    configure_logging(level="warning", fmt="json", stream=sys.stderr)
    quick = bool(getattr(args, "quick", False))
    count = 20_000 if quick else 100_000
    repeats = 3 if quick else 7
    tx_seed, rx_seed = os.urandom(32), os.urandom(32)
    tx_pk = DeviceKey.from_seed(tx_seed).public.hex()
    rx_pk = DeviceKey.from_seed(rx_seed).public.hex()
    raw_proc, raw_port = _spawn("raw", count, b"")
    try:
        tls_proc, tls_port = _spawn(
            "tls", count, json.dumps({"seed": rx_seed.hex(), "tx": tx_pk}).encode()
        )
        try:
            raw, tls = trio.run(_measure, tx_seed, rx_pk, tls_port, raw_port, count, repeats)
        finally:
            _stop(tls_proc)
    finally:
        _stop(raw_proc)
    return [
        Figure(
            name="link: 300 B payloads over mTLS PeerNetwork link, 2 processes",
            value=statistics.median(tls),
            unit="frames/s",
            floor=statistics.median(raw),
            floor_name="raw Trio TCP, same frames+batching, 2 processes",
            target=">= 0.4",
        )
    ]


def _main() -> None:
    parser = argparse.ArgumentParser(description="benchmark peer process (internal)")
    parser.add_argument("--peer", choices=["tls", "raw"], required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    from aura_node.logs import configure_logging

    configure_logging(level="warning", fmt="json", stream=sys.stderr)
    if args.peer == "raw":
        trio.run(_raw_receiver, args.count, 1024 * 1024)
    else:
        setup = json.loads(sys.stdin.read())
        trio.run(_tls_receiver, bytes.fromhex(setup["seed"]), setup["tx"], args.count)


if __name__ == "__main__":
    _main()
