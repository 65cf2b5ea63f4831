"""Child process for the journal crash test: append forever, print each acknowledged record.

Usage: ``python journal_appender.py DIR SEED_HEX TASKS``. Opens the journal (recovering any torn
tail a previous SIGKILL left), prints ``ready <next_seq>``, then runs TASKS Trio tasks that
append records in a loop through ``GroupCommitJournal``; after each append returns (durable),
prints ``ack <seq> <body hex>`` and flushes. The parent kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import faulthandler
import os
import sys

import trio

from aura_node.crypto.keys import DeviceKey
from aura_node.journal.group_commit import GroupCommitJournal
from aura_node.logs import configure_logging


async def main(directory: str, seed: bytes, tasks: int) -> None:
    key = DeviceKey.from_seed(seed)
    out = sys.stdout
    segment_bytes = 64 * 1024
    async with GroupCommitJournal.open(
        directory, key, max_batch=64, segment_bytes=segment_bytes
    ) as gcj:
        faulthandler.cancel_dump_traceback_later()
        out.write(f"ready {gcj.journal.next_seq}\n")
        out.flush()

        async def appender(t: int) -> None:
            k = 0
            while True:
                body = f"{os.getpid()}:{t}:{k}".encode()
                rec = await gcj.append(session=f"task-{t}", kind="crash/test", body=body, ts=0.0)
                out.write(f"ack {rec.seq} {body.hex()}\n")
                out.flush()
                k += 1

        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(appender, t)


if __name__ == "__main__":
    # structlog (torn-tail warnings) must not mix with the ack lines on stdout
    configure_logging(fmt="json", stream=sys.stderr)
    # a child that cannot get ready dumps its stacks and exits instead of hanging the test
    faulthandler.dump_traceback_later(20, exit=True)
    trio.run(main, sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]))
