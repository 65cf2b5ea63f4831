"""Epoch fact vocabulary: signatures bind the signer's key, the digest binds every field."""

from __future__ import annotations

import pytest

from aura_node.crypto.keys import DeviceKey
from aura_node.protocols.account import AccountRecord
from aura_node.protocols.epochs import (
    EpochError,
    EpochSignature,
    fact_digest,
    root_fact,
    sign_fact,
)

RECORD = AccountRecord(account_id="a", public_key=b"\x01" * 32, threshold=1, devices=(),
                       device_commitments=b"")


def _digest(**over: object) -> bytes:
    args: dict[str, object] = {"epoch": 1, "previous": b"p", "session_id": "s",
                               "dealers": ("d1", "d2")}
    args.update(over)
    return fact_digest(RECORD, **args)  # type: ignore[arg-type]


def test_every_field_changes_the_digest_and_dealer_order_does_not() -> None:
    base = _digest()
    assert _digest(dealers=("d2", "d1")) == base
    for over in ({"epoch": 2}, {"previous": b"q"}, {"session_id": "t"}, {"dealers": ("d1",)}):
        assert _digest(**over) != base, over


def test_a_signature_verifies_only_for_its_digest_and_its_own_device() -> None:
    key, other = DeviceKey.generate(), DeviceKey.generate()
    sig = sign_fact(key, _digest(), role="holder")
    sig.verify(_digest())
    with pytest.raises(EpochError, match="signature"):
        sig.verify(_digest(epoch=2))
    stolen = EpochSignature(role="holder", device_id=other.device_id,
                            public_key=sig.public_key, signature=sig.signature)
    with pytest.raises(EpochError, match="does not belong"):
        stolen.verify(_digest())


def test_the_root_fact_is_epoch_zero_and_extends_nothing() -> None:
    root = root_fact(RECORD)
    assert (root.epoch, root.previous, root.dealers) == (0, b"", ())
    assert root.digest() == fact_digest(RECORD, epoch=0, previous=b"", session_id="", dealers=())
