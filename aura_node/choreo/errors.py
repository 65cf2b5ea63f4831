"""Errors of the choreography language: ill-formed declarations and monitor violations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from aura_node.errors import ChoreographyError, LocalProtocolError, RemoteProtocolError


class IllFormedChoreography(ChoreographyError):
    """One well-formedness error: what, where (``file:line``) and a counterexample trace.

    ``kind`` is stable and machine readable: ``unknown_role``, ``bad_message``,
    ``unused_message``, ``unused_role``, ``knowledge_of_choice``, ``choice_not_initiated``,
    ``ambiguous_choice``, ``bad_choice``, ``unreachable``, ``wait_forever``,
    ``threshold_bounds``, ``bad_role_use``, ``bad_loop``, ``empty_loop``, ``unguarded_loop``,
    ``phase_conflict``, ``nondeterministic``, ``duplicate_message_name``, ``identical_branches``,
    ``stuck_role`` (liveness: a role that can never progress), and for optional participants
    ``not_connected``, ``connect_twice``, ``after_release``, ``connection_in_loop``.
    """

    def __init__(
        self, *, choreography: str, kind: str, where: str, what: str, trace: Sequence[str] = ()
    ) -> None:
        self.choreography = choreography
        self.kind = kind
        self.where = where
        self.what = what
        self.trace = tuple(trace)
        lines = [f"choreography {choreography!r}, {where}: {what} [{kind}]"]
        if self.trace:
            lines.append("  trace: " + " ; ".join(self.trace[-8:]))
        super().__init__("\n".join(lines))


class ChoreographyErrors(ChoreographyError):
    """Every well-formedness error of one choreography, raised together."""

    def __init__(self, name: str, errors: Sequence[IllFormedChoreography]) -> None:
        self.choreography = name
        self.errors = tuple(errors)
        body = "\n".join(e.message for e in self.errors)
        super().__init__(
            f"choreography {name!r} is ill formed ({len(self.errors)} errors):\n{body}"
        )


class BindingError(ChoreographyError):
    """Session parameters (role set sizes, thresholds) outside their declared bounds."""

    code: ClassVar[str] = "choreography_binding"


# --- monitor violations ---------------------------------------------------------------------------


class UnexpectedMessageError(RemoteProtocolError):
    """A peer sent a message its role may not send to us, now or later."""

    code: ClassVar[str] = "unexpected_message"


class EarlyMessageError(RemoteProtocolError):
    """A message our local type accepts later, not in this state: buffer it and retry."""

    code: ClassVar[str] = "early_message"


class DuplicateGatherMessageError(RemoteProtocolError):
    """A role set member sent a second message toward the same gather."""

    code: ClassVar[str] = "duplicate_gather_message"


class UnexpectedSendError(LocalProtocolError):
    """Our side tried to send a message its local type does not allow in this state."""

    code: ClassVar[str] = "unexpected_send"


class NoTimeoutError(LocalProtocolError):
    """A timer fired in a state that has no deadline."""

    code: ClassVar[str] = "no_timeout"


class MonitorUsageError(LocalProtocolError):
    """The runtime called the monitor wrongly (e.g. a gather message without its member id)."""

    code: ClassVar[str] = "monitor_usage"
