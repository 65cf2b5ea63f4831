"""The cleartext preface that lets stdlib TLS pin peers by raw public key (sans-IO).

Theory of operation
-------------------
Stdlib ``ssl`` cannot call back into Python to check a peer certificate's key against a pin,
and a pinned peer is known only by its raw Ed25519 public key. So before TLS each side shows
its certificate in the clear, the receiver checks the key is pinned, and TLS then runs with a
trust store of exactly that certificate, which proves the peer holds the key (see
:mod:`aura_node.transport.tls`). The exchange, one message per arrow::

    dialer   --CERT(dialer cert)-->                      acceptor: key pinned?  no: REFUSE, close
    dialer   <--CERT(acceptor cert) | REFUSE(code, why)--
    dialer: key == the pin of the peer it dialed?  no: REFUSE(code, why), close
    dialer   --ACCEPT--> followed at once by the TLS ClientHello

Every message is ``b"AURA" | version u8 | kind u8 | length u16 | body``. The acceptor speaks
only after a pinned certificate arrived, so a scanner learns nothing but the magic. A REFUSE
body is ``code`` and ``reason`` (UTF-8, joined by a newline) so the refused side logs the same
reason as the refusing side. The preface is not trusted for anything but choosing the trust
store: whatever it claims, the TLS handshake and the post-handshake key check decide.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from aura_node.transport.errors import PrefaceError

MAGIC: Final = b"AURA"
PREFACE_VERSION: Final = 1
HEADER: Final = struct.Struct(">4sBBH")
HEADER_BYTES: Final = HEADER.size
MAX_BODY: Final = 4096


class Kind(enum.IntEnum):
    CERT = 1
    ACCEPT = 2
    REFUSE = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefaceHeader:
    kind: Kind
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    code: str
    reason: str


def _message(kind: Kind, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise PrefaceError(f"preface {kind.name} body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(MAGIC, PREFACE_VERSION, kind, len(body)) + body


def encode_certificate(der: bytes) -> bytes:
    return _message(Kind.CERT, der)


def encode_accept() -> bytes:
    return _message(Kind.ACCEPT, b"")


def encode_refuse(code: str, reason: str) -> bytes:
    body = f"{code}\n{reason}".encode()[:MAX_BODY]
    return _message(Kind.REFUSE, body)


def parse_header(data: bytes, *, expect: tuple[Kind, ...]) -> PrefaceHeader:
    """Parse the 8-byte header; refuse anything that is not our preface or not expected now."""
    if len(data) != HEADER_BYTES:
        raise PrefaceError(f"preface header must be {HEADER_BYTES} bytes, got {len(data)}")
    magic, version, kind, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise PrefaceError(
            f"not an aura-node peer: expected preface magic {MAGIC!r}, got {magic!r}"
        )
    if version != PREFACE_VERSION:
        raise PrefaceError(
            f"preface version mismatch: expected {PREFACE_VERSION}, peer sent {version}"
        )
    try:
        k = Kind(kind)
    except ValueError:
        raise PrefaceError(f"unknown preface kind {kind}") from None
    if k not in expect:
        want = " or ".join(e.name for e in expect)
        raise PrefaceError(f"expected a preface {want} message, got {k.name}")
    if length > MAX_BODY:
        raise PrefaceError(f"preface {k.name} body of {length} bytes exceeds {MAX_BODY}")
    if k is Kind.ACCEPT and length:
        raise PrefaceError(f"preface ACCEPT must have no body, got {length} bytes")
    return PrefaceHeader(kind=k, length=length)


def parse_refusal(body: bytes) -> Refusal:
    text = body.decode("utf-8", errors="replace")
    code, _, reason = text.partition("\n")
    return Refusal(code=code[:64] or "unknown", reason=reason)
