"""`aura-node choreo list|show|check`: inspect the shipped choreographies."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aura_node.errors import AuraError


def register(sub: Any) -> None:
    p = sub.add_parser("choreo", help="list, draw and check the protocol choreographies")
    csub = p.add_subparsers(dest="choreo_command", metavar="ACTION", required=True)
    ls = csub.add_parser("list", help="the choreographies this node runs")
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
    show.set_defaults(handler=cmd_show)
    check = csub.add_parser("check", help="check every choreography is well formed")
    check.set_defaults(handler=cmd_check)


def cmd_list(args: argparse.Namespace) -> int:
    from aura_node.protocols.registry import REGISTRY, registry_hash

    for name, c in REGISTRY.items():
        roles = ", ".join(f"{r.name}[{r.size}]" if r.is_set else r.name for r in c.decl.roles)
        print(f"{name:10} roles: {roles}; {len(c.messages)} messages")
    print(f"registry hash {registry_hash().hex()}")
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
    from aura_node.protocols.registry import REGISTRY

    c = REGISTRY.get(args.name)
    if c is None:
        raise AuraError(f"no choreography {args.name!r} (have: {', '.join(REGISTRY)})")
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

    try:
        from aura_node.protocols.registry import REGISTRY, registry_hash
    except ChoreographyErrors as exc:
        sys.stderr.write(exc.message + "\n")
        return 1
    bad = 0
    for name, c in REGISTRY.items():
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
    print(f"all {len(REGISTRY)} choreographies well formed; registry hash {registry_hash().hex()}")
    return 0
