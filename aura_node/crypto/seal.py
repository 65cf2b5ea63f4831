"""Seal a small secret (a share) to one device with HPKE (RFC 9180), bound to its purpose.

Theory of operation
-------------------
Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode, single shot, as
provided by ``cryptography.hazmat.primitives.hpke``. The sealed bytes are HPKE's
``enc (32 bytes) || AEAD ciphertext (plaintext + 16-byte tag)``.

Binding: the HPKE ``info`` is ``transcript("aura/seal/v1", purpose, account_id, session_id,
recipient_device_id)`` (RFC 9180 §8.1 recommends ``info`` for auxiliary authenticated data
with the single-shot API). It enters the key schedule, so a ciphertext opened with any other
purpose, account, session or recipient fails authentication exactly like a tampered one. DHKEM
also binds the recipient's X25519 public key into the shared secret.

Recipient keys: a device has only its Ed25519 device key, and peers know only that public key
(pinned in config). The X25519 key pair is derived from it with libsodium's birational map
(``crypto_sign_ed25519_pk_to_curve25519`` / ``crypto_sign_ed25519_sk_to_curve25519``, via
pynacl): the private X25519 scalar is the clamped first half of SHA-512(seed), the same scalar
Ed25519 signs with, and the public key is the Montgomery form of the Ed25519 public key. So any
device can seal to any pinned peer with no extra key distribution.

Caveats of that choice (deliberate, recorded here):

- One secret scalar serves two schemes (Ed25519 signatures and X25519 key agreement). This is
  the pattern libsodium documents and that joint-security analyses of Ed25519/X25519 cover,
  but it is not domain separation at the key level. The alternative (an independent X25519
  key derived with HKDF from the seed) would need each device to publish and sign a second
  public key; we can switch to it without changing this module's API.
- No forward secrecy: whoever later steals a device key can open every share ever sealed to
  it that was journaled. Dealers and guardians should therefore not keep sealed blobs longer
  than the protocol needs them.
- HPKE base mode does not authenticate the *sender*. A sealed share must travel inside a
  protocol message signed by the sender's device key, and the recipient must check the opened
  share against the Feldman commitments (``dealing.open_and_verify_share``) before using it.

HPKE draws its ephemeral key from OpenSSL's CSPRNG inside ``cryptography``; sealing is the one
operation of this package whose randomness cannot be injected (opening is deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from aura_node.crypto.errors import SealError, ShareError
from aura_node.crypto.group import SCALAR_BYTES, Scalar
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.shamir import Share, check_index
from aura_node.crypto.transcript import transcript

#: Length of HPKE's encapsulated key for DHKEM(X25519) and of the ChaCha20-Poly1305 tag.
ENC_BYTES: Final = 32
TAG_BYTES: Final = 16
MAX_PLAINTEXT_BYTES: Final = 4096
SEAL_OVERHEAD: Final = ENC_BYTES + TAG_BYTES
_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_INFO_DOMAIN: Final = "aura/seal/v1"
_SHARE_DOMAIN_TAG: Final = b"aura/share/v1"
#: Sealed share plaintext: tag || index (2 bytes, big-endian) || scalar (32 bytes).
SHARE_PLAINTEXT_BYTES: Final = len(_SHARE_DOMAIN_TAG) + 2 + SCALAR_BYTES
SEALED_SHARE_BYTES: Final = SHARE_PLAINTEXT_BYTES + SEAL_OVERHEAD


@dataclass(frozen=True, slots=True, kw_only=True)
class SealBinding:
    """What a sealed secret is for; opening with any other binding fails."""

    #: e.g. ``"genesis/device-share"``, ``"genesis/guardian-share"``, ``"recovery/share"``
    purpose: str
    account_id: str
    session_id: str
    recipient_device_id: str

    def info(self) -> bytes:
        return transcript(
            _INFO_DOMAIN, self.purpose, self.account_id, self.session_id, self.recipient_device_id
        )


def recipient_public_key(device: DevicePublicKey) -> X25519PublicKey:
    """The X25519 public key sealed to for ``device`` (Montgomery form of its Ed25519 key)."""
    try:
        raw = sodium.crypto_sign_ed25519_pk_to_curve25519(device.raw)
    except nacl.exceptions.RuntimeError:
        raise SealError(
            f"device {device.device_id}: Ed25519 public key has no X25519 form "
            "(invalid or small-order point)"
        ) from None
    return X25519PublicKey.from_public_bytes(raw)


def recipient_private_key(key: DeviceKey) -> X25519PrivateKey:
    """The X25519 private key matching ``recipient_public_key(key.public)``."""
    seed = key.to_cryptography().private_bytes_raw()
    _pk, sk64 = sodium.crypto_sign_seed_keypair(seed)
    return X25519PrivateKey.from_private_bytes(sodium.crypto_sign_ed25519_sk_to_curve25519(sk64))


def seal(plaintext: bytes, recipient: DevicePublicKey, binding: SealBinding) -> bytes:
    """HPKE-seal ``plaintext`` to ``recipient`` under ``binding``."""
    if binding.recipient_device_id != recipient.device_id:
        raise SealError(
            f"binding names recipient {binding.recipient_device_id} but the key is device "
            f"{recipient.device_id}"
        )
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise SealError(
            f"sealed secrets are at most {MAX_PLAINTEXT_BYTES} bytes, got {len(plaintext)}"
        )
    return _SUITE.encrypt(plaintext, recipient_public_key(recipient), info=binding.info())


def open_sealed(sealed: bytes, key: DeviceKey, binding: SealBinding) -> bytes:
    """Open bytes made by ``seal``; ``SealError`` on a wrong key, binding or tampered bytes."""
    where = (
        f"({binding.purpose!r}, account {binding.account_id}, session {binding.session_id}, "
        f"recipient {binding.recipient_device_id})"
    )
    if binding.recipient_device_id != key.device_id:
        raise SealError(
            f"sealed secret {where} is addressed to another device, not {key.device_id}"
        )
    if not SEAL_OVERHEAD <= len(sealed) <= MAX_PLAINTEXT_BYTES + SEAL_OVERHEAD:
        raise SealError(
            f"sealed secret {where} must be {SEAL_OVERHEAD}..{MAX_PLAINTEXT_BYTES + SEAL_OVERHEAD}"
            f" bytes, got {len(sealed)}"
        )
    try:
        return _SUITE.decrypt(sealed, recipient_private_key(key), info=binding.info())
    except (InvalidTag, ValueError):
        raise SealError(
            f"cannot open sealed secret {where} with the key of device {key.device_id}: wrong "
            "recipient key, wrong binding or tampered ciphertext"
        ) from None


def seal_share(share: Share, recipient: DevicePublicKey, binding: SealBinding) -> bytes:
    """Seal a Shamir share (its index travels inside, authenticated)."""
    body = _SHARE_DOMAIN_TAG + share.index.to_bytes(2, "big") + share.value.to_bytes()
    return seal(body, recipient, binding)


def open_share(
    sealed: bytes, key: DeviceKey, binding: SealBinding, *, expected_index: int
) -> Share:
    """Open a sealed share and check it is for holder ``expected_index``.

    This does NOT check the share against the Feldman commitments; use
    ``dealing.open_and_verify_share`` (or ``FeldmanCommitments.verify_share``) before trusting it.
    """
    check_index(expected_index)
    body = open_sealed(sealed, key, binding)
    if len(body) != SHARE_PLAINTEXT_BYTES or not body.startswith(_SHARE_DOMAIN_TAG):
        raise SealError(f"sealed secret for {binding.purpose!r} does not hold a share")
    tag_len = len(_SHARE_DOMAIN_TAG)
    index = int.from_bytes(body[tag_len : tag_len + 2], "big")
    if index != expected_index:
        raise ShareError(f"sealed share is for holder index {index}, expected {expected_index}")
    return Share(index=index, value=Scalar.from_bytes(body[tag_len + 2 :]))
