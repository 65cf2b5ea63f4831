"""Three real node processes ping each other over mTLS; sessions are journaled and logged."""

from __future__ import annotations

import itertools

import pytest

from aura_node.crypto.keys import DeviceKey
from tests.integration.nodeproc import cluster

pytestmark = pytest.mark.e2e


def test_three_nodes_ping_each_other() -> None:
    with cluster(["a", "b", "c"]) as nodes:
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_ready()
        by_name = {n.name: n for n in nodes}
        for n in nodes:
            n.wait_links_up([m.name for m in nodes if m is not n])
        sessions = []
        for src, dst in itertools.permutations("abc", 2):
            res = by_name[src].ctl("ping", peer=dst)
            assert res["peer"] == dst and res["rtt_ms"] > 0 and len(res["session"]) == 32
            sessions.append((src, dst, res["session"]))
        for src, dst, sid in sessions:
            mine = by_name[src].ctl("session", session=sid)
            theirs = by_name[dst].ctl("session", session=sid)
            assert (mine["role"], mine["state"]) == ("initiator", "Completed")
            assert (theirs["role"], theirs["state"]) == ("responder", "Completed")
        st = by_name["a"].ctl("status")
        assert st["name"] == "a" and st["ready"] is True
        assert st["device_id"] == by_name["a"].device_id
        assert {p["name"]: p["link"] for p in st["peers"]} == {"b": "up", "c": "up"}
        assert st["sessions"] == {"Completed": 4}  # 2 as initiator + 2 as responder
        assert by_name["a"].ctl("sessions") == {"sessions": []}
        assert len(by_name["a"].ctl("sessions", all=True)["sessions"]) == 4
        for n in nodes:
            assert n.stop() == 0
        # every log line about a session carries its id; no key material in any log
        for n in nodes:
            events = n.log_events()
            assert any(e.get("event") == "listening" and e.get("port") == n.port
                       for e in events)
            for e in events:
                if e.get("event", "").startswith("session_"):
                    assert len(e.get("session", "")) == 32, e
            key = DeviceKey.load(n.home / "device.key")
            text = n.log_text()
            assert key.to_pem().decode().splitlines()[1] not in text
            raw = key.to_cryptography().private_bytes_raw().hex()
            assert raw not in text


def test_ping_of_an_unknown_peer_is_an_invalid_args_error() -> None:
    from aura_node.control.protocol import ControlReplyError

    with cluster(["a"]) as [a]:
        a.start()
        with pytest.raises(ControlReplyError) as err:
            a.ctl("ping", peer="nobody")
        assert err.value.remote_code == "invalid_args"
        assert "nobody" in err.value.message
        assert a.stop() == 0
