"""`aura-node journal verify|show` on sound, torn and damaged journals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest

from aura_node.cli import main
from aura_node.config import NodeHome
from aura_node.crypto.keys import DeviceKey
from aura_node.journal import Journal, JournalEntry


@pytest.fixture
def home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> NodeHome:
    root = tmp_path / "home"
    assert main(["init", "--home", str(root), "--name", "alpha"]) == 0
    capsys.readouterr()
    h = NodeHome(root)
    key = DeviceKey.load(h.key_path)
    with Journal.open(h.journal_dir, key) as j:
        j.append_batch([
            JournalEntry(session="sess-1", kind="dkd/commitment-sent",
                         body=msgspec.msgpack.encode({"round": 1, "c": b"\xab\xcd"}), ts=1.5),
            JournalEntry(session="sess-2", kind="dkd/reveal-sent", body=b"\xc1", ts=2.0),
        ])
        j.append_batch([
            JournalEntry(session="", kind="node/started", body=msgspec.msgpack.encode([1]),
                         ts=3.0),
        ])
    return h


def _segment(h: NodeHome) -> Path:
    return sorted(h.journal_dir.glob("segment-*.journal"))[0]


def test_verify_sound_journal(home: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "verify", "--home", str(home.root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    assert summary["records"] == 3 and summary["checkpoints"] == 2 and summary["segments"] == 1
    assert summary["journal_id"] == DeviceKey.load(home.key_path).device_id
    assert summary["problem"] is None and summary["torn_tail"] is None


def test_verify_damaged_journal(home: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    seg = _segment(home)
    data = bytearray(seg.read_bytes())
    data[120] ^= 0x10
    seg.write_bytes(bytes(data))
    assert main(["journal", "verify", "--home", str(home.root)]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["ok"] is False
    assert summary["problem"]["segment"] == str(seg)
    assert summary["problem"]["offset"] <= 120
    assert "journal damaged" in captured.err and seg.name in captured.err
    assert "byte offset" in captured.err


def test_verify_with_another_devices_key_fails(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    other = home.root.parent / "other"
    assert main(["init", "--home", str(other), "--name", "beta"]) == 0
    # beta's home with alpha's journal: checkpoint signatures do not verify under beta's key
    os.rmdir(NodeHome(other).journal_dir)
    os.symlink(home.journal_dir, NodeHome(other).journal_dir)
    capsys.readouterr()
    assert main(["journal", "verify", "--home", str(other)]) == 1
    assert "journal damaged" in capsys.readouterr().err


def test_verify_reports_a_torn_tail_as_sound(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = _segment(home)
    os.truncate(seg, seg.stat().st_size - 3)
    assert main(["journal", "verify", "--home", str(home.root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True and summary["records"] == 2
    assert summary["torn_tail"]["unacknowledged_records"] == 1
    assert seg.stat().st_size > 0  # verify never truncates


def test_show_table(home: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "show", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "SESSION", "KIND", "BODY"]
    assert "dkd/commitment-sent" in lines[1] and "sess-1" in lines[1]
    assert '"c":"abcd"' in lines[1]
    assert "journal/checkpoint" not in out
    assert lines[-1] == "(3 records)"


def test_show_json_and_session_filter(home: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "show", "--home", str(home.root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == [0, 1, 3]
    assert rows[0] == {
        "seq": 0, "ts": 1.5, "session": "sess-1", "kind": "dkd/commitment-sent",
        "body": {"round": 1, "c": "abcd"},
    }
    assert rows[1]["body"] == {"hex": "c1"}  # not msgpack: shown as hex
    assert main(["journal", "show", "--home", str(home.root), "--json", "--session", "sess-2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["seq"], r["kind"]) for r in rows] == [(1, "dkd/reveal-sent")]
    assert main(["journal", "show", "--home", str(home.root), "--json", "--checkpoints"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cps = [r for r in rows if r["kind"] == "journal/checkpoint"]
    assert [c["body"]["count"] for c in cps] == [2, 4]


def test_show_refuses_a_damaged_journal(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = _segment(home)
    data = bytearray(seg.read_bytes())
    data[-200] ^= 0x01
    seg.write_bytes(bytes(data))
    assert main(["journal", "show", "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert seg.name in err and "byte offset" in err
    assert f"aura-node journal verify --home {home.root}" in err


def test_verify_without_a_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "verify", "--home", str(tmp_path / "nope")]) == 1
    assert "not a node home" in capsys.readouterr().err
