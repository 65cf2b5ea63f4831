"""What a protocol driver may use of its node, handed to it explicitly.

Drivers are pure (no I/O, no clock, no trio), but the threshold protocols need node state that
is not a message: this device's key (to open its sealed share and to sign statements that go
inside messages), the pinned peers' public keys (to check evidence and seal to them), the
accounts this device holds, and the protocol settings (cooldown, timeouts). The runtime builds
one :class:`NodeServices` at start-up and passes it to every driver it creates or rehydrates:
``DriverClass(services)`` and ``DriverClass.rehydrate(evidence, services)``.

The account store is shared and mutable: genesis and recovery add to it when they complete
(after their ``account.established`` record is durable), so a DKD session started afterwards
sees the account.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from aura_node.config import NodeConfig, ProtocolSection
from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.crypto.shamir import Share
from aura_node.errors import ProtocolError
from aura_node.protocols.account import AccountRecord, AccountStore, HolderSet, OpenedShares
from aura_node.protocols.dkd.consent import ConsentKeeper

PeerRole = Literal["device", "guardian"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    name: str
    role: PeerRole
    public_key: DevicePublicKey

    @property
    def device_id(self) -> str:
        return self.public_key.device_id


@dataclass(slots=True, kw_only=True)
class NodeServices:
    self_name: str
    self_role: PeerRole
    device_key: DeviceKey
    peers: Mapping[str, PeerInfo]
    accounts: AccountStore = field(default_factory=AccountStore)
    protocols: ProtocolSection = field(default_factory=ProtocolSection)
    #: the DKD consent policy and rate limiter (``protocols.dkd.consent``)
    dkd_consent: ConsentKeeper = field(default_factory=ConsentKeeper, compare=False)
    #: shares opened (HPKE) and Feldman-checked once per account; memory only, never logged
    opened_shares: OpenedShares = field(default_factory=OpenedShares, repr=False,
                                        compare=False)

    @classmethod
    def from_config(
        cls, config: NodeConfig, key: DeviceKey, accounts: AccountStore | None = None
    ) -> NodeServices:
        peers = {
            p.name: PeerInfo(name=p.name, role=p.role, public_key=DevicePublicKey.from_hex(
                p.public_key))
            for p in config.peers
        }
        return cls(
            self_name=config.node.name,
            self_role=config.node.role,
            device_key=key,
            peers=peers,
            accounts=accounts if accounts is not None else AccountStore(),
            protocols=config.protocols,
            dkd_consent=ConsentKeeper(section=config.dkd, rules=config.dkd_policy),
        )

    def open_share(self, account: AccountRecord, holder_set: HolderSet) -> Share:
        """This device's share of ``account`` (opened and Feldman-checked on first use)."""
        held = self.accounts.held_share(account.account_id, holder_set)
        return self.opened_shares.get(account, held, self.device_key)

    def me(self) -> PeerInfo:
        return PeerInfo(name=self.self_name, role=self.self_role, public_key=self.device_key.public)

    def member(self, name: str) -> PeerInfo:
        """This device or a pinned peer, by name."""
        if name == self.self_name:
            return self.me()
        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted([self.self_name, *self.peers]))
            raise ProtocolError(f"{name!r} is neither this device nor a pinned peer "
                                f"(known: {known})") from None

    def name_of_device(self, device_id: str) -> str | None:
        if device_id == self.device_key.device_id:
            return self.self_name
        for p in self.peers.values():
            if p.device_id == device_id:
                return p.name
        return None
