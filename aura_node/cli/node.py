"""`aura-node init`, `aura-node peer add|list|remove` (and `run`, registered by the runtime)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from aura_node.cli import print_json
from aura_node.config import (
    NodeConfig,
    NodeHome,
    NodeSection,
    PeerConfig,
    check_name,
    parse_address,
)
from aura_node.errors import ConfigError, HomeError


def add_home_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="node home directory (default: $AURA_HOME)")


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="create a node home: device key, config, journal directory")
    add_home_arg(p)
    p.add_argument("--name", required=True, help="this device's name (a-z, 0-9, '-', '_')")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT for peer links")
    p.add_argument("--role", choices=("device", "guardian"), default="device")
    p.set_defaults(handler=cmd_init)

    peer = sub.add_parser("peer", help="edit the pinned peer list")
    psub = peer.add_subparsers(dest="peer_command", metavar="ACTION", required=True)
    a = psub.add_parser("add", help="pin a peer by name, public key and address")
    add_home_arg(a)
    a.add_argument("--name", required=True)
    a.add_argument("--public-key", required=True, help="the peer's Ed25519 public key, hex")
    a.add_argument("--address", required=True, help="HOST:PORT the peer listens on")
    a.add_argument("--role", choices=("device", "guardian"), default="device")
    a.set_defaults(handler=cmd_peer_add)
    ls = psub.add_parser("list", help="list pinned peers")
    add_home_arg(ls)
    ls.set_defaults(handler=cmd_peer_list)
    rm = psub.add_parser("remove", help="unpin a peer")
    add_home_arg(rm)
    rm.add_argument("--name", required=True)
    rm.set_defaults(handler=cmd_peer_remove)


def init_home(home: NodeHome, *, name: str, listen: str, role: str) -> dict[str, str]:
    """Create a node home; refuse to touch an existing one. Returns the identity summary."""
    from aura_node.crypto.keys import DeviceKey

    check_name(name, what="--name")
    parse_address(listen, what="--listen")
    if role not in ("device", "guardian"):
        raise ConfigError(f"--role must be device or guardian, got {role!r}")
    if home.config_path.exists() or home.key_path.exists():
        raise HomeError(f"{home.root} is already a node home; refusing to overwrite it")
    if home.root.exists() and any(home.root.iterdir()):
        raise HomeError(f"{home.root} exists and is not empty; choose a new directory")
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home.root, 0o700)
    key = DeviceKey.generate()
    key.save(home.key_path)
    home.journal_dir.mkdir(mode=0o700)
    cfg = NodeConfig(node=NodeSection(name=name, role=role, listen=listen))  # type: ignore[arg-type]
    home.save_config(cfg)
    return identity_json(cfg, key.public.hex(), key.device_id)


def identity_json(cfg: NodeConfig, public_key: str, device_id: str) -> dict[str, str]:
    return {
        "name": cfg.node.name,
        "role": cfg.node.role,
        "device_id": device_id,
        "public_key": public_key,
        "listen": cfg.node.listen,
    }


def cmd_init(args: argparse.Namespace) -> int:
    home = NodeHome.resolve(args.home)
    print_json(
        {
            **init_home(home, name=args.name, listen=args.listen, role=args.role),
            "home": str(home.root),
        }
    )
    return 0


def _peer_json(p: PeerConfig) -> dict[str, str]:
    from aura_node.crypto.keys import device_id_for

    return {
        "name": p.name,
        "role": p.role,
        "public_key": p.public_key,
        "device_id": device_id_for(bytes.fromhex(p.public_key)),
        "address": p.address,
    }


def cmd_peer_add(args: argparse.Namespace) -> int:
    home = NodeHome.resolve(args.home)
    cfg = home.load_config()
    pk = args.public_key.strip().lower()
    new = PeerConfig(name=args.name, public_key=pk, address=args.address, role=args.role)
    check_name(new.name, what="--name")
    parse_address(new.address, what="--address")
    if len(pk) != 64 or any(c not in "0123456789abcdef" for c in pk):
        raise ConfigError(f"--public-key must be 64 hex digits, got {args.public_key!r}")
    if new.name == cfg.node.name:
        raise ConfigError(f"{new.name!r} is this node's own name")
    for p in cfg.peers:
        if p.name == new.name:
            raise ConfigError(f"a peer named {new.name!r} is already pinned; remove it first")
        if p.public_key == pk:
            raise ConfigError(f"that public key is already pinned as {p.name!r}")
    home.save_config(cfg.with_peers((*cfg.peers, new)))
    print_json({"added": _peer_json(new)})
    return 0


def cmd_peer_list(args: argparse.Namespace) -> int:
    cfg = NodeHome.resolve(args.home).load_config()
    print_json({"peers": [_peer_json(p) for p in cfg.peers]})
    return 0


def cmd_peer_remove(args: argparse.Namespace) -> int:
    home = NodeHome.resolve(args.home)
    cfg = home.load_config()
    gone = cfg.peer(args.name)
    home.save_config(cfg.with_peers(tuple(p for p in cfg.peers if p.name != args.name)))
    print_json({"removed": _peer_json(gone)})
    return 0
