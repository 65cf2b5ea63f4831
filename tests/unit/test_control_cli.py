"""`aura-node ctl ...` parses every contract command into the right request (no sockets: the
client call is replaced by a recorder)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from aura_node.cli import main
from aura_node.cli.ctl import socket_path_for
from aura_node.config import NodeHome
from aura_node.control import client
from aura_node.control.protocol import COMMANDS, ControlReplyError, ControlTimeoutError
from aura_node.errors import NodeNotRunningError

Call = tuple[str, str, dict[str, Any], float]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    recorded: list[Call] = []

    def fake_call(path: str, cmd: str, args: dict[str, Any] | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
        recorded.append((str(path), cmd, dict(args or {}), timeout))
        return {"cmd": cmd}

    monkeypatch.setattr(client, "call", fake_call)
    return recorded


H = "/srv/aura/alpha"
SOCK = f"{H}/control.sock"

CASES: list[tuple[list[str], str, dict[str, Any]]] = [
    (["status"], "status", {}),
    (["peers"], "peers", {}),
    (["sessions"], "sessions", {}),
    (["sessions", "--all"], "sessions", {"all": True}),
    (["session", "ab12"], "session", {"session": "ab12"}),
    (["shutdown"], "shutdown", {}),
    (["reload"], "reload", {}),
    (["ping", "bravo"], "ping", {"peer": "bravo"}),
    (["ping", "bravo", "--timeout", "2.5"], "ping", {"peer": "bravo", "timeout": 2.5}),
    (["account", "create", "--devices", "a,b,c", "--threshold", "2"], "account.create",
     {"devices": ["a", "b", "c"], "threshold": 2}),
    (["account", "create", "--devices", "a, b,c", "--threshold", "2", "--guardians",
      "g1,g2,g3", "--guardian-threshold", "2"], "account.create",
     {"devices": ["a", "b", "c"], "threshold": 2, "guardians": ["g1", "g2", "g3"],
      "guardian_threshold": 2}),
    (["account", "show"], "account.show", {}),
    (["account", "add-device", "--name", "d4"], "account.add", {"name": "d4"}),
    (["account", "add-device", "--name", "d5", "--threshold", "3"], "account.add",
     {"name": "d5", "threshold": 3}),
    (["account", "remove-device", "--name", "d3"], "account.remove", {"name": "d3"}),
    (["account", "guardians", "--set", "g1,g2,g4", "--threshold", "2"], "account.guardians",
     {"set": ["g1", "g2", "g4"], "threshold": 2}),
    (["account", "reshare", "--devices", "d6,d7,d8", "--threshold", "2"], "account.reshare",
     {"devices": ["d6", "d7", "d8"], "threshold": 2}),
    (["account", "reshare", "--devices", "d6,d7", "--threshold", "2", "--guardians", "g1,g2",
      "--guardian-threshold", "1", "--timeout", "30"], "account.reshare",
     {"devices": ["d6", "d7"], "threshold": 2, "guardians": ["g1", "g2"],
      "guardian_threshold": 1, "timeout": 30.0}),
    (["dkd", "--context", "mail"], "dkd", {"context": "mail"}),
    (["dkd", "sign", "--context", "mail", "--file", "/tmp/f"], "dkd.sign",
     {"context": "mail", "file": "/tmp/f"}),
    (["dkd", "export", "--context", "mail", "--out", "/tmp/k.pem"], "dkd.export",
     {"context": "mail", "out": "/tmp/k.pem"}),
    (["dkd", "--context", "mail", "--participants", "a,b", "--timeout", "30"], "dkd",
     {"context": "mail", "participants": ["a", "b"], "timeout": 30.0}),
    (["dkd", "pending"], "dkd.pending", {}),
    (["dkd", "approve", "s1"], "dkd.approve", {"session": "s1"}),
    (["dkd", "refuse", "s1"], "dkd.refuse", {"session": "s1"}),
    (["dkd", "refuse", "s1", "--reason", "not now"], "dkd.refuse",
     {"session": "s1", "reason": "not now"}),
    (["recovery", "start", "--account", "acc1", "--guardians", "g1,g2,g3"], "recovery.start",
     {"account": "acc1", "guardians": ["g1", "g2", "g3"]}),
    (["recovery", "approve", "s1"], "recovery.approve", {"session": "s1"}),
    (["recovery", "pending"], "recovery.pending", {}),
    (["recovery", "veto", "s1"], "recovery.veto", {"session": "s1"}),
    (["recovery", "status", "s1"], "recovery.status", {"session": "s1"}),
    (["journal", "accept-rollback", "--code", "c0de"], "journal.accept_rollback",
     {"code": "c0de"}),
    (["journal", "accept-rollback", "--code", "c0de", "--reason", "restored"],
     "journal.accept_rollback", {"code": "c0de", "reason": "restored"}),
]


@pytest.mark.parametrize(("argv", "cmd", "args"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_every_contract_command_maps_to_its_request(
    argv: list[str], cmd: str, args: dict[str, Any], calls: list[Call],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ctl", "--home", H, *argv]) == 0
    assert len(calls) == 1
    path, got_cmd, got_args, _timeout = calls[0]
    assert (path, got_cmd, got_args) == (SOCK, cmd, args)
    # The request is one the node validates as well-formed.
    from aura_node.control.protocol import validate_args

    validate_args(COMMANDS[cmd], got_args)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == {"cmd": cmd}


def test_every_table_command_is_reachable_from_the_cli() -> None:
    assert {c[1] for c in CASES} == set(COMMANDS)


@pytest.mark.parametrize(
    "argv",
    [
        ["ctl", "--home", H, "status"],
        ["ctl", "status", "--home", H],
        ["ctl", "--home", "/elsewhere", "status", "--home", H],
        ["ctl", "--home", H, "recovery", "approve", "s1"],
        ["ctl", "recovery", "approve", "s1", "--home", H],
        ["ctl", "account", "create", "--home", H, "--devices", "a", "--threshold", "1"],
    ],
)
def test_home_is_accepted_after_ctl_and_after_the_subcommand(
    argv: list[str], calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    assert calls[0][0] == SOCK
    capsys.readouterr()


def test_home_defaults_to_aura_home_and_socket_overrides(
    calls: list[Call], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AURA_HOME", H)
    assert main(["ctl", "status"]) == 0
    assert main(["ctl", "status", "--socket", "/tmp/x.sock"]) == 0
    assert main(["ctl", "--socket", "/tmp/y.sock", "peers"]) == 0
    assert [c[0] for c in calls] == [SOCK, "/tmp/x.sock", "/tmp/y.sock"]
    capsys.readouterr()


def test_missing_home_is_a_clear_error(
    calls: list[Call], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AURA_HOME", raising=False)
    assert main(["ctl", "status"]) == 1
    assert "pass --home DIR or set $AURA_HOME" in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize("home", ["rel/home", "~/h", "/abs/h", "./x/"])
def test_socket_path_matches_node_home(home: str, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/op")
    assert Path(socket_path_for(home)) == NodeHome.resolve(home).control_socket
    monkeypatch.setenv("AURA_HOME", home)
    assert Path(socket_path_for(None)) == NodeHome.resolve(None).control_socket


def test_timeouts_reach_the_client(calls: list[Call], capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    main(["ctl", "--home", H, "status"])
    main(["ctl", "--home", H, "--timeout", "3", "status"])
    main(["ctl", "--home", H, "dkd", "--context", "c"])
    main(["ctl", "--home", H, "dkd", "--context", "c", "--timeout", "7"])
    main(["ctl", "--home", H, "--timeout", "7", "dkd", "--context", "c"])
    waits = [c[3] for c in calls]
    assert waits == [10.0, 3.0, 120.0, 12.0, 12.0]
    assert calls[4][2] == {"context": "c", "timeout": 7.0}
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["account", "create", "--devices", "a,b", "--threshold", "3"], "exceeds the 2 device"),
        (["account", "create", "--devices", "a,b", "--threshold", "1", "--guardians", "g"],
         "go together"),
        (["account", "create", "--devices", "a", "--threshold", "1", "--guardians", "g",
          "--guardian-threshold", "2"], "exceeds the 1 guardian"),
        # --context is required by the derivations, not by pending/approve/refuse
        (["dkd"], "ctl dkd needs --context"),
        (["dkd", "approve"], "ctl dkd approve needs the SESSION"),
        (["dkd", "pending", "--context", "c"], "--context does not go with ctl dkd pending"),
        (["dkd", "approve", "s1", "--reason", "x"], "--reason belongs to ctl dkd refuse"),
        (["dkd", "--context", "c", "--reason", "x"], "go with ctl dkd approve / refuse"),
    ],
)
def test_inconsistent_account_options_are_refused_before_sending(
    argv: list[str], message: str, calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ctl", "--home", H, *argv]) == 1
    assert message in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize(
    "argv",
    [
        ["account", "create", "--devices", "a,,b", "--threshold", "1"],
        ["account", "create", "--devices", "a,a", "--threshold", "1"],
        ["account", "create", "--devices", "a", "--threshold", "0"],
        ["dkd", "--context", "c", "--timeout", "-1"],
        ["session"],
        ["recovery"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], calls: list[Call],
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ctl", "--home", H, *argv])
    assert info.value.code == 2
    assert calls == []
    capsys.readouterr()


@pytest.mark.parametrize(
    ("exc", "code", "stderr"),
    [
        (NodeNotRunningError("node not running: no control socket at X"), 3,
         "aura-node: error: node not running: no control socket at X\n"),
        (ControlReplyError("not_found", "no session 's1'"), 1,
         "aura-node: error: not_found: no session 's1'\n"),
        (ControlTimeoutError("no reply within 1 s"), 4, "aura-node: error: no reply within 1 s\n"),
    ],
)
def test_failures_print_one_line_on_stderr_and_exit_nonzero(
    exc: Exception, code: int, stderr: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def failing(*_a: Any, **_k: Any) -> dict[str, Any]:
        raise exc

    monkeypatch.setattr(client, "call", failing)
    assert main(["ctl", "--home", H, "session", "s1"]) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", stderr)


def test_socket_path_for_uses_the_documented_file_name() -> None:
    assert os.path.basename(socket_path_for("/x")) == NodeHome(Path("/x")).control_socket.name


# --- ctl call ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "cmd", "args", "wait"),
    [
        (["call", "status"], "status", {}, 10.0),
        # a command ctl does not know may run a session: it gets a session's default wait
        (["call", "bench.batch", "--args", '{"requests": []}'], "bench.batch",
         {"requests": []}, 120.0),
        # a built-in session command keeps its table wait; a plugin's own timeout arg is
        # waited for with the same grace; --timeout always wins
        (["call", "dkd", "--args", '{"context": "c", "timeout": 7}'], "dkd",
         {"context": "c", "timeout": 7}, 12.0),
        (["call", "pay.propose", "--args", '{"timeout": 20}'], "pay.propose",
         {"timeout": 20}, 25.0),
        (["call", "pay.propose", "--args", '{"timeout": 20}', "--timeout", "3"], "pay.propose",
         {"timeout": 20}, 3.0),
        (["--timeout", "4", "call", "x.y"], "x.y", {}, 4.0),
    ],
)
def test_call_sends_any_command_with_its_json_args(
    argv: list[str], cmd: str, args: dict[str, Any], wait: float, calls: list[Call],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ctl", "--home", H, *argv]) == 0
    assert calls == [(SOCK, cmd, args, wait)]
    assert json.loads(capsys.readouterr().out) == {"cmd": cmd}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{", "aura-node: error: --args is not valid JSON: Expecting property name enclosed in "
              "double quotes at column 2 of '{'\n"),
        ("[1, 2]", "aura-node: error: --args must be a JSON object (the command's arguments), "
                   "got '[1, 2]'\n"),
        ("null", "aura-node: error: --args must be a JSON object (the command's arguments), "
                 "got 'null'\n"),
    ],
)
def test_call_with_bad_json_args_is_one_line_and_sends_nothing(
    args: str, message: str, calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ctl", "--home", H, "call", "status", "--args", args]) == 1
    assert capsys.readouterr() == ("", message)
    assert calls == []


def test_call_reports_the_nodes_fault_code(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def unknown(*_a: Any, **_k: Any) -> dict[str, Any]:
        raise ControlReplyError("unknown_command", "unknown command 'nope' (known: peers, status)")

    monkeypatch.setattr(client, "call", unknown)
    assert main(["ctl", "--home", H, "call", "nope"]) == 1
    assert capsys.readouterr() == (
        "", "aura-node: error: unknown_command: unknown command 'nope' (known: peers, status)\n")


def test_call_needs_a_command(calls: list[Call], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ctl", "--home", H, "call"])
    assert info.value.code == 2
    assert calls == []


@pytest.mark.parametrize(("argv", "message"), [
    (["dkd", "sign", "--context", "c"], "ctl dkd sign needs --file"),
    (["dkd", "export", "--context", "c"], "ctl dkd export needs --out"),
    (["dkd", "--context", "c", "--file", "f"], "--file belongs to ctl dkd sign"),
])
def test_dkd_sign_and_export_need_their_own_file(
    argv: list[str], message: str, calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ctl", "--home", H, *argv]) != 0
    assert message in capsys.readouterr().err and not calls


def test_dkd_sign_sends_an_absolute_path(
    calls: list[Call], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/tmp")
    assert main(["ctl", "--home", H, "dkd", "sign", "--context", "c", "--file", "doc"]) == 0
    assert calls[0][2]["file"] == "/tmp/doc"
    capsys.readouterr()
