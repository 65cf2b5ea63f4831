from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aura_node.cli import main
from aura_node.config import NodeHome, parse_config, render_config
from aura_node.errors import ConfigError, HomeError, KeyFileError

GOOD = """
[node]
name = "alpha"
listen = "127.0.0.1:7001"

[[peers]]
name = "beta"
public_key = "%s"
address = "127.0.0.1:7002"
""" % ("ab" * 32)


def test_parse_and_render_roundtrip() -> None:
    cfg = parse_config(GOOD)
    assert cfg.node.name == "alpha" and cfg.peers[0].name == "beta"
    assert parse_config(render_config(cfg)) == cfg


def test_malformed_toml_names_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"malformed TOML.*line 3, column"):
        parse_config('[node]\nname = "a"\nlisten = = 3\n')


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[node\]: colour"):
        parse_config('[node]\nname = "a"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"unknown section\(s\): nodes"):
        parse_config('[nodes]\nname = "a"\n')


def test_wrong_types_and_values() -> None:
    with pytest.raises(ConfigError, match=r"\[journal\] max_batch must be an integer"):
        parse_config('[node]\nname = "a"\n[journal]\nmax_batch = "lots"\n')
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_config('[node]\nname = "a"\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match="missing required key"):
        parse_config("[node]\n")
    with pytest.raises(ConfigError, match="role must be one of"):
        parse_config('[node]\nname = "a"\nrole = "king"\n')


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_init_creates_home_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "h"
    rc, out, _ = run_cli(capsys, "init", "--home", str(home), "--name", "alpha",
                         "--listen", "127.0.0.1:7001")
    assert rc == 0
    info = json.loads(out)
    assert info["name"] == "alpha" and len(info["public_key"]) == 64
    assert info["listen"] == "127.0.0.1:7001" and len(info["device_id"]) == 32
    assert os.stat(home / "device.key").st_mode & 0o777 == 0o600
    assert (home / "journal").is_dir()
    rc, _, err = run_cli(capsys, "init", "--home", str(home), "--name", "alpha")
    assert rc == 1 and "refusing to overwrite" in err


def test_aura_home_env_is_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AURA_HOME", str(tmp_path / "envhome"))
    rc, out, _ = run_cli(capsys, "init", "--name", "gamma")
    assert rc == 0 and json.loads(out)["name"] == "gamma"
    assert NodeHome.resolve(None).load_config().node.name == "gamma"
    monkeypatch.delenv("AURA_HOME")
    with pytest.raises(HomeError, match="AURA_HOME"):
        NodeHome.resolve(None)


def test_peer_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "h")
    assert run_cli(capsys, "init", "--home", home, "--name", "alpha")[0] == 0
    pk = "cd" * 32
    rc, out, _ = run_cli(capsys, "peer", "add", "--home", home, "--name", "beta",
                         "--public-key", pk, "--address", "127.0.0.1:9")
    assert rc == 0 and json.loads(out)["added"]["name"] == "beta"
    rc, _, err = run_cli(capsys, "peer", "add", "--home", home, "--name", "beta2",
                         "--public-key", pk, "--address", "127.0.0.1:9")
    assert rc == 1 and "already pinned" in err
    rc, out, _ = run_cli(capsys, "peer", "list", "--home", home)
    assert [p["name"] for p in json.loads(out)["peers"]] == ["beta"]
    rc, out, _ = run_cli(capsys, "peer", "remove", "--home", home, "--name", "beta")
    assert rc == 0
    rc, _, err = run_cli(capsys, "peer", "remove", "--home", home, "--name", "beta")
    assert rc == 1 and "no pinned peer named 'beta'" in err


def test_loading_home_checks_key_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aura_node.crypto.keys import DeviceKey

    home = tmp_path / "h"
    assert run_cli(capsys, "init", "--home", str(home), "--name", "alpha")[0] == 0
    os.chmod(home / "device.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        DeviceKey.load(NodeHome(home).key_path)


def test_every_choreography_deadline_has_a_setting() -> None:
    from aura_node.config import ProtocolSection
    from aura_node.protocols.registry import REGISTRY

    names = set()
    for c in REGISTRY.values():
        for role in c.roles:
            for t in c.project(role).transitions:
                if getattr(t, "deadline", None):
                    names.add(t.deadline)
    assert names, "the shipped choreographies declare deadlines"
    for name in names:
        assert ProtocolSection().deadline(name) > 0
    with pytest.raises(ConfigError, match="no \\[protocols\\] setting"):
        ProtocolSection().deadline("nonsense")


def test_control_and_sessions_sections_parse_render_and_check() -> None:
    cfg = parse_config(GOOD + "\n[control]\nmax_connections = 3\nidle_timeout_seconds = 7\n"
                       "\n[sessions]\nended_session_retention_seconds = 5\n"
                       "ended_session_cache = 2\n")
    assert cfg.control.max_connections == 3 and cfg.control.idle_timeout_seconds == 7.0
    assert cfg.sessions.ended_session_retention_seconds == 5.0
    assert cfg.sessions.ended_session_cache == 2
    assert parse_config(render_config(cfg)) == cfg
    defaults = parse_config(GOOD)
    assert defaults.control.max_connections == 64
    assert defaults.sessions.ended_session_cache == 10000
    assert defaults.sessions.ended_session_retention_seconds == 600.0
    with pytest.raises(ConfigError, match=r"\[control\] max_connections = 0 is out of range"):
        parse_config(GOOD + "\n[control]\nmax_connections = 0\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(GOOD + "\n[sessions]\nended_sessions = 1\n")


# --- every key of config/example.toml, out of range -------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"

#: bad values of the string keys (their valid sets are words, not ranges)
BAD_STRINGS: dict[str, list[str]] = {
    "name": ["", "Alice", "a b", "x" * 33, "-lead"],
    "role": ["king", ""],
    "listen": ["127.0.0.1:65536", "127.0.0.1:-1", "nohost", "127.0.0.1:http"],
    "address": ["127.0.0.1:70000", ":7401", "127.0.0.1"],
    "public_key": ["zz" * 32, "ab" * 31, "AB" * 32],
    "level": ["loud", "INFO"],
    "format": ["xml"],
}


def _toml(value: object) -> str:
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    return json.dumps(value)


def _example_keys() -> list[tuple[str, str, object]]:
    import tomllib

    data = tomllib.loads(EXAMPLE.read_text())
    out: list[tuple[str, str, object]] = []
    for section, table in data.items():
        rows = table if isinstance(table, list) else [table]
        for key, value in rows[0].items():
            out.append((section, key, value))
    return out


def _replace_key(section: str, key: str, literal: str) -> str:
    """example.toml with ``key`` of ``section`` set to ``literal`` (every other line kept)."""
    lines = EXAMPLE.read_text().splitlines()
    header = f"[[{section}]]" if section == "peers" else f"[{section}]"
    start = lines.index(header)
    for i in range(start + 1, len(lines)):
        if lines[i].startswith(f"{key} = "):
            lines[i] = f"{key} = {literal}"
            return "\n".join(lines) + "\n"
    raise AssertionError(f"{header} {key} not in example.toml")


def _bad_values(section: str, key: str, good: object) -> list[object]:
    from dataclasses import fields

    from aura_node import config

    if isinstance(good, str):
        return BAD_STRINGS[key]
    assert isinstance(good, int | float)
    cls = config._SECTIONS[section]
    declared = {f.name: f.metadata.get("range") for f in fields(cls)}[key]
    # every numeric key declares its range (a new key without one fails here)
    assert isinstance(declared, config.ValueRange), f"[{section}] {key} declares no range"
    as_int = isinstance(good, int)
    step = 1 if as_int else 1e-9
    below = declared.low if declared.low_open else declared.low - step
    above = int(declared.high) + 1 if as_int else declared.high * (1 + 1e-9) + step
    bad: list[object] = [below, above, -1, 10**30]
    if as_int:
        bad = [int(v) if isinstance(v, float) else v for v in bad]
    else:
        bad += [float("nan"), float("inf"), float("-inf")]
    return bad


@pytest.mark.parametrize(("section", "key", "good"), _example_keys(),
                         ids=lambda v: str(v)[:20])
def test_every_example_key_refuses_out_of_range_values(section: str, key: str,
                                                       good: object) -> None:
    # issue 13: segment_bytes = 100, max_batch = 0 and zero or negative frame sizes and
    # timeouts were accepted (a traceback later, or an unknown effect); now every key is
    # checked at load, with one line naming the key, the value and what is allowed
    parse_config(_replace_key(section, key, _toml(good)))  # the example itself is fine
    for value in _bad_values(section, key, good):
        text = _replace_key(section, key, _toml(value))
        with pytest.raises(ConfigError) as info:
            parse_config(text, source="example.toml")
        message = info.value.message
        assert "\n" not in message, message
        shown = repr(value) if isinstance(value, str) else str(value)
        assert key in message and ("peer" in message if section == "peers" else
                                   f"[{section}]" in message), (key, message)
        assert shown in message or str(value) in message, (value, message)
        assert "must" in message, message
    if not isinstance(good, str):
        with pytest.raises(ConfigError, match=f"{key} must be"):
            parse_config(_replace_key(section, key, '"12"'))
