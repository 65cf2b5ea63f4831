"""The consent policy of a DKD participant: answer, refuse, or ask the operator.

Theory of operation
-------------------
A holder that answers a DKD request hands the requester its blinded partial, one of the ``t``
it needs for the derived key. So a participant answers only under a policy, per account:

* ``[[dkd.policy]]`` rules (``config.DkdRule``), tried in file order: a rule whose ``account``
  matches (or is ``"*"``), one of whose ``contexts`` globs matches the context and whose
  ``requesters`` name the requesting device (absent: the account's current devices) decides,
  with its ``approval``: ``auto`` answers at once, ``operator`` parks the request until the
  operator runs ``ctl dkd approve`` / ``ctl dkd refuse``. An account with rules and no match:
  refused, naming the account, requester and context.
* An account no rule names (and no ``account = "*"`` rule): the default policy - the
  account's current devices may derive any context, answered at once; everyone else is
  refused. So a fresh account needs no configuration.
* A per-requester rate limit (``[dkd] rate_limit`` requests per ``rate_window_seconds``; 0,
  the default, is none): over it, refused with the reason ``rate limit: ...``. Only admitted
  requests (answered or parked) count: a refusal costs the requester nothing but does not help
  it either.

Determinism: replay re-runs protocol code from journaled inputs and checks every send byte for
byte, but this decision depends on the node's config and on other sessions (the limiter), which
a replay does not see. So the participant makes it once, live, inside ``step.draw`` (an
``@unrepeatable`` step, ``roles.DkdParticipant.consult_policy``): the :class:`ConsentDecision`
is journaled as a ``dkd.consent`` record and a replay takes it from there, even if the config
changed since; the limiter is fed from the journaled decision (:meth:`ConsentKeeper.note`,
keyed by session, so live and replay count a request once) with the request's journaled
arrival time, and at start-up from every ``dkd.consent`` record still inside the window
(:meth:`ConsentKeeper.recall`), so a restart does not reset a requester's count. The decision
holds no secret (verdict, reason, requester, time).

Pure: no trio, no clock (the caller passes ``now``), no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from aura_node.config import DkdRule, DkdSection

Verdict = Literal["answer", "refuse", "ask"]
#: the journal record of a participant's verdict (the body is a :class:`ConsentDecision`)
KIND_CONSENT = "dkd.consent"
#: the refusal reason of a request over the rate limit starts with this
RATE_LIMIT = "rate limit"


class ConsentDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What the policy said about one request (journaled as the ``dkd.consent`` record)."""

    verdict: Verdict
    reason: str
    requester: str
    #: the request's journaled arrival time (the limiter's clock)
    at: float


@dataclass(slots=True)
class ConsentKeeper:
    """A node's DKD policy and its per-requester rate limiter (one per node, in services)."""

    section: DkdSection = field(default_factory=DkdSection)
    rules: tuple[DkdRule, ...] = ()
    #: requester -> (arrival time, session) of its admitted requests in the current window
    _admitted: dict[str, deque[tuple[float, str]]] = field(default_factory=dict)
    _counted: set[str] = field(default_factory=set)

    def decide(self, *, account_id: str, account_devices: Sequence[str], requester: str,
               context: str, now: float) -> ConsentDecision:
        """The verdict on ``requester`` asking for ``context`` of ``account_id`` at ``now``
        (does not count the request: :meth:`note` does, from the journaled decision)."""
        def out(verdict: Verdict, reason: str) -> ConsentDecision:
            return ConsentDecision(verdict=verdict, reason=reason, requester=requester, at=now)

        rules = [r for r in self.rules if r.matches(account_id)]
        approval = "auto"
        if not rules:
            if requester not in account_devices:
                return out("refuse", f"policy: {requester} is not a device of account "
                                     f"{account_id}")
        else:
            chosen = next((r for r in rules if r.allows_context(context) and requester in (
                r.requesters if r.requesters is not None else account_devices)), None)
            if chosen is None:
                return out("refuse", f"policy: no [[dkd.policy]] rule of this node lets "
                                     f"{requester} derive context {context!r} of account "
                                     f"{account_id}")
            approval = chosen.approval
        limit, window = self.section.rate_limit, self.section.rate_window_seconds
        if limit:
            recent = self._window(requester, now)
            if len(recent) >= limit:
                return out("refuse", f"{RATE_LIMIT}: {requester} made {len(recent)} requests "
                                     f"in the last {window:g} s (at most {limit})")
        if approval == "operator":
            return out("ask", "policy: this node's operator approves each request")
        return out("answer", "policy: allowed")

    def note(self, session: str, decision: ConsentDecision) -> None:
        """Count an admitted request once, live or replayed (refusals are not counted)."""
        if decision.verdict == "refuse" or session in self._counted:
            return
        self._counted.add(session)
        self._admitted.setdefault(decision.requester, deque()).append((decision.at, session))

    def recall(self, records: Iterable[tuple[str, bytes]], *, now: float) -> int:
        """Start-up: count the admitted requests of the journaled ``dkd.consent`` records
        ``(session, body)`` (journal order) still inside the window at ``now``; how many."""
        start, counted = now - self.section.rate_window_seconds, 0
        for session, body in records:
            try:
                decision = decode_decision(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not ours to judge here: the session's replay reports it
            if decision.at > start and decision.verdict != "refuse":
                self.note(session, decision)
                counted += 1
        return counted

    def _window(self, requester: str, now: float) -> deque[tuple[float, str]]:
        q = self._admitted.setdefault(requester, deque())
        start = now - self.section.rate_window_seconds
        while q and q[0][0] <= start:
            _, old = q.popleft()
            self._counted.discard(old)
        return q


def encode_decision(d: ConsentDecision) -> bytes:
    return msgspec.msgpack.encode(d)


def decode_decision(body: bytes) -> ConsentDecision:
    return msgspec.msgpack.decode(body, type=ConsentDecision)
