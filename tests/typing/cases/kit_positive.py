"""A role written on the authoring kit, the way protocol code is: clean under mypy --strict and
pyright strict. Its transitions are what the kit's generated driver runs."""

from __future__ import annotations

from typing import Any, TypeVar, assert_type, final

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.protocols.kit import NoParams, Step
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

S = TypeVar("S")


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    question: str


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    yes: bool


class Thanks(msgspec.Struct, frozen=True, kw_only=True):
    pass


class PollAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("typing-poll", abort=PollAbort)
def POLL(c: ChoreographyBuilder) -> None:
    asker, panel = c.role("asker"), c.role_set("panel", size="n")
    c.phase(asker, "Asking")
    c.phase(panel, "Asking")
    c.send(asker, panel, Ask)
    c.phase(asker, "Counting")
    c.gather(panel, asker, Answer, threshold=c.threshold("k", of=panel), deadline="timeout")
    c.phase(asker, "Thanking")
    c.send(asker, panel, Thanks)
    c.phase(asker, "Done")


class PollParams(msgspec.Struct, frozen=True, kw_only=True):
    question: str
    k: int = 1


class Poll:
    """Choreography marker type."""


@final
class Asking(Phase): ...
@final
class Counting(Phase): ...
@final
class Thanking(Phase): ...
@final
class Done(Phase): ...
@final
class Failed(Phase): ...


@final
class Asker(ChoreographicProtocol[Poll, S], choreography="typing-poll", role="asker",
            initial=Asking, abort=Failed):
    yes: int

    def __init__(self: Asker[Asking], step: Step[PollParams]) -> None:
        self._begin(yes=0)

    @transition(source=Asking, target=Counting, action="send", message=Ask, peer="panel")
    def ask(self: Asker[Asking], step: Step[PollParams]) -> tuple[Asker[Counting], Ask]:
        return self._advance(Asker[Counting]), Ask(question=step.params.question)

    @transition(source=Counting, target=Thanking, action="gather", message=Answer, peer="panel")
    def count(self: Asker[Counting], answer: Answer, step: Step[PollParams]
              ) -> Asker[Counting] | Asker[Thanking]:
        yes = self.yes + answer.yes
        if yes >= step.params.k:
            return self._advance(Asker[Thanking], yes=yes)
        return self._advance(Asker[Counting], yes=yes)

    @transition(source=Counting, target=Failed, action="timeout")
    def give_up(self: Asker[Counting], step: Step[PollParams]) -> Asker[Failed]:
        step.fail("timeout", "too few answers")
        return self._advance(Asker[Failed])

    @transition(source=Counting, target=Counting, action="local", command="status")
    def status(self: Asker[Counting], args: dict[str, Any], step: Step[PollParams]
               ) -> Asker[Counting]:
        step.reply(yes=self.yes)
        return self._advance(Asker[Counting])

    @transition(source=Thanking, target=Done, action="send", message=Thanks, peer="panel")
    def thank(self: Asker[Thanking], step: Step[PollParams]) -> tuple[Asker[Done], Thanks]:
        step.complete(yes=self.yes)
        return self._advance(Asker[Done]), Thanks()


def phases_as_the_checker_sees_them(a: Asker[Asking], step: Step[PollParams],
                                    answer: Answer, none: Step[NoParams]) -> None:
    counting, ask = a.ask(step)
    assert_type(counting, Asker[Counting])
    assert_type(ask, Ask)
    after = counting.count(answer, step)
    assert_type(after, Asker[Counting] | Asker[Thanking])
    assert_type(step.params, PollParams)
    assert_type(none.params, NoParams)
