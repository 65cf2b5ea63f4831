"""``docs/writing-a-protocol.md`` quotes the tested example, not a copy that can drift.

Every fenced python block the doc marks ``<!-- from examples/payment_approval/FILE -->`` must
appear verbatim in that file, and together they must show every class, function, transition
and the registration of the example. The control commands the doc tells the reader to call
must be the ones the example's registration generates. (The mypy message the doc shows is
checked against mypy in ``tests/typing/test_doc_wrong_phase.py``.)
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "writing-a-protocol.md"
EXAMPLE = ROOT / "examples" / "payment_approval"
_QUOTE = re.compile(r"<!-- from (?P<file>examples/payment_approval/[\w.]+) -->\n```python\n"
                    r"(?P<code>.*?)\n```", re.S)
_BLOCK = re.compile(r"```python\n(?P<code>.*?)\n```", re.S)


def quotes() -> list[tuple[str, str]]:
    return [(m["file"], m["code"]) for m in _QUOTE.finditer(DOC.read_text())]


def test_every_quoted_block_is_in_the_example_verbatim() -> None:
    found = quotes()
    assert len(found) >= 12
    for file, code in found:
        source = (ROOT / file).read_text()
        assert code in source, f"the doc's block from {file} is not in it verbatim:\n{code}"


def test_the_quotes_show_the_whole_example() -> None:
    shown = "\n".join(code for _, code in quotes())
    for path in sorted(EXAMPLE.glob("*.py")):
        for line in path.read_text().splitlines():
            key = line.strip()
            if key.startswith(("class ", "def ", "@transition(", "@choreography(", "PROTOCOL",
                               "DOMAIN", "from .roles")):
                assert line in shown, f"{path.name}: the doc never shows {key!r}"


def test_unquoted_python_blocks_are_only_the_deliberate_mistake() -> None:
    text = DOC.read_text()
    quoted = {m.start("code") for m in _QUOTE.finditer(text)}
    others = [m["code"] for m in _BLOCK.finditer(text) if m.start("code") not in quoted]
    assert others == ["        if len(yes) == p.k - 1:\n"
                      "            self.announce(step)  # announce early: a wrong-phase call"]


def test_the_commands_the_doc_calls_are_the_generated_ones() -> None:
    text = DOC.read_text()
    called = set(re.findall(r"call (payment-approval\.\w+)", text))
    assert called == {"payment-approval.start", "payment-approval.approve",
                      "payment-approval.reject"}
    # the commands the registration generates: one per command= transition, plus start
    roles = (EXAMPLE / "roles.py").read_text()
    declared = set(re.findall(r'command="(\w+)"', roles))
    assert {f"payment-approval.{c}" for c in {*declared, "start"}} == called
