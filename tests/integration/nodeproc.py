"""Start real ``aura-node run`` processes for end-to-end tests.

Homes are made the way an operator makes them (``aura-node init`` and ``aura-node peer add``,
through ``aura_node.cli.main``), on loopback ports picked free just before use. Each node runs
as its own process with JSON logs in ``HOME/node.log``; ``NOTIFY_SOCKET`` can be passed in.
Homes live under ``/tmp`` (``tempfile.mkdtemp``): the control socket path must fit ``sun_path``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aura_node.cli import main as cli_main
from aura_node.control.client import call
from aura_node.errors import AuraError

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*argv: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(list(argv))
    assert rc == 0, (argv, rc, out.getvalue())
    return dict(json.loads(out.getvalue().strip().splitlines()[-1]))


@dataclass
class NodeProc:
    name: str
    home: Path
    port: int
    public_key: str = ""
    device_id: str = ""
    proc: subprocess.Popen[bytes] | None = None
    plugins: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    _log: Any = None

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    @property
    def socket_path(self) -> Path:
        return self.home / "control.sock"

    def init(self) -> None:
        info = cli("init", "--home", str(self.home), "--name", self.name,
                   "--listen", f"127.0.0.1:{self.port}")
        self.public_key, self.device_id = info["public_key"], info["device_id"]

    def pin(self, other: NodeProc) -> None:
        cli("peer", "add", "--home", str(self.home), "--name", other.name,
            "--public-key", other.public_key, "--address", f"127.0.0.1:{other.port}")

    def pin_key(self, name: str, public_key: str, port: int) -> None:
        """Pin a peer that is not a NodeProc (e.g. a test speaking the wire protocol)."""
        cli("peer", "add", "--home", str(self.home), "--name", name,
            "--public-key", public_key, "--address", f"127.0.0.1:{port}")

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> NodeProc:
        assert self.proc is None or self.proc.poll() is not None
        self._reap()
        cmd = [sys.executable, "-m", "aura_node", "run", "--home", str(self.home),
               "--log-format", "json"]
        for p in self.plugins:
            cmd += ["--plugin", p]
        env = {**os.environ, **self.env}
        if "NOTIFY_SOCKET" not in self.env:
            env.pop("NOTIFY_SOCKET", None)
        self._log = open(self.log_path, "ab")
        # cwd = the repository, so ``--plugin tests.integration...`` modules import
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self._reap()
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     + self.log_text()[-4000:])
            try:
                st = self.ctl("status", wait=2.0)
                if st.get("ready"):
                    return st
            except AuraError as exc:
                last = exc
            time.sleep(0.02)
        raise AssertionError(f"{self.name} not ready in {timeout} s ({last}):\n"
                             + self.log_text()[-4000:])

    def ctl(self, cmd: str, *, wait: float = 30.0, **args: Any) -> dict[str, Any]:
        """One control request; ``wait`` bounds the client's wait, ``args`` are the request's
        (``timeout=`` is the session deadline of ``ping``)."""
        return call(self.socket_path, cmd, args, timeout=wait)

    def wait_links_up(self, names: Sequence[str], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            peers = {p["name"]: p["link"] for p in self.ctl("peers")["peers"]}
            if all(peers.get(n) == "up" for n in names):
                return
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: links not up: {self.ctl('peers')}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reap()
        return rc

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_log(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.log_events():
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                    return e
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: no log event {event} {match}:\n"
                             + self.log_text()[-4000:])


@contextlib.contextmanager
def cluster(names: Sequence[str], *, pin_all: bool = True,
            plugins: dict[str, tuple[str, ...]] | None = None) -> Iterator[list[NodeProc]]:
    """Homes for ``names``, every node pinned to every other; stopped and removed after."""
    root = Path(tempfile.mkdtemp(prefix="aura-", dir="/tmp"))
    nodes = [NodeProc(name=n, home=root / n, port=free_port(),
                      plugins=(plugins or {}).get(n, ())) for n in names]
    try:
        for n in nodes:
            n.init()
        if pin_all:
            for a in nodes:
                for b in nodes:
                    if a is not b:
                        a.pin(b)
        yield nodes
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop(signal.SIGKILL)
            n._reap()
        shutil.rmtree(root, ignore_errors=True)
