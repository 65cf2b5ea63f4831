"""Optional participants (issue 12): ``connect`` / ``disconnect``, in the style of the classic
multiparty session type literature (explicit connections, after Hu & Yoshida 2017 and
Scribble's ``connect``/``disconnect``).

Good protocols: a travel agency whose payment service is connected only when the client
accepts; a two-buyer where the second buyer is connected only when the first cannot pay alone;
a negotiation whose notary joins only on the loop's exit; a role set connected by a fan-out
gather. Each is accepted, projected with the optional role joining on its connect message, and
runs to completion under the interpreter (a member never connected counts as finished). The
same protocols written without ``connect`` are refused by the rule that catches them, which is
why the construct exists. Bad protocols: use before connect, connect twice, use after release,
a loop that changes a role's connection, a release of an unconnected role - each refused by
its rule, with ``file:line`` and a trace.
"""

from __future__ import annotations

import inspect
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_node.choreo import Choreography, ChoreographyBuilder, choreography
from aura_node.choreo.errors import IllFormedChoreography
from aura_node.choreo.monitor import Monitor
from aura_node.choreo.render import local_text, sequence_mermaid, state_dot, state_mermaid, text
from aura_node.choreo.simulate import run_session, sample_message
from aura_node.choreo.syntax import Disconnect, Gather, Send

HERE = "tests/unit/test_choreo_optional.py"
LINES: dict[str, int] = {}


def here(tag: str) -> None:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    LINES[tag] = frame.f_back.f_lineno + 1  # the DSL call on the next line


def at(tag: str) -> str:
    return f"{HERE}:{LINES[tag]}"


def msg(name: str) -> type:
    return msgspec.defstruct(name, [], frozen=True, kw_only=True)


Abort = msgspec.defstruct("OptAbort", [("reason", str)], frozen=True, kw_only=True)
(Query, Quote, Accept, Reject, Pay, Receipt, Title, Buy, Delivery, Split, Agree, Refuse) = map(
    msg, "Query Quote Accept Reject Pay Receipt Title Buy Delivery Split Agree Refuse".split()
)
(Offer, Counter, Deal, Contract, Sealed, Tick, Stop, Hello, Notice, Veto, Done, Extra) = map(
    msg, "Offer Counter Deal Contract Sealed Tick Stop Hello Notice Veto Done Extra".split()
)


def kinds(chor: Choreography) -> list[str]:
    return sorted(e.kind for e in chor.check())


def only(chor: Choreography, kind: str) -> IllFormedChoreography:
    errs = chor.check()
    assert [e.kind for e in errs] == [kind], "\n".join(e.message for e in errs)
    return errs[0]


def runs_to_completion(chor: Choreography, bindings: dict[str, int] | None = None) -> None:
    assert chor.check() == (), "\n".join(e.message for e in chor.check())
    for seed in range(60):
        for abort in (0.0, 0.05):
            res = run_session(chor, bindings or {}, random.Random(seed), abort_probability=abort)
            assert res.all_final and res.leftover == 0, (seed, res.not_final(), res.events)


# --- travel agency: the bank is connected only when the client accepts ------------------------


def travel(*, connect: bool) -> Choreography:
    @choreography("travel", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        client, agency, bank = c.role("client"), c.role("agency"), c.role("bank")
        c.send(client, agency, Query)
        c.send(agency, client, Quote)
        with c.choice(client) as ch:
            with ch.branch("accept"):
                c.send(client, agency, Accept)
                here("travel.pay")
                if connect:
                    c.connect(client, bank, Pay)
                else:
                    c.send(client, bank, Pay)
                c.send(bank, client, Receipt)
                c.disconnect(client, bank)
            with ch.branch("reject"):
                c.send(client, agency, Reject)

    return chor


def test_travel_agency_connects_the_bank_only_on_accept() -> None:
    chor = travel(connect=True)
    runs_to_completion(chor)
    pay = [s for s in chor.decl.body[2].branches[0].body if isinstance(s, Send)][1]  # type: ignore[union-attr]
    assert pay.connect and pay.message is Pay  # inspectable in the AST
    assert any(isinstance(s, Disconnect) for s in chor.decl.body[2].branches[0].body)  # type: ignore[union-attr]
    bank = chor.project("bank")
    assert bank.optional and bank.optional_roles == frozenset({"bank"})
    (first,) = bank.explicit(bank.initial)
    assert (first.action, first.peer, first.message, first.connect) == ("recv", "client", Pay, True)
    assert bank.released and bank.released <= bank.final
    client = chor.project("client")
    assert not client.optional
    (opens,) = [t for t in client.transitions if t.message is Pay]
    assert opens.action == "send" and opens.connect
    # the agency and the client are unchanged by the bank being optional
    assert not any(t.connect for t in chor.project("agency").transitions)


def test_travel_agency_without_connect_forces_the_bank_to_learn_the_choice() -> None:
    e = only(travel(connect=False), "knowledge_of_choice")
    assert "'bank'" in e.what and "client" in e.what


def test_rendered_with_the_connection_and_the_release() -> None:
    chor = travel(connect=True)
    seq = sequence_mermaid(chor)
    assert "participant bank as bank (optional, joins when connected)" in seq
    assert "Note over client,bank: client connects bank (bank joins the session)" in seq
    assert "Note over client,bank: client releases bank (bank's part ends)" in seq
    # the reject branch never connects the bank: an abort there reaches only the others
    assert "client connects bank: Pay" in text(chor) and "client releases bank" in text(chor)
    bank = chor.project("bank")
    assert "recv Pay from client (connects)" in state_mermaid(bank)
    assert "note left of" in state_mermaid(bank) and "(released)" in state_dot(bank)
    assert "optional: joins on a connect message" in local_text(bank)


def test_monitor_of_an_optional_role_joins_on_its_connect_message() -> None:
    chor = travel(connect=True)
    bank = Monitor(chor.project("bank"))
    assert (bank.joined, bank.finished, bank.can_time_out) == (False, True, False)
    bank.check_inbound("client", sample_message(Pay))
    assert (bank.joined, bank.finished) == (True, False)
    bank.check_outbound("client", sample_message(Receipt))
    assert bank.is_final and bank.state in bank.local_type.released
    client = Monitor(chor.project("client"))
    for m, out in ((Query, True), (Quote, False), (Accept, True), (Pay, True)):
        peer = "bank" if m is Pay else "agency"
        if out:
            client.check_outbound(peer, sample_message(m))
        else:
            client.check_inbound(peer, sample_message(m))
    assert client.connected == {"bank"}


def test_an_abort_never_reaches_a_role_that_was_never_connected() -> None:
    chor = travel(connect=True)
    for seed in range(80):
        res = run_session(chor, {}, random.Random(seed), abort_probability=0.2)
        assert res.all_final and res.leftover == 0
        bank = res.members[("bank", 0)]
        if not bank.joined:
            assert bank.state == bank.local_type.initial  # no session, nothing delivered
            assert not any(e.startswith("bank[0] receives") for e in res.events)


# --- two-buyer: the second buyer is connected only when the first cannot pay alone --------------


def two_buyer(*, connect: bool) -> Choreography:
    @choreography("two_buyer", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        b1, seller, b2 = c.role("buyer1"), c.role("seller"), c.role("buyer2")
        c.send(b1, seller, Title)
        c.send(seller, b1, Quote)
        with c.choice(b1) as ch:
            with ch.branch("alone"):
                c.send(b1, seller, Buy)
                c.send(seller, b1, Delivery)
            with ch.branch("share"):
                if connect:
                    c.connect(b1, b2, Split)
                else:
                    c.send(b1, b2, Split)
                with c.choice(b2) as answer:
                    with answer.branch("agree"):
                        c.send(b2, b1, Agree)
                        c.send(b1, seller, Buy)
                        c.send(seller, b1, Delivery)
                    with answer.branch("refuse"):
                        c.send(b2, b1, Refuse)
                        c.send(b1, seller, Reject)

    return chor


def test_two_buyer_connects_the_second_buyer_only_to_share() -> None:
    chor = two_buyer(connect=True)
    runs_to_completion(chor)
    b2 = chor.project("buyer2")
    assert b2.optional
    assert [t.describe() for t in b2.explicit(b2.initial)] == ["recv Split from buyer1 (connects)"]
    # the seller learns nothing about buyer2 and needs no connection
    assert not chor.project("seller").optional


def test_two_buyer_without_connect_is_refused_for_the_second_buyer() -> None:
    e = only(two_buyer(connect=False), "knowledge_of_choice")
    assert "'buyer2'" in e.what


# --- negotiation: the notary joins on the loop's exit --------------------------------------------


@choreography("negotiation", abort=Abort)
def NEGOTIATION(c: ChoreographyBuilder) -> None:
    buyer, seller, notary = c.role("buyer"), c.role("seller"), c.role("notary")
    c.send(buyer, seller, Offer)
    with c.loop("haggle") as haggle:
        with c.choice(seller) as ch:
            with ch.branch("counter"):
                c.send(seller, buyer, Counter)
                c.send(buyer, seller, Offer)
                haggle.again()
            with ch.branch("deal"):
                c.send(seller, buyer, Deal)
                c.connect(buyer, notary, Contract)
                c.send(notary, seller, Sealed)


def test_negotiation_connects_the_notary_on_the_exit_of_the_loop() -> None:
    runs_to_completion(NEGOTIATION)
    notary = NEGOTIATION.project("notary")
    assert notary.optional and len(notary.explicit(notary.initial)) == 1


# --- liveness: a never-connected role is finished, not stuck -------------------------------------


def streaming(*, connect: bool) -> Choreography:
    @choreography("stream", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        src, sink, auditor = c.role("source"), c.role("sink"), c.role("auditor")
        c.send(src, sink, Hello)
        with c.choice(src) as ch:
            with ch.branch("forever"):
                with c.loop("ticks"):
                    c.send(src, sink, Tick)
                    c.again("ticks")
            with ch.branch("stop"):
                c.send(src, sink, Stop)
                if connect:
                    c.connect(src, auditor, Notice)
                else:
                    c.send(src, auditor, Notice)

    return chor


def test_a_role_never_connected_behind_an_endless_loop_is_not_stuck() -> None:
    chor = streaming(connect=True)
    assert chor.check() == ()
    assert chor.project("auditor").optional


def test_the_same_role_always_in_the_session_is_stuck() -> None:
    e = only(streaming(connect=False), "stuck_role")
    assert "'auditor'" in e.what


# --- a role set connected by a fan-out gather (the shape recovery uses) --------------------------


@choreography("fanout", abort=Abort)
def FANOUT(c: ChoreographyBuilder) -> None:
    lead = c.role("lead")
    members = c.role_set("members", size="n", minimum=1)
    watchers = c.role_set("watchers", size="w", minimum=1)
    c.send(lead, members, Hello)
    with c.choice(lead) as ch:
        with ch.branch("notify"):
            c.send(lead, members, Accept)
            c.gather(members, watchers, Notice, threshold=1, deadline=None, connect=True)
            c.gather(watchers, members, Veto, threshold=1, deadline="watch", optional=True)
        with ch.branch("quiet"):
            c.send(lead, members, Reject)


def test_a_role_set_is_connected_by_the_first_message_of_a_gather() -> None:
    runs_to_completion(FANOUT, {"n": 3, "w": 2})
    w = FANOUT.project("watchers", {"n": 3, "w": 2})
    assert w.optional
    (first,) = w.explicit(w.initial)
    # the first notice is the quorum: no deadline can pass before the session starts
    assert (first.action, first.threshold, first.connect) == ("gather", 1, True)
    assert not any(t.action == "timeout" for t in w.outgoing(w.initial))
    gathers = [s for s in FANOUT.decl.body[1].branches[0].body if isinstance(s, Gather)]  # type: ignore[union-attr]
    assert gathers[0].connect and not gathers[1].connect


# --- bad: each rule, with file:line and a trace --------------------------------------------------


def test_use_before_connect_is_refused() -> None:
    @choreography("early", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        here("early.use")
        c.send(a, b, Hello)
        c.connect(a, b, Pay)

    e = only(chor, "not_connected")
    assert e.where == at("early.use")
    assert "'b' receives Hello from a before it is connected" in e.what
    assert e.trace[-1] == "a -> b: Hello"


def test_use_on_a_path_that_does_not_connect_is_refused_with_that_path() -> None:
    @choreography("one_path", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        with c.choice(a) as ch:
            with ch.branch("join"):
                c.connect(a, b, Pay)
                c.send(b, a, Receipt)
            with ch.branch("skip"):
                c.send(a, b, Extra)
                here("one_path.send")
                c.send(b, a, Done)

    errs = chor.check()
    assert {e.kind for e in errs} == {"not_connected"}
    (e,) = [e for e in errs if "Extra" in e.what]
    assert "a chooses 'skip'" in e.trace
    assert "'b' receives Extra from a before it is connected on this path" in e.what


def test_a_role_that_sends_before_it_is_connected_is_refused() -> None:
    @choreography("sends_early", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        here("sends_early")
        c.send(b, a, Hello)
        c.connect(a, b, Pay)

    e = only(chor, "not_connected")
    assert e.where == at("sends_early") and "'b' sends Hello to a" in e.what


def test_connecting_twice_is_refused() -> None:
    @choreography("twice", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        c.connect(a, b, Pay)
        here("twice")
        c.connect(a, b, Hello)

    e = only(chor, "connect_twice")
    assert e.where == at("twice") and "already connected on this path" in e.what
    assert e.trace == ("a connects b: Pay", "a connects b: Hello")


def test_interacting_after_release_is_refused() -> None:
    @choreography("after", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        c.connect(a, b, Pay)
        c.disconnect(a, b)
        here("after")
        c.send(a, b, Extra)

    e = only(chor, "after_release")
    assert e.where == at("after")
    assert e.trace[-2:] == ("a releases b", "a -> b: Extra")


def test_reconnecting_after_release_is_refused() -> None:
    @choreography("again", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        c.connect(a, b, Pay)
        c.disconnect(a, b)
        here("reconnect")
        c.connect(a, b, Hello)

    e = only(chor, "after_release")
    assert e.where == at("reconnect") and "connected again" in e.what


def test_a_loop_that_changes_a_connection_is_refused() -> None:
    @choreography("loopy", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b, d = c.role("a"), c.role("b"), c.role("d")
        with c.loop("rounds") as rounds:
            with c.choice(a) as ch:
                with ch.branch("more"):
                    c.connect(a, b, Pay)
                    c.send(b, a, Receipt)
                    c.disconnect(a, b)
                    here("loopy.again")
                    rounds.again()
                with ch.branch("done"):
                    c.send(a, d, Done)

    errs = chor.check()
    assert "connection_in_loop" in {e.kind for e in errs}
    (e,) = [e for e in errs if e.kind == "connection_in_loop"]
    assert e.where == at("loopy.again")
    assert "'b' is unconnected when loop 'rounds' starts but released" in e.what


def test_releasing_a_role_that_is_not_connected_is_refused() -> None:
    @choreography("release_early", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        here("release_early")
        c.disconnect(a, b)
        c.connect(a, b, Pay)

    assert "not_connected" in kinds(chor)
    (e,) = [e for e in chor.check() if e.where == at("release_early")]
    assert "released by 'a' but it is not connected" in e.what


def test_a_role_cannot_release_itself() -> None:
    @choreography("self_release", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b = c.role("a"), c.role("b")
        c.connect(a, b, Pay)
        here("self_release")
        c.disconnect(b, b)

    e = only(chor, "bad_role_use")
    assert e.where == at("self_release")


@pytest.mark.parametrize("chor", [travel(connect=True), two_buyer(connect=True), NEGOTIATION])
def test_every_optional_role_starts_with_connect_receives_only(chor: Choreography) -> None:
    for role in chor.roles:
        lt = chor.project(role)
        first = lt.explicit(lt.initial)
        if lt.optional:
            assert first and all(t.action in ("recv", "gather") and t.connect for t in first)
        else:
            assert not any(t.connect and t.action != "send" for t in lt.transitions)


# --- property: random choices whose branches connect an optional role or leave it out -----------

POOL = [msgspec.defstruct(f"P{i}", [], frozen=True, kw_only=True) for i in range(64)]


@st.composite
def plans(draw: st.DrawFn) -> tuple[bool, list[tuple[bool, int, bool, int]]]:
    """(looped, branches): each branch is (connects x, x's replies, released, a<->b after)."""
    looped = draw(st.booleans())
    n = draw(st.integers(2, 4))
    branches = [
        (draw(st.booleans()), draw(st.integers(0, 2)), draw(st.booleans()), draw(st.integers(0, 2)))
        for _ in range(n)
    ]
    # at least one branch connects x and one does not (the interesting case)
    branches[0] = (True, *branches[0][1:])
    branches[1] = (False, *branches[1][1:])
    return looped, branches


def build(plan: tuple[bool, list[tuple[bool, int, bool, int]]], *, connect: bool) -> Choreography:
    looped, branches = plan
    fresh = iter(POOL)

    @choreography("random_optional", abort=Abort)
    def chor(c: ChoreographyBuilder) -> None:
        a, b, x = c.role("a"), c.role("b"), c.role("x")
        c.send(a, b, next(fresh))

        def body(again: object) -> None:
            with c.choice(a) as ch:
                for i, (joins, replies, released, after) in enumerate(branches):
                    with ch.branch(f"b{i}"):
                        c.send(a, b, next(fresh))
                        if joins:
                            (c.connect if connect else c.send)(a, x, next(fresh))
                            for j in range(replies):
                                c.send(x, a if j % 2 == 0 else b, next(fresh))
                            if released:
                                c.disconnect(a, x)
                        for j in range(after):
                            c.send(b if j % 2 == 0 else a, a if j % 2 == 0 else b, next(fresh))
                        if again is not None and not joins:
                            c.again("rounds")  # a path that never connects x may loop back

        if looped:
            with c.loop("rounds") as rounds:
                body(rounds)
        else:
            body(None)

    return chor


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_random_optional_roles_are_accepted_and_run(
    plan: tuple[bool, list[tuple[bool, int, bool, int]]],
) -> None:
    chor = build(plan, connect=True)
    assert chor.check() == (), "\n".join(e.message for e in chor.check())
    assert chor.project("x").optional
    for seed in range(8):
        res = run_session(chor, {}, random.Random(seed), abort_probability=0.03)
        assert res.all_final and res.leftover == 0, (seed, res.not_final(), res.events)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_random_optional_roles_without_connect_must_learn_the_choice(
    plan: tuple[bool, list[tuple[bool, int, bool, int]]],
) -> None:
    # (in a loop whose other paths only loop back, x may simply wait at the loop's head for
    # the message that tells it: that is well formed without connect, so only straight choices)
    assert "knowledge_of_choice" in kinds(build((False, plan[1]), connect=False))


@pytest.mark.parametrize(
    "chor", [travel(connect=True), two_buyer(connect=True), NEGOTIATION, FANOUT]
)
def test_the_diagrams_of_optional_roles_parse(chor: Choreography) -> None:
    from tests.unit.test_choreo_render import parse_sequence, parse_state_diagram

    parse_sequence(sequence_mermaid(chor))
    bindings = {"n": 2, "w": 2} if chor is FANOUT else {}
    for role in chor.roles:
        lt = chor.project(role, bindings)
        assert parse_state_diagram(state_mermaid(lt), lt.states) > 0
