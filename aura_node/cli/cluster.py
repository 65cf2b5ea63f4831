"""`aura-node cluster up|down|status|partition|heal|shape|kill|restart|pause|resume|chaos`,
`trace`.

Argument parsing only; the work is in ``aura_node.harness``. Heavy imports stay inside the
handlers so other commands do not pay for them.
"""

from __future__ import annotations

import argparse
from typing import Any

from aura_node.cli import add_plugin_option, load_plugin_options, print_json


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="the cluster directory (holds cluster.json)")


def _add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=5, help="device nodes d1..dN (default 5)")
    p.add_argument("--guardians", type=int, default=0, help="guardian nodes g1..gM (default 0)")
    p.add_argument("--duration", type=float, required=True,
                   help="seconds of load under faults (start-up and quiet period come on top)")
    p.add_argument("--seed", type=int, required=True,
                   help="seed of the fault schedule, the load's choices and the proxy's draws: "
                   "the same seed, nodes and duration give the same schedule; what the faults "
                   "hit depends on timing, so outcomes may differ between runs")
    p.add_argument("--dir", default=None,
                   help="cluster directory, kept afterwards (default: a temp dir under /tmp, "
                   "removed after a clean run, kept when violations were found)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="operations in flight at once (default 4)")
    p.add_argument("--quiet-period", type=float, default=20.0,
                   help="seconds without faults after the last heal (default 20)")
    p.add_argument("--load", choices=("dkd", "dkd-reshare", "ping"), default="dkd-reshare",
                   help="the operation the load runs: dkd-reshare (default) mixes reshares "
                   "(a device removed and added back) into the DKD load")
    p.add_argument("--op-timeout", type=float, default=10.0,
                   help="each operation's session timeout in seconds (default 10)")
    p.add_argument("--keep", action="store_true", help="keep the temp directory after a clean run")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_plugin_option(p, "every node runs with this plugin (module name, .py file or package "
                      "directory; repeatable)")


def register(sub: Any) -> None:
    c = sub.add_parser("cluster", help="a local cluster of real nodes on loopback, with faults")
    csub = c.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    sim = csub.add_parser(
        "simulate",
        help="seeded deterministic simulation of the protocols: the real drivers, monitors, "
        "envelopes and journal format on an in-memory network (no processes)",
    )
    from aura_node.harness.simulation import add_arguments as add_simulation_arguments

    add_simulation_arguments(sim)
    add_plugin_option(sim, "load a plugin first (module name, .py file or package directory; "
                      "repeatable): its protocols run in the simulated nodes and its "
                      "scenarios join --protocol")
    sim.set_defaults(handler=cmd_simulate)

    chaos = csub.add_parser(
        "chaos",
        help="continuous protocol load under a seeded nemesis (kill/restart, pause, "
        "partitions, delay/jitter/loss), then heal, a quiet period and the invariant checks; "
        "exit 1 on any violation",
    )
    _add_chaos_arguments(chaos)
    chaos.set_defaults(handler=cmd_chaos)

    up = csub.add_parser("up", help="create (first time) and start a cluster; wait until ready")
    _add_dir(up)
    up.add_argument("--nodes", type=int, default=3, help="device nodes d1..dN (default 3)")
    up.add_argument("--guardians", type=int, default=0, help="guardian nodes g1..gM (default 0)")
    up.add_argument("--seed", type=int, default=0, help="seed of the fault proxy's draws")
    up.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for ready")
    add_plugin_option(
        up, "every node runs with this plugin (module name, .py file or package directory; "
        "repeatable); a stopped cluster started again keeps its plugins unless given")
    up.set_defaults(handler=cmd_up)

    down = csub.add_parser("down", help="stop every node (SIGTERM, SIGKILL after the grace)")
    _add_dir(down)
    down.add_argument("--grace", type=float, default=5.0, help="seconds before SIGKILL")
    down.set_defaults(handler=cmd_down)

    st = csub.add_parser(
        "status", help="each node's process and `ctl status`; exit 1 if any is down"
    )
    _add_dir(st)
    st.set_defaults(handler=cmd_status)

    part = csub.add_parser("partition", help="cut every link between groups of nodes")
    _add_dir(part)
    part.add_argument(
        "--group", action="append", required=True, metavar="A,B",
        help="comma-separated node names; repeat for more groups (one group = against the rest)",
    )
    part.add_argument("--mode", choices=("blackhole", "reset"), default="blackhole")
    part.set_defaults(handler=cmd_partition)

    heal = csub.add_parser("heal", help="clear every link fault")
    _add_dir(heal)
    heal.set_defaults(handler=cmd_heal)

    shape = csub.add_parser("shape", help="delay, jitter and loss on the link between two nodes")
    _add_dir(shape)
    shape.add_argument("--link", required=True, metavar="A:B", help="the two nodes")
    shape.add_argument("--delay-ms", type=float, default=None)
    shape.add_argument("--jitter-ms", type=float, default=None)
    shape.add_argument("--loss", type=float, default=None, help="probability per segment")
    shape.add_argument("--one-way", action="store_true", help="only bytes from A to B")
    shape.set_defaults(handler=cmd_shape)

    for action, text in (
        ("kill", "SIGKILL a node (a crash)"),
        ("restart", "start a stopped or killed node again; wait until ready"),
        ("pause", "SIGSTOP a node"),
        ("resume", "SIGCONT a paused node"),
    ):
        p = csub.add_parser(action, help=text)
        _add_dir(p)
        p.add_argument("name", help="node name, e.g. d2")
        p.set_defaults(handler=cmd_node_fault, action=action)

    tr = sub.add_parser("trace", help="sequence diagram of a real session from all journals")
    _add_dir(tr)
    tr.add_argument("--session", required=True, help="session id (or a unique prefix)")
    tr.add_argument("--format", choices=("mermaid", "text"), default="mermaid")
    add_plugin_option(tr)
    tr.set_defaults(handler=cmd_trace)


def cmd_up(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster
    from aura_node.harness.faults import HarnessError
    from aura_node.plugins import plugin_arguments

    # Loaded here first so a bad plugin is one line now, not a node that dies at start-up.
    load_plugin_options(args)

    try:
        existing = Cluster.attach(args.dir)
    except HarnessError:
        existing = None
    if existing is not None:
        running = [h.name for h in existing.nodes.values() if h.alive()]
        if running:
            raise HarnessError(
                f"the cluster in {existing.dir} is already running ({', '.join(running)}); "
                f"`aura-node cluster down --dir {args.dir}` first"
            )
        cluster = existing  # start the stopped cluster again on the same homes and ports
        cluster.ready_timeout = args.timeout
        if args.plugin:
            cluster.plugins = plugin_arguments(args.plugin)
    else:
        cluster = Cluster(
            args.dir, nodes=args.nodes, guardians=args.guardians, seed=args.seed,
            detached=True, ready_timeout=args.timeout, plugins=args.plugin,
        )
    cluster.start()
    state = cluster.to_json()
    print_json(
        {
            "dir": state["dir"],
            "proxy": state["proxy"],
            "plugins": state["plugins"],
            "nodes": [
                {k: n[k] for k in ("name", "role", "home", "pid", "listen", "device_id")}
                for n in state["nodes"]
            ],
        }
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster

    cluster = Cluster.attach(args.dir)
    reports = cluster.stop(grace=args.grace)
    print_json({"dir": str(cluster.dir), "stopped": [r.to_json() for r in reports]})
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster

    status = Cluster.attach(args.dir).status()
    print_json(status)
    healthy = all(
        n["process"] == "running" and n.get("status", {}).get("ready") is True
        for n in status["nodes"]
    )
    return 0 if healthy else 1


def cmd_partition(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster

    groups = [[n for n in g.split(",") if n] for g in args.group]
    dirs = Cluster.attach(args.dir).partition(*groups, mode=args.mode)
    print_json({"partitioned": [list(d) for d in dirs], "mode": args.mode})
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster

    Cluster.attach(args.dir).heal()
    print_json({"healed": True})
    return 0


def cmd_shape(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster
    from aura_node.harness.faults import FaultError

    a, sep, b = args.link.partition(":")
    if not sep or not a or not b:
        raise FaultError(f"--link must be A:B (two node names), got {args.link!r}")
    Cluster.attach(args.dir).shape(
        a, b,
        delay=None if args.delay_ms is None else args.delay_ms / 1000,
        jitter=None if args.jitter_ms is None else args.jitter_ms / 1000,
        loss=args.loss,
        both_ways=not args.one_way,
    )
    print_json({"shaped": [a, b], "both_ways": not args.one_way})
    return 0


def cmd_node_fault(args: argparse.Namespace) -> int:
    from aura_node.harness.cluster import Cluster

    cluster = Cluster.attach(args.dir)
    result: dict[str, Any] = {"node": args.name, "action": args.action}
    if args.action == "kill":
        result["report"] = cluster.kill(args.name).to_json()
    elif args.action == "restart":
        cluster.restart(args.name)
        result["pid"] = cluster.node(args.name).pid
    elif args.action == "pause":
        cluster.pause(args.name)
    else:
        cluster.resume(args.name)
    print_json(result)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    import sys

    from aura_node.harness.trace import load_session_trace, render_mermaid, render_text

    load_plugin_options(args)
    trace = load_session_trace(args.dir, args.session)
    out = render_mermaid(trace) if args.format == "mermaid" else render_text(trace)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from aura_node.harness.chaos import run_from_args

    return run_from_args(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from aura_node.harness.simulation import run_from_args

    load_plugin_options(args)
    return run_from_args(args)
