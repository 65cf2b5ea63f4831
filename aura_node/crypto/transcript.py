"""The one unambiguous encoding of every hash, KDF and HPKE ``info`` input in ``aura_node.crypto``.

``transcript(domain, *parts)`` is::

    b"aura-node/v1/transcript" || u16be(len(domain)) || domain
        || u32be(number of parts)
        || for each part: tag (1 byte) || u32be(len(part)) || part

with tag ``b"b"`` for bytes, ``b"s"`` for text (UTF-8) and ``b"i"`` for a non-negative integer
(8 bytes, big-endian). Every field is length prefixed and the part count is fixed up front, so
two different ``(domain, parts)`` tuples never give the same bytes: ``("ab", "c")`` differs from
``("a", "bc")``, ``"x"`` from ``b"x"``, and no input of one domain can be read as one of another.
Points and scalars go in as their canonical 32-byte encodings (``.to_bytes()``).

The fixed prefix marks these bytes as hash/KDF input of this project and version; domains name
the construction (``"aura/dleq/challenge"``, ``"aura/dkd/h2g"``, ...) and are never reused.
"""

from __future__ import annotations

TRANSCRIPT_PREFIX = b"aura-node/v1/transcript"

Part = bytes | str | int


def transcript(domain: str, *parts: Part) -> bytes:
    """Length-prefixed, typed encoding of ``domain`` and ``parts`` (see the module docstring)."""
    d = domain.encode("utf-8")
    if not d or len(d) > 0xFFFF:
        raise ValueError(f"transcript domain must be 1..65535 bytes, got {len(d)}")
    out = [TRANSCRIPT_PREFIX, len(d).to_bytes(2, "big"), d, len(parts).to_bytes(4, "big")]
    for position, part in enumerate(parts):
        # bool is an int subclass; refuse it so True never silently means 1.
        if isinstance(part, bool):
            raise TypeError(f"transcript part {position} of {domain!r} is a bool")
        if isinstance(part, bytes):
            tag, body = b"b", part
        elif isinstance(part, str):
            tag, body = b"s", part.encode("utf-8")
        elif isinstance(part, int):
            if not 0 <= part < 2**64:
                raise ValueError(
                    f"transcript part {position} of {domain!r}: integer must be in "
                    f"[0, 2**64), got {part}"
                )
            tag, body = b"i", part.to_bytes(8, "big")
        else:  # pragma: no cover - guarded by the type checker
            raise TypeError(
                f"transcript part {position} of {domain!r} has type {type(part).__name__}"
            )
        if len(body) > 0xFFFFFFFF:
            raise ValueError(f"transcript part {position} of {domain!r} is too long")
        out += (tag, len(body).to_bytes(4, "big"), body)
    return b"".join(out)
