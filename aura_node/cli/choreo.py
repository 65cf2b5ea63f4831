"""`aura-node choreo list|show|check`: inspect the choreographies a node runs.

Without ``--plugin`` that is the shipped ones; each ``--plugin`` adds what it registers, exactly
as ``aura-node run --plugin`` would (so ``list`` prints the registry hash such a node sends in
its hello).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aura_node.cli import add_plugin_option, load_plugin_options
from aura_node.errors import AuraError

if TYPE_CHECKING:
    from aura_node.choreo import Choreography


def register(sub: Any) -> None:
    p = sub.add_parser("choreo", help="list, draw and check the protocol choreographies")
    csub = p.add_subparsers(dest="choreo_command", metavar="ACTION", required=True)
    ls = csub.add_parser("list", help="the choreographies this node runs")
    add_plugin_option(ls)
    ls.set_defaults(handler=cmd_list)
    show = csub.add_parser(
        "show", help="draw a choreography (sequence diagram) or one role's state machine"
    )
    show.add_argument("name", help="choreography name (see `aura-node choreo list`)")
    show.add_argument("--role", default=None, help="draw this role's local type instead")
    show.add_argument("--format", choices=("mermaid", "dot", "text"), default="mermaid")
    show.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind a role set size or threshold for --role (default: the smallest instance)",
    )
    add_plugin_option(show)
    show.set_defaults(handler=cmd_show)
    check = csub.add_parser("check", help="check every choreography is well formed")
    add_plugin_option(check)
    check.set_defaults(handler=cmd_check)


def _registry(args: argparse.Namespace) -> tuple[Mapping[str, Choreography], str]:
    """The choreographies a node with ``args.plugin`` runs (name order) and their hash."""
    load_plugin_options(args)
    from aura_node.protocols.registry import hash_registry, node_registry

    registry = dict(sorted(node_registry().items()))
    return registry, hash_registry(registry).hex()


def cmd_list(args: argparse.Namespace) -> int:
    registry, digest = _registry(args)
    for name, c in registry.items():
        roles = ", ".join(f"{r.name}[{r.size}]" if r.is_set else r.name for r in c.decl.roles)
        print(f"{name:10} roles: {roles}; {len(c.messages)} messages")
    print(f"registry hash {digest}")
    return 0


def _bindings(pairs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value.strip().isdigit():
            raise AuraError(f"--bind expects NAME=INTEGER, got {pair!r}")
        out[name.strip()] = int(value)
    return out


def cmd_show(args: argparse.Namespace) -> int:
    from aura_node.choreo import render

    registry, _ = _registry(args)
    c = registry.get(args.name)
    if c is None:
        hint = "" if args.plugin else "; a plugin's: add --plugin"
        raise AuraError(f"no choreography {args.name!r} (have: {', '.join(registry)}{hint})")
    if args.role is None:
        if args.bind:
            raise AuraError("--bind only applies with --role")
        if args.format == "dot":
            raise AuraError("--format dot draws a state machine: add --role ROLE")
        out = render.sequence_mermaid(c) if args.format == "mermaid" else render.text(c)
    else:
        if args.role not in c.roles:
            raise AuraError(
                f"choreography {c.name!r} has no role {args.role!r} (has: {', '.join(c.roles)})"
            )
        lt = c.project(args.role, _bindings(args.bind))
        if args.format == "mermaid":
            out = render.state_mermaid(lt)
        elif args.format == "dot":
            out = render.state_dot(lt)
        else:
            out = render.local_text(lt)
    sys.stdout.write(out)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from aura_node.choreo.errors import ChoreographyErrors
    from aura_node.plugins import PluginError

    try:
        registry, digest = _registry(args)
    except ChoreographyErrors as exc:  # a shipped choreography is ill formed
        sys.stderr.write(exc.message + "\n")
        return 1
    except PluginError as exc:
        if not isinstance(exc.cause, ChoreographyErrors):
            raise
        # a plugin's choreography is refused when it registers; show every error, as for a
        # shipped one, not just the loader's one line
        sys.stderr.write(f"{exc.message}\n{exc.cause.message}\n")
        return 1
    bad = 0
    for name, c in registry.items():
        errors = c.check()
        if errors:
            bad += 1
            for e in errors:
                sys.stderr.write(e.message + "\n")
            continue
        states = sum(len(c.project(r).states) for r in c.roles)
        print(
            f"ok  {name}: {len(c.roles)} roles, {len(c.messages)} messages, {states} local states"
        )
    if bad:
        sys.stderr.write(f"{bad} choreographies are ill formed\n")
        return 1
    print(f"all {len(registry)} choreographies well formed; registry hash {digest}")
    return 0
