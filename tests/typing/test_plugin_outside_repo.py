"""A plugin written outside the repository type-checks with ``mypy --strict`` against the
installed package (README "Plugins").

The editable install must be visible to mypy (``scripts/_venv.sh`` installs in setuptools'
``compat`` mode: a .pth path, not an import hook mypy cannot follow), and ``aura_node`` must
ship ``py.typed``. The check has to be able to fail in both directions: the kit-only plugin of
the plugin tests (``tests/plugins/hello.py``, copied to a temp dir) passes, and a wrong-phase
call against it is reported, which proves mypy read the kit's types rather than treating
``aura_node`` as missing or as ``Any``. One mypy run over both files (it is slow).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "hello.py"

#: a wrong-phase call: greeting again from the phase after the greeting
MISUSE = '''
from hello import AwaitingReply, Greeter, HelloParams
from aura_node.kit import Step


def greet_twice(g: Greeter[AwaitingReply], step: Step[HelloParams]) -> None:
    g.greet(step)
'''


def test_a_plugin_in_a_temp_dir_type_checks_against_the_installed_package(
    tmp_path: Path,
) -> None:
    shutil.copy(PLUGIN, tmp_path / "hello.py")
    (tmp_path / "hello_misuse.py").write_text(MISUSE, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "hello.py", "hello_misuse.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error: " in line]
    # exactly the one planted mistake: nothing in the plugin, no import-not-found
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert errors[0].startswith("hello_misuse.py:7: error: Invalid self argument "
                                '"Greeter[AwaitingReply]" to attribute function "greet"'), errors
    assert proc.returncode == 1
