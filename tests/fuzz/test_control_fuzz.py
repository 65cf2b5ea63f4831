"""Hostile control requests: no request line, however malformed, stops the control server or
the node, and every one gets exactly one JSON reply line.

Request lines are generated as JSON *text* (not through ``json.dumps`` of Python values), so
they can hold what a hostile client can write and Python's encoder would refuse: lone
surrogate escapes (``"\\ud800"``, in the ``id`` too), NaN/Infinity, numbers beyond the float
range, integers past the digit limit, nesting deeper than the recursion limit, random bytes.
Every command of the table is tried with arguments of random types.

CI runs a bounded, derandomized number of examples; ``--full`` (or ``AURA_FULL_TESTS=1``) many
more. The first test runs an in-process ``ControlServer`` on a real Unix socket; the second a
real ``aura-node run`` process with its real handlers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.control.protocol import COMMANDS, MAX_REQUEST_BYTES, NotFoundError
from aura_node.control.server import ControlServer
from tests.integration.control_support import RecordingLog, socket_dir
from tests.integration.nodeproc import cluster


def _settings(full_run: bool, ci: int, full: int) -> settings:
    return settings(
        max_examples=full if full_run else ci,
        deadline=None,
        derandomize=not full_run,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


# --- JSON text, hostile ------------------------------------------------------------------------

#: every code point, lone surrogates included (json.dumps writes them as \\udXXX escapes)
_any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
_string = st.one_of(
    st.text(_any_char, max_size=12),
    st.sampled_from(["\ud800", "\udfff", "a\udc80b", "\ud83d", "\U0001f600", "", "status"]),
).map(json.dumps)
_number = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: json.dumps(f, allow_nan=True)),  # NaN, Infinity, -Infinity as written
    st.integers(4000, 6000).map(lambda n: "9" * n),  # past int_max_str_digits (4300)
    st.sampled_from(["1e999", "-1e999", "1e-999", "-0", "0.0", "1E400", "123456789e-400"]),
)
_scalar = st.one_of(st.sampled_from(["null", "true", "false"]), _number, _string)


def _array(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")


def _object(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(_string, children), max_size=4)
    return pairs.map(lambda ps: "{" + ",".join(f"{k}:{v}" for k, v in ps) + "}")


_deep = st.integers(1, 6000).flatmap(lambda n: st.sampled_from([
    "[" * n + "]" * n,
    '{"a":' * n + "1" + "}" * n,
    "[" * n,  # unterminated
]))
_value = st.one_of(
    st.recursive(_scalar, lambda c: _array(c) | _object(c), max_leaves=12), _deep)


def _request(commands: list[str]) -> st.SearchStrategy[bytes]:
    """A request line (without the newline): mostly shaped like a request, fields random."""
    cmd = st.one_of(st.sampled_from(commands).map(json.dumps), _value)

    def args_for(cmd_text: str) -> st.SearchStrategy[str]:
        try:
            spec = COMMANDS.get(json.loads(cmd_text))
        except (ValueError, TypeError, RecursionError):
            spec = None
        names = [a.name for a in spec.args] if spec is not None else []
        names = names or ["session", "peer", "x"]
        known = st.lists(st.tuples(st.sampled_from(names).map(json.dumps), _value), max_size=4)
        return st.one_of(
            known.map(lambda ps: "{" + ",".join(f"{k}:{v}" for k, v in ps) + "}"), _value)

    def shaped(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
        c = draw(cmd)
        fields = [f'"id":{draw(_value)}', f'"cmd":{c}', f'"args":{draw(args_for(c))}']
        fields = draw(st.permutations(fields))
        fields = fields[: draw(st.integers(1, 3))] if draw(st.booleans()) else fields
        if draw(st.integers(0, 9)) == 0:
            fields.append(f"{draw(_string)}:{draw(_value)}")
        return ("{" + ",".join(fields) + "}").encode("utf-8", "surrogatepass")

    return st.one_of(
        st.composite(lambda draw: shaped(draw))(),
        _value.map(lambda v: v.encode("utf-8", "surrogatepass")),
        st.binary(max_size=64).map(lambda b: b.replace(b"\n", b" ")),
    )


# --- a blocking client -------------------------------------------------------------------------


def _exchange(path: str, payload: bytes, replies: int, timeout: float = 20.0) -> list[bytes]:
    """Send ``payload`` on a fresh connection; the first ``replies`` reply lines (fewer if the
    server closed first)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < replies:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n")[:replies]


def _strict_json(line: bytes) -> dict[str, Any]:
    def no_constants(name: str) -> None:
        raise AssertionError(f"reply holds {name}: not JSON")

    obj = json.loads(line.decode("utf-8"), parse_constant=no_constants)
    assert isinstance(obj, dict), line
    return obj


_STATUS = b'{"id":"probe","cmd":"status"}\n'


def _check_one(path: str, line: bytes) -> dict[str, Any]:
    """The fuzzed line and a status probe on one connection: one well-formed reply to each
    (the connection survives any bad line that fits the size limit)."""
    if len(line) > MAX_REQUEST_BYTES:
        # answered, then closed on purpose (the line's end is unknown); the probe goes alone
        (first,) = _exchange(path, line + b"\n", replies=1)
        reply = _strict_json(first)
        assert reply["error"]["code"] == "request_too_large", reply
        _first, second = _exchange(path, _STATUS + _STATUS, replies=2)
    else:
        first, second = _exchange(path, line + b"\n" + _STATUS, replies=2)
        reply = _strict_json(first)
    assert isinstance(reply.get("ok"), bool), reply
    assert reply["ok"] or {"code", "message"} <= set(reply["error"]), reply
    probe = _strict_json(second)
    assert probe["id"] == "probe" and probe["ok"] is True, probe
    return reply


# --- in-process server -------------------------------------------------------------------------


def _result_for(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    spec = COMMANDS.get(cmd)
    fields = spec.result if spec is not None else ()
    return {**dict.fromkeys(fields), "args": args}


@contextmanager
def _server_thread(handlers: dict[str, Any], log: RecordingLog) -> Iterator[str]:
    """A ControlServer on a real Unix socket, served by ``trio.run`` in a thread (so a
    Hypothesis test can stay synchronous)."""
    with socket_dir() as d:
        path = os.path.join(d, "control.sock")
        ready = threading.Event()
        failure: list[BaseException] = []
        box: dict[str, Any] = {}

        async def main() -> None:
            server = ControlServer(path, handlers, log=log)
            async with trio.open_nursery() as nursery:
                box["token"] = trio.lowlevel.current_trio_token()
                box["scope"] = nursery.cancel_scope
                await nursery.start(server.serve)
                ready.set()

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as exc:  # reported to the test below
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(10)
        assert not failure, failure
        try:
            yield path
        finally:
            if "scope" in box:
                trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
            thread.join(10)
        # The server task itself never failed (a crash would end trio.run with it).
        assert not failure, failure


@pytest.mark.full
def test_fuzzed_requests_never_stop_the_control_server(full_run: bool) -> None:
    log = RecordingLog()

    def make(cmd: str) -> Any:
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            return _result_for(cmd, args)
        return handler

    handlers = {name: make(name) for name in COMMANDS}
    with _server_thread(handlers, log) as path:

        @_settings(full_run, ci=300, full=5000)
        @given(line=_request(sorted(COMMANDS)))
        def check(line: bytes) -> None:
            _check_one(path, line)

        check()
    assert "control connection failed" not in log.events()
    assert "control reply cannot be encoded" not in log.events()


@pytest.mark.parametrize("line", [
    b'{"id":"\\ud800","cmd":"status"}',
    b'{"id":"\\udfff","cmd":"nope"}',
    b'{"id":"a\\ud800","cmd":"status","args":{"x":1}}',
    b'{"id":1,"cmd":"session","args":{"session":"\\ud800"}}',
    b'{"id":1,"cmd":"\\ud800"}',
    b'{"id":1e999,"cmd":"status"}',
    b'{"id":1,"cmd":"ping","args":{"peer":"b","timeout":1e999}}',
    b'{"id":1,"cmd":"ping","args":{"peer":"b","timeout":NaN}}',
    b'{"id":' + b"9" * 5000 + b',"cmd":"status"}',
    b'{"id":1,"cmd":"status","args":' + b"[" * 60000 + b"}",
    b'{"id":1,"cmd":"status","args":' + b"[" * 100000 + b"}",  # too large: answered, closed
])
def test_each_known_killer_gets_an_error_reply(line: bytes) -> None:
    # The request that stopped a node (issue 13): a lone surrogate in the id made encoding the
    # reply raise UnicodeEncodeError inside the server.
    log = RecordingLog()

    async def status(_args: dict[str, Any]) -> dict[str, Any]:
        return _result_for("status", {})

    with _server_thread({"status": status, "session": status, "ping": status}, log) as path:
        reply = _check_one(path, line)
    assert reply["ok"] is False
    assert reply["error"]["code"] in {"bad_request", "invalid_args", "unknown_command",
                                      "request_too_large"}
    assert "control connection failed" not in log.events()


def test_a_reply_json_cannot_carry_becomes_an_internal_error_reply() -> None:
    log = RecordingLog()
    results: list[Any] = [{"x": float("nan")}, {"x": "\ud800"}, {"x": object()},
                          {"\udc80": 1}, {"x": float("inf")}]

    async def bad(_args: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = results.pop(0)
        return out

    async def bad_message(_args: dict[str, Any]) -> dict[str, Any]:
        raise NotFoundError("no session '\udcff'")  # an error message that is not text

    async def status(_args: dict[str, Any]) -> dict[str, Any]:
        return _result_for("status", {})

    handlers = {"bad": bad, "bad_message": bad_message, "status": status}
    with _server_thread(handlers, log) as path:
        for _ in range(5):
            (first,) = _exchange(path, b'{"id":"r","cmd":"bad"}\n', replies=1)
            reply = _strict_json(first)
            assert reply["id"] == "r"
            assert reply["error"]["code"] == "internal"
        (first,) = _exchange(path, b'{"id":"m","cmd":"bad_message"}\n', replies=1)
        reply = _strict_json(first)
        assert reply["id"] == "m"
        assert reply["error"]["code"] == "internal"
        assert "could not be encoded" in reply["error"]["message"]
        _check_one(path, b'{"id":1,"cmd":"bad_message"}')
    assert log.events("error").count("control handler crashed") == 5
    assert "control reply cannot be encoded" in log.events("error")


# --- a real node -------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.full
def test_fuzzed_requests_never_stop_a_real_node(full_run: bool) -> None:
    with cluster(["a", "b"]) as [a, _b]:
        a.start()
        path = str(a.socket_path)
        # The node's own command list: an unknown command's reply names every known one.
        (first,) = _exchange(path, b'{"id":0,"cmd":"-list-"}\n', replies=1)
        known_text = _strict_json(first)["error"]["message"].split("(known: ", 1)[1]
        # ``shutdown`` is the one legitimate way to stop the node by request: left out
        commands = sorted(set(known_text.rstrip(")").split(", ")) - {"shutdown"})
        assert "status" in commands and "dkd" in commands

        @_settings(full_run, ci=120, full=3000)
        @given(line=_request(commands))
        def check(line: bytes) -> None:
            _check_one(path, line)

        check()
        assert a.proc is not None and a.proc.poll() is None
        status = a.ctl("status")
        assert status["ready"] is True
        events = [e.get("event") for e in a.log_events()]
        assert "control connection failed" not in events
        assert "control reply cannot be encoded" not in events
