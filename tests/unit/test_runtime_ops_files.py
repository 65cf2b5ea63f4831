"""Ops files: config/example.toml parses and documents every key; the systemd unit is sane."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from aura_node import config
from aura_node.config import PeerConfig, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"
# every section the parser knows (a new section is checked without editing this test)
SECTIONS: dict[str, type[object]] = {**config._SECTIONS, "peers": PeerConfig}


def test_example_parses() -> None:
    cfg = parse_config(EXAMPLE.read_text(), source=str(EXAMPLE))
    assert cfg.node.name == "alice"
    assert [p.name for p in cfg.peers] == ["bob"]


def test_example_sets_and_documents_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for section, cls in SECTIONS.items():
        header = f"[[{section}]]" if section == "peers" else f"[{section}]"
        assert header in lines, header
        start = lines.index(header)
        body = []
        for line in lines[start + 1:]:
            if line.startswith("["):
                break
            body.append(line)
        for f in dataclasses.fields(cls):
            idx = next((i for i, ln in enumerate(body) if re.match(rf"{f.name} = ", ln)), None)
            assert idx is not None, f"{header} {f.name} missing from example.toml"
            assert idx > 0 and body[idx - 1].startswith("#"), f"{header} {f.name} undocumented"


def test_example_values_are_the_defaults() -> None:
    cfg = parse_config(EXAMPLE.read_text(), source=str(EXAMPLE))
    assert {"control", "sessions"} <= set(SECTIONS)
    for section in set(config._SECTIONS) - {"node"}:
        assert getattr(cfg, section) == SECTIONS[section](), section


UNIT = Path(__file__).resolve().parents[2] / "systemd" / "aura-node@.service"


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_systemd_unit_is_notify_and_hardened() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["StateDirectory"] == ["aura-node/%i"]
    assert any("run --home %S/aura-node/%i" in v for v in s["ExecStart"])
    assert s["Restart"] == ["on-failure"]
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                      "ProtectHome": "yes", "PrivateTmp": "yes"}.items():
        assert s[key] == [want], key
    assert s["ReadWritePaths"] == ["%S/aura-node/%i"]
