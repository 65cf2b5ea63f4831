"""Verdicts of the checker on small protocols in the style of the classic multiparty session
type literature (two-buyer, travel agency, negotiation, ring, streaming, loops with exits,
choices inside loops), each a regression test for one class of wrong verdict or misleading
message of issue 12: the good ones are accepted, projected as a careful reader would, and run to
completion under the interpreter; the bad ones are refused by the rule that actually fails,
with its ``file:line`` and a trace."""

from __future__ import annotations

import inspect
import random
import re

import msgspec
import pytest

from aura_node.choreo import Choreography, ChoreographyBuilder, LocalType, choreography
from aura_node.choreo.errors import IllFormedChoreography
from aura_node.choreo.simulate import run_session

HERE = "tests/unit/test_choreo_verdicts.py"
LINES: dict[str, int] = {}


def here(tag: str) -> None:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    LINES[tag] = frame.f_back.f_lineno + 1  # the DSL call on the next line


def at(tag: str) -> str:
    return f"{HERE}:{LINES[tag]}"


class Msg(msgspec.Struct, frozen=True, kw_only=True):
    pass


def msg(name: str) -> type:
    return msgspec.defstruct(name, [], bases=(Msg,), frozen=True, kw_only=True)


Quit = msgspec.defstruct("Quit", [("reason", str)], frozen=True, kw_only=True)
(Title, Share, Ok, Address, Date, Book, Ask, Room, More, Enough, Closed, Token, Halt) = map(
    msg, "Title Share Ok Address Date Book Ask Room More Enough Closed Token Halt".split()
)
(Item, Eos, Tick, Stop, Bye, Req, Done, Start, Data, Final, Pay) = map(
    msg, "Item Eos Tick Stop Bye Req Done Start Data Final Pay".split()
)


def errors_of(chor: Choreography, kind: str) -> list[IllFormedChoreography]:
    return [e for e in chor.check() if e.kind == kind]


def runs_to_completion(chor: Choreography) -> None:
    assert chor.check() == (), "\n".join(e.message for e in chor.check())
    for seed in range(40):
        res = run_session(chor, {}, random.Random(seed), timeout_probability=0.0)
        assert res.all_final and res.leftover == 0, (seed, res.not_final(), res.events[-10:])


def transitions(lt: LocalType) -> set[tuple[str, str, str, str]]:
    return {
        (t.source, t.action, t.message.__name__ if t.message else "", t.target)
        for t in lt.transitions
        if not t.implicit
    }


# --- two message types with one name --------------------------------------------------------


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    price: int


QUOTE_LINE = inspect.getsourcelines(Quote)[1]


class SecondSeller:
    """A second seller's own ``Quote``: a different class under the same name."""

    class Quote(msgspec.Struct, frozen=True, kw_only=True):
        price: int
        seller: str


OTHER_QUOTE_LINE = inspect.getsourcelines(SecondSeller.Quote)[1]


@choreography("two-buyer-two-quotes", abort=Quit)
def TWO_QUOTES(c: ChoreographyBuilder) -> None:
    b1, b2, s = c.role("buyer1"), c.role("buyer2"), c.role("seller")
    c.send(b1, s, Title)
    c.send(s, b1, Quote)
    here("second_quote")
    c.send(s, b2, SecondSeller.Quote)
    c.send(b1, b2, Share)
    c.send(b2, s, Ok)


def test_two_message_types_with_one_name_are_refused_with_both_definitions() -> None:
    (err,) = TWO_QUOTES.check()
    assert err.kind == "duplicate_message_name"
    assert err.where == at("second_quote")
    assert "two message types named Quote" in err.message
    assert f"{HERE}:{QUOTE_LINE}" in err.message
    assert f"{HERE}:{OTHER_QUOTE_LINE}" in err.message
    with pytest.raises(Exception, match="ill formed"):
        TWO_QUOTES.project("seller")


class Accept(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Other:
    class Accept(msgspec.Struct, frozen=True, kw_only=True):
        pass


@choreography("negotiation-two-accepts", abort=Quit)
def TWO_ACCEPTS(c: ChoreographyBuilder) -> None:
    buyer, seller = c.role("buyer"), c.role("seller")
    c.send(seller, buyer, Quote)
    with c.choice(buyer) as choose:
        with choose.branch("accept"):
            c.send(buyer, seller, Accept)
        with choose.branch("accept_too"):
            c.send(buyer, seller, Other.Accept)
            c.send(seller, buyer, Bye)


def test_branches_starting_with_same_named_types_say_so() -> None:
    kinds = {e.kind for e in TWO_ACCEPTS.check()}
    assert kinds == {"duplicate_message_name"}, TWO_ACCEPTS.check()
    (err,) = TWO_ACCEPTS.check()
    assert "two message types named Accept" in err.message
    assert "nondeterministic" not in err.message


# --- unguarded and empty loops ----------------------------------------------------------------


@choreography("idle-after-work", abort=Quit)
def IDLE(c: ChoreographyBuilder) -> None:
    client, server = c.role("client"), c.role("server")
    c.send(client, server, Req)
    c.send(server, client, Done)
    here("idle")
    with c.loop("idle") as idle:
        idle.again()


@choreography("spinning-stream", abort=Quit)
def SPINNING(c: ChoreographyBuilder) -> None:
    source, sink = c.role("source"), c.role("sink")
    with c.loop("stream") as stream:
        with c.choice(source) as choose:
            with choose.branch("item"):
                c.send(source, sink, Item)
                stream.again()
            with choose.branch("idle"):
                here("spin")
                stream.again()
            with choose.branch("eos"):
                c.send(source, sink, Eos)


def test_an_empty_loop_is_named_even_after_real_interactions() -> None:
    (err,) = IDLE.check()
    assert err.kind == "empty_loop" and err.where == at("idle")
    assert "loop 'idle' is empty (and so unguarded)" in err.message
    assert err.trace == ("client -> server: Req", "server -> client: Done", "loop 'idle'")


def test_an_unguarded_again_is_named() -> None:
    (err,) = errors_of(SPINNING, "unguarded_loop")
    assert err.where == at("spin")
    assert "again('stream') is reached from the start of loop 'stream' without any " in err.message
    assert err.trace[-2:] == ("loop 'stream'", "again('stream')")


# --- a role stuck forever ---------------------------------------------------------------------


@choreography("stuck", abort=Quit)
def STUCK(c: ChoreographyBuilder) -> None:
    """The issue's example: A -> C: m; choice at C { C -> B: L2; loop { C -> B: L5 } }
    or { C -> B: L3 }; B -> A: L4. After 'forever' B never leaves the loop."""
    a, b, cc = c.role("A"), c.role("B"), c.role("C")
    c.send(a, cc, Start)
    with c.choice(cc) as choose:
        with choose.branch("forever"):
            c.send(cc, b, Item)
            here("forever_loop")
            with c.loop("stream") as stream:
                c.send(cc, b, Data)
                stream.again()
        with choose.branch("once"):
            c.send(cc, b, Eos)
    c.send(b, a, Done)


@choreography("endless-stream", abort=Quit)
def ENDLESS(c: ChoreographyBuilder) -> None:
    """The same shape with nothing after the choice: a server streaming forever is fine."""
    a, b, cc = c.role("A"), c.role("B"), c.role("C")
    c.send(a, cc, Start)
    with c.choice(cc) as choose:
        with choose.branch("forever"):
            c.send(cc, b, Item)
            with c.loop("stream") as stream:
                c.send(cc, b, Data)
                stream.again()
        with choose.branch("once"):
            c.send(cc, b, Eos)


def test_a_role_that_can_never_progress_is_a_liveness_error() -> None:
    (err,) = STUCK.check()
    assert err.kind == "stuck_role"
    assert err.where == at("forever_loop")
    assert (
        "role 'A' can never progress: after 'forever', loop 'stream' runs forever without "
        "'A', so what 'A' does next after 'once' (receives Done from B) never comes" in err.message
    )
    assert err.trace == (
        "A -> C: Start",
        "C chooses 'forever'",
        "C -> B: Item",
        "loop 'stream' never exits",
        "A is stuck: it receives Done from B only after 'once'",
    )


def test_a_loop_that_never_exits_is_fine_when_nobody_waits_after_it() -> None:
    assert ENDLESS.check() == ()
    assert transitions(ENDLESS.project("A")) == {("s1", "send", "Start", "End")}


# --- merge sees through loop entry and loop-back ----------------------------------------------


@choreography("travel-agency", abort=Quit)
def TRAVEL(c: ChoreographyBuilder) -> None:
    """The hotel learns the customer's choice from the first message of a loop (Ask) or from
    Closed: merge must see through the loop's entry."""
    customer, agency, hotel = c.role("customer"), c.role("agency"), c.role("hotel")
    with c.choice(customer) as choose:
        with choose.branch("book"):
            c.send(customer, agency, Book)
            with c.loop("query") as query:
                c.send(agency, hotel, Ask)
                c.send(hotel, agency, Room)
                with c.choice(agency) as more:
                    with more.branch("more"):
                        c.send(agency, hotel, More)
                        query.again()
                    with more.branch("enough"):
                        c.send(agency, hotel, Enough)
            c.send(agency, customer, Date)
        with choose.branch("quit"):
            c.send(customer, agency, Stop)
            c.send(agency, hotel, Closed)


@choreography("ticker", abort=Quit)
def TICKER(c: ChoreographyBuilder) -> None:
    """A choice inside a loop: the display learns 'more' only from the next iteration's Tick."""
    clock, log, display = c.role("clock"), c.role("log"), c.role("display")
    with c.loop("tick") as tick:
        c.send(clock, display, Tick)
        with c.choice(clock) as choose:
            with choose.branch("more"):
                c.send(clock, log, More)
                tick.again()
            with choose.branch("stop"):
                c.send(clock, log, Stop)
                c.send(clock, display, Bye)


@choreography("ring", abort=Quit)
def RING(c: ChoreographyBuilder) -> None:
    """A branch that only loops back: the restart is A's own Token, which goes round the ring."""
    a, b, cc = c.role("A"), c.role("B"), c.role("C")
    with c.loop("round") as round_:
        c.send(a, b, Token)
        c.send(b, cc, Token)
        c.send(cc, a, Token)
        with c.choice(a) as choose:
            with choose.branch("again"):
                round_.again()
            with choose.branch("halt"):
                c.send(a, b, Halt)
                c.send(b, cc, Halt)


@choreography("negotiation", abort=Quit)
def NEGOTIATION(c: ChoreographyBuilder) -> None:
    """Loop-back-only branch of a loop with an exit; the bank only hears of the final deal."""
    buyer, seller, bank = c.role("buyer"), c.role("seller"), c.role("bank")
    with c.loop("haggle") as haggle:
        c.send(seller, buyer, Quote)
        with c.choice(seller) as choose:
            with choose.branch("counter"):
                haggle.again()
            with choose.branch("final"):
                c.send(seller, buyer, Final)
                c.send(buyer, bank, Pay)
                c.send(bank, seller, Ok)


def test_merge_sees_through_a_loop_entry() -> None:
    runs_to_completion(TRAVEL)
    assert transitions(TRAVEL.project("hotel")) == {
        ("s1", "recv", "Ask", "s2"),
        ("s1", "recv", "Closed", "End"),
        ("s2", "send", "Room", "s3"),
        ("s3", "recv", "More", "s4"),
        ("s3", "recv", "Enough", "End"),
        ("s4", "recv", "Ask", "s2"),
    }


def test_merge_sees_through_a_loop_back() -> None:
    runs_to_completion(TICKER)
    display = TICKER.project("display")
    # the first Tick, then Tick again (the loop went round) or Bye (it stopped)
    assert transitions(display) == {
        ("s1", "recv", "Tick", "s2"),
        ("s2", "recv", "Tick", "s2"),
        ("s2", "recv", "Bye", "End"),
    }


def test_branches_that_only_loop_back_are_fine_when_the_restart_informs() -> None:
    runs_to_completion(RING)
    runs_to_completion(NEGOTIATION)
    # the bank takes no part in the haggling: it just waits for the payment
    assert transitions(NEGOTIATION.project("bank")) == {
        ("s1", "recv", "Pay", "s2"),
        ("s2", "send", "Ok", "End"),
    }


@choreography("polling", abort=Quit)
def POLLING(c: ChoreographyBuilder) -> None:
    """The loop restarts with the *other* role's message: nobody learns the server's choice."""
    client, server = c.role("client"), c.role("server")
    with c.loop("poll") as poll:
        c.send(client, server, Req)
        here("poll_choice")
        with c.choice(server) as choose:
            with choose.branch("again"):
                poll.again()
            with choose.branch("done"):
                c.send(server, client, Done)


def test_a_loop_back_branch_restarting_with_another_roles_message_is_one_error() -> None:
    (err,) = POLLING.check()  # no follow-on "cannot learn" error for the client
    assert err.kind == "choice_not_initiated" and err.where == at("poll_choice")
    assert (
        "branch 'again' of the choice by 'server' does not start with a message from 'server' "
        "(it loops back to 'poll', where it first receives Req from client), so no other role "
        "can learn the decision" in err.message
    )


# --- messages that say what fails -------------------------------------------------------------


@choreography("relay", abort=Quit)
def RELAY(c: ChoreographyBuilder) -> None:
    """D is told (Item) but then must either send or receive without knowing which."""
    cc, d, e = c.role("C"), c.role("D"), c.role("E")
    c.send(cc, e, Start)
    here("relay_choice")
    with c.choice(cc) as choose:
        with choose.branch("push"):
            c.send(cc, d, Item)
            c.send(d, e, Data)
        with choose.branch("pull"):
            c.send(cc, d, Item)
            c.send(e, d, Data)


@choreography("identical", abort=Quit)
def IDENTICAL(c: ChoreographyBuilder) -> None:
    buyer, seller = c.role("buyer"), c.role("seller")
    c.send(seller, buyer, Quote)
    with c.choice(buyer) as choose:
        with choose.branch("yes"):
            c.send(buyer, seller, Ok)
        here("same_branch")
        with choose.branch("sure"):
            c.send(buyer, seller, Ok)


@choreography("one-branch", abort=Quit)
def ONE_BRANCH(c: ChoreographyBuilder) -> None:
    buyer, seller = c.role("buyer"), c.role("seller")
    with c.choice(buyer) as choose:
        with choose.branch("only"):
            c.send(buyer, seller, Ok)


def test_cannot_learn_names_what_it_shares_and_where_it_differs() -> None:
    (d,) = [e for e in errors_of(RELAY, "knowledge_of_choice") if "role 'D'" in e.message]
    assert d.where == at("relay_choice")
    # D does receive Item in both branches: that is not what fails, what follows it is
    assert (
        "role 'D' cannot learn the choice by C: in both it receives Item from C; then after "
        "'push' it sends Data to E, after 'pull' it receives Data from E" in d.message
    )


def test_identical_branches_are_called_identical() -> None:
    kinds = [e.kind for e in IDENTICAL.check()]
    assert "identical_branches" in kinds and "ambiguous_choice" not in kinds
    (err,) = errors_of(IDENTICAL, "identical_branches")
    assert err.where == at("same_branch")
    assert "branches 'yes' and 'sure' of the choice by 'buyer' are identical" in err.message


def test_grammar_of_a_one_branch_choice() -> None:
    (err,) = errors_of(ONE_BRANCH, "bad_choice")
    assert "choice by 'buyer' has 1 branch; a choice needs at least 2" in err.message


BAD = [TWO_QUOTES, TWO_ACCEPTS, IDLE, SPINNING, STUCK, POLLING, RELAY, IDENTICAL, ONE_BRANCH]


@pytest.mark.parametrize("chor", BAD, ids=lambda c: c.name)
def test_every_error_names_its_rule_its_line_and_a_trace(chor: Choreography) -> None:
    errors = chor.check()
    assert errors
    for e in errors:
        assert e.message.split("\n")[0].endswith(f"[{e.kind}]"), e.message
        assert re.fullmatch(r".+\.py:\d+", e.where), e.message
        assert HERE in e.where, e.message
        assert e.trace and "\n  trace: " in e.message, e.message
