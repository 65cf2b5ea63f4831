"""The kit roles of the type-test cases are protocol code the runtime really runs.

``cases/kit_positive.py`` and ``cases/kit_wrong_phase.py`` are checked statically by
``test_typestate_types.py`` (mypy) and ``test_typestate_pyright.py``. Here the same classes are
registered with the authoring kit and driven through their generated drivers: the clean one
runs to completion, and the wrong-phase call the checkers reject in ``Counter.count`` is also
refused at run time by the typestate guard (an exception in a transition, which the runtime
turns into an aborted session).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import ConsumedStateError
from aura_node.protocols import engine as eng
from aura_node.protocols.envelope import seal
from aura_node.protocols.kit import protocol
from aura_node.protocols.services import NodeServices
from tests.typing.cases import kit_positive, kit_wrong_phase
from tests.unit.kit_support import registrations_undone

SID = "7a" * 16
KEY = DeviceKey.from_seed(b"v" * 32)
SERVICES = NodeServices(self_name="a", self_role="device", device_key=KEY, peers={})


@pytest.fixture(autouse=True)
def registries() -> Iterator[None]:
    """Registrations made here are undone (see ``registrations_undone``)."""
    with registrations_undone():
        yield


def _start(choreography: str, role: str, params: dict[str, Any]) -> eng.Start:
    return eng.Start(session=SID, choreography=choreography, role=role, self_name="a",
                     roles={"a": role, "b": "panel" if role == "asker" else "voters",
                            "c": "panel" if role == "asker" else "voters"},
                     params=params, now=1.0, entropy=b"e" * 32)


def _from(sender: str, role: str, message: Any, choreography: str) -> eng.MessageIn:
    env = seal(DeviceKey.from_seed(sender.encode() * 32), choreography=choreography,
               session=SID, message=message)
    return eng.MessageIn(sender=sender, sender_role=role, message=message, envelope=env,
                         now=2.0)


def test_the_clean_kit_role_runs_to_its_end() -> None:
    m = kit_positive
    spec = protocol(m.POLL, m.Asker, params=m.PollParams).spec
    d = spec.driver_class("asker")(SERVICES)
    assert d.start(_start("typing-poll", "asker", {"question": "q", "k": 2})) == [
        eng.Send(to=("b", "c"), message=m.Ask(question="q"))]
    assert d.on_message(_from("b", "panel", m.Answer(yes=True), "typing-poll")) == []
    assert d.on_control(eng.ControlAction(action="status", args={}, now=3.0)) == [
        eng.Reply(result={"yes": 1})]
    assert d.on_message(_from("c", "panel", m.Answer(yes=True), "typing-poll")) == [
        eng.Send(to=("b", "c"), message=m.Thanks()), eng.Complete(result={"yes": 2})]


def test_the_wrong_phase_call_the_checkers_reject_is_refused_at_run_time_too() -> None:
    m = kit_wrong_phase
    spec = protocol(m.BALLOT, m.Counter).spec
    d = spec.driver_class("counter")(SERVICES)
    d.start(_start("typing-ballot", "counter", {}))
    assert d.on_message(_from("b", "voters", m.Vote(approve=True), "typing-ballot")) == []
    # the guard refuses the nested call (self is being consumed by ``count``) before any phase
    # check; either way the call does not happen
    with pytest.raises(ConsumedStateError, match="being consumed by transition count"):
        d.on_message(_from("c", "voters", m.Vote(approve=True), "typing-ballot"))
    assert d.status()["phase"] == "Voting"  # nothing happened: the value is still live
