"""Runtime monitors: hold one role of one session to its local type.

Theory of operation
-------------------
A :class:`Monitor` wraps a bound :class:`~aura_node.choreo.local.LocalType` and tracks the
current local state. The runtime calls it on every message before protocol code sees it:

- ``check_inbound(sender_role, message, member=...)`` accepts and advances, or raises a
  :class:`~aura_node.errors.RemoteProtocolError` subclass (the peer misbehaved):
  ``UnexpectedMessageError`` (never allowed from here), ``EarlyMessageError`` (allowed in a
  later state: the runtime may buffer it and retry after advancing; per-sender FIFO links make
  this the only reordering) or ``DuplicateGatherMessageError``.
- ``check_outbound(receiver_role, message)`` accepts and advances, or raises
  ``UnexpectedSendError`` (a :class:`~aura_node.errors.LocalProtocolError`: our own bug).
  A send to a role set is one logical send; the runtime fans it out.
- ``timeout()`` when the state's deadline passed; ``abort()`` when this side gives up.

A rejected message leaves the monitor where it was: one faulty member of a role set must not
be able to end an honest session (threshold protocols exist to tolerate it).

Gathers count *distinct* members (``member`` is the sender's identity inside its role set, e.g.
its device id) and fire at ``threshold``. Once a gather closes (quorum or timeout) the remaining
members may still deliver their message; those stragglers are accepted without effect, at most
one per member that was not counted. The same holds for a plain receive whose deadline passed
(the sender may not have seen the timeout). Limitation: stragglers are keyed by (role set, message
type); a protocol that gathers the same message type twice from the same set (a loop) must
tell rounds apart in the payload. The abort state accepts (and drops) every message of the
choreography this role could receive; any state accepts the abort message.

Optional participants (``connect`` in the choreography): the monitor of an optional role is
not *joined* until the message that connects it arrives (``joined``; the runtime creates the
monitor when that message opens the session, so there it is joined at once; the in-memory
interpreter holds monitors of members that never join). A monitor that has not joined has no
deadline running (nobody is waiting on it, and it is waiting on nobody: its session has not
started) and counts as finished when the session ends without it (``finished``).
``connected`` is the set of optional roles this side knows to be in the session: ones it
connected itself, or heard from.

Each check is one dict lookup on ``(state, peer, message type)``; messages are not copied.
"""

from __future__ import annotations

from collections.abc import Hashable

from aura_node.choreo.errors import (
    DuplicateGatherMessageError,
    EarlyMessageError,
    MonitorUsageError,
    NoTimeoutError,
    UnexpectedMessageError,
    UnexpectedSendError,
)
from aura_node.choreo.local import LocalTransition, LocalType
from aura_node.errors import LocalProtocolError

_Key = tuple[str, str, type]


class Monitor:
    __slots__ = (
        "_abort_state",
        "_auto",
        "_counting",
        "_final",
        "_gathers",
        "_in",
        "_later",
        "_messages",
        "_out",
        "_peers",
        "_stragglers",
        "_timeout",
        "connected",
        "joined",
        "local_type",
        "state",
    )

    def __init__(self, local_type: LocalType, *, state: str | None = None) -> None:
        """Monitor ``local_type`` from its initial state, or from ``state`` (a session resumed
        from the journal by rehydration)."""
        lt = local_type
        self.local_type = lt
        self._in: dict[_Key, LocalTransition] = {}
        self._out: dict[_Key, LocalTransition] = {}
        self._timeout: dict[str, LocalTransition] = {}
        self._final = lt.final
        self._abort_state = lt.abort_state
        # what the abort state drops: anything this role could ever have received
        self._messages = frozenset(
            (t.peer, t.message)
            for t in lt.transitions
            if t.message is not None and t.action in ("recv", "gather")
        )
        self._peers = frozenset(t.peer for t in lt.transitions if t.peer)
        for t in lt.transitions:
            if t.message is not None and t.action in ("recv", "gather"):
                self._in[(t.source, t.peer, t.message)] = t
            elif t.message is not None and t.action == "send":
                self._out[(t.source, t.peer, t.message)] = t
            elif t.action == "timeout":
                self._timeout[t.source] = t
        self._later = self._later_inputs(lt)
        self._gathers: dict[str, list[tuple[str, type]]] = {}
        for t in lt.transitions:
            if t.action == "gather" and t.message is not None:
                self._gathers.setdefault(t.source, []).append((t.peer, t.message))
        self._auto = self._auto_steps(lt)
        # gather in progress: (peer, message) -> members counted so far
        self._counting: dict[tuple[str, type], set[Hashable]] = {}
        # closed gathers: (peer, message) -> [members already heard, stragglers still allowed]
        self._stragglers: dict[tuple[str, type], tuple[set[Hashable], list[int]]] = {}
        start = lt.initial if state is None else state
        if start not in lt.states:
            raise MonitorUsageError(
                f"{lt.choreography}/{lt.role} has no state {start!r} (has: {lt.states})"
            )
        # an optional role joins on its connect message; one resumed from the journal had joined
        self.joined = not lt.optional or state is not None
        self.connected: set[str] = set()
        self.state = ""  # _enter records nothing when leaving ""
        self._enter(start)

    @staticmethod
    def _auto_steps(lt: LocalType) -> dict[str, str]:
        """State -> the state it moves on to at once, for the states that are done on
        arrival: a gather over an empty role set (k = all, n = 0), or a lone send to an empty
        role set (genesis without guardians: nobody can be sent to, so the sender's next step
        must not wait for it). Precomputed: ``_enter`` runs on every message."""
        auto: dict[str, str] = {}
        for s in lt.states:
            gather = next((t for t in lt.outgoing(s)
                           if t.action == "gather" and (t.threshold or 0) <= 0), None)
            if gather is not None:
                auto[s] = gather.target
                continue
            explicit = lt.explicit(s)
            if (
                len(explicit) == 1
                and explicit[0].action == "send"
                and lt.set_sizes.get(explicit[0].peer) == 0
            ):
                auto[s] = explicit[0].target
        return auto

    @staticmethod
    def _later_inputs(lt: LocalType) -> dict[str, frozenset[tuple[str, type]]]:
        succ: dict[str, set[str]] = {s: set() for s in lt.states}
        inputs: dict[str, set[tuple[str, type]]] = {s: set() for s in lt.states}
        for t in lt.transitions:
            if t.implicit:
                continue
            succ[t.source].add(t.target)
            if t.action in ("recv", "gather") and t.message is not None:
                inputs[t.source].add((t.peer, t.message))
        out: dict[str, frozenset[tuple[str, type]]] = {}
        for s in lt.states:
            seen: set[str] = set()
            stack = list(succ[s])
            acc: set[tuple[str, type]] = set()
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                acc |= inputs[x]
                stack.extend(succ[x])
            out[s] = frozenset(acc)
        return out

    # -- queries

    @property
    def is_final(self) -> bool:
        return self.state in self._final

    @property
    def phase(self) -> str | None:
        return self.local_type.phases.get(self.state)

    @property
    def finished(self) -> bool:
        """Final, or an optional role that never joined (a path that did not connect it)."""
        return self.is_final or not self.joined

    @property
    def can_time_out(self) -> bool:
        """True when a deadline runs in the current state (the runtime arms its timer); never
        before an optional role has joined."""
        return self.joined and self.state in self._timeout

    def expected_inbound(self) -> tuple[LocalTransition, ...]:
        return tuple(
            t for t in self.local_type.explicit(self.state) if t.action in ("recv", "gather")
        )

    def expected_outbound(self) -> tuple[LocalTransition, ...]:
        return tuple(t for t in self.local_type.explicit(self.state) if t.action == "send")

    def gathered(self, peer: str, message: type) -> int:
        """How many distinct members the gather in progress has counted."""
        return len(self._counting.get((peer, message), ()))

    # -- transitions

    def check_inbound(
        self, sender_role: str, message: object, *, member: Hashable | None = None
    ) -> None:
        """Accept ``message`` from ``sender_role`` (``member``: its identity in a role set,
        required for gathers) and advance, or raise a ``RemoteProtocolError``."""
        mtype = type(message)
        t = self._in.get((self.state, sender_role, mtype))
        if t is not None:
            self.joined = True
            if sender_role in self.local_type.optional_roles:
                self.connected.add(sender_role)
            if t.action == "recv":
                self._enter(t.target)
                return
            if member is None:
                raise MonitorUsageError(
                    f"{self._where()}: gather of {mtype.__name__} from {sender_role} needs the "
                    "sending member's identity (member=...)"
                )
            counted = self._counting.setdefault((sender_role, mtype), set())
            if member in counted:
                raise DuplicateGatherMessageError(
                    f"{self._where()}: {sender_role} member {member!r} already sent "
                    f"{mtype.__name__} toward this gather ({len(counted)} of {t.threshold} so far)"
                )
            counted.add(member)
            if len(counted) >= (t.threshold or 0):
                self._enter(t.target)
            return
        late = self._stragglers.get((sender_role, mtype))
        if late is not None and member is not None and member not in late[0] and late[1][0] > 0:
            late[0].add(member)
            late[1][0] -= 1
            return
        if sender_role in self._peers and (
            (self.state == self._abort_state and (sender_role, mtype) in self._messages)
            or (mtype is self.local_type.abort_message and self.state in self._final)
        ):
            return  # dropped: the session is over for us
        expected = self._describe_expected()
        if (sender_role, mtype) in self._later[self.state]:
            raise EarlyMessageError(
                f"{self._where()}: {mtype.__name__} from {sender_role} is not allowed yet "
                f"(expected {expected})"
            )
        raise UnexpectedMessageError(
            f"{self._where()}: expected {expected}, got {mtype.__name__} from {sender_role}"
        )

    def check_outbound(self, receiver_role: str, message: object) -> None:
        """Accept sending ``message`` to ``receiver_role`` and advance, or raise a
        ``LocalProtocolError`` (our own code broke the protocol)."""
        mtype = type(message)
        t = self._out.get((self.state, receiver_role, mtype))
        if t is not None:
            if t.connect or receiver_role in self.connected:
                self.connected.add(receiver_role)
            self._enter(t.target)
            return
        if mtype is self.local_type.abort_message and receiver_role in self._peers:
            if self.state == self._abort_state:
                return  # fanning the abort out to every role
            if self.state not in self._final:
                self._enter(self._abort_state)
                return
        sends = [f"{x.message.__name__} to {x.peer}" for x in self.expected_outbound() if x.message]
        raise UnexpectedSendError(
            f"{self._where()}: can't send {mtype.__name__} to {receiver_role}; allowed: "
            f"{', '.join(sends) or 'no send'}"
        )

    def timeout(self) -> None:
        """The deadline of the current state passed."""
        t = self._timeout.get(self.state)
        if t is None:
            raise NoTimeoutError(f"{self._where()}: no deadline is running in this state")
        # a plain receive whose deadline passed may still arrive (the sender did not see our
        # timeout): accept it later without effect, once per member, like a gather straggler
        for r in self.local_type.explicit(self.state):
            if r.action == "recv" and r.message is not None:
                n = self.local_type.set_sizes.get(r.peer, 1)
                self._stragglers.setdefault((r.peer, r.message), (set(), [n]))
        self._enter(t.target)

    def abort(self) -> None:
        """This side gives up; the runtime then sends the abort message to every role."""
        if self.state in self._final:
            raise LocalProtocolError(f"{self._where()}: can't abort, the session already ended")
        self._enter(self._abort_state)

    # -- internals

    def _enter(self, state: str) -> None:
        if self.state in self._gathers:
            for key in self._gathers[self.state]:
                counted = self._counting.get(key, set())
                n = self.local_type.set_sizes.get(key[0], len(counted))
                self._stragglers[key] = (counted, [max(n - len(counted), 0)])
            self._counting = {}
        self.state = state
        nxt = self._auto.get(state)
        if nxt is not None:
            self._enter(nxt)

    def _describe_expected(self) -> str:
        parts = []
        for t in self.expected_inbound():
            assert t.message is not None
            if t.action == "gather":
                got = self.gathered(t.peer, t.message)
                parts.append(f"{t.message.__name__} from {t.peer} (gather {got}/{t.threshold})")
            else:
                parts.append(f"{t.message.__name__} from {t.peer}")
        return " or ".join(parts) or "no message"

    def _where(self) -> str:
        lt = self.local_type
        return f"{lt.choreography}/{lt.role} in state {self.state}"
