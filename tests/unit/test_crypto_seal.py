"""HPKE sealing to a device key: round trips, key derivation, every binding and tamper case."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_node.crypto import seal
from aura_node.crypto.errors import SealError, ShareError
from aura_node.crypto.group import Scalar, seeded_rng
from aura_node.crypto.keys import DeviceKey
from aura_node.crypto.shamir import Share

ALICE = DeviceKey.from_seed(bytes(range(32)))
BOB = DeviceKey.from_seed(bytes(range(1, 33)))


def _binding(key: DeviceKey = ALICE, **changes: str) -> seal.SealBinding:
    b = seal.SealBinding(
        purpose="genesis/device-share",
        account_id="acct-1",
        session_id="sess-1",
        recipient_device_id=key.device_id,
    )
    return dataclasses.replace(b, **changes)


def test_x25519_keys_derived_from_device_key_match() -> None:
    pub = seal.recipient_public_key(ALICE.public)
    priv = seal.recipient_private_key(ALICE)
    assert priv.public_key().public_bytes_raw() == pub.public_bytes_raw()
    assert pub.public_bytes_raw() != seal.recipient_public_key(BOB.public).public_bytes_raw()
    # Known answer: the Montgomery form of this device's Ed25519 key, pinned.
    assert pub.public_bytes_raw().hex() == KAT_X25519_PUBLIC
    # Independently (birational map, RFC 7748 §4.1): u = (1 + y) / (1 - y) mod p.
    p = 2**255 - 19
    y = int.from_bytes(ALICE.public.raw, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, -1, p) % p
    assert pub.public_bytes_raw() == u.to_bytes(32, "little")


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=200))
def test_round_trip(plaintext: bytes) -> None:
    b = _binding()
    sealed = seal.seal(plaintext, ALICE.public, b)
    assert len(sealed) == len(plaintext) + seal.SEAL_OVERHEAD
    assert seal.open_sealed(sealed, ALICE, b) == plaintext
    # Fresh ephemeral key each time.
    assert seal.seal(plaintext, ALICE.public, b) != sealed


def test_wrong_recipient_key_fails() -> None:
    sealed = seal.seal(b"secret", ALICE.public, _binding())
    # Bob cannot open it, whether he names himself or Alice in the binding.
    with pytest.raises(SealError, match="addressed to another device"):
        seal.open_sealed(sealed, BOB, _binding())
    with pytest.raises(SealError, match="wrong recipient key, wrong binding or tampered"):
        seal.open_sealed(sealed, BOB, _binding(BOB))


@pytest.mark.parametrize(
    "field,value",
    [
        ("purpose", "genesis/guardian-share"),
        ("account_id", "acct-2"),
        ("session_id", "sess-2"),
    ],
)
def test_wrong_binding_fails(field: str, value: str) -> None:
    sealed = seal.seal(b"secret", ALICE.public, _binding())
    with pytest.raises(SealError) as info:
        seal.open_sealed(sealed, ALICE, _binding(**{field: value}))
    assert info.value.code == "seal_open_failed"


def test_every_byte_tampered_fails() -> None:
    b = _binding()
    sealed = seal.seal(b"0123456789abcdef", ALICE.public, b)
    for pos in range(len(sealed)):
        mutated = bytearray(sealed)
        mutated[pos] ^= 0x01
        with pytest.raises(SealError):
            seal.open_sealed(bytes(mutated), ALICE, b)
    for cut in (sealed[:-1], sealed[: seal.SEAL_OVERHEAD - 1], sealed + b"\x00"):
        with pytest.raises(SealError):
            seal.open_sealed(cut, ALICE, b)


def test_seal_refuses_mismatched_recipient_and_oversize() -> None:
    with pytest.raises(SealError, match="binding names recipient"):
        seal.seal(b"x", BOB.public, _binding())
    with pytest.raises(SealError, match="at most 4096"):
        seal.seal(bytes(4097), ALICE.public, _binding())


def test_share_round_trip_and_index_check() -> None:
    share = Share(index=3, value=Scalar.random(seeded_rng(b"share")))
    b = _binding()
    sealed = seal.seal_share(share, ALICE.public, b)
    assert len(sealed) == seal.SEALED_SHARE_BYTES
    opened = seal.open_share(sealed, ALICE, b, expected_index=3)
    assert opened.index == 3 and opened.value == share.value
    with pytest.raises(ShareError, match="for holder index 3, expected 2"):
        seal.open_share(sealed, ALICE, b, expected_index=2)
    # A sealed non-share (right length or not) is refused as a share.
    other = seal.seal(bytes(seal.SHARE_PLAINTEXT_BYTES), ALICE.public, b)
    with pytest.raises(SealError, match="does not hold a share"):
        seal.open_share(other, ALICE, b, expected_index=3)


KAT_X25519_PUBLIC = "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01"
