"""The authoring kit: dispatch from declarations, abort edges, replay rehydration, registration.

Exercised through the shipped ping protocol (``aura_node.protocols.ping.roles``), which is
written only with the kit, and through small role classes that break the rules on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, final

import msgspec
import pytest

from aura_node.choreo import ChoreographyBuilder, choreography
from aura_node.crypto.keys import DeviceKey
from aura_node.errors import LocalProtocolError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import encode_envelope, seal
from aura_node.protocols.kit import (
    REGISTERED,
    NondeterminismError,
    NoParams,
    Protocol,
    Step,
    final_phases,
    protocol,
)
from aura_node.protocols.ping.choreography import Ping, Pong
from aura_node.protocols.ping.roles import (
    SPEC,
    AwaitingPong,
    Completed,
    Failed,
    PingInitiator,
    PingResponder,
)
from aura_node.protocols.registry import REGISTRY
from aura_node.protocols.services import NodeServices
from aura_node.session.conformance import ConformanceError
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

SID = "ab" * 16
KEY_A = DeviceKey.from_seed(b"a" * 32)
SERVICES = NodeServices(self_name="a", self_role="device", device_key=KEY_A, peers={})
INITIATOR = SPEC.driver_class("initiator")
RESPONDER = SPEC.driver_class("responder")
ENTROPY = bytes(range(32))


def _start(role: str, **kw: Any) -> eng.Start:
    return eng.Start(session=SID, choreography="ping", role=role,
                     self_name="a" if role == "initiator" else "b",
                     roles={"a": "initiator", "b": "responder"},
                     params={"timeout": 5.0}, now=100.0, entropy=ENTROPY, **kw)


def _pong(nonce: bytes, now: float = 100.25) -> eng.MessageIn:
    env = seal(DeviceKey.from_seed(b"b" * 32), choreography="ping", session=SID,
               message=Pong(nonce=nonce))
    return eng.MessageIn(sender="b", sender_role="responder", message=Pong(nonce=nonce),
                         envelope=env, now=now)


def _nonce() -> bytes:
    d = INITIATOR(SERVICES)
    sends = [e for e in d.start(_start("initiator")) if isinstance(e, eng.Send)]
    assert len(sends) == 1 and isinstance(sends[0].message, Ping)
    return sends[0].message.nonce


def test_registration_builds_the_spec_from_the_declarations() -> None:
    assert eng.PROTOCOLS["ping"] is SPEC
    assert set(SPEC.message_types.values()) == set(REGISTRY["ping"].messages)
    assert SPEC.openers == {"Ping": eng.Opener(sender_role="initiator", role="responder")}
    assert SPEC.initiator_role == "initiator"
    assert final_phases(PingInitiator) == {Completed, Failed}


def test_params_are_validated_by_their_struct() -> None:
    assert SPEC.validate_params({}) == {"timeout": 10.0}
    assert SPEC.validate_params({"timeout": 3}) == {"timeout": 3.0}
    for bad, why in (({"timeout": 0}, "positive"), ({"timeout": True}, "bool"),
                     ({"nonce": 1}, "unknown field")):
        with pytest.raises(eng.ParamsError, match=why):
            SPEC.validate_params(bad)


def test_dispatch_send_on_start_then_pong_completes() -> None:
    d = INITIATOR(SERVICES)
    effects = d.start(_start("initiator"))
    nonce = _nonce()
    assert effects == [eng.Send(to=("b",), message=Ping(nonce=nonce)),
                       eng.ArmTimer(name="deadline", deadline=105.0)]
    assert nonce != ENTROPY[:16] and len(nonce) == 16  # derived, domain separated
    assert d.status() == {"phase": "AwaitingPong"}
    out = d.on_message(_pong(nonce))
    assert out == [eng.CancelTimer(name="deadline"),
                   eng.Complete(result={"peer": "b", "rtt_ms": 250.0})]
    assert d.is_final and d.status()["phase"] == "Completed"


def test_a_remote_error_rejects_the_message_and_keeps_the_session() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    out = d.on_message(_pong(b"x" * 16))
    assert len(out) == 1 and isinstance(out[0], eng.RecordEvidence)
    assert out[0].kind == "ping.rejected"
    body = eng.decode_rejection(out[0].body)
    assert body is not None and body.peer == "b" and "echoes nonce" in body.reason
    assert d.status()["phase"] == "AwaitingPong"  # still waiting for the right Pong
    assert d.on_message(_pong(_nonce()))[-1] == eng.Complete(
        result={"peer": "b", "rtt_ms": 250.0})


def test_declared_timeout_and_stale_timer() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    assert d.on_timer(eng.TimerFired(name="deadline", now=107.0)) == [
        eng.Fail(code="timeout", reason="no Pong from b within 5 s")]
    assert d.is_final and d.status()["phase"] == "Failed"
    assert d.on_timer(eng.TimerFired(name="deadline", now=108.0)) == []


def test_undeclared_timer_fails_the_session_and_wrong_message_is_refused() -> None:
    r = RESPONDER(SERVICES)
    assert r.start(_start("responder", opened_by="a")) == []
    out = r.on_timer(eng.TimerFired(name="other", now=101.0))
    assert len(out) == 1 and isinstance(out[0], eng.Fail) and out[0].code == "timeout"
    with pytest.raises(Exception, match="can't handle Pong from b .* phase=AwaitingPing"):
        r.on_message(_pong(b"n" * 16))


def test_abort_edges_from_the_class_keyword() -> None:
    i = INITIATOR(SERVICES)
    i.start(_start("initiator"))
    i.on_abort("bye", by_peer="b")
    assert i.status()["phase"] == "Failed" and i.is_final
    i.on_abort("again", by_peer=None)  # final: nothing to do, never raises
    r = RESPONDER(SERVICES)
    r.start(_start("responder", opened_by="a"))
    r.on_abort("deadline", by_peer=None)
    assert r.status()["phase"] == "Failed"


def test_unknown_control_action_is_refused_and_names_what_exists() -> None:
    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    # an operator's slip is answered, never an abort of the session
    [reply] = d.on_control(eng.ControlAction(action="approve", args={}, now=101.0))
    assert isinstance(reply, eng.Reply) and reply.result["phase"] == "AwaitingPong"
    assert "no control action 'approve' in phase AwaitingPong (its actions: none)" in (
        reply.result["error"])
    assert d.status()["phase"] == "AwaitingPong" and not d.is_final


# --- replay rehydration -------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    seq: int
    ts: float
    session: str
    kind: str
    body: bytes


def _records(*items: tuple[str, msgspec.Struct]) -> list[Rec]:
    return [Rec(seq=i, ts=100.0, session=SID, kind=k, body=eng.encode_body(b))
            for i, (k, b) in enumerate(items)]


def _start_body(role: str, **kw: Any) -> eng.StartBody:
    s = _start(role, **kw)
    return eng.StartBody(choreography="ping", role=role, self_name=s.self_name,
                         roles=dict(s.roles), params=dict(s.params), now=s.now,
                         entropy=s.entropy, opened_by=s.opened_by)


def _out(message: msgspec.Struct, to: str = "b") -> eng.OutBody:
    env = seal(KEY_A, choreography="ping", session=SID, message=message)
    return eng.OutBody(to=[to], envelope=encode_envelope(env))


def test_replay_reaches_the_journaled_phase() -> None:
    recs = _records((eng.KIND_START, _start_body("initiator")),
                    (eng.KIND_OUT, _out(Ping(nonce=_nonce()))))
    d = INITIATOR.rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "AwaitingPong"
    assert d.resume(101.0) == []  # the Ping is journaled: the runtime re-sends it, not us
    assert d.value is not None
    assert d.on_message(_pong(_nonce()))[-1] == eng.Complete(
        result={"peer": "b", "rtt_ms": 250.0})


def test_replay_resumes_sends_that_were_never_durable() -> None:
    d = INITIATOR.rehydrate(_records((eng.KIND_START, _start_body("initiator"))), SERVICES)
    assert d is not None and d.status()["phase"] == "AwaitingPong"
    assert d.resume(101.0) == [eng.Send(to=("b",), message=Ping(nonce=_nonce())),
                               eng.ArmTimer(name="deadline", deadline=105.0)]


def test_replay_that_disagrees_with_the_journal_is_nondeterminism() -> None:
    recs = _records((eng.KIND_START, _start_body("initiator")),
                    (eng.KIND_OUT, _out(Ping(nonce=b"z" * 16))))
    with pytest.raises(NondeterminismError, match=rf"session {SID}: replaying input record 0 "
                                                  r"sends Ping .*msg.out record 1"):
        INITIATOR.rehydrate(recs, SERVICES)
    extra = _records((eng.KIND_START, _start_body("initiator")),
                     (eng.KIND_OUT, _out(Ping(nonce=_nonce()))),
                     (eng.KIND_OUT, _out(Ping(nonce=_nonce()))))
    with pytest.raises(NondeterminismError, match="does not send"):
        INITIATOR.rehydrate(extra, SERVICES)
    assert NondeterminismError.code == "nondeterminism"


def test_replay_of_a_responder_with_a_ping_in_and_no_pong_out() -> None:
    ping = seal(KEY_A, choreography="ping", session=SID, message=Ping(nonce=b"n" * 16))
    recs = _records((eng.KIND_START, _start_body("responder", opened_by="a")),
                    (eng.KIND_IN, eng.InBody(sender="a", sender_role="initiator",
                                             envelope=encode_envelope(ping), now=100.0)))
    d = RESPONDER.rehydrate(recs, SERVICES)
    assert d is not None and d.status()["phase"] == "Completed"
    assert d.resume(101.0) == [eng.Send(to=("a",), message=Pong(nonce=b"n" * 16)),
                               eng.Complete(result={})]


# --- registration refuses what does not match the projection --------------------------------

S = TypeVar("S")


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Bye(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class HelloAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("kit-hello", abort=HelloAbort)
def HELLO(c: ChoreographyBuilder) -> None:
    a = c.role("a")
    b = c.role("b")
    c.phase(a, "Greeting")
    c.phase(b, "Listening")
    c.send(a, b, Hello)
    c.phase(a, "Done")
    c.phase(b, "Done")


@final
class Greeting(Phase): ...
@final
class Listening(Phase): ...
@final
class Done(Phase): ...
@final
class Failed2(Phase): ...


class HelloChoreo:
    pass


@final
class WrongSender(ChoreographicProtocol[HelloChoreo, S], choreography="kit-hello", role="a",
                  initial=Greeting, abort=Failed2):
    def __init__(self: WrongSender[Greeting], step: Step[Any]) -> None:
        self._begin()

    @transition(source=Greeting, target=Done, action="send", message=Bye, peer="b")
    def greet(self: WrongSender[Greeting], step: Step[Any]) -> tuple[WrongSender[Done], Bye]:
        return self._advance(WrongSender[Done]), Bye(text="hi")


def test_registration_refuses_a_role_that_does_not_conform() -> None:
    with pytest.raises(eng.DriverError, match="abort=Failed"):
        protocol(HELLO, WrongSender)
    assert "kit-hello" not in eng.PROTOCOLS


def test_conformance_names_the_first_difference() -> None:
    from aura_node.session.conformance import check_conformance

    with pytest.raises(ConformanceError, match="Bye"):
        check_conformance(WrongSender, HELLO.project("a"))


def test_typestate_values_stay_linear_under_the_kit() -> None:
    from aura_node.errors import ConsumedStateError

    d = INITIATOR(SERVICES)
    d.start(_start("initiator"))
    old = d.value
    assert isinstance(old, PingInitiator)
    d.on_abort("x", by_peer=None)
    with pytest.raises(ConsumedStateError, match="abort edge to Failed"):
        _ = old.nonce
    assert AwaitingPong is not Failed and PingResponder.abort_phase is Failed


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
    """Register kit-ask for one test, then leave every registry as it was (the process's
    registry hash must stay the shipped one for the tests that compare it with a node's)."""
    from aura_node.runtime import monitors

    saved = (dict(eng.PROTOCOLS), dict(REGISTERED), dict(monitors._EXTRA))
    try:
        yield protocol(ASK, Asker, Panelist, params=AskParams, responder_params=NoParams,
                       control=True)
    finally:
        for registry, before in zip((eng.PROTOCOLS, REGISTERED, monitors._EXTRA), saved,
                                    strict=True):
            registry.clear()
            registry.update(before)  # type: ignore[arg-type]
        monitors._project.cache_clear()
        monitors._template.cache_clear()


def test_send_with_a_command_waits_for_the_operator(ask_protocol: Protocol) -> None:
    from aura_node.runtime.monitors import node_registry

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
    with pytest.raises(TypeError, match="command='x' needs action='local' or 'send'"):
        transition(source=Asking, target=Waiting, action="recv", message=Ask, command="x")
