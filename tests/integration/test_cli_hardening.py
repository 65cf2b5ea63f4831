"""The command line under hostile or careless use, as real processes: a non-UTF-8 argument, a
closed stdout (``| head``), a listen port already taken. Each is one line on stderr (or
nothing, for the closed pipe), never a traceback."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.cli import main
from tests.integration.nodeproc import REPO, cli, cluster

AURA = [sys.executable, "-m", "aura_node"]


@pytest.fixture
def home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="aura-cli-", dir="/tmp"))
    try:
        cli("init", "--home", str(root / "n"), "--name", "n", "--listen", "127.0.0.1:0")
        yield root / "n"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(argv: list[Any], *, stdout: int = subprocess.PIPE
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*AURA, *argv], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE,
                          timeout=60, check=False)


def _one_line_error(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    # `run` logs JSON lines to stderr before it fails; the error is the one other line
    lines = [ln for ln in text.strip().splitlines() if not ln.startswith("{")]
    assert len(lines) == 1, text
    assert lines[0].startswith("aura-node: error: "), text
    return lines[0]


@pytest.mark.parametrize("argv", [
    [b"ctl", b"session", b"\xff"],
    [b"ctl", b"dkd", b"--context", b"key-\xc3\x28"],
    [b"ctl", b"ping", b"b\xfe"],
    [b"ctl", b"recovery", b"status", b"\x80\x80"],
])
def test_ctl_with_a_non_utf8_argument_is_one_line(home: Path, argv: list[bytes]) -> None:
    # No node runs: the argument is refused before anything is sent (it used to be a
    # UnicodeEncodeError traceback from the request encoder).
    done = _run([argv[0], b"--home", os.fsencode(home), *argv[1:]])
    line = _one_line_error(done.stderr)
    assert done.returncode == 1, done
    assert "is not UTF-8" in line, line
    assert done.stdout == b""


@pytest.mark.parametrize("argv", [
    ["choreo", "list"],
    ["choreo", "show", "dkd", "--format", "mermaid"],
    ["journal", "show", "--home", "{home}"],
    ["journal", "verify", "--home", "{home}"],
    ["peer", "list", "--home", "{home}"],
])
def test_a_closed_stdout_exits_quietly(home: Path, argv: list[str]) -> None:
    # The reader is gone before the command writes (as `| head` that already exited): the
    # first write fails with EPIPE. Quiet, with the status a SIGPIPE death would give.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = _run([a.format(home=home) for a in argv], stdout=write_end)
    finally:
        os.close(write_end)
    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == 141


def _taken_port() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, int(s.getsockname()[1])


@pytest.mark.e2e
def test_a_listen_port_in_use_is_one_line_at_run(home: Path) -> None:
    taken, port = _taken_port()
    with taken:
        cli("init", "--home", str(home.parent / "m"), "--name", "m",
            "--listen", f"127.0.0.1:{port}")
        done = _run(["run", "--home", str(home.parent / "m"), "--log-format", "json"])
    line = _one_line_error(done.stderr)
    assert done.returncode == 1
    assert f"cannot listen for peers on 127.0.0.1:{port}: " in line, line
    assert "[node] listen" in line, line


@pytest.mark.e2e
def test_idle_connections_do_not_lock_the_operator_out_of_a_real_node() -> None:
    # Issue 13: 64 local connections that never send a byte held every control slot for 300 s
    # and `aura-node ctl status` got `busy`.
    with cluster(["a"]) as [a]:
        a.start()
        idle: list[socket.socket] = []
        try:
            for _ in range(80):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                idle.append(s)
                s.connect(str(a.socket_path))  # blocking: waits while the backlog is full
            time.sleep(1.2)  # accepted, and waited past the eviction grace
            for cmd in (["status"], ["shutdown"]):
                started = time.monotonic()
                done = _run(["ctl", "--home", str(a.home), "--timeout", "4", *cmd])
                assert done.returncode == 0, done.stderr.decode()
                assert time.monotonic() - started < 4.5
            assert a.proc is not None
            assert a.proc.wait(15) == 0
        finally:
            for s in idle:
                s.close()


_CTL_SHAPES = [
    ["status"], ["session", "{0}"], ["ping", "{0}"], ["ping", "{0}", "--timeout", "{1}"],
    ["dkd", "--context", "{0}"], ["dkd", "--context", "c", "--participants", "{0}"],
    ["recovery", "status", "{0}"], ["recovery", "start", "--account", "{0}", "--guardians", "{1}"],
    ["account", "create", "--devices", "{0}", "--threshold", "{1}"], ["{0}"],
]


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(_CTL_SHAPES), raw=st.lists(st.binary(max_size=12), min_size=2,
                                                         max_size=2))
def test_ctl_with_arbitrary_argument_bytes_never_tracebacks(
        home: Path, shape: list[str], raw: list[bytes]) -> None:
    # argv reaches Python decoded with surrogateescape; the same strings, in-process (a
    # subprocess per example would be slow; the subprocess test above covers the real argv)
    values = [os.fsdecode(b.replace(b"\0", b"")) for b in raw]
    argv = ["ctl", "--home", str(home)] + [a.format(*values) if "{" in a else a for a in shape]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code if isinstance(exc.code, int) else 2
    text = err.getvalue()
    assert "Traceback" not in text
    assert rc in (1, 2, 3), (rc, text)
    if rc != 2:
        assert text.count("\n") == 1 and text.startswith("aura-node: error: "), text
