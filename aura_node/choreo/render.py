"""Renderers: Mermaid sequence diagrams of choreographies, Mermaid/DOT state diagrams of local
types, plain text of both, and the canonical text the registry hash is computed over.

All renderers read the same AST / transition table the checker and the monitors use, so a
diagram cannot drift from the behaviour (h11 draws its state diagrams from its table too).
Output is deterministic (golden tests compare it byte for byte).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec

from aura_node.choreo.dsl import Choreography
from aura_node.choreo.local import LocalTransition, LocalType
from aura_node.choreo.projection import connected_roles
from aura_node.choreo.syntax import (
    Abort,
    Again,
    AllMembers,
    AllToAll,
    Block,
    Choice,
    Disconnect,
    End,
    Gather,
    Loop,
    Phase,
    Role,
    Send,
    ThresholdExpr,
    struct_fields,
)

_INDENT = "    "


def _type_name(t: object) -> str:
    if isinstance(t, type):
        return t.__qualname__
    return repr(t).replace("typing.", "")


def _role_caption(r: Role) -> str:
    if not r.is_set:
        return r.name
    return f"{r.name} ({r.size} members, at least {r.minimum})"


def _threshold(k: ThresholdExpr, group: Role | None) -> str:
    size = group.size if group is not None and group.size else "n"
    if isinstance(k, AllMembers):
        return f"all {size}"
    return f"{k} of {size}"


def _is_default_abort(block: Block, role: str) -> bool:
    return len(block) == 1 and isinstance(block[0], Abort) and block[0].role == role


# --- Mermaid sequence diagram ------------------------------------------------------------------


class _Sequence:
    def __init__(self, chor: Choreography) -> None:
        self.chor = chor
        self.roles = {r.name: r for r in chor.decl.roles}
        self.optional = connected_roles(chor.decl.body)
        # optional roles connected on the path being drawn (after a construct: on some path
        # through it); the abort message reaches only roles in the session
        self.connected: set[str] = set()
        self.lines: list[str] = []

    def emit(self, depth: int, line: str) -> None:
        self.lines.append(_INDENT * depth + line)

    def span(self) -> str:
        names = list(self.roles)
        return names[0] if len(names) == 1 else f"{names[0]},{names[-1]}"

    def render(self) -> str:
        d = self.chor.decl
        self.emit(0, "sequenceDiagram")
        self.emit(1, f"%% choreography {d.name}; abort message {d.abort_message.__name__}")
        for r in d.roles:
            if r.name in self.optional:
                caption = _role_caption(r)
                caption = (
                    f"{caption[:-1]}, optional, joins when connected)"
                    if r.is_set
                    else f"{caption} (optional, joins when connected)"
                )
                self.emit(1, f"participant {r.name} as {caption}")
            elif r.is_set:
                self.emit(1, f"participant {r.name} as {_role_caption(r)}")
            else:
                self.emit(1, f"participant {r.name}")
        self.block(d.body, 1)
        return "\n".join(self.lines) + "\n"

    def abort(self, role: str, depth: int) -> None:
        msg = self.chor.decl.abort_message.__name__
        self.emit(depth, f"Note over {role}: {role} aborts")
        for other in self.roles:
            if other in self.optional and other not in self.connected:
                continue
            if other != role or self.roles[other].is_set:
                self.emit(depth, f"{role}-x{other}: {msg}")

    def branch_body(self, block: Block, depth: int, start: set[str] | None = None) -> set[str]:
        """Draw one outcome from the connections ``start`` (default: the current ones);
        returns the connections at its end (the caller joins its outcomes')."""
        if start is not None:
            self.connected = set(start)
        if block:
            self.block(block, depth)
        else:
            self.emit(depth, f"Note over {self.span()}: continue")
        return self.connected

    def block(self, block: Block, depth: int) -> None:
        for s in block:
            if isinstance(s, Phase):
                self.emit(depth, f"Note over {s.role}: phase {s.label}")
            elif isinstance(s, Send):
                arrow = f"{s.sender}->>{s.receiver}: {s.message.__name__}"
                if s.connect:
                    self.emit(depth, arrow)
                    self.emit(
                        depth,
                        f"Note over {s.sender},{s.receiver}: {s.sender} connects "
                        f"{s.receiver} ({s.receiver} joins the session)",
                    )
                    self.connected.add(s.receiver)
                elif s.deadline is None:
                    self.emit(depth, arrow)
                else:
                    self.emit(depth, f"alt {s.message.__name__} within {s.deadline}")
                    self.emit(depth + 1, arrow)
                    self.emit(depth, f"else {s.receiver} times out ({s.deadline})")
                    start = set(self.connected)
                    self.connected = start | self.branch_body(s.on_timeout, depth + 1)
                    self.emit(depth, "end")
            elif isinstance(s, Gather):
                group = self.roles.get(s.senders)
                k = _threshold(s.threshold, group)
                arrow = "-->>" if s.optional else "->>"
                self.emit(depth, f"{s.senders}{arrow}{s.receiver}: {s.message.__name__}")
                how = "any member may send" if s.optional else "each member sends"
                joins = f"; the first connects {s.receiver}" if s.connect else ""
                deadline = f"; deadline {s.deadline}" if s.deadline is not None else ""
                self.emit(
                    depth,
                    f"Note over {s.senders},{s.receiver}: {s.receiver} gathers {k} "
                    f"{s.message.__name__} ({how}{deadline}{joins})",
                )
                if s.connect:
                    self.connected.add(s.receiver)
                if s.connect and s.threshold == 1:
                    # the first message connects the receiver and is its quorum: no deadline
                    # can pass before it (projection drops that timeout too)
                    if s.on_quorum:
                        self.block(s.on_quorum, depth)
                    continue
                start = set(self.connected)
                self.emit(depth, f"alt quorum: {k} {s.message.__name__}")
                after = set(self.branch_body(s.on_quorum, depth + 1))
                self.emit(depth, f"else {s.receiver} times out ({s.deadline})")
                self.connected = after | self.branch_body(s.on_timeout, depth + 1, start)
                self.emit(depth, "end")
            elif isinstance(s, AllToAll):
                group = self.roles.get(s.group)
                k = _threshold(s.threshold, group)
                self.emit(depth, f"par every member of {s.group} to every member")
                self.emit(depth + 1, f"{s.group}->>{s.group}: {s.message.__name__}")
                self.emit(depth, "end")
                self.emit(
                    depth,
                    f"Note over {s.group}: each member gathers {k} {s.message.__name__} "
                    f"(deadline {s.deadline}; on timeout it aborts)",
                )
            elif isinstance(s, Choice):
                start, after = set(self.connected), set(self.connected)
                for i, br in enumerate(s.branches):
                    kw = "alt" if i == 0 else "else"
                    self.emit(depth, f"{kw} {s.decider} chooses {br.label}")
                    after |= self.branch_body(br.body, depth + 1, start)
                self.connected = after
                if s.branches:
                    self.emit(depth, "end")
            elif isinstance(s, Loop):
                self.emit(depth, f"loop {s.label}")
                self.branch_body(s.body, depth + 1)
                self.emit(depth, "end")
            elif isinstance(s, Again):
                self.emit(depth, f"Note over {self.span()}: again {s.label}")
            elif isinstance(s, End):
                self.emit(depth, f"Note over {self.span()}: end")
            elif isinstance(s, Disconnect):
                self.emit(
                    depth,
                    f"Note over {s.by},{s.role}: {s.by} releases {s.role} ({s.role}'s part ends)",
                )
            else:
                self.abort(s.role, depth)


def sequence_mermaid(chor: Choreography) -> str:
    """A Mermaid ``sequenceDiagram`` of the whole choreography (paste into Markdown)."""
    return _Sequence(chor).render()


# --- state diagrams ------------------------------------------------------------------------------


def _label(t: LocalTransition) -> str:
    text = t.describe()
    if t.action == "gather" and t.threshold is not None:
        text += f" (k={t.threshold})"
    return text


def state_mermaid(lt: LocalType) -> str:
    """A Mermaid ``stateDiagram-v2`` of one role's local type (implicit abort edges as a note)."""
    lines = ["stateDiagram-v2", f"{_INDENT}%% {lt.choreography} / {lt.role}"]
    if lt.optional:
        lines.append(f"{_INDENT}%% optional role: its session starts on a connect message")
    for s in lt.states:
        phase = lt.phases.get(s)
        if phase and phase != s:
            lines.append(f'{_INDENT}state "{s} ({phase})" as {s}')
    lines.append(f"{_INDENT}[*] --> {lt.initial}")
    for t in lt.transitions:
        if not t.implicit:
            lines.append(f"{_INDENT}{t.source} --> {t.target}: {_label(t)}")
    for s in lt.states:
        if s in lt.final:
            lines.append(f"{_INDENT}{s} --> [*]")
    for s in lt.states:
        if s in lt.released:
            lines.append(f"{_INDENT}note left of {s}: released (disconnect)")
    if lt.abort_message is not None:
        lines.append(
            f"{_INDENT}note right of {lt.abort_state}: from every non-final state, abort or "
            f"recv {lt.abort_message.__name__} leads here"
        )
    return "\n".join(lines) + "\n"


def _dot_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def state_dot(lt: LocalType) -> str:
    """A Graphviz ``digraph`` of one role's local type."""
    out = [f"digraph {_dot_quote(lt.choreography + '/' + lt.role)} {{"]
    out.append("  rankdir=LR;")
    out.append('  node [shape=box, style=rounded, fontname="Helvetica"];')
    out.append('  __start [shape=point, label=""];')
    for s in lt.states:
        phase = lt.phases.get(s)
        label = s if not phase or phase == s else f"{s}\\n({phase})"
        if s in lt.released:
            label += "\\n(released)"
        extra = ", peripheries=2" if s in lt.final else ""
        out.append(f'  {_dot_quote(s)} [label="{label}"{extra}];')
    out.append(f"  __start -> {_dot_quote(lt.initial)};")
    for t in lt.transitions:
        if t.implicit:
            continue
        style = ", style=dashed" if t.action in ("timeout", "abort") else ""
        out.append(
            f"  {_dot_quote(t.source)} -> {_dot_quote(t.target)} "
            f"[label={_dot_quote(_label(t))}{style}];"
        )
    if lt.abort_message is not None:
        note = f"from every non-final state:\\nabort or recv {lt.abort_message.__name__}"
        out.append(f'  __abort_note [shape=note, label="{note}"];')
        out.append(f"  __abort_note -> {_dot_quote(lt.abort_state)} [style=dotted];")
    out.append("}")
    return "\n".join(out) + "\n"


def local_text(lt: LocalType) -> str:
    """Plain text of one role's local type: one line per explicit transition."""
    lines = [
        f"local type {lt.choreography}/{lt.role}",
        f"  initial: {lt.initial}",
        f"  final: {', '.join(s for s in lt.states if s in lt.final)}",
        f"  bindings: {', '.join(f'{k}={v}' for k, v in sorted(lt.bindings.items())) or '-'}",
    ]
    if lt.optional:
        lines.append("  optional: joins on a connect message")
    if lt.released:
        lines.append(f"  released in: {', '.join(s for s in lt.states if s in lt.released)}")
    for s in lt.states:
        phase = lt.phases.get(s)
        lines.append(f"  {s}" + (f"  [{phase}]" if phase and phase != s else ""))
        for t in lt.explicit(s):
            lines.append(f"    {_label(t)} -> {t.target}")
    if lt.abort_message is not None:
        lines.append(
            f"  (every non-final state: abort or recv {lt.abort_message.__name__} -> "
            f"{lt.abort_state})"
        )
    return "\n".join(lines) + "\n"


# --- plain text / canonical form -----------------------------------------------------------------


def _text_block(chor: Choreography, block: Block, depth: int, where: bool) -> Iterator[str]:
    roles = {r.name: r for r in chor.decl.roles}
    pad = "  " * depth

    def at(line: str, loc: str) -> str:
        return f"{line}  @ {loc}" if where else line

    for s in block:
        if isinstance(s, Phase):
            yield at(f"{pad}phase {s.role} {s.label}", s.where)
        elif isinstance(s, Send):
            dl = f" [deadline {s.deadline}]" if s.deadline else ""
            arrow = "connects" if s.connect else "->"
            yield at(f"{pad}{s.sender} {arrow} {s.receiver}: {s.message.__name__}{dl}", s.where)
            if s.deadline:
                yield f"{pad}  on timeout:"
                yield from _text_block(chor, s.on_timeout, depth + 2, where)
        elif isinstance(s, Gather):
            opt = ", optional" if s.optional else ""
            opt += ", connects" if s.connect else ""
            opt += f", deadline {s.deadline}" if s.deadline is not None else ""
            k = _threshold(s.threshold, roles.get(s.senders))
            yield at(
                f"{pad}{s.senders} -> {s.receiver}: {s.message.__name__} [gather {k}{opt}]",
                s.where,
            )
            yield f"{pad}  on quorum:"
            yield from _text_block(chor, s.on_quorum, depth + 2, where)
            yield f"{pad}  on timeout:"
            yield from _text_block(chor, s.on_timeout, depth + 2, where)
        elif isinstance(s, AllToAll):
            k = _threshold(s.threshold, roles.get(s.group))
            yield at(
                f"{pad}{s.group} -> {s.group}: {s.message.__name__} "
                f"[all-to-all, gather {k}, deadline {s.deadline}, on timeout abort]",
                s.where,
            )
        elif isinstance(s, Choice):
            yield at(f"{pad}choice by {s.decider}:", s.where)
            for br in s.branches:
                yield f"{pad}  branch {br.label}:"
                yield from _text_block(chor, br.body, depth + 2, where)
        elif isinstance(s, Loop):
            yield at(f"{pad}loop {s.label}:", s.where)
            yield from _text_block(chor, s.body, depth + 1, where)
        elif isinstance(s, Again):
            yield at(f"{pad}again {s.label}", s.where)
        elif isinstance(s, End):
            yield at(f"{pad}end", s.where)
        elif isinstance(s, Disconnect):
            yield at(f"{pad}{s.by} releases {s.role}", s.where)
        else:
            yield at(f"{pad}abort by {s.role}", s.where)


def _nested_structs(messages: Sequence[type]) -> list[type]:
    """Struct types reachable from the messages' fields (through tuples/lists/unions), in
    first-seen order, excluding the messages themselves."""
    seen: list[type] = []
    top = set(messages)

    def visit(tp: object) -> None:
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            if tp in top or tp in seen:
                return
            seen.append(tp)
            for _n, sub in struct_fields(tp):
                visit(sub)
            return
        for arg in getattr(tp, "__args__", ()) or ():
            visit(arg)

    for m in messages:
        for _n, tp in struct_fields(m):
            visit(tp)
    return seen


def text(chor: Choreography, *, where: bool = True) -> str:
    """Plain text of a choreography (``where=False``: without source locations)."""
    d = chor.decl
    lines = [f"choreography {d.name}"]
    for r in d.roles:
        if r.is_set:
            lines.append(f"  role set {r.name}: {r.size} members, {r.size} >= {r.minimum}")
        else:
            lines.append(f"  role {r.name}")
    for t in d.thresholds:
        lines.append(f"  threshold {t.name} over {t.of}: {t.minimum} <= {t.name} <= |{t.of}|")
    lines.append(f"  abort {d.abort_message.__name__} -> phase {d.abort_phase}")
    for m in chor.messages:
        fields = ", ".join(f"{n}: {_type_name(tp)}" for n, tp in struct_fields(m))
        lines.append(f"  message {m.__name__}({fields})")
    # Structs nested inside messages are part of the wire format too: a change to one must
    # change the registry hash, so list their fields as well (each once, by name).
    for part in _nested_structs(chor.messages):
        fields = ", ".join(f"{n}: {_type_name(tp)}" for n, tp in struct_fields(part))
        lines.append(f"  part {part.__qualname__}({fields})")
    lines.append("  protocol:")
    lines.extend(_text_block(chor, d.body, 2, where))
    return "\n".join(lines) + "\n"


def canonical(chor: Choreography) -> str:
    """The text the registry hash covers: names, roles, messages with field names and types,
    structure; no source locations (moving a line must not change the protocol's identity)."""
    return text(chor, where=False)
