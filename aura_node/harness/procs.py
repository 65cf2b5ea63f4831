"""Background processes of a cluster: start, signal, stop, and tell how they ended.

Each node (and the fault proxy) runs in its own session and process group, so a Ctrl-C in the
terminal that ran ``aura-node cluster up`` does not reach it and signals can address the whole
group. Two ways to start one:

- ``detached=True`` (the ``cluster up`` CLI): ``posix_spawn`` with ``setsid``; the process
  outlives the command that started it and is found again later by pid from ``cluster.json``.
- ``detached=False`` (the Python ``Cluster`` in tests): a ``subprocess.Popen`` child that also
  gets ``PR_SET_PDEATHSIG=SIGKILL`` on Linux, so even if the test process is killed outright
  (where no finalizer runs) the kernel kills the node; no orphans.

A pid read back from a file may have been reused by an unrelated process after the node died,
so every process carries a *marker* (a path unique to the cluster) that must appear in
``/proc/PID/cmdline`` before we signal it. The exit status is only available to the parent:
when ``cluster down`` runs in a later command, the report says how the process was stopped
(SIGTERM within the grace period, or SIGKILL) and leaves ``exit_code`` null.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

StopHow = Literal["sigterm", "sigkill", "already_exited"]
ProcState = Literal["running", "paused", "zombie", "gone"]

POLL_S = 0.02
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitReport:
    name: str
    pid: int
    how: StopHow
    #: exit status as subprocess reports it (negative = killed by that signal); None when
    #: this process is not the parent and cannot know it
    exit_code: int | None
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "how": self.how,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
        }


def _pdeathsig_preexec() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # resolved before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class ManagedProcess:
    """One background process of the cluster, started here or re-attached by pid."""

    def __init__(
        self, *, name: str, pid: int, marker: str, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.name = name
        self.pid = pid
        self.marker = marker
        self._popen = popen
        self._exit_code: int | None = None
        self._reaped = False

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} {self.state()}>"

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        marker: str,
        detached: bool,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        if marker not in " ".join(argv):
            raise ValueError(f"the marker {marker!r} must appear in the command line")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            if detached:
                devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    pid = os.posix_spawn(
                        argv[0],
                        list(argv),
                        full_env,
                        file_actions=[
                            (os.POSIX_SPAWN_DUP2, devnull, 0),
                            (os.POSIX_SPAWN_DUP2, fd, 1),
                            (os.POSIX_SPAWN_DUP2, fd, 2),
                        ],
                        setsid=True,
                    )
                finally:
                    os.close(devnull)
                return cls(name=name, pid=pid, marker=marker)
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=full_env,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
            )
            return cls(name=name, pid=popen.pid, marker=marker, popen=popen)
        finally:
            os.close(fd)

    # -- state ----------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Collect the exit status if we are the parent and the process has ended."""
        if self._reaped:
            return
        if self._popen is not None:
            rc = self._popen.poll()
            if rc is not None:
                self._exit_code, self._reaped = rc, True
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child: /proc tells whether it is alive
        if pid == self.pid:
            self._exit_code, self._reaped = os.waitstatus_to_exitcode(status), True

    def state(self) -> ProcState:
        self._reap()
        if self._reaped:
            return "gone"
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except (FileNotFoundError, ProcessLookupError):
            return "gone"
        # field 3 of /proc/PID/stat, after the parenthesised command name
        code = stat.rpartition(")")[2].split()[0]
        if code in ("Z", "X"):
            return "zombie"
        if self.marker not in cmdline:
            return "gone"  # the pid was reused by something else
        return "paused" if code in ("T", "t") else "running"

    def alive(self) -> bool:
        return self.state() in ("running", "paused")

    @property
    def exit_code(self) -> int | None:
        self._reap()
        return self._exit_code

    # -- signals --------------------------------------------------------------------------------

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the process group; False if the process is already gone."""
        if not self.alive():
            return False
        try:
            os.killpg(self.pid, sig)  # own session: pgid == pid
        except ProcessLookupError:
            return False
        except PermissionError:
            os.kill(self.pid, sig)
        return True

    def pause(self) -> None:
        """SIGSTOP the group and wait until the kernel shows the process stopped."""
        if self.signal(signal.SIGSTOP):
            self._wait_state(lambda s: s != "running")

    def resume(self) -> None:
        if self.signal(signal.SIGCONT):
            self._wait_state(lambda s: s != "paused")

    def _wait_state(self, done: Callable[[ProcState], bool], timeout: float = 5.0) -> None:
        # Signal delivery is asynchronous: without this a caller could observe the old state.
        deadline = time.monotonic() + timeout
        while not done(self.state()) and time.monotonic() < deadline:
            time.sleep(0.002)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._popen is not None:
            try:
                self._popen.wait(timeout=max(0.0, timeout))
            except subprocess.TimeoutExpired:
                return False
            self._reap()
            return True
        while True:
            if self.state() in ("gone", "zombie"):
                self._reap()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def kill(self) -> ExitReport:
        """SIGKILL now (a crash, as far as the node can tell) and wait until it is gone."""
        t0 = time.monotonic()
        if not self.signal(signal.SIGKILL):
            return self._report("already_exited", t0)
        self.wait_gone(10.0)
        return self._report("sigkill", t0)

    def stop(self, grace: float = 5.0) -> ExitReport:
        """SIGTERM (and SIGCONT, in case it is paused), then SIGKILL after ``grace`` seconds."""
        return stop_many([self], grace)[0]

    def _report(self, how: StopHow, t0: float) -> ExitReport:
        return ExitReport(
            name=self.name,
            pid=self.pid,
            how=how,
            exit_code=self.exit_code,
            seconds=time.monotonic() - t0,
        )


def stop_many(procs: Sequence[ManagedProcess], grace: float) -> list[ExitReport]:
    """Stop several processes with overlapping grace periods (not one after the other)."""
    t0 = time.monotonic()
    reports: dict[int, ExitReport] = {}
    running = []
    for p in procs:
        if p.alive():
            running.append(p)
        else:
            p._reap()
            reports[id(p)] = p._report("already_exited", t0)
    for p in running:
        p.signal(signal.SIGTERM)
        p.signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
    deadline = t0 + grace
    for p in running:
        if p.wait_gone(max(0.0, deadline - time.monotonic())):
            reports[id(p)] = p._report("sigterm", t0)
    for p in running:
        if id(p) not in reports:
            p.signal(signal.SIGKILL)
            p.wait_gone(10.0)
            reports[id(p)] = p._report("sigkill", t0)
    return [reports[id(p)] for p in procs]
