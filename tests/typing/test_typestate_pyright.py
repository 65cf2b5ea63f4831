"""Type tests, second checker: pyright (strict on the happy path) also rejects wrong-phase
calls, forged phases and subclassing in ``cases/``.

pyright reports some mistakes differently from mypy, so its expectations are listed here by
source anchor rather than by the ``# E:`` mypy markers: every wrong-phase call in
``wrong_phase.py`` must be an error, plus the table below; any other pyright error fails.
Known difference: pyright takes a class's metaclass ``__call__`` (NoPublicConstructor) as the
constructor signature, so it does not flag *calling* a witness class statically
(``witness_constructor.py``); the runtime refuses it (tests/unit/test_session_witness.py) and
mypy rejects it (test_typestate_types.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

CASES = Path(__file__).resolve().parent / "cases"

#: (file, a unique piece of the offending source line, a piece of pyright's first message line)
EXPECTED: list[tuple[str, str, str]] = [
    ("forged_phase.py", "claimed: ToyCoordinator[Deciding] =", "is not assignable"),
    # stricter than mypy: the forged construction itself is refused, not only its later use
    ("forged_phase.py", "forged = ToyCoordinator[Decided](", ""),
    ("forged_phase.py", "class LaterCollecting(Collecting)", "marked final"),
    ("forged_phase.py", "return self._advance(Bad[A])", "is not assignable"),
    ("subclassing.py", "ToyCoordinator[Collecting], choreography=", "marked final"),
    ("subclassing.py", "class WiderQuorum(QuorumOfSignedStatements)", "marked final"),
    ("subclassing.py", "class MoreEvidence(ThresholdEvidence)", "marked final"),
    ("conformance_types.py", "check_conformance(ToyCoordinator, object())", "cannot be assigned"),
    ("conformance_types.py", "check_conformance(int, object())", "cannot be assigned"),
    # inside the transitions of a role written on the authoring kit (the code its driver runs)
    ("kit_wrong_phase.py", "self.announce(step)  #", 'attribute "announce" for class "Counter'),
    ("kit_wrong_phase.py", "failed.count(Vote(", 'attribute "count" for class "Counter[Failed]"'),
    ("kit_wrong_phase.py", "done.announce(step)", 'attribute "announce" for class "Counter[Done]"'),
    ("kit_wrong_phase.py", "return self._advance(Counter[Announcing])  #", "is not assignable"),
]


def _pyright() -> str:
    exe = shutil.which("pyright", path=str(Path(sys.executable).parent))
    assert exe is not None, "pyright is a dev dependency (pyproject.toml [dev])"
    return exe


@pytest.fixture(scope="module")
def pyright_errors() -> dict[tuple[str, int], list[str]]:
    proc = subprocess.run(
        [_pyright(), "--outputjson", "--pythonpath", sys.executable,
         *(str(p) for p in sorted(CASES.glob("*.py")))],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode in (0, 1), f"pyright failed to run:\n{proc.stderr}\n{proc.stdout}"
    report = json.loads(proc.stdout)
    errors: dict[tuple[str, int], list[str]] = defaultdict(list)
    for d in report["generalDiagnostics"]:
        if d["severity"] == "error":
            first = next((ln for ln in d["message"].splitlines() if ln.strip()), "")
            errors[(Path(d["file"]).name, d["range"]["start"]["line"] + 1)].append(first)
    return errors


def _line_of(file: str, anchor: str) -> int:
    lines = (CASES / file).read_text().splitlines()
    hits = [i for i, text in enumerate(lines, start=1) if anchor in text]
    assert len(hits) == 1, f"anchor {anchor!r} must occur once in {file}, found {hits}"
    return hits[0]


def _expected() -> dict[tuple[str, int], str]:
    out = {(f, _line_of(f, anchor)): msg for f, anchor, msg in EXPECTED}
    wrong = (CASES / "wrong_phase.py").read_text().splitlines()
    for i, text in enumerate(wrong, start=1):
        if "# E:" in text:
            out[("wrong_phase.py", i)] = ""
    return out


def test_pyright_rejects_every_expected_line(
    pyright_errors: dict[tuple[str, int], list[str]],
) -> None:
    missing = [
        (where, msg) for where, msg in _expected().items()
        if not any(msg in m for m in pyright_errors.get(where, []))
    ]
    assert not missing, f"pyright accepted: {missing}\nall errors: {dict(pyright_errors)}"


def test_pyright_reports_nothing_unexpected(
    pyright_errors: dict[tuple[str, int], list[str]],
) -> None:
    unexpected = {w: m for w, m in pyright_errors.items() if w not in _expected()}
    assert not unexpected, unexpected


@pytest.mark.parametrize("case", ["positive.py", "kit_positive.py"])
def test_positive_file_is_clean_under_pyright_strict(tmp_path: Path, case: str) -> None:
    strict = tmp_path / f"strict_{case}"
    strict.write_text("# pyright: strict\n" + (CASES / case).read_text())
    proc = subprocess.run(
        [_pyright(), "--outputjson", "--pythonpath", sys.executable, str(strict)],
        capture_output=True, text=True, timeout=600, cwd=CASES.parents[2],
    )
    report = json.loads(proc.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert proc.returncode == 0 and not errors, errors
