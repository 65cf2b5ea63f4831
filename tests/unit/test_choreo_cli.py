"""`aura-node choreo list|show|check`."""

from __future__ import annotations

import pytest

import aura_node.protocols.registry as registry
from aura_node.cli import main
from tests.unit.test_choreo_errors import SHOP


@pytest.fixture(autouse=True)
def shipped_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands show what a node runs, plugins included; other test modules register
    plugin choreographies in this process at import (test_kit), so these tests, which are
    about the shipped ones, start from none."""
    monkeypatch.setattr(registry, "_PLUGINS", {})


def test_check_passes_on_the_shipped_choreographies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["choreo", "check"]) == 0
    out = capsys.readouterr().out
    assert "all 6 choreographies well formed" in out
    assert registry.registry_hash().hex() in out
    for name in ("ping", "genesis", "dkd", "recovery", "account-sync", "reshare"):
        assert f"ok  {name}:" in out


def test_check_fails_and_lists_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "REGISTRY", {**registry.REGISTRY, "shop": SHOP})
    assert main(["choreo", "check"]) == 1
    err = capsys.readouterr().err
    assert "role 'courier' cannot learn the choice by buyer" in err
    assert "test_choreo_errors.py:" in err and "trace:" in err
    assert "1 choreographies are ill formed" in err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["choreo", "list"]) == 0
    out = capsys.readouterr().out
    assert "dkd        roles: initiator, participants[m]; 6 messages" in out


def test_show_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["choreo", "show", "dkd", "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("sequenceDiagram\n")
    assert main(["choreo", "show", "dkd", "--format", "text"]) == 0
    assert capsys.readouterr().out.startswith("choreography dkd\n")
    assert main(["choreo", "show", "dkd", "--role", "participants"]) == 0
    assert capsys.readouterr().out.startswith("stateDiagram-v2\n")
    assert main(["choreo", "show", "dkd", "--role", "participants", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith('digraph "dkd/participants" {')
    # the initiator gathers q of the m participants' commitments and reveals
    args = ["choreo", "show", "dkd", "--role", "initiator", "--format", "text"]
    assert main([*args, "--bind", "m=5", "--bind", "q=3"]) == 0
    out = capsys.readouterr().out
    assert "bindings: m=5, q=3" in out
    assert "gather q of m DkdCommitment from participants (k=3)" in out
    assert "gather q of m DkdReveal from participants (k=3)" in out
    args = ["choreo", "show", "dkd", "--role", "participants", "--format", "text"]
    assert main([*args, "--bind", "m=5", "--bind", "q=3"]) == 0
    out = capsys.readouterr().out
    assert "bindings: m=5, q=3" in out and "recv DkdCollected from initiator" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["choreo", "show", "nope"], "no choreography 'nope'"),
        (["choreo", "show", "dkd", "--role", "nobody"], "has no role 'nobody'"),
        (["choreo", "show", "dkd", "--format", "dot"], "add --role ROLE"),
        (["choreo", "show", "dkd", "--role", "initiator", "--bind", "q"], "NAME=INTEGER"),
        (
            ["choreo", "show", "dkd", "--role", "initiator", "--bind", "q=9"],
            "threshold 'q' must satisfy 1 <= q <= |participants| = 1, got 9",
        ),
        (
            ["choreo", "show", "dkd", "--role", "initiator", "--bind", "m=0"],
            "role set 'participants' needs m >= 1, got 0",
        ),
        (["choreo", "show", "dkd", "--role", "initiator", "--bind", "t=2"], "unknown parameters"),
    ],
)
def test_show_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert needle in capsys.readouterr().err
