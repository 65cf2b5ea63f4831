"""Plugins end to end, with real processes: ``run --plugin`` with a .py file, ``cluster up
--plugin`` (nodes that run the plugin, also after a restart from another directory),
``ctl call`` of a plugin's control command, and every command's one-line refusal of a
missing or broken plugin.

The plugins: ``tests/plugins/hello.py`` (a protocol written only with the public kit, with a
declared command ``hello.send``), and the repository's own ``aura_node/harness/load_plugin.py``
(a control command through the handler-module hook, ``bench.batch``) and
``aura_node/harness/bench_protocol.py`` (a protocol, ``bench-notice``), loaded by path or by
module name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodeproc import REPO, cluster

LOAD_PLUGIN = REPO / "aura_node" / "harness" / "load_plugin.py"
BENCH_PROTOCOL = REPO / "aura_node" / "harness" / "bench_protocol.py"
HELLO = REPO / "tests" / "plugins" / "hello.py"


def aura(*args: str, cwd: Path = REPO, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aura_node", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess[str], start: str) -> str:
    """The process failed with exactly one stderr line beginning ``start``; that line."""
    assert proc.returncode != 0, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(start), lines[0]
    return lines[0]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="aura-plug-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_run_with_a_plugin_file_and_ctl_call(tmp_path: Path) -> None:
    with cluster(["a"], plugins={"a": (str(LOAD_PLUGIN),)}) as [a]:
        home = str(a.home)
        a.start()
        started = a.wait_log("starting")
        assert started["plugins"] == ["load_plugin"]  # a file loads as its stem

        # the plugin's command, through the generic client
        proc = aura("ctl", "--home", home, "call", "bench.batch", "--args", '{"requests": []}')
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"outcomes": []}
        # a built-in command through the same door
        proc = aura("ctl", "--home", home, "call", "status")
        assert proc.returncode == 0 and json.loads(proc.stdout)["name"] == "a"

        # the node names an unknown command and lists what it has, the plugin's included
        line = one_line_error(aura("ctl", "--home", home, "call", "bench.nope"),
                              "aura-node: error: unknown_command: unknown command 'bench.nope' "
                              "(known: ")
        assert "bench.batch" in line and "status" in line
        assert aura("ctl", "--home", home, "call", "bench.nope").returncode == 1
        # the plugin's own argument check answers with its fault code
        proc = aura("ctl", "--home", home, "call", "bench.batch", "--args", '{"requests": 5}')
        assert proc.returncode == 1
        one_line_error(proc, "aura-node: error: invalid_args: requests must be a list")
        # bad JSON is refused before anything is sent
        proc = aura("ctl", "--home", home, "call", "bench.batch", "--args", "{requests: []}")
        assert proc.returncode == 1
        one_line_error(proc, "aura-node: error: --args is not valid JSON: ")

        assert a.stop() == 0
        proc = aura("ctl", "--home", home, "call", "bench.batch")
        assert proc.returncode == 3
        one_line_error(proc, "aura-node: error: node not running: no control socket at ")


def test_run_refuses_a_missing_or_broken_plugin_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n", encoding="utf-8")
    (tmp_path / "idle.py").write_text("X = 1\n", encoding="utf-8")
    with cluster(["a"]) as [a]:
        home = str(a.home)
        cases = [
            ("foo.bar", "aura-node: error: plugin 'foo.bar' not found (no module named 'foo')"),
            (str(tmp_path / "nothere.py"),
             f"aura-node: error: plugin '{tmp_path / 'nothere.py'}' not found (no such file"),
            (str(tmp_path / "broken.py"),
             f"aura-node: error: plugin '{tmp_path / 'broken.py'}' has a syntax error: "),
            (str(tmp_path / "idle.py"),
             f"aura-node: error: plugin '{tmp_path / 'idle.py'}' registers nothing: "),
        ]
        for spec, start in cases:
            proc = aura("run", "--home", home, "--plugin", spec, timeout=30)
            assert proc.returncode == 1
            one_line_error(proc, start)
        assert not a.socket_path.exists()  # the node never started


def _ok(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_cluster_up_runs_the_plugins_on_every_node(short_dir: Path, tmp_path: Path) -> None:
    # a relative path (from the repository) and a module name
    up = _ok(aura("cluster", "up", "--dir", str(short_dir), "--nodes", "2",
                  "--plugin", "tests/plugins/hello.py",
                  "--plugin", "aura_node.harness.load_plugin"))
    d = str(short_dir)
    try:
        # paths are made absolute for the nodes (and for later commands run elsewhere)
        assert up["plugins"] == [str(HELLO), "aura_node.harness.load_plugin"]
        # `cluster up` waited for every link: the nodes agree on the registry with the plugin;
        # the plugin protocol's declared command runs a session between them
        home1 = str(short_dir / "nodes" / "d1")
        result = _ok(aura("ctl", "--home", home1, "call", "hello.send",
                          "--args", '{"peer": "d2", "text": "hi there", "timeout": 10}'))
        assert (result["reply"], result["by"]) == ("HI THERE", "d2"), result
        # its own argument check answers invalid_args, one line
        proc = aura("ctl", "--home", home1, "call", "hello.send", "--args", '{"text": "x"}')
        assert proc.returncode == 1
        one_line_error(proc, "aura-node: error: invalid_args: hello.send: peer must name "
                             "another pinned device, got None")
        # the plugin session is drawn from the journals like a shipped one
        proc = aura("trace", "--dir", d, "--session", result["session"], "--format", "text",
                    "--plugin", str(HELLO))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"hello session {result['session']}")
        assert "-- Hello -->" in proc.stdout and "<- Reply ---" in proc.stdout

        # restarted by a later command from another directory, a node runs the plugins again
        _ok(aura("cluster", "kill", "--dir", d, "d2", cwd=tmp_path))
        _ok(aura("cluster", "restart", "--dir", d, "d2", cwd=tmp_path))
        home2 = str(short_dir / "nodes" / "d2")
        again = _ok(aura("ctl", "--home", home2, "call", "hello.send",
                         "--args", '{"peer": "d1", "text": "back", "timeout": 10}'))
        assert (again["reply"], again["by"]) == ("BACK", "d1"), again
        batch = _ok(aura("ctl", "--home", home2, "call", "bench.batch",
                         "--args", '{"requests": [["status", {}]]}'))
        assert batch["outcomes"][0]["ok"] is True, batch
        started = [json.loads(line) for line in
                   (short_dir / "logs" / "d2.log").read_text().splitlines()
                   if '"starting"' in line]
        assert [e["plugins"] for e in started] == [
            ["hello", "aura_node.harness.load_plugin"]] * 2
        assert "hello" in started[-1]["protocols"]
    finally:
        _ok(aura("cluster", "down", "--dir", d))


def test_cluster_up_refuses_a_broken_plugin_before_starting_anything(short_dir: Path) -> None:
    target = short_dir / "c"
    proc = aura("cluster", "up", "--dir", str(target), "--plugin", "aura_node.nowhere")
    one_line_error(proc, "aura-node: error: plugin 'aura_node.nowhere' not found")
    assert not target.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["choreo", "list"],
        ["choreo", "show", "ping"],
        ["choreo", "check"],
        ["trace", "--dir", "/nonexistent", "--session", "ab"],
        ["cluster", "simulate", "--seed", "1"],
        ["cluster", "chaos", "--duration", "1", "--seed", "1"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_every_command_refuses_a_missing_plugin_in_one_line(command: list[str]) -> None:
    proc = aura(*command, "--plugin", "no_such_plugin_mod", timeout=30)
    assert proc.returncode == 1
    one_line_error(proc, "aura-node: error: plugin 'no_such_plugin_mod' not found "
                         "(no module named 'no_such_plugin_mod')")


def test_choreo_commands_show_a_plugins_choreography() -> None:
    plain = aura("choreo", "list")
    listed = aura("choreo", "list", "--plugin", str(BENCH_PROTOCOL))
    assert plain.returncode == listed.returncode == 0
    assert "bench-notice" not in plain.stdout
    assert "bench-notice roles: sender, receiver; 2 messages" in listed.stdout
    # the plugin changes the registry hash (the fingerprint of every choreography it runs)
    assert plain.stdout.splitlines()[-1] != listed.stdout.splitlines()[-1]

    shown = aura("choreo", "show", "bench-notice", "--plugin", str(BENCH_PROTOCOL))
    assert shown.returncode == 0 and shown.stdout.startswith("sequenceDiagram\n")
    assert "    sender->>receiver: Notice\n" in shown.stdout
    role = aura("choreo", "show", "bench-notice", "--role", "receiver", "--format", "dot",
                "--plugin", "aura_node.harness.bench_protocol")
    assert role.returncode == 0 and role.stdout.startswith('digraph "bench-notice/receiver" {')
    check = aura("choreo", "check", "--plugin", str(BENCH_PROTOCOL))
    assert check.returncode == 0 and "ok  bench-notice:" in check.stdout
    assert "all 7 choreographies well formed" in check.stdout
    one_line_error(aura("choreo", "show", "bench-notice"),
                   "aura-node: error: no choreography 'bench-notice' (have: ")


def test_choreo_check_prints_a_plugin_choreographys_errors_in_full(tmp_path: Path) -> None:
    source = BENCH_PROTOCOL.read_text(encoding="utf-8").replace(
        "    c.send(sender, receiver, Notice)\n",
        "    c.send(sender, receiver, Notice)\n    c.send(receiver, receiver, Notice)\n")
    (tmp_path / "ill_formed.py").write_text(source, encoding="utf-8")
    proc = aura("choreo", "check", "--plugin", str(tmp_path / "ill_formed.py"))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"plugin '{tmp_path / 'ill_formed.py'}' failed to import: "
                               "ChoreographyErrors: choreography 'bench-notice' is ill formed")
    assert len(lines) > 2 and "ill_formed.py:" in proc.stderr  # every error, with its line


def test_simulate_runs_a_scenario_a_plugin_adds() -> None:
    plugin = REPO / "tests" / "plugins" / "sim_scenario.py"
    proc = aura("cluster", "simulate", "--plugin", str(plugin), "--protocol", "dkd-again",
                "--seed", "3", "--no-faults")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok seed 3 dkd-again: ")
    one_line_error(aura("cluster", "simulate", "--protocol", "dkd-again"),
                   "aura-node: error: no scenario 'dkd-again' (have: genesis, dkd, recovery, "
                   "reshare, all)")


def test_chaos_gives_its_nodes_the_plugins(tmp_path: Path) -> None:
    # Only the hand-over is checked (a chaos run is minutes): the cluster chaos builds is
    # replaced by one that reports the plugins it was given and stops the run there.
    code = (
        "import sys\n"
        "from aura_node.cli import main\n"
        "from aura_node.harness import chaos\n"
        "from aura_node.harness.faults import HarnessError\n"
        "def fake(directory, **kw):\n"
        "    raise HarnessError(f\"cluster plugins {list(kw['plugins'])}\")\n"
        "chaos.Cluster = fake\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "cluster", "chaos", "--nodes", "2", "--duration", "1",
         "--seed", "1", "--dir", str(tmp_path / "c"),
         "--plugin", "aura_node/harness/load_plugin.py",
         "--plugin", "aura_node.harness.bench_protocol"],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"aura-node: error: cluster plugins ['{LOAD_PLUGIN}', 'aura_node.harness.bench_protocol']")
