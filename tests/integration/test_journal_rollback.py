"""A rolled-back or forked journal is caught by the node's peers (issue 13), with real
processes: a journal restored from an older copy, and one that diverged after such a restore.

Each test: run sessions, copy a node's journal directory, run more sessions, stop it, restore
the copy, restart it; the peer that saw the newer journal presents its checkpoint in the
hello and the restored node refuses sessions, says who holds what and what to do.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from aura_node.cli import main as cli_main
from aura_node.control.protocol import ControlReplyError
from tests.integration.nodeproc import NodeProc, cluster

pytestmark = pytest.mark.e2e


def _rollback(node: NodeProc) -> dict[str, Any]:
    view: dict[str, Any] = node.ctl("status")["rollback"]
    return view


def _wait_rollback(node: NodeProc, state: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = _rollback(node)
        if view["state"] == state:
            return view
        time.sleep(0.05)
    raise AssertionError(f"{node.name}: rollback state not {state}: {_rollback(node)}\n"
                         + node.log_text()[-3000:])


def _wait_held(witness: NodeProc, of: NodeProc, count: int, timeout: float = 15.0) -> None:
    """Until ``witness`` holds a checkpoint of ``of``'s journal of at least ``count``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = _rollback(witness)["held"].get(of.name)
        if held is not None and held["count"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{witness.name} never held {of.name}'s checkpoint {count}: "
                         f"{_rollback(witness)}")


def _run_cli(*argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(list(argv))
    lines = out.getvalue().strip().splitlines()
    return rc, (json.loads(lines[-1]) if lines else {}), err.getvalue()


def _copy_journal(node: NodeProc, to: Path) -> None:
    shutil.copytree(node.home / "journal", to)


def _restore_journal(node: NodeProc, copy: Path) -> None:
    shutil.rmtree(node.home / "journal")
    shutil.copytree(copy, node.home / "journal")


def test_a_journal_restored_from_an_older_copy_is_refused_until_accepted(
    tmp_path: Path,
) -> None:
    with cluster(["a", "b"]) as (a, b):
        a.start(wait=False)
        b.start()
        a.wait_ready()
        a.wait_links_up(["b"])
        a.ctl("ping", peer="b")
        a.stop()
        _copy_journal(a, tmp_path / "old")
        a.start()
        a.wait_links_up(["b"])
        for _ in range(3):
            a.ctl("ping", peer="b")
        newest = _rollback(a)["own"]["count"]
        _wait_held(b, a, newest)
        assert a.stop() == 0

        _restore_journal(a, tmp_path / "old")
        a.start()
        view = _wait_rollback(a, "refusing")
        [evidence] = view["evidence"]
        assert evidence["peer"] == "b" and evidence["verdict"] == "rollback"
        assert evidence["checkpoint"]["count"] >= newest > evidence["journal_count"]
        assert "restore its newest journal copy" in view["message"]
        assert f"--code {view['code']}" in view["message"]
        a.wait_log("journal_rollback_detected", peer="b", verdict="rollback")

        # operator starts are refused with what to do; the node keeps running
        with pytest.raises(ControlReplyError) as refused:
            a.ctl("ping", peer="b", timeout=2.0)
        assert refused.value.remote_code == "journal_rolled_back"
        assert "accept-rollback" in refused.value.message
        # a peer's session messages are refused too: b's ping gets no answer
        with pytest.raises(ControlReplyError) as unanswered:
            b.ctl("ping", peer="a", timeout=1.0)
        assert unanswered.value.remote_code == "timeout"
        a.wait_log("inbound_refused", peer="b")

        # the operator's tools name the peer and the checkpoint
        rc, out, err = _run_cli("journal", "verify", "--peers", "--home", str(a.home))
        assert rc == 1 and out["ok"] is True and out["rollback"]["source"] == "node"
        assert out["rollback"]["evidence"] == view["evidence"]
        assert "refusing to take part in sessions" in err
        assert len(_wait_records(a, "rollback.detected")) == 1

        # acceptance is deliberate: only the code of the evidence shown works
        rc, _, err = _run_cli("journal", "accept-rollback", "--home", str(a.home),
                              "--code", "000000000000")
        assert rc == 1 and "does not name the current evidence" in err
        assert _rollback(a)["state"] == "refusing"
        rc, out, _ = _run_cli("journal", "accept-rollback", "--home", str(a.home),
                              "--code", view["code"], "--reason", "test: restored backup")
        assert rc == 0 and out["state"] == "ok"
        assert [c["count"] for c in out["accepted"]] == [evidence["checkpoint"]["count"]]
        a.wait_log("journal_rollback_accepted")
        assert a.ctl("ping", peer="b")["peer"] == "b"
        assert _rollback(a)["state"] == "ok"
        # the acceptance holds across a restart, though b still holds the lost checkpoint
        assert a.stop() == 0
        a.start()
        a.wait_links_up(["b"])
        assert a.ctl("ping", peer="b")["peer"] == "b"
        assert _rollback(a)["state"] in ("ok", "unchecked")
        assert a.stop() == 0 and b.stop() == 0


def _journal_records(node: NodeProc) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["journal", "show", "--json", "--home", str(node.home)]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def _wait_records(node: NodeProc, kind: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The node's journal records of ``kind``, once there are any (the node refuses first,
    then journals the evidence)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in _journal_records(node) if r["kind"] == kind]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_forked_journal_is_refused_and_an_offline_start_warns(tmp_path: Path) -> None:
    with cluster(["a", "b"]) as (a, b):
        a.start(wait=False)
        b.start()
        a.wait_ready()
        a.wait_links_up(["b"])
        a.ctl("ping", peer="b")
        a.stop()
        _copy_journal(a, tmp_path / "old")
        a.start()
        a.wait_links_up(["b"])
        for _ in range(2):
            a.ctl("ping", peer="b")
        _wait_held(b, a, _rollback(a)["own"]["count"])
        assert a.stop() == 0
        # what b holds of a now is what a's fork must pass (a may have written more since)
        held = _rollback(b)["held"]["a"]["count"]
        assert b.stop() == 0

        # the old copy, then a different history alone: b is offline
        _restore_journal(a, tmp_path / "old")
        a.start()
        a.wait_log("journal_rollback_unchecked")
        view = _rollback(a)
        assert view["state"] == "unchecked" and "could not be checked" in view["message"]
        while _rollback(a)["own"]["count"] <= held:
            with pytest.raises(ControlReplyError):
                a.ctl("ping", peer="b", timeout=0.3)

        b.start()
        view = _wait_rollback(a, "refusing")
        [evidence] = view["evidence"]
        assert evidence["peer"] == "b" and evidence["verdict"] == "fork"
        assert evidence["checkpoint"]["count"] == held <= evidence["journal_count"]
        assert "does not reproduce" in view["message"]
        [record] = _wait_records(a, "rollback.detected")
        assert record["body"]["verdict"] == "fork"

        # the refusal is journaled: it holds across a restart with the witness offline
        assert b.stop() == 0 and a.stop() == 0
        rc, out, _ = _run_cli("journal", "verify", "--peers", "--home", str(a.home))
        assert rc == 1 and out["rollback"]["source"] == "journal"
        assert out["rollback"]["evidence"][0]["verdict"] == "fork"
        a.start()
        assert _rollback(a)["state"] == "refusing"
        with pytest.raises(ControlReplyError) as refused:
            a.ctl("ping", peer="b", timeout=1.0)
        assert refused.value.remote_code == "journal_rolled_back"
        assert a.stop() == 0
