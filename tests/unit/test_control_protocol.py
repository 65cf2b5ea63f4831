"""The pure control protocol: framing, request/reply codecs, argument validation, the table."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aura_node.control.protocol as protocol
from aura_node.control.protocol import (
    COMMANDS,
    BadRequestError,
    ControlConnectionError,
    ControlReplyError,
    Fault,
    InvalidArgsError,
    LineFramer,
    RequestTooLargeError,
    client_wait,
    decode_reply,
    decode_request,
    encode_message,
    encode_request,
    error_reply,
    ok_reply,
    render_command_table,
    validate_args,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False,
                                                                      allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def test_docstring_table_is_the_command_table() -> None:
    doc = protocol.__doc__ or ""
    table = doc.split(".. command-table-begin")[1].split(".. command-table-end")[0].strip()
    assert table == render_command_table()


def test_contract_commands_are_all_in_the_table() -> None:
    assert set(COMMANDS) == {
        "status", "peers", "sessions", "session", "shutdown", "reload", "ping",
        "account.create", "account.show", "dkd", "dkd.sign", "dkd.export",
        "account.add", "account.remove", "account.guardians", "account.reshare",
        "dkd.pending", "dkd.approve", "dkd.refuse",
        "recovery.start", "recovery.approve",
        "recovery.pending", "recovery.veto", "recovery.status", "journal.accept_rollback",
    }
    assert set(COMMANDS["status"].result) >= {"name", "device_id", "ready", "peers", "sessions"}
    for reshare in ("account.add", "account.remove", "account.guardians", "account.reshare"):
        assert COMMANDS[reshare].result == ("session", "epoch", "holders")
    assert "epoch" in COMMANDS["account.show"].result
    assert COMMANDS["ping"].result == ("peer", "rtt_ms", "session")
    assert set(COMMANDS["dkd"].result) == {"session", "context", "participants", "fingerprint",
                                           "public_key"}
    assert set(COMMANDS["account.create"].result) >= {"account_id", "public_key", "threshold",
                                                      "devices", "guardians"}
    for spec in COMMANDS.values():
        for arg in spec.args:
            assert arg.kind in protocol.ARG_KINDS


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5), st.data())
def test_framer_reassembles_messages_from_any_chunking(args: dict[str, Any],
                                                      data: st.DataObject) -> None:
    messages = [encode_request(i, f"cmd{i}", args) for i in range(3)]
    stream = b"".join(messages)
    assert stream.count(b"\n") == 3, "JSON text never contains a raw newline"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = LineFramer(max_line=len(stream))
    lines: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        lines += framer.feed(stream[prev:cut])
        prev = cut
    assert lines == [m[:-1] for m in messages]
    assert framer.pending == 0
    assert [decode_request(line) for line in lines] == [
        (i, f"cmd{i}", args) for i in range(3)
    ]


def test_framer_refuses_an_oversized_line_even_split_and_then_stays_failed() -> None:
    framer = LineFramer(max_line=10)
    assert framer.feed(b"0123456789\n") == [b"0123456789"]
    assert framer.feed(b"01234") == []
    with pytest.raises(RequestTooLargeError, match="exceeds 10 bytes"):
        framer.feed(b"567890")
    with pytest.raises(RequestTooLargeError):
        framer.feed(b"\n")
    # An oversized line that arrives whole with its newline is refused too.
    with pytest.raises(RequestTooLargeError):
        LineFramer(max_line=4).feed(b"12345\n")


@pytest.mark.parametrize(
    ("line", "message", "request_id"),
    [
        (b"\xff", "not UTF-8", None),
        (b"status", "not JSON", None),
        (b"[]", "must be a JSON object, got an array", None),
        (b'{"id": 1.5, "cmd": "x"}', "id must be an integer, a string or null", None),
        (b'{"id": [1], "cmd": "x"}', "got an array", None),
        (b'{"id": 3}', "needs a non-empty string cmd, got nothing", 3),
        (b'{"id": "a", "cmd": ""}', "non-empty string cmd", "a"),
        (b'{"id": 4, "cmd": 7}', "got a number", 4),
        (b'{"id": 5, "cmd": "x", "args": "y"}', "args must be a JSON object", 5),
        (b'{"id": 6, "cmd": "x", "argz": {}}', "unknown request field(s) argz", 6),
        (b"[" * 100000 + b"]" * 100000, "not JSON", None),
    ],
)
def test_bad_requests_say_what_is_wrong(line: bytes, message: str, request_id: Any) -> None:
    with pytest.raises(BadRequestError, match=re.escape(message)) as info:
        decode_request(line)
    assert info.value.code == "bad_request"
    assert info.value.request_id == request_id


def test_request_defaults() -> None:
    assert decode_request(b'{"cmd": "status"}') == (None, "status", {})


@pytest.mark.parametrize(
    ("cmd", "args", "problem"),
    [
        ("status", {"x": 1}, "unknown argument(s) x (allowed: none)"),
        ("ping", {}, "missing required argument 'peer'"),
        ("ping", {"peer": ""}, "'peer' must be a non-empty string"),
        ("ping", {"peer": "b", "timeout": 0}, "'timeout' must be a number > 0"),
        ("ping", {"peer": "b", "timeout": True}, "'timeout' must be a number > 0"),
        ("account.create", {"devices": ["a", "a"], "threshold": 1}, "distinct"),
        ("account.create", {"devices": [], "threshold": 1}, "non-empty list"),
        ("account.create", {"devices": ["a"], "threshold": 0}, "integer >= 1"),
        ("account.create", {"devices": ["a"], "threshold": 1.0}, "integer >= 1"),
        ("sessions", {"all": 1}, "true or false"),
    ],
)
def test_validate_args_rejects(cmd: str, args: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArgsError) as info:
        validate_args(COMMANDS[cmd], args)
    assert problem in info.value.message
    assert info.value.code == "invalid_args"


def test_validate_args_accepts_optional_absent_or_null() -> None:
    validate_args(COMMANDS["dkd"], {"context": "mail"})
    validate_args(COMMANDS["dkd"], {"context": "mail", "participants": None,
                                    "timeout": 2.5})
    validate_args(COMMANDS["account.create"], {"devices": ["a", "b", "c"], "threshold": 2,
                                               "guardians": ["g1"], "guardian_threshold": 1})


def test_replies_round_trip_and_errors_carry_the_servers_code() -> None:
    assert decode_reply(encode_message(ok_reply(7, {"a": 1}))[:-1], expect_id=7) == {"a": 1}
    with pytest.raises(ControlReplyError) as info:
        decode_reply(encode_message(error_reply(7, "not_found", "no such session"))[:-1],
                     expect_id=7)
    assert (info.value.remote_code, info.value.message) == ("not_found", "no such session")
    assert info.value.to_json() == {"code": "not_found", "message": "no such session"}
    # Errors sent before the request was read carry id null and are still errors.
    with pytest.raises(ControlReplyError) as info:
        decode_reply(json.dumps(error_reply(None, "forbidden", "uid 5")).encode(), expect_id=7)
    assert info.value.remote_code == "forbidden"


@pytest.mark.parametrize(
    "line",
    [b"garbage", b"[]", b'{"ok": "yes"}', b'{"id": 8, "ok": true, "result": {}}',
     b'{"id": 7, "ok": true, "result": []}', b'{"id": 7, "ok": false}'],
)
def test_non_replies_are_connection_errors(line: bytes) -> None:
    with pytest.raises(ControlConnectionError):
        decode_reply(line, expect_id=7)


def test_encode_message_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_message({"x": float("nan")})
    with pytest.raises(TypeError):
        encode_message({"x": b"bytes"})
    assert encode_message({"s": "a\nb"}).count(b"\n") == 1


def test_client_wait_follows_session_deadlines() -> None:
    assert client_wait("status", {}, None) == protocol.DEFAULT_WAIT_SECONDS
    assert client_wait("status", {}, 3.0) == 3.0
    assert client_wait("dkd", {"context": "c"}, None) == protocol.DEFAULT_SESSION_WAIT_SECONDS
    assert client_wait("dkd", {"context": "c", "timeout": 2}, None) == (
        2 + protocol.SESSION_WAIT_GRACE_SECONDS)
    # a protocol's declared command (ctl call) may run a session: its timeout, else a session's
    assert client_wait("payment.propose", {}, None) == protocol.DEFAULT_SESSION_WAIT_SECONDS
    assert client_wait("payment.propose", {"timeout": 4}, None) == (
        4 + protocol.SESSION_WAIT_GRACE_SECONDS)


def test_fault_codes_are_distinct_snake_case() -> None:
    values = [f.value for f in Fault]
    assert len(set(values)) == len(values)
    assert all(v.replace("_", "").isalpha() and v.islower() for v in values)


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_request_only_ever_raises_bad_request(line: bytes) -> None:
    try:
        request = decode_request(line)
    except BadRequestError as exc:
        assert exc.message and exc.code == "bad_request"
    else:
        assert isinstance(request.cmd, str) and request.cmd
        assert isinstance(request.args, dict)
