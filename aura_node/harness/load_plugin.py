"""Node plugin for the load benchmark: one control request that runs many control commands.

``aura-node run --plugin aura_node.harness.load_plugin`` adds the control command
``bench.batch`` (args ``{requests: [[cmd, args], ...]}``) to the node. It runs every request
concurrently through the node's *own* control handler table (the exact code a ``ctl dkd`` on
the socket runs: start the session through the command channel, wait for its durable end) and
answers once all have ended, with each one's outcome and wall-clock end time.

Why it exists: the control server serves requests on one connection in order and holds at
most 64 connections (``ControlServer(max_connections=64)``), and ``dkd``/``ping`` answer only
when the session ended, so through the socket a node never has more than 64 of its own
sessions in flight. The load benchmark needs thousands per node to measure memory per session
and throughput under that many; this plugin takes the socket (not the session machinery) out
of the way. It registers no choreography, so the registry hash (and who links with whom) is
unchanged.

Registration happens at import (the only hook ``--plugin`` gives): the module appends itself
to ``runtime.handlers.HANDLER_MODULES``, which ``control_handlers(node)`` reads.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from aura_node.errors import AuraError
from aura_node.runtime.handlers import HANDLER_MODULES, Handler, RunningNode

COMMAND = "bench.batch"
#: requests in one batch; a reply carries one small object per request (16 MiB reply cap)
MAX_BATCH = 50_000


def handlers(node: RunningNode) -> dict[str, Handler]:
    table: dict[str, Handler] = {}

    async def batch(args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.control.protocol import InvalidArgsError
        from aura_node.runtime.handlers import control_handlers

        requests = args.get("requests")
        if not isinstance(requests, list) or len(requests) > MAX_BATCH:
            raise InvalidArgsError(f"requests must be a list of at most {MAX_BATCH} "
                                   f"[cmd, args] pairs, got {type(requests).__name__}")
        if not table:
            table.update(control_handlers(node))
        outcomes: list[dict[str, Any] | None] = [None] * len(requests)

        async def one(i: int, cmd: str, box: list[dict[str, Any]]) -> None:
            handler = table.get(cmd)
            try:
                if handler is None or cmd == COMMAND:
                    raise InvalidArgsError(f"unknown command {cmd!r} in a batch")
                # the handler gets the only reference to its args (taken out of ``box``), so
                # what it drops while its session runs is freed: the memory per in-flight
                # session measured with this plugin is the node's, not copies of requests
                result = await handler(box.pop())
                outcomes[i] = {"ok": True, "end": time.time(), "session": result.get("session")}
            except AuraError as exc:
                outcomes[i] = {"ok": False, "end": time.time(), "code": exc.code,
                               "message": exc.message[:200]}

        async with trio.open_nursery() as nursery:
            for i, item in enumerate(requests):
                cmd, cmd_args = item
                requests[i] = None  # the decoded request lives on in its handler only
                nursery.start_soon(one, i, str(cmd), [dict(cmd_args)])
                del item, cmd_args
        return {"outcomes": outcomes}

    return {COMMAND: batch}


if __name__ not in HANDLER_MODULES:
    HANDLER_MODULES.append(__name__)
