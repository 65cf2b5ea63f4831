"""The command line under hostile or careless use, as real processes: a non-UTF-8 argument, a
closed stdout (``| head``), a listen port already taken. Each is one line on stderr (or
nothing, for the closed pipe), never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodeproc import REPO, cli

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
    lines = text.strip().splitlines()
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
