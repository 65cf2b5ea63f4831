"""`aura-node ctl ...`: one request to a running node over its control socket.

Every subcommand sends exactly one request of the command table in
``aura_node.control.protocol`` and prints the reply's result as one JSON object on stdout.
``ctl call COMMAND [--args JSON]`` sends any command, built-in or a plugin's, with the JSON
object as its arguments; the node checks it (an unknown command is answered
``unknown_command`` with the commands it has).

Exit status: 0 success; 1 the node answered with an error (``aura-node: error: CODE: MESSAGE``
on stderr) or the request could not be formed (e.g. ``call --args`` is not a JSON object); 2
usage error (argparse); 3 the node is not running (no socket, or a stale one); 4 no reply
(``--timeout`` passed, or the connection broke).

Options accepted both right after ``ctl`` and after the subcommand (the later one wins):
``--home DIR`` (default ``$AURA_HOME``), ``--socket PATH`` (talk to that socket instead of
``HOME/control.sock``), ``--timeout SECONDS``. For commands that run a protocol session (``ping``,
``dkd``, ``account create``) ``--timeout`` is the session deadline sent to the node and ctl
waits that long plus a few seconds for the node's answer; for the others it is how long ctl
waits. Interrupting ctl stops the wait, not the session (it is journaled and runs on).

Start-up cost matters (an operator or a script runs this in loops): module-level imports stay
at argparse/json/os/sys and the stdlib client; ``tests/integration/test_control_cli.py`` asserts
that ``aura-node ctl status`` imports no Trio, structlog, msgspec or cryptography.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from aura_node.cli import print_json
from aura_node.control import client
from aura_node.control.protocol import (
    COMMANDS,
    ControlConnectionError,
    ControlReplyError,
    ControlTimeoutError,
    InvalidArgsError,
    client_wait,
)
from aura_node.errors import ControlError, HomeError, NodeNotRunningError

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_NOT_RUNNING = 3
EXIT_NO_REPLY = 4

SOCKET_NAME = "control.sock"

ArgsBuilder = Callable[[argparse.Namespace], dict[str, Any]]


def socket_path_for(home: str | None) -> str:
    """``NodeHome.resolve(home).control_socket`` as a string, without importing
    ``aura_node.config`` (tomllib + dataclasses are ~10 ms of ctl start-up). A unit test holds
    the two equal."""
    if home is None:
        home = os.environ.get("AURA_HOME")
        if not home:
            raise HomeError("no node home: pass --home DIR or set $AURA_HOME")
    root = os.path.expanduser(home)
    if not os.path.isabs(root):
        root = os.path.join(os.getcwd(), root)
    return os.path.join(root, SOCKET_NAME)


# --- argument types ------------------------------------------------------------------------------


def names(text: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]``; empty items and duplicates are usage errors."""
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"a name appears twice in {text!r}")
    return items


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


# --- parser --------------------------------------------------------------------------------------


def _connection_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # On the leaf parsers the defaults are SUPPRESS: argparse copies a subparser's defaults over
    # the values the parent parsed, so a leaf default of None would erase `ctl --home D status`.
    default: Any = None if top else argparse.SUPPRESS
    p.add_argument("--home", default=default, help="node home directory (default: $AURA_HOME)")
    p.add_argument("--socket", default=default, metavar="PATH",
                   help="control socket path (default: HOME/control.sock)")
    p.add_argument("--timeout", type=seconds, default=default, metavar="SECONDS",
                   help="how long to wait for the reply; for ping, dkd and account create "
                        "the session deadline sent to the node")


def _leaf(sub: Any, name: str, cmd: str, build: ArgsBuilder, help_text: str
          ) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    _connection_options(p, top=False)
    p.set_defaults(handler=cmd_ctl, ctl_cmd=cmd, ctl_build=build)
    return p


def _no_args(_a: argparse.Namespace) -> dict[str, Any]:
    return {}


def _with_timeout(a: argparse.Namespace, args: dict[str, Any]) -> dict[str, Any]:
    if a.timeout is not None:
        args["timeout"] = a.timeout
    return args


def _account_create(a: argparse.Namespace) -> dict[str, Any]:
    if a.threshold > len(a.devices):
        raise InvalidArgsError(
            f"--threshold {a.threshold} exceeds the {len(a.devices)} device(s) in --devices"
        )
    args: dict[str, Any] = {"devices": a.devices, "threshold": a.threshold}
    if (a.guardians is None) != (a.guardian_threshold is None):
        raise InvalidArgsError("--guardians and --guardian-threshold go together")
    if a.guardians is not None:
        if a.guardian_threshold > len(a.guardians):
            raise InvalidArgsError(
                f"--guardian-threshold {a.guardian_threshold} exceeds the "
                f"{len(a.guardians)} guardian(s) in --guardians"
            )
        args["guardians"] = a.guardians
        args["guardian_threshold"] = a.guardian_threshold
    return _with_timeout(a, args)


def _account_name(a: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {"name": a.name}
    if a.threshold is not None:
        args["threshold"] = a.threshold
    return _with_timeout(a, args)


def _account_reshare(a: argparse.Namespace) -> dict[str, Any]:
    if a.threshold > len(a.devices):
        raise InvalidArgsError(
            f"--threshold {a.threshold} exceeds the {len(a.devices)} device(s) in --devices")
    args: dict[str, Any] = {"devices": a.devices, "threshold": a.threshold}
    if a.guardians is not None:
        if a.guardian_threshold is None:
            raise InvalidArgsError("--guardians needs --guardian-threshold")
        if a.guardian_threshold > len(a.guardians):
            raise InvalidArgsError(
                f"--guardian-threshold {a.guardian_threshold} exceeds the "
                f"{len(a.guardians)} guardian(s) in --guardians")
        args["guardians"] = a.guardians
    if a.guardian_threshold is not None:
        args["guardian_threshold"] = a.guardian_threshold
    return _with_timeout(a, args)


#: ``ctl dkd ACTION`` of a participant's operator: they take a SESSION (not pending), no context
_DKD_CONSENT = ("dkd.pending", "dkd.approve", "dkd.refuse")


def _dkd_consent(a: argparse.Namespace) -> dict[str, Any]:
    """``ctl dkd pending | approve SESSION | refuse SESSION [--reason TEXT]``."""
    action = a.ctl_cmd.split(".", 1)[1]
    for flag in ("context", "participants", "file", "out"):
        if getattr(a, flag) is not None:
            raise InvalidArgsError(f"--{flag} does not go with ctl dkd {action}")
    if a.reason is not None and a.ctl_cmd != "dkd.refuse":
        raise InvalidArgsError("--reason belongs to ctl dkd refuse")
    if a.ctl_cmd == "dkd.pending":
        if a.session is not None:
            raise InvalidArgsError(f"ctl dkd pending takes no SESSION, got {a.session!r}")
        return {}
    if a.session is None:
        raise InvalidArgsError(f"ctl dkd {action} needs the SESSION (see ctl dkd pending)")
    args: dict[str, Any] = {"session": a.session}
    if a.reason is not None:
        args["reason"] = a.reason
    return args


def _dkd(a: argparse.Namespace) -> dict[str, Any]:
    if a.ctl_cmd in _DKD_CONSENT:
        return _dkd_consent(a)
    if a.context is None:
        raise InvalidArgsError(f"ctl {a.ctl_cmd.replace('.', ' ')} needs --context")
    if a.session is not None or a.reason is not None:
        raise InvalidArgsError("SESSION and --reason go with ctl dkd approve / refuse")
    args: dict[str, Any] = {"context": a.context}
    if a.participants is not None:
        args["participants"] = a.participants
    # `dkd sign` / `dkd export`: the node resolves no relative path (its cwd is not ours)
    for flag, key in (("file", "file"), ("out", "out")):
        wanted = a.ctl_cmd == ("dkd.sign" if key == "file" else "dkd.export")
        value = getattr(a, flag)
        if wanted and value is None:
            raise InvalidArgsError(f"ctl {a.ctl_cmd.replace('.', ' ')} needs --{flag}")
        if not wanted and value is not None:
            raise InvalidArgsError(f"--{flag} belongs to ctl dkd "
                                   f"{'sign' if key == 'file' else 'export'}")
        if wanted:
            args[key] = os.path.abspath(value)
    return _with_timeout(a, args)


def _call_args(a: argparse.Namespace) -> dict[str, Any]:
    """``--args JSON`` of ``ctl call``: a JSON object, else the request cannot be formed."""
    try:
        value = json.loads(a.args)
    except json.JSONDecodeError as exc:
        raise InvalidArgsError(
            f"--args is not valid JSON: {exc.msg} at column {exc.colno} of {a.args!r}"
        ) from None
    except RecursionError:
        raise InvalidArgsError("--args is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidArgsError(
            f"--args must be a JSON object (the command's arguments), got {a.args!r}"
        )
    return value


class _DkdAction(argparse.Action):
    """``ctl dkd [sign|export|pending|approve|refuse]``: the optional action picks the control
    command."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values:
            namespace.ctl_cmd = f"dkd.{values}"


def register(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl", help="talk to a running node over its control socket",
        description="Send one request to a running node and print its result as one JSON "
        "object. Exit 0 ok, 1 error reply, 3 node not running, 4 no reply.")
    _connection_options(ctl, top=True)
    csub = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    _leaf(csub, "status", "status", _no_args, "identity, readiness, peer links, session counts")
    _leaf(csub, "peers", "peers", _no_args, "pinned peers and their link state")
    p = _leaf(csub, "sessions", "sessions", lambda a: {"all": True} if a.all else {},
              "active sessions")
    p.add_argument("--all", action="store_true", help="include finished and aborted sessions")
    p = _leaf(csub, "session", "session", lambda a: {"session": a.session},
              "one session in detail")
    p.add_argument("session", metavar="ID")
    _leaf(csub, "shutdown", "shutdown", _no_args, "stop the node (as on SIGTERM)")
    _leaf(csub, "reload", "reload", _no_args, "re-read the pinned peers from config.toml")
    p = _leaf(csub, "ping", "ping", lambda a: _with_timeout(a, {"peer": a.peer}),
              "run the ping choreography with a peer")
    p.add_argument("peer", metavar="PEER")

    account = csub.add_parser("account", help="account genesis, view and resharing")
    asub = account.add_subparsers(dest="account_command", metavar="ACTION", required=True)
    p = _leaf(asub, "create", "account.create", _account_create,
              "create the account; this device deals the shares")
    p.add_argument("--devices", type=names, required=True, help="device names, a,b,c")
    p.add_argument("--threshold", type=positive_int, required=True)
    p.add_argument("--guardians", type=names, default=None, help="guardian names, g1,g2,g3")
    p.add_argument("--guardian-threshold", type=positive_int, default=None)
    _leaf(asub, "show", "account.show", _no_args, "the account this device holds (and its epoch)")
    # resharing: each is one reshare session coordinated by this (current) device; s, S and
    # every derived key stay the same, the holders and thresholds change
    p = _leaf(asub, "add-device", "account.add", _account_name,
              "add a device to the account (a reshare: the account key and every derived "
              "key stay the same)")
    p.add_argument("--name", required=True, help="the device to add")
    p.add_argument("--threshold", type=positive_int, default=None,
                   help="the new device threshold (default: unchanged)")
    p = _leaf(asub, "remove-device", "account.remove", _account_name,
              "remove a device from the account (a reshare it takes no part in: the lost "
              "phone case); its share becomes useless")
    p.add_argument("--name", required=True, help="the device to remove")
    p.add_argument("--threshold", type=positive_int, default=None,
                   help="the new device threshold (default: unchanged if it still fits)")
    p = _leaf(asub, "guardians", "account.guardians",
              lambda a: _with_timeout(a, {"set": a.set, "threshold": a.threshold}),
              "replace the account's guardians (a reshare)")
    p.add_argument("--set", type=names, required=True, help="the new guardians, g1,g2,g3")
    p.add_argument("--threshold", type=positive_int, required=True,
                   help="the new guardian threshold")
    p = _leaf(asub, "reshare", "account.reshare", _account_reshare,
              "reshare the account to new devices and threshold (and guardians); after a "
              "recovery, the way back from 1-of-1 to t-of-n")
    p.add_argument("--devices", type=names, required=True, help="the new devices, a,b,c")
    p.add_argument("--threshold", type=positive_int, required=True)
    p.add_argument("--guardians", type=names, default=None,
                   help="the new guardians (default: unchanged)")
    p.add_argument("--guardian-threshold", type=positive_int, default=None)

    p = _leaf(csub, "dkd", "dkd", _dkd, "derive the account's key for a context (threshold); "
              "pending/approve/refuse: decide requests this node's policy parked")
    p.add_argument("--context", default=None,
                   help="the context string, e.g. an app name (dkd, dkd sign, dkd export)")
    p.add_argument("--participants", type=names, default=None,
                   help="devices to ask (default: all account devices)")
    p.add_argument("action", nargs="?", choices=("sign", "export", "pending", "approve",
                                                 "refuse"), action=_DkdAction,
                   help="sign: sign --file with the derived key (hex signature); export: "
                        "write the derived key to --out as PKCS#8 PEM (0600, new file); "
                        "pending: requests waiting for this node's operator; approve/refuse "
                        "SESSION: answer one (refuse: a signed refusal with --reason)")
    p.add_argument("session", nargs="?", default=None, metavar="SESSION",
                   help="dkd approve / refuse: the session (from ctl dkd pending)")
    p.add_argument("--reason", default=None, help="dkd refuse: why (sent to the requester)")
    p.add_argument("--file", default=None, help="dkd sign: the file to sign")
    p.add_argument("--out", default=None, help="dkd export: the PEM file to create")

    recovery = csub.add_parser("recovery", help="guardian recovery of an account")
    rsub = recovery.add_subparsers(dest="recovery_command", metavar="ACTION", required=True)
    p = _leaf(rsub, "start", "recovery.start",
              lambda a: {"account": a.account, "guardians": a.guardians},
              "ask guardians to recover an account onto this (new) device")
    p.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    p.add_argument("--guardians", type=names, required=True, help="guardian names, g1,g2,g3")
    for action, cmd, text in (
        ("approve", "recovery.approve", "approve a recovery (guardian)"),
        ("veto", "recovery.veto", "veto a recovery during its cooldown (account device)"),
        ("status", "recovery.status", "state of a recovery session"),
    ):
        p = _leaf(rsub, action, cmd, lambda a: {"session": a.session}, text)
        p.add_argument("session", metavar="SESSION")
    _leaf(rsub, "pending", "recovery.pending", _no_args, "recoveries awaiting this guardian")

    journal = csub.add_parser("journal", help="the running node's journal")
    jsub = journal.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    p = _leaf(jsub, "accept-rollback", "journal.accept_rollback",
              lambda a: {"code": a.code, **({"reason": a.reason} if a.reason else {})},
              "accept the loss a rolled-back or forked journal shows (same as `aura-node "
              "journal accept-rollback`)")
    p.add_argument("--code", required=True, help="the code `journal verify --peers` shows")
    p.add_argument("--reason", default=None, help="why (journaled and logged)")

    p = _leaf(csub, "call", "", _call_args,
              "call any control command the node serves (built-in or a plugin's) with "
              "--args as its arguments; --timeout is how long ctl waits (default: the "
              "command's own timeout argument plus a few seconds; else 10 s for a built-in "
              "query, 120 s for any other command, which may run a session)")
    p.add_argument("command", metavar="COMMAND", help="the control command, e.g. status")
    p.add_argument("--args", default="{}", metavar="JSON",
                   help="the command's arguments as one JSON object (default {})")


# --- handler -------------------------------------------------------------------------------------


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"aura-node: error: {message}\n")
    sys.stderr.flush()
    return code


def cmd_ctl(a: argparse.Namespace) -> int:
    build: ArgsBuilder = a.ctl_build
    args = build(a)
    path = a.socket if a.socket is not None else socket_path_for(a.home)
    if a.ctl_cmd == "":  # ctl call: any command, --timeout is only ctl's own wait
        cmd: str = a.command
        wait = client_wait(cmd, args, a.timeout)
    else:
        cmd = a.ctl_cmd
        assert cmd in COMMANDS, cmd  # the parser only builds commands of the table
        wait = client_wait(cmd, args, None if "timeout" in args else a.timeout)
    try:
        result = client.call(path, cmd, args, timeout=wait)
    except NodeNotRunningError as exc:
        return _error(exc.message, EXIT_NOT_RUNNING)
    except ControlReplyError as exc:
        return _error(f"{exc.remote_code}: {exc.message}", EXIT_ERROR_REPLY)
    except (ControlTimeoutError, ControlConnectionError) as exc:
        return _error(exc.message, EXIT_NO_REPLY)
    except ControlError as exc:
        return _error(f"{exc.code}: {exc.message}", EXIT_ERROR_REPLY)
    print_json(result)
    return EXIT_OK
