"""`aura-node choreo compat OLD NEW`: files, modules and registered names; text and --json;
exit 0 when compatible, 1 when not (with the first role and step that differ)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aura_node.cli import main

TEMPLATE = '''
import msgspec
from aura_node.choreo import ChoreographyBuilder, choreography


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes
    {extra}


class {answer}(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


class ProbeAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("compat-probe", abort=ProbeAbort, version={version})
def PROBE(c: ChoreographyBuilder) -> None:
    a, b = c.role("asker"), c.role("answerer")
    c.send(a, b, Probe)
    c.send(b, a, {answer}, deadline="probe_timeout")
'''


def _write(tmp: Path, name: str, *, version: int, answer: str = "Answer",
           extra: str = "") -> str:
    path = tmp / f"{name}.py"
    path.write_text(TEMPLATE.format(version=version, answer=answer, extra=extra))
    return str(path)


def test_compatible_versions_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    old = _write(tmp_path, "probe_v1", version=1)
    new = _write(tmp_path, "probe_v2", version=2, extra='note: str = ""')
    assert main(["choreo", "compat", old, new]) == 0
    assert capsys.readouterr().out.strip() == (
        "compatible: compat-probe v2 can stand in for compat-probe v1")


def test_incompatible_versions_name_role_and_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _write(tmp_path, "probe_old", version=1)
    new = _write(tmp_path, "probe_new", version=2, answer="Reply")
    assert main(["choreo", "compat", old, new]) == 1
    out = capsys.readouterr().out
    assert out.startswith("incompatible: compat-probe v2 cannot stand in for compat-probe v1: "
                          "role asker, step 2 after send Probe to answerer; recv Reply")
    assert main(["choreo", "compat", old, new, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["compatible"] is False and doc["bound"] == 8
    [entry] = doc["choreographies"]
    assert (entry["name"], entry["old_version"], entry["new_version"]) == ("compat-probe", 1, 2)
    assert entry["role"] == "asker" and entry["step"] == 2
    assert entry["trace"] == ["send Probe to answerer", "recv Reply from answerer"]


def test_a_registered_name_and_a_module_with_no_common_choreography(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["choreo", "compat", "ping", "aura_node.protocols.ping.choreography"]) == 0
    assert "compatible: ping v1 can stand in for ping v1" in capsys.readouterr().out
    assert main(["choreo", "compat", "dkd", "ping"]) == 1
    assert "share no choreography name" in capsys.readouterr().err


def test_list_shows_versions_and_what_an_upgrade_stands_in_for(
    capsys: pytest.CaptureFixture[str]
) -> None:
    from aura_node.protocols import registry
    from aura_node.protocols.ping.choreography import Pong
    from tests.unit.kit_support import registrations_undone
    from tests.unit.test_registry_versions import ping_version

    with registrations_undone():
        registry._PLUGINS.clear()  # other test modules register plugins in this process
        registry.register_choreography(ping_version(2, Pong))
        assert main(["choreo", "list"]) == 0
    out = capsys.readouterr().out
    assert "ping       roles: initiator, responder; 3 messages; v2\n" in out
    assert "stands in for v1 (proven compatible)" in out
    assert "dkd        roles: initiator, participants[m]; 6 messages; v1\n" in out
