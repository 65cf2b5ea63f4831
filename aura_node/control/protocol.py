"""Control socket wire protocol: framing, requests, replies, fault codes, the command table.

Pure (json and the error hierarchy only): both the Trio server and the stdlib ctl client use
it, and the client must start fast, so no dataclasses (``inspect`` alone costs ~9 ms), no
msgspec, no Trio here.

Theory of operation
-------------------
One connection carries any number of request/reply exchanges, strictly in turn. Each message
is one JSON object encoded as UTF-8 and terminated by a single ``\\n`` (JSON Lines)::

    request  {"id": 7, "cmd": "status", "args": {}}
    reply    {"id": 7, "ok": true, "result": {...}}
    error    {"id": 7, "ok": false, "error": {"code": "not_found", "message": "..."}}

Why lines and not a length prefix: a JSON encoder never emits a raw newline (newlines inside
strings are escaped), so ``\\n`` is an unambiguous terminator and the framing stays in sync
after any malformed request: the next line is the next request, so a bad request costs one
error reply, not the connection. It also keeps the socket usable by hand
(``socat - UNIX-CONNECT:HOME/control.sock``), where a human typing ``status`` gets a
``bad_request`` reply instead of a 1.9 GB length read from the ASCII bytes "stat". The size
bound a length prefix gives up front is enforced while buffering: a line longer than
``MAX_REQUEST_BYTES`` is answered with ``request_too_large`` and the connection is then closed,
deliberately, because the end of that request cannot be found without reading unbounded input.
Never pickle or marshal: the node trusts nothing it parses from the socket.

A request must be text the reply can echo: lone surrogate escapes (``"\\ud800"``), NaN,
Infinity, numbers beyond the float range and integers past Python's digit limit are
``bad_request``. ``id`` is an integer, a string or null (echoed back, so a client can match
replies); ``args``
may be omitted (``{}``); ``cmd`` is required. Fault codes are the ``Fault`` values below plus
the ``code`` of any ``AuraError`` a handler raises (e.g. ``config_invalid``, ``journal_failed``).

Command table
-------------
The node implements these requests (plus those of its plugins, which ``aura-node ctl call``
sends; an unknown one is answered ``unknown_command`` with the node's list). ``COMMANDS``
below is the same table as data: the server validates ``args`` against it before a handler
runs, and a unit test checks this text against ``render_command_table()``. Argument kinds:
``str`` non-empty string, ``int`` integer >= 1, ``number`` number > 0 (seconds), ``bool``,
``names`` non-empty list of distinct non-empty strings; ``?`` marks an optional argument.
Results are JSON objects holding at least the listed fields.

.. command-table-begin

status            args    {}
                  result  name, device_id, role, ready, peers, sessions
peers             args    {}
                  result  peers
sessions          args    {all?: bool}
                  result  sessions
session           args    {session: str}
                  result  session, protocol, role, state
shutdown          args    {}
                  result  stopping
reload            args    {}
                  result  peers, added, removed
ping              args    {peer: str, timeout?: number}
                  result  peer, rtt_ms, session
account.create    args    {devices: names, threshold: int, guardians?: names,
                          guardian_threshold?: int, timeout?: number}
                  result  account_id, public_key, threshold, devices, guardians,
                          guardian_threshold
account.show      args    {}
                  result  account_id, public_key, threshold, devices, guardians,
                          guardian_threshold, epoch
account.add       args    {name: str, threshold?: int, timeout?: number}
                  result  session, epoch, holders
account.remove    args    {name: str, threshold?: int, timeout?: number}
                  result  session, epoch, holders
account.guardians args    {set: names, threshold: int, timeout?: number}
                  result  session, epoch, holders
account.reshare   args    {devices: names, threshold: int, guardians?: names,
                          guardian_threshold?: int, timeout?: number}
                  result  session, epoch, holders
dkd               args    {context: str, participants?: names, timeout?: number}
                  result  session, context, participants, fingerprint, public_key
dkd.sign          args    {context: str, file: str, participants?: names, timeout?: number}
                  result  session, context, fingerprint, public_key, signature
dkd.export        args    {context: str, out: str, participants?: names, timeout?: number}
                  result  session, context, fingerprint, public_key, path
dkd.pending       args    {}
                  result  pending
dkd.approve       args    {session: str}
                  result  session, state, decision
dkd.refuse        args    {session: str, reason?: str}
                  result  session, state, decision, reason
recovery.start    args    {account: str, guardians: names}
                  result  session, account, guardians, state
recovery.approve  args    {session: str}
                  result  session, state
recovery.pending  args    {}
                  result  pending
recovery.veto     args    {session: str}
                  result  session, state
recovery.status   args    {session: str}
                  result  session, account, state, approvals
journal.accept_rollback
                  args    {code: str, reason?: str}
                  result  accepted, code, state

.. command-table-end

Shapes of the nested result fields (the runtime fills them):

* ``peers``: list of ``{"name", "device_id", "role", "address", "link"}``; ``link`` is
  ``"up"`` (hello/ack done), ``"connecting"`` or ``"down"``. In ``reload`` ``peers``, ``added``
  and ``removed`` are lists of peer names.
* ``sessions`` (status): ``{STATE: count}`` over the session table, e.g.
  ``{"Completed": 3, "CommitmentPhase": 1}``; (sessions): list of ``{"session", "protocol",
  "role", "state"}``, the active ones only unless ``all`` is true.
* ``ready``: true once links listen and rehydration is done (the READY=1 moment).
* ``stopping``: true; the node replies first, then shuts down as on SIGTERM.
* ``rtt_ms``: number; ``session``: the session id (hex) of the protocol run.
* ``dkd.sign`` / ``dkd.export``: ``file`` and ``out`` are absolute paths (the node's working
  directory is not the caller's); ``signature`` is the hex Ed25519 signature over the file's
  bytes; ``path`` the PKCS#8 PEM written (0600; ``conflict`` if it exists).
* ``devices``/``guardians``/``participants``: lists of names; ``public_key``: hex;
  ``fingerprint``: hex; ``threshold``/``guardian_threshold``: integers (0 without guardians).
* ``pending``: list of ``{"session", "account", "new_device"}`` awaiting this guardian
  (``recovery.pending``); list of ``{"session", "account", "requester", "context", "age"}``
  DKD requests awaiting this node's operator (``dkd.pending``; ``age`` in seconds).
* ``decision`` (``dkd.approve`` / ``dkd.refuse``): ``"approved"`` or ``"refused"``, once the
  signed answer is journaled; ``reason`` is the refusal as the requester receives it.
* ``epoch`` (account views, reshares): the account's epoch number (0 after genesis or
  recovery, one more per reshare); ``holders`` (reshares): ``{"devices": names, "guardians":
  names}`` of the new epoch.
* ``approvals``: list of guardian names that approved so far; ``state`` is the local state
  name (e.g. ``CollectingApprovals``, ``Vetoed``, ``Completed``).
* ``timeout`` (args): the session deadline in seconds; absent means the config default
  (``[protocols] dkd_timeout_seconds`` etc.). When it expires the node answers ``timeout``.

Errors handlers raise: ``InvalidArgsError`` (``invalid_args``: e.g. an unknown peer name),
``NotReadyError``, ``NotFoundError``, ``ConflictError``, ``RequestTimeoutError`` below, or any
``AuraError``; anything else becomes ``internal`` (traceback in the node log, not the reply).
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, NamedTuple

from aura_node.errors import AuraError, ControlError

#: longest request line (bytes, without the newline); control requests are a few hundred bytes
MAX_REQUEST_BYTES = 64 * 1024
#: longest reply line a client accepts (``sessions --all`` on a busy node can be large)
MAX_REPLY_BYTES = 16 * 1024 * 1024

RequestId = int | str | None


class Fault(StrEnum):
    """Fault codes the control layer itself produces (handlers add their AuraError codes)."""

    #: not UTF-8, not JSON, not an object, missing/ill-typed ``id``/``cmd``/``args``
    BAD_REQUEST = "bad_request"
    #: a request line over MAX_REQUEST_BYTES; the server closes the connection after replying
    REQUEST_TOO_LARGE = "request_too_large"
    #: ``cmd`` names no handler on this node
    UNKNOWN_COMMAND = "unknown_command"
    #: ``args`` do not match the command table, or name something that does not exist
    INVALID_ARGS = "invalid_args"
    #: the peer's uid (SO_PEERCRED) is not the node's; the server closes after replying
    FORBIDDEN = "forbidden"
    #: the node is still starting (rehydrating, links not listening)
    NOT_READY = "not_ready"
    #: no such session / account / pending request
    NOT_FOUND = "not_found"
    #: the request contradicts state (an account already exists, a session already ended)
    CONFLICT = "conflict"
    #: a session deadline passed before the result was known
    TIMEOUT = "timeout"
    #: too many open control connections; try again
    BUSY = "busy"
    #: the node is stopping and takes no new requests
    SHUTTING_DOWN = "shutting_down"
    #: a bug in the node; the traceback is in the node log
    INTERNAL = "internal"


# --- errors handlers raise (server side) -------------------------------------------------------


class InvalidArgsError(ControlError):
    code = Fault.INVALID_ARGS.value


class NotReadyError(ControlError):
    code = Fault.NOT_READY.value


class NotFoundError(ControlError):
    code = Fault.NOT_FOUND.value


class ConflictError(ControlError):
    code = Fault.CONFLICT.value


class RequestTimeoutError(ControlError):
    code = Fault.TIMEOUT.value


class BadRequestError(ControlError):
    """A request line that is not a well-formed request; ``request_id`` when one was readable."""

    code = Fault.BAD_REQUEST.value

    def __init__(self, message: str, *, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class RequestTooLargeError(ControlError):
    code = Fault.REQUEST_TOO_LARGE.value


class NodeAlreadyRunningError(ControlError):
    """A live node answers on the control socket we were about to create."""

    code = "node_running"


# --- errors the client raises ------------------------------------------------------------------


class ControlReplyError(ControlError):
    """The node answered with an error; ``remote_code`` is the reply's ``error.code``."""

    code = "control_reply"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(message)
        self.remote_code = remote_code

    def to_json(self) -> dict[str, str]:
        return {"code": self.remote_code, "message": self.message}


class ControlConnectionError(ControlError):
    """The connection broke, or the node sent something that is not a reply."""

    code = "control_connection"


class ControlTimeoutError(ControlError):
    """No reply within the client's wait (``ctl --timeout``)."""

    code = "control_timeout"


# --- the command table -------------------------------------------------------------------------

ARG_KINDS = ("str", "int", "number", "bool", "names")


class ArgSpec(NamedTuple):
    name: str
    kind: str
    required: bool = True


class CommandSpec(NamedTuple):
    name: str
    args: tuple[ArgSpec, ...]
    result: tuple[str, ...]
    summary: str
    #: runs a protocol session; the client waits for its result (see ``client_wait``)
    long_running: bool = False


_TIMEOUT = ArgSpec("timeout", "number", required=False)
_ACCOUNT_VIEW = ("account_id", "public_key", "threshold", "devices", "guardians",
                 "guardian_threshold")

#: a reshare's reply: the session, the new epoch number and its holders
_RESHARE_RESULT = ("session", "epoch", "holders")

COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("status", (), ("name", "device_id", "role", "ready", "peers", "sessions"),
                    "identity, readiness, peer links and session counts"),
        CommandSpec("peers", (), ("peers",), "pinned peers and their link state"),
        CommandSpec("sessions", (ArgSpec("all", "bool", required=False),), ("sessions",),
                    "active sessions (all with all=true)"),
        CommandSpec("session", (ArgSpec("session", "str"),),
                    ("session", "protocol", "role", "state"), "one session in detail"),
        CommandSpec("shutdown", (), ("stopping",), "stop the node as on SIGTERM"),
        CommandSpec("reload", (), ("peers", "added", "removed"),
                    "re-read the pinned peers from config.toml"),
        CommandSpec("ping", (ArgSpec("peer", "str"), _TIMEOUT), ("peer", "rtt_ms", "session"),
                    "run the ping choreography with a peer", long_running=True),
        CommandSpec("account.create",
                    (ArgSpec("devices", "names"), ArgSpec("threshold", "int"),
                     ArgSpec("guardians", "names", required=False),
                     ArgSpec("guardian_threshold", "int", required=False), _TIMEOUT),
                    _ACCOUNT_VIEW, "account genesis with this device as dealer",
                    long_running=True),
        CommandSpec("account.show", (), (*_ACCOUNT_VIEW, "epoch"),
                    "the account this device holds"),
        CommandSpec("account.add",
                    (ArgSpec("name", "str"), ArgSpec("threshold", "int", required=False),
                     _TIMEOUT),
                    _RESHARE_RESULT, "reshare the account to its devices plus one",
                    long_running=True),
        CommandSpec("account.remove",
                    (ArgSpec("name", "str"), ArgSpec("threshold", "int", required=False),
                     _TIMEOUT),
                    _RESHARE_RESULT, "reshare the account without a device (it takes no part)",
                    long_running=True),
        CommandSpec("account.guardians",
                    (ArgSpec("set", "names"), ArgSpec("threshold", "int"), _TIMEOUT),
                    _RESHARE_RESULT, "reshare the account to a new guardian set",
                    long_running=True),
        CommandSpec("account.reshare",
                    (ArgSpec("devices", "names"), ArgSpec("threshold", "int"),
                     ArgSpec("guardians", "names", required=False),
                     ArgSpec("guardian_threshold", "int", required=False), _TIMEOUT),
                    _RESHARE_RESULT, "reshare the account to new devices (and guardians)",
                    long_running=True),
        CommandSpec("dkd",
                    (ArgSpec("context", "str"), ArgSpec("participants", "names", required=False),
                     _TIMEOUT),
                    ("session", "context", "participants", "fingerprint", "public_key"),
                    "threshold deterministic key derivation for a context", long_running=True),
        CommandSpec("dkd.sign",
                    (ArgSpec("context", "str"), ArgSpec("file", "str"),
                     ArgSpec("participants", "names", required=False), _TIMEOUT),
                    ("session", "context", "fingerprint", "public_key", "signature"),
                    "derive the context's key and sign a file with it (this device only)",
                    long_running=True),
        CommandSpec("dkd.export",
                    (ArgSpec("context", "str"), ArgSpec("out", "str"),
                     ArgSpec("participants", "names", required=False), _TIMEOUT),
                    ("session", "context", "fingerprint", "public_key", "path"),
                    "derive the context's key and write it as PKCS#8 PEM (0600, new file)",
                    long_running=True),
        CommandSpec("dkd.pending", (), ("pending",),
                    "dkd requests this node's policy parked for its operator"),
        CommandSpec("dkd.approve", (ArgSpec("session", "str"),),
                    ("session", "state", "decision"),
                    "answer a parked dkd request (participant)"),
        CommandSpec("dkd.refuse",
                    (ArgSpec("session", "str"), ArgSpec("reason", "str", required=False)),
                    ("session", "state", "decision", "reason"),
                    "refuse a parked dkd request with a signed refusal (participant)"),
        CommandSpec("recovery.start", (ArgSpec("account", "str"), ArgSpec("guardians", "names")),
                    ("session", "account", "guardians", "state"),
                    "ask guardians to recover an account onto this device"),
        CommandSpec("recovery.approve", (ArgSpec("session", "str"),), ("session", "state"),
                    "approve a pending recovery (guardian)"),
        CommandSpec("recovery.pending", (), ("pending",), "recoveries awaiting this guardian"),
        CommandSpec("recovery.veto", (ArgSpec("session", "str"),), ("session", "state"),
                    "veto a recovery during its cooldown (account device)"),
        CommandSpec("recovery.status", (ArgSpec("session", "str"),),
                    ("session", "account", "state", "approvals"), "state of a recovery session"),
        CommandSpec("journal.accept_rollback",
                    (ArgSpec("code", "str"), ArgSpec("reason", "str", required=False)),
                    ("accepted", "code", "state"),
                    "accept the loss a rolled-back/forked journal shows (the code of `journal "
                    "verify --peers`)"),
    )
}

#: seconds a client waits for a quick command, and for a session without an explicit timeout
DEFAULT_WAIT_SECONDS = 10.0
DEFAULT_SESSION_WAIT_SECONDS = 120.0
#: extra seconds a client waits beyond a session's own deadline, so the node's ``timeout``
#: reply (which names the phase it stalled in) arrives before the client gives up
SESSION_WAIT_GRACE_SECONDS = 5.0


def client_wait(cmd: str, args: dict[str, Any], wait: float | None) -> float:
    """How long the client waits for the reply to ``cmd`` with ``args``."""
    if wait is not None:
        return wait
    spec = COMMANDS.get(cmd)
    deadline = args.get("timeout")
    if spec is None:
        # a protocol's declared command (``ctl call``): it may run a session, so wait for its
        # ``timeout`` argument, or as long as a session waits by default
        if isinstance(deadline, int | float) and not isinstance(deadline, bool):
            return float(deadline) + SESSION_WAIT_GRACE_SECONDS
        return DEFAULT_SESSION_WAIT_SECONDS
    if not spec.long_running:
        return DEFAULT_WAIT_SECONDS
    if isinstance(deadline, int | float) and not isinstance(deadline, bool):
        return float(deadline) + SESSION_WAIT_GRACE_SECONDS
    return DEFAULT_SESSION_WAIT_SECONDS


def _args_text(spec: CommandSpec) -> str:
    inner = ", ".join(f"{a.name}{'' if a.required else '?'}: {a.kind}" for a in spec.args)
    return "{" + inner + "}"


def render_command_table() -> str:
    """The command table exactly as it appears in this module's docstring."""
    lines = []
    for spec in COMMANDS.values():
        args = _wrap(_args_text(spec), _TABLE_WIDTH)
        result = _wrap(", ".join(spec.result), _TABLE_WIDTH)
        if len(spec.name) >= 18:  # a long name gets its own line
            lines.append(spec.name)
            lines.append(f"{'':<18}args    {args[0]}")
        else:
            lines.append(f"{spec.name:<18}args    {args[0]}")
        lines.extend(f"{'':<18}        {c}" for c in args[1:])
        lines.append(f"{'':<18}result  {result[0]}")
        lines.extend(f"{'':<18}        {c}" for c in result[1:])
    return "\n".join(lines)


_TABLE_WIDTH = 72


def _wrap(text: str, width: int) -> list[str]:
    """Split ``text`` at ", " into lines of at most ``width`` characters (commas kept)."""
    parts = text.split(", ")
    out = [parts[0]]
    for part in parts[1:]:
        if len(out[-1]) + 2 + len(part) + 1 <= width:
            out[-1] += ", " + part
        else:
            out[-1] += ","
            out.append(part)
    return out


def validate_args(spec: CommandSpec, args: dict[str, Any]) -> None:
    """Raise ``InvalidArgsError`` unless ``args`` match ``spec`` (unknown keys included)."""
    known = {a.name for a in spec.args}
    unknown = sorted(set(args) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise InvalidArgsError(
            f"{spec.name}: unknown argument(s) {', '.join(unknown)} (allowed: {allowed})"
        )
    for a in spec.args:
        if a.name not in args or args[a.name] is None:
            if a.required:
                raise InvalidArgsError(f"{spec.name}: missing required argument {a.name!r}")
            continue
        problem = _kind_problem(a.kind, args[a.name])
        if problem:
            raise InvalidArgsError(
                f"{spec.name}: argument {a.name!r} must be {problem}, got {args[a.name]!r}"
            )


def _kind_problem(kind: str, value: object) -> str:
    """'' when ``value`` is of ``kind``, else what was expected."""
    if kind == "str":
        return "" if isinstance(value, str) and value else "a non-empty string"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return "" if ok else "an integer >= 1"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return "" if ok and value == value and value != float("inf") else "a number > 0"
    if kind == "bool":
        return "" if isinstance(value, bool) else "true or false"
    if kind == "names":
        ok = (
            isinstance(value, list)
            and len(value) > 0
            and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value)
        )
        return "" if ok else "a non-empty list of distinct non-empty names"
    raise AssertionError(f"unknown argument kind {kind!r} (known: {', '.join(ARG_KINDS)})")


def missing_result_fields(spec: CommandSpec, result: dict[str, Any]) -> list[str]:
    """Documented result fields a handler left out (the server logs them as a node bug)."""
    return [f for f in spec.result if f not in result]


# --- framing -----------------------------------------------------------------------------------


def encode_message(obj: dict[str, Any]) -> bytes:
    """One JSON line. Raises ``TypeError``/``ValueError`` for values JSON cannot carry
    (NaN included: it is not JSON)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    ) + b"\n"


class LineFramer:
    """Sans-IO splitter of a byte stream into lines of at most ``max_line`` bytes.

    ``feed(data)`` returns the complete lines (without ``\\n``) and keeps the rest. When the
    unfinished line passes ``max_line`` it raises ``RequestTooLargeError``; the framer is then
    unusable (the caller closes the connection: the line's end is unknown).
    """

    __slots__ = ("_buf", "_failed", "max_line")

    def __init__(self, max_line: int = MAX_REQUEST_BYTES) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed:
            raise RequestTooLargeError("framer already failed on an oversized line")
        start = len(self._buf)
        self._buf += data
        lines: list[bytes] = []
        pos = 0
        # Only the new bytes can hold a newline the buffer did not have before.
        search = start
        while True:
            nl = self._buf.find(b"\n", search)
            if nl < 0:
                break
            if nl - pos > self.max_line:
                self._fail(nl - pos)
            lines.append(bytes(self._buf[pos:nl]))
            pos = search = nl + 1
        del self._buf[:pos]
        if len(self._buf) > self.max_line:
            self._fail(len(self._buf))
        return lines

    def _fail(self, size: int) -> None:
        self._failed = True
        self._buf.clear()
        raise RequestTooLargeError(
            f"line exceeds {self.max_line} bytes (at least {size} bytes without a newline)"
        )


# --- requests ----------------------------------------------------------------------------------


class Request(NamedTuple):
    id: RequestId
    cmd: str
    args: dict[str, Any]


def encode_request(request_id: RequestId, cmd: str, args: dict[str, Any]) -> bytes:
    """The request line; ``InvalidArgsError`` for a value JSON text cannot carry.

    Command-line arguments that are not UTF-8 reach Python as lone surrogates
    (``surrogateescape``); they are named here instead of failing in the encoder."""
    message = {"id": request_id, "cmd": cmd, "args": args}
    bad = lone_surrogate_in(message)
    if bad is not None:
        raise InvalidArgsError(
            f"{cmd}: {bad} is not valid text (command-line arguments and values must be UTF-8)"
        )
    try:
        return encode_message(message)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidArgsError(f"{cmd}: arguments cannot be sent as JSON: {exc}") from None


#: a UTF-16 surrogate code point: JSON text may spell one (``"\ud800"``), UTF-8 cannot carry it
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_in(obj: object) -> str | None:
    """A description of the first string in ``obj`` (keys included) holding a surrogate code
    point, or None. Iterative, so nesting depth is bounded by memory, not the stack."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                point = ord(found.group())
                if 0xDC80 <= point <= 0xDCFF:  # how surrogateescape carries a non-UTF-8 byte
                    return f"the string {item[:40]!r} (byte 0x{point - 0xDC00:02X} is not UTF-8)"
                return f"the string {item[:40]!r} (lone surrogate U+{point:04X})"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def _refuse_constant(name: str) -> Any:
    raise BadRequestError(f"request is not JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadRequestError(f"request holds the number {text[:40]} outside the float range")
    return value


def _bounded_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # over sys.get_int_max_str_digits() digits
        raise BadRequestError(
            f"request holds an integer of {len(text)} digits (too large)"
        ) from None


def decode_request(line: bytes) -> Request:
    """Parse one request line; ``BadRequestError`` (with the id when readable) otherwise.

    A request whose reply could not be encoded is refused here: NaN/Infinity, numbers beyond
    the float range or the integer digit limit, and strings holding lone surrogates (valid
    JSON escapes, but not Unicode text; echoed in an ``id`` they made the reply unencodable).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"request is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                         parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"request is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequestError("request is not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequestError(f"request must be a JSON object, got {_json_type(obj)}")
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str | None):
        raise BadRequestError(
            f"request id must be an integer, a string or null, got {_json_type(request_id)}"
        )
    if isinstance(request_id, str) and lone_surrogate_in(request_id) is not None:
        raise BadRequestError("request id holds a lone surrogate escape: it is not Unicode text")
    bad = lone_surrogate_in(obj)
    if bad is not None:
        raise BadRequestError(
            f"request holds {bad}: a lone surrogate escape is not Unicode text",
            request_id=request_id,
        )
    unknown = sorted(set(obj) - {"id", "cmd", "args"})
    if unknown:
        raise BadRequestError(
            f"unknown request field(s) {', '.join(unknown)} (expected id, cmd, args)",
            request_id=request_id,
        )
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        got = "nothing" if "cmd" not in obj else _json_type(cmd)
        raise BadRequestError(
            f"request needs a non-empty string cmd, got {got}", request_id=request_id
        )
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise BadRequestError(
            f"request args must be a JSON object, got {_json_type(args)}", request_id=request_id
        )
    return Request(request_id, cmd, args)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- replies -----------------------------------------------------------------------------------


def ok_reply(request_id: RequestId, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: RequestId, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def error_reply_for(request_id: RequestId, exc: AuraError) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": exc.to_json()}


def decode_reply(line: bytes, *, expect_id: RequestId) -> dict[str, Any]:
    """The ``result`` of a reply line; ``ControlReplyError`` for an error reply,
    ``ControlConnectionError`` for anything that is not a reply to ``expect_id``."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ControlConnectionError(f"node sent a reply that is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ControlConnectionError(f"node sent something that is not a reply: {line[:200]!r}")
    if obj["ok"]:
        result = obj.get("result")
        if obj.get("id") != expect_id:
            raise ControlConnectionError(
                f"reply id {obj.get('id')!r} does not match request id {expect_id!r}"
            )
        if not isinstance(result, dict):
            raise ControlConnectionError(f"reply result must be an object, got {result!r:.200}")
        return result
    error = obj.get("error")
    if not isinstance(error, dict):
        raise ControlConnectionError(f"error reply without an error object: {line[:200]!r}")
    # An error reply may carry id null (forbidden, request_too_large are sent before or
    # without reading the request), so its id is not checked.
    code, message = error.get("code"), error.get("message")
    raise ControlReplyError(
        code if isinstance(code, str) else Fault.INTERNAL.value,
        message if isinstance(message, str) else repr(error),
    )
