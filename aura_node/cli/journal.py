"""`aura-node journal verify|show|accept-rollback`: inspect a node's journal without modifying
it, and resolve a rollback the node's peers revealed.

``verify`` scans every segment (checksums, chain links, checkpoint signatures under the home's
device public key) and prints one JSON summary; exit 0 when sound (a torn, unacknowledged tail
that opening would cut is reported but is not damage), exit 1 naming segment, offset and
reason otherwise. ``show`` prints the records (a table, or one JSON object per record with
``--json``); it reads through the same verifying scan, so it refuses a damaged journal too.

``verify --peers`` adds ``rollback``: what the node's peers hold of this journal (rollback and
fork detection, ``aura_node.journal.witness``). From the running node when it answers on its
control socket (its live view: which peers checked, which hold a newer or different
checkpoint), else read from the journal's own ``rollback.*`` records and the held-checkpoints
file; exit 1 when the node refuses sessions because of it. ``accept-rollback --code CODE``
asks the running node to accept the loss that evidence shows; ``CODE`` is the one ``verify
--peers`` (or ``ctl status``) printed, so evidence that arrived since is never accepted unseen.
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
    v.add_argument("--peers", action="store_true",
                   help="also report what peers hold of this journal (rollback / fork check)")
    v.set_defaults(handler=cmd_verify)
    a = jsub.add_parser(
        "accept-rollback",
        help="accept losing the records peers showed this journal lacks (deliberate, logged)")
    _add_home(a)
    a.add_argument("--code", required=True,
                   help="the acceptance code `journal verify --peers` shows for the evidence")
    a.add_argument("--reason", default="", help="why (journaled with the acceptance)")
    a.set_defaults(handler=cmd_accept_rollback)
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
    rollback: dict[str, Any] | None = None
    if getattr(args, "peers", False):
        rollback = _peers_view(home, public, report)
        summary["rollback"] = rollback
    print_json(summary)
    if rollback is not None and rollback["state"] == "refusing":
        sys.stderr.write(f"aura-node: error: {rollback['message']}\n")
        return 1
    if rollback is not None and rollback["state"] == "unchecked":
        sys.stderr.write(f"aura-node: warning: {rollback['message']}\n")
    if not report.ok:
        assert report.problem is not None
        p = report.problem
        sys.stderr.write(
            f"aura-node: error: journal damaged: segment {p['segment']} at byte offset "
            f"{p['offset']}: {p['reason']}\n"
        )
        return 1
    return 0


def _peers_view(home: Any, public: Any, report: Any) -> dict[str, Any]:
    """The rollback view: the running node's, else rebuilt from the journal and held file."""
    from aura_node.control import client
    from aura_node.errors import NodeNotRunningError

    try:
        status = client.call(home.control_socket, "status", {}, timeout=10.0)
    except NodeNotRunningError:
        status = None
    if status is not None and isinstance(status.get("rollback"), dict):
        return {"source": "node", **status["rollback"]}
    return _offline_view(home, public, report)


def _offline_view(home: Any, public: Any, report: Any) -> dict[str, Any]:
    """Open evidence as the node would find it at start (its ``rollback.*`` records judged
    against the journal as it is), plus the checkpoints it holds of its peers."""
    from aura_node.journal.store import read_records
    from aura_node.journal.witness import STORE_NAME, PeerCheckpointStore, RollbackGuard

    guard = RollbackGuard(journal_id=report.journal_id, public=public)
    pending = guard.restore(
        (r.kind, r.body) for r in read_records(home.journal_dir, public)
        if not r.session and r.kind.startswith("rollback."))
    wanted = {e.checkpoint.count for e in pending if e.checkpoint.count < report.next_seq}
    heads: dict[int, bytes] = {report.next_seq: bytes.fromhex(report.head)}
    if wanted:
        for r in read_records(home.journal_dir, public, include_checkpoints=True):
            if r.seq in wanted:
                heads[r.seq] = r.prev
    for e in pending:
        guard.reopen(e, journal_count=report.next_seq, head_at_count=heads.get(e.checkpoint.count))
    view = guard.view(str(home.root))
    if not guard.refusing:
        view["state"] = "unchecked"
        view["message"] = ("the node is not running, so no peer checked this journal now; "
                           "no earlier check left open evidence in it")
    view["held"] = PeerCheckpointStore.load(home.root / STORE_NAME).view()
    return {"source": "journal", **view}


def cmd_accept_rollback(args: argparse.Namespace) -> int:
    from aura_node.control import client
    from aura_node.errors import NodeNotRunningError

    home, _ = _public_key(args)
    try:
        result = client.call(home.control_socket, "journal.accept_rollback",
                             {"code": args.code, **({"reason": args.reason} if args.reason
                                                    else {})}, timeout=30.0)
    except NodeNotRunningError:
        raise NodeNotRunningError(
            f"the node is not running: start it (`aura-node run --home {home.root}`; it "
            f"refuses sessions until this is resolved), check `aura-node journal verify "
            f"--peers --home {home.root}`, then run this again") from None
    print_json(result)
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
