"""The demo behind ``scripts/demo`` (the README's main job): a real cluster, real protocol runs.

The demo is a list of *acts* run in order against one running cluster. Each act prints what
it does and what came back, and returns False (or raises) when something failed; the demo
carries on with the next act only if the previous one succeeded, always stops the cluster, and
exits non-zero if any act failed (a fingerprint or public key that does not match is a
failure). The cluster: devices d1..d3 (the account's), guardians g1..g3, and d4, a fresh device
that recovers the account. The acts: pings around the device ring; account genesis on d1
(2-of-3 devices, 2-of-3 guardians); a DKD for one context from two different device pairs with
equal fingerprints; the requesting device signs a file with the derived key (``ctl dkd sign``),
exports it (``ctl dkd export``) and ``openssl pkeyutl -verify`` checks the signature against the
derived public key (``cryptography`` when ``openssl`` is not on PATH); a request outside d3's
consent policy (the demo's config lets d3 answer ``demo/*`` contexts only) refused with its
reason on both sides; guardian recovery onto d4 (two guardians approve, the cooldown is cut to
:data:`DEMO_COOLDOWN_SECONDS` by the demo's config tuning - the default is 24 h); a DKD on d4
that matches; a reshare from d4 (1-of-1 after the recovery) back to 2-of-3 and a DKD without d4
that still matches; the journal invariants over every node.

Run: ``scripts/demo`` (creates the venv) or ``python -m aura_node.harness.demo [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from aura_node.config import DkdRule, NodeConfig
from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster, tune_for_tests
from aura_node.harness.progress import Progress

#: the recovery cooldown of the demo cluster (the shipped default is 24 h)
DEMO_COOLDOWN_SECONDS = 4.0
CONTEXT = "demo/mail"
#: d3's consent policy in the demo: it answers these contexts only (``[[dkd.policy]]``)
D3_CONTEXTS = ("demo/*",)
#: a context outside it
REFUSED_CONTEXT = "private/diary"
ACCOUNT_DEVICES = ["d1", "d2", "d3"]
GUARDIANS = ["g1", "g2", "g3"]
NEW_DEVICE = "d4"


def demo_tune(cfg: NodeConfig) -> NodeConfig:
    """Harness link settings, and protocol deadlines short enough to watch."""
    cfg = tune_for_tests(cfg)
    cfg = replace(cfg, protocols=replace(
        cfg.protocols, recovery_cooldown_seconds=DEMO_COOLDOWN_SECONDS,
        recovery_share_timeout_seconds=30.0, recovery_approval_timeout_seconds=60.0,
        dkd_timeout_seconds=10.0, genesis_timeout_seconds=20.0, reshare_timeout_seconds=20.0))
    if cfg.node.name == "d3":  # the consent act: d3 answers demo/* contexts only
        cfg = replace(cfg, dkd_policy=(DkdRule(contexts=D3_CONTEXTS),))
    return cfg


@dataclass(slots=True, kw_only=True)
class DemoContext:
    cluster: Cluster
    progress: Progress
    #: what one act leaves for the next (the account, the derived key)
    state: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.progress.step(text)

    def ctl(self, node: str, cmd: str, **args: Any) -> dict[str, Any] | None:
        """Run ``cmd`` on ``node``; on an error say so and return None."""
        try:
            return self.cluster.node(node).ctl(cmd, **args)
        except AuraError as exc:
            code = getattr(exc, "remote_code", exc.code)
            self.say(f"  {node} {cmd}: FAILED ({code}: {exc.message})")
            self.progress.incr("failed")
            return None


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


def act_create_account(ctx: DemoContext) -> bool:
    """Genesis on d1: s shared 2-of-3 among d1..d3 and 2-of-3 among g1..g3."""
    acct = ctx.ctl("d1", "account.create", devices=ACCOUNT_DEVICES, threshold=2,
                   guardians=GUARDIANS, guardian_threshold=2)
    if acct is None:
        return False
    ctx.state["account"] = acct
    ctx.say(f"  account {acct['account_id']}  public key {acct['public_key'][:32]}...")
    ctx.say(f"  devices {','.join(acct['devices'])} (t={acct['threshold']}), guardians "
            f"{','.join(acct['guardians'])} (t={acct['guardian_threshold']})")
    ok = True
    for name in ACCOUNT_DEVICES + GUARDIANS:
        shown = ctx.ctl(name, "account.show")
        # account show adds the epoch view (epoch, holders) to what create answered
        same = shown is not None and {k: shown.get(k) for k in acct} == acct
        ok = ok and same
        ctx.say(f"  account show on {name:<3}: {'same account' if same else f'MISMATCH {shown}'}")
    ctx.progress.incr("ok" if ok else "failed")
    return ok


def _derive(ctx: DemoContext, node: str, participants: list[str] | None) -> dict[str, Any] | None:
    args: dict[str, Any] = {"context": CONTEXT}
    if participants:
        args["participants"] = participants
    r = ctx.ctl(node, "dkd", **args)
    if r is not None:
        ctx.say(f"  dkd on {node} with {'+'.join(r['participants']):<6}: fingerprint "
                f"{r['fingerprint']}  public key {r['public_key'][:16]}...")
    return r


def act_derive_two_pairs(ctx: DemoContext) -> bool:
    """The same context from (d1, d2) and from (d2, d3): any 2 of 3 derive the same key."""
    ctx.say(f"  context {CONTEXT!r}")
    a = _derive(ctx, "d1", ["d1", "d2"])
    b = _derive(ctx, "d2", ["d2", "d3"])
    if a is None or b is None:
        return False
    same = (a["fingerprint"], a["public_key"]) == (b["fingerprint"], b["public_key"])
    ctx.say(f"  {'equal: the pairs derived the same key' if same else 'MISMATCH'}")
    ctx.state["derived"] = a
    ctx.progress.incr("ok" if same else "failed")
    return same


def _verify_signature(ctx: DemoContext, public_key_hex: str, doc: Path, sig: Path) -> bool:
    """``openssl pkeyutl -verify`` of ``sig`` over ``doc`` against the derived public key (a
    SubjectPublicKeyInfo PEM made from the hex ``ctl dkd`` printed); ``cryptography`` when
    ``openssl`` is not on PATH."""
    import subprocess

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    pub = doc.with_name("derived-public.pem")
    pub.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    openssl = shutil.which("openssl")
    if openssl is None:
        try:
            public.verify(sig.read_bytes(), doc.read_bytes())
        except InvalidSignature:
            ctx.say("  openssl is not on PATH; cryptography: signature does NOT verify")
            return False
        ctx.say("  openssl is not on PATH; verified with cryptography instead: OK")
        return True
    argv = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
            "-in", str(doc), "-sigfile", str(sig)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    said = (done.stdout + done.stderr).strip().splitlines()
    ctx.say(f"  $ openssl pkeyutl -verify -pubin -inkey {pub.name} -rawin -in {doc.name} "
            f"-sigfile {sig.name}")
    ctx.say(f"  {said[0] if said else '(no output)'} (exit {done.returncode})")
    return done.returncode == 0


def act_use_derived_key(ctx: DemoContext) -> bool:
    """d1 signs a file with the key it derived and exports it; openssl checks the signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    derived = ctx.state["derived"]
    work = ctx.cluster.dir / "derived-key"
    work.mkdir(exist_ok=True)
    doc, sig, pem = work / "document.txt", work / "document.sig", work / "derived-key.pem"
    doc.write_text(f"signed by the key of context {CONTEXT} (demo)\n")
    signed = ctx.ctl("d1", "dkd.sign", context=CONTEXT, file=str(doc),
                     participants=["d1", "d2"])
    if signed is None:
        return False
    sig.write_bytes(bytes.fromhex(signed["signature"]))
    ctx.say(f"  d1 dkd sign {doc.name}: signature {signed['signature'][:32]}... (key "
            f"{signed['fingerprint']})")
    exported = ctx.ctl("d1", "dkd.export", context=CONTEXT, out=str(pem),
                       participants=["d1", "d2"])
    if exported is None:
        return False
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw).hex()
    mode = pem.stat().st_mode & 0o777
    ctx.say(f"  d1 dkd export: {pem.name} (PKCS#8, mode {mode:o}); its public key "
            f"{'is' if raw == derived['public_key'] else 'is NOT'} the derived one")
    ok = (signed["public_key"] == derived["public_key"] == raw and mode == 0o600
          and _verify_signature(ctx, derived["public_key"], doc, sig))
    ctx.progress.incr("ok" if ok else "failed")
    return ok


def act_policy_refusal(ctx: DemoContext) -> bool:
    """d1 asks d3 for a context outside d3's policy: a signed refusal, with its reason, on both
    sides, long before the deadline."""
    ctx.say(f"  d3's [[dkd.policy]]: contexts {list(D3_CONTEXTS)}; d1 asks d3 for "
            f"{REFUSED_CONTEXT!r}")
    t0 = time.monotonic()
    try:
        ctx.cluster.node("d1").ctl("dkd", context=REFUSED_CONTEXT, participants=["d1", "d3"])
    except AuraError as exc:
        ctx.say(f"  d1: {getattr(exc, 'remote_code', exc.code)}: {exc.message} "
                f"({time.monotonic() - t0:.2f} s)")
    else:
        ctx.say("  d1: DERIVED a key d3's policy does not allow")
        ctx.progress.incr("failed")
        return False
    listed = ctx.ctl("d3", "sessions", all=True)
    if listed is None:
        return False
    refused = []
    for s in listed["sessions"]:
        if s["protocol"] != "dkd":
            continue
        detail = ctx.ctl("d3", "session", session=s["session"])
        error = (detail or {}).get("error") or {}
        if error.get("code") == "refused":
            refused.append(error)
            ctx.say(f"  d3: session {s['session']} {error['code']}: {error['reason']}")
    ok = len(refused) == 1
    ctx.progress.incr("ok" if ok else "failed")
    return ok


def act_recover(ctx: DemoContext) -> bool:
    """Recovery onto d4: g1 and g2 approve; after the cooldown d4 holds the account."""
    acct = ctx.state["account"]
    start = ctx.ctl(NEW_DEVICE, "recovery.start", account=acct["account_id"],
                    guardians=GUARDIANS)
    if start is None:
        return False
    sid = start["session"]
    ctx.say(f"  {NEW_DEVICE} asks {','.join(GUARDIANS)}: session {sid} ({start['state']})")
    for g in ("g1", "g2"):
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            pending = ctx.ctl(g, "recovery.pending")
            if pending is None:
                return False
            if any(p["session"] == sid for p in pending["pending"]):
                break
            time.sleep(0.05)
        approved = ctx.ctl(g, "recovery.approve", session=sid)
        if approved is None:
            return False
        ctx.say(f"  {g} approves ({approved['state']})")
    ctx.say(f"  cooldown {DEMO_COOLDOWN_SECONDS:g} s (shortened by the demo's config; the "
            "default is 24 h): any account device may veto with `ctl recovery veto` now")
    state, t0 = "", time.monotonic()
    while time.monotonic() - t0 < DEMO_COOLDOWN_SECONDS + 30:
        st = ctx.ctl(NEW_DEVICE, "recovery.status", session=sid)
        if st is None:
            return False
        if st["state"] != state:
            state = st["state"]
            ctx.say(f"  {time.monotonic() - t0:5.1f} s  recovery {state}  approvals "
                    f"{','.join(st['approvals']) or '-'}")
        if st.get("outcome", "active") != "active":
            break
        time.sleep(0.1)
    if state != "Completed":
        ctx.progress.incr("failed")
        return False
    shown = ctx.ctl(NEW_DEVICE, "account.show")
    if shown is None:
        return False
    same = shown["public_key"] == acct["public_key"]
    ctx.say(f"  account show on {NEW_DEVICE}: public key {shown['public_key'][:32]}... "
            f"{'= the original' if same else 'MISMATCH'}")
    ctx.progress.incr("ok" if same else "failed")
    return bool(same)


def act_derive_on_new_device(ctx: DemoContext) -> bool:
    """d4 alone (it holds s now) derives the key the device pairs derived."""
    r = _derive(ctx, NEW_DEVICE, None)
    if r is None:
        return False
    before = ctx.state["derived"]
    same = (r["fingerprint"], r["public_key"]) == (before["fingerprint"], before["public_key"])
    ctx.say(f"  {'matches the key d1+d2 and d2+d3 derived' if same else 'MISMATCH'}")
    ctx.progress.incr("ok" if same else "failed")
    return same


#: after the recovery, the account goes back to a threshold: the recovered device and two
#: others (re-enrolled with fresh shares of the same s)
RESHARED_DEVICES = [NEW_DEVICE, "d1", "d2"]


def act_reshare_back(ctx: DemoContext) -> bool:
    """d4 (1-of-1 after the recovery) reshares to d4, d1, d2 at 2-of-3; d1 + d2, without d4,
    then derive the key the pairs derived before: s, S and every derived key are unchanged."""
    r = ctx.ctl(NEW_DEVICE, "account.reshare", devices=RESHARED_DEVICES, threshold=2)
    if r is None:
        return False
    ctx.say(f"  reshare on {NEW_DEVICE}: epoch {r['epoch']}, devices "
            f"{','.join(r['holders']['devices'])} (t=2), guardians "
            f"{','.join(r['holders']['guardians'])}  session {r['session']}")
    ok = True
    deadline = time.monotonic() + 10.0
    for name in RESHARED_DEVICES:
        while True:  # the coordinator answers once it adopted; the others adopt on its word
            shown = ctx.ctl(name, "account.show")
            if shown is None:
                return False
            if shown["epoch"] == r["epoch"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        same = shown["epoch"] == r["epoch"] and shown["devices"] == RESHARED_DEVICES
        ok = ok and same
        ctx.say(f"  account show on {name:<3}: epoch {shown['epoch']} devices "
                f"{','.join(shown['devices'])} t={shown['threshold']}")
    d = _derive(ctx, "d1", ["d1", "d2"])
    if d is None:
        return False
    before = ctx.state["derived"]
    same = (d["fingerprint"], d["public_key"]) == (before["fingerprint"], before["public_key"])
    ctx.say(f"  {'the same key as before the recovery' if same else 'MISMATCH'}")
    ok = ok and same
    ctx.progress.incr("ok" if ok else "failed")
    return ok


def act_invariants(ctx: DemoContext) -> bool:
    """Every journal verifies; no equivocation; every DKD for one context agrees."""
    from aura_node.harness.invariants import check_invariants, journals_of_cluster

    report = check_invariants(journals_of_cluster(ctx.cluster.dir))
    checked = ", ".join(f"{k} {v}" for k, v in report.checked.items())
    ctx.say(f"  checked: {checked}")
    for v in report.violations[:10]:
        ctx.say(f"  VIOLATION {v.invariant} on {v.node} {v.session or ''}: {v.detail}")
    ctx.progress.incr("ok" if report.ok else "failed")
    return report.ok


#: (title, act) in order; later issues append theirs
ACTS: list[tuple[str, Act]] = [
    ("ping around the ring", act_ping_ring),
    ("account genesis on d1", act_create_account),
    ("threshold key derivation from two device pairs", act_derive_two_pairs),
    ("the derived key in use: sign, export, openssl verify", act_use_derived_key),
    ("a request outside d3's consent policy", act_policy_refusal),
    (f"guardian recovery onto {NEW_DEVICE}", act_recover),
    (f"key derivation on the recovered {NEW_DEVICE}", act_derive_on_new_device),
    (f"reshare from {NEW_DEVICE} back to 2-of-3", act_reshare_back),
    ("journal invariants", act_invariants),
]


def run_demo(
    directory: Path, *, nodes: int, guardians: int, out: TextIO, acts: Sequence[tuple[str, Act]]
) -> bool:
    with Progress("demo", stream=out) as progress:
        progress.set(ok=0, failed=0)
        progress.step(f"starting {nodes} devices + {guardians} guardians in {directory} ...")
        with Cluster(directory, nodes=nodes, guardians=guardians, tune=demo_tune) as cluster:
            for h in cluster.nodes.values():
                what = " (the new device)" if h.name == NEW_DEVICE else ""
                progress.step(
                    f"  {h.name:<4} {h.role:<8} pid {h.pid:<7} listen {h.listen}  "
                    f"device {h.device_id[:16]}{what}"
                )
            ctx = DemoContext(cluster=cluster, progress=progress)
            for title, act in acts:
                progress.step(f"{title}:")
                if not act(ctx):
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
    parser.add_argument("--nodes", type=int, default=4,
                        help="devices: d1..d3 hold the account, d4 recovers it")
    parser.add_argument("--guardians", type=int, default=3)
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
