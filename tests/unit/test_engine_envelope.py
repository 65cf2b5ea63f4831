"""The signed envelope: binding of every field, sender = link, typed body, dedupe digest."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import BadSignatureError
from aura_node.protocols.envelope import (
    Envelope,
    EnvelopeError,
    decode_wire,
    encode_wire,
    open_envelope,
    seal,
)


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    nonce: bytes


class Other(msgspec.Struct, frozen=True, kw_only=True):
    n: int


TYPES: dict[str, type[msgspec.Struct]] = {"Hello": Hello, "Other": Other}
ALICE = DeviceKey.from_seed(b"a" * 32)
BOB = DeviceKey.from_seed(b"b" * 32)
SID = "0" * 31 + "1"


def _open(env: Envelope, key: DeviceKey = ALICE) -> msgspec.Struct:
    return open_envelope(
        env, link_device_id=key.device_id, link_key=key.public, message_types=TYPES
    ).message


def test_round_trip_over_the_wire() -> None:
    env = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"n" * 16))
    wire = decode_wire(encode_wire(env, replay=True))
    assert wire.replay is True
    assert wire.envelope == env
    assert _open(wire.envelope) == Hello(nonce=b"n" * 16)
    assert env.step == "Hello" and env.sender == ALICE.device_id


@pytest.mark.parametrize(
    "field,value",
    [
        ("choreography", "other"),
        ("session", "0" * 31 + "2"),
        ("step", "Other"),
        ("body", msgspec.msgpack.encode(Hello(nonce=b"m" * 16))),
    ],
)
def test_changing_any_signed_field_breaks_the_signature(field: str, value: object) -> None:
    env = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"n" * 16))
    forged = msgspec.structs.replace(env, **{field: value})
    with pytest.raises(BadSignatureError, match="bad 'msg/"):
        _open(forged)


def test_replay_into_another_session_fails() -> None:
    env = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"n" * 16))
    moved = msgspec.structs.replace(env, session="f" * 32)
    with pytest.raises(BadSignatureError, match="session f{32}"):
        _open(moved)


def test_sender_must_be_the_link_device() -> None:
    env = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"n" * 16))
    # Bob relays Alice's (validly signed) envelope over his own link: refused before verify.
    with pytest.raises(EnvelopeError, match="may only speak for itself"):
        _open(env, BOB)
    # Bob signs but claims to be Alice: the pinned key of Bob's link verifies nothing.
    forged = msgspec.structs.replace(env, sender=BOB.device_id)
    with pytest.raises(BadSignatureError):
        _open(forged, BOB)


def test_unknown_step_and_bad_body_are_refused() -> None:
    env = seal(ALICE, choreography="demo", session=SID, message=Other(n=3))
    with pytest.raises(EnvelopeError, match="has no message 'Other'"):
        open_envelope(env, link_device_id=ALICE.device_id, link_key=ALICE.public,
                      message_types={"Hello": Hello})
    # A validly signed body of the wrong shape: Alice signed Other's bytes under step Hello.
    class Hello2(msgspec.Struct, frozen=True, kw_only=True):
        n: int

    Hello2.__name__ = "Hello"
    wrong = seal(ALICE, choreography="demo", session=SID, message=Hello2(n=1))
    with pytest.raises(EnvelopeError, match="does not decode as Hello"):
        _open(wrong)


def test_identical_messages_share_a_digest_and_different_ones_do_not() -> None:
    a = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"n" * 16))
    b = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"n" * 16))
    c = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b"o" * 16))
    assert a == b and a.digest == b.digest
    assert a.digest != c.digest


@pytest.mark.parametrize("session", ["short", "G" * 32, "0" * 33])
def test_bad_session_ids_are_refused_at_decode(session: str) -> None:
    env = seal(ALICE, choreography="demo", session=SID, message=Hello(nonce=b""))
    bad = msgspec.structs.replace(env, session=session)
    with pytest.raises(EnvelopeError, match="session id"):
        decode_wire(encode_wire(bad))


@given(st.binary(max_size=300))
def test_random_payloads_never_escape_as_anything_but_envelope_error(data: bytes) -> None:
    try:
        decode_wire(data)
    except EnvelopeError:
        pass
