"""Ways to forge a phase: the constructor only yields the initial phase, phases are final,
and a transition can only build the successor its return type names."""

from __future__ import annotations

from typing import TypeVar, final

from aura_node.session.example import Collecting, Decided, Deciding, ToyCoordinator
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition

S = TypeVar("S")

claimed: ToyCoordinator[Deciding] = ToyCoordinator(session_id="s", threshold=1)  # E: Incompatible types in assignment (expression has type "ToyCoordinator[Collecting]", variable has type "ToyCoordinator[Deciding]")

# Explicit type application does not help: the self annotation of __init__ binds S.
forged = ToyCoordinator[Decided](session_id="s", threshold=1)
forged.result()  # E: Invalid self argument "ToyCoordinator[Collecting]" to attribute function "result"


class LaterCollecting(Collecting):  # E: Cannot inherit from final class "Collecting"
    pass


class M:
    pass


@final
class A(Phase):
    pass


@final
class B(Phase):
    pass


@final
class Bad(ChoreographicProtocol[M, S], choreography="m", role="r", initial=A):
    def __init__(self: Bad[A]) -> None:
        self._begin()

    @transition(source=A, target=B, action="local")
    def go(self: Bad[A]) -> Bad[B]:
        return self._advance(Bad[A])  # E: Argument 1 to "_advance" of "ChoreographicProtocol" has incompatible type "type[Bad[A]]"; expected "type[Bad[B]]"
