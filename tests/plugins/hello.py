"""A plugin protocol written only with the public kit (``aura_node.kit``), for the plugin
tests: ``greeter -> listener: Hello(text)``, ``listener -> greeter: Reply(text upper-cased)``.

``ctl call hello.send --args '{"peer": "d2", "text": "hi"}'`` starts a session with this
device as the greeter and answers with the listener's reply. It lives outside ``aura_node``
on purpose: the tests load it by path (``--plugin tests/plugins/hello.py``), run it between
real nodes, draw it with ``choreo show`` and type-check it with ``mypy --strict`` from a
directory outside the repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, final

import msgspec

from aura_node.kit import (
    ChoreographicProtocol,
    ChoreographyBuilder,
    Phase,
    Step,
    choreography,
    command,
    protocol,
    transition,
)

S = TypeVar("S")


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class HelloAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


class HelloParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # a default: the listener's session is opened by the Hello and gets no parameters
    text: str = ""


@choreography("hello", abort=HelloAbort)
def HELLO(c: ChoreographyBuilder) -> None:
    greeter, listener = c.role("greeter"), c.role("listener")
    c.phase(greeter, "Greeting")
    c.phase(listener, "Listening")
    c.send(greeter, listener, Hello)
    c.phase(greeter, "AwaitingReply")
    c.phase(listener, "Replying")
    c.send(listener, greeter, Reply)
    c.phase(greeter, "Done")
    c.phase(listener, "Done")


class HelloChoreography:
    """Choreography marker type."""


@final
class Greeting(Phase): ...
@final
class AwaitingReply(Phase): ...
@final
class Listening(Phase): ...
@final
class Replying(Phase): ...
@final
class Done(Phase): ...
@final
class Failed(Phase): ...


@final
class Greeter(ChoreographicProtocol[HelloChoreography, S], choreography="hello",
              role="greeter", initial=Greeting, abort=Failed):
    def __init__(self: Greeter[Greeting], step: Step[HelloParams]) -> None:
        self._begin()

    @transition(source=Greeting, target=AwaitingReply, action="send", message=Hello,
                peer="listener")
    def greet(self: Greeter[Greeting], step: Step[HelloParams]
              ) -> tuple[Greeter[AwaitingReply], Hello]:
        return self._advance(Greeter[AwaitingReply]), Hello(text=step.params.text)

    @transition(source=AwaitingReply, target=Done, action="recv", message=Reply,
                peer="listener")
    def hear(self: Greeter[AwaitingReply], reply: Reply, step: Step[HelloParams]
             ) -> Greeter[Done]:
        step.complete(reply=reply.text, by=step.sender)
        return self._advance(Greeter[Done])


@final
class Listener(ChoreographicProtocol[HelloChoreography, S], choreography="hello",
               role="listener", initial=Listening, abort=Failed):
    heard: str

    def __init__(self: Listener[Listening], step: Step[HelloParams]) -> None:
        self._begin(heard="")

    @transition(source=Listening, target=Replying, action="recv", message=Hello,
                peer="greeter")
    def listen(self: Listener[Listening], hello: Hello, step: Step[HelloParams]
               ) -> Listener[Replying]:
        return self._advance(Listener[Replying], heard=hello.text)

    @transition(source=Replying, target=Done, action="send", message=Reply, peer="greeter")
    def reply(self: Listener[Replying], step: Step[HelloParams]
              ) -> tuple[Listener[Done], Reply]:
        return self._advance(Listener[Done]), Reply(text=self.heard.upper())


def _roles(args: Mapping[str, Any], self_name: str) -> Mapping[str, str]:
    peer = args.get("peer")
    if not isinstance(peer, str) or not peer or peer == self_name:
        raise ValueError(f"peer must name another pinned device, got {peer!r}")
    return {self_name: "greeter", peer: "listener"}


def _params(args: Mapping[str, Any]) -> Mapping[str, Any]:
    return {"text": str(args.get("text", "hello"))}


PROTOCOL = protocol(HELLO, Greeter, Listener, params=HelloParams, commands=[
    command("hello.send", "greet a peer; it answers with the text upper-cased",
            roles=_roles, params=_params)])
