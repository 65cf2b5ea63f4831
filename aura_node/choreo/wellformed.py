"""Well-formedness: every error of a choreography, each with ``file:line`` and a trace.

Theory of operation
-------------------
``analyse`` runs three passes and collects every error instead of stopping at the first:

1. A syntactic walk of the AST: unknown roles and thresholds, role sets used where a single
   role is needed (and the reverse), messages that are not frozen msgspec Structs, declared
   messages never exchanged, roles that take part in nothing, thresholds outside ``1..|set|``
   for the smallest instance, gathers without a deadline (they can wait forever: a threshold
   exists because some members may never answer), statements after ``end``/``abort``/
   ``again`` (unreachable), ``again`` outside its loop, empty loops and ``again`` reached
   without any interaction (unguarded loops), two message types with one class name (the
   envelope names a message by it, so one of them could not be decoded).
2. Projection onto every role (``projection.Projector``): knowledge of choice (merge), choices
   not initiated by their decider, ambiguous and identical branches, roles stuck forever
   behind a loop that never exits (liveness). Optional participants: a role some ``connect``
   brings in must be connected before it takes part on a path (``not_connected``), is
   connected at most once (``connect_twice``), takes no part after its release
   (``after_release``), and has the same connection at each ``again`` as at its loop's start
   (``connection_in_loop``). A role not connected on a path need not learn the choices of that
   path, and is finished (not stuck) when the path ends or loops forever without it.
3. The state machines at the smallest instance: nondeterministic states, and receive states
   no other role can ever satisfy (a receive whose message no peer ever sends to this role
   would wait forever).

The trace of an error is the sequence of global interactions leading to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aura_node.choreo.errors import (
    BindingError,
    ChoreographyErrors,
    IllFormedChoreography,
)
from aura_node.choreo.local import LocalType
from aura_node.choreo.projection import LNode, Projector, build_machine, involved
from aura_node.choreo.syntax import (
    Abort,
    Again,
    AllMembers,
    AllToAll,
    Block,
    Choice,
    Declaration,
    Disconnect,
    End,
    Gather,
    Loop,
    Phase,
    Role,
    Send,
    Threshold,
    ThresholdExpr,
    defined_at,
    is_message_type,
)

if TYPE_CHECKING:  # the argument's type only: dsl sits above this module
    from aura_node.choreo.dsl import Choreography

__all__ = ["ChoreographyErrors", "IllFormedChoreography", "analyse", "used_messages"]


def used_messages(block: Block) -> Iterator[type]:
    for s in block:
        if isinstance(s, Send | Gather | AllToAll):
            yield s.message
        if isinstance(s, Send):
            yield from used_messages(s.on_timeout)
        elif isinstance(s, Gather):
            yield from used_messages(s.on_quorum)
            yield from used_messages(s.on_timeout)
        elif isinstance(s, Choice):
            for br in s.branches:
                yield from used_messages(br.body)
        elif isinstance(s, Loop):
            yield from used_messages(s.body)


def _members(n: int) -> str:
    return f"{n} member" if n == 1 else f"{n} members"


def _message_uses(block: Block) -> Iterator[tuple[type, str]]:
    for s in block:
        if isinstance(s, Send | Gather | AllToAll):
            yield s.message, s.where
        if isinstance(s, Send):
            yield from _message_uses(s.on_timeout)
        elif isinstance(s, Gather):
            yield from _message_uses(s.on_quorum)
            yield from _message_uses(s.on_timeout)
        elif isinstance(s, Choice):
            for br in s.branches:
                yield from _message_uses(br.body)
        elif isinstance(s, Loop):
            yield from _message_uses(s.body)


def unguarded(block: Block, label: str) -> tuple[list[Again], bool]:
    """The ``again(label)`` statements reachable from the start of ``block`` without any
    interaction on the way, and whether ``block`` can fall through without one."""
    found: list[Again] = []
    for s in block:
        if isinstance(s, Send | Gather | AllToAll):
            return found, False  # every path from here on is guarded by this interaction
        if isinstance(s, Again):
            if s.label == label:
                found.append(s)
            return found, False
        if isinstance(s, End | Abort):
            return found, False
        if isinstance(s, Choice):
            through = False
            for br in s.branches:
                f, t = unguarded(br.body, label)
                found += f
                through |= t
            if not through:
                return found, False
        elif isinstance(s, Loop):
            f, t = unguarded(s.body, label)
            found += f
            if not t:
                return found, False
    return found, True


class _Syntax:
    def __init__(self, decl: Declaration) -> None:
        self.decl = decl
        self.errors: list[IllFormedChoreography] = []
        self.roles: dict[str, Role] = {}
        self.thresholds: dict[str, Threshold] = {}

    def err(
        self, kind: str, where: str, what: str, trace: tuple[str, ...] = ("at declaration",)
    ) -> None:
        self.errors.append(
            IllFormedChoreography(
                choreography=self.decl.name,
                kind=kind,
                where=where,
                what=what,
                trace=trace or ("start of the protocol",),
            )
        )

    def run(self) -> None:
        d = self.decl
        for r in d.roles:
            if r.name in self.roles:
                self.err("bad_role_use", r.where, f"role {r.name!r} declared twice")
            if r.is_set and r.minimum < 0:
                self.err("threshold_bounds", r.where, f"role set {r.name!r} has minimum < 0")
            self.roles[r.name] = r
        for t in d.thresholds:
            if t.name in self.thresholds:
                self.err("bad_role_use", t.where, f"threshold {t.name!r} declared twice")
            self.thresholds[t.name] = t
            of = self.roles.get(t.of)
            if of is None or not of.is_set:
                self.err(
                    "unknown_role",
                    t.where,
                    f"threshold {t.name!r} is over {t.of!r}, which is not a declared role set",
                )
            elif t.minimum < 1:
                self.err(
                    "threshold_bounds",
                    t.where,
                    f"threshold {t.name!r} may be {t.minimum}: a gather of no message "
                    "(its minimum must be at least 1)",
                )
            elif t.minimum > of.minimum:
                self.err(
                    "threshold_bounds",
                    t.where,
                    f"threshold {t.name!r} (at least {t.minimum}) may be larger than role set "
                    f"{of.name!r}, which may have as few as {_members(of.minimum)}",
                )
        if not is_message_type(d.abort_message):
            self.err(
                "bad_message",
                d.where,
                f"abort message {d.abort_message!r} is not a frozen msgspec Struct",
            )
        for m in d.declared_messages:
            if not is_message_type(m):
                self.err("bad_message", d.where, f"message {m!r} is not a frozen msgspec Struct")
        self.block(d.body, (), [])
        self.message_names()
        used = set(used_messages(d.body))
        for m in d.declared_messages:
            if m not in used and m is not d.abort_message:
                self.err(
                    "unused_message",
                    d.where,
                    f"message {getattr(m, '__name__', m)} is declared but never sent or received",
                )
        active = involved(d.body)
        for r in d.roles:
            if r.name not in active:
                self.err("unused_role", r.where, f"role {r.name!r} takes part in no interaction")

    def message_names(self) -> None:
        """The envelope names a message by its class name, so two message types with one name
        in one choreography could not both be decoded: refuse them, naming both definitions."""
        d = self.decl
        by_name: dict[str, type] = {}
        first_use: dict[type, str] = {}
        for t, where in _message_uses(d.body):
            first_use.setdefault(t, where)
        for t in (d.abort_message, *used_messages(d.body), *d.declared_messages):
            if not is_message_type(t):
                continue
            other = by_name.setdefault(t.__name__, t)
            if other is t:
                continue
            self.err(
                "duplicate_message_name",
                first_use.get(t, d.where),
                f"two message types named {t.__name__}: one defined at {defined_at(other)}, "
                f"the other at {defined_at(t)}; a message travels under its class name, so "
                "one of them could not be decoded (rename one)",
                (f"choreography {d.name!r} declared at {d.where}",),
            )

    def role(
        self, name: str, where: str, trace: tuple[str, ...], *, want: str | None
    ) -> Role | None:
        r = self.roles.get(name)
        if r is None:
            self.err(
                "unknown_role",
                where,
                f"unknown role {name!r} (declared: {', '.join(self.roles) or 'none'})",
                trace,
            )
            return None
        if want == "single" and r.is_set:
            self.err(
                "bad_role_use",
                where,
                f"{name!r} is a role set; only a single role can do this "
                "(use gather or all_to_all for a role set)",
                trace,
            )
        if want == "set" and not r.is_set:
            self.err(
                "bad_role_use", where, f"{name!r} is a single role; a role set is needed", trace
            )
        return r

    def message(self, m: type, where: str, trace: tuple[str, ...]) -> None:
        if not is_message_type(m):
            self.err("bad_message", where, f"message {m!r} is not a frozen msgspec Struct", trace)
        elif m is self.decl.abort_message:
            self.err(
                "bad_message",
                where,
                f"{m.__name__} is the abort message; abort() sends it, not send()",
                trace,
            )

    def threshold(
        self,
        k: ThresholdExpr,
        group: Role | None,
        where: str,
        trace: tuple[str, ...],
        *,
        optional: bool,
    ) -> None:
        if group is None or not group.is_set:
            return
        if isinstance(k, AllMembers):
            return  # k = n: always within the set (a gather over an empty set completes at once)
        if isinstance(k, Threshold):
            declared = self.thresholds.get(k.name)
            if declared is None:
                self.err("unknown_role", where, f"threshold {k.name!r} is not declared", trace)
            elif declared.of != group.name:
                self.err(
                    "threshold_bounds",
                    where,
                    f"threshold {k.name!r} is declared over {declared.of!r} but used over "
                    f"{group.name!r}, so it may be larger than that role set",
                    trace,
                )
            return
        if not isinstance(k, int) or k < 1:
            self.err("threshold_bounds", where, f"threshold {k!r} is not an integer >= 1", trace)
        elif k > group.minimum and not optional:
            self.err(
                "threshold_bounds",
                where,
                f"threshold {k} is larger than role set {group.name!r}, which may have as "
                f"few as {_members(group.minimum)}",
                trace,
            )

    def block(self, block: Block, trace: tuple[str, ...], loops: list[str]) -> bool:
        """Check ``block``; returns True when it cannot fall through (ends or loops back)."""
        terminated: str | None = None
        for s in block:
            if terminated is not None:
                self.err(
                    "unreachable", s.where, f"statement after {terminated} can never run", trace
                )
                return True
            if isinstance(s, Phase):
                self.role(s.role, s.where, trace, want=None)
                if not s.label:
                    self.err("phase_conflict", s.where, "empty phase label", trace)
            elif isinstance(s, Send):
                trace = (
                    *trace,
                    f"{s.sender} -> {s.receiver}: {getattr(s.message, '__name__', s.message)}",
                )
                self.role(s.sender, s.where, trace, want="single")
                self.role(s.receiver, s.where, trace, want=None)
                if s.sender == s.receiver:
                    self.err("bad_role_use", s.where, f"{s.sender!r} sends to itself", trace)
                self.message(s.message, s.where, trace)
                if s.deadline is not None:
                    self.block(s.on_timeout, (*trace, f"{s.receiver} times out"), loops)
            elif isinstance(s, Gather):
                trace = (
                    *trace,
                    f"{s.senders} -> {s.receiver}: "
                    f"{getattr(s.message, '__name__', s.message)} [gather {s.threshold}]",
                )
                group = self.role(s.senders, s.where, trace, want="set")
                self.role(s.receiver, s.where, trace, want=None)
                if s.senders == s.receiver:
                    self.err(
                        "bad_role_use",
                        s.where,
                        f"{s.senders!r} gathers from itself; use all_to_all",
                        trace,
                    )
                self.message(s.message, s.where, trace)
                self.threshold(s.threshold, group, s.where, trace, optional=s.optional)
                if s.deadline is None and not (s.connect and s.threshold == 1):
                    # (a connecting gather of 1 needs none: its first message starts the
                    # receiver's session and is its quorum)
                    self.err(
                        "wait_forever",
                        s.where,
                        f"{s.receiver!r} gathers {s.message.__name__} from {s.senders!r} "
                        "without a deadline: members that never answer make it wait forever",
                        trace,
                    )
                q = self.block(s.on_quorum, (*trace, "quorum"), loops)
                t = self.block(s.on_timeout, (*trace, f"{s.receiver} times out"), loops)
                if q and t:
                    terminated = "a gather whose outcomes both end"
            elif isinstance(s, AllToAll):
                trace = (
                    *trace,
                    f"{s.group} -> {s.group}: "
                    f"{getattr(s.message, '__name__', s.message)} [all-to-all]",
                )
                group = self.role(s.group, s.where, trace, want="set")
                self.message(s.message, s.where, trace)
                self.threshold(s.threshold, group, s.where, trace, optional=False)
                if s.deadline is None:
                    self.err(
                        "wait_forever",
                        s.where,
                        f"all-to-all round of {s.message.__name__} in {s.group!r} without a "
                        "deadline: members that never answer make the others wait forever",
                        trace,
                    )
            elif isinstance(s, Choice):
                self.role(s.decider, s.where, trace, want="single")
                labels = [br.label for br in s.branches]
                if len(labels) < 2:
                    self.err(
                        "bad_choice",
                        s.where,
                        f"choice by {s.decider!r} has {len(labels)} "
                        + ("branch" if len(labels) == 1 else "branches")
                        + "; a choice needs at least 2",
                        trace,
                    )
                if len(set(labels)) != len(labels):
                    self.err("bad_choice", s.where, f"duplicate branch labels {labels}", trace)
                ends = [
                    self.block(br.body, (*trace, f"{s.decider} chooses {br.label!r}"), loops)
                    for br in s.branches
                ]
                if ends and all(ends):
                    terminated = "a choice whose branches all end"
            elif isinstance(s, Loop):
                if s.label in loops:
                    self.err("bad_loop", s.where, f"loop {s.label!r} nested in itself", trace)
                if not involved(s.body):
                    self.err(
                        "empty_loop",
                        s.where,
                        f"loop {s.label!r} is empty (and so unguarded): it contains no "
                        "interaction, so it would spin forever without a message and no role "
                        "takes part in it",
                        (*trace, f"loop {s.label!r}"),
                    )
                else:
                    for again in unguarded(s.body, s.label)[0]:
                        self.err(
                            "unguarded_loop",
                            again.where,
                            f"again({s.label!r}) is reached from the start of loop {s.label!r} "
                            "without any interaction: an unguarded loop that would spin "
                            "forever without a message",
                            (*trace, f"loop {s.label!r}", f"again({s.label!r})"),
                        )
                body_ends = self.block(s.body, (*trace, f"loop {s.label!r}"), [*loops, s.label])
                if body_ends:
                    terminated = f"loop {s.label!r}, which never exits"
            elif isinstance(s, Again):
                if s.label not in loops:
                    self.err(
                        "bad_loop",
                        s.where,
                        f"again({s.label!r}) is not inside loop {s.label!r}",
                        trace,
                    )
                terminated = f"again({s.label!r})"
            elif isinstance(s, End):
                terminated = "end()"
            elif isinstance(s, Abort):
                self.role(s.role, s.where, trace, want=None)
                terminated = f"abort({s.role})"
            elif isinstance(s, Disconnect):
                trace = (*trace, f"{s.by} releases {s.role}")
                self.role(s.by, s.where, trace, want=None)
                self.role(s.role, s.where, trace, want=None)
                if s.by == s.role:
                    self.err(
                        "bad_role_use",
                        s.where,
                        f"{s.role!r} releases itself; another role releases it",
                        trace,
                    )
        return terminated is not None


def _dedupe(errors: list[IllFormedChoreography]) -> tuple[IllFormedChoreography, ...]:
    """One error per message; a choice its decider does not announce is the cause of every
    other role's failure to learn it, so those follow-on errors are dropped."""
    not_initiated = {e.where for e in errors if e.kind == "choice_not_initiated"}
    seen: dict[str, IllFormedChoreography] = {}
    for e in errors:
        if e.kind == "knowledge_of_choice" and e.where in not_initiated:
            continue
        seen.setdefault(e.message, e)
    return tuple(seen.values())


def analyse(chor: Choreography) -> tuple[tuple[IllFormedChoreography, ...], dict[str, object]]:
    """All errors of ``chor`` and the local tree of every role (used by ``project``)."""
    decl = chor.decl
    syn = _Syntax(decl)
    syn.run()
    errors = list(syn.errors)
    trees: dict[str, LNode] = {}
    for r in decl.roles:
        trees[r.name] = Projector(decl, r.name, errors).run()
    if errors:
        return _dedupe(errors), dict(trees)
    machines: dict[str, LocalType] = {}
    for r in decl.roles:
        try:
            machines[r.name] = build_machine(chor, r.name, trees[r.name], {}, errors)
        except BindingError as exc:
            errors.append(
                IllFormedChoreography(
                    choreography=decl.name,
                    kind="threshold_bounds",
                    where=decl.where,
                    what=exc.message,
                    trace=(f"smallest instance, projecting onto {r.name!r}",),
                )
            )
    if not errors:
        errors.extend(_no_sender(chor, machines))
    return _dedupe(errors), dict(trees)


def local_path(lt: LocalType, state: str) -> tuple[str, ...]:
    """The shortest run of ``lt`` from its initial state to ``state`` (explicit steps), as a
    trace of the role's own actions."""
    back: dict[str, tuple[str, str] | None] = {lt.initial: None}
    todo = [lt.initial]
    for s in todo:
        if s == state:
            break
        for t in lt.explicit(s):
            if t.target not in back:
                back[t.target] = (s, f"{lt.role}: {t.describe()}")
                todo.append(t.target)
    steps: list[str] = []
    at: str | None = state
    while at is not None and back.get(at) is not None:
        prev = back[at]
        assert prev is not None
        steps.append(prev[1])
        at = prev[0]
    return (f"{lt.role} starts", *reversed(steps))


def _no_sender(chor: Choreography, machines: dict[str, LocalType]) -> list[IllFormedChoreography]:
    """A receive whose message no peer ever sends to this role waits forever."""
    sends: set[tuple[str, str, type]] = set()
    for role, lt in machines.items():
        for t in lt.transitions:
            if t.action == "send" and t.message is not None:
                sends.add((role, t.peer, t.message))
    out = []
    for role, lt in machines.items():
        for t in lt.transitions:
            if t.implicit or t.action not in ("recv", "gather") or t.message is None:
                continue
            if (t.peer, role, t.message) not in sends:
                out.append(
                    IllFormedChoreography(
                        choreography=chor.name,
                        kind="wait_forever",
                        where=t.where or chor.decl.where,
                        what=f"role {role!r} waits in state {t.source!r} for {t.message.__name__} "
                        f"from {t.peer!r}, which never sends it to {role!r}",
                        trace=local_path(lt, t.source),
                    )
                )
    return out
