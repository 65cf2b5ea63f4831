"""Kit rules the payment-approval example needs: operator-triggered sends, responder params,
the end of a session after its step's sends, default bindings, generated control commands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import LocalProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import seal
from aura_node.protocols.kit import REGISTERED, NoParams, Protocol, Step, protocol
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from tests.unit.kit_support import ENTROPY, SERVICES, SID, HelloChoreo, registrations_undone

S = TypeVar("S")




@final
class Done(Phase): ...


@final
class Listening(Phase): ...



# --- operator-triggered sends, responder params, generated commands, default bindings ------


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    question: str


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Thanks(msgspec.Struct, frozen=True, kw_only=True):
    pass


class AskAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-ask", abort=AskAbort, abort_phase="AskFailed")
def ASK(c: ChoreographyBuilder) -> None:
    asker = c.role("asker")
    panel = c.role_set("panel", size="n")
    c.phase(asker, "Asking")
    c.phase(panel, "Listening")
    c.send(asker, panel, Ask)
    c.phase(asker, "Waiting")
    c.phase(panel, "Thinking")
    c.gather(panel, asker, Answer, threshold=c.threshold("k", of=panel), deadline="timeout")
    c.phase(asker, "Thanking")
    c.phase(panel, "Answered")
    c.send(asker, panel, Thanks)
    c.phase(asker, "Done")
    c.phase(panel, "Done")


class AskParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    question: str
    k: int = 1
    weight: int = 7  # an int param that is no binding


@final
class Asking(Phase): ...
@final
class Waiting(Phase): ...
@final
class Thanking(Phase): ...
@final
class Thinking(Phase): ...
@final
class Answered(Phase): ...
@final
class AskFailed(Phase): ...


@final
class Asker(ChoreographicProtocol[HelloChoreo, S], choreography="kit-ask", role="asker",
            initial=Asking, abort=AskFailed):
    def __init__(self: Asker[Asking], step: Step[AskParams]) -> None:
        self._begin()

    @transition(source=Asking, target=Waiting, action="send", message=Ask, peer="panel")
    def ask(self: Asker[Asking], step: Step[AskParams]) -> tuple[Asker[Waiting], Ask]:
        return self._advance(Asker[Waiting]), Ask(question=step.params.question)

    @transition(source=Waiting, target=Thanking, action="gather", message=Answer, peer="panel")
    def hear(self: Asker[Waiting], answer: Answer, step: Step[AskParams]) -> Asker[Thanking]:
        step.complete(answer=answer.text)  # before the automatic send of Thanks
        return self._advance(Asker[Thanking])

    @transition(source=Waiting, target=AskFailed, action="timeout")
    def give_up(self: Asker[Waiting], step: Step[AskParams]) -> Asker[AskFailed]:
        return self._advance(Asker[AskFailed])

    @transition(source=Thanking, target=Done, action="send", message=Thanks, peer="panel")
    def thank(self: Asker[Thanking], step: Step[AskParams]) -> tuple[Asker[Done], Thanks]:
        return self._advance(Asker[Done]), Thanks()


@final
class Panelist(ChoreographicProtocol[HelloChoreo, S], choreography="kit-ask", role="panel",
               initial=Listening, abort=AskFailed):
    question: str

    def __init__(self: Panelist[Listening], step: Step[NoParams]) -> None:
        self._begin(question="")

    @transition(source=Listening, target=Thinking, action="recv", message=Ask, peer="asker")
    def listen(self: Panelist[Listening], ask: Ask, step: Step[NoParams]) -> Panelist[Thinking]:
        return self._advance(Panelist[Thinking], question=ask.question)

    @transition(source=Thinking, target=Answered, action="send", message=Answer, peer="asker",
                command="answer")
    def answer(self: Panelist[Thinking], args: dict[str, Any], step: Step[NoParams]
               ) -> tuple[Panelist[Answered], Answer]:
        text = args.get("text")
        if not isinstance(text, str):
            raise LocalProtocolError("answer needs 'text': a string")
        return self._advance(Panelist[Answered]), Answer(text=f"{self.question}? {text}")

    @transition(source=Answered, target=Done, action="recv", message=Thanks, peer="asker")
    def thanked(self: Panelist[Answered], thanks: Thanks, step: Step[NoParams]
                ) -> Panelist[Done]:
        return self._advance(Panelist[Done])


@pytest.fixture
def ask_protocol() -> Iterator[Protocol]:
    """Register kit-ask for one test, then leave every registry as it was."""
    with registrations_undone():
        yield protocol(ASK, Asker, Panelist, params=AskParams, responder_params=NoParams,
                       control=True)


def test_send_with_a_command_waits_for_the_operator(ask_protocol: Protocol) -> None:
    from aura_node.protocols.registry import node_registry

    assert node_registry()["kit-ask"] is ASK and REGISTERED["kit-ask"] is ask_protocol
    assert ask_protocol.commands == ("answer",) and ask_protocol.control
    panel = ask_protocol.spec.driver_class("panel")(SERVICES)
    assert panel.params_type is NoParams  # responders get no operator params
    assert panel.start(eng.Start(session=SID, choreography="kit-ask", role="panel",
                                 self_name="a", roles={"a": "panel", "b": "asker"}, params={},
                                 now=1.0, entropy=ENTROPY, opened_by="b")) == []
    env = seal(DeviceKey.from_seed(b"b" * 32), choreography="kit-ask", session=SID,
               message=Ask(question="why"))
    # reaching Thinking does not run the send: it waits for the command
    assert panel.on_message(eng.MessageIn(sender="b", sender_role="asker",
                                          message=Ask(question="why"), envelope=env,
                                          now=2.0)) == []
    assert panel.status()["phase"] == "Thinking"
    # bad arguments: refused in the reply, nothing sent, the value still live
    [refused] = panel.on_control(eng.ControlAction(action="answer", args={}, now=3.0))
    assert refused == eng.Reply(result={"phase": "Thinking",
                                        "error": "answer needs 'text': a string"})
    out = panel.on_control(eng.ControlAction(action="answer", args={"text": "because"},
                                             now=4.0))
    assert out == [eng.Send(to=("b",), message=Answer(text="why? because")),
                   eng.Reply(result={"phase": "Answered"})]


def test_the_end_of_a_session_goes_after_the_sends_of_its_step(ask_protocol: Protocol) -> None:
    asker = ask_protocol.spec.driver_class("asker")(SERVICES)
    out = asker.start(eng.Start(session=SID, choreography="kit-ask", role="asker",
                                self_name="a", roles={"a": "asker", "b": "panel"},
                                params={"question": "why"}, now=1.0, entropy=ENTROPY))
    assert out == [eng.Send(to=("b",), message=Ask(question="why"))]
    env = seal(DeviceKey.from_seed(b"b" * 32), choreography="kit-ask", session=SID,
               message=Answer(text="so"))
    out = asker.on_message(eng.MessageIn(sender="b", sender_role="panel",
                                         message=Answer(text="so"), envelope=env, now=2.0))
    assert out == [eng.Send(to=("b",), message=Thanks()),
                   eng.Complete(result={"answer": "so"})]


def test_default_bindings_take_declared_names_and_the_assignment(ask_protocol: Protocol
                                                                 ) -> None:
    def start(opened_by: str | None, roles: dict[str, str], **params: Any) -> eng.Start:
        return eng.Start(session=SID, choreography="kit-ask", role="asker", self_name="a",
                         roles=roles, params=params, now=0.0, entropy=b"",
                         opened_by=opened_by)

    bindings = ask_protocol.spec.bindings
    roles = {"a": "asker", "b": "panel", "c": "panel", "d": "panel"}
    # weight is an int param but no size or threshold of kit-ask: not a binding
    assert bindings(start(None, roles, question="q", k=2, weight=7), None) == {"k": 2, "n": 3}
    # a responder knows only itself and the opener: no size from its partial assignment
    assert bindings(start("b", {"a": "panel", "b": "asker"}), None) == {}
    assert ASK.project("asker", bindings(start(None, roles, k=3), None)).bindings == {
        "n": 3, "k": 3}


def test_command_is_only_for_local_and_send_transitions() -> None:
    with pytest.raises(TypeError, match="command='x' needs action 'local' or 'send'"):
        transition(source=Asking, target=Waiting, action="recv", message=Ask, command="x")
