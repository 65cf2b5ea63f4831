"""`aura-node choreo list|show|check|compat`: inspect the choreographies a node runs.

Without ``--plugin`` that is the shipped ones; each ``--plugin`` adds what it registers, exactly
as ``aura-node run --plugin`` would (so ``list`` prints the registry hash such a node sends in
its hello). ``compat OLD NEW`` compares two versions of a choreography with the subtyping
check of ``aura_node.choreo.subtyping`` (each of OLD and NEW: a module name, a ``.py`` file,
a plugin package directory, or the name of a choreography this node runs).
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
    compat = csub.add_parser(
        "compat", help="is a new version of a choreography compatible with an old one?")
    compat.add_argument("old", metavar="OLD",
                        help="the old version: a module, a .py file, a plugin package, or the "
                             "name of a choreography this node runs (e.g. ping)")
    compat.add_argument("new", metavar="NEW", help="the new version (the same forms)")
    compat.add_argument("--name", default=None,
                        help="compare only this choreography (default: every name both hold)")
    compat.add_argument("--bound", type=int, default=None,
                        help="most actions one side may run ahead of the other (default 8)")
    compat.add_argument("--json", action="store_true", help="print one JSON object")
    add_plugin_option(compat)
    compat.set_defaults(handler=cmd_compat)


def _registry(args: argparse.Namespace) -> tuple[Mapping[str, Choreography], str]:
    """The choreographies a node with ``args.plugin`` runs (name order) and their hash."""
    load_plugin_options(args)
    from aura_node.protocols.registry import hash_registry, node_registry

    registry = dict(sorted(node_registry().items()))
    return registry, hash_registry(registry).hex()


def cmd_list(args: argparse.Namespace) -> int:
    from aura_node.protocols.registry import advertised_choreographies

    registry, digest = _registry(args)
    advertised = advertised_choreographies()
    for name, c in registry.items():
        roles = ", ".join(f"{r.name}[{r.size}]" if r.is_set else r.name for r in c.decl.roles)
        print(f"{name:10} roles: {roles}; {len(c.messages)} messages; v{c.version}")
        older = [v for n, v, _h in advertised if n == name and v != c.version]
        if older:
            # what the hello advertises besides: peers on these versions still run sessions
            print(f"{'':10} stands in for v{', v'.join(map(str, older))} (proven compatible)")
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


def _choreographies_of(spec: str) -> dict[str, Choreography]:
    """The choreographies ``spec`` declares: a registered name, or every ``Choreography`` a
    module (file, package and its submodules) defines at top level."""
    import sys as _sys

    from aura_node.choreo import Choreography
    from aura_node.plugins import _load_name, _load_path, is_path
    from aura_node.protocols.registry import node_registry

    registered = node_registry()
    if spec in registered and not is_path(spec):
        return {spec: registered[spec]}
    # the plugin loader's own import (paths, packages, one-line errors), without its "must
    # register something" rule: an old version's module usually registers nothing
    module, _fresh = _load_path(spec) if is_path(spec) else _load_name(spec)
    prefix = module.__name__ + "."
    modules = [module, *(m for k, m in sorted(_sys.modules.items())
                         if k.startswith(prefix) and m is not None)]
    out: dict[str, Choreography] = {}
    for m in modules:
        for value in vars(m).values():
            if isinstance(value, Choreography):
                known = out.setdefault(value.name, value)
                if known is not value and known.version != value.version:
                    raise AuraError(f"{spec} declares {value.name} twice (v{known.version} "
                                    f"and v{value.version}): name one module per version")
    if not out:
        raise AuraError(f"{spec} declares no choreography (expected a module, file or package "
                        f"defining one with @choreography, or a registered name: "
                        f"{', '.join(sorted(registered))})")
    return out


def cmd_compat(args: argparse.Namespace) -> int:
    from aura_node.choreo.subtyping import DEFAULT_BOUND, compatibility
    from aura_node.cli import print_json

    load_plugin_options(args)
    bound = DEFAULT_BOUND if args.bound is None else args.bound
    if bound < 1:
        raise AuraError(f"--bound expects a positive integer, got {bound}")
    old = _choreographies_of(args.old)
    new = _choreographies_of(args.new)
    names = sorted(old.keys() & new.keys())
    if args.name is not None:
        if args.name not in names:
            raise AuraError(f"no choreography {args.name!r} in both OLD and NEW (OLD has: "
                            f"{', '.join(sorted(old))}; NEW has: {', '.join(sorted(new))})")
        names = [args.name]
    if not names:
        raise AuraError(f"OLD and NEW share no choreography name (OLD has: "
                        f"{', '.join(sorted(old))}; NEW has: {', '.join(sorted(new))})")
    results = [compatibility(new[n], old[n], bound=bound) for n in names]
    ok = all(r.ok for r in results)
    if args.json:
        out: list[dict[str, Any]] = []
        for n, r in zip(names, results, strict=True):
            bad = r.first_failure
            out.append({
                "name": n, "old_version": old[n].version, "new_version": new[n].version,
                "compatible": r.ok, "reason": "" if r.ok else r.describe(),
                "role": None if bad is None else bad.role,
                "step": None if bad is None else bad.step,
                "trace": [] if bad is None else list(bad.trace),
            })
        print_json({"compatible": ok, "bound": bound, "choreographies": out})
    else:
        for r in results:
            print(r.describe())
    return 0 if ok else 1
