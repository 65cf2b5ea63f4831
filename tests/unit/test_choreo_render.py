"""Renderers: golden Mermaid sequence diagrams of the shipped choreographies, a structural parse
of every Mermaid/DOT output, and the registry hash."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.choreo.render import (
    canonical,
    local_text,
    sequence_mermaid,
    state_dot,
    state_mermaid,
    text,
)
from aura_node.protocols.registry import REGISTRY, hash_registry, registry_hash

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("AURA_UPDATE_GOLDEN") == "1"

ARROW = re.compile(r"^(\w+)(->>|-->>|-x|--x|->|-->|-\)|--\))(\w+): (\S.*)$")
NOTE = re.compile(r"^Note (over|left of|right of) (\w+)(?:,(\w+))?: (\S.*)$")
PARTICIPANT = re.compile(r"^participant (\w+)(?: as (\S.*))?$")
OPENERS = ("alt", "par", "loop", "opt", "critical", "rect", "break")


def parse_sequence(diagram: str) -> dict[str, int]:
    """A structural parse of a Mermaid sequence diagram: known keywords only, balanced blocks,
    ``else`` only inside ``alt``, every arrow and note between declared participants."""
    lines = diagram.splitlines()
    assert lines[0] == "sequenceDiagram"
    participants: list[str] = []
    stack: list[str] = []
    counts = {"arrows": 0, "notes": 0, "blocks": 0}
    for n, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line or line.startswith("%%"):
            continue
        if m := PARTICIPANT.match(line):
            assert not counts["arrows"], f"line {n}: participant after the first message"
            participants.append(m.group(1))
        elif m := ARROW.match(line):
            assert m.group(1) in participants and m.group(3) in participants, f"line {n}: {line}"
            counts["arrows"] += 1
        elif m := NOTE.match(line):
            assert m.group(2) in participants, f"line {n}: {line}"
            assert m.group(3) is None or m.group(3) in participants, f"line {n}: {line}"
            counts["notes"] += 1
        elif line.split(" ", 1)[0] in OPENERS:
            assert len(line.split(" ", 1)) == 2, f"line {n}: block without a label"
            stack.append(line.split(" ", 1)[0])
            counts["blocks"] += 1
        elif line.startswith("else "):
            assert stack and stack[-1] == "alt", f"line {n}: else outside alt"
        elif line.startswith("and "):
            assert stack and stack[-1] == "par", f"line {n}: and outside par"
        elif line == "end":
            assert stack, f"line {n}: end without a block"
            stack.pop()
        else:
            raise AssertionError(f"line {n}: not Mermaid sequence syntax: {line!r}")
    assert not stack, f"unclosed blocks: {stack}"
    return counts


TRANSITION = re.compile(r"^(\[\*\]|\w+) --> (\[\*\]|\w+)(?:: (\S.*))?$")


def parse_state_diagram(diagram: str, states: tuple[str, ...]) -> int:
    lines = diagram.splitlines()
    assert lines[0] == "stateDiagram-v2"
    edges = 0
    for raw in lines[1:]:
        line = raw.strip()
        if not line or line.startswith("%%"):
            continue
        if m := re.match(r'^state "([^"]+)" as (\w+)$', line):
            assert m.group(2) in states
        elif m := TRANSITION.match(line):
            for end in (m.group(1), m.group(2)):
                assert end == "[*]" or end in states, line
            assert ":" not in (m.group(3) or ""), line
            edges += 1
        elif m := re.match(r"^note (right|left) of (\w+): \S.*$", line):
            assert m.group(2) in states
        else:
            raise AssertionError(f"not stateDiagram-v2 syntax: {line!r}")
    return edges


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_sequence_diagram_golden(name: str) -> None:
    out = sequence_mermaid(REGISTRY[name])
    path = GOLDEN / f"{name}.mmd"
    if UPDATE:
        path.write_text(out)
    assert path.read_text() == out, f"{path} differs; AURA_UPDATE_GOLDEN=1 rewrites it"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_sequence_diagram_parses(name: str) -> None:
    chor = REGISTRY[name]
    counts = parse_sequence(sequence_mermaid(chor))
    assert counts["arrows"] >= 2
    out = sequence_mermaid(chor)
    for role in chor.roles:
        assert f"participant {role}" in out


def test_parser_rejects_broken_diagrams() -> None:
    good = sequence_mermaid(REGISTRY["ping"])
    with pytest.raises(AssertionError):
        parse_sequence(good.replace("    end\n", "", 1))
    with pytest.raises(AssertionError):
        parse_sequence(good.replace("initiator->>responder", "initiator->>nobody"))
    with pytest.raises(AssertionError):
        parse_sequence(good + "    else stray\n")


@pytest.mark.parametrize(("name", "role"), [(n, r) for n, c in REGISTRY.items() for r in c.roles])
def test_state_diagrams_parse(name: str, role: str) -> None:
    lt = REGISTRY[name].project(role)
    edges = parse_state_diagram(state_mermaid(lt), lt.states)
    explicit = [t for t in lt.transitions if not t.implicit]
    assert edges == len(explicit) + 1 + len(lt.final)
    dot = state_dot(lt)
    assert dot.startswith("digraph ") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    declared = set(re.findall(r'^  "([^"]+)" \[label=', dot, re.M))
    assert declared == set(lt.states)
    for src, dst in re.findall(r'^  "([^"]+)" -> "([^"]+)"', dot, re.M):
        assert src in declared and dst in declared
    txt = local_text(lt)
    for s in lt.states:
        assert f"\n  {s}" in txt


def test_text_names_source_lines_and_canonical_does_not() -> None:
    chor = REGISTRY["dkd"]
    assert "aura_node/protocols/dkd/choreography.py:" in text(chor)
    assert "choreography.py" not in canonical(chor)
    canon = canonical(chor)
    assert "message DkdReveal(reveal: RevealedPartial)\n" in canon
    assert (
        "message DkdRequest(account_id: str, context: str, threshold: int, "
        "holders: tuple[str, ...], blinded_base: bytes, commitment: SignedCommitment)\n"
    ) in canon
    assert "threshold q over participants: 1 <= q <= |participants|\n" in canon
    assert "participants -> initiator: DkdCommitment [gather q of m, deadline dkd_timeout]" in canon


def test_registry_hash_is_stable_and_sensitive() -> None:
    h = registry_hash()
    assert len(h) == 32 and h == hash_registry(REGISTRY)
    code = "from aura_node.protocols.registry import registry_hash; print(registry_hash().hex())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == h.hex()

    class Probe(msgspec.Struct, frozen=True, kw_only=True):
        nonce: bytes

    class ProbeWide(msgspec.Struct, frozen=True, kw_only=True):
        nonce: bytes
        extra: int

    class Stop(msgspec.Struct, frozen=True, kw_only=True):
        reason: str

    def make(msg: type) -> object:
        @choreography("ping", abort=Stop)
        def variant(c: ChoreographyBuilder) -> None:
            a, b = c.role("initiator"), c.role("responder")
            c.send(a, b, msg)

        return variant

    base = dict(REGISTRY)
    one = hash_registry({**base, "ping": make(Probe)})  # type: ignore[dict-item]
    two = hash_registry({**base, "ping": make(ProbeWide)})  # type: ignore[dict-item]
    again = hash_registry({**base, "ping": make(Probe)})  # type: ignore[dict-item]
    assert one != h and one != two and one == again


def test_registry_hash_covers_nested_message_parts() -> None:
    """A change inside a Struct nested in a message (DKD's SignedCommitment) changes the
    canonical text, so two nodes with different wire formats never agree on the hash."""
    from aura_node.choreo.render import canonical
    from aura_node.protocols.registry import REGISTRY

    text_ = canonical(REGISTRY["dkd"])
    assert "  part SignedCommitment(" in text_
    nested = [line for line in text_.splitlines() if line.startswith("  part ")]
    assert len(nested) == len(set(nested))
