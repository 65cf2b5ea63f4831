"""Random bytes on a link (after a real handshake) and before the handshake: the link with the
bad peer is dropped with a logged reason; the node and its other link keep working."""

from __future__ import annotations

import os

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.integration.test_transport_support import Node, events, node, raw_link, wait_until

# CI runs a bounded number of examples; AURA_FULL_TESTS=1 runs many more.
SETTINGS = settings(
    max_examples=300 if os.environ.get("AURA_FULL_TESTS") == "1" else 25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)


async def _check_other_link(a: Node, b: Node) -> None:
    assert a.net is not None and b.net is not None
    await b.net.send("a", b"still up")
    # Garbage can hold well-formed Data frames before the bad one; those were r's to deliver.
    while (got := await a.receive()).peer_name == "r":
        pass
    assert (got.peer_name, got.payload) == ("b", b"still up")


def _run_case(garbage: bytes, *, after_handshake: bool) -> list[dict[str, object]]:
    async def main() -> None:
        a, b, r = node("a", 1, max_frame_bytes=4096), node("b", 2), node("r", 5)
        async with trio.open_nursery() as n:
            await a.start(n)
            await b.start(n)
            a.set_peers(a.pin_node(b), a.pin(r.name, r.key.public.hex(), 1))
            b.set_peers(b.pin_node(a))
            if after_handshake:
                stream = await raw_link(r, a, max_frame_bytes=4096)
                try:
                    await stream.send_all(garbage)
                    # End our side: a partial frame must not keep the link half-open.
                    await stream.transport_stream.send_eof()
                except trio.BrokenResourceError:
                    pass
                # r's link specifically: a and b also end links of their own (a superseded
                # duplicate logs "link closed"), which says nothing about r's.
                await wait_until(
                    lambda: any(
                        e["peer"] == "r"
                        for ev in ("link dropped", "link closed")
                        for e in events(logs, "a", ev)
                    )
                )
                await trio.aclose_forcefully(stream)
            else:
                sock = await trio.open_tcp_stream("127.0.0.1", a.port)
                host, port = sock.socket.getsockname()[:2]
                try:
                    await sock.send_all(garbage)
                    await sock.send_eof()
                except (trio.BrokenResourceError, OSError):
                    pass
                # This connection's refusal, not any other.
                await wait_until(
                    lambda: any(
                        e["remote"] == f"{host}:{port}"
                        for e in events(logs, "a", "inbound connection refused")
                    )
                )
                await trio.aclose_forcefully(sock)
            await _check_other_link(a, b)
            n.cancel_scope.cancel()

    with capture_logs() as logs:
        trio.run(main)
    return logs


@SETTINGS
@given(st.binary(min_size=0, max_size=2000))
def test_random_bytes_after_handshake_drop_only_that_link(garbage: bytes) -> None:
    logs = _run_case(garbage, after_handshake=True)
    ended = events(logs, "a", "link dropped") + events(logs, "a", "link closed")
    r_ended = [e for e in ended if e["peer"] == "r"]
    assert r_ended, "r's link must end"
    for e in events(logs, "a", "link dropped"):
        assert e["peer"] == "r" and e["code"] and e["reason"], e


@SETTINGS
@given(
    st.one_of(
        st.binary(min_size=0, max_size=600),
        # Near-misses: our magic with random header fields and bodies.
        st.builds(lambda rest: b"AURA" + rest, st.binary(max_size=600)),
    )
)
def test_garbage_before_handshake_is_refused(garbage: bytes) -> None:
    logs = _run_case(garbage, after_handshake=False)
    refused = events(logs, "a", "inbound connection refused")
    assert refused and all(e["code"] and e["reason"] for e in refused)
    assert not events(logs, "a", "link up") or all(
        e["peer"] == "b" for e in events(logs, "a", "link up")
    )
