"""DKD properties over the in-memory harness: any t-subset and initiator derive the same key,
fewer than t cannot, and a crash at every journal append point changes nothing."""

from __future__ import annotations

import random
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.protocols import engine as eng
from aura_node.protocols.dkd.roles import SPEC, session_params, session_roles
from tests.unit.protocol_sim import Cluster, Device, account_devices


@cache
def _reference(n: int, t: int) -> str:
    devs = account_devices(n, t)
    c = Cluster(devs, SPEC)
    p = session_params({"context": "ctx"}, devs["d1"].services)
    c.start("d1", session="0" * 32, params=p, roles=session_roles(p), entropy=b"r" * 32)
    c.run()
    res = c.result("d1", "0" * 32)
    assert res is not None
    return str(res["fingerprint"])


@st.composite
def sessions(draw: st.DrawFn) -> tuple[int, int, list[str], str, int]:
    n = draw(st.integers(2, 5))
    t = draw(st.integers(1, n))
    names = [f"d{i}" for i in range(1, n + 1)]
    k = draw(st.integers(max(t, 1), n))
    subset = draw(st.permutations(names))[:k]
    initiator = draw(st.sampled_from(subset))
    return n, t, subset, initiator, draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_any_subset_derives_the_same_key(case: tuple[int, int, list[str], str, int]) -> None:
    n, t, subset, initiator, seed = case
    devs = account_devices(n, t)
    c = Cluster(devs, SPEC, rng=random.Random(seed), duplicate_rate=0.3)
    p = session_params({"context": "ctx", "participants": subset}, devs[initiator].services)
    sid = f"{seed:032x}"
    c.start(initiator, session=sid, params=p, roles=session_roles(p),
            entropy=seed.to_bytes(4, "big") * 8)
    c.run()
    res = c.result(initiator, sid)
    assert res is not None
    assert res["fingerprint"] == _reference(n, t)
    for name in subset:
        other = c.result(name, sid)
        assert other is None or other["fingerprint"] == res["fingerprint"]


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 5), st.data())
def test_fewer_than_t_responding_fails_at_the_deadline(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    names = [f"d{i}" for i in range(1, n + 1)]
    devs = account_devices(n, t)
    responding = data.draw(st.integers(0, t - 2))  # besides the initiator
    c = Cluster(devs, SPEC, rng=random.Random(n))
    c.down = set(names[1 + responding:])
    p = session_params({"context": "ctx"}, devs["d1"].services)
    c.start("d1", session="1" * 32, params=p, roles=session_roles(p), entropy=b"x" * 32)
    c.run()
    assert c.result("d1", "1" * 32) is None
    c.fire_timers(c.now + p["timeout"] + 1)
    err = c.error("d1", "1" * 32)
    assert err is not None and err[0] == "timeout"
    for name in names:
        assert c.result(name, "1" * 32) is None
        kinds = {r.kind for r in devs[name].records("1" * 32)}
        assert eng.KIND_COMPLETE not in kinds


def _crash_case(n: int, t: int, victim: str, cut: int, seed: int) -> None:
    devs = account_devices(n, t)
    c = Cluster(devs, SPEC, rng=random.Random(seed))
    sid = "2" * 32
    p = session_params({"context": "ctx"}, devs["d1"].services)
    c.start("d1", session=sid, params=p, roles=session_roles(p), entropy=b"c" * 32)
    # deliver a random part of the traffic, then crash the victim at append point ``cut``
    for _ in range(seed % 7):
        if c.queue:
            c.deliver(c.queue.pop(c.rng.randrange(len(c.queue))))
    sent_before = _sent_messages(devs)
    groups = len(devs[victim].groups)
    ok = c.crash_and_restore(victim, sid, keep_groups=min(cut, groups))
    c.run()
    c.fire_timers(c.now + 1)  # nothing is due yet: deadlines are 30 s away
    c.run()
    res = c.result("d1", sid)
    if ok and res is not None:
        assert res["fingerprint"] == _reference(n, t)
    elif res is None:
        c.fire_timers(c.now + 60)
        aborted = not ok or sid not in devs["d1"].sessions  # the runtime aborts it cleanly
        assert aborted or c.error("d1", sid) is not None
    for name in devs:
        other = c.result(name, sid)
        assert other is None or other["fingerprint"] == _reference(n, t)
    # no device ever said two different things of one kind in this session
    for (name, step), bodies in _merge(sent_before, _sent_messages(devs)).items():
        assert len(bodies) == 1, (name, step)


def _sent_messages(devs: dict[str, Device]) -> dict[tuple[str, str], set[bytes]]:
    out: dict[tuple[str, str], set[bytes]] = {}
    for name, dev in devs.items():
        for rec in dev.records():
            if rec.kind == eng.KIND_OUT:
                ev = eng.parse_record(rec)
                assert isinstance(ev, eng.Sent)
                out.setdefault((name, ev.envelope.step), set()).add(ev.envelope.body)
    return out


def _merge(a: dict[tuple[str, str], set[bytes]], b: dict[tuple[str, str], set[bytes]]
           ) -> dict[tuple[str, str], set[bytes]]:
    out = {k: set(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, set()).update(v)
    return out


def test_crash_at_every_append_point(full_run: bool) -> None:
    seeds = range(6) if full_run else range(2)
    for n, t in ((3, 2), (4, 3)):
        for victim in ("d1", "d2"):
            for seed in seeds:
                for cut in range(8):
                    _crash_case(n, t, victim, cut, seed)
