"""A plugin written outside the repository type-checks with ``mypy --strict`` against the
installed package (README "Plugins").

The editable install must be visible to mypy (``scripts/_venv.sh`` installs in setuptools'
``compat`` mode: a .pth path, not an import hook mypy cannot follow), and ``aura_node`` must
ship ``py.typed``. The check has to be able to fail in both directions: a well-typed plugin
passes, and a mistake against the package's own types is reported, which proves mypy read
those types rather than treating ``aura_node`` as missing or as ``Any``. One mypy run over both
files (it is slow).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: a plugin with a choreography and a control command, in the style of the shipped ones
GOOD = '''
"""A tiny plugin: one choreography and one control command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.runtime.handlers import HANDLER_MODULES, Handler
from aura_node.runtime.monitors import register_choreography

if TYPE_CHECKING:
    from aura_node.runtime.daemon import Node


class Wave(msgspec.Struct, frozen=True, kw_only=True):
    times: int


class WaveAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("wave", abort=WaveAbort)
def WAVE(c: ChoreographyBuilder) -> None:
    a, b = c.role("a"), c.role("b")
    c.phase(a, "Waving")
    c.phase(b, "Watching")
    c.send(a, b, Wave)


def handlers(node: Node) -> dict[str, Handler]:
    async def wave(args: dict[str, Any]) -> dict[str, Any]:
        return {"node": node.name, "times": int(args.get("times", 1))}

    return {"wave.hello": wave}


register_choreography(WAVE)
if __name__ not in HANDLER_MODULES:
    HANDLER_MODULES.append(__name__)
'''

#: the same API misused: a wrong argument type the package's annotations forbid
BAD = '''
from aura_node.runtime.monitors import register_choreography

register_choreography("wave")
'''


def test_a_plugin_in_a_temp_dir_type_checks_against_the_installed_package(
    tmp_path: Path,
) -> None:
    (tmp_path / "wave_plugin.py").write_text(GOOD, encoding="utf-8")
    (tmp_path / "wave_misuse.py").write_text(BAD, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "wave_plugin.py", "wave_misuse.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error: " in line]
    # exactly the one planted mistake: nothing in the good plugin, no import-not-found
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert errors[0].startswith("wave_misuse.py:4: error: Argument 1 to "
                                '"register_choreography" has incompatible type "str"'), errors
    assert proc.returncode == 1
