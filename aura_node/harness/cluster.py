"""A local cluster of real aura-node processes on loopback, with faults between them.

Theory of operation. ``Cluster.start()``:

1. creates one node home per node under ``DIR/nodes/NAME`` (devices ``d1..dN``, guardians
   ``g1..gM``) with the real ``init`` code, each listening on a free loopback port;
2. starts the fault proxy (``harness/proxy.py``) and adds one dial link per ordered pair
   A->B; node A pins peer B at the proxy port of A->B, so every byte between nodes crosses the
   proxy and every fault is real TCP behaviour;
3. starts every node with ``python -m aura_node run --home HOME`` (plus ``--plugin P`` for
   each of the cluster's plugins, paths made absolute) in its own session, stdout and stderr
   appended to ``DIR/logs/NAME.log``;
4. waits until each node answers ``status`` with ``ready: true`` and every pinned peer link
   up, or fails naming the node and showing the tail of its log.

The state (pids, homes, ports, the proxy, the plugins) is written to ``DIR/cluster.json`` so
``cluster status``, ``down`` and ``restart`` in a later command find the processes again.
Every fault the harness injects (kill, restart, pause, resume here; link faults in the proxy)
is appended to ``DIR/faults.jsonl`` with the wall time and the target.

Cleanup is not optional. A ``Cluster`` used as a context manager stops everything on exit,
exception or not; a ``weakref.finalize`` (which also runs at interpreter exit) stops whatever
is left if the caller forgot; and nodes started by a test process get ``PR_SET_PDEATHSIG`` so
the kernel kills them even when the test process itself is SIGKILLed.

Free ports: the node listen ports are found by binding port 0 and closing the sockets just
before the nodes start, so another process could in principle take one in between; a node that
cannot bind fails fast and the error shows its log. The proxy binds its own ports (no race).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aura_node.config import NodeConfig, NodeHome, PeerConfig
from aura_node.errors import AuraError
from aura_node.harness.faults import (
    Direction,
    HarnessError,
    PartitionMode,
    directions_between,
)
from aura_node.harness.procs import ExitReport, ManagedProcess, stop_many
from aura_node.harness.proxy_client import ProxyClient
from aura_node.plugins import child_argv, plugin_arguments

STATE_VERSION = 1
STATE_FILE = "cluster.json"
FAULT_LOG = "faults.jsonl"
PROXY_SOCKET = "proxy.sock"


class ClusterNotReadyError(HarnessError):
    code = "cluster_not_ready"


def tune_for_tests(cfg: NodeConfig) -> NodeConfig:
    """Harness defaults: links come back within a second of a heal or a restart."""
    transport = replace(
        cfg.transport,
        connect_timeout_seconds=2.0,
        handshake_timeout_seconds=2.0,
        reconnect_max_seconds=0.5,
    )
    protocols = replace(cfg.protocols, ping_timeout_seconds=3.0)
    return replace(cfg, transport=transport, protocols=protocols)


Tune = Callable[[NodeConfig], NodeConfig]


def call_control(home: Path, cmd: str, args: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """One request on a node's control socket, through the control package's light client."""
    from aura_node.control.client import call

    return call(NodeHome(home).control_socket, cmd, dict(args), timeout)


@dataclass(slots=True, kw_only=True)
class NodeHandle:
    """One node of the cluster: identity, files, process, and its control socket."""

    name: str
    role: str
    home: Path
    listen: str
    device_id: str
    public_key: str
    log_path: Path
    #: peer name -> proxy port this node dials to reach it
    dial_ports: dict[str, int] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def ctl(self, cmd: str, /, *, wait: float | None = None, **args: Any) -> dict[str, Any]:
        """Call ``cmd`` on this node's control socket: ``node.ctl("ping", peer="d2")``.

        ``args`` are the command's arguments as the control protocol names them (so
        ``timeout=`` is the command's own timeout); ``wait`` bounds the whole exchange on the
        socket (default: the command's timeout plus 5 s, else 15 s).
        """
        if wait is None:
            wait = float(args["timeout"]) + 5.0 if "timeout" in args else 15.0
        return call_control(self.home, cmd, args, wait)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "home": str(self.home),
            "pid": self.pid,
            "listen": self.listen,
            "device_id": self.device_id,
            "public_key": self.public_key,
            "log": str(self.log_path),
            "dial_ports": self.dial_ports,
        }


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def links_down(status: Mapping[str, Any], expected: Iterable[str]) -> list[str]:
    """Expected peers whose link is not ``"up"`` in a ``status`` reply.

    ``status["peers"]`` is a list of ``{"name", ..., "link": "up"|"connecting"|"down"}``
    (``aura_node/control/protocol.py``).
    """
    peers = status.get("peers", [])
    states = {
        str(p.get("name")): p.get("link") for p in peers if isinstance(p, Mapping)
    } if isinstance(peers, list) else {}
    return [p for p in expected if states.get(p) != "up"]


class Cluster:
    """A local cluster of real node processes; see the module doc.

    Typical use::

        with Cluster(tmpdir, nodes=3) as c:
            c.node("d1").ctl("ping", peer="d2")
            c.partition(["d1"])
            ...
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        nodes: int = 3,
        guardians: int = 0,
        seed: int = 0,
        detached: bool = False,
        ready_timeout: float = 30.0,
        tune: Tune | None = tune_for_tests,
        python: str = sys.executable,
        plugins: Sequence[str] = (),
    ) -> None:
        if nodes < 1 or guardians < 0 or nodes + guardians < 2:
            raise HarnessError(
                f"a cluster needs at least 2 nodes and 1 device, got {nodes} devices and "
                f"{guardians} guardians"
            )
        self.dir = Path(directory).absolute()
        self.seed = seed
        self.detached = detached
        self.ready_timeout = ready_timeout
        self.tune = tune
        self.python = python
        #: ``--plugin`` arguments of every node (see ``aura_node.plugins.plugin_argument``);
        #: the caller loads them first when it wants a bad one reported before any node starts
        self.plugins = plugin_arguments(plugins)
        self.nodes: dict[str, NodeHandle] = {}
        self._planned = [(f"d{i}", "device") for i in range(1, nodes + 1)] + [
            (f"g{i}", "guardian") for i in range(1, guardians + 1)
        ]
        self.proxy_process: ManagedProcess | None = None
        #: the proxy process, in a list the finalizer can share without holding ``self``
        self._proxy_procs: list[ManagedProcess] = []
        self.proxy = ProxyClient(self.control_path)
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- paths ------------------------------------------------------------------------------------

    @property
    def control_path(self) -> Path:
        return self.dir / PROXY_SOCKET

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def fault_log(self) -> Path:
        return self.dir / FAULT_LOG

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    @property
    def devices(self) -> list[str]:
        return [n for n, h in self.nodes.items() if h.role == "device"]

    @property
    def guardians(self) -> list[str]:
        return [n for n, h in self.nodes.items() if h.role == "guardian"]

    def node(self, name: str) -> NodeHandle:
        try:
            return self.nodes[name]
        except KeyError:
            raise HarnessError(
                f"no node named {name!r} in this cluster (nodes: {', '.join(self.nodes)})"
            ) from None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create(self) -> Cluster:
        """Start the fault proxy and create the node homes (first time); start no node.

        ``start`` calls it; call it yourself to edit a home before the nodes first start.
        """
        longest = self.dir / "nodes" / "d999" / "control.sock"
        if len(str(longest)) > 100:
            raise HarnessError(
                f"cluster directory path is too long for Unix sockets ({self.dir}); use a "
                "shorter one, e.g. tempfile.mkdtemp(dir='/tmp')"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._arm_finalizer()
        try:
            fresh_proxy = self._start_proxy()
            if not self.nodes:
                self._create_homes()
            elif fresh_proxy:
                self._add_proxy_links()
            self.save_state()
        except BaseException:
            self.stop()
            raise
        return self

    def start(self) -> Cluster:
        """``create``, then start every node and wait until all are ready.

        On any failure everything started so far is stopped before the error propagates.
        """
        self.create()
        try:
            for name in self.nodes:
                self._start_node(name)
            self.save_state()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _arm_finalizer(self) -> None:
        if self._finalizer is None and not self.detached:
            # Holds the dict of handles, not self, so it never keeps the cluster alive.
            self._finalizer = weakref.finalize(
                self, _stop_all, self.nodes, self._proxy_procs, 2.0
            )

    def _start_proxy(self) -> bool:
        """Start the proxy unless it runs; True when a new one (with no links) started."""
        if self.proxy_process is not None and self.proxy_process.alive():
            return False
        self.proxy_process = ManagedProcess.spawn(
            "proxy",
            [self.python, "-m", "aura_node.harness.proxy", "--control", str(self.control_path),
             "--fault-log", str(self.fault_log), "--seed", str(self.seed)],
            log_path=self.dir / "logs" / "proxy.log",
            marker=str(self.control_path),
            detached=self.detached,
        )
        self._proxy_procs[:] = [self.proxy_process]
        try:
            self.proxy.wait_up(10.0)
        except HarnessError:
            tail = _tail(self.dir / "logs" / "proxy.log")
            raise HarnessError(f"the fault proxy did not come up; its log ends:\n{tail}") from None
        return True

    def _create_homes(self) -> None:
        from aura_node.cli.node import init_home

        ports = _free_ports(len(self._planned))
        for (name, role), port in zip(self._planned, ports, strict=True):
            home = NodeHome(self.dir / "nodes" / name)
            ident = init_home(home, name=name, listen=f"127.0.0.1:{port}", role=role)
            self.nodes[name] = NodeHandle(
                name=name,
                role=role,
                home=home.root,
                listen=ident["listen"],
                device_id=ident["device_id"],
                public_key=ident["public_key"],
                log_path=self.dir / "logs" / f"{name}.log",
            )
        self._add_proxy_links()
        for h in self.nodes.values():
            home = NodeHome(h.home)
            cfg = home.load_config()
            peers = tuple(
                PeerConfig(
                    name=p.name,
                    public_key=p.public_key,
                    address=f"127.0.0.1:{h.dial_ports[p.name]}",
                    role=p.role,  # type: ignore[arg-type]
                )
                for p in self.nodes.values()
                if p.name != h.name
            )
            cfg = cfg.with_peers(peers)
            home.save_config(self.tune(cfg) if self.tune else cfg)

    def _add_proxy_links(self) -> None:
        """One dial link per ordered pair; reuses the recorded ports when re-attaching."""
        for a in self.nodes.values():
            for b in self.nodes.values():
                if a.name != b.name:
                    a.dial_ports[b.name] = self.proxy.add_link(
                        a.name, b.name, b.listen, a.dial_ports.get(b.name, 0)
                    )

    def _start_node(self, name: str) -> None:
        h = self.node(name)
        if h.process is not None and h.process.alive():
            return
        h.process = ManagedProcess.spawn(
            name,
            [self.python, "-m", "aura_node", "run", "--home", str(h.home),
             *child_argv(self.plugins)],
            log_path=h.log_path,
            marker=str(h.home),
            detached=self.detached,
        )

    def wait_ready(
        self, names: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> None:
        """Block until each node is ready with every peer link up (all nodes by default)."""
        wanted = list(names) if names is not None else list(self.nodes)
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        pending = dict.fromkeys(wanted, "not polled yet")
        while pending:
            for name in list(pending):
                h = self.node(name)
                if h.process is None or not h.process.alive():
                    code = None if h.process is None else h.process.exit_code
                    raise ClusterNotReadyError(
                        f"node {name} exited (exit code {code}) before it was ready; "
                        f"its log ends:\n{h.log_tail()}"
                    )
                try:
                    st = h.ctl("status", wait=2.0)
                except AuraError as exc:
                    pending[name] = f"status failed: {exc.message}"
                    continue
                down = links_down(st, [p for p in self.nodes if p != name])
                if st.get("ready") is True and not down:
                    del pending[name]
                else:
                    pending[name] = f"ready={st.get('ready')}, links not up: {down}"
            if not pending:
                return
            if time.monotonic() >= deadline:
                name, why = next(iter(pending.items()))
                raise ClusterNotReadyError(
                    f"node {name} not ready after {timeout or self.ready_timeout:.0f} s ({why}); "
                    f"also waiting for: {', '.join(pending) or 'none'}; its log ends:\n"
                    f"{self.node(name).log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> list[ExitReport]:
        """SIGTERM every node (SIGKILL after ``grace``), then the proxy. Idempotent."""
        reports = _stop_all(self.nodes, self._proxy_procs, grace)
        if self.state_path.exists():
            self.save_state()
        return reports

    # -- state file -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "dir": str(self.dir),
            "seed": self.seed,
            "plugins": list(self.plugins),
            "proxy": {
                "pid": None if self.proxy_process is None else self.proxy_process.pid,
                "control": str(self.control_path),
                "log": str(self.dir / "logs" / "proxy.log"),
            },
            "fault_log": str(self.fault_log),
            "nodes": [h.to_json() for h in self.nodes.values()],
        }

    def save_state(self) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)

    @classmethod
    def attach(cls, directory: str | os.PathLike[str], *, detached: bool = True) -> Cluster:
        """The cluster described by ``DIR/cluster.json`` (for ``cluster status``/``down``)."""
        d = Path(directory).absolute()
        try:
            state = json.loads((d / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HarnessError(
                f"{d} holds no cluster ({STATE_FILE} missing); start one with "
                f"`aura-node cluster up --dir {d}`"
            ) from None
        except ValueError as exc:
            raise HarnessError(f"{d / STATE_FILE} is not valid JSON: {exc}") from None
        if state.get("version") != STATE_VERSION:
            raise HarnessError(
                f"{d / STATE_FILE} has version {state.get('version')}, expected {STATE_VERSION}"
            )
        nodes = state["nodes"]
        c = cls(
            d,
            nodes=max(1, sum(n["role"] == "device" for n in nodes)),
            guardians=sum(n["role"] == "guardian" for n in nodes),
            seed=int(state.get("seed", 0)),
            detached=detached,
            plugins=[str(p) for p in state.get("plugins", [])],
        )
        for n in nodes:
            h = NodeHandle(
                name=n["name"],
                role=n["role"],
                home=Path(n["home"]),
                listen=n["listen"],
                device_id=n["device_id"],
                public_key=n["public_key"],
                log_path=Path(n["log"]),
                dial_ports={k: int(v) for k, v in n.get("dial_ports", {}).items()},
            )
            if n.get("pid"):
                h.process = ManagedProcess(name=h.name, pid=int(n["pid"]), marker=str(h.home))
            c.nodes[h.name] = h
        pid = state.get("proxy", {}).get("pid")
        if pid:
            c.proxy_process = ManagedProcess(name="proxy", pid=int(pid), marker=str(c.control_path))
            c._proxy_procs[:] = [c.proxy_process]
        return c

    # -- faults on processes ----------------------------------------------------------------------

    def record_fault(self, op: str, target: str | None, **params: Any) -> None:
        entry = {"t": time.time(), "source": "harness", "op": op, "target": target, **params}
        with open(self.fault_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def kill(self, name: str) -> ExitReport:
        """SIGKILL a node: a crash, as far as it can tell (no clean shutdown, no last fsync)."""
        h = self.node(name)
        if h.process is None:
            raise HarnessError(f"node {name} was never started")
        self.record_fault("kill", name, pid=h.process.pid)
        return h.process.kill()

    def restart(self, name: str, *, wait: bool = True, timeout: float | None = None) -> None:
        """Start a stopped or killed node again on the same home; wait until ready by default."""
        h = self.node(name)
        if h.process is not None and h.process.alive():
            raise HarnessError(f"node {name} is still running (pid {h.process.pid}); kill it first")
        self.record_fault("restart", name)
        self._start_node(name)
        self.save_state()
        if wait:
            self.wait_ready([name], timeout=timeout)

    def pause(self, name: str) -> None:
        """SIGSTOP a node: it holds its sockets but answers nothing (a GC pause, a hung VM)."""
        h = self.node(name)
        if h.process is None:
            raise HarnessError(f"node {name} was never started")
        self.record_fault("pause", name, pid=h.process.pid)
        h.process.pause()

    def resume(self, name: str) -> None:
        h = self.node(name)
        if h.process is None:
            raise HarnessError(f"node {name} was never started")
        self.record_fault("resume", name, pid=h.process.pid)
        h.process.resume()

    # -- faults on links --------------------------------------------------------------------------

    def partition(
        self, *groups: Iterable[str], mode: PartitionMode = "blackhole"
    ) -> list[Direction]:
        """Cut every link between nodes of different groups, both directions.

        ``partition(["d1"])`` isolates d1 from everyone; ``partition(["d1", "d2"], ["d3"])``
        splits the cluster in two.
        """
        dirs = directions_between([list(g) for g in groups], self.nodes)
        self.proxy.partition(dirs, mode)
        return dirs

    def cut(self, src: str, dst: str, *, mode: PartitionMode = "blackhole") -> None:
        """One-way partition: bytes from ``src`` to ``dst`` stop; the other way still flows."""
        self.node(src), self.node(dst)
        self.proxy.partition([(src, dst)], mode)

    def shape(
        self,
        src: str,
        dst: str,
        *,
        delay: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        both_ways: bool = True,
    ) -> None:
        """Delay/jitter (seconds) and loss (probability) on traffic src->dst (and back)."""
        self.node(src), self.node(dst)
        dirs: list[Direction] = [(src, dst), (dst, src)] if both_ways else [(src, dst)]
        self.proxy.shape(
            dirs,
            delay_ms=None if delay is None else delay * 1000,
            jitter_ms=None if jitter is None else jitter * 1000,
            loss=loss,
        )

    def heal(self, *pairs: tuple[str, str]) -> None:
        """Clear link faults: on the given directions, or on every link when none are given."""
        self.proxy.heal(list(pairs) if pairs else None)

    # -- observation ------------------------------------------------------------------------------

    def logs(self) -> dict[str, str]:
        """Every node's log (stdout+stderr) and the proxy's, by name."""
        out = {name: h.log_text() for name, h in self.nodes.items()}
        out["proxy"] = _tail(self.dir / "logs" / "proxy.log", lines=None)
        return out

    def faults(self) -> list[dict[str, Any]]:
        try:
            text = self.fault_log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def status(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """Each node's process state and, when it answers, its ``ctl status``."""
        nodes = []
        for h in self.nodes.values():
            entry: dict[str, Any] = {
                "name": h.name,
                "role": h.role,
                "pid": h.pid,
                "process": "never_started" if h.process is None else h.process.state(),
            }
            if h.alive():
                try:
                    entry["status"] = h.ctl("status", wait=timeout)
                except AuraError as exc:
                    entry["error"] = exc.to_json()
            nodes.append(entry)
        proxy_state = "never_started" if self.proxy_process is None else self.proxy_process.state()
        return {"dir": str(self.dir), "proxy": {"process": proxy_state}, "nodes": nodes}


def _stop_all(
    nodes: Mapping[str, NodeHandle], proxy: list[ManagedProcess], grace: float
) -> list[ExitReport]:
    """Stop every node, then the proxy. Module level so the finalizer holds no ``Cluster``."""
    reports = stop_many([h.process for h in nodes.values() if h.process is not None], grace)
    return reports + stop_many(proxy, grace)


def _tail(path: Path, lines: int | None = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return text if lines is None else "\n".join(text.splitlines()[-lines:])
