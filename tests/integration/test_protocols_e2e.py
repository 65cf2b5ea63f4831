"""The three threshold protocols between real node processes (one cluster, ~30 s).

d1..d3 are the account's devices (t = 2), g1..g3 its guardians (t_g = 2), d4 a fresh device
that recovers the account. Every step goes through ``aura-node``'s control socket exactly as
an operator would, and the run ends with the journal invariants and a search of every log and
journal file for the account secret, the plaintext shares and DKD's key material (``K``, the
derived seeds, unblinded partials, the requesters' blindings ``r``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aura_node.config import NodeConfig, NodeHome
from aura_node.crypto.dkd import derive_key_material, dkd_base
from aura_node.crypto.group import Scalar
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.seal import SealBinding, open_sealed
from aura_node.crypto.shamir import Share, reconstruct
from aura_node.errors import AuraError
from aura_node.harness.cluster import Cluster, tune_for_tests
from aura_node.harness.invariants import check_invariants, journals_of_cluster
from aura_node.harness.pytest_plugin import ClusterFactory, cluster_factory  # noqa: F401
from aura_node.journal.store import read_records
from aura_node.protocols.account import KIND_ACCOUNT, decode_established, open_held_share
from aura_node.protocols.dkd.roles import BLINDING_PURPOSE, KIND_BLINDING

pytest.importorskip("aura_node.cli.run")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

DEVICES = ["d1", "d2", "d3"]
GUARDIANS = ["g1", "g2", "g3"]
HOLDERS = DEVICES + GUARDIANS
NEW = "d4"
COOLDOWN = 3.0


def tune(cfg: NodeConfig) -> NodeConfig:
    """Harness defaults plus protocol deadlines in seconds (the cooldown is 24 h by default)."""
    cfg = tune_for_tests(cfg)
    return replace(cfg, protocols=replace(
        cfg.protocols, recovery_cooldown_seconds=COOLDOWN, recovery_share_timeout_seconds=20.0,
        recovery_approval_timeout_seconds=30.0, dkd_timeout_seconds=8.0,
        genesis_timeout_seconds=15.0))


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except AuraError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def ctl_error(c: Cluster, node: str, cmd: str, **args: Any) -> AuraError:
    with pytest.raises(AuraError) as info:
        c.node(node).ctl(cmd, **args)
    return info.value


def remote_code(exc: AuraError) -> str:
    return str(getattr(exc, "remote_code", exc.code))


def session_active(c: Cluster, node: str, sid: str) -> dict[str, Any] | None:
    for s in c.node(node).ctl("sessions")["sessions"]:
        if s["session"] == sid:
            return dict(s)
    return None


# --- the phases -----------------------------------------------------------------------------------


def create_account(c: Cluster) -> dict[str, Any]:
    err = ctl_error(c, NEW, "account.show")
    assert remote_code(err) == "not_found" and "holds no account" in err.message
    acct = c.node("d1").ctl("account.create", devices=DEVICES, threshold=2,
                            guardians=GUARDIANS, guardian_threshold=2)
    assert acct["devices"] == DEVICES and acct["guardians"] == GUARDIANS
    assert acct["threshold"] == 2 and acct["guardian_threshold"] == 2
    assert len(bytes.fromhex(acct["public_key"])) == 32 and acct["account_id"]
    # every holder learned the account at run time (no restart), with the same view
    for name in HOLDERS:
        assert c.node(name).ctl("account.show") == {**acct, "epoch": 0}, name
    assert remote_code(ctl_error(c, "d1", "account.create", devices=DEVICES,
                                 threshold=2)) == "conflict"
    return acct


def derive_from_two_pairs(c: Cluster) -> dict[str, Any]:
    a = c.node("d1").ctl("dkd", context="mail", participants=["d1", "d2"])
    b = c.node("d2").ctl("dkd", context="mail", participants=["d2", "d3"])
    assert sorted(a["participants"]) == ["d1", "d2"] and sorted(b["participants"]) == ["d2", "d3"]
    assert a["session"] != b["session"]
    assert (a["fingerprint"], a["public_key"]) == (b["fingerprint"], b["public_key"])
    # all three devices asked (a role set of two participants): the same key again
    trio_ = c.node("d3").ctl("dkd", context="mail", participants=["d3", "d1", "d2"])
    assert trio_["fingerprint"] == a["fingerprint"] and "d3" in trio_["participants"]
    other = c.node("d3").ctl("dkd", context="calendar", participants=["d3", "d1"])
    assert other["fingerprint"] != a["fingerprint"]
    # the participants' own views of the session end with the same key
    for name in ("d2",):
        detail = c.node(name).ctl("session", session=a["session"])
        assert detail["result"]["fingerprint"] == a["fingerprint"]
    # the operator's own path: `aura-node ctl --home HOME dkd ...` in a process of its own
    cli = subprocess.run(
        [sys.executable, "-m", "aura_node", "ctl", "--home", str(c.node("d3").home), "dkd",
         "--context", "mail", "--participants", "d3,d2"],
        capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["fingerprint"] == a["fingerprint"]
    bad = ctl_error(c, "d1", "dkd", context="mail", participants=["d1", "g1"])
    assert remote_code(bad) == "invalid_args" and "g1" in bad.message
    return a


def vetoed_recovery(c: Cluster, acct: dict[str, Any]) -> str:
    start = c.node(NEW).ctl("recovery.start", account=acct["account_id"], guardians=GUARDIANS)
    sid = start["session"]
    assert start["state"] == "CollectingApprovals" and start["guardians"] == GUARDIANS
    for g in ("g1", "g2"):
        wait_for(f"{sid} pending on {g}", lambda g=g: [
            p for p in c.node(g).ctl("recovery.pending")["pending"] if p["session"] == sid])
        assert c.node(g).ctl("recovery.approve", session=sid)["state"] == "AwaitingThreshold"
    # the guardians tell d1 themselves; it vetoes inside the cooldown
    wait_for("d1 may veto", lambda: (session_active(c, "d1", sid) or {}).get("state")
             == "MayVeto", timeout=COOLDOWN)
    assert c.node("d1").ctl("recovery.veto", session=sid)["state"] == "Vetoed"
    for name in [NEW, *HOLDERS]:
        st = wait_for(f"{name} ends {sid}", lambda name=name: (
            lambda v: v if v["outcome"] != "active" else None)(
            c.node(name).ctl("recovery.status", session=sid)))
        assert st["state"] == "Vetoed", (name, st)
    # nothing was released: no sealed share left a guardian, the new device holds nothing
    for g in GUARDIANS:
        h = c.node(g)
        sent = _sent_steps(h.home, h.public_key, sid)
        assert "RecoveryPending" in sent and "SealedRecoveryShare" not in sent, (g, sent)
    assert remote_code(ctl_error(c, NEW, "account.show")) == "not_found"
    assert remote_code(ctl_error(c, "g1", "recovery.approve", session=sid)) == "conflict"
    return str(sid)


def _sent_steps(home: Path, public_key: str, sid: str) -> set[str]:
    from aura_node.protocols import engine as eng

    out: set[str] = set()
    for r in read_records(NodeHome(home).journal_dir, DevicePublicKey.from_hex(public_key)):
        if r.session == sid and r.kind == eng.KIND_OUT:
            ev = eng.parse_record(r)
            assert isinstance(ev, eng.Sent)
            out.add(ev.envelope.step)
    return out


def recovery(c: Cluster, acct: dict[str, Any], derived: dict[str, Any]) -> str:
    start = c.node(NEW).ctl("recovery.start", account=acct["account_id"], guardians=GUARDIANS)
    sid = start["session"]
    t0 = time.monotonic()
    for g in ("g1", "g3"):
        wait_for(f"{sid} pending on {g}", lambda g=g: [
            p for p in c.node(g).ctl("recovery.pending")["pending"]
            if p["session"] == sid and p["new_device"] == NEW
            and p["account"] == acct["account_id"]])
        c.node(g).ctl("recovery.approve", session=sid)
    st = wait_for("recovery completes", lambda: (
        lambda v: v if v["state"] in ("Completed", "Failed", "Vetoed") else None)(
        c.node(NEW).ctl("recovery.status", session=sid)), timeout=COOLDOWN + 20)
    assert st["state"] == "Completed", st
    assert sorted(st["approvals"]) == ["g1", "g3"] and st["account"] == acct["account_id"]
    assert time.monotonic() - t0 >= COOLDOWN * 0.9  # the guardians waited out the cooldown
    shown = c.node(NEW).ctl("account.show")
    assert shown["public_key"] == acct["public_key"]
    assert shown["account_id"] == acct["account_id"]
    assert shown["devices"] == [NEW] and shown["threshold"] == 1
    again = c.node(NEW).ctl("dkd", context="mail")
    assert again["participants"] == [NEW]
    assert (again["fingerprint"], again["public_key"]) == (derived["fingerprint"],
                                                           derived["public_key"])
    for name in HOLDERS:
        view = wait_for(f"{name} sees {sid} end", lambda name=name: (
            lambda v: v if v["outcome"] != "active" else None)(
            c.node(name).ctl("recovery.status", session=sid)))
        assert view["state"] == "Completed", (name, view)
    return str(sid)


def dkd_with_a_crash(c: Cluster, derived: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL d3 while it takes part in a DKD (slowed links make "while" last), restart it:
    the session completes with the same key or fails cleanly on both sides."""
    c.shape("d1", "d3", delay=0.25)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = c.node("d1").ctl("dkd", context="mail", participants=["d1", "d3"],
                                             timeout=8.0)
        except AuraError as exc:
            out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        # d3 opened its session (it got the DkdRequest) and is mid-protocol
        (taking_part,) = wait_for("d3 takes part", lambda: [
            s for s in c.node("d3").ctl("sessions")["sessions"] if s["protocol"] == "dkd"],
            timeout=5.0)
        time.sleep(0.1)
        c.kill("d3")
        c.heal()
        c.restart("d3")
    finally:
        worker.join(30)
    assert not worker.is_alive()
    if "result" in out:
        assert out["result"]["fingerprint"] == derived["fingerprint"]
    else:
        err = out["error"]
        assert remote_code(err) in ("timeout", "session_failed"), err
    # d3's rehydrated session ends too (completed, or failed at its deadline)
    wait_for("no active dkd on d3", lambda: not [
        s for s in c.node("d3").ctl("sessions")["sessions"] if s["protocol"] == "dkd"],
        timeout=15.0)
    # the kill really was mid-session: d3 rebuilt the session from its journal
    rehydrated = [line for line in c.node("d3").log_text().splitlines()
                  if '"session_rehydrated"' in line and taking_part["session"] in line]
    assert rehydrated, "d3 did not rehydrate the dkd session it was killed in"
    return out


def use_derived_key(c: Cluster, derived: dict[str, Any], tmp: Path) -> None:
    """The requesting device signs a file with the derived key and exports it; openssl
    verifies the signature against the exported key's public half; another device pair
    signs with the same key. Nothing is written but the file asked for (0600, new only)."""
    doc = tmp / "doc.txt"
    doc.write_bytes(b"signed by a derived key\n" * 100)
    signed = c.node("d2").ctl("dkd.sign", context="mail", file=str(doc),
                              participants=["d2", "d3"])
    assert (signed["fingerprint"], signed["public_key"]) == (derived["fingerprint"],
                                                             derived["public_key"])
    pem = tmp / "mail.pem"
    exported = c.node("d1").ctl("dkd.export", context="mail", out=str(pem),
                                participants=["d1", "d3"])
    assert exported["public_key"] == derived["public_key"] and exported["path"] == str(pem)
    assert pem.stat().st_mode & 0o777 == 0o600
    again = ctl_error(c, "d1", "dkd.export", context="mail", out=str(pem))
    assert remote_code(again) == "conflict" and "exists" in again.message
    relative = ctl_error(c, "d1", "dkd.export", context="mail", out="rel.pem")
    assert remote_code(relative) == "invalid_args" and "absolute" in relative.message
    sig = tmp / "doc.sig"
    sig.write_bytes(bytes.fromhex(signed["signature"]))
    pub = tmp / "mail.pub.pem"
    subprocess.run(["openssl", "pkey", "-in", str(pem), "-pubout", "-out", str(pub)],
                   check=True, capture_output=True, timeout=30)
    ok = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub),
                         "-rawin", "-in", str(doc), "-sigfile", str(sig)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "Success" in ok.stdout, ok.stdout + ok.stderr
    doc.write_bytes(b"tampered")
    bad = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub),
                          "-rawin", "-in", str(doc), "-sigfile", str(sig)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0


def secrets_of_the_run(c: Cluster) -> list[bytes]:
    """The account secret and every plaintext share, opened here with the holders' keys; and
    of DKD: every derived ``K = s·H`` and seed, every unblinded partial ``s_i·H`` and every
    requester's blinding ``r`` (opened from its sealed journal record with its key)."""
    shares: dict[str, Share] = {}
    recovered: list[bytes] = []
    blindings: list[bytes] = []
    account_id = ""
    for name in [*HOLDERS, NEW]:
        h = c.node(name)
        home = NodeHome(h.home)
        key = DeviceKey.load(home.key_path)
        for r in read_records(home.journal_dir, key.public):
            if r.kind == KIND_BLINDING:
                blindings.append(open_sealed(r.body, key, SealBinding(
                    purpose=BLINDING_PURPOSE, account_id=account_id, session_id=r.session,
                    recipient_device_id=key.device_id)))
            if r.kind != KIND_ACCOUNT:
                continue
            est = decode_established(r.body)
            account_id = est.account.account_id
            for held in est.shares:
                share = open_held_share(est.account, held, key)
                if name == NEW:
                    recovered.append(share.value.to_bytes())
                else:
                    shares[f"{name}/{held.holder_set}"] = share
    device_shares = [s for k, s in shares.items() if k.endswith("/devices")]
    guardian_shares = [s for k, s in shares.items() if k.endswith("/guardians")]
    assert len(device_shares) == 3 and len(guardian_shares) == 3
    secret = reconstruct(device_shares[:2]).to_bytes()
    assert reconstruct(guardian_shares[1:]).to_bytes() == secret
    assert recovered and set(recovered) == {secret}  # the new device holds s itself
    # five multi-holder dkd sessions above: each requester journaled its r once, sealed
    assert len(blindings) >= 5, len(blindings)
    dkd: list[bytes] = []
    for context in ("mail", "calendar"):
        base = dkd_base(account_id, context)
        k = Scalar.from_bytes(secret) * base
        dkd += [k.to_bytes(), derive_key_material(k, account_id, context),
                *((sh.value * base).to_bytes() for sh in shares.values())]
    return [secret, *(s.value.to_bytes() for s in shares.values()), *dkd, *blindings]


def assert_no_secret_anywhere(c: Cluster, secrets: list[bytes]) -> int:
    needles = [n for s in secrets for n in (s, s.hex().encode(), s.hex().upper().encode())]
    files = [p for p in c.dir.rglob("*") if p.is_file() and not p.name.endswith(".sock")]
    assert any(p.suffix == ".log" for p in files) and any("journal" in p.parts for p in files)
    for p in files:
        data = p.read_bytes()
        for n in needles:
            assert n not in data, f"secret material found in {p}"
    return len(files)


def assert_no_misbehaviour_logged(c: Cluster) -> None:
    """Honest nodes never reject each other's messages (a rejection is a clear logged line)."""
    for name, text in c.logs().items():
        bad = [line for line in text.splitlines()
               if '"misbehaviour"' in line or '"protocol_rejected"' in line]
        assert not bad, f"{name} rejected honest messages:\n" + "\n".join(bad[:5])


def test_account_dkd_recovery_veto_crash_between_real_nodes(
    cluster_factory: ClusterFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    c = cluster_factory(nodes=4, guardians=3, tune=tune)
    acct = create_account(c)
    derived = derive_from_two_pairs(c)
    use_derived_key(c, derived, tmp_path)
    vetoed_recovery(c, acct)
    recovery(c, acct, derived)
    dkd_with_a_crash(c, derived)

    report = check_invariants(journals_of_cluster(c.dir))
    assert report.ok, report.to_json()["violations"]
    assert report.checked["dkd_agreement"] >= 11 and report.checked["no_equivocation"] > 0
    assert_no_misbehaviour_logged(c)
    assert_no_secret_anywhere(c, secrets_of_the_run(c))
