"""Device identity: one Ed25519 key per device.

The device key signs journal checkpoints, protocol messages (which become evidence in other
devices' journals) and is the root of the device's TLS certificate. Every signature is domain
separated: the signed bytes are ``b"aura-node/v1/" || len(domain) (2 bytes BE) || domain ||
message``, so a signature made for one purpose (say a checkpoint) can never be replayed as
another (say a DKD commitment).

The private key lives in a PEM (PKCS#8) file of mode 0600. Loading refuses a file that group or
others can read, and says how to fix it. A ``DeviceKey`` refuses to be pickled or copied and
never shows key material in its ``repr``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aura_node.errors import BadSignatureError, KeyFileError

SIGNATURE_PREFIX = b"aura-node/v1/"
DEVICE_ID_DOMAIN = b"aura-node/device-id/v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def signing_input(domain: str, message: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers for ``domain`` and ``message``."""
    d = domain.encode("utf-8")
    if not d or len(d) > 0xFFFF:
        raise ValueError("signature domain must be 1..65535 bytes")
    return SIGNATURE_PREFIX + len(d).to_bytes(2, "big") + d + message


def device_id_for(public_key: bytes) -> str:
    """Device id: 16 bytes of SHA-256 over the domain and the raw public key, hex."""
    return _device_id(bytes(public_key))


@functools.lru_cache(maxsize=1024)
def _device_id(public_key: bytes) -> str:
    # Cached (a pure function of a public key; a node knows a handful): a DKD session asks
    # for its members' ids dozens of times, and one shared string per device beats one hex
    # string per ask kept in every in-flight session's evidence.
    return hashlib.sha256(DEVICE_ID_DOMAIN + public_key).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DevicePublicKey:
    """A device's Ed25519 public key (raw 32 bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_KEY_BYTES:
            raise KeyFileError(
                f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(self.raw)}"
            )

    @classmethod
    def from_hex(cls, text: str) -> DevicePublicKey:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise KeyFileError(
                f"public key must be {PUBLIC_KEY_BYTES * 2} hex digits, got {text!r}"
            ) from None
        return cls(raw)

    def hex(self) -> str:
        return self.raw.hex()

    @property
    def device_id(self) -> str:
        return device_id_for(self.raw)

    def to_cryptography(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def verify(self, domain: str, message: bytes, signature: bytes) -> None:
        """Raise ``BadSignatureError`` unless ``signature`` is ours over (domain, message)."""
        if len(signature) != SIGNATURE_BYTES:
            raise BadSignatureError(
                f"signature for {domain!r} must be {SIGNATURE_BYTES} bytes, got {len(signature)}"
            )
        try:
            self.to_cryptography().verify(signature, signing_input(domain, message))
        except InvalidSignature:
            raise BadSignatureError(
                f"bad {domain!r} signature for device {self.device_id}"
            ) from None

    def __repr__(self) -> str:
        return f"DevicePublicKey({self.raw.hex()})"


class DeviceKey:
    """A device's Ed25519 private key. Not copyable, not picklable, never printed."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = DevicePublicKey(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKey:
        """Deterministic key from a 32-byte seed (tests and simulation only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def device_id(self) -> str:
        return self.public.device_id

    def sign(self, domain: str, message: bytes) -> bytes:
        return self._private.sign(signing_input(domain, message))

    def to_cryptography(self) -> Ed25519PrivateKey:
        """The underlying key, for building the TLS certificate and context."""
        return self._private

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # --- files ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the key to a new file of mode 0600; never overwrite an existing one."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.to_pem())
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        """Load a key file, refusing one that group or others can read or write."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise KeyFileError(
                f"device key {path} is missing (create a home with `aura-node init`)"
            ) from None
        except PermissionError:
            raise KeyFileError(f"device key {path} is not readable by this user") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"device key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"device key {path} has mode {mode:04o}: group/others may read it; "
                f"fix with `chmod 600 {path}`"
            )
        try:
            data = path.read_bytes()
        except PermissionError:
            raise KeyFileError(f"device key {path} is not readable by this user") from None
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"device key {path} is not a PEM PKCS#8 key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(
                f"device key {path} holds a {type(private).__name__}, expected Ed25519"
            )
        return cls(private)

    # --- refuse accidental copies -------------------------------------------------------------

    def __repr__(self) -> str:
        return f"DeviceKey(device_id={self.device_id})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a DeviceKey cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("a DeviceKey cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("a DeviceKey cannot be copied")
