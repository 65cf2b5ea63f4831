"""Projection: from the global choreography to one local type (state machine) per role.

Theory of operation
-------------------
Projection runs in two steps.

1. ``Projector`` walks the global AST for one role and builds a *local tree*: ``LSend``,
   ``LIn`` (a receive state: plain receives, gathers, an optional timeout), ``LChoose``
   (an internal choice of this role), ``LEnd``, ``LAbort`` (this role must abort),
   ``LWaitAbort`` (nothing left to do but wait for somebody's abort), ``LRec``/``LVar``.
   Blocks are projected in continuation-passing style, so a branch that falls through is
   followed by the projection of what comes after its construct, with the phase labels in
   force at the end of that branch.

   Knowledge of choice is checked by *merging* (Honda-Yoshida-Carbone projection with full
   merge): a role that does not make a decision (a ``choice``, the quorum/timeout outcome of a
   gather, a receiver's timeout) has one local tree per outcome; they merge when they are
   equal, or when both are receive states (the role learns the outcome from which message
   arrives; same message, same continuation). ``LWaitAbort`` is the unit of merge: an outcome
   in which somebody aborts needs no announcement, because the abort message is accepted in
   every state. A failed merge is a ``knowledge_of_choice`` error naming what the role does in
   both outcomes before they differ and how they differ. Merge sees through loops
   (:class:`Merger`): a role may learn the outcome from the first message of a loop, or from
   the next iteration's first message, and a branch that only loops back is fine when the
   loop's restart tells the other roles (the decider's branch then starts with what its loop
   body starts with).

   Liveness: a role that takes no part in a loop that never exits has nothing left to do
   (``LDiverge``, an end for the state machine), but if in another outcome it still has
   something to do, it would wait for that forever: a ``stuck_role`` error with the trace
   into the loop.

2. ``to_local_type`` turns the tree into a finite state machine for concrete session
   parameters: symbolic thresholds are bound, a timeout whose branch is "abort" goes straight
   to the abort state, the implicit abort edges are added to every non-final state, the
   machine is minimised (Moore partition refinement, so a continuation duplicated by
   continuation-passing becomes one state again) and states are named after their phase.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

from aura_node.choreo.errors import BindingError, IllFormedChoreography
from aura_node.choreo.local import Action, LocalTransition, LocalType
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
    Statement,
    Threshold,
    ThresholdExpr,
)

if TYPE_CHECKING:  # the argument's type only: dsl sits above this module
    from aura_node.choreo.dsl import Choreography

# --- local trees ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LEnd:
    phase: str | None
    #: the role's part ends because it was released (``disconnect``), not at the protocol's end;
    #: either way it has nothing left to do, so the two merge
    released: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class LUnconnected:
    """An optional role on a path that never connects it: it never joins, so it needs to learn
    nothing there. The unit of merge, like ``LWaitAbort``: any other outcome wins."""

    phase: str | None = None


@dataclass(frozen=True, slots=True)
class LWaitAbort:
    phase: str | None


@dataclass(frozen=True, slots=True)
class LDiverge:
    """The rest of the protocol is a loop that never exits and never involves this role: it has
    nothing left to do, but nothing after the loop ever happens either."""

    phase: str | None
    loop: str = field(default="", compare=False)
    where: str = field(default="", compare=False)
    trace: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class LAbort:
    phase: str | None


@dataclass(frozen=True, slots=True)
class LSend:
    peer: str
    message: type
    cont: LNode
    phase: str | None
    where: str = field(default="", compare=False)
    connect: bool = field(default=False, compare=False)  # this send brings ``peer`` in


@dataclass(frozen=True, slots=True)
class LBranch:
    peer: str
    message: type
    threshold: ThresholdExpr | None  # None: a plain receive
    cont: LNode
    where: str = field(default="", compare=False)
    connect: bool = False  # this receive brings this (optional) role into the session


@dataclass(frozen=True, slots=True)
class LTimeout:
    deadline: str
    cont: LNode
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class LIn:
    branches: tuple[LBranch, ...]
    timeout: LTimeout | None
    phase: str | None


@dataclass(frozen=True, slots=True)
class LChoose:
    alts: tuple[LNode, ...]
    phase: str | None
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class LRec:
    label: str
    body: LNode


@dataclass(frozen=True, slots=True)
class LVar:
    label: str


LNode: TypeAlias = (
    "LEnd | LUnconnected | LDiverge | LWaitAbort | LAbort | LSend | LIn | LChoose | LRec | LVar"
)


def phase_of(node: LNode) -> str | None:
    if isinstance(node, LRec):
        return phase_of(node.body)
    if isinstance(node, LVar):
        return None
    return node.phase


def describe(node: LNode) -> str:
    """What the role does first in ``node``, for error messages."""
    if isinstance(node, LEnd):
        return "ends" + (f" in phase {node.phase}" if node.phase else "")
    if isinstance(node, LWaitAbort):
        return "has nothing to do (only an abort can come)"
    if isinstance(node, LUnconnected):
        return "is never connected"
    if isinstance(node, LDiverge):
        return f"has nothing more to do while loop {node.loop!r} runs forever"
    if isinstance(node, LAbort):
        return "aborts"
    if isinstance(node, LSend):
        return f"sends {node.message.__name__} to {node.peer}"
    if isinstance(node, LIn):
        parts = [
            (f"gathers {b.threshold} " if b.threshold is not None else "receives ")
            + f"{b.message.__name__} from {b.peer}"
            for b in node.branches
        ]
        if node.timeout is not None:
            parts.append(f"times out ({node.timeout.deadline})")
        return " or ".join(parts) if parts else "waits"
    if isinstance(node, LChoose):
        return " or ".join(describe(a) for a in node.alts)
    if isinstance(node, LRec):
        return describe(node.body)
    return f"loops back to {node.label!r}"


class _Conflict(Exception):
    """Two outcomes a role cannot tell apart behave differently. ``path`` is what the role
    does in both before they differ (innermost last); ``reason`` says why they cannot merge."""

    def __init__(
        self,
        left: LNode,
        right: LNode,
        *,
        phases: tuple[str, str] | None = None,
        reason: str = "",
    ) -> None:
        super().__init__()
        self.left = left
        self.right = right
        self.phases = phases
        self.reason = reason
        self.path: list[str] = []
        self.index = 1  # which outcome failed to merge with the ones before it


class _Stuck(_Conflict):
    """One outcome runs a loop forever without this role while the other needs it later."""

    def __init__(self, diverge: LDiverge, other: LNode, *, left: bool) -> None:
        super().__init__(diverge if left else other, other if left else diverge)
        self.diverge = diverge
        self.diverge_left = left


def _merge_phase(a: str | None, b: str | None, left: LNode, right: LNode) -> str | None:
    if a is not None and b is not None and a != b:
        raise _Conflict(left, right, phases=(a, b))
    return a if a is not None else b


def substitute(node: LNode, label: str, by: LNode) -> LNode:
    """``node`` with the free ``LVar(label)`` replaced by ``by`` (one unfolding of a loop)."""
    if isinstance(node, LVar):
        return by if node.label == label else node
    if isinstance(node, LSend):
        return LSend(
            node.peer,
            node.message,
            substitute(node.cont, label, by),
            node.phase,
            node.where,
            node.connect,
        )
    if isinstance(node, LIn):
        branches = tuple(
            LBranch(
                b.peer, b.message, b.threshold, substitute(b.cont, label, by), b.where, b.connect
            )
            for b in node.branches
        )
        timeout = node.timeout
        if timeout is not None:
            timeout = LTimeout(timeout.deadline, substitute(timeout.cont, label, by), timeout.where)
        return LIn(branches, timeout, node.phase)
    if isinstance(node, LChoose):
        return LChoose(tuple(substitute(a, label, by) for a in node.alts), node.phase, node.where)
    if isinstance(node, LRec) and node.label != label:
        return LRec(node.label, substitute(node.body, label, by))
    return node


# How many loop unfoldings one merge may be in the middle of before it gives up: merging
# regular trees terminates because the pairs repeat, this only bounds pathological nesting.
_MAX_UNFOLD = 64


class Merger:
    """Full merge of outcomes a role cannot tell apart yet, seeing through loops.

    A loop is a regular tree: ``LRec(L, body)`` is unfolded once by substitution, and a
    ``LVar(L)`` of a loop still being projected (its body is not built yet) is unfolded by
    ``loops[L]()``, which projects the loop's body again. Merging regular trees terminates
    because the pairs being merged repeat: a pair met again while it is being merged becomes a
    fresh ``LVar`` and the result a ``LRec`` (coinductive merge). An outcome that reaches the
    very merge being computed without any action of the role (the loop restarted without
    involving it) adds nothing: the role keeps waiting for what the other outcomes offer.
    """

    def __init__(self, loops: dict[str, Callable[[], LNode]]) -> None:
        self.loops = loops
        self.memo: dict[tuple[object, ...], str] = {}
        # one label per merged pair, for good: projecting a loop's body again must rebuild
        # equal trees, or the pairs would never repeat
        self.labels: dict[tuple[object, ...], str] = {}

    def merge_all(self, alts: Sequence[LNode]) -> LNode:
        """Merge every outcome of one decision; ``_Conflict`` carries the failing pair."""
        key: tuple[object, ...] = ("all", *alts)
        hit = self.memo.get(key)
        if hit is not None:
            return LVar(hit)
        label = self.memo[key] = self._label(key)
        try:
            acc = alts[0]
            for i, node in enumerate(alts[1:], 1):
                try:
                    acc = self.merge(acc, node, top=label)
                except _Conflict as c:
                    c.index = i
                    raise
        finally:
            del self.memo[key]
        return LRec(label, acc) if _mentions(acc, label) else acc

    def _label(self, key: tuple[object, ...]) -> str:
        return self.labels.setdefault(key, f"~merge{len(self.labels) + 1}")

    def merge(self, a: LNode, b: LNode, *, top: str | None = None) -> LNode:
        if a == b:
            return a
        if isinstance(a, LWaitAbort | LUnconnected):
            return b
        if isinstance(b, LWaitAbort | LUnconnected):
            return a
        if isinstance(a, LDiverge) or isinstance(b, LDiverge):
            return self._diverge(a, b)
        if isinstance(a, LIn) and isinstance(b, LIn):
            return self._merge_in(a, b)
        if (
            isinstance(a, LSend)
            and isinstance(b, LSend)
            and (a.peer, a.message) == (b.peer, b.message)
        ):
            phase = _merge_phase(a.phase, b.phase, a, b)
            try:
                cont = self.merge(a.cont, b.cont)
            except _Conflict as c:
                c.path.insert(0, f"sends {a.message.__name__} to {a.peer}")
                raise
            return LSend(a.peer, a.message, cont, phase, a.where, a.connect or b.connect)
        if isinstance(a, LRec) and isinstance(b, LRec) and a.label == b.label:
            return LRec(a.label, self.merge(a.body, b.body))
        if isinstance(a, LRec | LVar) or isinstance(b, LRec | LVar):
            return self._unfold_and_merge(a, b, top)
        raise _Conflict(a, b)

    def _diverge(self, a: LNode, b: LNode) -> LNode:
        if isinstance(a, LDiverge) and isinstance(b, LDiverge):
            return a
        d, other, left = (a, b, True) if isinstance(a, LDiverge) else (b, a, False)
        assert isinstance(d, LDiverge)
        if isinstance(other, LEnd):
            # done either way: the role has nothing left to do in both outcomes
            return LEnd(_merge_phase(d.phase, other.phase, a, b))
        raise _Stuck(d, other, left=left)

    def _merge_in(self, a: LIn, b: LIn) -> LNode:
        phase = _merge_phase(a.phase, b.phase, a, b)
        timeout = a.timeout
        if a.timeout != b.timeout:
            if a.timeout is None or b.timeout is None:
                raise _Conflict(
                    a, b, reason="one of these waits has a deadline and the other has none"
                )
            if a.timeout.deadline != b.timeout.deadline:
                raise _Conflict(
                    a,
                    b,
                    reason=f"the waits have different deadlines ({a.timeout.deadline} and "
                    f"{b.timeout.deadline})",
                )
            try:
                cont = self.merge(a.timeout.cont, b.timeout.cont)
            except _Conflict as c:
                c.path.insert(0, f"times out ({a.timeout.deadline})")
                raise
            timeout = LTimeout(a.timeout.deadline, cont, a.timeout.where)
        branches: dict[tuple[str, type], LBranch] = {(x.peer, x.message): x for x in a.branches}
        for y in b.branches:
            key = (y.peer, y.message)
            x = branches.get(key)
            if x is None:
                branches[key] = y
                continue
            if x.threshold != y.threshold:
                raise _Conflict(
                    a,
                    b,
                    reason=f"it gathers {y.message.__name__} from {y.peer} with thresholds "
                    f"{x.threshold} and {y.threshold}",
                )
            try:
                cont = self.merge(x.cont, y.cont)
            except _Conflict as c:
                c.path.insert(0, f"receives {x.message.__name__} from {x.peer}")
                raise
            branches[key] = LBranch(x.peer, x.message, x.threshold, cont, x.where, x.connect)
        return LIn(tuple(branches.values()), timeout, phase)

    def _unfold(self, node: LNode) -> LNode | None:
        if isinstance(node, LRec):
            return substitute(node.body, node.label, node)
        if isinstance(node, LVar):
            again = self.loops.get(node.label)
            return None if again is None else again()
        return node

    def _unfold_and_merge(self, a: LNode, b: LNode, top: str | None) -> LNode:
        key: tuple[object, ...] = ("pair", a, b)
        hit = self.memo.get(key)
        if hit is not None:
            return LVar(hit)
        if len(self.memo) > _MAX_UNFOLD:
            raise _Conflict(a, b)
        label = self.memo[key] = self._label(key)
        try:
            ua, ub = self._unfold(a), self._unfold(b)
            if ua is None or ub is None:
                raise _Conflict(a, b)
            # an outcome that comes straight back to this decision (the loop restarted
            # without involving the role) adds nothing to what the others offer
            if top is not None and ua == LVar(top):
                return b
            if top is not None and ub == LVar(top):
                return a
            if isinstance(ua, LVar) and ua.label in self.memo.values():
                raise _Conflict(a, b)
            if isinstance(ub, LVar) and ub.label in self.memo.values():
                raise _Conflict(a, b)
            merged = self.merge(ua, ub)
        finally:
            del self.memo[key]
        return LRec(label, merged) if _mentions(merged, label) else merged


def merge(a: LNode, b: LNode) -> LNode:
    """Full merge of two outcomes (no loop under construction); raises ``_Conflict``."""
    return Merger({}).merge_all([a, b])


def _initiating(
    node: LNode, bodies: dict[str, LNode], seen: frozenset[str] = frozenset()
) -> list[tuple[str, str, type | None]] | None:
    """First actions of a decider's branch; None when the branch does not start with its own
    send or abort (then nobody could learn the decision from it). A branch that loops back
    starts with what the loop's body starts with (``bodies``: the decider's loop bodies)."""
    if isinstance(node, LSend):
        return [("send", node.peer, node.message)]
    if isinstance(node, LAbort):
        return [("abort", "", None)]
    if isinstance(node, LRec):
        return _initiating(node.body, {**bodies, node.label: node.body}, seen | {node.label})
    if isinstance(node, LVar):
        body = bodies.get(node.label)
        if body is None or node.label in seen:
            return None
        return _initiating(body, bodies, seen | {node.label})
    if isinstance(node, LChoose):
        out: list[tuple[str, str, type | None]] = []
        for alt in node.alts:
            first = _initiating(alt, bodies, seen)
            if first is None:
                return None
            out.extend(first)
        return out
    return None


def _loops_back(node: LNode) -> list[str]:
    """The loops a decider's branch may jump back to before it does anything."""
    if isinstance(node, LVar):
        return [node.label]
    if isinstance(node, LChoose):
        return [label for alt in node.alts for label in _loops_back(alt)]
    return []


def same_shape(a: object, b: object) -> bool:
    """Structural equality of two AST fragments, ignoring where they were written."""
    return _shape(a) == _shape(b)


def _shape(x: object) -> object:
    if isinstance(x, tuple):
        return tuple(_shape(i) for i in x)
    if is_dataclass(x) and not isinstance(x, type):
        return (type(x), *(_shape(getattr(x, f.name)) for f in fields(x) if f.name != "where"))
    return x


def falls_through(block: Block) -> bool:
    """Whether running ``block`` can reach its end (a loop body that can exits the loop)."""
    for s in block:
        if isinstance(s, Again | End | Abort):
            return False
        if isinstance(s, Choice) and s.branches:
            if not any(falls_through(br.body) for br in s.branches):
                return False
        elif isinstance(s, Gather):
            if not (falls_through(s.on_quorum) or falls_through(s.on_timeout)):
                return False
        elif isinstance(s, Loop) and not falls_through(s.body):
            return False
    return True


def involved(block: Block) -> set[str]:
    """Roles that take part in some interaction of ``block`` (phase labels do not count)."""
    out: set[str] = set()
    for s in block:
        if isinstance(s, Send):
            out |= {s.sender, s.receiver}
            out |= involved(s.on_timeout)
        elif isinstance(s, Gather):
            out |= {s.senders, s.receiver}
            out |= involved(s.on_quorum) | involved(s.on_timeout)
        elif isinstance(s, AllToAll):
            out.add(s.group)
        elif isinstance(s, Choice):
            out.add(s.decider)
            for br in s.branches:
                out |= involved(br.body)
        elif isinstance(s, Loop):
            out |= involved(s.body)
        elif isinstance(s, Abort):
            out.add(s.role)
        elif isinstance(s, Disconnect):
            out |= {s.by, s.role}
    return out


def connected_roles(block: Block) -> set[str]:
    """The optional roles of ``block``: every role some ``connect`` brings into the session."""
    out: set[str] = set()
    for s in block:
        if isinstance(s, Send | Gather) and s.connect:
            out.add(s.receiver)
        if isinstance(s, Send):
            out |= connected_roles(s.on_timeout)
        elif isinstance(s, Gather):
            out |= connected_roles(s.on_quorum) | connected_roles(s.on_timeout)
        elif isinstance(s, Choice):
            for br in s.branches:
                out |= connected_roles(br.body)
        elif isinstance(s, Loop):
            out |= connected_roles(s.body)
    return out


def _mentions(node: LNode, label: str) -> bool:
    if isinstance(node, LVar):
        return node.label == label
    if isinstance(node, LSend):
        return _mentions(node.cont, label)
    if isinstance(node, LIn):
        return any(_mentions(b.cont, label) for b in node.branches) or (
            node.timeout is not None and _mentions(node.timeout.cont, label)
        )
    if isinstance(node, LChoose):
        return any(_mentions(a, label) for a in node.alts)
    if isinstance(node, LRec):
        return node.label != label and _mentions(node.body, label)
    return False


def threshold_text(t: ThresholdExpr) -> str:
    return str(t)


# --- step 1: the projector --------------------------------------------------------------------

Phases: TypeAlias = "dict[str, str]"
Trace: TypeAlias = "tuple[str, ...]"
Cont: TypeAlias = "Callable[[Phases, Trace], LNode]"

# The projected role's connection travels with the path in the same mapping as the phases,
# under keys no role can have (a role name is an identifier, never starts with NUL):
# ``_LINK`` is its state on this path, ``_LOOP_LINK + label`` its state when loop ``label``
# started (it must be the same at every ``again``).
_LINK = "\x00link"
_LOOP_LINK = "\x00loop:"
UNCONNECTED, CONNECTED, RELEASED = "unconnected", "connected", "released"
# used before it was connected (reported once): from then on the path goes on as if it were
# connected, and a later connect on it is not reported a second time
_ASSUMED = "connected (assumed)"


class Projector:
    """Projects one choreography onto one role; errors are appended to ``errors``."""

    def __init__(self, decl: Declaration, role: str, errors: list[IllFormedChoreography]) -> None:
        self.decl = decl
        self.role = role
        self.errors = errors
        # loops being projected: label -> project the body again (to unfold an ``again``)
        self.loops: dict[str, Callable[[], LNode]] = {}
        self.merger = Merger(self.loops)
        # this role's projected loop bodies, and the checks of choices that loop back to a
        # loop whose body is not projected yet (run when it is)
        self.bodies: dict[str, LNode] = {}
        self.deferred: dict[str, list[Callable[[], None]]] = {}
        self.optional = role in connected_roles(decl.body)

    def run(self) -> LNode:
        start: Phases = {_LINK: UNCONNECTED} if self.optional else {}
        return self.block(self.decl.body, 0, start, (), self.ended)

    def ended(self, ph: Phases, tr: Trace) -> LNode:
        """The protocol is over on this path: an end, or nothing for a role never connected."""
        if ph.get(_LINK) == UNCONNECTED:
            return LUnconnected(ph.get(self.role))
        return LEnd(ph.get(self.role))

    def use(self, ph: Phases, where: str, what: str, tr: Trace) -> Phases:
        """The projected role takes part in ``what``: it must be connected on this path. An
        error is reported once; the path then goes on as if it were connected."""
        me = self.role
        state = ph.get(_LINK, CONNECTED)
        if state == UNCONNECTED:
            self.err(
                "not_connected",
                where,
                f"role {me!r} {what} before it is connected on this path: an optional role "
                f"(one that some connect brings in) must first be connected with "
                f"connect(..., {me}, ...)",
                tr,
            )
            return {**ph, _LINK: _ASSUMED}
        if state == RELEASED:
            self.err(
                "after_release",
                where,
                f"role {me!r} {what} after it was released (disconnect) on this path",
                tr,
            )
        return ph

    def connect(self, ph: Phases, by: str, where: str, tr: Trace) -> Phases:
        """The projected role is connected by ``by`` here."""
        me = self.role
        state = ph.get(_LINK, CONNECTED)
        if state == CONNECTED:
            self.err(
                "connect_twice",
                where,
                f"role {me!r} is connected by {by!r} but is already "
                + ("connected on this path" if self.optional else "in the session from its start")
                + " (connect only brings an optional role in, once per path)",
                tr,
            )
        elif state == RELEASED:
            self.err(
                "after_release",
                where,
                f"role {me!r} is connected again by {by!r} after it was released on this path "
                "(its session is over; a released role does not come back)",
                tr,
            )
        return {**ph, _LINK: CONNECTED}

    def err(self, kind: str, where: str, what: str, trace: Sequence[str]) -> None:
        self.errors.append(
            IllFormedChoreography(
                choreography=self.decl.name, kind=kind, where=where, what=what, trace=trace
            )
        )

    def merge_at(
        self, where: str, what: str, trace: Trace, alts: Sequence[tuple[str, LNode]]
    ) -> LNode:
        me = self.role
        try:
            return self.merger.merge_all([node for _, node in alts])
        except _Conflict as c:
            label = "/".join(lab for lab, _ in alts[: c.index])
            other_label = alts[c.index][0]
            if isinstance(c, _Stuck):
                d = c.diverge
                stuck, fine = (label, other_label) if c.diverge_left else (other_label, label)
                other = c.right if c.diverge_left else c.left
                self.err(
                    "stuck_role",
                    d.where or where,
                    f"role {me!r} can never progress: after {stuck!r}, loop {d.loop!r} runs "
                    f"forever without {me!r}, so what {me!r} does next after {fine!r} "
                    f"({describe(other)}) never comes and {me!r} waits forever",
                    (*d.trace, f"{me} is stuck: it {describe(other)} only after {fine!r}"),
                )
            elif c.phases is not None:
                self.err(
                    "phase_conflict",
                    where,
                    f"role {me!r} would be in phase {c.phases[0]!r} after {label!r} "
                    f"but in phase {c.phases[1]!r} after {other_label!r}, before it can "
                    f"learn the {what}",
                    trace,
                )
            else:
                common = f"in both it {', then '.join(c.path)}; then " if c.path else ""
                detail = c.reason or (
                    f"after {label!r} it {describe(c.left)}, after {other_label!r} it "
                    f"{describe(c.right)}"
                )
                self.err(
                    "knowledge_of_choice",
                    where,
                    f"role {me!r} cannot learn the {what}: {common}{detail}",
                    trace,
                )
            return alts[0][1]

    def check_initiated(self, s: Choice, alts: Sequence[tuple[str, LNode]], tr: Trace) -> None:
        """Every branch of the decider's own choice starts with a distinct send of its own (or
        its abort), possibly after looping back to a loop that starts with one."""
        seen: dict[tuple[str, str, type | None], int] = {}
        for i, (label, node) in enumerate(alts):
            first = _initiating(node, self.bodies)
            chose = (*tr, f"{s.decider} chooses {label!r}")
            if first is None:
                loops = _loops_back(node)
                body = self.bodies.get(loops[0]) if loops else None
                if body is not None and _loops_back(body):
                    continue  # an unguarded loop: the syntactic check names it
                how = (
                    f"it loops back to {loops[0]!r}, where it first {describe(body)}"
                    if body is not None
                    else f"it {describe(node)}"
                )
                self.err(
                    "choice_not_initiated",
                    s.where,
                    f"branch {label!r} of the choice by {s.decider!r} does not start with "
                    f"a message from {s.decider!r} ({how}), so no other role can learn the "
                    "decision",
                    chose,
                )
                continue
            for key in first:
                j = seen.setdefault(key, i)
                if j == i:
                    continue
                if same_shape(s.branches[j].body, s.branches[i].body):
                    self.err(
                        "identical_branches",
                        s.branches[i].where,
                        f"branches {alts[j][0]!r} and {label!r} of the choice by "
                        f"{s.decider!r} are identical: the decision changes nothing "
                        "(make them one branch)",
                        chose,
                    )
                    continue
                name = key[2].__name__ if key[2] is not None else "abort"
                self.err(
                    "ambiguous_choice",
                    s.where,
                    f"branches {alts[j][0]!r} and {label!r} of the choice by "
                    f"{s.decider!r} both start with {key[0]} {name}"
                    + (f" to {key[1]}, so {key[1]} cannot tell them apart" if key[1] else "")
                    + (", so no role can tell them apart" if not key[1] else ""),
                    chose,
                )

    def block(self, stmts: Block, i: int, ph: Phases, tr: Trace, k: Cont) -> LNode:
        if i == len(stmts):
            return k(ph, tr)

        def rest(ph2: Phases, tr2: Trace) -> LNode:
            return self.block(stmts, i + 1, ph2, tr2, k)

        return self.statement(stmts[i], ph, tr, rest)

    def statement(self, s: Statement, ph: Phases, tr: Trace, rest: Cont) -> LNode:
        me = self.role
        cur = ph.get(me)
        if isinstance(s, Phase):
            return rest({**ph, me: s.label} if s.role == me else ph, tr)
        if isinstance(s, Send):
            arrow = "connects" if s.connect else "->"
            tr2 = (*tr, f"{s.sender} {arrow} {s.receiver}: {s.message.__name__}")
            if s.sender == s.receiver:
                return rest(ph, tr2)  # reported by the syntactic check
            if me == s.sender:
                ph = self.use(ph, s.where, f"sends {s.message.__name__} to {s.receiver}", tr2)
                return LSend(s.receiver, s.message, rest(ph, tr2), cur, s.where, s.connect)
            if me == s.receiver:
                ph = (
                    self.connect(ph, s.sender, s.where, tr2)
                    if s.connect
                    else self.use(
                        ph, s.where, f"receives {s.message.__name__} from {s.sender}", tr2
                    )
                )
            timed_out: LNode | None = None
            if s.deadline is not None:
                timed_out = self.block(
                    s.on_timeout, 0, ph, (*tr2, f"{s.receiver} times out ({s.deadline})"), rest
                )
            if me == s.receiver:
                timeout = (
                    None if timed_out is None else LTimeout(s.deadline or "", timed_out, s.where)
                )
                return LIn(
                    (LBranch(s.sender, s.message, None, rest(ph, tr2), s.where, s.connect),),
                    timeout,
                    cur,
                )
            if timed_out is not None:
                return self.merge_at(
                    s.where,
                    f"timeout decision of {s.receiver} ({s.deadline})",
                    tr2,
                    [("delivered", rest(ph, tr2)), ("timeout", timed_out)],
                )
            return rest(ph, tr2)
        if isinstance(s, Gather):
            opt = ", optional" if s.optional else ""
            tr2 = (
                *tr,
                f"{s.senders} -> {s.receiver}: {s.message.__name__} "
                f"[gather {threshold_text(s.threshold)}{opt}"
                + (", connects]" if s.connect else "]"),
            )
            if me == s.receiver:
                ph = (
                    self.connect(ph, s.senders, s.where, tr2)
                    if s.connect
                    else self.use(
                        ph, s.where, f"gathers {s.message.__name__} from {s.senders}", tr2
                    )
                )
            elif me == s.senders:
                ph = self.use(ph, s.where, f"sends {s.message.__name__} to {s.receiver}", tr2)
            quorum = self.block(s.on_quorum, 0, ph, (*tr2, "quorum"), rest)
            timed_out = self.block(
                s.on_timeout, 0, ph, (*tr2, f"{s.receiver} times out ({s.deadline})"), rest
            )
            if me == s.receiver:
                timeout = None if s.deadline is None else LTimeout(s.deadline, timed_out, s.where)
                if s.connect and s.threshold == 1:
                    # the receiver's session starts with the first message, which is also
                    # the quorum: no deadline can pass in between
                    timeout = None
                return LIn(
                    (LBranch(s.senders, s.message, s.threshold, quorum, s.where, s.connect),),
                    timeout,
                    cur,
                )
            outcome = self.merge_at(
                s.where,
                f"outcome of the gather by {s.receiver} (quorum or timeout)",
                tr2,
                [("quorum", quorum), ("timeout", timed_out)],
            )
            if me == s.senders:
                send = LSend(s.receiver, s.message, outcome, cur, s.where, s.connect)
                return LChoose((send, outcome), cur, s.where) if s.optional else send
            return outcome
        if isinstance(s, AllToAll):
            tr2 = (
                *tr,
                f"{s.group} -> {s.group}: {s.message.__name__} "
                f"[all-to-all, gather {threshold_text(s.threshold)}]",
            )
            if me != s.group:
                return rest(ph, tr2)
            ph = self.use(ph, s.where, f"exchanges {s.message.__name__} in {s.group}", tr2)
            timeout = None if s.deadline is None else LTimeout(s.deadline, LAbort(cur), s.where)
            gather = LIn(
                (LBranch(s.group, s.message, s.threshold, rest(ph, tr2), s.where),), timeout, cur
            )
            return LSend(s.group, s.message, gather, cur, s.where)
        if isinstance(s, Choice):
            if me == s.decider:
                ph = self.use(ph, s.where, "makes a choice", tr)
            alts = [
                (
                    br.label,
                    self.block(br.body, 0, ph, (*tr, f"{s.decider} chooses {br.label!r}"), rest),
                )
                for br in s.branches
            ]
            if not alts:
                return rest(ph, tr)
            if me != s.decider:
                return self.merge_at(s.where, f"choice by {s.decider}", tr, alts)
            pending = [
                label for _, n in alts for label in _loops_back(n) if label not in self.bodies
            ]
            check = partial(self.check_initiated, s, alts, tr)
            if pending:
                outermost = min(
                    (lab for lab in pending if lab in self.loops),
                    key=list(self.loops).index,
                    default=None,
                )
                if outermost is not None:
                    self.deferred.setdefault(outermost, []).append(check)
                else:
                    check()
            else:
                check()
            return LChoose(tuple(n for _, n in alts), cur, s.where)
        if isinstance(s, Loop):
            if me not in involved(s.body):
                if falls_through(s.body):
                    return rest(ph, tr)
                if ph.get(_LINK) == UNCONNECTED:
                    return LUnconnected(cur)  # never connected: finished, not stuck
                return LDiverge(cur, s.label, s.where, (*tr, f"loop {s.label!r} never exits"))
            tr_loop = (*tr, f"loop {s.label!r}")
            ph_loop = {**ph, _LOOP_LINK + s.label: ph.get(_LINK, CONNECTED)}

            def project_body() -> LNode:
                return self.block(s.body, 0, ph_loop, tr_loop, rest)

            outer = self.loops.get(s.label)
            self.loops[s.label] = project_body
            try:
                body = project_body()
            finally:
                if outer is None:
                    del self.loops[s.label]
                else:
                    self.loops[s.label] = outer
            self.bodies[s.label] = body
            for deferred in self.deferred.pop(s.label, []):
                deferred()
            return LRec(s.label, body) if _mentions(body, s.label) else body
        if isinstance(s, Again):
            entry = ph.get(_LOOP_LINK + s.label)
            now = ph.get(_LINK, CONNECTED)
            if entry == _ASSUMED:
                entry = CONNECTED
            if now == _ASSUMED:
                now = CONNECTED
            if entry is not None and entry != now:
                self.err(
                    "connection_in_loop",
                    s.where,
                    f"role {me!r} is {entry} when loop {s.label!r} starts but {now} at this "
                    f"again({s.label!r}): a loop must leave each role's connection as it found "
                    "it (connect or release it on a path that exits the loop)",
                    (*tr, f"again({s.label!r})"),
                )
            return LVar(s.label)
        if isinstance(s, End):
            return self.ended(ph, tr)
        if isinstance(s, Disconnect):
            tr2 = (*tr, f"{s.by} releases {s.role}")
            if me == s.by:
                return rest(self.use(ph, s.where, f"releases {s.role}", tr2), tr2)
            if me != s.role:
                return rest(ph, tr2)
            state = ph.get(_LINK, CONNECTED)
            if state not in (CONNECTED, _ASSUMED):
                self.err(
                    "after_release" if state == RELEASED else "not_connected",
                    s.where,
                    f"role {me!r} is released by {s.by!r} but it is "
                    + ("released already" if state == RELEASED else "not connected")
                    + " on this path",
                    tr2,
                )
            # what follows is projected only to find uses of the released role
            rest({**ph, _LINK: RELEASED}, tr2)
            return LEnd(cur, released=True)
        # Abort
        if s.role == me:
            self.use(ph, s.where, "aborts", tr)
            return LAbort(cur)
        return LUnconnected(cur) if ph.get(_LINK) == UNCONNECTED else LWaitAbort(cur)


# --- step 2: the state machine -----------------------------------------------------------------


_Trans: TypeAlias = (
    "tuple[Action, str, type | None, ThresholdExpr | None, str | None, int, bool, str, bool]"
)


class _State:
    __slots__ = ("final", "phase", "released", "trans")

    def __init__(self, phase: str | None, final: bool = False, released: bool = False) -> None:
        self.phase = phase
        self.final = final
        self.released = released
        # (action, peer, message, threshold expr, deadline, target, implicit, where, connect)
        self.trans: list[_Trans] = []


def _msg_key(t: type | None) -> str:
    return "" if t is None else f"{t.__module__}.{t.__qualname__}"


class _MachineBuilder:
    def __init__(self, decl: Declaration, role: str, errors: list[IllFormedChoreography]) -> None:
        self.decl = decl
        self.role = role
        self.errors = errors
        self.states: list[_State] = []
        self.abort_id = self._new(decl.abort_phase, final=True)
        self.end_ids: dict[tuple[str | None, bool], int] = {}
        self.aliases: list[tuple[int, int]] = []

    def _new(self, phase: str | None, final: bool = False, released: bool = False) -> int:
        self.states.append(_State(phase, final, released))
        return len(self.states) - 1

    def err(self, kind: str, where: str, what: str) -> None:
        self.errors.append(
            IllFormedChoreography(
                choreography=self.decl.name,
                kind=kind,
                where=where,
                what=what,
                trace=(f"projecting onto {self.role!r}",),
            )
        )

    def build(self, node: LNode, env: dict[str, int]) -> int:
        if isinstance(node, LVar):
            target = env.get(node.label)
            if target is None:
                self.err("bad_loop", self.decl.where, f"again({node.label!r}) outside its loop")
                return self.abort_id
            return target
        if isinstance(node, LEnd | LDiverge | LUnconnected):
            released = isinstance(node, LEnd) and node.released
            sid = self.end_ids.get((node.phase, released))
            if sid is None:
                sid = self.end_ids[(node.phase, released)] = self._new(
                    node.phase, final=True, released=released
                )
            return sid
        sid = self._new(phase_of(node))
        self.fill(sid, node, env)
        return sid

    def fill(self, sid: int, node: LNode, env: dict[str, int]) -> None:
        st = self.states[sid]
        if isinstance(node, LSend):
            st.trans.append(
                (
                    "send",
                    node.peer,
                    node.message,
                    None,
                    None,
                    self.build(node.cont, env),
                    False,
                    node.where,
                    node.connect,
                )
            )
        elif isinstance(node, LIn):
            deadline = node.timeout.deadline if node.timeout is not None else None
            for b in node.branches:
                action: Action = "recv" if b.threshold is None else "gather"
                st.trans.append(
                    (
                        action,
                        b.peer,
                        b.message,
                        b.threshold,
                        deadline if action == "gather" else None,
                        self.build(b.cont, env),
                        False,
                        b.where,
                        b.connect,
                    )
                )
            if node.timeout is not None:
                cont = node.timeout.cont
                target = self.abort_id if isinstance(cont, LAbort) else self.build(cont, env)
                st.trans.append(
                    ("timeout", "", None, None, deadline, target, False, node.timeout.where, False)
                )
        elif isinstance(node, LChoose):
            for alt in node.alts:
                self.fill(sid, alt, env)
        elif isinstance(node, LAbort):
            st.trans.append(("abort", "", None, None, None, self.abort_id, False, "", False))
        elif isinstance(node, LEnd | LDiverge | LUnconnected):
            st.final = True
            st.released |= isinstance(node, LEnd) and node.released
        elif isinstance(node, LRec):
            self.fill(sid, node.body, {**env, node.label: sid})
        elif isinstance(node, LVar):
            head = env.get(node.label)
            if head is None or head == sid:
                self.err(
                    "bad_loop",
                    self.decl.where,
                    f"role {self.role!r} loops back to {node.label!r} without doing anything: "
                    "an unguarded loop",
                )
            else:
                self.aliases.append((sid, head))
        # LWaitAbort: only the implicit abort edges leave this state

    def resolve_aliases(self) -> None:
        # A state that "behaves like" a loop head (an optional send whose other outcome is
        # looping back) gets the head's transitions once the head is complete.
        for sid, target in self.aliases:
            self.states[sid].trans.extend(self.states[target].trans)
            self.states[sid].final |= self.states[target].final
            self.states[sid].released |= self.states[target].released


def _bind(
    decl: Declaration, bindings: dict[str, int]
) -> tuple[dict[str, int], dict[str, int], dict[str, Role]]:
    roles = {r.name: r for r in decl.roles}
    sizes_by_name: dict[str, int] = {}
    values: dict[str, int] = {}
    known = {r.size for r in decl.roles if r.size is not None} | {t.name for t in decl.thresholds}
    unknown = set(bindings) - known
    if unknown:
        raise BindingError(
            f"choreography {decl.name!r}: unknown parameters {sorted(unknown)} "
            f"(declared: {sorted(known)})"
        )
    for r in decl.roles:
        if r.size is None:
            continue
        n = bindings.get(r.size, r.minimum)
        if n < r.minimum:
            raise BindingError(
                f"choreography {decl.name!r}: role set {r.name!r} needs {r.size} >= {r.minimum}, "
                f"got {n}"
            )
        prev = values.setdefault(r.size, n)
        if prev != n:  # pragma: no cover - two sets sharing one size name bind together
            raise BindingError(f"choreography {decl.name!r}: size {r.size!r} bound twice")
        sizes_by_name[r.name] = n
    for t in decl.thresholds:
        n = sizes_by_name.get(t.of, 0)
        k = bindings.get(t.name, min(max(t.minimum, 1), n) if n else t.minimum)
        if not (t.minimum <= k <= n) or k < 1:
            raise BindingError(
                f"choreography {decl.name!r}: threshold {t.name!r} must satisfy "
                f"{max(t.minimum, 1)} <= {t.name} <= |{t.of}| = {n}, got {k}"
            )
        values[t.name] = k
    return values, sizes_by_name, roles


def _threshold_value(
    expr: ThresholdExpr,
    peer: str,
    values: dict[str, int],
    sizes: dict[str, int],
    roles: dict[str, Role],
) -> tuple[int, str]:
    size_name = roles[peer].size if peer in roles and roles[peer].size else peer
    if isinstance(expr, AllMembers):
        return sizes.get(peer, 0), f"all {size_name}"
    if isinstance(expr, Threshold):
        return values.get(expr.name, expr.minimum), f"{expr.name} of {size_name}"
    return expr, f"{expr} of {size_name}"


def build_machine(
    chor: Choreography,
    role: str,
    tree: LNode,
    bindings: dict[str, int],
    errors: list[IllFormedChoreography],
) -> LocalType:
    decl = chor.decl
    values, sizes, roles = _bind(decl, bindings)
    mb = _MachineBuilder(decl, role, errors)
    initial = mb.build(tree, {})
    mb.resolve_aliases()
    states = mb.states
    abort_msg = decl.abort_message

    # determinism: one transition per (input peer, message), per output, one timeout
    for st in states:
        seen: dict[tuple[str, str, str], _Trans] = {}
        unique = []
        for tr in st.trans:
            kind = "in" if tr[0] in ("recv", "gather") else tr[0]
            key = (kind, tr[1], _msg_key(tr[2]))
            prev = seen.get(key)
            if prev is None:
                seen[key] = tr
                unique.append(tr)
            elif prev != tr:
                name = tr[2].__name__ if tr[2] is not None else tr[0]
                mb.err(
                    "nondeterministic",
                    tr[7] or decl.where,
                    f"role {role!r} has two different continuations for {tr[0]} {name}"
                    + (f" ({tr[1]})" if tr[1] else "")
                    + " in one state",
                )
        st.trans = unique

    # implicit abort edges on every non-final state
    peers = [r.name for r in decl.roles if r.name != role or r.is_set]
    for sid, st in enumerate(states):
        if st.final or sid == mb.abort_id:
            continue
        have = {(t[0], t[1], t[2]) for t in st.trans}
        if not any(t[0] == "abort" for t in st.trans):
            st.trans.append(("abort", "", None, None, None, mb.abort_id, True, "", False))
        for p in peers:
            if ("recv", p, abort_msg) not in have:
                st.trans.append(("recv", p, abort_msg, None, None, mb.abort_id, True, "", False))

    # Moore minimisation
    def sig0(sid: int) -> tuple[object, ...]:
        st = states[sid]
        return (st.final, st.phase or "", sid == mb.abort_id, st.released)

    block = _partition([sig0(s) for s in range(len(states))])
    while True:
        sigs = [
            (
                block[s],
                tuple(
                    sorted(
                        (a, p, _msg_key(m), str(k), d or "", block[tg], imp, c)
                        for a, p, m, k, d, tg, imp, _, c in states[s].trans
                    )
                ),
            )
            for s in range(len(states))
        ]
        new_block = _partition(sigs)
        if len(set(new_block)) == len(set(block)):
            block = new_block
            break
        block = new_block

    # reachability and naming in breadth-first order from the initial state
    rep: dict[int, int] = {}
    for s in range(len(states)):
        rep.setdefault(block[s], s)
    order: list[int] = [block[initial]]
    seen_blocks = {block[initial]}
    i = 0
    while i < len(order):
        for tr in states[rep[order[i]]].trans:
            b = block[tr[5]]
            if b not in seen_blocks:
                seen_blocks.add(b)
                order.append(b)
        i += 1
    abort_block = block[mb.abort_id]
    if abort_block not in seen_blocks:
        order.append(abort_block)

    # A final state takes its phase label as its name when it is the only final state with
    # that label ("Completed", "Vetoed", "Failed"); other states are numbered within a phase.
    label_count: dict[str, int] = {}
    final_count: dict[str, int] = {}
    for b in order:
        st = states[rep[b]]
        label = st.phase or ("End" if st.final else "")
        if label:
            label_count[label] = label_count.get(label, 0) + 1
            if st.final:
                final_count[label] = final_count.get(label, 0) + 1
    names: dict[int, str] = {}
    used: set[str] = set()
    label_seen: dict[str, int] = {}
    plain = 0
    for b in sorted(order, key=lambda b: not states[rep[b]].final):
        st = states[rep[b]]
        label = st.phase or ("End" if st.final else "")
        if (
            label
            and label not in used
            and (label_count[label] == 1 or (st.final and final_count[label] == 1))
        ):
            name = label
        elif label:
            label_seen[label] = label_seen.get(label, 0) + 1
            name = f"{label}_{label_seen[label]}"
        else:
            plain += 1
            name = f"s{plain}"
        while name in used:
            name += "_"
        used.add(name)
        names[b] = name

    transitions: list[LocalTransition] = []
    for b in order:
        for a, p, m, k, d, tg, imp, where, c in states[rep[b]].trans:
            threshold = expr = None
            if a == "gather" and k is not None:
                threshold, expr = _threshold_value(k, p, values, sizes, roles)
            transitions.append(
                LocalTransition(
                    source=names[b],
                    action=a,
                    peer=p,
                    message=m,
                    target=names[block[tg]],
                    threshold=threshold,
                    threshold_expr=expr,
                    deadline=d,
                    implicit=imp,
                    where=where,
                    connect=c,
                )
            )
    return LocalType(
        choreography=decl.name,
        role=role,
        initial=names[block[initial]],
        states=tuple(names[b] for b in order),
        final=frozenset(names[b] for b in order if states[rep[b]].final),
        phases={names[b]: states[rep[b]].phase or "" for b in order if states[rep[b]].phase},
        transitions=tuple(transitions),
        abort_state=names[abort_block],
        abort_message=abort_msg,
        bindings=values,
        set_sizes=sizes,
        optional=role in connected_roles(decl.body),
        released=frozenset(names[b] for b in order if states[rep[b]].released),
        optional_roles=frozenset(connected_roles(decl.body)),
    )


def _partition(sigs: Iterable[object]) -> list[int]:
    ids: dict[object, int] = {}
    return [ids.setdefault(s, len(ids)) for s in sigs]


def to_local_type(
    chor: Choreography, role: str, bindings: dict[str, int], tree: object
) -> LocalType:
    errors: list[IllFormedChoreography] = []
    assert isinstance(
        tree,
        LEnd | LUnconnected | LDiverge | LWaitAbort | LAbort | LSend | LIn | LChoose | LRec | LVar,
    )
    lt = build_machine(chor, role, tree, bindings, errors)
    if errors:
        from aura_node.choreo.errors import ChoreographyErrors

        raise ChoreographyErrors(chor.name, errors)
    return lt
