"""Run by ``test_dependency_floors`` inside a throwaway venv holding the minimum versions that
``pyproject.toml`` declares: import every aura_node module and use each dependency the way
the package does (libsodium group maths, HPKE sealing, Ed25519, msgspec, structlog, trio), so
a floor too low for the code fails here with the import or call that broke. Prints ``ok``."""

from __future__ import annotations

import importlib
import pkgutil

import aura_node


def main() -> None:
    for mod in pkgutil.walk_packages(aura_node.__path__, "aura_node."):
        # __main__ would run the CLI; the pytest plugin needs the dev extras, not a floor
        if not mod.name.endswith(("__main__", "pytest_plugin")):
            importlib.import_module(mod.name)

    from aura_node.crypto.dkd import derive, dkd_base
    from aura_node.crypto.dleq import prove, verify
    from aura_node.crypto.group import Point, Scalar, hash_to_group
    from aura_node.crypto.keys import DeviceKey
    from aura_node.crypto.seal import SealBinding, open_sealed, seal

    h = hash_to_group("floor/smoke", "a", "b")  # pynacl's from_uniform (1.6+)
    x = Scalar.from_int(7)
    a, b, proof = prove(x, Point.base(), h, b"ctx")
    verify(proof, Point.base(), a, h, b, b"ctx")
    assert (x.invert() * b) == h
    assert derive(dkd_base("acct", "ctx"), "acct", "ctx").fingerprint

    key = DeviceKey.generate()
    binding = SealBinding(purpose="floor/smoke", account_id="a", session_id="s",
                          recipient_device_id=key.device_id)
    assert open_sealed(seal(b"secret", key.public, binding), key, binding) == b"secret"
    key.public.verify("floor/smoke", b"m", key.sign("floor/smoke", b"m"))

    import msgspec
    import structlog
    import trio

    class M(msgspec.Struct, frozen=True, kw_only=True):
        x: int

    assert msgspec.msgpack.decode(msgspec.msgpack.encode(M(x=1)), type=M) == M(x=1)
    structlog.get_logger().bind(k=1)
    trio.run(trio.sleep, 0)
    print("ok")


if __name__ == "__main__":
    main()
