"""A rolling upgrade between real node processes: three nodes, three versions of ping.

``a`` runs the shipped ping v1, ``b`` a compatible ping v2 (``tests.integration.ping_v2_plugin``
in ``compatible`` mode: it advertises v1 too, proven by the subtyping check), ``c`` an
incompatible ping v2. Every link comes up (the hello no longer pins one registry hash); a and b
run ping both ways; every pair with c refuses ping at the initiator, naming the choreography
and both versions; and DKD (an account of all three, t = 2) keeps working between every pair.
"""

from __future__ import annotations

import pytest

from aura_node.control.protocol import ControlReplyError
from tests.integration.nodeproc import NodeProc, cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
PLUGIN = "tests.integration.ping_v2_plugin"


def _refused(initiator: NodeProc, peer: str) -> str:
    with pytest.raises(ControlReplyError) as err:
        initiator.ctl("ping", peer=peer, timeout=5)
    assert err.value.remote_code == "incompatible_version", err.value.message
    return err.value.message


def test_upgraded_nodes_keep_their_links_and_refuse_only_incompatible_sessions() -> None:
    with cluster(["a", "b", "c"], plugins={"b": (PLUGIN,), "c": (PLUGIN,)}) as nodes:
        a, b, c = nodes
        b.env["AURA_TEST_PING_V2"] = "compatible"
        c.env["AURA_TEST_PING_V2"] = "incompatible"
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_links_up([m.name for m in nodes if m is not n])

        # the compatible pair runs ping, in both directions (v1 <-> v2)
        assert a.ctl("ping", peer="b")["peer"] == "b"
        assert b.ctl("ping", peer="a")["peer"] == "a"

        # every pair with the incompatible node refuses ping with the reason
        why = _refused(a, "c")
        assert "ping" in why and "v1" in why and "v2" in why and "peer c" in why, why
        why = _refused(c, "a")
        assert "this node runs v2, peer a runs v1" in why, why
        why = _refused(b, "c")
        assert "both run v2 but the two definitions differ" in why, why
        _refused(c, "b")

        # DKD is unaffected: an account of all three, then keys derived by every pair
        acct = a.ctl("account.create", devices=["a", "b", "c"], threshold=2)
        assert acct["threshold"] == 2
        keys = {
            frozenset(pair): nodes_[0].ctl("dkd", context="mail", participants=list(pair))
            for pair, nodes_ in ((("a", "b"), (a,)), (("b", "c"), (b,)), (("c", "a"), (c,)))
        }
        assert len({k["fingerprint"] for k in keys.values()}) == 1, keys

        # links stayed up throughout
        for n in nodes:
            links = {p["name"]: p["link"] for p in n.ctl("peers")["peers"]}
            assert set(links.values()) == {"up"}, (n.name, links)
        for n in nodes:
            assert n.stop() == 0
