"""`aura-node run --home DIR`: run the node daemon in the foreground (systemd: Type=notify)."""

from __future__ import annotations

import argparse
from typing import Any

from aura_node.cli import add_plugin_option, load_plugin_options


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the node daemon in the foreground")
    p.add_argument("--home", default=None, help="node home directory (default: $AURA_HOME)")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default=None,
                   help="log line format (default: [log] format in config.toml)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None,
                   help="lowest level logged (default: [log] level in config.toml)")
    add_plugin_option(
        p, "load a plugin before start (module name, .py file or package directory; "
        "repeatable): its protocols, choreographies and control commands join the node's. "
        "It changes the registry hash: only peers running the same plugins link")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from aura_node.config import NodeHome
    from aura_node.logs import configure_logging

    home = NodeHome.resolve(args.home)
    cfg = home.load_config()
    configure_logging(level=args.log_level or cfg.log.level,
                      fmt=args.log_format or cfg.log.format)
    # Loaded here, before the daemon imports the protocol registry, so a missing or broken
    # plugin is one line on stderr and exit 1, not a traceback out of the node's start-up.
    plugins = load_plugin_options(args)
    from aura_node.runtime.daemon import run_node

    return run_node(home, plugins=[p.module for p in plugins])
