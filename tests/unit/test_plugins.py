"""The plugin loader (``aura_node.plugins``): every way to name a plugin, every way one fails.

Each failure must be one line that names what was asked and what went wrong, never a
traceback; the CLI's own one-line output is checked with real processes in
``tests/integration/test_plugins_cli.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_node.plugins import (
    PluginError,
    child_argv,
    is_path,
    load_plugin,
    load_plugins,
    plugin_argument,
)
from aura_node.protocols import engine, registry

#: a plugin that registers one choreography, split over a package's two files (the relative
#: import checks that a package directory is loaded as a package)
CHOREO = '''
import msgspec
from aura_node.choreo import ChoreographyBuilder, choreography


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    n: int


class HelloAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("test-plugin-hello", abort=HelloAbort)
def HELLO(c: ChoreographyBuilder) -> None:
    a, b = c.role("a"), c.role("b")
    c.phase(a, "A")
    c.phase(b, "B")
    c.send(a, b, Hello)
'''
REGISTER = '''
from aura_node.protocols.registry import register_choreography
from .choreography import HELLO

register_choreography(HELLO)
'''


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Plugins loaded by a test leave no module, registry entry or sys.path entry behind."""
    modules = set(sys.modules)
    monkeypatch.setattr(registry, "_PLUGINS", dict(registry._PLUGINS))
    engine.load_protocols()
    monkeypatch.setattr(engine, "PROTOCOLS", dict(engine.PROTOCOLS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield
    # only the test's own modules: re-importing aura_node's would split its registries
    for name in set(sys.modules) - modules:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith(str(tmp_path)) or name.startswith("hello_mod"):
            del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def one_line(exc: pytest.ExceptionInfo[PluginError]) -> str:
    message = exc.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


# --- naming a plugin --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path"),
    [("aura_node.harness.load_plugin", False), ("mod", False), ("x.py", True),
     ("./pkg", True), ("pkg/", True), ("/abs/p", True), ("not-a-name", True)],
)
def test_paths_and_module_names_are_told_apart(spec: str, path: bool) -> None:
    assert is_path(spec) is path


def test_children_get_absolute_paths_and_unchanged_module_names(tmp_path: Path) -> None:
    assert plugin_argument("pkg/") == str(tmp_path / "pkg")
    assert plugin_argument("./x.py") == str(tmp_path / "x.py")
    assert plugin_argument("/abs/x.py") == "/abs/x.py"
    assert plugin_argument("a.b") == "a.b"
    assert child_argv(["a.b", "/p"]) == ["--plugin", "a.b", "--plugin", "/p"]


def test_a_package_directory_loads_as_a_package(tmp_path: Path) -> None:
    write(tmp_path / "hello_plugin" / "choreography.py", CHOREO)
    write(tmp_path / "hello_plugin" / "__init__.py", REGISTER)
    [plugin] = load_plugins(["hello_plugin/", "hello_plugin/"])  # twice: loaded once
    assert plugin.module == "hello_plugin"
    assert plugin.origin == str(tmp_path / "hello_plugin" / "__init__.py")
    assert plugin.argument == str(tmp_path / "hello_plugin")
    assert "test-plugin-hello" in registry.node_registry()
    # the same file again is the module already loaded, not a second registration
    assert load_plugin(str(tmp_path / "hello_plugin")).module == "hello_plugin"


def test_a_file_loads_as_its_stem(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "solo_plugin.py",
          CHOREO + "\nfrom aura_node.protocols.registry import register_choreography\n"
          "register_choreography(HELLO)\n")
    plugin = load_plugin("sub/solo_plugin.py")
    assert (plugin.module, plugin.argument) == ("solo_plugin", str(tmp_path / "sub" /
                                                                   "solo_plugin.py"))
    assert sys.modules["solo_plugin"].HELLO is registry.node_registry()["test-plugin-hello"]


def test_a_module_name_is_also_looked_up_in_the_current_directory(tmp_path: Path) -> None:
    write(tmp_path / "hello_mod" / "choreography.py", CHOREO)
    write(tmp_path / "hello_file.py",
          "from aura_node.protocols.registry import register_choreography\n"
          "from hello_mod.choreography import HELLO\n\nregister_choreography(HELLO)\n")
    # the file imports hello_mod through sys.path: the current directory, as python -m has
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
    with pytest.raises(PluginError) as info:
        load_plugin("hello_file.py")
    assert one_line(info) == (
        "plugin 'hello_file.py' failed to import: ModuleNotFoundError: No module named "
        f"'hello_mod' (at {tmp_path / 'hello_file.py'}:2)")
    # a module name is looked up in the current directory too (after sys.path), and once it
    # is there a path plugin's own imports find their neighbours as well
    write(tmp_path / "hello_reg.py", (tmp_path / "hello_file.py").read_text())
    plugin = load_plugin("hello_reg")
    assert (plugin.module, plugin.argument) == ("hello_reg", "hello_reg")
    assert plugin.origin == str(tmp_path / "hello_reg.py")
    assert "test-plugin-hello" in registry.node_registry()


# --- failures: one line each ------------------------------------------------------------------


def test_a_missing_module_names_the_missing_part() -> None:
    with pytest.raises(PluginError) as info:
        load_plugin("foo_nowhere.bar")
    assert one_line(info) == "plugin 'foo_nowhere.bar' not found (no module named 'foo_nowhere')"
    with pytest.raises(PluginError) as info:
        load_plugin("aura_node.nowhere")
    assert one_line(info) == (
        "plugin 'aura_node.nowhere' not found (no module named 'aura_node.nowhere')")


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as info:
        load_plugin("nothere.py")
    assert one_line(info) == (
        f"plugin 'nothere.py' not found (no such file or directory: {tmp_path / 'nothere.py'})")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PluginError) as info:
        load_plugin("./plain")
    assert one_line(info) == (
        "plugin './plain' is a directory without __init__.py (a plugin directory must be a "
        "Python package)")
    write(tmp_path / "notes.txt", "hi")
    with pytest.raises(PluginError) as info:
        load_plugin("./notes.txt")
    assert "is not a .py file or a package directory" in one_line(info)
    with pytest.raises(PluginError) as info:
        load_plugin("not-a-name")
    assert one_line(info) == "plugin 'not-a-name' is neither a module name nor an existing path"


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "broken_syntax.py", "x = 1\ndef f(:\n    pass\n")
    with pytest.raises(PluginError) as info:
        load_plugin("broken_syntax.py")
    assert one_line(info) == (
        "plugin 'broken_syntax.py' has a syntax error: invalid syntax "
        f"({tmp_path / 'broken_syntax.py'}, line 2)")
    assert "broken_syntax" not in sys.modules


def test_an_exception_at_import_names_the_plugins_line(tmp_path: Path) -> None:
    write(tmp_path / "raises_pkg" / "__init__.py", "from . import inner\n")
    write(tmp_path / "raises_pkg" / "inner.py",
          "import json\n\njson.loads('{')\n")
    with pytest.raises(PluginError) as info:
        load_plugin("raises_pkg")
    message = one_line(info)
    assert message.startswith("plugin 'raises_pkg' failed to import: JSONDecodeError: ")
    # the deepest frame inside the plugin's package, not json's own
    assert message.endswith(f"(at {tmp_path / 'raises_pkg' / 'inner.py'}:3)")


def test_a_multi_line_error_is_cut_to_its_first_line(tmp_path: Path) -> None:
    ill_formed = CHOREO.replace("c.send(a, b, Hello)",
                                "c.send(a, b, Hello)\n    c.send(b, b, Hello)")
    write(tmp_path / "bad_choreo.py", ill_formed
          + "\nfrom aura_node.protocols.registry import register_choreography\n"
            "register_choreography(HELLO)\n")
    with pytest.raises(PluginError) as info:
        load_plugin("bad_choreo.py")
    message = one_line(info)
    assert "failed to import: ChoreographyErrors: choreography 'test-plugin-hello' is ill " \
           "formed" in message
    from aura_node.choreo.errors import ChoreographyErrors

    assert isinstance(info.value.cause, ChoreographyErrors)  # choreo check prints it whole


def test_a_plugin_that_registers_nothing_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "does_nothing.py", "X = 1\n")
    with pytest.raises(PluginError) as info:
        load_plugin("does_nothing.py")
    assert one_line(info).startswith(
        "plugin 'does_nothing.py' registers nothing: importing does_nothing added no protocol, "
        "choreography, control commands or simulation scenario")


def test_a_plugin_importing_only_a_shipped_protocol_registers_nothing(tmp_path: Path) -> None:
    write(tmp_path / "reexport.py", "from aura_node.protocols.dkd import roles  # noqa\n")
    with pytest.raises(PluginError, match="registers nothing"):
        load_plugin("reexport.py")


def test_a_plugin_that_replaces_a_registered_protocol_counts(tmp_path: Path) -> None:
    # the shape of a test double (tests/integration/nodeproc_plugins.py): same name, new spec
    write(tmp_path / "swap_ping.py",
          "from dataclasses import replace\nfrom aura_node.protocols import engine\n\n"
          "engine.PROTOCOLS['ping'] = replace(engine.PROTOCOLS['ping'])\n")
    before = engine.PROTOCOLS["ping"]
    assert load_plugin("swap_ping.py").module == "swap_ping"
    assert engine.PROTOCOLS["ping"] is not before


def test_a_file_may_not_take_another_modules_name(tmp_path: Path) -> None:
    write(tmp_path / "json.py", "X = 1\n")
    with pytest.raises(PluginError) as info:
        load_plugin("./json.py")
    assert one_line(info).startswith("plugin './json.py' would be module 'json', but that name "
                                     "is already taken by ")
    write(tmp_path / "my-plugin.py", "X = 1\n")
    with pytest.raises(PluginError) as info:
        load_plugin("my-plugin.py")
    assert one_line(info) == (
        "plugin 'my-plugin.py' would be module 'my-plugin', which is not a Python identifier "
        "(rename it: letters, digits and _)")


def test_the_first_failure_stops_the_list(tmp_path: Path) -> None:
    write(tmp_path / "does_nothing.py", "X = 1\n")
    with pytest.raises(PluginError, match="'missing_one' not found"):
        load_plugins(["aura_node.harness.load_plugin", "missing_one", "does_nothing.py"])
    assert "does_nothing" not in sys.modules


def test_loading_a_protocol_plugin_imports_no_trio() -> None:
    # the loader and the registries it looks at are pure: `choreo list --plugin` and the
    # simulation load protocol plugins without the Trio shell
    code = (
        "import sys\n"
        "from aura_node.plugins import load_plugins\n"
        "[p] = load_plugins(['aura_node/harness/bench_protocol.py'])\n"
        "assert p.module == 'bench_protocol', p\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))\n"
        "assert not bad, bad[:5]\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=repo, timeout=60)
    assert proc.returncode == 0, proc.stderr
