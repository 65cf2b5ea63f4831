"""The choreographies this node runs, their versions, and how they identify on the wire.

``REGISTRY`` maps a shipped choreography's name to it; every entry passed the well-formedness
check when this module was imported (an ill-formed shipped choreography fails at import, loudly).
Plugins add theirs with :func:`register_choreography`; a plugin may also *upgrade* a
choreography by registering a higher version under the same name, which then replaces it on
this node (``node_registry()`` maps a name to the version the node runs).

Versions. Each choreography carries a version (``choreography(name, version=N)``) and is
identified by :func:`choreography_hash`: sha256 over a domain string, its name, its version
and its canonical rendering (names, roles, thresholds, messages with field names and types,
the structure; no source locations). Older versions stay *declared* (the superseded one
automatically, others with :func:`declare_older_version`), keyed by ``(name, version)`` in
:func:`node_versions`.

The link hello carries :func:`advertised_choreographies`: for each name the version this node
runs, then every declared older version that the running one is proven to stand in for
(``aura_node.choreo.subtyping``; a version it cannot stand in for is left out, since this node
can no longer take part in its sessions). Links come up whatever the choreographies are;
:func:`session_refusal` then decides per session: a session of ``C`` starts between two nodes
only when one's running version of ``C`` is among the other's advertised ones. Each node
decides from the same two lists, so both sides agree (the check is symmetric).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cache
from types import MappingProxyType
from typing import TypeAlias

from aura_node.choreo import Choreography
from aura_node.choreo.render import canonical
from aura_node.choreo.subtyping import compatibility
from aura_node.errors import ChoreographyError
from aura_node.protocols.account_sync.choreography import ACCOUNT_SYNC
from aura_node.protocols.dkd.choreography import DKD
from aura_node.protocols.genesis.choreography import GENESIS
from aura_node.protocols.ping.choreography import PING
from aura_node.protocols.recovery.choreography import RECOVERY
from aura_node.protocols.reshare.choreography import RESHARE

#: domain separation for the registry hash (bump the suffix if the canonical form changes)
HASH_DOMAIN = b"aura-node/choreography-registry/v1\n"
#: domain separation for one choreography's hash (bump the suffix if the encoding changes)
CHOREOGRAPHY_HASH_DOMAIN = b"aura-node/choreography/v1\n"

#: one advertised choreography: (name, version, choreography_hash)
Advertised: TypeAlias = tuple[str, int, bytes]


def build_registry(*choreographies: Choreography) -> Mapping[str, Choreography]:
    """Check every choreography (raising ``ChoreographyErrors``) and index them by name."""
    out: dict[str, Choreography] = {}
    for c in choreographies:
        c.check_or_raise()
        if c.name in out:
            raise ValueError(f"two choreographies named {c.name!r}")
        out[c.name] = c
    return MappingProxyType(dict(sorted(out.items())))


def choreography_hash(chor: Choreography) -> bytes:
    """sha256 identifying one version of one choreography (length-prefixed fields)."""
    h = hashlib.sha256(CHOREOGRAPHY_HASH_DOMAIN)
    for part in (chor.name.encode(), str(chor.version).encode(), canonical(chor).encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def hash_registry(registry: Mapping[str, Choreography]) -> bytes:
    h = hashlib.sha256(HASH_DOMAIN)
    for name in sorted(registry):
        body = canonical(registry[name]).encode()
        h.update(len(body).to_bytes(8, "big"))
        h.update(body)
    return h.digest()


REGISTRY: Mapping[str, Choreography] = build_registry(
    PING, GENESIS, DKD, RECOVERY, ACCOUNT_SYNC, RESHARE
)


_PLUGINS: dict[str, Choreography] = {}
#: declared older versions, kept so peers that still run them can be checked against
_OLDER: dict[tuple[str, int], Choreography] = {}


def register_choreography(chor: Choreography) -> Choreography:
    """Add a (plugin) choreography to the registry this node runs; call at import time,
    before the node starts (``kit.protocol`` does it for a protocol's choreography). Checked for
    well-formedness like the shipped ones; a name never maps to two choreographies of one
    version. A *higher* version of a registered name upgrades it: the node runs the new one
    from then on and keeps the old one declared (see the module doc)."""
    chor.check_or_raise()
    current = node_registry().get(chor.name)
    if current is chor:
        return chor
    if current is None:
        _PLUGINS[chor.name] = chor
        return chor
    if chor.version <= current.version:
        raise ChoreographyError(
            f"a choreography named {chor.name!r} is registered already (version "
            f"{current.version}); an upgrade must declare a higher version, got {chor.version}")
    _OLDER[(current.name, current.version)] = current
    _PLUGINS[chor.name] = chor
    return chor


def declare_older_version(chor: Choreography) -> Choreography:
    """Keep an older version of a choreography declared (it must be older than the one this
    node runs): peers that still run it can take part in sessions with this node when the
    running version is proven to stand in for it."""
    chor.check_or_raise()
    current = node_registry().get(chor.name)
    if current is None:
        raise ChoreographyError(f"no choreography {chor.name!r} runs on this node: declare "
                                f"older versions of one it runs")
    if chor.version >= current.version:
        raise ChoreographyError(
            f"{chor.name} v{chor.version} is not older than the v{current.version} this node "
            f"runs")
    known = _OLDER.setdefault((chor.name, chor.version), chor)
    if known is not chor and choreography_hash(known) != choreography_hash(chor):
        raise ChoreographyError(f"two different definitions of {chor.name} v{chor.version}")
    return chor


def node_registry() -> Mapping[str, Choreography]:
    """Every choreography this node runs (one version per name): the shipped ones and the
    plugins', a plugin's upgrade in place of the shipped version."""
    return {**REGISTRY, **_PLUGINS}


def node_versions() -> Mapping[tuple[str, int], Choreography]:
    """Every declared choreography keyed by ``(name, version)``: the running versions and the
    older ones kept declared."""
    out = {(k, v): c for (k, v), c in _OLDER.items()}
    out.update(((c.name, c.version), c) for c in node_registry().values())
    return dict(sorted(out.items()))


#: (hash of the running version, hash of the older one) -> proven compatible (by content,
#: not identity: the check is a pure function of the two definitions)
_advertised_cache: dict[tuple[bytes, bytes], bool] = {}


def _stands_in(new: Choreography, old: Choreography) -> bool:
    key = (choreography_hash(new), choreography_hash(old))
    found = _advertised_cache.get(key)
    if found is None:
        found = _advertised_cache[key] = compatibility(new, old).ok
    return found


def advertised_choreographies() -> tuple[Advertised, ...]:
    """What the link hello says this node holds: per name (in name order) the running
    version, then the declared older versions it is proven to stand in for (newest first)."""
    out: list[Advertised] = []
    running = node_registry()
    for name in sorted(running):
        chor = running[name]
        out.append((name, chor.version, choreography_hash(chor)))
        older = sorted((c for (n, _v), c in _OLDER.items() if n == name),
                       key=lambda c: -c.version)
        out.extend((name, c.version, choreography_hash(c)) for c in older
                   if c.version < chor.version and _stands_in(chor, c))
    return tuple(out)


def session_refusal(name: str, mine: Sequence[Advertised], theirs: Sequence[Advertised],
                    *, peer: str) -> str | None:
    """Why a session of choreography ``name`` cannot run between this node (advertising
    ``mine``) and ``peer`` (advertising ``theirs``), or ``None`` when it can.

    The first entry of a name is the version a node runs. Compatible when either side's
    running version is among the other's advertised versions (same version, same hash)."""
    own = [(v, h) for n, v, h in mine if n == name]
    other = [(v, h) for n, v, h in theirs if n == name]
    if not own:
        return f"this node does not run choreography {name!r}"
    if not other:
        return (f"{name}: this node runs v{own[0][0]}, peer {peer} does not run {name} at all")
    if own[0] in other or other[0] in own:
        return None
    (va, ha), (vb, hb) = own[0], other[0]
    if va == vb:
        return (f"{name}: this node and peer {peer} both run v{va} but the two definitions "
                f"differ (hash {ha.hex()[:16]} here, {hb.hex()[:16]} there)")
    newer = "this node's" if va > vb else f"peer {peer}'s"
    return (f"{name}: this node runs v{va}, peer {peer} runs v{vb}, and {newer} "
            f"v{max(va, vb)} is not declared compatible with v{min(va, vb)} "
            f"(check with `aura-node choreo compat`)")


def registry_fingerprint() -> bytes:
    """sha256 identifying every choreography this node runs (shipped + plugins); the transport
    hello carries it, so peers with different protocol definitions refuse each other."""
    return hash_registry(node_registry())


@cache
def registry_hash() -> bytes:
    """sha256 of the canonical rendering of ``REGISTRY`` (32 bytes)."""
    return hash_registry(REGISTRY)
