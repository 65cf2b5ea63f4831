"""One small error hierarchy for the whole project.

Every error carries a machine-readable ``code`` (stable, used in control-socket replies and
logs) and a message that says what was expected, what came, and where. Errors caused by our own
code or our own caller are *local*; errors caused by a peer's bytes or messages are *remote*
(the h11 split): a remote error drops a message or a link, never the daemon.
"""

from __future__ import annotations

from typing import ClassVar


class AuraError(Exception):
    """Base of every error aura-node raises on purpose."""

    code: ClassVar[str] = "aura_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- operator-facing: homes, config, keys -------------------------------------------------


class ConfigError(AuraError):
    code = "config_invalid"


class KeyFileError(AuraError):
    code = "key_file"


class HomeError(AuraError):
    code = "home"


# --- crypto ----------------------------------------------------------------------------------


class CryptoError(AuraError):
    code = "crypto"


class BadSignatureError(CryptoError):
    code = "bad_signature"


# --- journal ---------------------------------------------------------------------------------


class JournalError(AuraError):
    code = "journal"


class JournalCorruptError(JournalError):
    """Damage before the last valid checkpoint: refuse to open, never guess."""

    code = "journal_corrupt"


class JournalFailedError(JournalError):
    """A write or fsync failed; the journal is unusable until the node restarts."""

    code = "journal_failed"


# --- protocols, sessions, choreographies -------------------------------------------------------


class ProtocolError(AuraError):
    code = "protocol"


class LocalProtocolError(ProtocolError):
    """Our side tried something its local type does not allow."""

    code = "local_protocol"


class RemoteProtocolError(ProtocolError):
    """A peer sent something its role may not send here (wrong phase, bad evidence, ...)."""

    code = "remote_protocol"


class ChoreographyError(AuraError):
    """A choreography is ill formed; the message names the source line and a trace."""

    code = "choreography_ill_formed"


class WrongPhaseError(LocalProtocolError):
    code = "wrong_phase"


class ConsumedStateError(LocalProtocolError):
    code = "consumed_state"


class WitnessError(RemoteProtocolError):
    """Evidence did not verify, so the witness could not be built."""

    code = "witness_invalid"


# --- transport and control --------------------------------------------------------------------


class TransportError(AuraError):
    code = "transport"


class FrameError(TransportError):
    code = "frame_invalid"


class HandshakeError(TransportError):
    code = "handshake_refused"


class ControlError(AuraError):
    code = "control"


class NodeNotRunningError(ControlError):
    code = "node_not_running"
