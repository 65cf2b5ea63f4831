from __future__ import annotations

import pytest

from aura_node.crypto.errors import SealError, ShareError
from aura_node.crypto.keys import DeviceKey
from aura_node.harness.simulation import dealt_account
from aura_node.protocols.account import (
    AccountError,
    AccountEstablished,
    AccountHolder,
    AccountRecord,
    AccountStore,
    encode_established,
    genesis_held_share,
    open_held_share,
)


def _account() -> tuple[AccountRecord, list[DeviceKey], list[bytes]]:
    """A dealt 2-of-3 account (the shared fixture): its record, the holders' keys and their
    sealed shares."""
    keys = [DeviceKey.from_seed(bytes([i]) * 32) for i in range(1, 4)]
    dealt = dealt_account({f"d{i + 1}": k.public for i, k in enumerate(keys)}, 2,
                          session_id="s1")
    record = dealt["d1"].account
    assert all(est.account == record for est in dealt.values())
    return record, keys, [dealt[f"d{i}"].shares[0].sealed for i in range(1, 4)]


def test_record_checks_and_store_roundtrip() -> None:
    record, keys, sealed = _account()
    record.check()
    bodies = [
        encode_established(AccountEstablished(account=record, shares=(genesis_held_share(
            holder_set="devices", index=i + 1, sealed=sealed[i], session_id="s1"),)))
        for i in range(3)
    ]
    for i, body in enumerate(bodies):
        store = AccountStore.from_bodies([body])
        est = store.only()
        share = open_held_share(est.account, est.shares[0], keys[i])
        assert share.index == i + 1
        assert store.held_share(record.account_id, "devices").index == i + 1
    assert record.to_json()["devices"] == ["d1", "d2", "d3"]


def test_wrong_key_or_tampered_record_is_refused() -> None:
    record, keys, sealed = _account()
    held = genesis_held_share(holder_set="devices", index=1, sealed=sealed[0], session_id="s1")
    with pytest.raises(SealError):
        open_held_share(record, held, keys[1])
    bad_share = AccountHolder(name="d1", device_id=record.devices[0].device_id, index=1,
                              public_share=record.devices[1].public_share)
    tampered = AccountRecord(**{**{f: getattr(record, f) for f in record.__struct_fields__},
                                "devices": (bad_share, *record.devices[1:])})
    with pytest.raises(AccountError, match="public share of device d1"):
        tampered.check()
    with pytest.raises(AccountError, match="holds no account"):
        AccountStore().get("nope")


def test_share_failing_feldman_is_refused() -> None:
    record, keys, sealed = _account()
    # d2's sealed share presented as index 1 fails the index/Feldman checks
    held = genesis_held_share(holder_set="devices", index=1, sealed=sealed[1], session_id="s1")
    with pytest.raises((SealError, ShareError)):
        open_held_share(record, held, keys[1])


def _with_devices(record: AccountRecord, devices: tuple[AccountHolder, ...]) -> AccountRecord:
    return AccountRecord(**{**{f: getattr(record, f) for f in record.__struct_fields__},
                            "devices": devices})


def test_duplicate_index_or_device_is_refused() -> None:
    record, _, _ = _account()
    d1, d2, d3 = record.devices
    # d3 claims d2's index and public share: every per-holder check alone would pass
    same_index = AccountHolder(name="d3", device_id=d3.device_id, index=d2.index,
                               public_share=d2.public_share)
    with pytest.raises(AccountError, match="d2 and d3 have the same index 2"):
        _with_devices(record, (d1, d2, same_index)).check()
    # d1's device under a second index (d3's, with d3's valid public share)
    twice = AccountHolder(name="d3", device_id=d1.device_id, index=d3.index,
                          public_share=d3.public_share)
    with pytest.raises(AccountError, match="d1 and d3 have the same device"):
        _with_devices(record, (d1, d2, twice)).check()
    renamed = AccountHolder(name="d1", device_id=d3.device_id, index=d3.index,
                            public_share=d3.public_share)
    with pytest.raises(AccountError, match="d1 and d1 have the same name"):
        _with_devices(record, (d1, d2, renamed)).check()
    _with_devices(record, (d3, d1, d2)).check()  # order does not matter, distinct is fine
