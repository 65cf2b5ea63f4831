from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_node.crypto.keys import DeviceKey, DevicePublicKey, device_id_for, signing_input
from aura_node.errors import BadSignatureError, KeyFileError


def test_sign_verify_domain_separated() -> None:
    key = DeviceKey.from_seed(bytes(range(32)))
    sig = key.sign("checkpoint", b"hello")
    key.public.verify("checkpoint", b"hello", sig)
    with pytest.raises(BadSignatureError, match="'dkd/commit'"):
        key.public.verify("dkd/commit", b"hello", sig)
    with pytest.raises(BadSignatureError):
        key.public.verify("checkpoint", b"hellO", sig)
    other = DeviceKey.from_seed(bytes(32))
    with pytest.raises(BadSignatureError):
        other.public.verify("checkpoint", b"hello", sig)
    with pytest.raises(BadSignatureError, match="64 bytes"):
        key.public.verify("checkpoint", b"hello", sig[:10])


def test_signing_input_is_prefix_free() -> None:
    # ("ab", "c") and ("a", "bc") must not collide.
    assert signing_input("ab", b"c") != signing_input("a", b"bc")


@given(st.binary(min_size=32, max_size=32))
def test_device_id_is_stable_hex(raw: bytes) -> None:
    did = device_id_for(raw)
    assert len(did) == 32 and int(did, 16) >= 0
    assert DevicePublicKey(raw).device_id == did


def test_save_load_roundtrip_mode_0600(tmp_path: Path) -> None:
    key = DeviceKey.generate()
    path = tmp_path / "device.key"
    key.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = DeviceKey.load(path)
    assert loaded.public == key.public
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        key.save(path)


def test_load_refuses_group_readable(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    DeviceKey.generate().save(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match=r"mode 0640.*chmod 600"):
        DeviceKey.load(path)


def test_load_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="missing"):
        DeviceKey.load(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a PEM"):
        DeviceKey.load(bad)


def test_key_refuses_copy_and_pickle_and_hides_secret() -> None:
    key = DeviceKey.generate()
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    assert "PRIVATE" not in repr(key) and key.device_id in repr(key)
