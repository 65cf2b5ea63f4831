"""The abstract syntax of a choreography: frozen AST nodes, nothing that acts on them.

The DSL (``dsl.py``: :class:`~aura_node.choreo.dsl.ChoreographyBuilder` and the
:func:`~aura_node.choreo.dsl.choreography` decorator) builds these nodes and freezes them into
a :class:`Declaration`; projection (``projection.py``), the well-formedness checker
(``wellformed.py``) and the renderers read them. Keeping the nodes here, below all of those,
is what lets each of them import this module and none of them import each other in a circle:
``syntax <- projection <- wellformed <- dsl``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import msgspec

_CHOREO_DIR: Final = os.path.dirname(os.path.abspath(__file__))
_PROJECT_ROOT: Final = os.path.dirname(os.path.dirname(_CHOREO_DIR))
_CONTEXTLIB: Final = os.path.abspath(contextlib.__file__)


def caller_where() -> str:
    """``file:line`` of the first frame outside this package: the protocol's own line.

    ``contextlib``'s frames are skipped too: ``loop()`` and ``branch()`` are context managers,
    so their bodies run under ``contextlib``'s ``__enter__``, not under the protocol's line."""
    frame = sys._getframe(1)
    while frame is not None and (
        os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _CHOREO_DIR
        or os.path.abspath(frame.f_code.co_filename) == _CONTEXTLIB
    ):
        back = frame.f_back
        if back is None:
            break
        frame = back
    path = os.path.abspath(frame.f_code.co_filename)
    if path.startswith(_PROJECT_ROOT + os.sep):
        path = os.path.relpath(path, _PROJECT_ROOT)
    return f"{path}:{frame.f_lineno}"


# --- roles and parameters ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    """A participant (``size is None``) or a role set of ``size`` members (at least ``minimum``)."""

    name: str
    size: str | None = None
    minimum: int = 1
    where: str = field(default="", compare=False)

    @property
    def is_set(self) -> bool:
        return self.size is not None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Threshold:
    """A symbolic threshold ``k`` over role set ``of``: ``minimum <= k <= |of|``."""

    name: str
    of: str
    minimum: int = 1
    where: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class AllMembers:
    """The threshold "every member of the set" (``k = n``)."""

    def __str__(self) -> str:
        return "all"


ALL: Final = AllMembers()

ThresholdExpr: TypeAlias = "int | Threshold | AllMembers"
RoleRef: TypeAlias = "Role | str"


def role_name(ref: RoleRef) -> str:
    return ref if isinstance(ref, str) else ref.name


# --- statements (the AST) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    sender: str
    receiver: str
    message: type
    deadline: str | None
    on_timeout: Block
    where: str
    #: ``connect(sender, receiver, M)``: this message brings ``receiver`` into the session (an
    #: optional role: it takes no part, and is not told of any choice, before it)
    connect: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Gather:
    senders: str
    receiver: str
    message: type
    threshold: ThresholdExpr
    deadline: str | None
    optional: bool
    on_quorum: Block
    on_timeout: Block
    where: str
    #: ``gather(..., connect=True)``: the first of these messages brings ``receiver`` (an
    #: optional role) into the session; its deadline runs from then
    connect: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AllToAll:
    group: str
    message: type
    threshold: ThresholdExpr
    deadline: str | None
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Branch:
    label: str
    body: Block
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    decider: str
    branches: tuple[Branch, ...]
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Loop:
    label: str
    body: Block
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Again:
    label: str
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    role: str
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    role: str
    label: str
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """``disconnect(by, role)``: ``by`` releases the optional role ``role`` on this path. The
    released role's part is over (its session completes here); it may take no further part on
    this path. No message travels: ``role`` already knows where it is, as for any end."""

    by: str
    role: str
    where: str


Statement: TypeAlias = (
    "Send | Gather | AllToAll | Choice | Loop | Again | End | Abort | Phase | Disconnect"
)
Block: TypeAlias = "tuple[Statement, ...]"


# --- the frozen choreography ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Declaration:
    """Everything a choreography declares, frozen. ``Choreography`` adds projection on top."""

    name: str
    roles: tuple[Role, ...]
    thresholds: tuple[Threshold, ...]
    declared_messages: tuple[type, ...]
    abort_message: type
    abort_phase: str
    body: Block
    where: str
    #: the choreography's version (``choreography(name, version=N)``): peers holding different
    #: versions run a session only when the newer one is proven to stand in for the older
    version: int = 1


def is_message_type(t: object) -> bool:
    """A message must be a frozen msgspec Struct class (it becomes evidence: immutable)."""
    return (
        isinstance(t, type) and issubclass(t, msgspec.Struct) and bool(t.__struct_config__.frozen)
    )


def defined_at(t: type) -> str:
    """``file:line`` of the class statement of ``t`` (its module when the source is unknown)."""
    try:
        path = inspect.getsourcefile(t)
        line = inspect.getsourcelines(t)[1]
    except (OSError, TypeError):
        return f"{t.__module__}.{t.__qualname__}"
    if path is None:
        return f"{t.__module__}.{t.__qualname__}"
    path = os.path.abspath(path)
    if path.startswith(_PROJECT_ROOT + os.sep):
        path = os.path.relpath(path, _PROJECT_ROOT)
    return f"{path}:{line}"


def struct_fields(t: type) -> Sequence[tuple[str, object]]:
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        return [(f.name, f.type) for f in msgspec.structs.fields(t)]
    return []
