"""The dependency floors in ``pyproject.toml`` really work.

A throwaway venv gets exactly the minimum version of every runtime dependency the project
declares (``name>=X`` -> ``name==X``), and ``floor_smoke.py`` imports every aura_node module
from the source tree and uses each dependency the way the package does. A floor below what
the code needs (pynacl 1.5 has no ``crypto_core_ed25519_from_uniform``, cryptography 46 no
``hpke``) fails here with the import or call that broke.

CI runs it (about a minute: one venv, five wheels). With ``--full`` it also checks the floors
are tight: the release just below each of pynacl's and cryptography's floors must fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).with_name("floor_smoke.py")
#: the release just below a floor, for the --full tightness check (what the floor is for)
BELOW_FLOOR = {"pynacl": "1.5.0", "cryptography": "46.0.7"}


def declared_floors() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors: dict[str, str] = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", dep.replace(" ", ""))
        assert m, f"dependency {dep!r} has no plain '>=' floor to test"
        floors[m.group(1).lower()] = m.group(2)
    return floors


def _pip(py: Path, *pins: str) -> None:
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--timeout", "60", *pins],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"pip install {' '.join(pins)} failed:\n{proc.stderr[-2000:]}"


def _smoke(py: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([str(py), str(SMOKE)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=str(REPO))


def test_floors_cover_the_crypto_libraries() -> None:
    floors = declared_floors()
    # what the code needs (see the module doc); a lower floor is the bug the issue found
    assert tuple(map(int, floors["pynacl"].split(".")[:2])) >= (1, 6)
    assert int(floors["cryptography"].split(".")[0]) >= 47


def test_declared_minimum_versions_work(tmp_path: Path, full_run: bool) -> None:
    floors = declared_floors()
    env_dir = tmp_path / "floor-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    _pip(py, *(f"{name}=={version}" for name, version in floors.items()))
    proc = _smoke(py)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"aura_node fails with its declared minimum versions {floors}:\n{proc.stderr[-3000:]}")
    if not full_run:
        return
    for name, below in BELOW_FLOOR.items():
        _pip(py, f"{name}=={below}")
        proc = _smoke(py)
        assert proc.returncode != 0, f"{name} {below} (below the floor) still works: lower it"
        _pip(py, f"{name}=={floors[name]}")
