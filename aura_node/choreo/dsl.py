"""The choreography DSL: Python calls that build an inspectable AST at import time.

Theory of operation
-------------------
A choreography is one global description of who sends what to whom. It is declared by a
function decorated with :func:`choreography`; the decorator runs the function once with a
:class:`ChoreographyBuilder` and freezes what it recorded into a :class:`Choreography`::

    @choreography("ping", abort=PingAbort)
    def PING(c: ChoreographyBuilder) -> None:
        initiator, responder = c.role("initiator"), c.role("responder")
        c.send(initiator, responder, Ping)
        c.send(responder, initiator, Pong, deadline="ping_timeout")

Every builder call appends one statement to the block being built and records the source
``file:line`` of the call, so well-formedness errors point at the protocol's own line, not at
this module. Nested blocks (choice branches, gather outcomes, loop bodies) are Python ``with``
blocks. A block *falls through* to the statement after the construct that owns it unless it
ends with ``end()``, ``abort()`` or ``again()``.

Vocabulary (the semantics each projection rule implements, see ``projection.py``):

- ``role(name)``: a single participant. ``role_set(name, size="n", minimum=m)``: ``n``
  interchangeable members, ``n`` bound when a session starts, never below ``m``.
  ``threshold(name, of=set, minimum=1)``: a symbolic ``k`` with ``minimum <= k <= |set|``.
- ``send(a, b, M)``: ``a -> b: M``. When ``b`` is a role set it is a broadcast (one logical
  send the runtime fans out, one payload per member). With ``deadline=`` the receiver's wait
  is bounded; the returned handle's ``on_timeout()`` block says what happens (default: the
  receiver aborts).
- ``gather(S, r, M, threshold=k, deadline=d)``: every member of ``S`` sends ``M`` to ``r``;
  ``r`` waits for ``k`` distinct members. ``on_quorum()`` / ``on_timeout()`` blocks (defaults:
  fall through / ``r`` aborts). ``optional=True`` makes sending optional for the members (a
  window: e.g. "any device may veto before the cooldown ends").
- ``all_to_all(S, M, threshold=k, deadline=d)``: each member sends ``M`` to every member
  (itself included, so "k of n" counts its own message) and waits for ``k``; a member that
  times out aborts (no other member could learn any other decision).
- ``choice(d)`` with ``branch(label)`` blocks: ``d`` decides; every other role must either
  be told (its behaviour differs only after distinct receives) or behave the same in every
  branch. A role may learn the branch from the first message of a loop or of the loop's next
  iteration, and a branch may just loop back (``again``) when the loop starts with the
  decider's own message. ``loop(label)`` / ``again(label)``: recursion; every iteration must
  contain an interaction, and a loop that never exits must leave no role waiting for
  something after it. Two message types of one choreography may not share a class name (the
  envelope names a message by it). ``end()``: the protocol is over.
- ``abort(r)``: ``r`` aborts; the choreography's abort message reaches every role. Any role
  may also abort from any non-final state (a daemon must be able to give up a session), so
  every local type accepts the abort message everywhere.
- ``phase(r, "Label")``: from here on, ``r``'s local states carry that phase name.

Optional participants (explicit connections, after Hu & Yoshida's "explicit connection
actions in multiparty session types" and Scribble's ``connect``/``disconnect``):

- ``connect(a, b, M)``: ``a -> b: M``, and the message that brings ``b`` into the session on
  this path. A role that is the receiver of any ``connect`` (or of a ``gather(...,
  connect=True)``: the first of its messages brings the receiving role set in) is *optional*:
  it takes no part before it is connected, so it need not learn any choice made before; a
  path that never connects it leaves it out altogether (its session never starts, nobody
  waits for it, the abort message is not sent to it). On each path an optional role must be
  connected before it sends or receives anything, and connected once.
- ``disconnect(a, b)``: ``a`` releases ``b``: ``b``'s part is over on this path (its session
  completes there), and it may take no further part on it. In a loop, a role's connection
  (unconnected, connected, released) must be the same at ``again`` as at the loop's start.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TypeAlias

from aura_node.choreo.errors import ChoreographyErrors, IllFormedChoreography
from aura_node.choreo.local import LocalType
from aura_node.choreo.projection import to_local_type
from aura_node.choreo.syntax import (
    ALL,
    Abort,
    Again,
    AllToAll,
    Block,
    Branch,
    Choice,
    Declaration,
    Disconnect,
    End,
    Gather,
    Loop,
    Phase,
    Role,
    RoleRef,
    Send,
    Statement,
    Threshold,
    ThresholdExpr,
    caller_where,
    role_name,
)
from aura_node.choreo.wellformed import analyse, used_messages


class Choreography:
    """A frozen, checked-on-demand choreography: the AST plus projections (cached).

    ``check()`` returns every well-formedness error; ``project(role)`` raises
    :class:`~aura_node.choreo.wellformed.ChoreographyErrors` when the choreography is ill formed.
    """

    __slots__ = ("__dict__", "decl")

    def __init__(self, decl: Declaration) -> None:
        self.decl = decl

    def __repr__(self) -> str:
        return f"<Choreography {self.decl.name!r} roles={list(self.roles)}>"

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def version(self) -> int:
        return self.decl.version

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.decl.roles)

    def role(self, name: str) -> Role:
        for r in self.decl.roles:
            if r.name == name:
                return r
        raise KeyError(f"choreography {self.name!r} has no role {name!r} (has: {self.roles})")

    @cached_property
    def messages(self) -> tuple[type, ...]:
        """Every message type of the choreography (abort first, then in order of use)."""
        seen: dict[type, None] = {self.decl.abort_message: None}
        for m in used_messages(self.decl.body):
            seen.setdefault(m, None)
        for m in self.decl.declared_messages:
            seen.setdefault(m, None)
        return tuple(seen)

    @cached_property
    def _analysis(self) -> tuple[tuple[IllFormedChoreography, ...], dict[str, object]]:
        return analyse(self)

    def check(self) -> tuple[IllFormedChoreography, ...]:
        """All well-formedness errors (empty when well formed)."""
        return self._analysis[0]

    def check_or_raise(self) -> None:
        errors = self.check()
        if errors:
            raise ChoreographyErrors(self.name, errors)

    def project(self, role: str, bindings: dict[str, int] | None = None) -> LocalType:
        """The local type (finite state machine) of ``role``.

        ``bindings`` gives the session's role set sizes and thresholds by their declared names
        (e.g. ``{"n": 5, "t": 3}``); unbound names take their declared minimum, i.e. the
        smallest instance of the protocol.
        """
        self.check_or_raise()
        key = (role, tuple(sorted((bindings or {}).items())))
        cache: dict[tuple[str, tuple[tuple[str, int], ...]], LocalType] = self.__dict__.setdefault(
            "_local_cache", {}
        )
        found = cache.get(key)
        if found is None:
            if role not in self.roles:
                raise KeyError(
                    f"choreography {self.name!r} has no role {role!r} (has: {self.roles})"
                )
            found = to_local_type(self, role, dict(bindings or {}), self._analysis[1][role])
            cache[key] = found
        return found


# --- the builder --------------------------------------------------------------------------------


class _Draft(ABC):
    """A statement whose nested blocks may still be filled in; frozen by ``freeze()``."""

    @abstractmethod
    def freeze(self) -> Statement: ...


_Item: TypeAlias = "Statement | _Draft"


def _freeze_block(items: list[_Item]) -> Block:
    return tuple(i.freeze() if isinstance(i, _Draft) else i for i in items)


class TimeoutHandle(_Draft):
    """Returned by ``send(..., deadline=)``: ``with h.on_timeout(): ...`` says what the receiver
    does when the deadline passes (default: it aborts)."""

    def __init__(self, builder: ChoreographyBuilder, stmt: Send) -> None:
        self._builder = builder
        self._stmt = stmt
        self._on_timeout: list[_Item] | None = None

    @contextmanager
    def on_timeout(self) -> Iterator[None]:
        self._on_timeout = []
        with self._builder._into(self._on_timeout):
            yield

    def freeze(self) -> Statement:
        s = self._stmt
        if self._on_timeout is None or s.deadline is None:
            return s
        return Send(
            sender=s.sender,
            receiver=s.receiver,
            message=s.message,
            deadline=s.deadline,
            on_timeout=_freeze_block(self._on_timeout),
            where=s.where,
            connect=s.connect,
        )


class GatherHandle(_Draft):
    """Returned by ``gather``: ``on_quorum()`` (default: fall through) and ``on_timeout()``
    (default: the receiver aborts) blocks."""

    def __init__(self, builder: ChoreographyBuilder, stmt: Gather) -> None:
        self._builder = builder
        self._stmt = stmt
        self._on_quorum: list[_Item] | None = None
        self._on_timeout: list[_Item] | None = None

    @contextmanager
    def on_quorum(self) -> Iterator[None]:
        self._on_quorum = []
        with self._builder._into(self._on_quorum):
            yield

    @contextmanager
    def on_timeout(self) -> Iterator[None]:
        self._on_timeout = []
        with self._builder._into(self._on_timeout):
            yield

    def freeze(self) -> Statement:
        s = self._stmt
        return Gather(
            senders=s.senders,
            receiver=s.receiver,
            message=s.message,
            threshold=s.threshold,
            deadline=s.deadline,
            optional=s.optional,
            on_quorum=s.on_quorum if self._on_quorum is None else _freeze_block(self._on_quorum),
            on_timeout=(
                s.on_timeout if self._on_timeout is None else _freeze_block(self._on_timeout)
            ),
            where=s.where,
            connect=s.connect,
        )


class ChoiceHandle(_Draft):
    """Returned by ``choice(decider)``; add branches with ``with h.branch("label"): ...``."""

    def __init__(self, builder: ChoreographyBuilder, decider: str, where: str) -> None:
        self._builder = builder
        self._decider = decider
        self._where = where
        self._branches: list[tuple[str, list[_Item], str]] = []

    def __enter__(self) -> ChoiceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @contextmanager
    def branch(self, label: str) -> Iterator[None]:
        body: list[_Item] = []
        self._branches.append((label, body, caller_where()))
        with self._builder._into(body):
            yield

    def freeze(self) -> Statement:
        return Choice(
            decider=self._decider,
            branches=tuple(
                Branch(label=label, body=_freeze_block(body), where=where)
                for label, body, where in self._branches
            ),
            where=self._where,
        )


class LoopHandle(_Draft):
    def __init__(self, builder: ChoreographyBuilder, label: str, where: str) -> None:
        self._builder = builder
        self.label = label
        self._where = where
        self._body: list[_Item] = []

    def again(self) -> None:
        """Jump back to the start of this loop."""
        self._builder._append(Again(label=self.label, where=caller_where()))

    def freeze(self) -> Statement:
        return Loop(label=self.label, body=_freeze_block(self._body), where=self._where)


class ChoreographyBuilder:
    """Records the statements of one choreography; see the module docstring for the vocabulary."""

    def __init__(self, name: str, *, abort: type, abort_phase: str, where: str,
                 version: int = 1) -> None:
        self.name = name
        self.version = version
        self._abort = abort
        self._abort_phase = abort_phase
        self._where = where
        self._roles: list[Role] = []
        self._thresholds: list[Threshold] = []
        self._messages: list[type] = []
        self._top: list[_Item] = []
        self._stack: list[list[_Item]] = [self._top]

    # -- declarations

    def role(self, name: str) -> Role:
        r = Role(name=name, where=caller_where())
        self._roles.append(r)
        return r

    def role_set(self, name: str, *, size: str = "n", minimum: int = 1) -> Role:
        r = Role(name=name, size=size, minimum=minimum, where=caller_where())
        self._roles.append(r)
        return r

    def threshold(self, name: str, *, of: RoleRef, minimum: int = 1) -> Threshold:
        t = Threshold(name=name, of=role_name(of), minimum=minimum, where=caller_where())
        self._thresholds.append(t)
        return t

    def messages(self, *types: type) -> None:
        """Declare message types up front (a declared type that is never exchanged is an error)."""
        self._messages.extend(types)

    # -- statements

    def phase(self, role: RoleRef, label: str) -> None:
        self._append(Phase(role=role_name(role), label=label, where=caller_where()))

    def send(
        self, sender: RoleRef, receiver: RoleRef, message: type, *, deadline: str | None = None
    ) -> TimeoutHandle:
        stmt = Send(
            sender=role_name(sender),
            receiver=role_name(receiver),
            message=message,
            deadline=deadline,
            on_timeout=(Abort(role=role_name(receiver), where=caller_where()),),
            where=caller_where(),
        )
        handle = TimeoutHandle(self, stmt)
        self._append(handle)
        return handle

    def gather(
        self,
        senders: RoleRef,
        receiver: RoleRef,
        message: type,
        *,
        threshold: ThresholdExpr,
        deadline: str | None,
        optional: bool = False,
        connect: bool = False,
    ) -> GatherHandle:
        where = caller_where()
        stmt = Gather(
            senders=role_name(senders),
            receiver=role_name(receiver),
            message=message,
            threshold=threshold,
            deadline=deadline,
            optional=optional,
            on_quorum=(),
            on_timeout=(Abort(role=role_name(receiver), where=where),),
            where=where,
            connect=connect,
        )
        handle = GatherHandle(self, stmt)
        self._append(handle)
        return handle

    def connect(self, sender: RoleRef, receiver: RoleRef, message: type) -> None:
        """``sender -> receiver: message``, which brings the optional role ``receiver`` into
        the session on this path (see the module docstring). No deadline: ``receiver`` is not
        waiting for it, it has no session before it."""
        self._append(
            Send(
                sender=role_name(sender),
                receiver=role_name(receiver),
                message=message,
                deadline=None,
                on_timeout=(),
                where=caller_where(),
                connect=True,
            )
        )

    def disconnect(self, by: RoleRef, role: RoleRef) -> None:
        """``by`` releases the optional role ``role``: its part of the session is over here."""
        self._append(Disconnect(by=role_name(by), role=role_name(role), where=caller_where()))

    def all_to_all(
        self,
        group: RoleRef,
        message: type,
        *,
        threshold: ThresholdExpr = ALL,
        deadline: str | None,
    ) -> None:
        self._append(
            AllToAll(
                group=role_name(group),
                message=message,
                threshold=threshold,
                deadline=deadline,
                where=caller_where(),
            )
        )

    def choice(self, decider: RoleRef) -> ChoiceHandle:
        handle = ChoiceHandle(self, role_name(decider), caller_where())
        self._append(handle)
        return handle

    @contextmanager
    def loop(self, label: str) -> Iterator[LoopHandle]:
        handle = LoopHandle(self, label, caller_where())
        self._append(handle)
        with self._into(handle._body):
            yield handle

    def again(self, label: str) -> None:
        self._append(Again(label=label, where=caller_where()))

    def end(self) -> None:
        self._append(End(where=caller_where()))

    def abort(self, role: RoleRef) -> None:
        self._append(Abort(role=role_name(role), where=caller_where()))

    # -- plumbing

    def _append(self, item: _Item) -> None:
        self._stack[-1].append(item)

    @contextmanager
    def _into(self, block: list[_Item]) -> Iterator[None]:
        self._stack.append(block)
        try:
            yield
        finally:
            self._stack.pop()

    def build(self) -> Choreography:
        return Choreography(
            Declaration(
                name=self.name,
                roles=tuple(self._roles),
                thresholds=tuple(self._thresholds),
                declared_messages=tuple(self._messages),
                abort_message=self._abort,
                abort_phase=self._abort_phase,
                body=_freeze_block(self._top),
                where=self._where,
                version=self.version,
            )
        )


def choreography(
    name: str, *, abort: type, abort_phase: str = "Failed", version: int = 1
) -> Callable[[Callable[[ChoreographyBuilder], None]], Choreography]:
    """Decorator: run the declaring function once and return the frozen :class:`Choreography`.

    ``version`` (a positive integer, default 1) numbers the releases of one protocol: a node
    advertises it in its link hello, and a session starts only between peers whose versions
    are the same or proven compatible (``aura_node.choreo.subtyping``)."""
    where = caller_where()
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"choreography {name!r}: version must be a positive integer, "
                         f"got {version!r}")

    def wrap(fn: Callable[[ChoreographyBuilder], None]) -> Choreography:
        builder = ChoreographyBuilder(name, abort=abort, abort_phase=abort_phase, where=where,
                                      version=version)
        fn(builder)
        return builder.build()

    return wrap
