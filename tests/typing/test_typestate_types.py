"""Type tests: mypy --strict rejects wrong-phase calls, forged phases, subclassing and witness
construction, and accepts the happy path.

Each file in ``cases/`` marks the lines mypy must reject with ``# E: <substring of the error>``
(several markers on one line allowed). mypy runs once over all case files; every expected error
must appear, every reported error must be expected, and ``positive.py`` must have none.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "cases"
_MARKER = re.compile(r"#\s*E:\s*(.+?)\s*(?=#\s*E:|$)")
_REPORT = re.compile(r"^(?P<path>[^:\n]+\.py):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*)$")

Where = tuple[str, int]


def _expected() -> dict[Where, list[str]]:
    out: dict[Where, list[str]] = defaultdict(list)
    for path in sorted(CASES.glob("*.py")):
        for lineno, text in enumerate(path.read_text().splitlines(), start=1):
            for m in _MARKER.finditer(text):
                out[(path.name, lineno)].append(m.group(1))
    return out


@pytest.fixture(scope="module")
def mypy_errors() -> dict[Where, list[str]]:
    files = [str(p) for p in sorted(CASES.glob("*.py"))]
    stdout, stderr, status = api.run(
        [
            *files,
            "--strict",
            "--warn-unreachable",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--show-error-codes",
            "--no-pretty",
            "--no-error-summary",
            "--hide-error-context",
        ]
    )
    assert status in (0, 1), f"mypy crashed (status {status}):\n{stderr}\n{stdout}"
    errors: dict[Where, list[str]] = defaultdict(list)
    for line in stdout.splitlines():
        m = _REPORT.match(line)
        assert m is not None or not line.strip(), f"unparsed mypy output: {line!r}"
        if m is not None and m["kind"] == "error":
            errors[(Path(m["path"]).name, int(m["line"]))].append(m["msg"])
    return errors


def test_case_files_exist() -> None:
    names = {p.name for p in CASES.glob("*.py")}
    assert {
        "wrong_phase.py",
        "forged_phase.py",
        "subclassing.py",
        "witness_constructor.py",
        "positive.py",
        "kit_wrong_phase.py",
        "kit_positive.py",
    } <= names
    assert len(_expected()) >= 15  # guard against markers silently not being parsed


def test_every_expected_error_is_reported(mypy_errors: dict[Where, list[str]]) -> None:
    missing = []
    for where, wants in _expected().items():
        got = mypy_errors.get(where, [])
        for want in wants:
            if not any(want in msg for msg in got):
                missing.append(f"{where[0]}:{where[1]}: expected {want!r}, mypy said {got!r}")
    assert not missing, "\n".join(missing)


def test_no_unexpected_errors(mypy_errors: dict[Where, list[str]]) -> None:
    expected = _expected()
    unexpected = []
    for where, msgs in mypy_errors.items():
        wants = expected.get(where, [])
        for msg in msgs:
            if not any(want in msg for want in wants):
                unexpected.append(f"{where[0]}:{where[1]}: {msg}")
    assert not unexpected, "\n".join(unexpected)


@pytest.mark.parametrize("case", ["positive.py", "kit_positive.py"])
def test_positive_file_is_clean(mypy_errors: dict[Where, list[str]], case: str) -> None:
    assert not [w for w in _expected() if w[0] == case]
    assert not [w for w in mypy_errors if w[0] == case]


def test_wrong_phase_calls_inside_kit_transitions_are_errors(
    mypy_errors: dict[Where, list[str]],
) -> None:
    marked = [w for w in _expected() if w[0] == "kit_wrong_phase.py"]
    assert len(marked) == 4
    assert all(w in mypy_errors for w in marked)
