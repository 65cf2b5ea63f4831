"""`aura-node run --home DIR`: run the node daemon in the foreground (systemd: Type=notify)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the node daemon in the foreground")
    p.add_argument("--home", default=None, help="node home directory (default: $AURA_HOME)")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default=None,
                   help="log line format (default: [log] format in config.toml)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None,
                   help="lowest level logged (default: [log] level in config.toml)")
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE before start so it can register extra choreographies and "
             "protocols (changes the registry hash: only peers running the same plugins link)",
    )
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from aura_node.config import NodeHome
    from aura_node.logs import configure_logging

    home = NodeHome.resolve(args.home)
    cfg = home.load_config()
    configure_logging(level=args.log_level or cfg.log.level,
                      fmt=args.log_format or cfg.log.format)
    from aura_node.runtime.daemon import run_node

    return run_node(home, plugins=args.plugin)
