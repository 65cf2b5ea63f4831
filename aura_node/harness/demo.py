"""The demo behind ``scripts/demo`` (the README's main job): a real cluster, real protocol runs.

The demo is a list of *acts* run in order against one running cluster. Each act prints what
it does and what came back, and returns False (or raises) when something failed; the demo
carries on with the next act only if the previous one succeeded, always stops the cluster, and
exits non-zero if any act failed. Today: pings around the ring d1->d2->d3->d1. The protocols
issue appends its acts (account genesis, DKD from two different pairs with equal keys,
guardian recovery) to ``ACTS``.

Run: ``scripts/demo`` (creates the venv) or ``python -m aura_node.harness.demo [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster
from aura_node.harness.progress import Progress


@dataclass(slots=True, kw_only=True)
class DemoContext:
    cluster: Cluster
    progress: Progress

    def say(self, text: str) -> None:
        self.progress.step(text)


Act = Callable[[DemoContext], bool]


def act_ping_ring(ctx: DemoContext) -> bool:
    """Each device pings the next one around the ring, over the mTLS links."""
    devices = ctx.cluster.devices
    ok = True
    for i, src in enumerate(devices):
        dst = devices[(i + 1) % len(devices)]
        try:
            r = ctx.cluster.node(src).ctl("ping", peer=dst, timeout=10.0)
        except AuraError as exc:
            ctx.say(f"  ping {src} -> {dst}: FAILED ({exc.code}: {exc.message})")
            ctx.progress.incr("failed")
            ok = False
            continue
        ctx.say(f"  ping {src} -> {dst}: {float(r['rtt_ms']):7.2f} ms  session {r['session']}")
        ctx.progress.incr("ok")
    return ok


#: (title, act) in order; later issues append theirs
ACTS: list[tuple[str, Act]] = [("ping around the ring", act_ping_ring)]


def run_demo(
    directory: Path, *, nodes: int, guardians: int, out: TextIO, acts: Sequence[tuple[str, Act]]
) -> bool:
    with Progress("demo", stream=out) as progress:
        progress.set(ok=0, failed=0)
        progress.step(f"starting a {nodes}-node cluster in {directory} ...")
        with Cluster(directory, nodes=nodes, guardians=guardians) as cluster:
            for h in cluster.nodes.values():
                progress.step(
                    f"  {h.name:<4} {h.role:<8} pid {h.pid:<7} listen {h.listen}  "
                    f"device {h.device_id[:16]}"
                )
            for title, act in acts:
                progress.step(f"{title}:")
                if not act(DemoContext(cluster=cluster, progress=progress)):
                    progress.step(f"{title}: failed; stopping the demo here")
                    return False
            progress.step("stopping the cluster ...")
            reports = cluster.stop()
        unclean = [r for r in reports if r.how != "sigterm" or r.exit_code != 0]
        for r in unclean:
            progress.step(f"  {r.name} did not stop cleanly: {r.how}, exit code {r.exit_code}")
        return not unclean


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aura_node.harness.demo")
    parser.add_argument("--dir", default=None, help="cluster directory (default: a temp dir)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--guardians", type=int, default=0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the cluster directory after a good run"
    )
    args = parser.parse_args(argv)
    directory = Path(args.dir or tempfile.mkdtemp(dir="/tmp", prefix="aura-demo-"))
    try:
        ok = run_demo(
            directory, nodes=args.nodes, guardians=args.guardians, out=sys.stdout, acts=ACTS
        )
    except AuraError as exc:
        sys.stdout.write(f"demo failed: {exc.message}\n")
        ok = False
    if not ok:
        # keep the logs and journals of a failed run for a look
        sys.stdout.write(f"demo: FAILED (node logs in {directory / 'logs'})\n")
        return 1
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    sys.stdout.write("demo: all good\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
