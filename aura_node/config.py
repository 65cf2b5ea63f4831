"""Node home and configuration.

A node home is one directory::

    HOME/config.toml    this file's schema (below); peers are pinned here
    HOME/device.key     Ed25519 device key, PEM PKCS#8, mode 0600
    HOME/journal/       the append-only signed journal (segments)
    HOME/control.sock   the control socket while the node runs (mode 0600)
    HOME/control.sock.lock  held (flock) by the running node: makes stale-socket checks atomic
    HOME/node.pid       pid of the running node (advisory; the socket is the truth)

``--home`` defaults to ``$AURA_HOME`` in every command. Loading checks what a person can get
wrong and says how to fix it: malformed TOML (line and column), unknown keys (named, with the
section), wrong types, bad addresses, a missing or group-readable key file, and every number
outside its valid range (one line naming the key, the value and the range; NaN and infinity,
which TOML can spell, are out of every range). Each numeric key declares its range next to
its default (:func:`_within`), so a new key cannot be added without one (a unit test walks
every key of ``config/example.toml`` with out-of-range values).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from aura_node.errors import ConfigError, HomeError

ENV_HOME = "AURA_HOME"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
Role = Literal["device", "guardian"]
LogFormat = Literal["auto", "json", "console"]


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6). Port 0 means "pick a free one"."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} port must be a number, got {port_text!r} in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} port must be 0..65535, got {port} in {text!r}")
    return host, port


def check_name(name: str, *, what: str = "name") -> str:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{what} must be 1-32 characters of a-z, 0-9, '-' or '_' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name


#: the longest deadline or interval any key takes: ten years, in seconds (a finite bound keeps
#: Trio deadlines and timestamps arithmetic sane; a longer wait is a configuration mistake)
MAX_SECONDS = 10 * 365 * 86400.0


@dataclass(frozen=True, slots=True)
class ValueRange:
    """The valid values of a numeric key: ``low`` (exclusive when ``low_open``) to ``high``."""

    low: float
    high: float
    low_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self, integer: bool) -> str:
        def num(x: float) -> str:
            return str(int(x)) if integer or x == int(x) else repr(x)

        if integer:
            return f"an integer from {num(self.low)} to {num(self.high)}"
        low = f"more than {num(self.low)}" if self.low_open else f"at least {num(self.low)}"
        return f"a number {low} and at most {num(self.high)}"


def _within(default: float, low: float, high: float, *, low_open: bool = False) -> Any:
    """A dataclass field with ``default`` whose valid range is checked at load."""
    return field(default=default, metadata={"range": ValueRange(low, high, low_open)})


def _seconds(default: float, *, zero_ok: bool = False) -> Any:
    """A duration in seconds: more than 0 (or at least 0) and at most ``MAX_SECONDS``."""
    return _within(default, 0.0, MAX_SECONDS, low_open=not zero_ok)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection:
    name: str
    role: Role = "device"
    listen: str = "127.0.0.1:0"


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalSection:
    #: records per group commit at most (one write + one fdatasync + one signature per batch)
    max_batch: int = _within(512, 1, 65536)
    #: a new segment file is started when the current one passes this size (the journal
    #: refuses segments under 4096 bytes)
    segment_bytes: int = _within(64 * 1024 * 1024, 4096, 1 << 40)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSection:
    #: the 4-byte length prefix caps it at 4 GiB; 1 GiB bounds what one peer makes us buffer
    max_frame_bytes: int = _within(1024 * 1024, 4096, 1 << 30)
    connect_timeout_seconds: float = _within(5.0, 0.0, 3600.0, low_open=True)
    handshake_timeout_seconds: float = _within(5.0, 0.0, 3600.0, low_open=True)
    #: at least the first reconnect delay (0.1 s), so the backoff can grow to it
    reconnect_max_seconds: float = _within(10.0, 0.1, 86400.0)
    #: frames queued per peer before senders wait (backpressure)
    peer_queue_frames: int = _within(1024, 1, 1_000_000)
    #: an idle link sends a keepalive after this long; three times it without a frame drops it
    keepalive_seconds: float = _within(5.0, 0.0, 3600.0, low_open=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolSection:
    """Deadlines of the shipped choreographies: a choreography's ``deadline="X"`` is
    ``X_seconds`` here (see :meth:`deadline`)."""

    #: 0 allowed: a deployment may choose no veto window
    recovery_cooldown_seconds: float = _seconds(86400.0, zero_ok=True)
    dkd_timeout_seconds: float = _seconds(30.0)
    ping_timeout_seconds: float = _seconds(10.0)
    genesis_timeout_seconds: float = _seconds(60.0)
    #: how long a reshare's coordinator waits for each round (dealings, then signatures)
    reshare_timeout_seconds: float = _seconds(60.0)
    #: how long a recovery waits for the guardians' approvals
    recovery_approval_timeout_seconds: float = _seconds(7 * 86400.0)
    #: how long the new device waits for the guardians' shares after the cooldown
    recovery_share_timeout_seconds: float = _seconds(300.0)
    #: how long each side of an account-sync (epoch facts) waits for the other's next message
    account_sync_timeout_seconds: float = _seconds(30.0)

    def deadline(self, name: str) -> float:
        """Seconds for the choreography deadline ``name`` (e.g. ``"dkd_timeout"``)."""
        value = getattr(self, f"{name}_seconds", None)
        if not isinstance(value, float):
            raise ConfigError(f"no [protocols] setting for the deadline {name!r}")
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class DkdSection:
    """What a DKD participant answers (``aura_node.protocols.dkd.consent``): the per-requester
    rate limit here, the per-account rules in ``[[dkd.policy]]`` (:class:`DkdRule`)."""

    #: requests one requesting device may make of this node per window; 0 (the default): no
    #: limit - bulk derivation (load, the benchmarks) would hit any fixed default, and a
    #: device the policy lets derive everything gains little from being slowed down
    rate_limit: int = _within(0, 0, 1_000_000)
    rate_window_seconds: float = _seconds(60.0)


Approval = Literal["auto", "operator"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DkdRule:
    """One ``[[dkd.policy]]`` table: devices ``requesters`` may derive contexts matching one of
    ``contexts`` (fnmatch globs, case-sensitive) of ``account`` ("*": every account), answered
    at once (``approval = "auto"``) or after the operator's ``ctl dkd approve``."""

    account: str = "*"
    contexts: tuple[str, ...] = ("*",)
    #: node names; ``None`` (key absent): the account's current devices
    requesters: tuple[str, ...] | None = None
    approval: Approval = "auto"

    def matches(self, account_id: str) -> bool:
        return self.account in ("*", account_id)

    def allows_context(self, context: str) -> bool:
        return any(fnmatch.fnmatchcase(context, pattern) for pattern in self.contexts)


_RULE_KEYS = ("account", "contexts", "requesters", "approval")


def _build_dkd_rule(table: object, where: str) -> DkdRule:
    """One ``[[dkd.policy]]`` table, every key checked with one line naming it."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(_RULE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_RULE_KEYS))})")
    account = table.get("account", "*")
    if not isinstance(account, str) or not account:
        raise ConfigError(f"[{where}] account must be an account id or \"*\", got {account!r}")
    approval = table.get("approval", "auto")
    if approval not in ("auto", "operator"):
        raise ConfigError(f"[{where}] approval must be one of auto, operator, got {approval!r}")

    def strings(key: str, check: Any = None) -> tuple[str, ...] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v for v in value):
            raise ConfigError(f"[{where}] {key} must be a non-empty list of non-empty strings, "
                              f"got {value!r}")
        for v in value:
            if check is not None:
                check(v, what=f"[{where}] {key} entry")
        return tuple(value)

    contexts = strings("contexts") or ("*",)
    requesters = strings("requesters", check_name)
    return DkdRule(account=account, contexts=contexts, requesters=requesters,
                   approval=approval)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlSection:
    """The control socket server (``aura_node.control.server``)."""

    #: connections open at once; past it a new one evicts the one that waited longest for a
    #: request, or (all inside requests) gets ``busy`` unless it asks ``status``/``shutdown``
    max_connections: int = _within(64, 1, 4096)
    #: a control connection idle between requests is closed after this long
    idle_timeout_seconds: float = _within(300.0, 0.0, 86400.0, low_open=True)
    #: a control connection must send a complete request within this long of opening (or of
    #: starting the request), else it is closed
    request_timeout_seconds: float = _within(5.0, 0.0, 3600.0, low_open=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSection:
    """The session table of a running node (``aura_node.sessions``)."""

    #: an ended session stays in memory this long after it ended; later it is answered from
    #: the journal (``ctl session ID``, replays), never from memory
    ended_session_retention_seconds: float = _seconds(600.0, zero_ok=True)
    #: at most this many ended sessions are kept in memory (the oldest-ended go first)
    ended_session_cache: int = _within(10000, 0, 10_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSection:
    level: str = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    name: str
    public_key: str
    address: str
    role: Role = "device"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    node: NodeSection
    journal: JournalSection = field(default_factory=JournalSection)
    transport: TransportSection = field(default_factory=TransportSection)
    protocols: ProtocolSection = field(default_factory=ProtocolSection)
    control: ControlSection = field(default_factory=ControlSection)
    sessions: SessionSection = field(default_factory=SessionSection)
    log: LogSection = field(default_factory=LogSection)
    dkd: DkdSection = field(default_factory=DkdSection)
    #: the ``[[dkd.policy]]`` rules in file order (none: the default policy, see DkdRule)
    dkd_policy: tuple[DkdRule, ...] = ()
    peers: tuple[PeerConfig, ...] = ()

    def peer(self, name: str) -> PeerConfig:
        for p in self.peers:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.peers) or "none"
        raise ConfigError(f"no pinned peer named {name!r} (pinned: {known})")

    def with_peers(self, peers: tuple[PeerConfig, ...]) -> NodeConfig:
        return replace(self, peers=peers)


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeSection,
    "journal": JournalSection,
    "transport": TransportSection,
    "protocols": ProtocolSection,
    "control": ControlSection,
    "sessions": SessionSection,
    "log": LogSection,
    "dkd": DkdSection,
}
_ALLOWED: dict[str, tuple[object, ...]] = {
    "role": ("device", "guardian"),
    "format": ("auto", "json", "console"),
    "level": ("debug", "info", "warning", "error"),
}


def _build(cls: type[Any], table: object, where: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{where}]: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for name, value in table.items():
        default = _default_of(cls, name)
        expected: type[Any] | tuple[type[Any], ...]
        expected = (int, float) if isinstance(default, float) else type(default)
        if default is None or default is _REQUIRED:
            expected = str
        if isinstance(value, bool) and expected is not bool:
            raise ConfigError(f"[{where}] {name} must be {_tname(expected)}, got a boolean")
        if not isinstance(value, expected):
            raise ConfigError(
                f"[{where}] {name} must be {_tname(expected)}, got {type(value).__name__} {value!r}"
            )
        if name in _ALLOWED and value not in _ALLOWED[name]:
            allowed = ", ".join(map(str, _ALLOWED[name]))
            raise ConfigError(f"[{where}] {name} must be one of {allowed}, got {value!r}")
        valid = _range_of(cls, name)
        if valid is not None and isinstance(value, int | float) and not valid.contains(value):
            raise ConfigError(
                f"[{where}] {name} = {value!r} is out of range: it must be "
                f"{valid.describe(integer=isinstance(default, int))}"
            )
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        values[name] = value
    missing = [n for n in known if _default_of(cls, n) is _REQUIRED and n not in values]
    if missing:
        raise ConfigError(f"[{where}] is missing required key(s): {', '.join(missing)}")
    return cls(**values)


_REQUIRED = object()


def _range_of(cls: type[Any], name: str) -> ValueRange | None:
    for f in fields(cls):
        if f.name == name:
            found = f.metadata.get("range")
            return found if isinstance(found, ValueRange) else None
    return None


def _default_of(cls: type[Any], name: str) -> object:
    for f in fields(cls):
        if f.name == name:
            return _REQUIRED if f.default is MISSING else f.default
    return _REQUIRED


def _tname(t: type[Any] | tuple[type[Any], ...]) -> str:
    if isinstance(t, tuple):
        return "a number"
    return {"str": "a string", "int": "an integer", "bool": "true or false"}.get(
        t.__name__, t.__name__
    )


def parse_config(text: str, *, source: str = "config.toml") -> NodeConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message ends with "(at line L, column C)".
        raise ConfigError(f"{source}: malformed TOML: {exc}") from None
    unknown = sorted(set(data) - set(_SECTIONS) - {"peers"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s): {', '.join(unknown)} "
            f"(known: {', '.join([*sorted(_SECTIONS), 'peers'])})"
        )
    if "node" not in data:
        raise ConfigError(f"{source}: missing the [node] section")
    try:
        dkd = data.get("dkd")
        raw_rules: object = []
        if isinstance(dkd, Mapping) and "policy" in dkd:
            # [[dkd.policy]] tables sit inside [dkd]; the scalar keys are built as any section
            raw_rules = dkd["policy"]
            data = {**data, "dkd": {k: v for k, v in dkd.items() if k != "policy"}}
        if not isinstance(raw_rules, list):
            raise ConfigError("dkd.policy must be an array of tables ([[dkd.policy]])")
        rules = tuple(_build_dkd_rule(r, f"dkd.policy.{i}") for i, r in enumerate(raw_rules))
        sections = {k: _build(cls, data[k], k) for k, cls in _SECTIONS.items() if k in data}
        raw_peers = data.get("peers", [])
        if not isinstance(raw_peers, list):
            raise ConfigError("peers must be an array of tables ([[peers]])")
        peers = tuple(_build(PeerConfig, p, f"peers.{i}") for i, p in enumerate(raw_peers))
        node: NodeSection = sections["node"]
        check_name(node.name, what="[node] name")
        parse_address(node.listen, what="[node] listen")
        seen: set[str] = set()
        for p in peers:
            check_name(p.name, what="peer name")
            parse_address(p.address, what=f"peer {p.name} address")
            if len(p.public_key) != 64 or not all(c in "0123456789abcdef" for c in p.public_key):
                raise ConfigError(f"peer {p.name} public_key must be 64 lowercase hex digits, "
                                  f"got {p.public_key[:80]!r}")
            if p.name in seen or p.name == node.name:
                raise ConfigError(f"peer name {p.name!r} is used twice")
            seen.add(p.name)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    return NodeConfig(peers=peers, dkd_policy=rules, **sections)


def render_config(cfg: NodeConfig) -> str:
    """TOML text for ``cfg`` (stable key order; round-trips through ``parse_config``)."""
    out = ["# aura-node configuration; every key is documented in config/example.toml", ""]
    for section, _cls in _SECTIONS.items():
        out.append(f"[{section}]")
        obj = getattr(cfg, section)
        out.extend(f"{f.name} = {_toml_value(getattr(obj, f.name))}" for f in fields(obj))
        out.append("")
    for rule in cfg.dkd_policy:
        out.append("[[dkd.policy]]")
        out.extend(f"{f.name} = {_toml_value(getattr(rule, f.name))}" for f in fields(rule)
                   if getattr(rule, f.name) is not None)
        out.append("")
    for p in cfg.peers:
        out.append("[[peers]]")
        out.extend(f"{f.name} = {_toml_value(getattr(p, f.name))}" for f in fields(p))
        out.append("")
    return "\n".join(out)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {type(v).__name__} as TOML")


@dataclass(frozen=True, slots=True)
class NodeHome:
    """Paths of one node home."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None) -> NodeHome:
        if home is None:
            env = os.environ.get(ENV_HOME)
            if not env:
                raise HomeError(f"no node home: pass --home DIR or set ${ENV_HOME}")
            home = env
        return cls(Path(home).expanduser().absolute())

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def key_path(self) -> Path:
        return self.root / "device.key"

    @property
    def journal_dir(self) -> Path:
        return self.root / "journal"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def pid_path(self) -> Path:
        return self.root / "node.pid"

    def require_exists(self) -> None:
        if not self.config_path.exists():
            raise HomeError(
                f"{self.root} is not a node home (no config.toml); create one with "
                f"`aura-node init --home {self.root} --name NAME`"
            )

    def load_config(self) -> NodeConfig:
        self.require_exists()
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.config_path}: {exc}") from None
        return parse_config(text, source=str(self.config_path))

    def save_config(self, cfg: NodeConfig) -> None:
        """Atomically replace config.toml (write temp, fsync, rename)."""
        tmp = self.config_path.with_suffix(".toml.tmp")
        data = render_config(cfg).encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.config_path)
