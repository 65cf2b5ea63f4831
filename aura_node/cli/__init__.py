"""Command line: argument parsing only; each command calls into the packages.

Commands are grouped; each group lives in its own module (``aura_node.cli.<module>``) that
exposes ``register(subparsers)`` and sets ``handler=`` on each parser it adds. A handler takes
the parsed ``argparse.Namespace`` and returns the exit code.

Only the module of the command being run is imported, so ``aura-node ctl ...`` does not pay for
Trio or the protocol stack. Command modules must keep heavy imports inside their handlers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aura_node.errors import AuraError

#: top-level command -> module under aura_node.cli that registers it
COMMANDS: dict[str, str] = {
    "init": "node",
    "peer": "node",
    "run": "run",
    "journal": "journal",
    "choreo": "choreo",
    "ctl": "ctl",
    "cluster": "cluster",
    "trace": "cluster",
    "bench": "bench",
}

Handler = Callable[[argparse.Namespace], int]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aura-node",
        description="Choreographic threshold protocols between a person's devices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[only]] if only in COMMANDS else sorted(set(COMMANDS.values()))
    for mod in dict.fromkeys(modules):
        try:
            module = importlib.import_module(f"aura_node.cli.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"aura_node.cli.{mod}":
                continue  # a command group not built yet; README lists it as not done
            raise
        module.register(sub)
    return parser


PLUGIN_HELP = (
    "load a plugin first: a module name, or a path to a .py file or a package directory "
    "(repeatable; see README 'Plugins')"
)


def add_plugin_option(p: argparse.ArgumentParser, help_text: str = PLUGIN_HELP) -> None:
    """``--plugin PLUGIN`` (repeatable), the same on every command that honours plugins."""
    p.add_argument("--plugin", action="append", default=[], metavar="PLUGIN", help=help_text)


def load_plugin_options(args: argparse.Namespace) -> list[Any]:
    """Load the plugins of ``args.plugin`` (``aura_node.plugins.Plugin`` each); a bad one
    raises ``PluginError``, which :func:`main` prints as one line."""
    from aura_node.plugins import load_plugins

    return load_plugins(list(getattr(args, "plugin", None) or []))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, *, code: str = "error", as_json: bool = False) -> int:
    """Report an error the way every command does: one line on stderr, exit 1."""
    if as_json:
        sys.stderr.write(json.dumps({"error": {"code": code, "message": message}}) + "\n")
    else:
        sys.stderr.write(f"aura-node: error: {message}\n")
    return 1


#: exit status after the reader of stdout went away (``| head``): 128 + SIGPIPE, what a
#: command killed by SIGPIPE reports to the shell
EXIT_CLOSED_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        rc = _run(argv)
        # Flush here, not at interpreter exit, so a closed pipe is caught below.
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """Exit quietly: the reader of stdout is gone (``aura-node journal show | head``), there
    is no one left to tell. stdout is pointed at /dev/null so the interpreter's own final
    flush of what is still buffered does not report the same broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a descriptor (tests): nothing to flush
        pass
    return EXIT_CLOSED_PIPE


def _run(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first)
    args = parser.parse_args(args_list)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except AuraError as exc:
        return fail(exc.message, code=exc.code, as_json=bool(getattr(args, "json_errors", False)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
