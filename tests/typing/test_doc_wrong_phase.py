"""The wrong-phase mistake of ``docs/writing-a-protocol.md`` section 9 gets, from mypy
--strict, exactly the message the doc shows (at the line it shows).

The doc's deliberate mistake (its one python block not quoted from the example) is inserted
into a copy of the example, where the doc says to put it, and mypy checks the copy.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "writing-a-protocol.md").read_text()
ANCHOR = "        if len(votes) - len(yes) > len(approvers) - p.k:\n"


def test_mypy_says_what_the_doc_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [mistake] = [m["code"] for m in re.finditer(r"(?<!-->\n)```python\n(?P<code>.*?)\n```",
                                                DOC, re.S)]
    [shown] = re.findall(r"^examples/payment_approval/roles\.py:(\d+): error: (.*)$", DOC, re.M)
    copy = tmp_path / "payment_approval"
    shutil.copytree(ROOT / "examples" / "payment_approval", copy)
    roles = copy / "roles.py"
    source = roles.read_text()
    assert source.count(ANCHOR) == 1  # "before the rejection check", as the doc says
    roles.write_text(source.replace(ANCHOR, mistake + "\n" + ANCHOR))
    monkeypatch.setenv("MYPYPATH", str(ROOT))  # aura_node, wherever the package is installed
    stdout, stderr, status = api.run([str(copy), "--strict", "--cache-dir", str(tmp_path / "c"),
                                      "--no-pretty", "--hide-error-context"])
    assert status == 1, stdout + stderr
    errors = re.findall(r"roles\.py:(\d+): error: (.*)$", stdout, re.M)
    assert errors == [shown], stdout
    assert os.fspath(copy) in stdout
