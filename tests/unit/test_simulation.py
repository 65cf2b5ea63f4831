"""The deterministic simulation: reproducible seeds, faults that really happen, checkers that
catch planted violations, crash at every append point, and Hypothesis over the seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aura_node.errors import JournalCorruptError
from aura_node.harness.simulation import (
    CRASH_MODES,
    SCENARIOS,
    Faults,
    RunReport,
    Simulation,
    create_account,
    main,
    reference_fingerprint,
    run_seed,
)
from aura_node.protocols import engine as eng
from aura_node.protocols.dkd.choreography import DkdCommitment, SignedCommitment
from aura_node.protocols.dkd.roles import session_params, session_roles
from aura_node.protocols.envelope import encode_envelope, seal

PROTOCOLS = sorted(SCENARIOS)


def _explain(r: RunReport) -> str:
    return json.dumps(r.to_json(), indent=1)[:4000]


# --- determinism ---


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_seed_gives_a_byte_identical_event_log(protocol: str) -> None:
    runs = []
    for _ in range(2):
        keep: list[Simulation] = []
        run_seed(5, protocol, keep=keep)
        runs.append(keep[0].log_bytes())
    assert runs[0] == runs[1]
    assert runs[0].count(b"\n") >= 4
    other: list[Simulation] = []
    run_seed(6, protocol, keep=other)
    assert other[0].log_bytes() != runs[0]


def test_a_seed_reproduces_across_processes_and_hash_seeds() -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "aura_node.harness.simulation", "--protocol", "recovery",
             "--seed", "3", "--json"],
            capture_output=True, text=True, check=True, timeout=120,
            env={**os.environ, "PYTHONHASHSEED": hash_seed})
        digests.add(json.loads(out.stdout.splitlines()[0])["log_digest"])
    keep: list[Simulation] = []
    digests.add(run_seed(3, "recovery", keep=keep).log_digest)
    assert len(digests) == 1


# --- the faults happen, and the runs stay correct ---


def test_faults_are_injected_and_crashed_nodes_rehydrate() -> None:
    totals: dict[str, int] = {}
    restarts = 0
    for seed in range(12):
        keep: list[Simulation] = []
        r = run_seed(seed, "dkd", faults=Faults.chaos(0.0, intensity=3.0), keep=keep)
        assert r.ok, _explain(r)
        for k, v in r.stats.items():
            totals[k] = totals.get(k, 0) + v
        restarts += sum(1 for line in keep[0].log if " restart sessions " in line
                        and not line.endswith("sessions 0 steps 0"))
    for k in ("dropped", "duplicated", "reordered", "crashes", "delivered", "timers"):
        assert totals[k] > 0, (k, totals)
    assert restarts > 0


#: seeds that once failed (each scenario runs them all: they are cheap)
REGRESSION_SEEDS = (81, 86, 139, 172, 8161)  # recovery: a guardian without a deadline
#: of those, the seeds whose guardian lost its ShareRequest to a crash (not to a drop): since
#: PeerUp re-sends it when the guardian is back, they complete instead of timing out
RESENT_SEEDS = (86, 139)


def _hypothesis_seeds(protocol: str, examples: int, *, randomize: bool) -> None:
    # CI draws the same seeds every run (derandomized, no example database), so a seed that
    # nobody ever ran cannot fail CI out of the blue; --full draws new ones each time
    @settings(max_examples=examples, deadline=None, derandomize=not randomize,
              database=None if not randomize else settings.default.database,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(0, 2**32 - 1))
    def run(seed: int) -> None:
        r = run_seed(seed, protocol)
        assert r.ok, f"seed {seed}: {_explain(r)}"

    for seed in REGRESSION_SEEDS:
        run = example(seed)(run)
    run()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_random_seeds_keep_every_invariant(protocol: str, full_run: bool) -> None:
    _hypothesis_seeds(protocol, 400 if full_run else 25, randomize=full_run)


# --- crash at every journal append point ---


def _dkd_world(crash_at: dict[int, str] | None = None) -> tuple[Simulation, str]:
    """An account of 3 devices (t = 2), then a DKD from d2; ``crash_at`` counts the appends
    from the DKD's start (1 = its first)."""
    sim = Simulation(11, dict.fromkeys(["d1", "d2", "d3"], "device"))
    create_account(sim, "d1", ["d1", "d2", "d3"], 2)
    base = sim.stats.appends
    sim.crash_at = {base + k: m for k, m in (crash_at or {}).items()}
    sim.note(f"dkd from append {base}")
    p = session_params({"context": "mail"}, sim.nodes["d2"].services)
    sid = sim.start("d2", "dkd", roles=session_roles(p), params=p)
    return sim, sid


def test_dkd_crash_at_every_append_point() -> None:
    sim, sid = _dkd_world()
    genesis_appends = Simulation(11, dict.fromkeys(["d1", "d2", "d3"], "device"))
    create_account(genesis_appends, "d1", ["d1", "d2", "d3"], 2)
    sim.run()
    clean = sim.stats.appends - genesis_appends.stats.appends
    assert clean >= 6
    completed = 0
    for k in range(1, clean + 2):
        for mode in CRASH_MODES:
            sim, sid = _dkd_world({k: mode})
            sim.run()
            report = sim.check(deadline=30.0, last_heal=sim.now)
            assert report.ok, (k, mode, report.to_json())
            # the genesis secret is fresh in every world: compare with this world's s·H
            ref = reference_fingerprint(sim, sim.nodes["d1"].accounts.only().account.account_id,
                                        "mail")
            for name, s in sim.sessions(sid).items():
                assert not s.active, (k, mode, name)
                if s.result is not None:
                    completed += 1
                    assert s.result["fingerprint"] == ref, (k, mode, name)
    assert completed > clean  # most crashes are survived, not merely aborted cleanly


def test_genesis_crash_at_every_append_point() -> None:
    nodes = {"d1": "device", "d2": "device", "d3": "device", "g1": "guardian", "g2": "guardian"}

    def world(crash_at: dict[int, str]) -> Simulation:
        sim = Simulation(4, nodes, crash_at=crash_at)  # type: ignore[arg-type]
        create_account(sim, "d1", ["d1", "d2", "d3"], 2, ["g1", "g2"], 1)
        return sim

    clean = world({}).stats.appends
    assert clean >= 10
    for k in range(1, clean + 1):
        sim = world({k: CRASH_MODES[k % 3]})
        report = sim.check(deadline=60.0, last_heal=sim.now)
        assert report.ok, (k, report.to_json())
        keys = {n.accounts.only().account.public_key for n in sim.nodes.values()
                if len(n.accounts)}
        assert len(keys) <= 1, k


# --- the checkers catch planted violations ---


def test_checkers_catch_a_planted_equivocation_and_a_divergent_key() -> None:
    sim, sid = _dkd_world()
    sim.run()
    assert sim.check().ok
    d3 = sim.nodes["d3"]
    other = SignedCommitment(session=sid, device_id=d3.key.device_id, digest=bytes(32),
                             signature=bytes(64))
    env = seal(d3.key, choreography="dkd", session=sid,
               message=DkdCommitment(commitment=other))
    wrong = eng.CompleteBody(result={"session": sid, "context": "mail", "fingerprint": "00" * 16,
                                     "participants": ["d3"], "public_key": ""})
    batch = d3.journal.encode([
        _entry(sid, eng.KIND_OUT, eng.encode_body(eng.OutBody(
            to=["d2"], envelope=encode_envelope(env))), sim.now),
        _entry(sid, eng.KIND_COMPLETE, eng.encode_body(wrong), sim.now),
    ])
    d3.journal.commit(batch)
    report = sim.check()
    assert report.failed("no_equivocation"), report.to_json()
    assert report.failed("dkd_agreement"), report.to_json()


def test_the_release_rule_check_catches_a_planted_early_release() -> None:
    from aura_node.harness.simulation import _release_rule
    from aura_node.protocols.recovery.choreography import SealedRecoveryShare

    keep: list[Simulation] = []
    assert run_seed(2, "recovery", keep=keep).ok
    g1 = keep[0].nodes["g1"]
    problems: list[str] = []
    _release_rule(g1, problems)
    assert problems == []
    sid = "ab" * 16
    env = seal(g1.key, choreography="recovery", session=sid,
               message=SealedRecoveryShare(share_index=1, sealed_share=b"x"))
    timer = eng.encode_body(eng.TimerBody(name="share-request", deadline=0.0))
    g1.journal.commit(g1.journal.encode([
        _entry(sid, eng.KIND_TIMER_FIRED, timer, 0.0),  # type: ignore[list-item]
        _entry(sid, eng.KIND_OUT, eng.encode_body(eng.OutBody(  # type: ignore[list-item]
            to=["n1"], envelope=encode_envelope(env))), 0.0),
    ]))
    _release_rule(g1, problems)
    assert [p.split(sid[:8])[1].strip() for p in problems] == [
        "without a ShareRequest", "before its cooldown", "after its own deadline"]


def _entry(session: str, kind: str, body: bytes, ts: float) -> object:
    from aura_node.journal.format import JournalEntry

    return JournalEntry(session=session, kind=kind, body=body, ts=ts)


def test_torn_tail_is_cut_back_and_damage_is_refused() -> None:
    sim, sid = _dkd_world()
    sim.run()
    j = sim.nodes["d1"].journal
    good = bytes(j.data)
    batch = j.encode([_entry(sid, "dkd.note", b"x", sim.now)])  # type: ignore[list-item]
    j.tear(batch, len(batch.data) // 2)
    assert sim.check().failed("journal_verifies")  # a torn tail: what a crash leaves
    j.reopen()
    assert bytes(j.data) == good
    j.data[len(good) // 2] ^= 0x40
    with pytest.raises(JournalCorruptError):
        j.reopen()
    assert sim.check().failed("journal_verifies")


def test_stale_sessions_of_a_never_ending_session_are_reported() -> None:
    sim = Simulation(1, dict.fromkeys(["d1", "d2"], "device"))
    create_account(sim, "d1", ["d1", "d2"], 2)
    sim.nodes["d2"].runtime = None  # down for good: d1's DKD can only time out
    p = session_params({"context": "c"}, sim.nodes["d1"].services)
    sid = sim.start("d1", "dkd", roles=session_roles(p), params=p)
    sim.run(until=sim.now + 1.0)
    report = sim.check(deadline=60.0)
    assert [v.session for v in report.failed("sessions_end")] == [sid]
    sim.run()
    assert sim.check(deadline=60.0).ok
    err = sim.sessions(sid)["d1"].error
    assert err is not None and err["code"] == "timeout"


# --- findings (bugs outside the harness, found by this simulation and fixed) ---


@pytest.mark.parametrize("seed", [s for s in REGRESSION_SEEDS if s not in RESENT_SEEDS])
def test_recovery_guardian_sessions_end_after_a_lost_share_request(seed: int) -> None:
    """A guardian whose ShareRequest (or, 8161, RecoveryComplete) is lost used to wait
    forever; its own deadlines now end it in Failed (timeout) without releasing."""
    keep: list[Simulation] = []
    r = run_seed(seed, "recovery", keep=keep)
    assert r.ok, _explain(r)
    assert r.outcomes.get("failed:timeout", 0) >= 1, r.outcomes
    guardians = [n for n in keep[0].nodes if n.startswith("g")]
    ends = {n: [msgspec.msgpack.decode(r.body, type=eng.FailBody).code
                for r in keep[0].nodes[n].records() if r.kind == eng.KIND_FAIL]
            for n in guardians}
    assert any("timeout" in codes for codes in ends.values()), ends


@pytest.mark.parametrize("seed", RESENT_SEEDS)
def test_a_share_request_lost_to_a_guardian_crash_is_resent_when_it_is_back(seed: int) -> None:
    """Seeds 86 and 139 used to lose a guardian's ShareRequest to its crash (torn while
    journaling it / sent while it was down) and end in a timeout; the new device now re-sends
    it on the restart (PeerUp) and the recovery completes everywhere."""
    keep: list[Simulation] = []
    r = run_seed(seed, "recovery", keep=keep)
    assert r.ok, _explain(r)
    assert set(r.outcomes) == {"completed"}, r.outcomes
    assert any(" peer-up g" in line for line in keep[0].log)


def test_genesis_without_guardians_completes() -> None:
    """A send to an empty role set (g = 0: no guardians) is stepped over by choreo.Monitor
    itself (found by this simulation: the dealer's monitor used to wait for a
    SealedGuardianShare nobody could receive, so every ShareAck looked early)."""
    sim = Simulation(2, dict.fromkeys(["d1", "d2", "d3"], "device"))
    sid = create_account(sim, "d1", ["d1", "d2", "d3"], 2)
    assert all(s.outcome == "completed" for s in sim.sessions(sid).values())


def test_personalised_genesis_shares_fail_a_per_send_outbound_check() -> None:
    """One monitor check per Send rejects the dealer's second SealedShare (the shares differ
    per holder, so they cannot be one Send): the runtime counts the Sends of one message type
    to one role within one driver input as one logical send. Replaying the dealer's journal
    into its monitor one check per Send fails; the runtime's own checks let genesis complete."""
    from aura_node.choreo.errors import UnexpectedSendError
    from aura_node.sessions import choreography_monitor

    sim = Simulation(2, dict.fromkeys(["d1", "d2", "d3"], "device"))
    sid = create_account(sim, "d1", ["d1", "d2", "d3"], 2)
    assert all(s.outcome == "completed" for s in sim.sessions(sid).values())
    evidence = eng.parse_evidence(sim.nodes["d1"].records(sid))
    start = next(ev.start for ev in evidence if isinstance(ev, eng.Started))
    spec = eng.PROTOCOLS["genesis"]
    sends = [ev for ev in evidence if isinstance(ev, eng.Sent)]
    assert [ev.envelope.step for ev in sends].count("SealedShare") == 2  # one per holder
    mon = choreography_monitor("genesis", start.role, spec.bindings(start, None))
    with pytest.raises(UnexpectedSendError, match="SealedShare"):
        for ev in sends:  # a broadcast to a role set is one check (per role), as ever
            for role in dict.fromkeys(start.roles[to] for to in ev.to):
                mon.check_outbound(role, eng.decode_message(
                    ev.envelope, spec.message_types[ev.envelope.step]))


def test_a_one_device_genesis_cannot_bind_its_monitor() -> None:
    from aura_node.errors import AuraError

    sim = Simulation(2, {"d1": "device", "g1": "guardian"})
    with pytest.raises(AuraError, match="needs n >= 1"):
        create_account(sim, "d1", ["d1"], 1, ["g1"], 1)


# --- command line ---


def test_main_runs_seeds_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--protocol", "genesis", "--seed", "3", "--seeds", "3"]) == 0
    assert "3 runs, 3 passed, 0 failed" in capsys.readouterr().out
    assert main(["--protocol", "dkd", "--seed", "1", "--json", "--no-faults"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["ok"] and line["stats"]["dropped"] == 0 and line["protocol"] == "dkd"
    assert msgspec.json.decode(json.dumps(line["outcomes"]).encode())


# --- end-to-end retransmission (PeerUp) ---


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_a_device_that_crashed_journaling_the_recovery_notice_hears_of_it_again_and_vetoes(
    mode: str,
) -> None:
    """d1 crashes while journaling a guardian's RecoveryPending (the session opener) and the
    other notices are lost while it is down; no at-least-once link (``hold_while_down``
    off). On its restart the guardians re-send the notice (``PeerUp``), d1 opens the
    session, its operator vetoes, and no guardian releases a share."""
    import dataclasses

    from tests.unit.test_recovery_roles import settle, start_recovery, world

    sim = world(11)
    assert not sim.hold_while_down
    sim.faults = dataclasses.replace(sim.faults, downtime=(5.0, 5.0))  # past every notice
    sid = start_recovery(sim)
    settle(sim)
    d1 = sim.nodes["d1"]
    sim.crash_at_append("d1", d1.appends + 1, mode)
    for g in ("g1", "g3"):
        sim.control(g, sid, "approve")
    sim.run(until=sim.now + 3.0)
    assert not d1.up and d1.crashes == 1
    lost = [line for line in sim.log if "->d1 recovery/RecoveryPending" in line]
    assert len(lost) == 3 and sum("(down)" in line for line in lost) == 2, lost
    if mode != "after":
        assert not d1.records(sid)  # the notice it was journaling did not survive
    settle(sim)
    assert d1.up
    assert sum(" peer-up d1 resend " in line for line in sim.log) == 3
    entry = d1.session(sid)
    assert entry is not None and entry.active and entry.state == "MayVeto"
    sim.control("d1", sid, "veto")
    sim.run()
    for name in ("n1", "g1", "g2", "g3"):
        ended = [r.kind for r in sim.nodes[name].records(sid)
                 if r.kind in (eng.KIND_COMPLETE, eng.KIND_FAIL)]
        assert ended == [eng.KIND_FAIL], (name, ended)
    for node in sim.nodes.values():
        steps = {eng.parse_record(r).envelope.step  # type: ignore[union-attr]
                 for r in node.records(sid) if r.kind == eng.KIND_OUT}
        assert "SealedRecoveryShare" not in steps, node.name
    assert len(sim.nodes["n1"].accounts) == 0
    report = sim.check()
    assert report.ok, report.violations
