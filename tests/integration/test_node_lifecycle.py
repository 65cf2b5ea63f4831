"""Process lifecycle: sd_notify READY/STOPPING, SIGTERM exit 0, pid file, ctl on a stopped node."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import tempfile

import pytest

from aura_node.cli import main as cli_main
from tests.integration.nodeproc import cluster

pytestmark = pytest.mark.e2e


def test_sigterm_exits_zero_with_ready_and_stopping_notifications() -> None:
    d = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(d, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, cluster(["a"]) as [a]:
        sock.bind(path)
        sock.settimeout(20)
        a.env["NOTIFY_SOCKET"] = path
        a.start(wait=False)
        assert sock.recv(256) == b"READY=1"
        # READY means: links listen, rehydration done, control socket answers
        st = a.ctl("status")
        assert st["ready"] is True
        assert (a.home / "node.pid").read_text().strip() == str(a.proc.pid)  # type: ignore[union-attr]
        assert a.stop(signal.SIGTERM) == 0
        assert sock.recv(256) == b"STOPPING=1"
        assert not (a.home / "node.pid").exists()
        assert any(e.get("event") == "stopped" for e in a.log_events())
    os.unlink(path)
    os.rmdir(d)


def test_ctl_shutdown_and_sigint_exit_zero() -> None:
    with cluster(["a"]) as [a]:
        a.start()
        assert a.ctl("shutdown") == {"stopping": True}
        assert a.proc is not None and a.proc.wait(15) == 0
        a.start()
        assert a.stop(signal.SIGINT) == 0


def test_ctl_against_a_stopped_node_is_a_clear_error() -> None:
    with cluster(["a"]) as [a]:
        a.start()
        assert a.stop() == 0
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(["ctl", "--home", str(a.home), "status"])
        assert rc == 3
        assert "not running" in err.getvalue()
        assert "Traceback" not in err.getvalue()


def test_a_second_node_on_the_same_home_is_refused_clearly() -> None:
    import subprocess
    import sys

    with cluster(["a"]) as [a]:
        a.start()
        p = subprocess.run([sys.executable, "-m", "aura_node", "run", "--home", str(a.home)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert "aura-node: error:" in p.stderr and "in use by another process" in p.stderr
        assert "Traceback" not in p.stderr
        assert a.ctl("status")["ready"] is True  # the first node is unharmed
        assert a.stop() == 0
