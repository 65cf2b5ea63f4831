"""Account epochs as signed facts (the vocabulary shared by resharing and the epoch store).

Theory of operation
-------------------
An account's membership changes by *resharing* (``protocols/reshare``): t holders of the current
epoch deal sub-shares of their own shares to a new holder set, so ``s`` and ``S`` never change
but the holders, thresholds, public shares and Feldman commitments do. Each such membership is an
**epoch**: epoch 0 is what genesis (or recovery) established, epoch ``e + 1`` is what a reshare
session that started from epoch ``e`` produced.

An epoch is published as an :class:`EpochFact`: the new public :class:`AccountRecord` and its
epoch number ``e + 1``, the digest of the fact it extends, the reshare session and who dealt it, and
signatures (:class:`EpochSignature`) over :func:`fact_digest` by the dealers (at least the old
threshold of old holders: they authorised the change) and by every new holder (each verified its
sub-shares, so the new epoch is usable). Facts are evidence any holder can check with public
keys only; they carry no share and nothing a share follows from.

This module holds the vocabulary both sides need (structs, digest, signing); the store that
keeps, verifies, joins and exchanges facts builds on it.

Pure: no trio, no I/O.
"""

from __future__ import annotations

import hashlib

import msgspec

from aura_node.crypto.keys import PUBLIC_KEY_BYTES, DeviceKey, DevicePublicKey, device_id_for
from aura_node.errors import BadSignatureError, ProtocolError
from aura_node.protocols.account import AccountRecord

KIND_EPOCH_FACT = "account.epoch"
#: signature domain of an epoch fact (``DeviceKey.sign(EPOCH_SIGN_DOMAIN, fact_digest(...))``)
EPOCH_SIGN_DOMAIN = "aura-node/account-epoch/v1"
_DIGEST_DOMAIN = b"aura-node/account-epoch-digest/v1\n"


class EpochError(ProtocolError):
    code = "epoch"


class EpochSignature(msgspec.Struct, frozen=True, kw_only=True):
    """One device's signature over a fact digest; ``role`` says in which capacity it signed."""

    role: str  # "dealer" (an old-epoch holder that dealt) or "holder" (a new-epoch holder)
    device_id: str
    public_key: bytes  # the signer's Ed25519 device key; device_id_for(public_key) == device_id
    signature: bytes

    def verify(self, digest: bytes) -> None:
        if len(self.public_key) != PUBLIC_KEY_BYTES or (
            device_id_for(self.public_key) != self.device_id
        ):
            raise EpochError(f"epoch signature key does not belong to device {self.device_id}")
        try:
            DevicePublicKey(self.public_key).verify(EPOCH_SIGN_DOMAIN, digest, self.signature)
        except BadSignatureError as exc:
            raise EpochError(f"{self.role} {self.device_id}: {exc}") from None


class EpochFact(msgspec.Struct, frozen=True, kw_only=True):
    """A new epoch of an account: its public record and the evidence that made it."""

    account: AccountRecord
    epoch: int
    previous: bytes  # fact_digest of the epoch it extends (b"" for an epoch-0 fact)
    session_id: str  # the reshare session that dealt it ("" for epoch 0)
    dealers: tuple[str, ...]  # device ids of the old-epoch holders whose dealings were combined
    signatures: tuple[EpochSignature, ...] = ()

    def digest(self) -> bytes:
        return fact_digest(
            self.account,
            epoch=self.epoch,
            previous=self.previous,
            session_id=self.session_id,
            dealers=self.dealers,
        )


_encoder = msgspec.msgpack.Encoder()


def fact_digest(
    account: AccountRecord,
    *,
    epoch: int,
    previous: bytes,
    session_id: str,
    dealers: tuple[str, ...],
) -> bytes:
    """What every dealer and new holder signs: the new record, its epoch, what it extends and
    who dealt it."""
    body = _encoder.encode((account, epoch, previous, session_id, sorted(dealers)))
    return hashlib.sha256(_DIGEST_DOMAIN + body).digest()


def root_fact(account: AccountRecord) -> EpochFact:
    """The epoch-0 fact of an account as genesis established it: no previous fact, no reshare
    session, no dealers, no signatures (its authority is the account record every holder verified
    at genesis, whose id is a hash of ``S``). Epoch 1 extends ``root_fact(record).digest()``."""
    return EpochFact(account=account, epoch=0, previous=b"", session_id="", dealers=())


def sign_fact(key: DeviceKey, digest: bytes, *, role: str) -> EpochSignature:
    return EpochSignature(
        role=role,
        device_id=key.device_id,
        public_key=key.public.raw,
        signature=key.sign(EPOCH_SIGN_DOMAIN, digest),
    )


__all__ = [
    "EPOCH_SIGN_DOMAIN",
    "KIND_EPOCH_FACT",
    "EpochError",
    "EpochFact",
    "EpochSignature",
    "fact_digest",
    "root_fact",
    "sign_fact",
]
