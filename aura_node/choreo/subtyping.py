"""Bounded asynchronous subtyping of local types: can a new version of a role stand in for the old?

Theory of operation
-------------------
A rolling upgrade mixes versions: in one session some roles run the new projection of a
choreography and some the old one. That is safe when every role's new local type ``T`` is an
asynchronous *subtype* of its old one ``S`` (``T <= S``): a process that follows ``T`` can
replace one that follows ``S`` in any session of old peers without a message nobody expects,
a receive that never comes, or a stuck role. The rules (the "precise asynchronous multiparty
subtyping" line of Ghilezan, Pantovic, Prokic, Scalas and Yoshida, as checked by Rumpsteak's
``subtype`` with a visit bound):

- internal choice is covariant: ``T`` may *send fewer* alternatives than ``S`` (every send ``T``
  may choose is one ``S`` may choose);
- external choice is contravariant: ``T`` may *receive more* alternatives (every message old
  peers may send it, it accepts);
- asynchrony: ``T`` may *anticipate* a send to ``p`` before receives (from anyone) and before
  sends to other roles, and a receive from ``p`` before receives from other roles; messages
  between one pair of roles stay in order (links are FIFO per pair).

The check follows Rumpsteak's prefix construction. It walks ``T`` and ``S`` together, keeping
the actions each side has done that the other has not matched yet (``ahead`` for ``T``,
``behind`` for ``S``). After each step the oldest action ``T`` did ahead is matched with the
first equal action of ``S``'s pending ones, provided it may be anticipated over every pending
``S`` action before it (the rules above); if one of those blocks it, no later ``S`` action can
help, and the pair is refused at once with that step. A pair of states with the same pending
actions that repeats on the current path is a loop both sides can run forever: accepted
(coinduction). What cannot repeat is bounded: pending actions longer than ``bound`` (a ``T``
that runs further and further ahead, e.g. sends in a loop whose input it never takes), or more
than ``budget`` steps in all, and the answer is then "not proven" (incompatible), never a
guess. Quantifiers: ``T``'s sends are its choice (each must be matched), ``S``'s receives are
the environment's (each must be handled), ``T``'s receives and ``S``'s sends may be picked to
fit (one fitting alternative suffices).

Actions are compared by kind, peer and message *name* (the envelope names a message by its
class name) and the two classes must be wire compatible: the same fields with the same types,
a field only one side has must have a default there, and neither may forbid unknown fields
(so either side decodes the other's bytes). ``timeout`` is an input from the clock (never
reordered), ``abort`` a send to every role, ``gather`` an input whose threshold must match.
Any other action kind (a newer construct of the language) is refused with an error naming
it, not guessed at. Identical projections are compatible without a walk.

Pure: no Trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from aura_node.choreo.local import LocalTransition, LocalType
from aura_node.errors import ChoreographyError

if TYPE_CHECKING:
    from aura_node.choreo.dsl import Choreography

#: longest run of unmatched actions either side may accumulate (Rumpsteak's visit bound)
DEFAULT_BOUND: Final = 8
#: most pair-of-states steps one check may take before giving up as "not proven"
DEFAULT_BUDGET: Final = 50_000
#: longest path of pairs of states one check follows (the walk recurses: this keeps it well
#: inside Python's default stack whatever the caller's recursion limit)
MAX_DEPTH: Final = 250

_KNOWN_ACTIONS: Final = frozenset({"send", "recv", "gather", "timeout", "abort"})


class SubtypingError(ChoreographyError):
    """The checker met a local type it cannot judge (an action kind it does not know)."""

    code = "subtyping_unsupported"


@dataclass(frozen=True, slots=True)
class _Label:
    """One observable action: ``out`` (a send or abort) or an input, to or from ``peer``."""

    out: bool
    peer: str
    name: str  # message class name, "timeout" or "abort"
    detail: str = ""  # gather threshold

    def __str__(self) -> str:
        if self.name == "abort" and self.out:
            return "abort"
        if self.name == "timeout" and not self.peer:
            return "timeout"
        if self.detail:
            return f"gather {self.detail} {self.name} from {self.peer}"
        if self.out:
            return f"send {self.name} to {self.peer}"
        return f"recv {self.name} from {self.peer}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The answer for one role: ``ok``, or where the new local type fails to stand in."""

    role: str
    ok: bool
    step: int = 0  # how many of the new version's actions had run when they differed (>= 1)
    trace: tuple[str, ...] = ()  # those actions, in order
    reason: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"role {self.role}: compatible"
        after = f" after {'; '.join(self.trace)}" if self.trace else " at the start"
        return f"role {self.role}, step {self.step}{after}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Compatibility:
    """The answer for a whole choreography: every role's verdict, in role order."""

    old: str  # "name vN"
    new: str
    verdicts: tuple[Verdict, ...]
    problem: str = ""  # a difference before any role is walked (names, roles)

    @property
    def ok(self) -> bool:
        return not self.problem and all(v.ok for v in self.verdicts)

    @property
    def first_failure(self) -> Verdict | None:
        return next((v for v in self.verdicts if not v.ok), None)

    def describe(self) -> str:
        if self.ok:
            return f"compatible: {self.new} can stand in for {self.old}"
        if self.problem:
            return f"incompatible: {self.new} cannot stand in for {self.old}: {self.problem}"
        bad = self.first_failure
        assert bad is not None
        return f"incompatible: {self.new} cannot stand in for {self.old}: {bad.describe()}"


def wire_incompatibility(new: type, old: type) -> str | None:
    """Why the bytes of one message class would not decode as the other (``None``: they do)."""
    if new is old:
        return None
    if not (isinstance(new, type) and issubclass(new, msgspec.Struct)
            and isinstance(old, type) and issubclass(old, msgspec.Struct)):
        return f"message {new.__name__} is not a msgspec Struct on both sides"
    for t in (new, old):
        if t.__struct_config__.forbid_unknown_fields:
            return f"message {t.__name__} forbids unknown fields, so a changed field set breaks it"
        if t.__struct_config__.array_like:
            return f"message {t.__name__} is array-like, so its fields are positional"
    fn = {f.name: f for f in msgspec.structs.fields(new)}
    fo = {f.name: f for f in msgspec.structs.fields(old)}
    for name in sorted(fn.keys() & fo.keys()):
        if _type_key(fn[name].type) != _type_key(fo[name].type):
            return (f"message {new.__name__} field {name!r} changed type: "
                    f"{_type_key(fo[name].type)} -> {_type_key(fn[name].type)}")
    for side, mine, theirs in (("new", fn, fo), ("old", fo, fn)):
        for name in sorted(mine.keys() - theirs.keys()):
            if mine[name].required:
                return (f"message {new.__name__} field {name!r} exists only in the {side} "
                        f"version and has no default")
    return None


def _type_key(tp: object) -> str:
    # Nested structs are compared by name (a plugin's copy of a class is another object).
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _label(t: LocalTransition, where: str) -> _Label:
    if t.action not in _KNOWN_ACTIONS:
        raise SubtypingError(
            f"{where}: cannot check compatibility of a {t.action!r} action (the checker knows "
            f"{', '.join(sorted(_KNOWN_ACTIONS))})")
    name = t.message.__name__ if t.message is not None else t.action
    if t.action == "send":
        return _Label(True, t.peer, name)
    if t.action == "abort":
        return _Label(True, "*", "abort")
    if t.action == "timeout":
        return _Label(False, "", "timeout")
    if t.action == "gather":
        return _Label(False, t.peer, name, str(t.threshold_expr or t.threshold))
    return _Label(False, t.peer, name)


def _may_anticipate(x: _Label, over: _Label) -> bool:
    """May the new version do ``x`` before the old version's pending ``over``?"""
    if x.name == "timeout" or over.name == "timeout" or "*" in (x.peer, over.peer):
        return False  # the clock and a broadcast abort are ordered against everything
    if x.out:
        return not over.out or over.peer != x.peer
    return not over.out and over.peer != x.peer


class _Walk:
    """One ``new <= old`` check (the mutable search state; see the module doc)."""

    def __init__(self, new: LocalType, old: LocalType, bound: int, budget: int) -> None:
        self.new, self.old, self.bound, self.budget = new, old, bound, budget
        self.messages: dict[str, type] = {}
        self.old_messages: dict[str, type] = {}
        self.edges_new = self._edges(new)
        self.edges_old = self._edges(old)
        for lt, into in ((new, self.messages), (old, self.old_messages)):
            for t in lt.transitions:
                if t.message is not None:
                    into.setdefault(t.message.__name__, t.message)
        self.path: set[tuple[str, str, tuple[_Label, ...], tuple[_Label, ...]]] = set()

    def _edges(self, lt: LocalType) -> dict[str, tuple[tuple[_Label, str], ...]]:
        out: dict[str, tuple[tuple[_Label, str], ...]] = {}
        for s in lt.states:
            out[s] = tuple((_label(t, f"{lt.choreography}/{lt.role} state {s}"), t.target)
                           for t in lt.explicit(s))
        return out

    def _same(self, x: _Label, y: _Label) -> str | None:
        """``None`` when equal; "" when different; a reason when equal but wire incompatible."""
        if (x.out, x.peer, x.name, x.detail) != (y.out, y.peer, y.name, y.detail):
            return ""
        new, old = self.messages.get(x.name), self.old_messages.get(y.name)
        if new is None or old is None:
            return None
        return wire_incompatibility(new, old)

    def _reduce(self, ahead: tuple[_Label, ...], behind: tuple[_Label, ...]
                ) -> tuple[tuple[_Label, ...], tuple[_Label, ...]] | str:
        while ahead:
            x = ahead[0]
            found: int | None = None
            for j, y in enumerate(behind):
                same = self._same(x, y)
                if same is None:
                    found = j
                    break
                if same:
                    return same
                if not _may_anticipate(x, y):
                    if (x.out, x.peer) == (y.out, y.peer):
                        return f"the new version does {x} where the old one does {y}"
                    return (f"the new version does {x} before {y}, which the old one does "
                            f"first and which {x} may not overtake")
            if found is None:
                return ahead, behind  # not matched yet: the old side must go on
            ahead, behind = ahead[1:], behind[:found] + behind[found + 1:]
        return ahead, behind

    def run(self) -> Verdict:
        try:
            failure = self._go(self.new.initial, self.old.initial, (), (), ())
        except RecursionError:
            # MAX_DEPTH keeps the walk shallow; a caller deep in its own stack still gets an
            # answer, never a crash
            failure = ((), "not proven: the walk is deeper than the stack allows")
        if failure is None:
            return Verdict(role=self.new.role, ok=True)
        trace, reason = failure
        return Verdict(role=self.new.role, ok=False, step=max(1, len(trace)), trace=trace,
                       reason=reason)

    def _go(self, t: str, s: str, ahead: tuple[_Label, ...], behind: tuple[_Label, ...],
            trace: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
        reduced = self._reduce(ahead, behind)
        if isinstance(reduced, str):
            return trace, reduced
        ahead, behind = reduced
        key = (t, s, ahead, behind)
        if key in self.path:
            return None  # the same situation again on this path: both can loop forever
        self.budget -= 1
        if self.budget < 0:
            return trace, "not proven within the step budget (the check is bounded)"
        if len(self.path) >= MAX_DEPTH:
            return trace, f"not proven: the walk is deeper than {MAX_DEPTH} steps"
        if len(ahead) > self.bound or len(behind) > self.bound:
            return trace, (f"not proven within bound {self.bound}: one side runs more than "
                           f"{self.bound} actions ahead of the other")
        self.path.add(key)
        try:
            return self._step(t, s, ahead, behind, trace)
        finally:
            self.path.discard(key)

    def _step(self, t: str, s: str, ahead: tuple[_Label, ...], behind: tuple[_Label, ...],
              trace: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
        tt, ss = self.edges_new[t], self.edges_old[s]
        if not tt and not ss:
            if behind:
                return trace, f"the new version has ended where the old one still does {behind[0]}"
            if ahead:
                return trace, f"the new version does {ahead[0]}, which the old one never does"
            return None
        t_out = {lbl.out for lbl, _ in tt}
        s_out = {lbl.out for lbl, _ in ss}
        if len(t_out) > 1 or len(s_out) > 1:
            return self._mixed(t, s, tt, ss, ahead, behind, trace)
        if not ahead and not behind and tt and ss and t_out == s_out:
            synced = self._in_step(t, s, tt, ss, trace)
            if not isinstance(synced, bool):
                return synced
            if synced:
                return None
        if ahead:
            if not ss:
                return trace, f"the new version does {ahead[0]}, which the old one never does"
            return self._old(s, ss, t, ahead, behind, trace)
        if not tt:
            return trace, (f"the new version has ended where the old one goes on with "
                           f"{behind[0] if behind else ss[0][0]}")
        if True in t_out:
            # the new version's own choice: every send it may pick must be matched
            for lbl, nxt in tt:
                failure = self._go(nxt, s, (*ahead, lbl), behind, (*trace, str(lbl)))
                if failure is not None:
                    return failure
            return None
        if behind:
            # receives: the old side's pending actions say what arrives; one branch must fit
            first: tuple[tuple[str, ...], str] | None = None
            for lbl, nxt in tt:
                failure = self._go(nxt, s, (*ahead, lbl), behind, (*trace, str(lbl)))
                if failure is None:
                    return None
                first = first or failure
            return first
        if not ss:
            wants = " or ".join(str(lbl) for lbl, _ in tt)
            return trace, f"the new version waits to {wants} after the old one has ended"
        return self._old(s, ss, t, ahead, behind, trace)

    def _in_step(self, t: str, s: str, tt: tuple[tuple[_Label, str], ...],
                 ss: tuple[tuple[_Label, str], ...], trace: tuple[str, ...]
                 ) -> tuple[tuple[str, ...], str] | bool:
        """Nothing pending and both sides choose among the same kind of action: take the
        actions both have in one step (the common case, and what keeps pending actions
        empty where a state further on both sends and receives). ``True``: proven this way;
        ``False``: the actions do not line up this simply, use the pending-action walk."""
        if ss[0][0].out:
            # sends: each the new version may pick; one the old cannot do here may still be
            # an anticipated later one, so only a fully matched choice is taken in one step
            pairs = [(lbl, nxt, self._match(lbl, ss)) for lbl, nxt in tt]
        else:
            pairs = [(lbl, nxt, self._match(lbl, tt)) for lbl, nxt in ss]
        if any(m is None for _l, _n, (m, _w) in pairs):
            return False
        for lbl, nxt, (match, _why) in pairs:
            assert match is not None
            new_next, old_next = (nxt, match) if ss[0][0].out else (match, nxt)
            failure = self._go(new_next, old_next, (), (), (*trace, str(lbl)))
            if failure is not None:
                return failure
        return True

    def _mixed(self, t: str, s: str, tt: tuple[tuple[_Label, str], ...],
               ss: tuple[tuple[_Label, str], ...], ahead: tuple[_Label, ...],
               behind: tuple[_Label, ...], trace: tuple[str, ...]
               ) -> tuple[tuple[str, ...], str] | None:
        """A state that may send or receive (an optional send inside a gather window):
        matched step by step, with nothing pending on either side (no anticipation across
        it): the new sends are among the old ones, the old receives among the new ones."""
        if ahead or behind:
            pending = ahead[0] if ahead else behind[0]
            return trace, (f"not proven: a state that may both send and receive is reached "
                           f"while {pending} is still unmatched")
        for lbl, nxt in tt:
            if not lbl.out:
                continue
            match, why = self._match(lbl, ss)
            if match is None:
                return (*trace, str(lbl)), why or (
                    f"the new version may {lbl} where the old one cannot")
            failure = self._go(nxt, match, (), (), (*trace, str(lbl)))
            if failure is not None:
                return failure
        for lbl, nxt in ss:
            if lbl.out:
                continue
            match, why = self._match(lbl, tt)
            if match is None:
                return trace, why or (f"old peers may make the old version {lbl}, which "
                                      f"the new version does not accept")
            failure = self._go(match, nxt, (), (), (*trace, str(lbl)))
            if failure is not None:
                return failure
        return None

    def _match(self, lbl: _Label, edges: tuple[tuple[_Label, str], ...]
               ) -> tuple[str | None, str]:
        """(target of the edge doing ``lbl``, "") or (None, why not: "" when no edge does)."""
        for other, target in edges:
            same = self._same(lbl, other) if lbl.out == other.out else ""
            if same is None:
                return target, ""
            if same:
                return None, same
        return None, ""

    def _old(self, s: str, ss: tuple[tuple[_Label, str], ...], t: str,
             ahead: tuple[_Label, ...], behind: tuple[_Label, ...], trace: tuple[str, ...]
             ) -> tuple[tuple[str, ...], str] | None:
        if ss[0][0].out:
            # the old version's sends: the new one may send fewer, so one must fit
            first: tuple[tuple[str, ...], str] | None = None
            for lbl, nxt in ss:
                failure = self._go(t, nxt, ahead, (*behind, lbl), trace)
                if failure is None:
                    return None
                first = first or failure
            return first
        # the old version's receives: old peers may send any of them, each must be handled
        for lbl, nxt in ss:
            failure = self._go(t, nxt, ahead, (*behind, lbl), trace)
            if failure is not None:
                return failure
        return None


def _shape(lt: LocalType) -> tuple[object, ...]:
    return (lt.initial, frozenset(lt.final), frozenset(
        (t.source, t.action, t.peer, t.message, t.target, t.threshold_expr, t.implicit)
        for t in lt.transitions))


def is_subtype(new: LocalType, old: LocalType, *, bound: int = DEFAULT_BOUND,
               budget: int = DEFAULT_BUDGET) -> Verdict:
    """Can ``new`` safely stand in for ``old`` (``new <= old``)? See the module doc."""
    if new.role != old.role:
        raise ValueError(f"comparing role {new.role!r} with role {old.role!r}")
    if _shape(new) == _shape(old):
        return Verdict(role=new.role, ok=True)
    return _Walk(new, old, bound, budget).run()


def _version_name(c: Choreography) -> str:
    return f"{c.name} v{c.version}"


def compatibility(new: Choreography, old: Choreography, *, bound: int = DEFAULT_BOUND,
                  bindings: Mapping[str, int] | None = None) -> Compatibility:
    """Is choreography ``new`` compatible with ``old``: does every role's new projection
    stand in for its old one? Projected at ``bindings`` (default: the smallest instance)."""
    names = (_version_name(old), _version_name(new))
    if new.name != old.name:
        return Compatibility(old=names[0], new=names[1], verdicts=(),
                             problem=f"they are different choreographies ({old.name!r}, "
                                     f"{new.name!r})")
    if new.roles != old.roles:
        return Compatibility(old=names[0], new=names[1], verdicts=(), problem=(
            f"the roles differ: old {', '.join(old.roles)}; new {', '.join(new.roles)}"))
    bind = dict(bindings or {})
    verdicts = [is_subtype(new.project(r, bind or None), old.project(r, bind or None),
                           bound=bound) for r in new.roles]
    return Compatibility(old=names[0], new=names[1], verdicts=tuple(verdicts))
