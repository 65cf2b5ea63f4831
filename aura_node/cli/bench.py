"""`aura-node bench NAME [--json]`: run one benchmark module of ``aura_node.bench``."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from typing import Any

import aura_node.bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(aura_node.bench.__path__))


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a benchmark; figures with in-run floors and ratios")
    p.add_argument("name", nargs="?", help=f"benchmark ({', '.join(available()) or 'none'})")
    p.add_argument("--json", action="store_true", help="one JSON object per figure")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    p.add_argument("--dir", default=None, help="directory for files the benchmark writes")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    names = available()
    if args.list or not args.name:
        print("\n".join(names))
        return 0 if args.list else 2
    if args.name not in names:
        have = ", ".join(names)
        sys.stderr.write(f"aura-node: error: no benchmark {args.name!r} (have: {have})\n")
        return 2
    module: Any = importlib.import_module(f"aura_node.bench.{args.name}")
    figures = module.run(args)
    if args.json:
        for f in figures:
            print(json.dumps(f.to_json()))
    else:
        print(aura_node.bench.render_table(figures))
    return 0
