"""The pure core never imports trio (DESIGN.md "Layers")."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import aura_node

PURE_PACKAGES = ("choreo", "session", "sessions", "protocols", "crypto", "journal.format")


def _pure_modules() -> list[str]:
    names = ["aura_node.errors", "aura_node.config",
             "aura_node.harness.simulation"]  # the simulation drives the real SessionRuntime
    for info in pkgutil.walk_packages(aura_node.__path__, "aura_node."):
        rel = info.name.removeprefix("aura_node.")
        if any(rel == p or rel.startswith(p + ".") for p in PURE_PACKAGES):
            names.append(info.name)
    return names


def test_pure_core_does_not_import_trio() -> None:
    mods = _pure_modules()
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))\n"
        "assert not bad, bad[:5]\n"
        "print(len(sys.argv))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
