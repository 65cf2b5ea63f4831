"""Plugins: modules that add protocols, choreographies or control commands to a node or a tool.

Theory of operation
-------------------
A plugin is an ordinary Python module that registers what it brings *when it is imported*,
with the same public API a shipped protocol uses (``aura_node.kit.protocol`` registers a
protocol, its choreography and its control commands). The loader only imports; it knows
nothing of the registries except :func:`_registrations`, the one place that looks at them to
tell a plugin that registered something from one that registered nothing.

``--plugin X`` (repeatable, on ``run``, ``cluster up``, ``cluster simulate``, ``cluster chaos``,
``choreo list|show|check`` and ``trace``) names the plugin one of three ways:

* a module name (``mycompany.payments``): imported from ``sys.path``, and then from the current
  directory as ``python -m`` would (the ``aura-node`` console script does not put it there);
* a path to a ``.py`` file (``./payment.py``): loaded as the module ``payment`` (the stem);
* a path to a package directory (``./payment_approval/``, holding ``__init__.py``): loaded
  as the package ``payment_approval``, so its own relative imports work.

Anything with a ``/`` or ending in ``.py`` is a path; anything else is a module name. A path
plugin's module name must not be another module's (a ``json.py`` plugin would replace the
stdlib's ``json`` for every later import): the loader refuses it with the clash named.

Every failure is one :class:`PluginError` line that says what was asked and what went wrong
(not found, a syntax error with file and line, an exception at import with the plugin's line,
nothing registered); the CLI prints it without a traceback and exits 1.

Processes the harness starts (cluster nodes) get the same plugins: :func:`plugin_argument`
turns what the operator typed into what a child ``aura-node run --plugin`` needs (a path made
absolute, so it does not depend on the child's working directory; a module name unchanged).

Pure enough to import anywhere: stdlib only at module level (the registries are looked at
lazily, and only once something is loaded), no Trio.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from aura_node.errors import AuraError

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class PluginError(AuraError):
    """A ``--plugin`` that cannot be loaded: not found, broken, or registering nothing."""

    code = "plugin_error"

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        #: the exception the plugin's import raised, when there was one (``choreo check``
        #: prints a choreography's full well-formedness report from it)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Plugin:
    """One loaded plugin."""

    #: what the operator asked for, as typed
    spec: str
    #: the module name it is imported as (``sys.modules`` key)
    module: str
    #: its source file (``__init__.py`` for a package), when it has one
    origin: str | None
    #: what a child process's ``--plugin`` needs to load the same module
    argument: str


def is_path(spec: str) -> bool:
    """True when ``spec`` names a file or directory rather than a module."""
    return "/" in spec or os.sep in spec or spec.endswith(".py") or not _DOTTED.match(spec)


def plugin_argument(spec: str) -> str:
    """``spec`` as a child process's ``--plugin`` needs it: paths absolute, names unchanged.

    Does not import anything, so the harness can pass plugins on without loading them.
    """
    if not spec:
        raise PluginError("empty --plugin (expected a module name or a path)")
    return str(Path(spec).expanduser().absolute()) if is_path(spec) else spec


def plugin_arguments(specs: Iterable[str]) -> tuple[str, ...]:
    """:func:`plugin_argument` of each, in order, duplicates dropped."""
    return tuple(dict.fromkeys(plugin_argument(s) for s in specs))


def child_argv(arguments: Iterable[str]) -> list[str]:
    """``["--plugin", A, "--plugin", B, ...]`` for a child ``aura-node run``."""
    return [x for a in arguments for x in ("--plugin", a)]


def load_plugins(specs: Sequence[str]) -> list[Plugin]:
    """Import each plugin in order (each once); :class:`PluginError` on the first failure."""
    loaded: dict[str, Plugin] = {}
    for spec in specs:
        if spec in loaded:
            continue
        loaded[spec] = load_plugin(spec)
    return list(loaded.values())


def load_plugin(spec: str) -> Plugin:
    """Import one plugin (see the module doc) and check that it registered something."""
    if not spec:
        raise PluginError("empty --plugin (expected a module name or a path)")
    before = _registrations()
    if is_path(spec):
        module, fresh = _load_path(spec)
    else:
        module, fresh = _load_name(spec)
    # A module imported before (by another plugin, or twice on the command line) registered
    # at its first import; only a fresh import can be checked for registering nothing.
    if fresh and _registrations() == before:
        raise PluginError(
            f"plugin {spec!r} registers nothing: importing {module.__name__} added no "
            "protocol, choreography, control commands or simulation scenario (a plugin "
            "registers what it brings when it is imported)"
        )
    origin = getattr(module, "__file__", None)
    return Plugin(spec=spec, module=module.__name__, origin=origin,
                  argument=plugin_argument(spec))


# --- by module name ---------------------------------------------------------------------------


def _load_name(name: str) -> tuple[ModuleType, bool]:
    if name in sys.modules:
        return sys.modules[name], False
    _search_cwd()
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        # a parent package is missing (``foo`` of ``foo.bar``), or its __init__ imports
        # something that is
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise PluginError(f"plugin {name!r} not found (no module named {exc.name!r})"
                              ) from None
        raise _import_failed(name, exc, None) from None
    except Exception as exc:  # a parent package's __init__ failed
        raise _import_failed(name, exc, None) from None
    if found is None:
        raise PluginError(f"plugin {name!r} not found (no module named {name!r})")
    try:
        return importlib.import_module(name), True
    except Exception as exc:
        raise _import_failed(name, exc, found.origin) from None


def _search_cwd() -> None:
    """Look in the current directory last, as ``python -m`` would (it looks there first)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


# --- by path ----------------------------------------------------------------------------------


def _load_path(spec: str) -> tuple[ModuleType, bool]:
    path = Path(spec).expanduser().absolute()
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise PluginError(
                f"plugin {spec!r} is a directory without __init__.py (a plugin directory "
                "must be a Python package)"
            )
        name, file, package = path.name, init, True
    elif path.is_file():
        if path.suffix != ".py":
            raise PluginError(f"plugin {spec!r} is not a .py file or a package directory")
        name, file, package = path.stem, path, False
    elif path.suffix == ".py" or "/" in spec:
        raise PluginError(f"plugin {spec!r} not found (no such file or directory: {path})")
    else:
        raise PluginError(f"plugin {spec!r} is neither a module name nor an existing path")
    if not name.isidentifier():
        raise PluginError(
            f"plugin {spec!r} would be module {name!r}, which is not a Python identifier "
            "(rename it: letters, digits and _)"
        )
    loaded = sys.modules.get(name)
    if loaded is not None:
        if _same_file(getattr(loaded, "__file__", None), file):
            return loaded, False
        raise _clash(spec, name, getattr(loaded, "__file__", None))
    try:
        other = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        other = None
    if other is not None and not _same_file(other.origin, file):
        raise _clash(spec, name, other.origin)
    mspec = importlib.util.spec_from_file_location(
        name, file, submodule_search_locations=[str(path)] if package else None
    )
    if mspec is None or mspec.loader is None:
        raise PluginError(f"plugin {spec!r}: cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise _import_failed(spec, exc, str(file)) from None
    return module, True


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _clash(spec: str, name: str, where: str | None) -> PluginError:
    return PluginError(
        f"plugin {spec!r} would be module {name!r}, but that name is already "
        f"{'taken by ' + where if where else 'taken'} (rename the plugin)"
    )


# --- errors -----------------------------------------------------------------------------------


def _import_failed(spec: str, exc: BaseException, origin: str | None) -> PluginError:
    """One line for an exception raised while importing ``spec``."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "unknown file"
        return PluginError(f"plugin {spec!r} has a syntax error: {exc.msg} ({where})", cause=exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    more = len(text.splitlines()) - 1
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if more > 0:
        detail += f" (+{more} more line{'s' if more > 1 else ''})"
    where = _where(exc, origin)
    return PluginError(
        f"plugin {spec!r} failed to import: {detail}{f' (at {where})' if where else ''}",
        cause=exc,
    )


def _where(exc: BaseException, origin: str | None) -> str:
    """``file:line`` of the deepest traceback frame inside the plugin (its file, or its
    package's directory), else the deepest frame outside the import machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ")]
    if not frames:
        return ""
    if origin:
        root = os.path.dirname(origin) if origin.endswith("__init__.py") else origin
        inside = [f for f in frames if f.filename == root or f.filename.startswith(root + os.sep)]
        if inside:
            frames = inside
    f = frames[-1]
    return f"{f.filename}:{f.lineno}"


# --- what counts as registering something -----------------------------------------------------


def _registrations() -> frozenset[tuple[str, str, int]]:
    """Everything a plugin can register, as comparable entries (registry, name, identity of
    the registered object): protocols, choreographies, control handler modules, simulation
    scenarios. The identity counts a plugin that *replaces* an entry (a test double of a
    shipped driver) as registering something.

    The shipped protocols are loaded first, so a plugin that merely imports a shipped one is
    not taken for one that registered it. Registries whose module was never imported are
    empty by definition (a plugin that registers into one imports it), so this never imports
    Trio or the simulation just to look.
    """
    from aura_node.protocols import engine
    from aura_node.protocols.registry import node_registry

    engine.load_protocols()
    # a protocol's declared control commands are part of its spec (kit.command)
    keys = {("protocol", k, id(v)) for k, v in engine.PROTOCOLS.items()}
    keys.update(("choreography", k, id(v)) for k, v in node_registry().items())
    handlers = sys.modules.get("aura_node.runtime.handlers")
    if handlers is not None:
        keys.update(("handlers", m, 0) for m in handlers.HANDLER_MODULES)
    sim = sys.modules.get("aura_node.harness.simulation")
    if sim is not None:
        keys.update(("scenario", k, id(v)) for k, v in sim.SCENARIOS.items())
    return frozenset(keys)
