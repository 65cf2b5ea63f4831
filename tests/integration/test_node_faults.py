"""Node-level faults: unknown peers refused, a node with another registry still linked, a
driver bug confined to its sessions, a SIGKILL mid-ping rehydrated from the journal."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from aura_node.control.protocol import ControlReplyError
from aura_node.crypto.keys import DeviceKey
from aura_node.journal import Journal
from aura_node.protocols import engine as eng
from tests.integration.nodeproc import NodeProc, cluster

pytestmark = pytest.mark.e2e
PLUGIN = "tests.integration.nodeproc_plugins"


def test_unknown_peer_is_refused_and_logged() -> None:
    with cluster(["a", "b"], pin_all=False) as [a, b]:
        b.pin(a)  # b knows a; a does not know b
        a.start()
        b.start()
        time.sleep(1.0)  # b keeps dialling a with backoff
        assert {p["name"]: p["link"] for p in b.ctl("peers")["peers"]}["a"] != "up"
        with pytest.raises(ControlReplyError):
            b.ctl("ping", peer="a", timeout=1)
        # a logged the refusal of a key it does not pin
        text = a.log_text()
        assert b.device_id in text or b.public_key in text, text[-3000:]
        assert a.stop() == 0 and b.stop() == 0


def test_a_node_with_an_extra_choreography_still_links_and_pings() -> None:
    """The registry hashes differ (b loads a plugin), yet the link comes up: the hello carries
    each choreography's version, and ping is the same on both sides."""
    with cluster(["a", "b"], plugins={"b": (PLUGIN,)}) as [a, b]:
        b.env["AURA_TEST_PLUGIN"] = "extra-choreography"
        a.start()
        b.start()
        ha, hb = a.ctl("status")["registry_hash"], b.ctl("status")["registry_hash"]
        assert ha != hb
        a.wait_links_up(["b"])
        assert a.ctl("ping", peer="b")["peer"] == "b"
        assert a.stop() == 0 and b.stop() == 0


def test_a_driver_exception_aborts_only_its_session() -> None:
    with cluster(["a", "b", "c"], plugins={"b": (PLUGIN,)}) as nodes:
        a, b, c = nodes
        b.env["AURA_TEST_PLUGIN"] = "faulty-responder"
        for n in nodes:
            n.start()
        a.wait_links_up(["b"])
        c.wait_links_up(["b"])
        with pytest.raises(ControlReplyError) as err:
            c.ctl("ping", peer="b", timeout=5)
        assert err.value.remote_code == "session_failed"
        assert "aborted" in err.value.message
        assert a.ctl("ping", peer="b")["peer"] == "b"  # b is up, other sessions work
        ev = b.wait_log("session_step_raised")
        assert len(ev["session"]) == 32 and "injected driver bug" in ev["reason"]
        st = b.ctl("status")
        assert st["outcomes"] == {"active": 0, "completed": 1, "failed": 1}
        for n in nodes:
            assert n.stop() == 0


def _journal_records(node: NodeProc, session: str) -> list[Any]:
    key = DeviceKey.load(node.home / "device.key")
    with Journal.open(node.home / "journal", key) as j:
        return list(j.session_records(session))


def test_sigkill_mid_ping_rehydrates_and_completes() -> None:
    import signal

    with cluster(["a", "b"]) as [a, b]:
        a.start()
        b.start()
        a.wait_links_up(["b"])
        assert b.proc is not None and a.proc is not None
        b.proc.send_signal(signal.SIGSTOP)  # the Ping will sit in b's socket buffer
        result: dict[str, Any] = {}

        def ping() -> None:
            try:
                result["ok"] = a.ctl("ping", peer="b", timeout=20)
            except Exception as exc:
                result["err"] = exc

        t = threading.Thread(target=ping)
        t.start()
        deadline = time.monotonic() + 10
        sid = ""
        while time.monotonic() < deadline and not sid:
            active = a.ctl("sessions")["sessions"]
            sid = active[0]["session"] if active else ""
            time.sleep(0.02)
        assert sid, "the ping session never became active"
        a.kill()  # SIGKILL: the journaled Ping is all a has
        t.join(10)
        assert "err" in result  # the ctl connection died with the node
        b.proc.send_signal(signal.SIGCONT)  # b answers; the Pong cannot reach a
        a.start()
        # a rehydrated AwaitingPong, re-sent its journaled Ping (replay); b answered again
        a.wait_log("session_rehydrated", session=sid)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if a.ctl("session", session=sid)["state"] in ("Completed", "Failed"):
                break
            time.sleep(0.05)
        mine = a.ctl("session", session=sid)
        assert mine["state"] == "Completed", mine
        assert a.stop() == 0 and b.stop() == 0
        recs = _journal_records(a, sid)
        kinds = [r.kind for r in recs]
        assert kinds.count(eng.KIND_OUT) == 1  # the Ping was re-sent, never regenerated
        assert kinds[-1] == eng.KIND_COMPLETE
        theirs = [r.kind for r in _journal_records(b, sid)]
        assert theirs.count(eng.KIND_IN) == 1 and theirs.count(eng.KIND_OUT) == 1
