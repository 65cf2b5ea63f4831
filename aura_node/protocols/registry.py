"""The choreographies this node runs, and the hash that identifies them on the wire.

``REGISTRY`` maps a choreography's name to it; every entry passed the well-formedness check
when this module was imported (an ill-formed shipped choreography fails at import, loudly).

``registry_hash()`` is sha256 over a canonical rendering of every choreography in name order
(names, roles and role sets, thresholds, messages with field names and types, the structure;
no source locations). The transport sends it in its hello: two nodes whose protocol
definitions differ refuse each other instead of misunderstanding each other mid-session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from aura_node.choreo import Choreography
from aura_node.choreo.render import canonical
from aura_node.errors import ChoreographyError
from aura_node.protocols.account_sync.choreography import ACCOUNT_SYNC
from aura_node.protocols.dkd.choreography import DKD
from aura_node.protocols.genesis.choreography import GENESIS
from aura_node.protocols.ping.choreography import PING
from aura_node.protocols.recovery.choreography import RECOVERY
from aura_node.protocols.reshare.choreography import RESHARE

#: domain separation for the registry hash (bump the suffix if the canonical form changes)
HASH_DOMAIN = b"aura-node/choreography-registry/v1\n"


def build_registry(*choreographies: Choreography) -> Mapping[str, Choreography]:
    """Check every choreography (raising ``ChoreographyErrors``) and index them by name."""
    out: dict[str, Choreography] = {}
    for c in choreographies:
        c.check_or_raise()
        if c.name in out:
            raise ValueError(f"two choreographies named {c.name!r}")
        out[c.name] = c
    return MappingProxyType(dict(sorted(out.items())))


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


def register_choreography(chor: Choreography) -> Choreography:
    """Add a (plugin) choreography to the registry this node runs; call at import time,
    before the node starts (``kit.protocol`` does it for a protocol's choreography). Checked for
    well-formedness like the shipped ones; a name never maps to two choreographies."""
    chor.check_or_raise()
    if REGISTRY.get(chor.name, chor) is not chor or _PLUGINS.get(chor.name, chor) is not chor:
        raise ChoreographyError(f"a choreography named {chor.name!r} is registered already")
    if chor.name not in REGISTRY:
        _PLUGINS[chor.name] = chor
    return chor


def node_registry() -> Mapping[str, Choreography]:
    """Every choreography this node runs: the shipped ones and the plugins'."""
    return {**REGISTRY, **_PLUGINS}


def registry_fingerprint() -> bytes:
    """sha256 identifying every choreography this node runs (shipped + plugins); the transport
    hello carries it, so peers with different protocol definitions refuse each other."""
    return hash_registry(node_registry())


@cache
def registry_hash() -> bytes:
    """sha256 of the canonical rendering of ``REGISTRY`` (32 bytes)."""
    return hash_registry(REGISTRY)
