"""The signed protocol message envelope: what one device says to another, as evidence.

Theory of operation
-------------------
Every protocol message a device sends becomes evidence in the receiver's journal, so it must
prove on its own (without the TLS link it came over) who said what, in which protocol run and
at which step. The envelope carries:

``choreography``  name of the choreography (``"ping"``, ``"dkd"``, ...)
``session``       session id (32 hex chars), so a message cannot be replayed into another run
``step``          the message type name inside the choreography (``"Ping"``, ``"Commit"``)
``sender``        the sender's device id
``body``          msgspec-msgpack encoding of the message Struct
``signature``     Ed25519 by the sender's device key

The signature is ``DeviceKey.sign(f"msg/{choreography}/{step}", signed_bytes)`` where
``signed_bytes`` is a canonical, length-prefixed concatenation of every field above except the
signature. The domain binds choreography and step (a ``Ping`` signature can never stand for a
``Commit``); the signed bytes bind them again together with session, sender and body, so
changing any single field invalidates the signature. Ed25519 signatures are deterministic, so
the same content always yields the same envelope: :attr:`Envelope.digest` (SHA-256 of the
signed bytes) identifies a message for idempotent duplicate handling.

Receiving is two pure steps, kept separate so the expensive one runs once:

1. :func:`open_envelope` checks the sender field against the device id of the link the bytes
   came over (a peer may only speak for itself), verifies the signature with that link's pinned
   key, and decodes the body to the typed message Struct looked up by ``step``.
2. The caller (the runtime) checks the session binding against its session table, the message
   against the role's monitor, and duplicates against the digests it has already journaled.

On the wire (inside one transport frame) an envelope travels in a :class:`WireMessage`, which
adds one unsigned hint: ``replay`` is true when the sender is re-sending an envelope from its
journal after a restart. A receiver that already has that envelope answers a replayed duplicate
by re-sending its own journaled envelopes of that session to the sender (the sender may have
lost them); an ordinary duplicate is simply dropped. Because only restarts produce replays,
two devices can never ping-pong duplicates forever. The flag is unsigned on purpose: it changes
no evidence, and the worst a lying peer can do with it is make us re-send what we already sent.

This module is pure: no I/O, no clock, no trio.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aura_node.crypto.keys import DeviceKey, DevicePublicKey, signing_input
from aura_node.errors import BadSignatureError, RemoteProtocolError

SESSION_ID_HEX = 32
_MAX_NAME = 64


class EnvelopeError(RemoteProtocolError):
    """A peer's envelope is malformed, mis-addressed, or its body does not decode."""

    code = "envelope_invalid"


class Envelope(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One signed protocol message (see the module docstring for the field meanings)."""

    choreography: str
    session: str
    step: str
    sender: str
    body: bytes
    signature: bytes

    @property
    def domain(self) -> str:
        return signature_domain(self.choreography, self.step)

    @property
    def signed_bytes(self) -> bytes:
        return signed_bytes(
            choreography=self.choreography,
            session=self.session,
            step=self.step,
            sender=self.sender,
            body=self.body,
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed content: equal for equal messages (Ed25519 is deterministic)."""
        return hashlib.sha256(self.signed_bytes).digest()


class WireMessage(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What one transport payload carries: an envelope and the unsigned replay hint."""

    envelope: Envelope
    replay: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedEnvelope:
    """An envelope whose signature verified against the link's pinned key, body decoded."""

    envelope: Envelope
    message: msgspec.Struct
    #: :attr:`Envelope.digest`, computed from the same signed bytes the verify used
    digest: bytes


def signature_domain(choreography: str, step: str) -> str:
    return f"msg/{choreography}/{step}"


def signed_bytes(*, choreography: str, session: str, step: str, sender: str, body: bytes) -> bytes:
    """Canonical bytes covered by the signature: each field as a 4-byte big-endian length and
    its bytes, in fixed order (choreography, session, step, sender, body)."""
    c, se, st, sd = choreography.encode(), session.encode(), step.encode(), sender.encode()
    return b"".join((
        len(c).to_bytes(4, "big"), c, len(se).to_bytes(4, "big"), se,
        len(st).to_bytes(4, "big"), st, len(sd).to_bytes(4, "big"), sd,
        len(body).to_bytes(4, "big"), body,
    ))


_encoder = msgspec.msgpack.Encoder()
_wire_decoder = msgspec.msgpack.Decoder(WireMessage)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


@lru_cache(maxsize=1024)
def _verifier(raw_public_key: bytes) -> Ed25519PublicKey:
    """The parsed key of a pinned peer, kept: parsing costs ~7 us, a verify ~120 us, and every
    inbound message needs one verify with one of a handful of keys. Same check as
    ``DevicePublicKey.verify`` (domain-separated ``signing_input``)."""
    return Ed25519PublicKey.from_public_bytes(raw_public_key)


@lru_cache(maxsize=256)
def _body_decoder(message_type: type[msgspec.Struct]) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(message_type)


def message_name(message: msgspec.Struct) -> str:
    """The step name of a message: its Struct class name, as the choreography declares it."""
    return type(message).__name__


def seal(
    key: DeviceKey, *, choreography: str, session: str, message: msgspec.Struct
) -> Envelope:
    """Encode and sign ``message`` for ``session`` of ``choreography`` as device ``key``."""
    step = message_name(message)
    body = _encoder.encode(message)
    sender = key.device_id
    signature = key.sign(
        signature_domain(choreography, step),
        signed_bytes(choreography=choreography, session=session, step=step, sender=sender,
                     body=body),
    )
    return Envelope(
        choreography=choreography, session=session, step=step, sender=sender, body=body,
        signature=signature,
    )


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    try:
        return _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"envelope does not decode: {exc}") from None


def encode_wire(envelope: Envelope, *, replay: bool = False) -> bytes:
    return _encoder.encode(WireMessage(envelope=envelope, replay=replay))


def decode_wire(payload: bytes) -> WireMessage:
    """Decode one transport payload; a malformed one raises :class:`EnvelopeError`."""
    try:
        wire = _wire_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"protocol payload does not decode as an envelope: {exc}") from None
    env = wire.envelope
    if len(env.session) != SESSION_ID_HEX or not _is_hex(env.session):
        raise EnvelopeError(
            f"session id must be {SESSION_ID_HEX} lowercase hex digits, got {env.session[:80]!r}"
        )
    if not 0 < len(env.choreography) <= _MAX_NAME or not 0 < len(env.step) <= _MAX_NAME:
        raise EnvelopeError("choreography and step names must be 1..64 characters")
    return wire


_HEX = re.compile(r"[0-9a-f]*")


def _is_hex(text: str) -> bool:
    return _HEX.fullmatch(text) is not None


def open_envelope(
    envelope: Envelope,
    *,
    link_device_id: str,
    link_key: DevicePublicKey,
    message_types: Mapping[str, type[msgspec.Struct]],
) -> OpenedEnvelope:
    """Verify ``envelope`` as received over the link of ``link_device_id`` and decode its body.

    Raises :class:`EnvelopeError` when the sender is not the link's device, the step is not a
    message of the choreography, or the body does not decode to the step's type; raises
    :class:`~aura_node.errors.BadSignatureError` when the signature does not verify with the
    link's pinned key.
    """
    if envelope.sender != link_device_id:
        raise EnvelopeError(
            f"envelope claims sender {envelope.sender[:40]!r} but arrived on the link of device "
            f"{link_device_id}; a peer may only speak for itself"
        )
    message_type = message_types.get(envelope.step)
    if message_type is None:
        known = ", ".join(sorted(message_types)) or "none"
        raise EnvelopeError(
            f"choreography {envelope.choreography!r} has no message {envelope.step[:40]!r} "
            f"(has: {known})"
        )
    # built once: verify and digest share them
    signed = signed_bytes(choreography=envelope.choreography, session=envelope.session,
                          step=envelope.step, sender=envelope.sender, body=envelope.body)
    domain = signature_domain(envelope.choreography, envelope.step)
    try:
        _verifier(link_key.raw).verify(envelope.signature, signing_input(domain, signed))
    except (InvalidSignature, ValueError):
        raise BadSignatureError(
            f"bad {domain!r} signature for device {link_key.device_id} on "
            f"{envelope.choreography}/{envelope.step} in session {envelope.session}"
        ) from None
    try:
        message = _body_decoder(message_type).decode(envelope.body)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(
            f"{envelope.choreography}/{envelope.step} body does not decode as "
            f"{message_type.__name__}: {exc}"
        ) from None
    return OpenedEnvelope(envelope=envelope, message=message,
                          digest=hashlib.sha256(signed).digest())


def verify_journaled(envelope: Envelope, key: DevicePublicKey) -> None:
    """Re-verify a journaled envelope against a known key (audits; never on the hot path)."""
    key.verify(envelope.domain, envelope.signed_bytes, envelope.signature)
