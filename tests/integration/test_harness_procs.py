"""Background process management with trivial child processes (no nodes needed)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from aura_node.harness.procs import ManagedProcess

SLEEPER = "import signal, sys, time; print('up', flush=True); time.sleep(60)"
IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(60)"
)


def _spawn(tmp_path: Path, code: str, *, detached: bool, name: str = "p") -> ManagedProcess:
    marker = f"# marker {tmp_path}/{name}"
    return ManagedProcess.spawn(
        name,
        [sys.executable, "-c", f"{code}\n{marker}"],
        log_path=tmp_path / f"{name}.log",
        marker=marker,
        detached=detached,
    )


def _wait_log(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.02)


def test_stop_with_sigterm_reports_exit_code(tmp_path: Path) -> None:
    p = _spawn(tmp_path, SLEEPER, detached=False)
    _wait_log(tmp_path / "p.log", "up")
    assert p.state() == "running" and os.getpgid(p.pid) == p.pid  # own process group
    report = p.stop(grace=5)
    assert report.how == "sigterm" and report.exit_code == -signal.SIGTERM
    assert p.state() == "gone"
    assert p.stop().how == "already_exited"


def test_stop_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    p = _spawn(tmp_path, IGNORES_TERM, detached=False)
    _wait_log(tmp_path / "p.log", "up")
    report = p.stop(grace=0.3)
    assert report.how == "sigkill" and report.exit_code == -signal.SIGKILL
    assert report.seconds >= 0.3


def test_pause_and_resume(tmp_path: Path) -> None:
    p = _spawn(tmp_path, SLEEPER, detached=True)
    try:
        _wait_log(tmp_path / "p.log", "up")
        p.pause()
        assert p.state() == "paused"
        p.resume()
        assert p.state() == "running"
        p.pause()
        report = p.stop(grace=5)  # a paused process still stops on SIGTERM
        assert report.how == "sigterm"
    finally:
        p.kill()


def test_reattach_by_pid_and_marker(tmp_path: Path) -> None:
    p = _spawn(tmp_path, SLEEPER, detached=True)
    try:
        _wait_log(tmp_path / "p.log", "up")
        again = ManagedProcess(name="p", pid=p.pid, marker=p.marker)
        assert again.alive()
        wrong = ManagedProcess(name="p", pid=p.pid, marker="/not/this/cluster")
        assert not wrong.alive()  # a reused pid is never signalled
        report = again.kill()
        # we happen to be the parent of a posix_spawn child, so waitpid gives the status
        assert report.how == "sigkill" and report.exit_code == -signal.SIGKILL
        assert not p.alive()
    finally:
        p.kill()


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a node outlives no test process, even one killed with SIGKILL."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from aura_node.harness.procs import ManagedProcess\n"
        f"m = '# marker {tmp_path}/grandchild'\n"
        "p = ManagedProcess.spawn('g',"
        " [sys.executable, '-c', 'import time; time.sleep(60)\\n' + m],"
        f" log_path=Path('{tmp_path}/g.log'), marker=m, detached=False)\n"
        "print(p.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = _spawn(tmp_path, code, detached=False, name="parent")
    deadline = time.monotonic() + 10
    while not (tmp_path / "parent.log").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = ManagedProcess(
        name="g", pid=int((tmp_path / "parent.log").read_text().split()[0]),
        marker=f"# marker {tmp_path}/grandchild",
    )
    assert child.alive()
    parent.kill()
    assert child.wait_gone(5.0)
