"""`aura-node journal verify|show`: inspect a node's journal without modifying it.

``verify`` scans every segment (checksums, chain links, checkpoint signatures under the home's
device public key) and prints one JSON summary; exit 0 when sound (a torn, unacknowledged tail
that opening would cut is reported but is not damage), exit 1 naming segment, offset and
reason otherwise. ``show`` prints the records (a table, or one JSON object per record with
``--json``); it reads through the same verifying scan, so it refuses a damaged journal too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from aura_node.cli import print_json


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="node home directory (default: $AURA_HOME)")


def register(sub: Any) -> None:
    p = sub.add_parser("journal", help="verify or show the append-only signed journal")
    jsub = p.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    v = jsub.add_parser("verify", help="check checksums, chain and checkpoint signatures")
    _add_home(v)
    v.set_defaults(handler=cmd_verify)
    s = jsub.add_parser("show", help="print journal records")
    _add_home(s)
    s.add_argument("--session", default=None, help="only this session's records")
    s.add_argument("--json", action="store_true", help="one JSON object per record")
    s.add_argument(
        "--checkpoints", action="store_true", help="include the checkpoint records"
    )
    s.set_defaults(handler=cmd_show)


def _public_key(args: argparse.Namespace) -> Any:
    from aura_node.config import NodeHome
    from aura_node.crypto.keys import DeviceKey

    home = NodeHome.resolve(args.home)
    home.require_exists()
    return home, DeviceKey.load(home.key_path).public


def cmd_verify(args: argparse.Namespace) -> int:
    from aura_node.journal.store import verify_journal

    home, public = _public_key(args)
    report = verify_journal(home.journal_dir, public)
    summary = {
        "ok": report.ok,
        "journal_id": report.journal_id,
        "directory": report.directory,
        "segments": report.segments,
        "records": report.records,
        "checkpoints": report.checkpoints,
        "next_seq": report.next_seq,
        "head": report.head,
        "torn_tail": report.torn_tail,
        "problem": report.problem,
    }
    print_json(summary)
    if not report.ok:
        assert report.problem is not None
        p = report.problem
        sys.stderr.write(
            f"aura-node: error: journal damaged: segment {p['segment']} at byte offset "
            f"{p['offset']}: {p['reason']}\n"
        )
        return 1
    return 0


def _body_for_display(body: bytes) -> Any:
    import msgspec

    try:
        value = msgspec.msgpack.decode(body)
    except msgspec.MsgspecError:
        return {"hex": body.hex()}
    return _jsonable(value)


def _display(record: Any) -> Any:
    """A record's body for display: a checkpoint's fields, else the decoded msgpack."""
    from aura_node.journal.format import decode_checkpoint

    if record.is_checkpoint:
        cp = decode_checkpoint(record.body)
        return {
            "journal_id": cp.journal_id, "count": cp.count, "head": cp.head.hex(),
            "signature": cp.signature.hex(),
        }
    return _body_for_display(record.body)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(_jsonable(k)): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return repr(v)


def cmd_show(args: argparse.Namespace) -> int:
    from aura_node.journal.store import read_records

    home, public = _public_key(args)
    records = read_records(
        home.journal_dir, public, session=args.session,
        include_checkpoints=bool(args.checkpoints),
    )
    if args.json:
        for r in records:
            print_json({
                "seq": r.seq, "ts": r.ts, "session": r.session, "kind": r.kind,
                "body": _display(r),
            })
        return 0
    rows = [("SEQ", "TIME (UTC)", "SESSION", "KIND", "BODY")]
    for r in records:
        when = datetime.datetime.fromtimestamp(r.ts, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S.%f"
        )[:-3]
        body = json.dumps(_display(r), separators=(",", ":"))
        if len(body) > 60:
            body = body[:57] + "..."
        rows.append((str(r.seq), when, r.session or "-", r.kind, body))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
            + "\n"
        )
    sys.stdout.write(f"({len(rows) - 1} records)\n")
    return 0
